"""`lahis reproduce`: the whole pipeline on a tiny random model (slow smoke run), resumption, findings, README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lahis_ctrl.experiments.reproduce.findings import findings
from lahis_ctrl.experiments.reproduce.report import README_END, README_START, check_readme, update_readme

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "data" / "reproduce-tiny.yaml"
PLOTS = ("heatmaps", "overlap", "layers", "ppl_cross", "ppl_random", "xquad", "off_target", "transfer", "lcb",
         "findings")
SECTIONS = ("## Findings", "## 1. LAHIS scores", "## 2. Perplexity", "## 3. XQuAD", "## 4. Off-target",
            "## 5. Attention transfer", "## 6. Language Confusion Benchmark", "## Random-weight control", "## Steps")
# scores, ppl x3, xquad x2, off-target 2 languages... (1 language x 6 interventions), transfer, lcb (1 language x 4)
MAIN_STEPS = 1 + 3 + 2 + 6 + 1 + 4


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
        assert list(r["summary"]) == ["original", "random", "random-s1", "lahis"]
        assert len(r["heads"]["lahis"]) == 2 and len(r["heads"]["random"]) == 2
        assert r["heads"]["random"] != r["heads"]["random-s1"]  # another seed, other heads
        assert {name: len(v) for name, v in r["items"].items()} == dict.fromkeys(r["summary"], 3)
        assert f"| {lang} | lahis |" in report
    ppl = results["ppl"]
    assert ppl["random_trials"] == 3 and all(len(ppl["random_heads"][x]) == 3 for x in ("en", "de", "es"))
    assert len(ppl["baseline"]["de"]["losses"]) == 2 and set(ppl["comparisons"]["de"]) >= {
        "own_vs_none", "own_vs_random", "own_vs_others", "own_rank_p"}
    ot = results["off_target"]["de"]
    assert list(ot) == ["none", "zero_source", "scale_target", "zero_target", "zero_random", "zero_random_2"]
    assert ot["none"]["heads"] == [] and [h[2] for h in ot["scale_target"]["heads"]] == [3.0]
    for r in ot.values():
        assert set(r["tasks"]) == {"xquad_xling", "ntrex_en"}
        assert len(r["tasks"]["ntrex_en"]["outputs"]) == 2 and "chrf" in r["tasks"]["ntrex_en"]["metrics"]
        assert len(r["tasks"]["ntrex_en"]["off_target"]) == 2
    tr = results["transfer"]["de-es"]
    assert tr["n_items"] == 4 and list(tr["results"]) == ["none", "x3 de heads", "zero es heads", "x3 random heads",
                                                          "zero random heads", "x3 random heads #2",
                                                          "zero random heads #2"]
    lcb = results["lcb"]["de"]
    assert list(lcb) == ["none", "zero_source", "scale_target", "zero_random"]
    assert all(len(r["completions"]) == len(r["line_pass"]) == 3 for r in lcb.values())
    claims = [f["claim"] for f in results["findings"]]
    assert any("perplexity" in c for c in claims) and any("XQuAD" in c for c in claims)
    assert any(c.startswith("transfer de-es") for c in claims) and any(c.startswith("ntrex_en") for c in claims)
    assert any(c.startswith("LCB") for c in claims)
    # statistics on a random tiny model: every finding has its interval and p-value, nothing learned "holds"
    for f in results["findings"]:
        assert f["verdict"] in ("holds", "does not hold", "inconclusive") and "p_value" in f and len(f["ci"]) == 2
        assert f["control"] is not None and f["control"]["verdict"] in ("holds", "does not hold", "inconclusive")
        if not f["id"].startswith("ppl"):
            assert f["verdict"] != "holds", f
    assert [f["id"] for f in results["control"]["findings"]] == [f["id"] for f in results["findings"]]
    assert (out / "control_results.json").is_file()
    ran = [s for s in results["steps"] if not s["skipped"]]
    assert len(ran) == len(results["steps"]) == 2 * MAIN_STEPS  # the main run and the random-weight control
    # the README section was replaced in place, the rest of the README kept, the plot copied beside it
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n## Results\n\n" + README_START) and text.endswith(README_END + "\n\n## More\n")
    assert "STALE SECTION" not in text and "XQuAD accuracy, mean of de, es" in text
    published = tmp_path / "docs" / "reproduce" / "model"
    assert "](docs/reproduce/model/report.md)" in text and "](docs/reproduce/model/plots/findings.png)" in text
    assert (published / "plots" / "findings.png").is_file() and not (published / "work").exists()
    # the published copy names no absolute path of this machine
    import yaml

    assert not _absolute_paths(json.loads((published / "results.json").read_text()))
    assert not _absolute_paths(yaml.safe_load((published / "config.yaml").read_text()))
    assert f" {shared_data}" not in (published / "report.md").read_text()

    # a rerun recomputes nothing: no step file is rewritten and the model is never loaded
    before = _step_files(out)
    first_numbers = {k: results[k] for k in ("scores", "ppl", "xquad", "off_target", "transfer", "findings")}

    def no_load(*a, **k):
        raise AssertionError("a rerun with every step done must not load the model")

    monkeypatch.setattr("lahis_ctrl.core.loading.load_model", no_load)
    capsys.readouterr()
    assert _cli(*args) == 0
    printed = capsys.readouterr().out
    assert f"0 step(s) ran, {2 * MAIN_STEPS} skipped" in printed
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
    assert f"0 step(s) ran, {2 * MAIN_STEPS} skipped" in capsys.readouterr().out
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


def _ppl(langs, own_effect, texts=30, draws=10, seed=0):
    """A ppl_cross-shaped result from synthetic per-text losses: zeroing a language's own heads adds `own_effect`
    nats/token to its texts, every other column and every random draw adds noise only."""
    import numpy as np

    from lahis_ctrl.eval.ppl import compare_language

    rng = np.random.default_rng(seed)
    base = {x: rng.normal(3.0, 0.3, texts) for x in langs}

    def stats_of(losses):
        return {"losses": [float(v) for v in losses], "corpus_ppl": float(np.exp(np.mean(losses))),
                "mean_text_ppl": float(np.mean(np.exp(losses))), "num_texts": texts}

    result = {"k": 2, "languages": langs, "masked_languages": langs, "random_trials": draws,
              "baseline": {x: stats_of(base[x]) for x in langs},
              "masked": {y: {x: stats_of(base[x] + (own_effect if x == y else 0.0) + rng.normal(0.02, 0.02, texts))
                             for x in langs} for y in langs},
              "random": {x: {"trials": [stats_of(base[x] + rng.normal(0.02, 0.02, texts)) for _ in range(draws)]}
                         for x in langs}}
    result["comparisons"] = {x: compare_language(result, x) for x in langs}
    return result


def _xquad(orig, lahis, randoms):
    return {"summary": {}, "items": {"original": orig, **{f"random{i}": r for i, r in enumerate(randoms)},
                                     "lahis": lahis}}


def test_findings_follow_the_numbers_with_statistics():
    import numpy as np

    langs = ["en", "de", "es", "hi"]
    planted = {f["id"]: f for f in findings({"ppl": _ppl(langs, own_effect=0.5)})}
    noise = {f["id"]: f for f in findings({"ppl": _ppl(langs, own_effect=0.0)})}
    assert planted["ppl_own_vs_random"]["verdict"] == "holds" and planted["ppl_diagonal"]["verdict"] == "holds"
    # beating all 10 draws in 4 languages: the exact combined rank p is 11^-4, not the per-language floor 1/11
    assert planted["ppl_own_vs_random"]["p_value"] == pytest.approx(11.0 ** -4)
    assert "beat all 10 random draws in 4 of 4 languages" in planted["ppl_own_vs_random"]["evidence"]
    assert {f["verdict"] for f in noise.values()} <= {"inconclusive", "does not hold"}
    for f in planted.values():
        assert f["ci"][0] <= f["effect"] <= f["ci"][1] and f["p_holm"] >= f["p_value"]

    # XQuAD: a planted +30 points on 200 items holds; +1 answer in 200 is inconclusive; the paper's +5 points
    # outside a tight interval around 0 does not hold
    rng = np.random.default_rng(1)
    orig = (rng.random(200) < 0.3).astype(float)
    better = np.where(rng.random(200) < 0.45, 1.0, orig)
    f = {x["id"]: x for x in findings({"xquad": {"de": _xquad(list(orig), list(better), [list(orig)])}})}
    assert f["xquad_vs_original"]["verdict"] == "holds" and f["xquad_vs_random"]["verdict"] == "holds"
    assert f["xquad_vs_original"]["unit"] == "points" and "detectable with 80% power" in f["xquad_vs_original"]["evidence"]
    one_more = orig.copy()
    one_more[np.flatnonzero(orig == 0)[0]] = 1.0
    f = {x["id"]: x for x in findings({"xquad": {"de": _xquad(list(orig), list(one_more), [list(orig)])}})}
    assert f["xquad_vs_random"]["verdict"] == "inconclusive"
    same = {x["id"]: x for x in findings({"xquad": {"de": _xquad([1.0, 0.0] * 400, [1.0, 0.0] * 400,
                                                                [[1.0, 0.0] * 400])}})}
    assert same["xquad_vs_original"]["verdict"] == "does not hold"  # 800 items rule the paper's +5 out
    assert same["xquad_vs_random"]["verdict"] == "inconclusive"

    # off-target: per-output labels (None = undecided: left out of the pairs)
    def ot(none, zero_source, scale_target, randoms):
        runs = {"none": none, "zero_source": zero_source, "scale_target": scale_target, "zero_target": none}
        runs.update({("zero_random" if i == 0 else f"zero_random_{i + 1}"): r for i, r in enumerate(randoms)})
        return {n: {"label": n, "tasks": {"ntrex_en": {"off_target": v, "metrics": {}}}} for n, v in runs.items()}

    none = [1] * 60 + [0] * 40
    fixed = [0] * 50 + [1] * 10 + [0] * 40       # 50 of 60 off-target outputs come back on target
    undecided = [None] * 100
    f = {x["id"]: x for x in findings({"off_target": {"de": ot(none, fixed, undecided, [none, none])}})}
    assert f["off_target_ntrex_en_zero_source"]["verdict"] == "holds"
    assert f["off_target_ntrex_en_zero_source"]["effect"] == pytest.approx(-50.0)
    assert f["off_target_ntrex_en_scale_target"]["verdict"] == "inconclusive"  # nothing decided: no pairs
    assert "0 outputs decided" in f["off_target_ntrex_en_scale_target"]["evidence"]

    # transfer: shifts against the random draws' shifts, per item
    def probe(shift_scale, shift_zero, n=40):
        r = np.random.default_rng(2)
        base = r.normal(0, 1, n)
        res = {"none": base}
        res["x3 de heads"] = base + shift_scale
        res["zero es heads"] = base + shift_zero
        for i in range(3):
            tag = "" if i == 0 else f" #{i + 1}"
            res[f"x3 random heads{tag}"] = base + r.normal(0, 0.1, n)
            res[f"zero random heads{tag}"] = base + r.normal(0, 0.1, n)
        return {"results": {k: {"mean_log_odds": float(v.mean()), "share_prefers_x": float((v > 0).mean()),
                                "per_item": [{"log_odds": float(x)} for x in v]} for k, v in res.items()}}

    f = {x["id"]: x for x in findings({"transfer": {"de-es": probe(1.0, -1.0)}})}
    assert f["transfer_de-es_scale"]["verdict"] == "holds" and f["transfer_de-es_zero"]["verdict"] == "does not hold"


def test_control_verdicts_are_attached_and_flag_what_random_weights_also_show():
    from lahis_ctrl.experiments.reproduce.findings import attach_control, verdict_text

    main = [{"id": "a", "verdict": "holds"}, {"id": "b", "verdict": "holds"}, {"id": "c", "verdict": "inconclusive"}]
    ctl = [{"id": "a", "verdict": "holds", "effect": 1.0, "ci": [0.5, 1.5], "p_value": 0.01, "p_holm": 0.02, "n": 9,
            "evidence": ""}, {"id": "b", "verdict": "inconclusive", "effect": 0.1, "ci": [-1, 1], "p_value": 0.5,
                              "p_holm": 1.0, "n": 9, "evidence": ""}]
    attach_control(main, ctl)
    assert main[0]["control"]["verdict"] == "holds" and "not evidence of learned language heads" in verdict_text(main[0])
    assert "control_note" not in main[1] and verdict_text(main[1]) == "Holds"
    assert main[2]["control"] is None


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
    assert len(gemma["scoring"]["languages"]) >= 8 and len(gemma["xquad"]["languages"]) >= 4
    llama = yaml.safe_load((ROOT / "configs" / "reproduce-llama-3.2-3b.yaml").read_text())
    assert llama["scoring"]["texts"] == 1000 and llama["scoring"]["max_length"] == 2048
    assert llama["xquad"]["train_items"] is None and llama["xquad"]["epochs"] == 2
