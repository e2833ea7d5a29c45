"""`lahis reproduce`: the whole pipeline on a tiny random model (slow smoke run), resumption, findings, README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lahis_ctrl.experiments.reproduce.findings import findings
from lahis_ctrl.experiments.reproduce.report import README_END, README_START, update_readme

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "data" / "reproduce-tiny.yaml"
PLOTS = ("heatmaps", "overlap", "layers", "ppl_cross", "xquad", "off_target", "transfer")
SECTIONS = ("## Findings", "## 1. LAHIS scores", "## 2. Perplexity", "## 3. XQuAD", "## 4. Off-target",
            "## 5. Attention transfer", "## Steps")


def _cli(*args: str) -> int:
    from lahis_ctrl.cli import main

    return main(["reproduce", *args])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("reproduce") / "model", "llama")


def _step_files(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "work" / "steps").glob("*.json"))}


@pytest.mark.slow
def test_smoke_run_writes_every_table_and_plot_and_a_rerun_skips_every_step(tiny_dir, shared_data, tmp_path,
                                                                           monkeypatch, capsys):
    monkeypatch.delenv("LAHIS_DATA_DIR")  # --data alone must reach every step, the lm-eval tasks included
    out = tmp_path / "report"
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nintro\n\n## Results\n\n" + README_START + "\nSTALE SECTION\n" + README_END + "\n\n## More\n")
    args = ["--config", str(TINY_CONFIG), "--model", str(tiny_dir), "--data", str(shared_data), "--out", str(out),
            "--readme", str(readme)]
    assert _cli(*args) == 0

    # the report folder: Markdown with every section, every plot, every number, the exact config, the version
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    results = json.loads((out / "results.json").read_text())
    import lahis_ctrl

    assert results["version"] == lahis_ctrl.__version__
    assert set(results["plots"]) == set(PLOTS)
    for name in PLOTS:
        png = out / results["plots"][name]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({results['plots'][name]})" in report
    config = (out / "config.yaml").read_text()
    assert f"model: {tiny_dir}" in config and "languages:\n  - en\n  - de\n  - es" in config
    # step results as the tiny config asks for them
    assert results["scores"]["classification"]["languages"] == ["en", "de", "es"]
    assert results["ppl"]["languages"] == ["en", "de", "es"] and results["ppl"]["k"] == 1
    for lang in ("de", "es"):
        r = results["xquad"][lang]
        assert r["test_items"] == 3 and r["train_items"] == 2 and r["n_heads"] == 2
        assert set(r["summary"]) == {"original", "random", "lahis"}
        assert len(r["heads"]["lahis"]) == 2 and len(r["heads"]["random"]) == 2
        assert f"| {lang} | lahis |" in report
    ot = results["off_target"]["de"]
    assert list(ot) == ["none", "zero_source", "scale_target", "zero_target", "zero_random"]
    assert ot["none"]["heads"] == [] and [h[2] for h in ot["scale_target"]["heads"]] == [3.0]
    for r in ot.values():
        assert set(r["tasks"]) == {"xquad_xling", "ntrex_en"}
        assert len(r["tasks"]["ntrex_en"]["outputs"]) == 2 and "chrf" in r["tasks"]["ntrex_en"]["metrics"]
    tr = results["transfer"]["de-es"]
    assert tr["n_items"] == 4 and list(tr["results"]) == ["none", "x3 de heads", "zero es heads",
                                                          "x3 random heads", "zero random heads"]
    claims = [f["claim"] for f in results["findings"]]
    assert any("perplexity" in c for c in claims) and any("XQuAD" in c for c in claims)
    assert any(c.startswith("transfer de-es") for c in claims) and any(c.startswith("ntrex_en") for c in claims)
    assert all(f["holds"] in (True, False, None) for f in results["findings"])
    ran = [s for s in results["steps"] if not s["skipped"]]
    assert len(ran) == len(results["steps"]) == 1 + 3 + 2 + 5 + 1  # scores, ppl x3, xquad x2, off-target x5, transfer
    # the README section was replaced in place, the rest of the README kept, the plot copied beside it
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n## Results\n\n" + README_START) and text.endswith(README_END + "\n\n## More\n")
    assert "STALE SECTION" not in text and "XQuAD accuracy, mean of de, es" in text
    published = tmp_path / "docs" / "reproduce" / "model"
    assert "](docs/reproduce/model/report.md)" in text and "](docs/reproduce/model/plots/ppl_cross.png)" in text
    assert (published / "report.md").read_text() == report and (published / "plots" / "ppl_cross.png").is_file()
    assert not (published / "work").exists()

    # a rerun recomputes nothing: no step file is rewritten and the model is never loaded
    before = _step_files(out)
    first_numbers = {k: results[k] for k in ("scores", "ppl", "xquad", "off_target", "transfer", "findings")}

    def no_load(*a, **k):
        raise AssertionError("a rerun with every step done must not load the model")

    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", no_load)
    capsys.readouterr()
    assert _cli(*args) == 0
    printed = capsys.readouterr().out
    assert "0 step(s) ran, 12 skipped" in printed
    assert _step_files(out) == before
    again = json.loads((out / "results.json").read_text())
    assert {k: again[k] for k in first_numbers} == first_numbers
    assert all(s["skipped"] for s in again["steps"])
    assert "skipped (done earlier)" in (out / "report.md").read_text()

    # a report folder written before step files became checkpoints (lahis-ctrl at b17bc17 wrote each step as
    # {"fingerprint", "key", "seconds", "result"} and an untagged heads classification) is migrated, not recomputed
    for path in (out / "work" / "steps").glob("*.json"):
        stored = json.loads(path.read_text())
        result = stored["state"]["result"]
        if path.name == "scores.json":
            result["classification"].pop("format")
        path.write_text(json.dumps({"fingerprint": stored["fingerprint"], **stored["state"]}, indent=2))
    capsys.readouterr()
    assert _cli(*args) == 0
    assert "0 step(s) ran, 12 skipped" in capsys.readouterr().out
    migrated = {p.name: json.loads(p.read_text()) for p in (out / "work" / "steps").glob("*.json")}
    assert all(m["format"] == "lahis-checkpoint/1" for m in migrated.values())
    assert {k: json.loads((out / "results.json").read_text())[k] for k in first_numbers if k != "scores"} == \
        {k: v for k, v in first_numbers.items() if k != "scores"}
    before = _step_files(out)
    monkeypatch.undo()

    # changing one step's settings reruns that step only
    assert _cli(*args, "--transfer.items", "2") == 0
    after = _step_files(out)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["transfer-de-es.json"]
    assert json.loads((out / "results.json").read_text())["transfer"]["de-es"]["n_items"] == 2


@pytest.mark.slow
def test_a_deleted_score_file_is_scored_again(tiny_dir, shared_data, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["--config", str(TINY_CONFIG), "--model", str(tiny_dir), "--data", str(shared_data), "--out", str(out),
            "--steps", "[scores]"]
    assert _cli(*args) == 0
    de = out / "work" / "scores" / "de.safetensors"
    from lahis_ctrl.lahis.scoring import HeadScores

    first = HeadScores.load(de)
    de.unlink()
    capsys.readouterr()
    assert _cli(*args) == 0
    assert "files gone" in capsys.readouterr().out
    again = HeadScores.load(de)  # the same texts and settings give the same scores, bit for bit
    assert again.scores.equal(first.scores) and again.num_texts == first.num_texts


# ------------------------------------------------------------------------------------------ fast: inputs, findings
@pytest.mark.parametrize("extra, message", [
    (["--steps", "[scores, nonsense]"], "unknown step(s) ['nonsense']"),
    (["--data", "/nonexistent/data"], "data directory not found: /nonexistent/data"),
    (["--scoring.languages", "[en, de, es, xx]"], "no text for language 'xx' in"),
    (["--xquad.languages", "[de, ru]"], "xquad.languages names 'ru', which is not in scoring.languages (en de es)"),
    (["--xquad.languages", "[de, fr]"], "'fr'"),
    (["--off_target.tasks", "[ntrex_en, xsum]"], "unknown off_target task(s) ['xsum']"),
    (["--transfer.pairs", "[[de, de]]"], "give two different languages"),
    (["--transfer.pairs", "[[de, sw]]"], "the Alice probe has no text for ['sw']"),
    (["--scoring.languages", "[en]"], "needs at least 2 languages"),
])
def test_bad_input_is_one_line_before_any_model_is_loaded(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    data = tmp_path / "data"
    (data / "ntrex128").mkdir(parents=True)
    for lang in ("en", "de", "es"):
        (data / "ntrex128" / f"{lang}.txt").write_text("One sentence.\n")
    args = ["--config", str(TINY_CONFIG), "--model", "nowhere", "--data", str(data), "--out", str(tmp_path / "o")]
    assert _cli(*args, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def _ppl(langs, own_worse):
    """A hand-made ppl_cross result: zeroing Y's heads gives X ppl 10 + (5 if X == Y and own_worse) + y index."""
    masked = {y: {x: {"corpus_ppl": 10.0 + (5.0 if (x == y and own_worse) else 0.0) + i * 0.1}
                  for x in langs} for i, y in enumerate(langs)}
    return {"k": 2, "languages": langs, "masked_languages": langs, "masked": masked,
            "baseline": {x: {"corpus_ppl": 9.0} for x in langs},
            "random": {x: {"corpus_ppl": 10.5} for x in langs}}


def test_findings_follow_the_numbers():
    langs = ["en", "de", "es"]
    good = {f["claim"]: f for f in findings({"ppl": _ppl(langs, own_worse=True)})}
    bad = {f["claim"]: f for f in findings({"ppl": _ppl(langs, own_worse=False)})}
    assert [f["holds"] for f in good.values()] == [True, True]
    assert [f["holds"] for f in bad.values()] == [False, False]
    assert "3 of 3 languages (en, de, es)" in good[next(iter(good))]["evidence"]

    def xq(orig, rand, lahis):
        return {"summary": {"original": {"accuracy": orig}, "random": {"accuracy": rand}, "lahis": {"accuracy": lahis}}}

    f = findings({"xquad": {"de": xq(0.10, 0.12, 0.15), "es": xq(0.20, 0.20, 0.19)}})
    assert [x["holds"] for x in f] == [True, True]  # mean +2.0 over original, +1.0 over random
    assert "mean +2.0 points (de +5.0, es -1.0)" == f[0]["evidence"]

    def ot(rates):
        return {name: {"label": name, "tasks": {"ntrex_en": {"metrics": {"off_target_rate": r}}}}
                for name, r in rates.items()}

    f = findings({"off_target": {"de": ot({"none": 0.5, "zero_source": 0.25, "scale_target": 0.75,
                                           "zero_target": 0.9, "zero_random": 0.5})}})
    assert [(x["claim"].split(":")[0], x["holds"]) for x in f] == [("ntrex_en", True), ("ntrex_en", False)]
    f = findings({"off_target": {"de": ot({"none": None, "zero_source": None, "scale_target": 0.5,
                                           "zero_target": None, "zero_random": None})}})
    assert [x["holds"] for x in f] == [None, None]
    # languages without decided outputs in one of the two runs are left out of both means
    two = {"de": ot({"none": 0.5, "zero_source": 0.6, "scale_target": 0.4, "zero_target": 0.5, "zero_random": 0.5}),
           "es": ot({"none": None, "zero_source": 0.0, "scale_target": 0.0, "zero_target": 0.5, "zero_random": 0.5})}
    f = findings({"off_target": two})
    assert [x["holds"] for x in f] == [False, True]
    assert "50.0% -> 60.0% over de (" in f[0]["evidence"]

    def probe(lo):
        names = ["none", "x3 de heads", "zero es heads", "x3 random heads", "zero random heads"]
        return {"results": {n: {"mean_log_odds": v, "share_prefers_x": 0.5} for n, v in zip(names, lo)}}

    f = findings({"transfer": {"de-es": probe([0.0, 1.0, -0.5, 0.2, -1.0])}})
    assert [x["holds"] for x in f] == [True, False]  # +1.0 beats random's +0.2; -0.5 is not toward X


def test_update_readme_replaces_only_its_section(tmp_path):
    readme = tmp_path / "README.md"
    update_readme(readme, f"{README_START}\nfirst\n{README_END}")
    assert readme.read_text() == f"\n\n{README_START}\nfirst\n{README_END}\n"
    readme.write_text(f"top\n{README_START}\nfirst\n{README_END}\nbottom\n")
    update_readme(readme, f"{README_START}\nsecond\n{README_END}")
    assert readme.read_text() == f"top\n{README_START}\nsecond\n{README_END}\nbottom\n"


def test_committed_configs_parse_and_name_the_paper_settings():
    import yaml

    from lahis_ctrl.experiments.reproduce import STEPS

    gemma = yaml.safe_load((ROOT / "configs" / "reproduce-gemma-3-270m.yaml").read_text())
    assert gemma["model"] == "gemma-3-270m" and gemma["steps"] == list(STEPS)
    assert len(gemma["scoring"]["languages"]) >= 8 and len(gemma["xquad"]["languages"]) >= 4
    llama = yaml.safe_load((ROOT / "configs" / "reproduce-llama-3.2-3b.yaml").read_text())
    assert llama["scoring"]["texts"] == 1000 and llama["scoring"]["max_length"] == 2048
    assert llama["xquad"]["train_items"] is None and llama["xquad"]["epochs"] == 2
