"""The report folder of `lahis reproduce`: report.md (tables with intervals, plots with error bars), the README
section, and the copy under docs/ (which names no absolute path of the machine that ran it)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from ...core.errors import LahisError
from ...eval import stats
from ...eval.evaluate import accuracy_interval
from .findings import _mean, _task_families, effect_text, verdict_text
from .steps import PLOT_LABELS

README_START = "<!-- lahis reproduce: start -->"
README_END = "<!-- lahis reproduce: end -->"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _rate_ci(values) -> tuple[Optional[float], list]:
    """(rate, [Wilson low, high]) of 0/1 values (None = undecided, left out)."""
    decided = [v for v in values if v is not None]
    if not decided:
        return None, [None, None]
    k, n = int(sum(decided)), len(decided)
    return k / n, list(stats.wilson_interval(k, n))


def _pct_ci(rate, ci) -> str:
    if rate is None:
        return "n/a"
    return f"{100 * rate:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


# ---------------------------------------------------------------------------------------------- tables
def _tables(results: dict) -> dict[str, str]:
    from ...eval.ppl import format_comparisons, format_table as ppl_table
    from ...lahis.heads import format_classification

    t = {}
    if results.get("scores"):
        c = results["scores"]["classification"]
        lines = ["| language | texts | tokens | language-specific heads (best first) |", "|---|---:|---:|---|"]
        for lang, d in c["per_language"].items():
            heads = ", ".join(f"L{x['layer']}H{x['head']}" for x in d["specific"]) or "none"
            lines.append(f"| {lang} | {results['scores']['texts'][lang]} | {results['scores']['tokens'][lang]} | {heads} |")
        general = ", ".join(f"L{g['layer']}H{g['head']} ({'/'.join(g['languages'])})" for g in c["general"]) or "none"
        t["scores"] = "\n".join(lines) + f"\n\nLanguage-general heads (kept by >= {c['min_rep']} of " \
                                         f"{len(c['languages'])} languages): {general}\n\n```\n{format_classification(c)}\n```"
    if results.get("ppl"):
        p = results["ppl"]
        t["ppl"] = ("Corpus perplexity:\n\n" + ppl_table(p, "corpus_ppl") + "\n\nMean of per-text perplexity "
                    "(the reference's measure):\n\n" + ppl_table(p, "mean_text_ppl")
                    + f"\n\nPaired over each language's {next(iter(p['baseline'].values()))['num_texts']} held-out "
                      "texts: the increase of the per-text log-perplexity (nats/token) with the language's own heads "
                      f"zeroed, 95% CI, p; the random baseline is {p['random_trials']} draws of {p['k']} heads per "
                      "language, and its rank p places the own heads' increase among theirs.\n\n"
                    + format_comparisons(p))
    if results.get("xquad"):
        t["xquad"] = _xquad_table(results["xquad"])
    if results.get("off_target"):
        t["off_target"] = _off_target_table(results["off_target"])
    if results.get("transfer"):
        from ...eval.transfer import format_probe_table

        t["transfer"] = "\n\n".join(format_probe_table(r) for r in results["transfer"].values())
    if results.get("lcb"):
        t["lcb"] = _lcb_table(results["lcb"])
    return t


def _mean_accuracies(xq: dict) -> dict:
    """mask -> XQuAD accuracy averaged over the languages (the first language's masks, in its order)."""
    first = next(iter(xq.values()))
    return {name: _mean(r["summary"][name]["accuracy"] for r in xq.values() if name in r["summary"])
            for name in first["summary"]}


def _xquad_table(xq: dict) -> str:
    lines = ["| language | mask | accuracy % [95% CI] | EM % | F1 % | vs original: points [95% CI], p "
             "| trained heads (layer, head, scale) |", "|---|---|---:|---:|---:|---|---|"]
    for lang, r in xq.items():
        for name, s in r["summary"].items():
            low, high = accuracy_interval(s)
            cmp = r.get("comparisons", {}).get(name, {}).get("accuracy")
            heads = "" if name == "original" else ", ".join(f"L{l}H{h}={v:.2f}" for l, h, v in r["heads"].get(name, []))
            lines.append(f"| {lang} | {name} | {100 * s['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}] | "
                         f"{100 * s['exact_match']:.1f} | {100 * s['f1']:.1f} | "
                         f"{stats.format_effect(cmp, scale=100, digits=1) if cmp else ''} | {heads} |")
    any_r = next(iter(xq.values()))
    means = _mean_accuracies(xq)
    lines.append("\nMean accuracy over the languages: " + ", ".join(f"{n} {_pct(v)}%" for n, v in means.items()) + ".")
    return (f"{any_r['train_items']} training items x epochs from the reference train split, "
            f"{any_r['test_items']} held-out test items per language, {any_r['n_heads']} trainable heads; "
            "accuracies with Wilson intervals, each mask paired with the original model on the same items "
            "(exact McNemar p).\n\n" + "\n".join(lines))


def _off_target_table(ot: dict) -> str:
    blocks = []
    for task in _task_families(ot):
        main = "contains" if task == "xquad_xling" else "chrf"
        lines = [f"| language | intervention | off-target % among decided [95% CI] | undetermined % | {main} |",
                 "|---|---|---:|---:|---:|"]
        for lang, per in ot.items():
            for name, r in per.items():
                tr = r["tasks"].get(task, {})
                m = tr.get("metrics", {})
                rate, ci = _rate_ci(tr["off_target"]) if "off_target" in tr else (m.get("off_target_rate"), [None, None])
                val = m.get(main)
                shown = "n/a" if val is None else (f"{val:.1f}" if main == "chrf" else f"{100 * val:.1f}")
                lines.append(f"| {lang} | {r['label']} | {_pct_ci(rate, ci) if ci[0] is not None else _pct(rate)} | "
                             f"{_pct(m.get('undetermined_rate'))} | {shown} |")
        blocks.append(f"**{task}_<lang>**\n\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def _lcb_table(lcb: dict) -> str:
    lines = ["| language | intervention | line-level pass % [95% CI] | word-level pass % [95% CI] | skipped |",
             "|---|---|---:|---:|---:|"]
    for lang, per in lcb.items():
        for name, r in per.items():
            lpr, lci = _rate_ci(r["line_pass"])
            wpr, wci = _rate_ci(r["word_pass"])
            skipped = sum(v is None for v in r["line_pass"])
            lines.append(f"| {lang} | {r['label']} | {_pct_ci(lpr, lci)} | {_pct_ci(wpr, wci)} | "
                         f"{skipped} of {len(r['line_pass'])} |")
    return ("Crosslingual LCB prompts (an English instruction asks for an answer in the language); the benchmark's "
            "line-level and word-level pass rates (eval/lcb.py), with Wilson intervals over the completions that "
            "have a line of at least 5 tokens.\n\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------- plots
def _plots(results: dict, out: Path, scores: Optional[dict]) -> dict[str, str]:
    from ...eval import plots

    made = {}
    d = out / "plots"
    if scores:
        made["heatmaps"] = plots.plot_heatmaps(scores, d / "heatmaps.png")
        made["overlap"] = plots.plot_overlap(scores, d / "overlap.png")
        made["layers"] = plots.plot_layer_distribution(results["scores"]["classification"], d / "layers.png")
    if results.get("ppl"):
        made["ppl_cross"] = plots.plot_ppl_cross(results["ppl"], d / "ppl_cross.png")
        if results["ppl"].get("comparisons"):
            made["ppl_random"] = plots.plot_against_draws(
                {x: (c["own_vs_none"], c["random_increase"]) for x, c in results["ppl"]["comparisons"].items()},
                d / "ppl_random.png", "log-perplexity increase: own top-k heads zeroed vs random draws",
                "increase (nats/token)")
    if results.get("xquad"):
        data, err = {}, {}
        for lang, r in results["xquad"].items():
            data[lang], err[lang] = {}, {}
            for name, s in r["summary"].items():
                data[lang][name] = 100 * s["accuracy"]
                err[lang][name] = tuple(100 * v for v in accuracy_interval(s))
        made["xquad"] = plots.plot_grouped_bars(data, d / "xquad.png", "XQuAD accuracy (held-out items, 95% CI)",
                                                "accuracy %", errors=err)
    if results.get("off_target"):
        ot = results["off_target"]
        data, err = {}, {}
        for task in _task_families(ot):
            for lang, per in ot.items():
                g = f"{task} {lang}"
                data[g], err[g] = {}, {}
                for name, r in per.items():
                    if task not in r["tasks"] or "off_target" not in r["tasks"][task]:
                        continue
                    rate, ci = _rate_ci(r["tasks"][task]["off_target"])
                    label = PLOT_LABELS.get(name, r["label"])  # random draws 2, 3, ...: "zero random heads #2"
                    # one colour per intervention across languages; an undecided rate is a gap, not 0%
                    data[g][label] = float("nan") if rate is None else 100 * rate
                    err[g][label] = (float("nan"), float("nan")) if rate is None else (100 * ci[0], 100 * ci[1])
        made["off_target"] = plots.plot_grouped_bars(data, d / "off_target.png",
                                                     "off-target outputs among the decided ones (95% CI)",
                                                     "off-target %", errors=err)
    if results.get("transfer"):
        data, err = {}, {}
        for pair, r in results["transfer"].items():
            data[pair] = {name: v["mean_log_odds"] for name, v in r["results"].items()}
            err[pair] = {name: tuple(v.get("mean_log_odds_ci") or (math.nan, math.nan))
                         for name, v in r["results"].items()}
        made["transfer"] = plots.plot_grouped_bars(data, d / "transfer.png",
                                                   "Alice probe: mean log-odds of language 1's occupation (95% CI)",
                                                   "log P(X) - log P(Y)", errors=err)
    if results.get("lcb"):
        data, err = {}, {}
        for lang, per in results["lcb"].items():
            data[lang], err[lang] = {}, {}
            for name, r in per.items():
                rate, ci = _rate_ci(r["line_pass"])
                data[lang][r["label"]] = float("nan") if rate is None else 100 * rate
                err[lang][r["label"]] = (math.nan, math.nan) if rate is None else (100 * ci[0], 100 * ci[1])
        made["lcb"] = plots.plot_grouped_bars(data, d / "lcb.png", "LCB line-level pass rate (95% CI)", "LPR %",
                                              errors=err)
    if results.get("findings"):
        made["findings"] = plots.plot_findings(results["findings"], d / "findings.png")
    return {k: str(Path(v).relative_to(out)) for k, v in made.items()}


# ---------------------------------------------------------------------------------------------- report.md
SECTIONS = [("scores", "1. LAHIS scores: language-specific and language-general heads", ["heatmaps", "overlap", "layers"]),
            ("ppl", "2. Perplexity with language-specific heads zeroed", ["ppl_cross", "ppl_random"]),
            ("xquad", "3. XQuAD: original vs random-heads masks vs LAHIS mask", ["xquad"]),
            ("off_target", "4. Off-target language rates under head interventions", ["off_target"]),
            ("transfer", "5. Attention transfer: the Alice occupation probe", ["transfer"]),
            ("lcb", "6. Language Confusion Benchmark under head interventions", ["lcb"])]


def findings_table(found: list[dict], control: bool) -> str:
    head = "| claim (from the paper) | verdict | effect [95% CI], p (Holm) | " + \
           ("random-weight control | " if control else "") + "evidence |"
    lines = [head, "|---|---|---|" + ("---|" if control else "") + "---|"]
    for f in found:
        ctrl = ""
        if control:
            c = f.get("control")
            ctrl = "n/a | " if c is None else f"{c['verdict']} | "
        lines.append(f"| {f['claim']} | {verdict_text(f)} | {effect_text(f)} | {ctrl}{f['evidence']} |")
    return "\n".join(lines)


def render_report(results: dict, tables: dict, plots_made: dict) -> str:
    m = results["model"]
    found = results["findings"]
    control = results.get("control")
    lines = [f"# LAHIS reproduction on {m['name']}", "",
             f"lahis-ctrl {results['version']}; {m['layers']} layers x {m['heads']} heads ({m['kv_heads']} KV heads), "
             f"head_dim {m['head_dim']}; dtype {results['config']['dtype']}; data {results['config']['data'] or 'hub'}.",
             "Every number below is in `results.json`; the settings are in `config.yaml`.", "", "## Findings", "",
             "Each claim is a paired comparison over items (texts, questions, outputs), pooled over its languages. "
             "**Holds** only when the effect is in the claimed direction and significant at 0.05 after Holm's "
             "correction over the findings below; **does not hold** when it is significant the other way or the "
             "interval excludes the paper's effect size; otherwise **inconclusive**."
             + (f" The random-weight control is the same architecture re-initialised (seed {control['seed']}) and "
                f"run through the same steps at {control['scale']:g} of the size; a claim that also holds there is "
                "not evidence of learned language heads." if control else ""), "",
             findings_table(found, bool(control))]
    if "findings" in plots_made:
        lines += ["", f"![findings]({plots_made['findings']})"]
    for key, title, plot_names in SECTIONS:
        if key not in tables:
            continue
        lines += ["", f"## {title}", "", tables[key], ""]
        lines += [f"![{p}]({plots_made[p]})" for p in plot_names if p in plots_made]
    if control:
        lines += ["", "## Random-weight control", "",
                  f"{control['model']}, {control['scale']:g} of the main run's sizes; its own LAHIS scores and heads.",
                  "", findings_table(control["findings"], False)]
    lines += ["", "## Steps", "", "| step | this run | seconds |", "|---|---|---:|"]
    lines += [f"| {s['step']} | {'skipped (done earlier)' if s['skipped'] else 'ran'} | {s['seconds']:.0f} |"
              for s in results["steps"]]
    return "\n".join(lines) + "\n"


def readme_section(results: dict, report_rel: str, plot_rel: Optional[str]) -> str:
    """The short results section for a README (headline numbers, the findings with their statistics, one plot)."""
    m = results["model"]
    lines = [README_START, f"Produced by `lahis reproduce` on {m['name']} ({m['layers']}x{m['heads']} heads; "
             f"lahis-ctrl {results['version']}); every table and plot: [{report_rel}]({report_rel}).", ""]
    if results.get("xquad"):
        any_r = next(iter(results["xquad"].values()))
        means = _mean_accuracies(results["xquad"])
        lines.append(f"- XQuAD accuracy, mean of {', '.join(results['xquad'])} ({any_r['test_items']} held-out items "
                     f"each, {any_r['n_heads']} trained heads): "
                     + ", ".join(f"{n} {_pct(v)}%" for n, v in means.items()) + ".")
    for f in results["findings"]:
        ctrl = f.get("control")
        c_txt = "" if ctrl is None else f"; random-weight control: {ctrl['verdict']}"
        lines.append(f"- {verdict_text(f)}: {f['claim']} ({effect_text(f)}{c_txt}).")
    if plot_rel:
        lines += ["", f"![findings]({plot_rel})"]
    lines.append(README_END)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- publishing
def portable(value, base: Path):
    """`value` with absolute paths made relative to `base` (or reduced to their name when they are elsewhere on
    the machine): a committed report names no folder of the machine that ran it."""
    if isinstance(value, dict):
        return {k: portable(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, base) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return os.path.relpath(value, base)
        except ValueError:  # another drive
            return Path(value).name
    return value


def publish(out: Path, readme: Path, name: str) -> Path:
    """Copy the report (report.md, results.json, config.yaml, plots/) to docs/reproduce/<name>/ beside
    `readme`, so a README can link to it from version control (the work files stay in `out`)."""
    dest = readme.parent / "docs" / "reproduce" / name
    if dest.resolve() == out.resolve():
        return dest
    (dest / "plots").mkdir(parents=True, exist_ok=True)
    for rel in ("report.md", "results.json", "config.yaml"):
        shutil.copyfile(out / rel, dest / rel)
    for png in (out / "plots").glob("*.png"):
        shutil.copyfile(png, dest / "plots" / png.name)
    return dest


def check_readme(readme: Path) -> None:
    """Refuse a README whose reproduce markers are dangling, repeated or out of order (writing into it could
    delete the user's text); no markers at all is fine (the section is appended)."""
    if not readme.exists():
        return
    if not readme.is_file():
        raise LahisError(f"--readme {readme} is not a file")
    text = readme.read_text(encoding="utf-8")
    starts, ends = text.count(README_START), text.count(README_END)
    if (starts, ends) == (0, 0):
        return
    if starts != 1 or ends != 1 or text.index(README_START) > text.index(README_END):
        raise LahisError(f"{readme} has {starts} '{README_START}' and {ends} '{README_END}' marker(s)"
                         + (" in the wrong order" if starts == ends == 1 else "")
                         + ": the section goes between exactly one start marker and one end marker after it; fix the "
                           "markers (or remove both to append a new section)")


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the reproduce markers in `readme` (or append it) atomically."""
    from ...core.fileio import write_text

    check_readme(readme)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if README_START in text:
        before, rest = text.split(README_START, 1)
        after = rest.split(README_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text(readme, text)
