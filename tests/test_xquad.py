"""XQuAD loader (local files == hub rows), the reference split, the embedded QA sample and the prompts."""

import json
from pathlib import Path

import pytest

from lahis_ctrl.core.errors import LahisError
from lahis_ctrl.corpora.prompts import LM_EVAL_TEMPLATES, PAPER_TEMPLATES, format_prompt, format_target
from lahis_ctrl.corpora.xquad import (EMBEDDED_SPLIT, REFERENCE_SPLIT, XQUAD_LANGS, SplitSpec, embedded_langs,
                              load_embedded_qa, load_qa, load_squad_file, load_xquad, reference_split,
                              rows_from_dataset, select)


def hub_style_dataset(path: Path):
    """A datasets.Dataset built the way the hub's google/xquad was: the original loading script's
    generator (context/question/answer text stripped), with the hub's features."""
    import datasets

    def gen():
        squad = json.loads(path.read_text(encoding="utf-8"))
        for article in squad["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"].strip()
                for qa in paragraph["qas"]:
                    yield {"id": qa["id"], "context": context, "question": qa["question"].strip(),
                           "answers": {"text": [a["text"].strip() for a in qa["answers"]],
                                       "answer_start": [a["answer_start"] for a in qa["answers"]]}}

    features = datasets.Features({
        "id": datasets.Value("string"), "context": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
    })
    return datasets.Dataset.from_list(list(gen()), features=features)


def test_local_rows(shared_data):
    rows = load_xquad("de", shared_data / "xquad")
    assert len(rows) == 1190
    r = rows[0]
    assert set(r) == {"id", "context", "question", "answers"}
    assert set(r["answers"]) == {"text", "answer_start"}
    assert r["answers"]["text"][0] in r["context"]
    # the parent directory (holding xquad/) works too, and gives the same rows
    assert load_xquad("de", shared_data) == rows
    # parallel across languages: the same ids in the same order
    assert [x["id"] for x in load_xquad("es", shared_data)] == [x["id"] for x in rows]


def test_env_default(shared_data, monkeypatch):
    monkeypatch.setenv("LAHIS_DATA_DIR", str(shared_data))
    assert load_xquad("en")[5] == load_xquad("en", shared_data)[5]


@pytest.mark.parametrize("lang", ["de", "zh"])
def test_hub_rows_equal_local_rows(shared_data, monkeypatch, lang):
    path = shared_data / "xquad" / f"xquad.{lang}.json"
    dataset = hub_style_dataset(path)
    local = load_xquad(lang, shared_data)
    assert rows_from_dataset(dataset) == local
    # and the hub code path itself, with datasets.load_dataset answered by that Dataset
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return dataset

    monkeypatch.delenv("LAHIS_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_xquad(lang) == local
    assert calls == [("google/xquad", f"xquad.{lang}", "validation")]


def test_hub_failure_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.delenv("LAHIS_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LahisError, match="LAHIS_DATA_DIR"):
        load_xquad("en")


def test_reference_split(shared_data):
    rows = load_xquad("es", shared_data)
    train, test = reference_split(rows)
    assert len(train) == 200 and len(test) == 800
    assert test == rows[390:1190]
    first = {r["id"] for r in rows[:390]}
    assert {r["id"] for r in train} <= first
    assert not ({r["id"] for r in train} & {r["id"] for r in test})
    assert reference_split(rows)[0] == train  # seeded
    assert [r["id"] for r in reference_split(rows, SplitSpec(seed=1))[0]] != [r["id"] for r in train]
    assert train[0]["id"] != rows[0]["id"]  # shuffled
    # configurable
    tr, te = reference_split(rows, SplitSpec(train_end=100, train_size=None, test_start=100, test_end=150))
    assert len(tr) == 100 and te == rows[100:150]


def test_bad_inputs(tmp_path):
    with pytest.raises(LahisError, match="ar de el en es hi ro ru th tr vi zh"):
        load_xquad("xx")
    with pytest.raises(LahisError, match="not found"):
        load_xquad("de", tmp_path / "missing")
    with pytest.raises(LahisError, match=r"xquad\.de\.json"):
        load_xquad("de", tmp_path)
    rows = load_embedded_qa("en")
    with pytest.raises(LahisError, match="empty"):
        select(rows, "test", SplitSpec(train_end=5, test_start=100, test_end=None))
    with pytest.raises(LahisError, match="overlap"):
        reference_split(rows, SplitSpec(train_end=10, test_start=5))
    with pytest.raises(LahisError, match="split"):
        select(rows, "dev")
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"paragraphs": [{"qas": []}]}]}')
    with pytest.raises(LahisError, match="SQuAD"):
        load_squad_file(bad)
    with pytest.raises(LahisError, match="embedded"):
        load_embedded_qa("th")


def test_embedded_sample():
    langs = embedded_langs()
    assert len(langs) >= 6 and set(langs) <= set(XQUAD_LANGS)
    ids = None
    for lang in langs:
        rows = load_embedded_qa(lang)
        assert len(rows) >= 12
        for r in rows:
            text, start = r["answers"]["text"][0], r["answers"]["answer_start"][0]
            assert r["context"][start:start + len(text)] == text, (lang, r["id"])
        assert ids is None or [r["id"] for r in rows] == ids  # parallel across languages
        ids = [r["id"] for r in rows]
        train, test = reference_split(rows, EMBEDDED_SPLIT)
        assert train and test and not ({r["context"] for r in train} & {r["context"] for r in test})
    rows, split = load_qa("de", "embedded")
    assert split == EMBEDDED_SPLIT and rows == load_embedded_qa("de")
    assert load_qa.__defaults__ == (None,) and REFERENCE_SPLIT.train_size == 200


def test_prompts_cover_all_languages():
    row = {"context": "C {question} {x}", "question": "Q?"}
    for lang in XQUAD_LANGS:
        p = format_prompt(row, lang, "paper")
        assert p.count("C {question} {x}") == 1 and p.endswith("]") and "Q?" in p
        assert p.startswith("[")
        assert format_prompt(row, lang, "lm_eval").endswith(":")
    assert format_prompt(row, "en", "lm_eval") == "Context: C {question} {x}\n\nQuestion: Q?\n\nAnswer:"
    assert format_target("Paris", "lm_eval") == " Paris" and format_target("Paris", "paper") == "Paris"
    assert len(set(PAPER_TEMPLATES.values())) == 12
    with pytest.raises(LahisError, match="style"):
        format_prompt(row, "en", "chat")
    with pytest.raises(LahisError, match="unknown language"):
        format_prompt(row, "fr")


def test_lm_eval_templates_match_lm_eval():
    lm_eval = pytest.importorskip("lm_eval")
    task_dir = Path(lm_eval.__file__).parent / "tasks" / "xquad"
    for lang in XQUAD_LANGS:
        text = (task_dir / f"xquad_{lang}.yaml").read_text(encoding="utf-8")
        line = next(x for x in text.splitlines() if x.startswith("doc_to_text:"))
        yaml_template = json.loads(line.split(":", 1)[1].strip())  # a double-quoted YAML scalar is a JSON string here
        ours = LM_EVAL_TEMPLATES[lang].replace("{context}", "{{context}}").replace("{question}", "{{question}}")
        assert ours == yaml_template, lang
