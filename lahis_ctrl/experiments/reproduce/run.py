"""`lahis reproduce`: check the config, run the steps (each resumable), write the report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

from ...core.argtypes import Dtype, NonNegativeInt, OpenUnitInterval
from ...core.errors import LahisError
from .config import (AUTO_MIN_P, STEPS, ControlSettings, LcbSettings, OffTargetSettings, PplSettings, ScoringSettings,
                     TransferSettings, XquadSettings)
from .findings import attach_control, effect_text, findings, placebos, verdict_text
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


def resolve_defaults(steps, scoring: ScoringSettings, xquad: XquadSettings, off_target: OffTargetSettings,
                     transfer: TransferSettings, lcb: LcbSettings) -> tuple:
    """The sections with their language defaults filled from the scored languages (a section the user left at
    null follows scoring.languages): xquad the scored XQuAD languages but en, off_target the scored languages that
    have its tasks but the source, transfer the first two scored probe languages but en in both orders, lcb the
    scored languages the task has."""
    from ...corpora.lcb import CROSSLINGUAL_LANGUAGES, MONOLINGUAL_LANGUAGES
    from ...corpora.xquad import XQUAD_LANGS
    from ...eval.transfer import LANGUAGES as PROBE_LANGUAGES
    from ...integrations.lm_eval.runner import tasks_dir

    scored = list(scoring.languages)

    def need(section: str, langs: list) -> list:
        if not langs and section.split(".")[0] in steps:
            raise LahisError(f"{section}: none of the scored languages ({' '.join(scored)}) works for this step; "
                             f"name them in {section} or score more languages")
        return langs

    if xquad.languages is None:
        xquad = dataclasses.replace(xquad, languages=need("xquad.languages",
                                                          [l for l in scored if l in XQUAD_LANGS and l != "en"]))
    if off_target.languages is None:
        have = [l for l in scored if l != off_target.source_lang and
                all((tasks_dir() / t.split("_")[0] / f"{t}_{l}.yaml").is_file() or
                    (tasks_dir() / t / f"{t}_{l}.yaml").is_file() for t in off_target.tasks)]
        off_target = dataclasses.replace(off_target, languages=need("off_target.languages", have))
    if transfer.pairs is None:
        probe = [l for l in scored if l in PROBE_LANGUAGES and l != "en"][:2]
        transfer = dataclasses.replace(transfer, pairs=need("transfer.pairs", [[probe[0], probe[1]], [probe[1], probe[0]]]
                                                            if len(probe) == 2 else []))
    if lcb.languages is None:
        known = CROSSLINGUAL_LANGUAGES if lcb.task == "crosslingual" else MONOLINGUAL_LANGUAGES
        lcb = dataclasses.replace(lcb, languages=need("lcb.languages", [l for l in scored if l in known
                                                                        and l != lcb.source_lang]))
    return xquad, off_target, transfer, lcb


def expected_findings(steps, ppl_languages: int, off_target: OffTargetSettings) -> int:
    """How many findings the main family will hold (Holm's m) for these steps."""
    count = 0
    if "ppl" in steps:
        count += 2 if ppl_languages > 1 else 1
    if "xquad" in steps:
        count += 3  # direction, size, vs random heads
    if "off_target" in steps:
        count += 4 * len(off_target.tasks)  # zero source and scale target, each vs none and vs random heads
    if "transfer" in steps:
        count += 4
    if "lcb" in steps:
        count += 3
    return max(1, count)


def planned_draws(steps, ppl: PplSettings, ppl_languages: list, xquad: XquadSettings, off_target: OffTargetSettings,
                  transfer: TransferSettings, lcb: LcbSettings, alpha: float, allow_underpowered: bool) -> dict:
    """The random draws of every claim against random heads: "auto" becomes the fewest draws that let the claim's
    combined rank test reach p <= AUTO_MIN_P over its independent units; a count set by hand that cannot reach
    alpha / m (Holm's first step over the m findings) is refused, unless allow_underpowered. Returns {"ppl": N,
    "xquad": N, "off_target": {"zero": N, "scale": N}, "transfer": N, "lcb": N, "plan": [one row per claim]}."""
    from ...eval import stats

    m = expected_findings(steps, len(ppl_languages), off_target)
    level = alpha / m
    pairs = transfer.pairs or []
    # (step, setting, claim, independent units); a step's draws serve all its claims, so it takes the largest need
    claims = [("ppl", "ppl.random_trials", "zeroing a language's heads vs random heads (perplexity)",
               len(ppl_languages), None),
              ("xquad", "xquad.random_masks", "the LAHIS soft mask vs random-heads soft masks", len(xquad.languages), None),
              ("off_target", "off_target.random_draws", "zeroing the source language's heads vs random heads (one "
               "source head set)", 1, "zero"),
              ("off_target", "off_target.random_draws", "scaling the target language's heads up vs random heads",
               len(off_target.languages), "scale"),
              ("transfer", "transfer.random_draws", "the Alice probe's interventions vs random heads",
               max(1, min(len({p[0] for p in pairs}), len({p[1] for p in pairs}))), None),
              ("lcb", "lcb.random_draws", "LCB: scaling the target language's heads up vs random heads",
               len(lcb.languages), None)]
    values = {"ppl": ppl.random_trials, "xquad": xquad.random_masks, "off_target": off_target.random_draws,
              "transfer": transfer.random_draws, "lcb": lcb.random_draws}
    out: dict = {"off_target": {}, "plan": [], "findings": m, "level": level}
    for step, setting, claim, units, sub in claims:
        if step not in steps:
            continue
        value = values[step]
        needed = stats.draws_needed(units, AUTO_MIN_P)
        draws = needed if value == "auto" else int(value)
        min_p = stats.min_rank_p(draws, units)
        if value != "auto" and min_p > level and not allow_underpowered:
            raise LahisError(f"{setting} = {draws}: the test of \"{claim}\" over {units} independent unit(s) cannot "
                             f"reach a p below {min_p:.2g}, above alpha/{m} = {level:.2g}, the level Holm's first step "
                             f"needs; use {needed} draws (or auto), or set allow_underpowered: true to run it labelled "
                             "\"underpowered by design\"")
        out["plan"].append({"claim": claim, "setting": setting, "units": units, "draws": draws,
                            "auto": value == "auto", "needed": needed, "min_p": min_p,
                            "underpowered_by_design": min_p > level, "key": [step, sub]})
        if sub:
            out["off_target"][sub] = draws
        else:
            out[step] = draws
    return out


def independent_units(scores: dict, steps, scoring: ScoringSettings, ppl: PplSettings, ppl_languages: list,
                      xquad: XquadSettings, off_target: OffTargetSettings, transfer: TransferSettings,
                      lcb: LcbSettings) -> dict:
    """The independent units each claim against random heads has once the scores are known: languages (or pairs)
    whose head sets share a head count once (lahis.heads.independent_groups). {(step, sub): units}."""
    import types

    import torch

    from ...lahis.heads import independent_groups, strict_specific_heads
    from .runner import _one_percent

    layers, heads = next(iter(scores.values())).scores.shape
    shape = types.SimpleNamespace(num_layers=layers, num_heads=heads)

    def strict(langs, k) -> dict:
        return {x: strict_specific_heads(scores, x, k, q=scoring.q).heads for x in dict.fromkeys(langs)}

    units = {}
    if "ppl" in steps:
        units[("ppl", None)] = len(independent_groups(strict(ppl_languages, ppl.k)))
    if "xquad" in steps:
        n = xquad.heads or max(4, int(0.02 * layers * heads))
        top = {x: [(int(i) // heads, int(i) % heads) for i in
                   torch.sort(scores[x].scores.flatten(), descending=True, stable=True).indices[:n]]
               for x in xquad.languages}  # the soft mask's trainable heads (lahis.softmask.select_heads "top")
        units[("xquad", None)] = len(independent_groups(top))
    k = _one_percent(shape, off_target.heads)
    if "off_target" in steps:
        units[("off_target", "zero")] = 1
        units[("off_target", "scale")] = len(independent_groups(strict(off_target.languages, k)))
    if "transfer" in steps and transfer.pairs:
        k = _one_percent(shape, transfer.heads)
        units[("transfer", None)] = min(len(independent_groups({f"{a}-{b}": strict([a], k)[a] for a, b in transfer.pairs})),
                                        len(independent_groups({f"{a}-{b}": strict([b], k)[b] for a, b in transfer.pairs})))
    if "lcb" in steps:
        units[("lcb", None)] = len(independent_groups(strict(lcb.languages, _one_percent(shape, lcb.heads))))
    return units


def refine_draws(draws: dict, units: dict) -> dict:
    """The plan once the independent units are known: `auto` counts become the fewest draws that reach p <= AUTO_MIN_P
    with the units there really are (fewer when languages share heads), and every row's smallest p and power flag
    follow (a count set by hand whose units merged is then labelled underpowered by design, not refused)."""
    from ...eval import stats

    for row in draws["plan"]:
        key = tuple(row["key"])
        if key not in units or units[key] == row["units"]:
            continue
        row["configured_units"], row["units"] = row["units"], units[key]
        row["needed"] = stats.draws_needed(row["units"], AUTO_MIN_P)
        if row["auto"]:
            row["draws"] = row["needed"]
            if key[1]:
                draws["off_target"][key[1]] = row["draws"]
            else:
                draws[key[0]] = row["draws"]
        row["min_p"] = stats.min_rank_p(row["draws"], row["units"])
        row["underpowered_by_design"] = row["min_p"] > draws["level"]
    return draws


def _run_steps(run: _Run, steps, scoring: ScoringSettings, ppl: PplSettings, xquad: XquadSettings,
               off_target: OffTargetSettings, transfer: TransferSettings, lcb: LcbSettings, data: Optional[str],
               source: str, seed: int, draws: dict, refine: bool = True) -> tuple[dict, dict]:
    """Every requested step on one model: (results, the loaded LAHIS scores). With `refine`, the draw counts are
    refined from the scores (refine_draws) before the steps that use them; the control keeps the main run's."""
    from ...lahis.heads import load_scores

    _header(f"1. LAHIS scores of {', '.join(scoring.languages)} ({source}, {scoring.texts} x {scoring.max_length} tokens)")
    scores_res = _scores_step(run, scoring, source, seed)
    results: dict[str, Any] = {"model": scores_res["model"],
                               "scores": {k: v for k, v in scores_res.items() if k not in ("fingerprint", "model")}}
    scores, scores_fp = load_scores(list(scores_res["files"].values())), scores_res["fingerprint"]
    if refine:
        refine_draws(draws, independent_units(scores, steps, scoring, ppl, ppl.languages or list(scoring.languages),
                                              xquad, off_target, transfer, lcb))
    if "ppl" in steps:
        _header(f"2. perplexity matrix ({ppl.k} strictly specific heads zeroed vs {draws['ppl']} draws of {ppl.k} "
                "random heads, and a placebo set per language)")
        results["ppl"] = _ppl_step(run, ppl, scoring, source, scores, scores_fp, seed, draws["ppl"])
    if "xquad" in steps:
        _header(f"3. XQuAD soft masks: {', '.join(xquad.languages)} ({xquad.seeds} LAHIS seed(s), {draws['xquad']} "
                "random-heads masks and a placebo per language)")
        results["xquad"] = _xquad_step(run, xquad, scoring, scores, scores_fp, data, seed, draws["xquad"])
    if "off_target" in steps:
        _header(f"4. off-target rates: {', '.join(off_target.tasks)} x {', '.join(off_target.languages)} "
                f"({draws['off_target']['zero']} zeroed and {draws['off_target']['scale']} scaled random sets)")
        results["off_target"] = _off_target_step(run, off_target, scoring, scores, scores_fp, data, seed,
                                                 draws["off_target"])
    if "transfer" in steps:
        _header(f"5. attention transfer: {', '.join('-'.join(p) for p in transfer.pairs)} ({draws['transfer']} random "
                "sets per intervention)")
        results["transfer"] = _transfer_step(run, transfer, scoring, scores, scores_fp, seed, draws["transfer"])
    if "lcb" in steps:
        _header(f"6. Language Confusion Benchmark ({lcb.task}): {', '.join(lcb.languages)} ({draws['lcb']} random "
                "sets per language)")
        results["lcb"] = _lcb_step(run, lcb, scoring, scores, scores_fp, data, seed, draws["lcb"])
    return results, scores


def reproduce(model: str = "gemma-3-270m", data: Optional[str] = None, out: Path = Path("runs/reproduce"),
              dtype: Dtype = "float32", device_map: Optional[str] = None, device: Optional[str] = None,
              seed: NonNegativeInt = 0, steps: list[str] = list(STEPS), overwrite: bool = False,
              alpha: OpenUnitInterval = 0.05,
              scoring: ScoringSettings = ScoringSettings(), ppl: PplSettings = PplSettings(),
              xquad: XquadSettings = XquadSettings(), off_target: OffTargetSettings = OffTargetSettings(),
              transfer: TransferSettings = TransferSettings(), lcb: LcbSettings = LcbSettings(),
              control: ControlSettings = ControlSettings(), allow_underpowered: bool = False,
              readme: Optional[Path] = None) -> dict:
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
        overwrite: recompute every step even when a stored result matches (and replace it).
        alpha: significance level of the findings (after Holm's correction over the report's findings).
        scoring: step 1 settings (see ScoringSettings).
        ppl: step 2 settings.
        xquad: step 3 settings.
        off_target: step 4 settings.
        transfer: step 5 settings.
        lcb: step 6 settings.
        control: the random-weight control (the same steps on a re-initialised copy, at the same sizes).
        allow_underpowered: run random-draw counts set by hand that cannot reach significance after Holm's correction
            (their findings are labelled "underpowered by design"); without it they are refused up front.
        readme: also write the short results section into this README (between the reproduce markers) and
            copy the report (without the work files) to docs/reproduce/<model name>/ beside it.
    """
    import lahis_ctrl

    from ...core.fileio import run_lock, write_json

    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise LahisError(f"unknown step(s) {bad}: choose from {' '.join(STEPS)}")
    if not steps:
        raise LahisError(f"--steps is empty: name at least one of {' '.join(STEPS)} (scores always runs)")
    if control.scale is not None:
        raise LahisError(f"control.scale={control.scale:g}: the random-weight control now runs at the main run's sizes "
                         "(a smaller control could not fail); remove control.scale from the config")
    if data is not None and not Path(data).is_dir():
        raise LahisError(f"data directory not found: {data} (it should hold xquad/, ntrex128/ and lcb/, like "
                         "../shared/data)")
    if not 0 < alpha < 1:
        raise LahisError(f"alpha must be between 0 and 1, got {alpha}")
    if len(scoring.languages) < 2:
        raise LahisError("scoring.languages needs at least 2 languages to tell specific from general heads")
    xquad, off_target, transfer, lcb = resolve_defaults(steps, scoring, xquad, off_target, transfer, lcb)
    _check_languages(steps, scoring, xquad, off_target, transfer, lcb)
    draws = planned_draws(steps, ppl, ppl.languages or scoring.languages, xquad, off_target, transfer, lcb, alpha,
                          allow_underpowered)
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
              "control": dataclasses.asdict(control), "allow_underpowered": allow_underpowered}
    # plain JSON values: the typed options (PositiveInt, ...) are int/float subclasses that YAML cannot represent
    config = json.loads(json.dumps(config))
    with run_lock(out, f"lahis reproduce --out {out}"):  # a second run on this folder refuses at once
        run = _Run(model, dtype, device_map, device, out, force=overwrite)
        t_all = time.perf_counter()
        main, scores = _run_steps(run, steps, scoring, ppl, xquad, off_target, transfer, lcb, data, source, seed,
                                  draws)
        results = {"version": lahis_ctrl.__version__, "config": config, **main,
                   "design": {"alpha": alpha, "auto_min_p": AUTO_MIN_P, **draws}}
        results["findings"] = findings(main, alpha)
        results["placebo"] = placebos(main, alpha)
        if control.enabled:
            ctl = _Run(model, dtype, device_map, device, out, force=overwrite, work=out / "work" / "control",
                       random_init=control.seed)
            print(f"\n== random-weight control: {ctl.model_name}, the same sizes and draws")
            ctl_results, _ = _run_steps(ctl, steps, scoring, ppl, xquad, off_target, transfer, lcb, data, source, seed,
                                        draws, refine=False)
            ctl_found = findings(ctl_results, alpha)
            attach_control(results["findings"], ctl_found)
            write_json(out / "control_results.json", {"model": ctl.model_name, "seed": control.seed, **ctl_results,
                                                      "findings": ctl_found, "placebo": placebos(ctl_results, alpha)})
            results["control"] = {"model": ctl.model_name, "seed": control.seed, "findings": ctl_found,
                                  "results": "control_results.json"}
            run.log += ctl.log
        _header("report")
        results["steps"] = run.log
        plots_made = _plots(results, out, scores)
        results["plots"] = plots_made
        _write_report(out, results, config, scores)
        if readme is not None:
            from ...core.fileio import read_json

            readme = Path(readme)
            dest = publish(out, readme, Path(model).name)
            base = readme.parent.resolve()
            _write_report(dest, portable(results, base), portable(config, base), scores)  # no path of this machine
            if (out / "control_results.json").is_file():
                write_json(dest / "control_results.json",
                           portable(read_json(out / "control_results.json", "control results"), base))
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


def _write_report(folder: Path, results: dict, config: dict, scores: Optional[dict] = None) -> None:
    import yaml

    from ...core.fileio import write_json, write_text

    write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    write_json(folder / "results.json", results)
    write_text(folder / "report.md", render_report(results, _tables(results, scores), results["plots"]))
