"""`lahis reproduce`: the whole pipeline on a tiny random model (slow smoke run), resumption, findings, README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lahis_ctrl.experiments.reproduce.findings import findings
from lahis_ctrl.experiments.reproduce.report import README_END, README_START, check_readme, update_readme

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "data" / "reproduce-tiny.yaml"
PLOTS = ("heatmaps", "overlap", "layers", "ppl_cross", "ppl_random", "xquad", "off_target", "off_target_proxy",
         "transfer", "lcb", "findings")
SECTIONS = ("## Findings", "## The tests", "## Design: draws and the smallest reachable p", "## Placebo rows",
            "## 1. LAHIS scores", "## 2. Perplexity", "## 3. XQuAD", "## 4. Off-target", "## 5. Attention transfer",
            "## 6. Language Confusion Benchmark", "## Random-weight control", "## Steps")
LANGS = ["en", "de", "es", "hi", "ru"]


def _cli(*args: str) -> int:
    from lahis_ctrl.cli import main

    return main(["reproduce", *args])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("reproduce") / "model", "llama")


def _absolute_paths(obj) -> list[str]:
    if isinstance(obj, dict):
        return [p for v in obj.values() for p in _absolute_paths(v)]
    if isinstance(obj, list):
        return [p for v in obj for p in _absolute_paths(v)]
    return [obj] if isinstance(obj, str) and obj.startswith("/") else []


def _step_files(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "work" / "steps").glob("*.json"))}


def _main_steps(plan: list[dict]) -> int:
    """The step files of one run of the tiny config (see tests/data/reproduce-tiny.yaml) with the planned draws."""
    from lahis_ctrl.experiments.reproduce.steps import DRAW_BLOCK

    blocks = lambda n: -(-n // DRAW_BLOCK)  # noqa: E731
    zero, scale = plan[2]["draws"], plan[3]["draws"]
    xquad = 4                                   # per language: every mask is kept under work/masks
    off_target = 2 * (3 + 1) + 2 * (1 + blocks(zero) + blocks(scale))  # generated runs; proxy: fixed, zero, scale
    transfer = 2 * (2 + blocks(plan[4]["draws"]))  # per pair: the named interventions, the placebos, the draws
    lcb = 4 * (4 + plan[5]["draws"])            # per language: none, zero source, scale target, placebo, the draws
    return 1 + len(LANGS) + xquad + off_target + transfer + lcb


@pytest.mark.slow
def test_smoke_run_on_random_weights_with_auto_draws(tiny_dir, shared_data, tmp_path, monkeypatch, capsys):
    """The whole pipeline with every draw count at auto on a tiny random model: every table and plot, nothing holds,
    every placebo inconclusive, every claim against random heads able to reach p <= 0.001, the control's numbers
    beside the report; a rerun loads no model and rewrites no step; a changed section reruns alone."""
    monkeypatch.delenv("LAHIS_DATA_DIR")  # --data alone must reach every step, the lm-eval tasks included
    out = tmp_path / "report"
    readme = tmp_path / "README.md"
    readme.write_bytes(("# project\r\n\r\nintro\r\n\r\n## Results\r\n\r\n" + README_START + "\nSTALE SECTION\n"
                        + README_END + "\n\n## More\r\n").encode())
    args = ["--config", str(TINY_CONFIG), "--model", str(tiny_dir), "--data", str(shared_data), "--out", str(out),
            "--readme", str(readme)]
    assert _cli(*args) == 0

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
    assert f"model: {tiny_dir}" in config and "random_trials: auto" in config
    # the designs: every claim against random heads can reach p <= 0.001 with the auto draws it planned
    # (languages whose head sets share a head count once: the tiny model's 12 heads make the XQuAD masks' top heads
    # overlap, and auto then draws for the units there really are)
    from lahis_ctrl.eval.stats import draws_needed

    plan = results["design"]["plan"]
    assert [(r["setting"], r.get("configured_units", r["units"])) for r in plan] == [
        ("ppl.random_trials", 5), ("xquad.random_masks", 4), ("off_target.random_draws", 1),
        ("off_target.random_draws", 2), ("transfer.random_draws", 2), ("lcb.random_draws", 4)]
    assert all(r["auto"] and r["draws"] == draws_needed(r["units"]) and r["min_p"] <= 0.001
               and not r["underpowered_by_design"] for r in plan)
    n_xquad = plan[1]["draws"]
    ppl = results["ppl"]
    assert ppl["random_trials"] == plan[0]["draws"] and all(len(ppl["random_heads"][x]) == plan[0]["draws"] for x in LANGS)
    for x in LANGS:  # random sets are drawn outside the language's own set; its set is strictly specific
        own = {tuple(h) for h in ppl["heads"][x]}
        assert all(not own & {tuple(h) for h in d} for d in ppl["random_heads"][x])
        assert set(ppl["placebo"]) == set(LANGS) and len(ppl["placebo"][x]) == len(LANGS)
    for lang in ("de", "es", "hi", "ru"):
        r = results["xquad"][lang]
        assert r["test_items"] == 3 and r["train_items"] == 2 and r["n_heads"] == 2 and r["seeds"] == 2
        names = ["original", "placebo"] + [f"random-{i}" for i in range(1, n_xquad + 1)] + ["lahis", "lahis-s1"]
        assert list(r["summary"]) == names and {n: len(v) for n, v in r["items"].items()} == dict.fromkeys(names, 3)
        lahis = {tuple(h[:2]) for h in r["heads"]["lahis"]}
        assert lahis == {tuple(h[:2]) for h in r["heads"]["lahis-s1"]}  # seeds: the same heads, other orders
        assert all(not lahis & {tuple(h[:2]) for h in r["heads"][f"random-{i}"]} for i in range(1, n_xquad + 1))
    ot = results["off_target"]["de"]
    assert list(ot) == ["none", "zero_source", "scale_target", "zero_random_1", "proxy"]
    assert ot["none"]["heads"] == [] and [h[2] for h in ot["scale_target"]["heads"]] == [3.0]
    proxy = ot["proxy"]["ntrex_en"]
    assert len(proxy["zero_random"]) == plan[2]["draws"] == 1999 and len(proxy["scale_random"]) == plan[3]["draws"]
    assert all(len(v) == 2 for v in proxy["zero_random"]) and len(proxy["none"]) == 2
    # one set of random heads zeroed serves every target language (the source's heads are one set too)
    assert results["off_target"]["es"]["proxy"]["ntrex_en"]["heads"]["zero_placebo"] == proxy["heads"]["zero_placebo"]
    tr = results["transfer"]["de-es"]
    assert tr["n_items"] == 4 and tr["draws"] == plan[4]["draws"] and {
        "none", "x3 de heads", "zero es heads", "x3 placebo heads", "zero placebo heads",
        f"x3 random heads #{plan[4]['draws']}"} <= set(tr["results"])
    lcb = results["lcb"]["de"]
    assert list(lcb) == ["none", "zero_source", "scale_target", "scale_placebo"] + [
        f"scale_random_{i}" for i in range(1, plan[5]["draws"] + 1)]
    assert all(len(r["completions"]) == len(r["line_pass"]) == 3 for r in lcb.values())
    # random weights: no effect claim holds, every placebo is inconclusive, every finding says what it is
    for f in results["findings"] + results["placebo"]:
        assert f["verdict"] in ("inconclusive", "does not hold"), f
        for key in ("test", "reading", "n", "n_what", "min_p", "mde", "ci", "ci_family", "p_value", "p_holm", "reason"):
            assert key in f, (f["id"], key)
        assert (f["effect"] is None) == (f["reason"] is not None)
        if f["reading"] == "vs random heads" and f["effect"] is not None:
            assert f["min_p"] <= 0.001 and f["draws"], f
    assert all(f["verdict"] == "inconclusive" for f in results["placebo"])
    assert {f["id"].replace("placebo_", "") for f in results["placebo"]} <= {f["id"] for f in results["findings"]}
    for f in results["findings"]:
        assert f["control"] is not None and f["control"]["status"] in ("holds", "does not hold",
                                                                       "inconclusive (powered)", "underpowered")
    assert [f["id"] for f in results["control"]["findings"]] == [f["id"] for f in results["findings"]]
    control = json.loads((out / "control_results.json").read_text())
    assert control["xquad"]["de"]["test_items"] == 3 and len(control["off_target"]["de"]["proxy"]["ntrex_en"][
        "zero_random"]) == 1999  # the control runs at the same sizes and draws
    ran = [s for s in results["steps"] if not s["skipped"]]
    assert len(ran) == len(results["steps"]) == 2 * _main_steps(plan)
    # the README section was replaced in place; the rest of the README keeps its CRLF line ends
    raw = readme.read_bytes().decode()
    assert raw.startswith("# project\r\n\r\nintro\r\n\r\n## Results\r\n\r\n" + README_START)
    assert raw.endswith(README_END + "\n\n## More\r\n") and "STALE SECTION" not in raw
    assert "XQuAD accuracy, mean of de, es, hi, ru" in raw and "Placebo rows" in raw
    published = tmp_path / "docs" / "reproduce" / "model"
    assert "](docs/reproduce/model/report.md)" in raw and "](docs/reproduce/model/plots/findings.png)" in raw
    assert (published / "plots" / "findings.png").is_file() and not (published / "work").exists()
    import yaml

    for name in ("results.json", "control_results.json"):  # the published copies name no path of this machine
        assert not _absolute_paths(json.loads((published / name).read_text())), name
    assert not _absolute_paths(yaml.safe_load((published / "config.yaml").read_text()))
    assert f" {shared_data}" not in (published / "report.md").read_text()

    # a rerun recomputes nothing: no step file is rewritten and the model is never loaded
    before = _step_files(out)
    first = {k: results[k] for k in ("scores", "ppl", "xquad", "off_target", "transfer", "findings", "placebo")}

    def no_load(*a, **k):
        raise AssertionError("a rerun with every step done must not load the model")

    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", no_load)
    capsys.readouterr()
    assert _cli(*args) == 0
    assert f"0 step(s) ran, {2 * _main_steps(plan)} skipped" in capsys.readouterr().out
    assert _step_files(out) == before
    again = json.loads((out / "results.json").read_text())
    assert {k: again[k] for k in first} == first
    monkeypatch.undo()

    # changing one step's settings reruns that step only
    assert _cli(*args, "--transfer.items", "2") == 0
    after = _step_files(out)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed and all(name.startswith("transfer-") for name in changed)
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
    (["--scoring.languages", "[en, de, es, hi, ru, xx]"], "no text for language 'xx' in"),
    (["--xquad.languages", "[de, ar]"], "xquad.languages names 'ar', which is not in scoring.languages (en de es hi ru)"),
    (["--xquad.languages", "[de, fr]"], "'fr'"),
    (["--off_target.tasks", "[ntrex_en, xsum]"], "unknown off_target task(s) ['xsum']"),
    (["--transfer.pairs", "[[de, de]]"], "give two different languages"),
    (["--transfer.pairs", "[[de, sw]]"], "the Alice probe has no text for ['sw']"),
    (["--scoring.languages", "[en]"], "needs at least 2 languages"),
    (["--steps", "[]"], "--steps is empty"),
    (["--control.scale", "0.2"], "control.scale=0.2: the random-weight control now runs at the main run's sizes"),
    (["--xquad.random_masks", "2"], "xquad.random_masks = 2: the test of"),
    (["--transfer.random_draws", "3"], "use 44 draws (or auto)"),
])
def test_bad_input_is_one_line_before_any_model_is_loaded(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    data = tmp_path / "data"
    (data / "ntrex128").mkdir(parents=True)
    for lang in LANGS:
        (data / "ntrex128" / f"{lang}.txt").write_text("One sentence.\n")
    args = ["--config", str(TINY_CONFIG), "--model", "nowhere", "--data", str(data), "--out", str(tmp_path / "o")]
    assert _cli(*args, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_control_status_is_never_read_as_a_pass_without_power():
    from lahis_ctrl.experiments.reproduce.findings import attach_control, verdict_text

    main = [{"id": i, "verdict": "holds", "effect": 2.0} for i in "abcd"] + [{"id": "e", "verdict": "inconclusive"}]
    base = {"ci": [0.5, 1.5], "ci_family": None, "p_value": 0.01, "p_holm": 0.02, "n": 9, "min_p": 0.001,
            "reason": None, "evidence": ""}
    ctl = [{**base, "id": "a", "verdict": "holds", "effect": 1.0, "mde": 0.5},        # random weights show it too
           {**base, "id": "b", "verdict": "inconclusive", "effect": 0.1, "mde": 0.8},  # could have seen 2.0: powered
           {**base, "id": "c", "verdict": "inconclusive", "effect": 0.1, "mde": 3.0},  # could not: underpowered
           {**base, "id": "d", "verdict": "inconclusive", "effect": None, "mde": None}]
    attach_control(main, ctl)
    status = {f["id"]: (f["control"] or {}).get("status") for f in main}
    assert status == {"a": "holds", "b": "inconclusive (powered)", "c": "underpowered", "d": "underpowered", "e": None}
    assert "not evidence of learned language heads" in verdict_text(main[0])
    assert verdict_text(main[1]) == "Holds"
    assert "underpowered" in verdict_text(main[2]) and "underpowered" in verdict_text(main[3])


def test_update_readme_replaces_only_its_section(tmp_path):
    readme = tmp_path / "README.md"
    update_readme(readme, f"{README_START}\nfirst\n{README_END}")
    assert readme.read_text() == f"\n\n{README_START}\nfirst\n{README_END}\n"
    readme.write_text(f"top\n{README_START}\nfirst\n{README_END}\nbottom\n")
    update_readme(readme, f"{README_START}\nsecond\n{README_END}")
    assert readme.read_text() == f"top\n{README_START}\nsecond\n{README_END}\nbottom\n"


@pytest.mark.parametrize("text", [
    f"mine\n{README_START}\nkeep me\n",                       # a start marker without its end
    f"mine\n{README_END}\nkeep me\n",                         # an end marker alone
    f"{README_END}\nkeep me\n{README_START}\n",               # out of order
    f"{README_START}\na\n{README_END}\n{README_START}\nb\n{README_END}\n",  # two sections
])
def test_broken_readme_markers_are_refused_and_the_readme_is_untouched(tmp_path, text):
    from lahis_ctrl.core.errors import LahisError

    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(LahisError, match="marker"):
        check_readme(readme)
    with pytest.raises(LahisError, match="marker"):
        update_readme(readme, f"{README_START}\nnew\n{README_END}")
    assert readme.read_text() == text


def test_committed_configs_parse_and_name_the_paper_settings():
    import yaml

    from lahis_ctrl.experiments.reproduce import STEPS

    gemma = yaml.safe_load((ROOT / "configs" / "reproduce-gemma-3-270m.yaml").read_text())
    assert gemma["model"] == "gemma-3-270m" and gemma["steps"] == list(STEPS)
    assert len(gemma["scoring"]["languages"]) >= 8 and gemma["xquad"]["seeds"] >= 3
    # the CPU config sets draw counts below auto by hand, and says so
    assert gemma["allow_underpowered"] is True and gemma["ppl"]["random_trials"] == "auto"
    llama = yaml.safe_load((ROOT / "configs" / "reproduce-llama-3.2-3b.yaml").read_text())
    assert llama["scoring"]["texts"] == 1000 and llama["scoring"]["max_length"] == 2048
    assert llama["xquad"]["train_items"] is None and llama["xquad"]["epochs"] == 2 and llama["xquad"]["seeds"] == 3
    assert "allow_underpowered" not in llama and "scale" not in llama["control"]
    assert {llama[s].get(k) for s, k in (("ppl", "random_trials"), ("xquad", "random_masks"),
                                          ("off_target", "random_draws"), ("transfer", "random_draws"),
                                          ("lcb", "random_draws"))} == {"auto"}
