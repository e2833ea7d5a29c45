"""`lahis audit`: parsing real lm-eval samples, `lahis evaluate` output, jsonl and text; report numbers; bad input;
the CI gate; all-or-nothing writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lahis_ctrl import audit as audit_mod
from lahis_ctrl.eval.audit import read_records, run_audit, task_language
from lahis_ctrl.cli import main
from lahis_ctrl.core.errors import LahisError

from tiny import save_tiny

DE = ["Der Zug in die Stadt fährt jeden Morgen um sieben Uhr ab.", "Sie arbeitet seit zehn Jahren im Krankenhaus.",
      "Wir gehen heute Abend zusammen ins Kino."]
EN = ["The train to the city leaves every morning at seven o'clock.", "She has worked in the hospital for ten years."]
ES = ["El tren a la ciudad sale todas las mañanas a las siete.", "Ella trabaja en el hospital desde hace diez años."]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def evaluate_rows():
    """What `lahis evaluate` writes per example (id, lang, mask, generation, gold, correct, expected_lang): a baseline
    where every answer is in its language, and a masked run where the German answers came out in English."""
    rows = []
    for mask in ("baseline", "mask_de"):
        for lang, sents in (("de", DE), ("en", EN), ("es", ES)):
            for i, s in enumerate(sents):
                gen = EN[i % len(EN)] if (mask == "mask_de" and lang == "de" and i < 2) else s
                rows.append({"id": f"{lang}-{i}", "lang": lang, "mask": mask, "generation": gen, "gold": "x",
                             "correct": False, "expected_lang": lang})
        rows.append({"id": "de-num", "lang": "de", "mask": mask, "generation": "1997", "gold": "1997",
                     "correct": True, "expected_lang": "de"})
    return rows


# --------------------------------------------------------------------------------------------------------------
# lm-eval --log_samples, produced by lm-eval itself with a tiny random model


def run_lm_eval(root: Path) -> Path:
    """lm_eval --log_samples on two local generation tasks (audit_gen_de, audit_gen_fr) with a tiny random model;
    returns the --output_path folder. tests/data/lm_eval_samples holds the samples files of one such run."""
    model = save_tiny(root / "model", "llama")
    data = write_jsonl(root / "docs.jsonl", [
        {"text": "Der Hund", "target": "bellt", "lang": "de"},
        {"text": "Le chien", "target": "aboie", "lang": "fr"},
        {"text": "El perro", "target": "ladra", "lang": "es"},
        {"text": "The dog", "target": "barks", "lang": "en"},
    ])
    tasks = root / "tasks"
    tasks.mkdir()
    for task in ("audit_gen_de", "audit_gen_fr"):
        (tasks / f"{task}.yaml").write_text(f"""task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{text}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    out = root / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={model},dtype=float32", "--tasks", "audit_gen_de,audit_gen_fr",
                           "--include_path", str(tasks), "--limit", "3", "--device", "cpu", "--log_samples",
                           "--output_path", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


COMMITTED_SAMPLES = Path(__file__).parent / "data" / "lm_eval_samples"


@pytest.fixture(params=["committed", pytest.param("live", marks=pytest.mark.slow)])
def lm_eval_samples(request, tmp_path_factory):
    """Samples files written by lm-eval: the committed ones (fast), and a fresh lm-eval run (slow: ~30 s)."""
    if request.param == "committed":
        return COMMITTED_SAMPLES
    pytest.importorskip("lm_eval")
    return run_lm_eval(tmp_path_factory.mktemp("lmeval"))


def test_lm_eval_samples_folder(lm_eval_samples, tmp_path):
    files = sorted(lm_eval_samples.rglob("samples_*.jsonl"))
    assert len(files) == 2
    records, info = read_records(lm_eval_samples)
    assert info["format"] == "lm-eval" and sorted(info["files"]) == [str(f) for f in files]
    assert len(records) == 6
    by_task = {}
    for r in records:
        by_task.setdefault(r.group, []).append(r)
    assert sorted(by_task) == ["audit_gen_de", "audit_gen_fr"]
    assert {r.expected for r in by_task["audit_gen_de"]} == {"de"}
    assert {r.expected for r in by_task["audit_gen_fr"]} == {"fr"}
    # the audited text is exactly what lm-eval kept after its filters
    for f in files:
        task = "audit_gen_de" if "audit_gen_de" in f.name else "audit_gen_fr"
        lines = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines()]
        assert [r.text for r in by_task[task]] == [x["filtered_resps"][0] for x in lines]
        assert [r.source for r in by_task[task]] == [f"{f}:{i}" for i in range(1, 4)]

    # one file, with the expected language taken from each doc instead of the task name
    one = [f for f in files if "audit_gen_de" in f.name][0]
    records, info = read_records(one, lang_field="doc.lang")
    assert info["format"] == "lm-eval" and [r.expected for r in records] == ["de", "fr", "es"]
    records, _ = read_records(one, expected="it")
    assert {r.expected for r in records} == {"it"}

    assert main(["audit", str(lm_eval_samples), "--out", str(tmp_path / "rep")]) == 0  # a folder of samples
    report = json.loads((tmp_path / "rep" / "audit.json").read_text())
    assert report["n"] == 6 and [(r["group"], r["expected"], r["n"]) for r in report["rows"]] == [
        ("audit_gen_de", "de", 3), ("audit_gen_fr", "fr", 3)]
    assert (tmp_path / "rep" / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lm_eval_two_runs_and_two_filters(tmp_path):
    """Two runs of one task in a folder are reported apart; so are a task's filters."""
    src = sorted(COMMITTED_SAMPLES.rglob("samples_audit_gen_de_*.jsonl"))[0]
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "a" / "samples_audit_gen_de_2026-01-01T00-00-00.000001.jsonl", rows)
    write_jsonl(tmp_path / "b" / "samples_audit_gen_de_2026-01-02T00-00-00.000001.jsonl",
                rows + [{**r, "filter": "strict", "filtered_resps": ["Der Hund bellt."]} for r in rows])
    records, _ = read_records(tmp_path)
    groups = [r.group for r in records]
    assert groups == ["audit_gen_de (2026-01-01T00-00-00.000001)"] * 3 + \
        ["audit_gen_de (2026-01-02T00-00-00.000001)[none]"] * 3 + \
        ["audit_gen_de (2026-01-02T00-00-00.000001)[strict]"] * 3
    assert [r.text for r in records[6:]] == ["Der Hund bellt."] * 3


def test_lm_eval_loglikelihood_samples(tmp_path):
    rec = {"doc_id": 0, "doc": {}, "target": "0", "arguments": {}, "resps": [[[-1.5, False]]],
           "filtered_resps": [[-1.5, False]], "filter": "none", "metrics": ["acc"]}
    path = write_jsonl(tmp_path / "samples_xnli_de_2026-01-01T00-00-00.000001.jsonl", [rec])
    with pytest.raises(LahisError, match=r"jsonl:1: task 'xnli_de' generated no text .*generate_until"):
        read_records(path)


@pytest.mark.parametrize("task, lang", [
    ("xquad_de", "de"), ("lahis_xquad_zh", "zh"), ("flores_en-de", "de"), ("wmt16-ro-en", "en"),
    ("belebele_deu_Latn", "de"), ("flores_eng_Latn-zho_Hans", "zh"), ("mgsm_direct_es", "es"), ("xnli_hi", "hi"),
])
def test_task_language(task, lang):
    assert task_language(task) == lang


def test_task_without_language():
    with pytest.raises(LahisError, match="cannot tell the expected language .*'gsm8k_cot'.*--expected"):
        task_language("gsm8k_cot")


# --------------------------------------------------------------------------------------------------------------
# lahis evaluate output: exact counts


def test_evaluate_output_report(tmp_path, capsys):
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    assert main(["audit", str(path), "--details", "true"]) == 0
    out_dir = tmp_path / "eval.audit"
    report = json.loads((out_dir / "audit.json").read_text())
    assert report["format"] == "evaluate" and report["grouped"] and report["n"] == 16
    rows = {(r["group"], r["expected"]): r for r in report["rows"]}
    assert list(rows) == [("baseline", "de"), ("baseline", "en"), ("baseline", "es"),
                          ("mask_de", "de"), ("mask_de", "en"), ("mask_de", "es")]
    base, masked = rows[("baseline", "de")], rows[("mask_de", "de")]
    assert (base["n"], base["on_target"], base["off_target"], base["undetermined"]) == (4, 3, 0, 1)
    assert (masked["n"], masked["on_target"], masked["off_target"], masked["undetermined"]) == (4, 1, 2, 1)
    assert masked["off_target_rate"] == 0.5 and masked["top_wrong"] == [["en", 2]]
    assert masked["predicted"] == {"en": 2, "de": 1, "und": 1}
    assert masked["undetermined_reasons"] == {"no letters": 1}
    for lang in ("en", "es"):
        assert rows[("mask_de", lang)]["on_target"] == rows[("mask_de", lang)]["n"] == 2
    assert (report["on_target"], report["off_target"], report["undetermined"]) == (12, 2, 2)

    md = (out_dir / "audit.md").read_text()
    assert "| mask_de | de | 4 | 1 (25.0%) | 2 (50.0%) | 1 (25.0%) | en (2) | no letters (1) |" in md
    assert "| expected | de | en | es | und |" in md and "| mask_de / de | 1 | 2 | 0 | 1 |" in md
    examples = [json.loads(x) for x in (out_dir / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 16 and examples[0]["source"] == f"{path}:1" and examples[0]["lang"] == "de"
    printed = capsys.readouterr().out
    assert "mask_de / de" in printed and "50.0%" in printed


def test_real_evaluate_output(tmp_path, tok):
    """examples.jsonl as lahis evaluate writes it (evaluate_masks with a tiny random model, two masks)."""
    import torch
    from tiny import tiny_model

    from lahis_ctrl.eval.evaluate import evaluate_masks
    from lahis_ctrl.core.mask import HeadMask

    torch.manual_seed(0)
    model = tiny_model("llama")
    rows = [{"id": f"q{i}", "context": c, "question": q, "answers": {"text": [a], "answer_start": [0]}}
            for i, (c, q, a) in enumerate([("Berlin ist die Hauptstadt.", "Was ist die Hauptstadt?", "Berlin"),
                                            ("Der Hund bellt.", "Wer bellt?", "Der Hund"),
                                            ("Paris liegt in Frankreich.", "Wo liegt Paris?", "Frankreich")])]
    masks = {"none": None, "zeroed": HeadMask.from_heads(model, [(0, 0), (1, 1)], scale=0.0)}
    evaluate_masks(model, tok, "de", masks, rows, max_new_tokens=4, batch_size=3, out_dir=tmp_path / "ev")
    path = tmp_path / "ev" / "examples.jsonl"
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    records, info = read_records(path)
    assert info["format"] == "evaluate"
    assert [(r.text, r.expected, r.group) for r in records] == [(x["generation"], "de", x["mask"]) for x in lines]
    report = run_audit(path, plot=False, min_confidence=0.0)
    assert [(r["group"], r["expected"], r["n"]) for r in report["rows"]] == [("none", "de", 3), ("zeroed", "de", 3)]


# --------------------------------------------------------------------------------------------------------------
# plain jsonl and plain text


def test_plain_jsonl_with_nested_fields(tmp_path):
    rows = [{"out": {"text": s}, "meta": {"lang": "deu"}} for s in DE] + \
           [{"out": {"text": s}, "meta": {"lang": "spa"}} for s in ES]
    path = write_jsonl(tmp_path / "gens.jsonl", rows)
    with pytest.raises(LahisError, match=r"gens.jsonl:1: no field for the text: none of generation, text.*--text_field"):
        read_records(path)
    records, info = read_records(path, text_field="out.text", lang_field="meta.lang")
    assert info["format"] == "jsonl" and [r.expected for r in records] == ["de"] * 3 + ["es"] * 2
    report = run_audit(path, text_field="out.text", lang_field="meta.lang", plot=False)
    assert [(r["expected"], r["n"], r["on_target"]) for r in report["rows"]] == [("de", 3, 3), ("es", 2, 2)]
    assert set(report["written"]) == {"json", "markdown"}


def test_default_fields(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": EN[0], "language": "en"}, {"output": DE[0], "lang": "de"}])
    records, _ = read_records(path)
    assert [(r.text, r.expected) for r in records] == [(EN[0], "en"), (DE[0], "de")]
    records, _ = read_records(path, expected="fr")  # --expected overrides the fields
    assert [r.expected for r in records] == ["fr", "fr"]


def test_plain_text(tmp_path):
    path = tmp_path / "gens.txt"
    path.write_text("\n".join(DE + ["", EN[0], "   "]) + "\n", encoding="utf-8")
    with pytest.raises(LahisError, match="needs --expected"):
        read_records(path)
    report = run_audit(path, expected="de", out=tmp_path / "r", plot=False)
    assert report["format"] == "text" and report["n"] == 4  # blank lines are no texts
    (row,) = report["rows"]
    assert (row["on_target"], row["off_target"], row["top_wrong"]) == (3, 1, [["en", 1]])


# --------------------------------------------------------------------------------------------------------------
# bad input


def test_invalid_json_line_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": DE[0], "lang": "de"}, {"text": DE[1], "lang": "de"},
                                             '{"text": "broken', {"text": DE[2], "lang": "de"}])
    with pytest.raises(LahisError, match=r"g.jsonl:3: invalid JSON .*--skip_bad"):
        read_records(path)
    assert main(["audit", str(path)]) == 2
    assert not (tmp_path / "g.audit").exists()  # no partial report


def test_missing_field_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": DE[0], "lang": "de"}, {"text": DE[1]}])
    with pytest.raises(LahisError, match=r"g.jsonl:2: no field for the expected language: none of "
                                         r"expected_lang, lang, language .*fields: text\); pass --lang_field or --expected"):
        read_records(path)
    with pytest.raises(LahisError, match=r"g.jsonl:1: no field 'gen'.*missing 'gen'.*fields: text, lang"):
        read_records(path, text_field="gen")
    path = write_jsonl(tmp_path / "h.jsonl", [{"text": 5, "lang": "de"}])
    with pytest.raises(LahisError, match=r"h.jsonl:1: field 'text' holds int"):
        read_records(path)


def test_unknown_language_code(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": DE[0], "lang": "de"}, {"text": DE[1], "lang": "deutsch"}])
    with pytest.raises(LahisError, match=r"g.jsonl:2: unknown language code 'deutsch'.*field 'lang'"):
        read_records(path)
    with pytest.raises(LahisError, match="unknown language code 'xx'"):
        read_records(path, expected="xx")


def test_empty_inputs(tmp_path):
    for name, content in [("e.jsonl", ""), ("b.jsonl", "\n\n"), ("e.txt", "")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(LahisError, match="no records to audit"):
            read_records(tmp_path / name, expected="de")
    with pytest.raises(LahisError, match="input not found"):
        read_records(tmp_path / "missing.jsonl")
    with pytest.raises(LahisError, match="no lm-eval samples files"):
        read_records(tmp_path, format="lm-eval")


def test_skip_bad_counts_lines(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": DE[0], "lang": "de"}, "not json", {"text": DE[1], "lang": "qq1"},
                                             [1, 2], {"nothing": 1}, {"text": DE[2], "lang": "de"}])
    report = run_audit(path, skip_bad=True, plot=False)
    assert report["n"] == 2 and report["skipped"] == 4
    assert [s["source"] for s in report["skipped_lines"]] == [f"{path}:{i}" for i in (2, 3, 4, 5)]
    md = (tmp_path / "g.audit" / "audit.md").read_text()
    assert "skipped bad lines: 4" in md and f"`{path}:2`: invalid JSON" in md
    bad = write_jsonl(tmp_path / "all_bad.jsonl", ["nope", "{"])
    with pytest.raises(LahisError, match="all 2 lines were bad"):
        read_records(bad, skip_bad=True)


# --------------------------------------------------------------------------------------------------------------
# CI gate and atomic writes


def test_max_off_target_gate(tmp_path, capsys):
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    with pytest.raises(SystemExit) as exc:  # mask_de / de is 50% off-target
        main(["audit", str(path), "--max_off_target", "0.4", "--plot", "false"])
    assert exc.value.code == 1
    assert "off-target rate above 0.4 for mask_de / de 50.0%" in capsys.readouterr().err
    report = json.loads((tmp_path / "eval.audit" / "audit.json").read_text())  # the report is still written
    assert report["gate"]["passed"] is False and report["gate"]["failed"] == [
        {"group": "mask_de", "expected": "de", "rate": 0.5}]
    assert main(["audit", str(path), "--max_off_target", "0.5", "--plot", "false"]) == 0
    # undetermined counted as off-target: mask_de / de is then 75%
    with pytest.raises(SystemExit):
        main(["audit", str(path), "--max_off_target", "0.6", "--undetermined_as_off", "true", "--plot", "false"])
    assert main(["audit", str(path), "--max_off_target", "1.5"]) == 2


def test_failed_run_keeps_previous_report(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    out = tmp_path / "rep"
    run_audit(path, out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["audit.json", "audit.md", "audit.png"]

    def broken_plot(report, p):
        Path(p).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(audit_mod, "_plot", broken_plot)
    write_jsonl(path, evaluate_rows()[:3])
    with pytest.raises(RuntimeError, match="disk full"):
        run_audit(path, out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files left, nothing replaced


def test_glotlid_backend_from_the_cli(tmp_path):
    model = Path(__file__).parent / "data" / "tiny_glotlid.ftz"
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    assert main(["audit", str(path), "--backend", "glotlid", "--lid_model", str(model), "--plot", "false"]) == 0
    report = json.loads((tmp_path / "eval.audit" / "audit.json").read_text())
    assert report["backend"] == "glotlid:tiny_glotlid.ftz"
    assert [(r["on_target"], r["off_target"], r["undetermined"]) for r in report["rows"]] == [
        (3, 0, 1), (2, 0, 0), (2, 0, 0), (1, 2, 1), (2, 0, 0), (2, 0, 0)]
    assert main(["audit", str(path), "--backend", "glotlid", "--lid_model", str(tmp_path / "none.bin")]) == 2


def test_langdetect_backend_in_report(tmp_path):
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    report = run_audit(path, backend="langdetect", plot=False)
    assert report["backend"] == "langdetect"
    assert [(r["on_target"], r["off_target"], r["undetermined"]) for r in report["rows"]] == [
        (3, 0, 1), (2, 0, 0), (2, 0, 0), (1, 2, 1), (2, 0, 0), (2, 0, 0)]
