"""The Alice occupation probe (attention transfer): data, items, teacher-forced scoring, interventions, table."""

import json

import pytest
import torch

from lahis_ctrl.core.lm import tokenize_continuation
from tiny import tiny_model

from lahis_ctrl.core.errors import LahisError, MaskMismatchError
from lahis_ctrl.core.mask import HeadMask
from lahis_ctrl.eval.transfer import (ALTERNATE_FORMS, LANGUAGES, OCCUPATIONS, QUESTION, STATEMENT_TEMPLATES,
                                 alice_probe, classify_answer, continuation_logprobs,
                                 format_probe_table, occupation_forms, probe_items, statement)
from lahis_ctrl.eval.transfer import _occurs


@pytest.fixture(scope="module")
def gemma3():
    return tiny_model("gemma3")


# ------------------------------------------------------------------------------------------ data


def test_every_occupation_has_every_language():
    assert len(OCCUPATIONS) >= 10
    assert set(LANGUAGES) >= {"en", "de", "es", "hi", "ru", "zh", "vi", "ar"}
    assert set(STATEMENT_TEMPLATES) == set(LANGUAGES)
    for occ, words in OCCUPATIONS.items():
        assert set(words) == set(LANGUAGES), occ
        assert words["en"] == occ
        assert all(isinstance(w, str) and w.strip() == w and w for w in words.values()), occ
    for occ, forms in ALTERNATE_FORMS.items():
        assert occ in OCCUPATIONS and set(forms) <= set(LANGUAGES)
    for lang, template in STATEMENT_TEMPLATES.items():
        assert template.count("{occupation}") == 1, lang
        assert "Alice" in template, lang


def test_no_occupation_word_names_another_occupation():
    # otherwise a generation naming Y could be counted as naming X
    for a in OCCUPATIONS:
        for b in OCCUPATIONS:
            if a == b:
                continue
            for la, fa in occupation_forms(a, LANGUAGES):
                for lb, fb in occupation_forms(b, LANGUAGES):
                    assert not _occurs(fa, la, fb), (a, la, fa, b, lb, fb)
    # nor any template or the question (they are in every prompt, not in generations, but keep them clean)
    for a in OCCUPATIONS:
        for la, fa in occupation_forms(a, LANGUAGES):
            for text in [*STATEMENT_TEMPLATES.values(), QUESTION]:
                assert not _occurs(fa, la, text.replace("{occupation}", "")), (a, la, fa, text)


def test_probe_items_count_content_and_determinism():
    n_occ = len(OCCUPATIONS)
    items = probe_items("de", "es")
    assert len(items) == n_occ * (n_occ - 1) * 2
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        assert it["x"] != it["y"]
        s1, s2 = statement("de", it["x"]), statement("es", it["y"])
        assert s1 == STATEMENT_TEMPLATES["de"].format(occupation=OCCUPATIONS[it["x"]]["de"])
        assert s1 in it["prompt"] and s2 in it["prompt"]
        first = s1 if it["order"] == "lang1_first" else s2
        assert it["prompt"] == f"{first} {s2 if first == s1 else s1}\n{QUESTION}"
        assert it["prompt"].endswith("Answer: Alice's occupation is")
        assert it["x_en"] == it["x"] and it["x_word"] == OCCUPATIONS[it["x"]]["de"]
        assert it["y_word"] == OCCUPATIONS[it["y"]]["es"]
    # both orders of every pair, next to each other
    assert [it["order"] for it in items[:4]] == ["lang1_first", "lang2_first"] * 2
    assert items[0]["x"] == items[1]["x"] and items[0]["y"] == items[1]["y"]
    assert sum(it["order"] == "lang1_first" for it in items) == len(items) // 2
    # deterministic, seeded, capped
    assert probe_items("de", "es") == items
    assert probe_items("de", "es", seed=1) != items
    assert probe_items("de", "es", n=7) == items[:7]
    one = probe_items("de", "es", order="lang1_first")
    assert len(one) == n_occ * (n_occ - 1)
    assert all(it["prompt"].startswith("Alices Beruf ist ") for it in one)
    assert all(it["prompt"].startswith("La profesión de Alice es ") for it in probe_items("de", "es", order="lang2_first"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(lang1="xx", lang2="es"), "zh"),  # the message lists the supported languages
    (dict(lang1="de", lang2="klingon"), "use one of"),
    (dict(lang1="de", lang2="de"), "two different languages"),
    (dict(lang1="de", lang2="es", order="random"), "order"),
    (dict(lang1="de", lang2="es", n=0), "positive"),
])
def test_probe_items_bad_inputs(kwargs, match):
    with pytest.raises(LahisError, match=match):
        probe_items(**kwargs)


def test_classify_answer():
    assert classify_answer(" a teacher.", "teacher", "doctor", "de", "es") == "x"
    assert classify_answer(" Lehrerin, nicht", "teacher", "doctor", "de", "es") == "x"  # lang1 word
    assert classify_answer(" MÉDICA", "teacher", "doctor", "de", "es") == "y"  # lang2 word, any case
    assert classify_answer(" a Doctor or a teacher", "teacher", "doctor", "de", "es") == "both"
    assert classify_answer(" unknown", "teacher", "doctor", "de", "es") == "neither"
    assert classify_answer(" 医生", "teacher", "doctor", "de", "zh") == "y"  # no word boundaries in Chinese
    # a word must start a word in spaced scripts: "medic" (ro doctor) is not in "paramedic"
    assert classify_answer(" paramedic", "doctor", "nurse", "ro", "de") == "neither"
    assert classify_answer(" medic", "doctor", "nurse", "ro", "de") == "x"
    assert classify_answer(" öğretmendir", "teacher", "doctor", "tr", "de") == "x"  # inflections are fine
    # only English, lang1 and lang2 count: Chinese "医生" is not recognised in a de/es probe
    assert classify_answer(" 医生", "teacher", "doctor", "de", "es") == "neither"


# ------------------------------------------------------------------------------------------ scoring


def _plain_logprob(model, tok, prompt: str, continuation: str) -> float:
    """One example, no padding, full logits: sum of log P(continuation tokens | prefix)."""
    p = tok(prompt)["input_ids"]
    full = tok(prompt + continuation)["input_ids"]
    assert full[:len(p)] == p and len(full) > len(p)
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].float()  # [pos, vocab]
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, full[t]]) for t in range(len(p), len(full)))


def test_batched_scoring_equals_plain_computation(gemma3, tok):
    items = probe_items("de", "es", n=3, seed=3) + probe_items("ru", "en", n=2) + probe_items("en", "fr", n=1)
    prompts = [it["prompt"] for it in items] + ["Question: What is Alice's occupation?\nAnswer:"]
    conts = [" " + it["x_en"] for it in items] + [" police officer"]
    lengths = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lengths) >= 3  # the batch mixes prompt lengths (so padding is exercised)
    got = continuation_logprobs(gemma3, tok, prompts, conts, batch_size=4)
    want = [_plain_logprob(gemma3, tok, p, c) for p, c in zip(prompts, conts)]
    assert got == pytest.approx(want, abs=1e-5, rel=1e-5)
    assert all(g < 0 for g in got)
    # the batch size does not change the numbers
    assert continuation_logprobs(gemma3, tok, prompts, conts, batch_size=1) == pytest.approx(got, abs=1e-5)


def test_tokenize_pair_prefix_and_fallback(tok):
    ids, n_prompt = tokenize_continuation(tok, "Alice's occupation is", " teacher")
    assert ids[:n_prompt] == tok("Alice's occupation is")["input_ids"]
    assert tok.decode(ids) == "Alice's occupation is teacher"
    # no space before the continuation: BPE merges across the boundary, so the continuation is tokenized alone
    ids, n_prompt = tokenize_continuation(tok, "The quick bro", "wn fox")
    assert ids[:n_prompt] == tok("The quick bro")["input_ids"]
    assert len(ids) > n_prompt and tok.decode(ids) == "The quick brown fox"


# ------------------------------------------------------------------------------------------ probe


def _all_heads(model, layers):
    return [(layer, h) for layer in layers for h in range(model.config.num_attention_heads)]


def test_ones_mask_is_bit_equal_to_original_and_zeroing_changes(gemma3, tok):
    zero = HeadMask.from_heads(gemma3, _all_heads(gemma3, [0, 1]), scale=0.0)
    amp = HeadMask.from_heads(gemma3, [(2, 1), (3, 0)], scale=3.0)
    res = alice_probe(gemma3, tok, "de", "es",
                      {"original": None, "ones": HeadMask.ones(gemma3), "zeroed": zero, "x3": amp},
                      n=6, batch_size=4, max_new_tokens=3)
    assert set(res) >= {"lang1", "lang2", "order", "n_items", "items", "results"}
    assert res["lang1"] == "de" and res["lang2"] == "es" and res["order"] == "both" and res["n_items"] == 6
    assert res["items"] == probe_items("de", "es", n=6)
    assert list(res["results"]) == ["original", "ones", "zeroed", "x3"]
    json.dumps(res)  # JSON-able
    orig, ones = res["results"]["original"], res["results"]["ones"]
    for r in res["results"].values():
        assert set(r) >= {"mean_log_odds", "share_prefers_x", "share_answer_x", "share_answer_y",
                          "share_answer_neither", "per_item", "mask"}
        assert len(r["per_item"]) == 6
        for p in r["per_item"]:
            assert set(p) >= {"log_odds", "answer", "generation"}
            assert p["answer"] in ("x", "y", "neither", "both")
            assert p["log_odds"] == p["logp_x"] - p["logp_y"] and p["prefers_x"] == (p["log_odds"] > 0)
        shares = [r[f"share_answer_{k}"] for k in ("x", "y", "neither", "both")]
        assert sum(shares) == pytest.approx(1.0)
        assert r["mean_log_odds"] == pytest.approx(sum(p["log_odds"] for p in r["per_item"]) / 6)
        assert set(r["by_order"]) == {"lang1_first", "lang2_first"}
    # all-ones: bit-equal numbers and identical generations
    assert [p["log_odds"] for p in ones["per_item"]] == [p["log_odds"] for p in orig["per_item"]]
    assert [p["generation"] for p in ones["per_item"]] == [p["generation"] for p in orig["per_item"]]
    assert ones["mean_log_odds"] == orig["mean_log_odds"]
    assert orig["mask"] is None and ones["mask"]["changed_heads"] == []
    # zeroing two layers' heads moves the log-odds
    zeroed = res["results"]["zeroed"]
    diffs = [abs(a["log_odds"] - b["log_odds"]) for a, b in zip(zeroed["per_item"], orig["per_item"])]
    assert max(diffs) > 1e-3
    assert zeroed["mask"]["changed_heads"] == [list(h) for h in _all_heads(gemma3, [0, 1])]
    assert zeroed["mask"]["scales"] == [0.0] * len(zeroed["mask"]["changed_heads"])
    assert res["results"]["x3"]["mask"] == {"changed_heads": [[2, 1], [3, 0]], "scales": [3.0, 3.0],
                                            "method": "heads-x3"}
    # the masks were removed after each intervention: a later run of the original model gives the same numbers
    again = alice_probe(gemma3, tok, "de", "es", {"original": None}, n=6, batch_size=3, max_new_tokens=3)
    assert [p["log_odds"] for p in again["results"]["original"]["per_item"]] == pytest.approx(
        [p["log_odds"] for p in orig["per_item"]], abs=1e-5)


def test_alice_probe_bad_inputs(gemma3, tok):
    llama_mask = HeadMask.from_heads(tiny_model("llama"), [(0, 0)], scale=0.0)
    with pytest.raises(MaskMismatchError, match="intervention 'other model'"):
        alice_probe(gemma3, tok, "de", "es", {"original": None, "other model": llama_mask}, n=2)
    assert issubclass(MaskMismatchError, LahisError)
    with pytest.raises(LahisError, match="use one of"):
        alice_probe(gemma3, tok, "de", "xx", {"original": None}, n=2)
    with pytest.raises(LahisError, match="two different"):
        alice_probe(gemma3, tok, "es", "es", {"original": None}, n=2)
    with pytest.raises(LahisError, match="no interventions"):
        alice_probe(gemma3, tok, "de", "es", {}, n=2)
    with pytest.raises(LahisError, match="intervention 'junk'"):
        alice_probe(gemma3, tok, "de", "es", {"junk": 3}, n=2)


def test_format_probe_table_one_row_per_intervention(gemma3, tok):
    zero = HeadMask.from_heads(gemma3, [(0, 0), (1, 1)], scale=0.0)
    res = alice_probe(gemma3, tok, "en", "de", {"original": None, "de heads zeroed": zero, "ones": HeadMask.ones(gemma3)},
                      n=2, order="lang1_first", max_new_tokens=2)
    table = format_probe_table(res)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| intervention")]
    assert [r.split("|")[1].strip() for r in rows] == ["original", "de heads zeroed", "ones"]
    assert "mean log-odds" in table and "X in en, Y in de" in table
    assert rows[1].split("|")[2].strip() == "2"  # heads changed
    assert f"{res['results']['original']['mean_log_odds']:+.3f}" in rows[0]
