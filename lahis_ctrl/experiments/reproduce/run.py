"""`lahis reproduce`: check the config, run the steps (each resumable), write the report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Optional

from ...core.errors import LahisError
from .config import (STEPS, ControlSettings, LcbSettings, OffTargetSettings, PplSettings, ScoringSettings,
                     TransferSettings, XquadSettings)
from .findings import attach_control, effect_text, findings, verdict_text
from .report import _plots, _tables, check_readme, portable, publish, readme_section, render_report, update_readme
from .runner import _header, _Run
from .steps import _lcb_step, _off_target_step, _ppl_step, _scores_step, _transfer_step, _xquad_step


def _check_languages(steps, scoring: ScoringSettings, xquad: XquadSettings, off_target: OffTargetSettings,
                     transfer: TransferSettings, lcb: LcbSettings) -> None:
    """Every language a step needs must be scored (its heads come from step 1) and known to that step."""
    from ...eval.transfer import LANGUAGES as PROBE_LANGUAGES
    from ...corpora.xquad import XQUAD_LANGS, check_lang

    scored = set(scoring.languages)
    needs = []
    if "xquad" in steps:
        for lang in xquad.languages:
            check_lang(lang, XQUAD_LANGS)
        needs += [("xquad.languages", lang) for lang in xquad.languages]
    if "off_target" in steps:
        bad = [t for t in off_target.tasks if t not in ("xquad_xling", "ntrex_en")]
        if bad:
            raise LahisError(f"unknown off_target task(s) {bad}: use xquad_xling and/or ntrex_en")
        needs += [("off_target.languages", lang) for lang in off_target.languages]
        needs.append(("off_target.source_lang", off_target.source_lang))
    if "transfer" in steps:
        for pair in transfer.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise LahisError(f"transfer pair {pair}: give two different languages, e.g. [de, es]")
            unknown = [lang for lang in pair if lang not in PROBE_LANGUAGES]
            if unknown:
                raise LahisError(f"the Alice probe has no text for {unknown}: transfer languages are "
                                 f"{' '.join(PROBE_LANGUAGES)}")
            needs += [("transfer.pairs", lang) for lang in pair]
    if "lcb" in steps:
        from ...corpora.lcb import CROSSLINGUAL_LANGUAGES, LCB_TASKS, MONOLINGUAL_LANGUAGES

        if lcb.task not in LCB_TASKS:
            raise LahisError(f"lcb.task '{lcb.task}': use one of {', '.join(LCB_TASKS)}")
        known = CROSSLINGUAL_LANGUAGES if lcb.task == "crosslingual" else MONOLINGUAL_LANGUAGES
        unknown = [lang for lang in lcb.languages if lang not in known]
        if unknown:
            raise LahisError(f"the LCB {lcb.task} task has no prompts in {unknown}: its languages are {' '.join(known)}")
        needs += [("lcb.languages", lang) for lang in lcb.languages]
        needs.append(("lcb.source_lang", lcb.source_lang))
    missing = [(where, lang) for where, lang in needs if lang not in scored]
    if missing:
        where, lang = missing[0]
        raise LahisError(f"{where} names '{lang}', which is not in scoring.languages ({' '.join(scoring.languages)}): "
                         "its heads come from the LAHIS scores, so add it there")


def scaled(settings, factor: float, minimum: dict):
    """A copy of a settings dataclass with its size fields multiplied by `factor` (each at least its minimum;
    None, meaning "all", stays None)."""
    changes = {}
    for name, low in minimum.items():
        value = getattr(settings, name)
        if value is not None:
            changes[name] = max(low, int(round(value * factor)))
    return dataclasses.replace(settings, **changes)


def _run_steps(run: _Run, steps, scoring: ScoringSettings, ppl: PplSettings, xquad: XquadSettings,
               off_target: OffTargetSettings, transfer: TransferSettings, lcb: LcbSettings, data: Optional[str],
               source: str, seed: int) -> tuple[dict, dict]:
    """Every requested step on one model: (results, the loaded LAHIS scores)."""
    from ...lahis.heads import load_scores

    _header(f"1. LAHIS scores of {', '.join(scoring.languages)} ({source}, {scoring.texts} x {scoring.max_length} tokens)")
    scores_res = _scores_step(run, scoring, source, seed)
    results: dict[str, Any] = {"model": scores_res["model"],
                               "scores": {k: v for k, v in scores_res.items() if k not in ("fingerprint", "model")}}
    scores, scores_fp = load_scores(list(scores_res["files"].values())), scores_res["fingerprint"]
    if "ppl" in steps:
        _header(f"2. perplexity matrix (top-{ppl.k} specific heads zeroed vs {ppl.random_trials} draws of {ppl.k} "
                "random heads)")
        results["ppl"] = _ppl_step(run, ppl, scoring, source, scores, scores_fp, seed)
    if "xquad" in steps:
        _header(f"3. XQuAD soft masks: {', '.join(xquad.languages)}")
        results["xquad"] = _xquad_step(run, xquad, scoring, scores, scores_fp, data, seed)
    if "off_target" in steps:
        _header(f"4. off-target rates: {', '.join(off_target.tasks)} x {', '.join(off_target.languages)}")
        results["off_target"] = _off_target_step(run, off_target, scoring, scores, scores_fp, data, seed)
    if "transfer" in steps:
        _header(f"5. attention transfer: {', '.join('-'.join(p) for p in transfer.pairs)}")
        results["transfer"] = _transfer_step(run, transfer, scoring, scores, scores_fp, seed)
    if "lcb" in steps:
        _header(f"6. Language Confusion Benchmark ({lcb.task}): {', '.join(lcb.languages)}")
        results["lcb"] = _lcb_step(run, lcb, scoring, scores, scores_fp, data, seed)
    return results, scores


def reproduce(model: str = "gemma-3-270m", data: Optional[str] = None, out: Path = Path("runs/reproduce"),
              dtype: str = "float32", device_map: Optional[str] = None, device: Optional[str] = None, seed: int = 0,
              steps: list[str] = list(STEPS), force: bool = False, alpha: float = 0.05,
              scoring: ScoringSettings = ScoringSettings(), ppl: PplSettings = PplSettings(),
              xquad: XquadSettings = XquadSettings(), off_target: OffTargetSettings = OffTargetSettings(),
              transfer: TransferSettings = TransferSettings(), lcb: LcbSettings = LcbSettings(),
              control: ControlSettings = ControlSettings(), readme: Optional[Path] = None) -> dict:
    """Reproduce the paper's experiments on one model and write a report folder (report.md, results.json,
    plots/*.png, config.yaml) whose findings say, with intervals and p-values, what holds. Every step is
    resumable: a rerun skips what is done.

    Args:
        model: hub id, local directory or the embedded 'gemma-3-270m'.
        data: a directory with xquad/, ntrex128/ and lcb/ (the layout of ../shared/data); null = the hub / GitHub.
        out: the report folder (work files under <out>/work).
        dtype: model dtype: float32 on CPU; bfloat16 on a GPU.
        device_map: e.g. "auto" to spread a large model over GPUs (needs accelerate).
        device: move the model there after loading ("cuda"); ignored with device_map.
        seed: seeds random heads, shuffling and training.
        steps: which steps to run (scores is always needed by the others): scores ppl xquad off_target transfer lcb.
        force: recompute every step even when a stored result matches.
        alpha: significance level of the findings (after Holm's correction over the report's findings).
        scoring: step 1 settings (see ScoringSettings).
        ppl: step 2 settings.
        xquad: step 3 settings.
        off_target: step 4 settings.
        transfer: step 5 settings.
        lcb: step 6 settings.
        control: the random-weight control (the same steps on a re-initialised copy at a reduced size).
        readme: also write the short results section into this README (between the reproduce markers) and
            copy the report (without the work files) to docs/reproduce/<model name>/ beside it.
    """
    import lahis_ctrl

    from ...core.fileio import run_lock, write_json

    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise LahisError(f"unknown step(s) {bad}: choose from {' '.join(STEPS)}")
    if data is not None and not Path(data).is_dir():
        raise LahisError(f"data directory not found: {data} (it should hold xquad/, ntrex128/ and lcb/, like "
                         "../shared/data)")
    if not 0 < alpha < 1:
        raise LahisError(f"alpha must be between 0 and 1, got {alpha}")
    if len(scoring.languages) < 2:
        raise LahisError("scoring.languages needs at least 2 languages to tell specific from general heads")
    _check_languages(steps, scoring, xquad, off_target, transfer, lcb)
    if readme is not None:
        check_readme(Path(readme))  # refuse broken markers before hours of work, not after
    from ...corpora.texts import check_source

    source = str(Path(data) / "ntrex128") if scoring.source == "ntrex" and data else scoring.source
    for lang in scoring.languages:  # bad languages / missing files fail before the model is loaded
        check_source(source, lang)
    from ...core.architecture import check_max_length
    from ...core.loading import load_config

    model_config = load_config(model)
    check_max_length(model_config, scoring.max_length, "scoring.max_length")
    check_max_length(model_config, ppl.max_length, "ppl.max_length")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "data": data, "out": str(out), "dtype": dtype, "device_map": device_map,
              "device": device, "seed": seed, "steps": list(steps), "alpha": alpha,
              "scoring": dataclasses.asdict(scoring), "ppl": dataclasses.asdict(ppl),
              "xquad": dataclasses.asdict(xquad), "off_target": dataclasses.asdict(off_target),
              "transfer": dataclasses.asdict(transfer), "lcb": dataclasses.asdict(lcb),
              "control": dataclasses.asdict(control)}
    with run_lock(out, f"lahis reproduce --out {out}"):  # a second run on this folder refuses at once
        run = _Run(model, dtype, device_map, device, out, force=force)
        t_all = time.perf_counter()
        main, scores = _run_steps(run, steps, scoring, ppl, xquad, off_target, transfer, lcb, data, source, seed)
        results = {"version": lahis_ctrl.__version__, "config": config, **main}
        results["findings"] = findings(main, alpha)
        if control.enabled:
            f = control.scale
            ctl = _Run(model, dtype, device_map, device, out, force=force, work=out / "work" / "control",
                       random_init=control.seed)
            print(f"\n== random-weight control: {ctl.model_name}, {f:g} of the sizes")
            ctl_results, _ = _run_steps(
                ctl, steps, scaled(scoring, f, {"texts": 4}), scaled(ppl, f, {"texts": 4, "random_trials": 5}),
                scaled(xquad, f, {"train_items": 8, "test_items": 16}), scaled(off_target, f, {"limit": 8}),
                scaled(transfer, f, {"items": 12}), scaled(lcb, f, {"limit": 4}), data, source, seed)
            ctl_found = findings(ctl_results, alpha)
            attach_control(results["findings"], ctl_found)
            write_json(out / "control_results.json", {"model": ctl.model_name, **ctl_results, "findings": ctl_found})
            results["control"] = {"model": ctl.model_name, "seed": control.seed, "scale": f, "findings": ctl_found,
                                  "results": "control_results.json"}
            run.log += ctl.log
        _header("report")
        results["steps"] = run.log
        plots_made = _plots(results, out, scores)
        results["plots"] = plots_made
        _write_report(out, results, config)
        if readme is not None:
            readme = Path(readme)
            dest = publish(out, readme, Path(model).name)
            base = readme.parent.resolve()
            _write_report(dest, portable(results, base), portable(config, base))  # no path of this machine
            rel = lambda p: str(p.resolve().relative_to(base))  # noqa: E731
            plot = rel(dest / plots_made["findings"]) if "findings" in plots_made else None
            update_readme(readme, readme_section(results, rel(dest / "report.md"), plot))
            print(f"   README section written to {readme}; report copied to {dest}")
        for f in results["findings"]:
            print(f"   {verdict_text(f)}: {f['claim']} - {effect_text(f)}")
        ran = sum(1 for s in run.log if not s["skipped"])
        print(f"\nreport: {out / 'report.md'}  ({ran} step(s) ran, {len(run.log) - ran} skipped; "
              f"{time.perf_counter() - t_all:.0f} s)")
        return results


def _write_report(folder: Path, results: dict, config: dict) -> None:
    import yaml

    from ...core.fileio import write_json, write_text

    write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    write_json(folder / "results.json", results)
    write_text(folder / "report.md", render_report(results, _tables(results), results["plots"]))
