"""`lahis audit`: parsing real lm-eval samples, `lahis evaluate` output, jsonl, csv and text; report numbers named
by what they count (off-target rate among decided outputs, shares among all) and their Wilson intervals; conditions
(runs, masks) never pooled; bad input; the CI gate; all-or-nothing writes and no replaced report of another audit;
--compare (paired change in off-target rate) of two files or two conditions of one file; --metric lcb."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    run = files[0].parent.name  # the run: the model folder lm-eval wrote (no results file here names a mask)
    assert report["n"] == 6 and [(r["run"], r["group"], r["expected"], r["n"]) for r in report["rows"]] == [
        (run, "audit_gen_de", "de", 3), (run, "audit_gen_fr", "fr", 3)]
    assert (tmp_path / "rep" / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lm_eval_runs_are_labelled_by_model_mask_and_date(tmp_path):
    """Runs of one task are reported apart, each labelled by its model folder, the mask its results file records
    and (only where that would name two runs) its date; a task's filters are reported apart too."""
    src = sorted(COMMITTED_SAMPLES.rglob("samples_audit_gen_de_*.jsonl"))[0]
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "a" / "samples_audit_gen_de_2026-01-01T00-00-00.000001.jsonl", rows)
    write_jsonl(tmp_path / "b" / "samples_audit_gen_de_2026-01-02T00-00-00.000001.jsonl",
                rows + [{**r, "filter": "strict", "filtered_resps": ["Der Hund bellt."]} for r in rows])
    records, _ = read_records(tmp_path)
    assert [(r.run, r.group) for r in records] == [("a", "audit_gen_de")] * 3 + [("b", "audit_gen_de[none]")] * 3 + \
        [("b", "audit_gen_de[strict]")] * 3
    assert [r.text for r in records[6:]] == ["Der Hund bellt."] * 3
    # two runs in one folder: lahis_hf's results name their masks; where the label is the same, the date tells
    run = tmp_path / "c" / "tiny"
    run.mkdir(parents=True)
    for date, mask in (("2026-01-01T00-00-00.000001", {"source": "/m/de-top.safetensors", "mode": "fold"}),
                       ("2026-01-02T00-00-00.000001", None), ("2026-01-03T00-00-00.000001", None)):
        write_jsonl(run / f"samples_audit_gen_de_{date}.jsonl", rows)
        (run / f"results_{date}.json").write_text(json.dumps({"config": {"model": "lahis_hf", "lahis_mask": mask}}))
    records, _ = read_records(tmp_path / "c")
    assert list(dict.fromkeys(r.run for r in records)) == [
        "tiny mask=de-top.safetensors", "tiny mask=none (2026-01-02T00-00-00.000001)",
        "tiny mask=none (2026-01-03T00-00-00.000001)"]
    report = run_audit(tmp_path / "c", plot=False)
    assert len(report["conditions"]) == 3 and "all" not in {c["name"] for c in report["conditions"]}


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
    assert main(["audit", str(path), "--details"]) == 0
    out_dir = tmp_path / "eval.jsonl.audit"
    report = json.loads((out_dir / "audit.json").read_text())
    assert report["format"] == "evaluate" and report["grouped"] and report["n"] == 16
    rows = {(r["group"], r["expected"]): r for r in report["rows"]}
    assert list(rows) == [("baseline", "de"), ("baseline", "en"), ("baseline", "es"),
                          ("mask_de", "de"), ("mask_de", "en"), ("mask_de", "es")]
    base, masked = rows[("baseline", "de")], rows[("mask_de", "de")]
    assert (base["n"], base["on_target"], base["off_target"], base["undetermined"]) == (4, 3, 0, 1)
    assert (masked["n"], masked["decided"], masked["on_target"], masked["off_target"], masked["undetermined"]) == \
        (4, 3, 1, 2, 1)
    # two numbers, two names: off-target among the decided outputs (lm-eval's off_target_rate) and among all
    assert masked["off_target_rate"] == pytest.approx(2 / 3) and masked["off_target_share"] == 0.5
    assert masked["undetermined_share"] == 0.25 and masked["top_wrong"] == [["en", 2]]
    assert masked["predicted"] == {"en": 2, "de": 1, "und": 1}
    assert masked["undetermined_reasons"] == {"no letters": 1}
    for lang in ("en", "es"):
        assert rows[("mask_de", lang)]["on_target"] == rows[("mask_de", lang)]["n"] == 2
    # the two masks are two conditions: totals per condition, never one pooled over both
    assert "off_target" not in report and [(c["group"], c["n"], c["off_target"]) for c in report["conditions"]] == [
        ("baseline", 8, 0), ("mask_de", 8, 2)]

    # every figure with its 95% Wilson interval: 2/3 -> [20.8, 93.9], 2/4 -> [15.0, 85.0] (closed form in
    # test_wilson_intervals_in_every_figure)
    assert masked["off_target_rate_ci"] == pytest.approx(list(wilson(2, 3)), abs=1e-12)
    assert masked["off_target_share_ci"] == pytest.approx(list(wilson(2, 4)), abs=1e-12)
    md = (out_dir / "audit.md").read_text()
    assert ("| mask_de | de | 4 | 3 | 2 of 3: 66.7% [20.8, 93.9] | 25.0% [4.6, 69.9] | 50.0% [15.0, 85.0] | "
            "1: 25.0% [4.6, 69.9] | en (2) | no letters (1) |") in md
    assert "| row | de | en | es | und |" in md and "| mask_de / de | 1 | 2 | 0 | 1 |" in md
    assert "## What the figures count" in md and "`off_target_rate`: off-target outputs among the decided" in md
    examples = [json.loads(x) for x in (out_dir / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 16 and examples[0]["source"] == f"{path}:1" and examples[0]["lang"] == "de"
    printed = capsys.readouterr().out
    assert re.search(r"\nmask_de / de +4 +3 +66\.7% \[20\.8, 93\.9\] +50\.0% +25\.0% +en:2\n", printed)
    assert re.search(r"\nmask_de \(all languages\) +8 +7 +28\.6% \[8\.2, 64\.1\] +25\.0% +12\.5%", printed)


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


def test_a_condition_of_one_file(tmp_path):
    """INPUT:FIELD=VALUE audits the lines of one condition (one mask of `lahis evaluate` output)."""
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    report = run_audit(f"{path}:mask=mask_de", plot=False)
    assert [(r["group"], r["expected"], r["off_target"]) for r in report["rows"]] == [
        ("mask_de", "de", 2), ("mask_de", "en", 0), ("mask_de", "es", 0)]
    assert Path(report["written"]["json"]).parent == tmp_path / "eval.jsonl.mask-mask_de.audit"
    with pytest.raises(LahisError, match=r"no record has mask = 'lahis'"):
        run_audit(f"{path}:mask=lahis", plot=False)


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
    assert not (tmp_path / "g.jsonl.audit").exists()  # no partial report


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
    md = (tmp_path / "g.jsonl.audit" / "audit.md").read_text()
    assert "skipped bad lines: 4" in md and f"`{path}:2`: invalid JSON" in md
    bad = write_jsonl(tmp_path / "all_bad.jsonl", ["nope", "{"])
    with pytest.raises(LahisError, match="all 2 lines were bad"):
        read_records(bad, skip_bad=True)


# --------------------------------------------------------------------------------------------------------------
# CI gate and atomic writes


def test_max_off_target_gate(tmp_path, capsys):
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    # mask_de / de: 2 of its 3 decided outputs are off-target: exit status 1
    assert main(["audit", str(path), "--max_off_target", "0.4", "--plot", "false"]) == 1
    assert "off_target_rate (off-target / decided) above 0.4 for mask_de / de 66.7%" in capsys.readouterr().err
    report = json.loads((tmp_path / "eval.jsonl.audit" / "audit.json").read_text())  # the report is still written
    assert report["gate"]["passed"] is False and report["gate"]["failed"] == [
        {"run": None, "group": "mask_de", "expected": "de", "rate": pytest.approx(2 / 3)}]
    assert main(["audit", str(path), "--max_off_target", "0.7", "--plot", "false", "--overwrite"]) == 0
    # undetermined counted as off-target: mask_de / de is then 3 of 4
    assert main(["audit", str(path), "--max_off_target", "0.7", "--undetermined_as_off", "--plot", "false",
                 "--overwrite"]) == 1
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

    monkeypatch.setattr("lahis_ctrl.eval.audit.report.plot_audit", broken_plot)
    write_jsonl(path, evaluate_rows()[:3])
    with pytest.raises(RuntimeError, match="disk full"):
        run_audit(path, out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files left, nothing replaced


def test_a_second_audit_never_replaces_another_report(tmp_path, capsys):
    """Another input, metric or settings into the same folder is refused (an LCB report was lost that way); the
    same audit again rewrites the same bytes; --overwrite replaces it, leaving no file of the old report."""
    a, b = two_runs(tmp_path)
    out = tmp_path / "rep"
    assert main(["audit", str(a), "--out", str(out)]) == 0
    assert main(["audit", str(a), "--out", str(out), "--details"]) == 0  # the same numbers, one more file: allowed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "examples.jsonl" in before
    assert main(["audit", str(a), "--out", str(out), "--details"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "audit.png"} == \
        {k: v for k, v in before.items() if k != "audit.png"}
    capsys.readouterr()
    for argv in (["audit", str(b), "--out", str(out)], ["audit", str(a), "--out", str(out), "--min_confidence", "0.7"],
                 ["audit", str(a), "--compare", str(b), "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lahis: error: {out} already holds") and "--overwrite" in err and err.count("\n") == 1
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["audit", str(a), "--compare", str(b), "--out", str(out), "--overwrite", "--plot", "false"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "audit.md"]  # the old audit.png went with it
    # each kind of report has its own default folder: the off-target, the LCB and the comparison reports coexist
    assert main(["audit", str(a), "--compare", str(b)]) == 0 and (tmp_path / "a.jsonl.audit-compare" / "audit.json").is_file()


def test_glotlid_backend_from_the_cli(tmp_path):
    model = Path(__file__).parent / "data" / "tiny_glotlid.ftz"
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    assert main(["audit", str(path), "--backend", "glotlid", "--lid_model", str(model), "--plot", "false"]) == 0
    report = json.loads((tmp_path / "eval.jsonl.audit" / "audit.json").read_text())
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


# --------------------------------------------------------------------------------------------------------------
# Intervals


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval in closed form (independent of eval.stats)."""
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (
        1 + z * z / n)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def test_wilson_intervals_in_every_figure(tmp_path, capsys):
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    assert main(["audit", str(path)]) == 0
    report = json.loads((tmp_path / "eval.jsonl.audit" / "audit.json").read_text())
    assert report["confidence"] == 0.95 and report["interval"] == "Wilson score"
    for row in report["rows"] + report["conditions"]:
        for key in ("on_target", "off_target", "undetermined"):
            want = list(wilson(row[key], row["n"]))
            assert row[f"{key}_share_ci"] == pytest.approx(want, abs=1e-12), (row.get("group"), key)
            low, high = row[f"{key}_share_ci"]
            assert low <= row[f"{key}_share"] <= high
        assert row["off_target_rate_ci"] == pytest.approx(list(wilson(row["off_target"], row["decided"])), abs=1e-12)
    # the masked condition: 2 of its 7 decided outputs off-target -> 28.6% [8.2, 64.1]
    masked = report["conditions"][1]
    assert masked["off_target_rate_ci"] == pytest.approx(list(wilson(2, 7)), abs=1e-12)
    md = (tmp_path / "eval.jsonl.audit" / "audit.md").read_text()
    assert "| mask_de | de, en, es | 8 | 7 | 28.6% [8.2, 64.1] | 25.0% [7.1, 59.1] | 12.5% [2.2, 47.1] |" in md
    assert "| baseline | de | 4 | 3 | 0 of 3: 0.0% [0.0, 56.1] | 75.0% [30.1, 95.4] | 0.0% [0.0, 49.0] |" in md


def test_an_undetermined_output_shows_its_best_guess(tmp_path):
    """A short English answer to a German prompt that the language ID cannot call with confidence stays
    undetermined, but its best guess is reported, so an off-target answer is not hidden."""
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": "The dog barks loudly in the garden.", "lang": "de"},
                                             {"text": DE[0], "lang": "de"}])
    (row,) = run_audit(path, plot=False)["rows"]
    assert (row["undetermined"], row["undetermined_reasons"], row["undetermined_guesses"]) == (1, {"low confidence": 1},
                                                                                              {"en": 1})
    md = (tmp_path / "g.jsonl.audit" / "audit.md").read_text()
    assert "low confidence (1; best guess en: 1)" in md


def test_plot_draws_error_bars(tmp_path, monkeypatch):
    import matplotlib.axes

    calls = []
    real = matplotlib.axes.Axes.barh

    def spy(self, y, width, *args, **kwargs):
        calls.append((list(width), kwargs.get("xerr")))
        return real(self, y, width, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", spy)
    report = run_audit(write_jsonl(tmp_path / "eval.jsonl", evaluate_rows()), out=tmp_path / "r")
    assert (tmp_path / "r" / "audit.png").read_bytes()[:4] == b"\x89PNG"
    assert len(calls) == 3  # on-target, off-target, undetermined: one bar per row each, with its interval
    for (values, xerr), key in zip(calls, ("on_target", "off_target", "undetermined")):
        assert values == pytest.approx([100 * r[f"{key}_share"] for r in report["rows"]])  # in %, like the tables
        for v, lo, hi, r in zip(values, xerr[0], xerr[1], report["rows"]):
            assert (v - lo, v + hi) == pytest.approx(tuple(100 * x for x in r[f"{key}_share_ci"]), abs=1e-9)


# --------------------------------------------------------------------------------------------------------------
# --compare: two runs on the same items


def two_runs(tmp_path, shuffle_b: bool = True) -> tuple[Path, Path]:
    """A: the baseline rows of evaluate_rows (all on-target but one undetermined '1997'); B: the masked run, where
    de-0 and de-1 came out in English (in reverse order when shuffle_b: matching is by id)."""
    rows = evaluate_rows()
    a = [r for r in rows if r["mask"] == "baseline"]
    b = [r for r in rows if r["mask"] == "mask_de"]
    return write_jsonl(tmp_path / "a.jsonl", a), write_jsonl(tmp_path / "b.jsonl", b[::-1] if shuffle_b else b)


def test_compare_two_runs_by_item_id(tmp_path, capsys):
    from lahis_ctrl.eval.stats import METHOD_MCNEMAR, paired_difference

    a, b = two_runs(tmp_path)
    assert main(["audit", str(a), "--compare", str(b)]) == 0
    report = json.loads((tmp_path / "a.jsonl.audit-compare" / "audit.json").read_text())
    (comp,) = report["comparisons"]
    assert (comp["a"], comp["b"]) == (f"`{a}`", f"`{b}`")
    c = comp["comparison"]
    assert c["matched_by"] == "item id" and c["n_items"] == 8 and c["method"] == METHOD_MCNEMAR
    rows = {r["expected"]: r for r in c["rows"]}
    assert list(rows) == ["de", "en", "es", "all"]
    de = rows["de"]
    # de-num ('1997') is undetermined in both runs: dropped; of the 3 kept pairs, 2 turned off-target
    assert (de["n_items"], de["n_pairs"], de["dropped_undetermined"]) == (4, 3, 1)
    assert (de["off_target_a"], de["off_target_b"], de["a_only_off"], de["b_only_off"]) == (0, 2, 0, 2)
    assert de["change"] == pytest.approx(2 / 3) and de["p_value"] == 0.5  # McNemar: 2 * P(X <= 0), X ~ Bin(2, 1/2)
    assert de["off_target_ci_b"] == pytest.approx(list(wilson(2, 3)), abs=1e-12)
    want = paired_difference([0, 0, 0], [1, 1, 0])  # the interval of eval.stats for these pairs
    assert de["change_ci"] == pytest.approx(list(want.ci)) and de["change_ci"][0] < 2 / 3 < de["change_ci"][1]
    en = rows["en"]
    assert (en["change"], en["p_value"], en["b_only_off"]) == (0.0, 1.0, 0)
    assert en["change_ci"] == pytest.approx(list(paired_difference([0, 0], [0, 0]).ci))
    assert (rows["all"]["n_pairs"], rows["all"]["dropped_undetermined"]) == (7, 1)
    assert rows["all"]["change"] == pytest.approx(2 / 7) and rows["all"]["p_value"] == 0.5
    # both runs are in the report, as runs A and B of their own rows (and of audit.png)
    assert report["compare_input"] == str(b)
    assert [(r["run"], r["group"], r["expected"], r["off_target"]) for r in report["rows"]][2:4] == [
        ("A", "baseline", "es", 0), ("B", "mask_de", "de", 2)]
    md = (tmp_path / "a.jsonl.audit-compare" / "audit.md").read_text()
    assert "## Change in off-target rate: B - A" in md and "pairs where either output is undetermined are dropped " \
        "(1 of 8)" in md and f"- A: `{a}`" in md and f"- B: `{b}`" in md
    assert "| de | 4 | 3 | 1 | 0.0% [0.0, 56.1] | 66.7% [20.8, 93.9] | 0 | 2 | +66.7 [" in md
    assert (tmp_path / "a.jsonl.audit-compare" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "change in off-target rate B - A (item id; pairs with an undetermined output dropped)" in printed
    assert re.search(r"\nde\s+3\s+1\s+0\.0%\s+66\.7%\s+\+66\.7 \[.*\]\s+0\.5\n", printed)
    # undetermined counted as off-target: nothing dropped, de-num is off in both runs
    report = run_audit(a, compare=b, undetermined_as_off=True, plot=False, out=tmp_path / "u")
    de = report["comparisons"][0]["comparison"]["rows"][0]
    assert (de["n_pairs"], de["dropped_undetermined"], de["off_target_a"], de["off_target_b"]) == (4, 0, 1, 3)


def test_compare_lm_eval_runs_by_doc_id(tmp_path):
    """Two lm-eval --output_path folders of the same tasks: matched by task and doc_id, whatever the file order."""
    b_dir = tmp_path / "b" / "model"
    b_dir.mkdir(parents=True)
    for f in sorted(COMMITTED_SAMPLES.rglob("samples_*.jsonl")):
        rows = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines()]
        for r in rows:
            r["filtered_resps"] = ["Der Hund schläft den ganzen Tag auf dem Sofa im Wohnzimmer."]
        write_jsonl(b_dir / f.name.replace("2026-11-25", "2026-12-01"), rows[::-1])
    report = run_audit(COMMITTED_SAMPLES, compare=tmp_path / "b", plot=False, out=tmp_path / "r")
    c = report["comparisons"][0]["comparison"]
    assert c["matched_by"] == "item id" and c["n_items"] == 6
    rows = {r["expected"]: r for r in c["rows"]}
    # B answers German everywhere: off-target for the French task, on-target for the German one
    assert rows["fr"]["off_target_rate_b"] == 1.0 and rows["de"]["off_target_rate_b"] == 0.0
    records, _ = read_records(COMMITTED_SAMPLES)
    assert sorted(r.item for r in records) == [f"audit_gen_{lang}:{i}" for lang in ("de", "fr") for i in range(3)]


def test_compare_by_line_order_and_mismatches(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n".join(DE) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join([DE[0], EN[0], DE[2]]) + "\n", encoding="utf-8")
    report = run_audit(tmp_path / "a.txt", expected="de", compare=tmp_path / "b.txt", plot=False)
    c = report["comparisons"][0]["comparison"]
    assert c["matched_by"] == "line order" and c["rows"][0]["change"] == pytest.approx(1 / 3)
    # a text more in B: the first one without a counterpart is named
    (tmp_path / "c.txt").write_text("\n".join(DE + [EN[1]]) + "\n", encoding="utf-8")
    with pytest.raises(LahisError, match=r"A has 3 texts and B 4; text 4 of B \(.*c.txt:4\) has no counterpart in A"):
        run_audit(tmp_path / "a.txt", expected="de", compare=tmp_path / "c.txt", plot=False, overwrite=True)
    # the same ids are needed on both sides
    a, b = two_runs(tmp_path)
    rows = [json.loads(x) for x in b.read_text().splitlines()]
    write_jsonl(b, [r for r in rows if r["id"] != "es-1"])
    with pytest.raises(LahisError, match=r"do not hold the same items: item 'es-1' \(es\) of A \(.*a.jsonl:7\) is not "
                                         r"in B"):
        run_audit(a, compare=b, plot=False, overwrite=True)
    write_jsonl(b, rows + [rows[0]])
    with pytest.raises(LahisError, match=r"B holds item 'de-num' \(de\) twice"):
        run_audit(a, compare=b, plot=False, overwrite=True)
    capsys.readouterr()
    assert main(["audit", str(a), "--compare", str(b), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lahis: error: --compare: B holds item") and err.count("\n") == 1
    with pytest.raises(LahisError, match="needs a second run"):
        run_audit(a, compare=a, plot=False, overwrite=True)


def test_compare_two_conditions_inside_one_file(tmp_path, capsys):
    """`lahis evaluate` writes every mask into one examples.jsonl: --compare_by mask compares each mask with the
    first one, and FILE:mask=A --compare FILE:mask=B compares two of them; both give the numbers of two files."""
    path = write_jsonl(tmp_path / "eval.jsonl", evaluate_rows())
    a, b = two_runs(tmp_path)
    files = run_audit(a, compare=b, plot=False, out=tmp_path / "files")["comparisons"][0]["comparison"]
    assert main(["audit", str(path), "--compare_by", "mask"]) == 0
    report = json.loads((tmp_path / "eval.jsonl.audit-compare" / "audit.json").read_text())
    (comp,) = report["comparisons"]
    assert (comp["a"], comp["b"]) == (f"mask = baseline in `{path}`", f"mask = mask_de in `{path}`")
    assert comp["comparison"]["rows"] == files["rows"]
    assert "A = mask = baseline" in capsys.readouterr().out
    sel = run_audit(f"{path}:mask=baseline", compare=f"{path}:mask=mask_de", plot=False, out=tmp_path / "sel")
    assert sel["comparisons"][0]["comparison"]["rows"] == files["rows"]
    one = write_jsonl(tmp_path / "one.jsonl", [r for r in evaluate_rows() if r["mask"] == "baseline"])
    with pytest.raises(LahisError, match=r"--compare_by mask: .*one.jsonl holds one value of it \('baseline'\)"):
        run_audit(one, compare_by="mask", plot=False)
    with pytest.raises(LahisError, match="alternatives"):
        run_audit(path, compare=a, compare_by="mask", plot=False)


def test_csv_input_for_the_off_target_audit(tmp_path):
    path = tmp_path / "gens.csv"
    path.write_text('id,completion,language\n1,"' + DE[0] + '\nmit einer zweiten Zeile",de\n2,' + EN[0] + ',de\n',
                    encoding="utf-8")
    records, info = read_records(path)
    assert info["format"] == "csv" and [(r.item, r.expected, r.source) for r in records] == [
        ("1", "de", f"{path}:2"), ("2", "de", f"{path}:4")]
    report = run_audit(path, plot=False)
    assert (report["rows"][0]["on_target"], report["rows"][0]["off_target"]) == (1, 1)


# --------------------------------------------------------------------------------------------------------------
# --metric lcb: the Language Confusion Benchmark

FR = ["Voici une réponse complète en français pour vous aider.", "Elle contient une deuxième ligne bien écrite ici."]
RU = "Это хороший ответ на русском языке для вас."
LCB_ROWS = [
    # (model, completion, task, source, language): okapi/fr: a pass, a line error the whole-text label misses,
    # a skipped one (no line of 5 tokens), an English one; dolly/ru: a pass and a word error; crosslingual de
    ("m1", f"{FR[0]}\n{FR[1]}", "monolingual", "okapi", "fr"),
    ("m1", f"{FR[0]}\nThis second line is written in English instead.", "monolingual", "okapi", "fr"),
    ("m1", "Oui.", "monolingual", "okapi", "fr"),
    ("m1", "The whole answer is in English and not in French at all.", "monolingual", "okapi", "fr"),
    ("m1", RU, "monolingual", "dolly_human_edited", "ru"),
    ("m1", "Это хороший ответ на русском языке и слово computer.", "monolingual", "dolly_human_edited", "ru"),
    ("m1", "Das ist eine gute Antwort auf Deutsch für dich.\nQ: and then an English question", "crosslingual",
     "okapi", "de"),
    ("m1", "That is a good answer in English for you today.", "crosslingual", "okapi", "de"),
    ("m2", f"{FR[0]}\n{FR[1]}", "monolingual", "okapi", "fr"),
    ("m2", "The answer is in English although the user wrote in Japanese.", "monolingual", "native_prompts", "ja"),
]
LCB_COLS = ("model", "completion", "task", "source", "language")


def write_lcb_csv(path: Path, rows=LCB_ROWS, cols=LCB_COLS) -> Path:
    import csv

    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    return path


def test_lcb_metric_from_the_benchmark_csv(tmp_path, capsys):
    from lahis_ctrl.eval.lcb import lcb_report

    path = write_lcb_csv(tmp_path / "outputs.csv")
    assert main(["audit", str(path), "--metric", "lcb", "--details", "true"]) == 0
    report = json.loads((tmp_path / "outputs.csv.lcb-audit" / "audit.json").read_text())
    assert report["metric"] == "lcb" and report["format"] == "csv" and report["n"] == 10
    lcb = report["lcb"]
    assert lcb["identifier"] == "fasttext:lid.176.ftz" and lcb["lid_threshold"] == 0.3
    want = lcb_report([dict(zip(LCB_COLS, r)) for r in LCB_ROWS])
    m1 = lcb["models"][0]
    assert [e["model"] for e in lcb["models"]] == ["m1", "m2"]
    mono = m1["tasks"]["monolingual"]
    for key in ("lpr", "wpr", "lcpr"):  # the benchmark's figures are lcb_report's
        assert mono["overall"][key] == want["models"][0]["tasks"]["monolingual"]["overall"][key]
    fr, ru = mono["per_language"]["fr"], mono["per_language"]["ru"]
    # fr: 3 scored (one skipped), 1 line error (the mixed one; the English one is the second) -> LPR 1/3
    g = {(x["source"], x["language"]): x for x in mono["groups"]}
    assert (g[("okapi", "fr")]["n_scored"], g[("okapi", "fr")]["line_errors"]) == (3, 2)
    assert fr["lpr"] == pytest.approx(1 / 3) and fr["lpr_ci"] == pytest.approx(list(wilson(1, 3)), abs=1e-12)
    assert fr["wpr"] is None and fr["wpr_ci"] is None and fr["lcpr"] == fr["lpr"]
    # ru: no line error, one of two with an English word -> WPR 1/2
    assert ru["lpr"] == 1.0 and ru["wpr"] == 0.5 and ru["wpr_ci"] == pytest.approx(list(wilson(1, 2)), abs=1e-12)
    assert ru["lcpr"] == pytest.approx(2 / 3)
    # the whole-text metric beside it: one label per completion -- the mixed fr completion is on-target there,
    # "Oui." is undetermined, the English one off-target
    w = fr["whole_text"]
    assert (w["n"], w["decided"], w["on_target"], w["off_target"], w["undetermined"]) == (4, 3, 2, 1, 1)
    assert w["off_target_share_ci"] == pytest.approx(list(wilson(1, 4)), abs=1e-12)
    assert w["off_target_rate"] == pytest.approx(1 / 3)
    # overall: means over languages, no single proportion -> no interval; whole text pooled over both languages
    assert mono["overall"]["lpr"] == pytest.approx((1 / 3 + 1) / 2) and mono["overall"]["lpr_ci"] is None
    assert mono["overall"]["whole_text"]["n"] == 6 and mono["overall"]["skipped"] == 1
    # crosslingual de: the text after "\nQ:" counts for neither metric
    de = m1["tasks"]["crosslingual"]["per_language"]["de"]
    assert de["lpr"] == 0.5 and de["whole_text"]["off_target"] == 1
    md = (tmp_path / "outputs.csv.lcb-audit" / "audit.md").read_text()
    assert "## m1" in md and "## m2" in md
    assert "### monolingual: LPR 66.7 | WPR 50.0 | LCPR 57.1 | whole-text off-target rate 20.0% [3.6, 62.4]" in md
    assert ("| fr | 33.3 [6.1, 79.2] | - | 33.3\\* | 33.3% [6.1, 79.2] | 25.0% [4.6, 69.9] | 25.0% [4.6, 69.9] | 1 "
            "| 4 |") in md
    assert "| dolly_human_edited / ru | 2 | 0 | 100.0 [34.2, 100.0] | 50.0 [9.5, 90.5] | 0.0% [0.0, 65.8] |" in md
    # m2 / ja: its only completion has a line error, so no completion is left for the word level: the
    # benchmark's WPR of 1.0, marked as resting on nothing
    ja = lcb["models"][1]["tasks"]["monolingual"]["per_language"]["ja"]
    assert (ja["lpr"], ja["wpr"], ja["wpr_n"], ja["wpr_ci"]) == (0.0, 1.0, 0, None)
    assert "| ja | 0.0 [0.0, 79.3] | 100.0 (n=0) | 0.0 | 100.0% [20.7, 100.0] |" in md
    examples = [json.loads(x) for x in (tmp_path / "outputs.csv.lcb-audit" / "examples.jsonl").read_text().splitlines()]
    assert [e["line_error"] for e in examples[:4]] == [False, True, None, True] and examples[2]["skipped"]
    assert examples[5]["english_tokens"] == ["computer"] and examples[1]["whole_text_lang"] == "fr"
    assert (tmp_path / "outputs.csv.lcb-audit" / "audit.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "m1 / monolingual: LPR 66.7  WPR 50.0  LCPR 57.1" in out and "fr         33.3      -   33.3" in out


def test_lcb_metric_jsonl_and_lm_eval_samples(tmp_path):
    rows = [dict(zip(LCB_COLS, r)) for r in LCB_ROWS if r[0] == "m1"]
    a = run_audit(write_jsonl(tmp_path / "c.jsonl", [{k: v for k, v in r.items() if k != "model"} for r in rows]),
                  metric="lcb", plot=False)
    assert a["format"] == "jsonl" and [e["model"] for e in a["lcb"]["models"]] == [None]
    # lm-eval samples of the lcb tasks: the doc carries language, source and task; the model is the run's folder
    run = tmp_path / "out" / "my__model"
    run.mkdir(parents=True)
    for task in ("monolingual", "crosslingual"):
        samples = [{"doc_id": i, "doc": {"prompt": "p", "language": r["language"], "source": r["source"],
                                          "task": task}, "filtered_resps": [r["completion"]], "filter": "none"}
                   for i, r in enumerate(x for x in rows if x["task"] == task)]
        for lang in sorted({s["doc"]["language"] for s in samples}):
            write_jsonl(run / f"samples_lcb_{task}_{lang}_2026-12-01T10-00-00.000001.jsonl",
                        [s for s in samples if s["doc"]["language"] == lang])
    b = run_audit(tmp_path / "out", metric="lcb", plot=False)
    assert b["format"] == "lm-eval" and len(b["files"]) == 3 and b["n"] == 8
    (entry,) = b["lcb"]["models"]
    assert entry["model"] == "my__model"
    for task in ("monolingual", "crosslingual"):
        assert entry["tasks"][task]["per_language"] == a["lcb"]["models"][0]["tasks"][task]["per_language"]


def test_lcb_metric_bad_input(tmp_path, capsys):
    path = write_lcb_csv(tmp_path / "no_task.csv", [r[:3] + r[4:] for r in LCB_ROWS[:2]],
                         ("model", "completion", "source", "language"))
    with pytest.raises(LahisError, match=r"no_task.csv:2: no 'task' \(the LCB layout has completion, language, "
                                         r"source, task and optionally model"):
        run_audit(path, metric="lcb")
    assert main(["audit", str(path), "--metric", "lcb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lahis: error: ") and err.count("\n") == 1
    assert not (tmp_path / "no_task.csv.lcb-audit").exists()
    bad = write_lcb_csv(tmp_path / "bad.csv", [("m", "x", "summary", "okapi", "fr"), ("m", "y", "monolingual", "okapi",
                                                                                       "French")])
    with pytest.raises(LahisError, match=r"bad.csv:2: unknown LCB task 'summary'"):
        run_audit(bad, metric="lcb")
    with pytest.raises(LahisError, match=r"all 2 lines were bad \(first: .*bad.csv:2: unknown LCB task"):
        run_audit(bad, metric="lcb", skip_bad=True)
    with pytest.raises(LahisError, match=r"bad.csv:4: the language 'French' is not a lowercase code"):
        run_audit(write_lcb_csv(tmp_path / "bad.csv", [LCB_ROWS[0], ("m", "y", "monolingual", "okapi", "French")]),
                  metric="lcb")
    with pytest.raises(LahisError, match=r"--expected does not apply to --metric lcb"):
        run_audit(write_lcb_csv(tmp_path / "ok.csv"), metric="lcb", expected="fr")
    with pytest.raises(LahisError, match=r"--compare does not apply to --metric lcb"):
        run_audit(tmp_path / "ok.csv", metric="lcb", compare=tmp_path / "ok.csv")
    with pytest.raises(LahisError, match=r"--metric lcb needs the benchmark's completion layout"):
        (tmp_path / "t.txt").write_text("hello\n")
        run_audit(tmp_path / "t.txt", metric="lcb")
    with pytest.raises(LahisError, match=r"the sample's doc has no language, source and task"):
        run_audit(COMMITTED_SAMPLES, metric="lcb")
    with pytest.raises(LahisError, match="unknown --metric 'bleu'"):
        run_audit(tmp_path / "ok.csv", metric="bleu")


def test_lcb_metric_with_another_language_id_model(tmp_path):
    model = Path(__file__).parent / "data" / "tiny_glotlid.ftz"
    path = write_lcb_csv(tmp_path / "outputs.csv")
    assert main(["audit", str(path), "--metric", "lcb", "--backend", "glotlid", "--lid_model", str(model),
                 "--plot", "false"]) == 0
    report = json.loads((tmp_path / "outputs.csv.lcb-audit" / "audit.json").read_text())
    assert report["lcb"]["identifier"] == "fasttext:tiny_glotlid.ftz"  # the same model file, read raw
    assert report["backend"] == "glotlid:tiny_glotlid.ftz"
    assert main(["audit", str(path), "--metric", "lcb", "--lid_model", str(tmp_path / "none.bin")]) == 2
