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
def _heads(hs) -> str:
    return ", ".join(f"L{h[0]}H{h[1]}" for h in hs) or "none"


def head_set_table(scores: dict, results: dict) -> str:
    """Each language's kept heads, its strictly specific heads (kept by no other language) and the k heads each
    intervention step uses (strict first, then filled by specificity), and the languages x languages overlap of kept
    heads."""
    from ...lahis.heads import STRICT_RULE, head_overlap, strict_specific_heads

    c = results["scores"]["classification"]
    q = c["q"]
    ks = {}
    if results.get("ppl"):
        ks[f"ppl (k={results['ppl']['k']})"] = results["ppl"]["k"]
    inter = [r for key in ("off_target", "lcb") for r in _first_heads(results.get(key))]
    if inter:
        ks[f"interventions (k={len(inter[0])})"] = len(inter[0])
    langs = list(c["per_language"])
    lines = ["| language | texts | tokens | kept heads (best first) | strictly specific | "
             + " | ".join(f"{name}: strict + filled" for name in ks) + " |",
             "|---|---:|---:|---|---|" + "---|" * len(ks)]
    for lang in langs:
        d = c["per_language"][lang]
        strict = strict_specific_heads(scores, lang, max(1, len(d["kept"])), q=q) if d["kept"] else None
        strict_heads = list(strict.heads[:strict.strict]) if strict else []
        cells = []
        for k in ks.values():
            hs = strict_specific_heads(scores, lang, k, q=q)
            cells.append(f"{_heads(hs.heads)} ({hs.strict} + {hs.filled})")
        lines.append(f"| {lang} | {results['scores']['texts'][lang]} | {results['scores']['tokens'][lang]} | "
                     f"{_heads([(h['layer'], h['head']) for h in d['kept']])} | {_heads(strict_heads)} | "
                     + " | ".join(cells) + " |")
    overlap = head_overlap(scores, q=q)
    olines = ["| kept by both | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    olines += [f"| {x} | " + " | ".join(str(overlap[x][y]) for y in langs) + " |" for x in langs]
    general = ", ".join(f"L{g['layer']}H{g['head']} ({'/'.join(g['languages'])})" for g in c["general"]) or "none"
    return ("\n".join(lines) + f"\n\nRule: {STRICT_RULE}. Language-general heads (kept by >= {c['min_rep']} of "
            f"{len(langs)} languages): {general}.\n\nHeads kept by both languages (diagonal: heads the language keeps; "
            f"q = {q}):\n\n" + "\n".join(olines))


def _first_heads(step: Optional[dict]) -> list:
    """The target-heads lists of an intervention step's results (to know its k)."""
    if not step:
        return []
    out = []
    for per in step.values():
        r = per.get("scale_target")
        if r and r.get("heads"):
            out.append(r["heads"])
    return out


def _tables(results: dict, scores: Optional[dict] = None) -> dict[str, str]:
    from ...eval.ppl import format_comparisons, format_table as ppl_table

    t = {}
    if results.get("scores") and scores:
        t["scores"] = head_set_table(scores, results)
    if results.get("ppl"):
        p = results["ppl"]
        t["ppl"] = ("Corpus perplexity:\n\n" + ppl_table(p, "corpus_ppl") + "\n\nMean of per-text perplexity "
                    "(the reference's measure):\n\n" + ppl_table(p, "mean_text_ppl")
                    + f"\n\nPer text language, over its {next(iter(p['baseline'].values()))['num_texts']} held-out "
                      "texts: the increase of the per-text log-perplexity (nats/token) with its own heads zeroed "
                      f"(paired against no mask), then where that increase ranks among {p['random_trials']} random "
                      f"sets of {p['k']} heads (drawn outside its own set) and among the languages' own sets, and the "
                      "placebo set's rank among the same draws.\n\n" + format_comparisons(p))
    if results.get("xquad"):
        t["xquad"] = _xquad_table(results["xquad"])
    if results.get("off_target"):
        t["off_target"] = _off_target_table(results["off_target"])
    if results.get("transfer"):
        t["transfer"] = _transfer_table(results["transfer"])
    if results.get("lcb"):
        t["lcb"] = _lcb_table(results["lcb"])
    return t


def _mean_accuracies(xq: dict) -> dict:
    """mask kind -> XQuAD accuracy averaged over the languages: original, LAHIS (mean over seeds), random-heads
    masks (mean over draws), placebo."""
    def acc(r: dict, names) -> Optional[float]:
        return _mean(r["summary"][n]["accuracy"] for n in names)

    kinds = {"original": lambda r: acc(r, ["original"]),
             "LAHIS": lambda r: acc(r, [n for n in r["summary"] if n == "lahis" or n.startswith("lahis-s")]),
             "random heads": lambda r: acc(r, [n for n in r["summary"] if n.startswith("random")]),
             "placebo": lambda r: acc(r, [n for n in r["summary"] if n == "placebo"])}
    return {name: _mean(fn(r) for r in xq.values()) for name, fn in kinds.items()}


def _xquad_table(xq: dict) -> str:
    lines = ["| language | mask | accuracy % [95% CI] | EM % | F1 % | vs original: points [95% CI], p "
             "| trained heads (layer, head, scale) |", "|---|---|---:|---:|---:|---|---|"]
    for lang, r in xq.items():
        randoms = [n for n in r["summary"] if n.startswith("random")]
        for name, s in r["summary"].items():
            if name in randoms:
                continue
            low, high = accuracy_interval(s)
            cmp = r.get("comparisons", {}).get(name, {}).get("accuracy")
            heads = "" if name == "original" else ", ".join(f"L{l}H{h}={v:.2f}" for l, h, v in r["heads"].get(name, []))
            lines.append(f"| {lang} | {name} | {100 * s['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}] | "
                         f"{100 * s['exact_match']:.1f} | {100 * s['f1']:.1f} | "
                         f"{stats.format_effect(cmp, scale=100, digits=1) if cmp else ''} | {heads} |")
        if randoms:
            accs = [100 * r["summary"][n]["accuracy"] for n in randoms]
            lines.append(f"| {lang} | {len(randoms)} random-heads masks | mean {np.mean(accs):.1f} (range "
                         f"{min(accs):.1f}-{max(accs):.1f}) | | | one per random head set | |")
    any_r = next(iter(xq.values()))
    means = _mean_accuracies(xq)
    scales = [v for r in xq.values() for name, hs in r["heads"].items() if name.startswith("lahis") for *_, v in hs]
    lines.append("\nMean accuracy over the languages: " + ", ".join(f"{n} {_pct(v)}%" for n, v in means.items()
                                                                    if v is not None) + ".")
    budget = (f"{any_r['train_items']} training items x {any_r.get('epochs', '?')} epoch(s) at batch 1 = "
              f"{any_r['train_items'] * any_r.get('epochs', 1)} optimiser steps per mask")
    return (f"{budget}; {any_r.get('seeds', 1)} training seed(s) of the LAHIS mask and {any_r.get('draws', 0)} "
            f"random-heads masks (plus a placebo) per language; {any_r['test_items']} held-out test items per language, "
            f"{any_r['n_heads']} trainable heads; LAHIS scales trained to "
            + (f"{min(scales):.2f}-{max(scales):.2f}" if scales else "n/a")
            + ". Accuracies with Wilson intervals, each mask paired with the original model on the same items (exact "
              "McNemar p).\n\n" + "\n".join(lines))


def _off_target_table(ot: dict) -> str:
    from .steps import PROXY_MEASURE

    blocks = []
    for task in _task_families(ot):
        main = "contains" if task == "xquad_xling" else "chrf"
        lines = [f"| language | intervention | off-target % among decided outputs [95% CI] | undetermined % of all | "
                 f"{main} |", "|---|---|---:|---:|---:|"]
        for lang, per in ot.items():
            for name, r in per.items():
                if name == "proxy" or task not in r["tasks"]:
                    continue
                tr = r["tasks"][task]
                m = tr.get("metrics", {})
                rate, ci = _rate_ci(tr["off_target"])
                val = m.get(main)
                shown = "n/a" if val is None else (f"{val:.1f}" if main == "chrf" else f"{100 * val:.1f}")
                lines.append(f"| {lang} | {r['label']} | {_pct_ci(rate, ci)} | {_pct(m.get('undetermined_share', m.get('undetermined_rate')))} | "
                             f"{shown} |")
        blocks.append(f"**{task}_<lang>**, generated\n\n" + "\n".join(lines))
        plines = ["| language | none | zero source heads | zero placebo | zeroed random sets: mean [min, max] "
                  "| x target heads | x placebo | scaled random sets: mean [min, max] |",
                  "|---|---:|---:|---:|---|---:|---:|---|"]
        for lang, per in ot.items():
            p = per.get("proxy", {}).get(task)
            if not p:
                continue

            def mean(v) -> str:
                return f"{np.mean(v):+.3f}"

            def spread(vs) -> str:
                if not vs:
                    return "n/a"
                m = [float(np.mean(v)) for v in vs]
                return f"{np.mean(m):+.3f} [{min(m):+.3f}, {max(m):+.3f}] ({len(m)} sets)"

            plines.append(f"| {lang} | {mean(p['none'])} | {mean(p['zero_source'])} | {mean(p['zero_placebo'])} | "
                          f"{spread(p['zero_random'])} | {mean(p['scale_target'])} | {mean(p['scale_placebo'])} | "
                          f"{spread(p['scale_random'])} |")
        if len(plines) > 2:
            blocks.append(f"**{task}_<lang>**, the teacher-forced proxy ({PROXY_MEASURE}), mean over documents:\n\n"
                          + "\n".join(plines))
    return ("Off-target % counts the outputs whose language was decided; undetermined % is the share of all outputs "
            "whose language could not be decided.\n\n" + "\n\n".join(blocks))


def _lcb_table(lcb: dict) -> str:
    lines = ["| language | intervention | line-level pass % [95% CI] | word-level pass % [95% CI] | skipped |",
             "|---|---|---:|---:|---:|"]
    for lang, per in lcb.items():
        draws = [n for n in per if n.startswith("scale_random_")]
        for name, r in per.items():
            if name in draws:
                continue
            lpr, lci = _rate_ci(r["line_pass"])
            wpr, wci = _rate_ci(r["word_pass"])
            skipped = sum(v is None for v in r["line_pass"])
            lines.append(f"| {lang} | {r['label']} | {_pct_ci(lpr, lci)} | {_pct_ci(wpr, wci)} | "
                         f"{skipped} of {len(r['line_pass'])} |")
        if draws:
            rates = [rate for rate, _ in (_rate_ci(per[n]["line_pass"]) for n in draws) if rate is not None]
            shown = f"mean {100 * np.mean(rates):.1f} (range {100 * min(rates):.1f}-{100 * max(rates):.1f})" if rates \
                else "n/a"
            lines.append(f"| {lang} | {len(draws)} scaled random sets | {shown} | | |")
    return ("Crosslingual LCB prompts (an English instruction asks for an answer in the language); the benchmark's "
            "line-level and word-level pass rates (eval/lcb.py), with Wilson intervals over the completions that "
            "have a line of at least 5 tokens.\n\n" + "\n".join(lines))


def _transfer_table(tr: dict) -> str:
    from ...eval.transfer import format_probe_table

    blocks = []
    for pair, r in tr.items():
        shown = {n: v for n, v in r["results"].items() if "random heads #" not in n and "placebo" not in n}
        table = format_probe_table({**r, "results": shown,
                                    "shifts": {n: v for n, v in r.get("shifts", {}).items() if n in shown}})
        base = r["results"]["none"]["mean_log_odds"]
        for kind in ("x", "zero"):
            draws = [v["mean_log_odds"] - base for n, v in r["results"].items()
                     if n.startswith(kind) and "random heads #" in n]
            placebo = [v["mean_log_odds"] - base for n, v in r["results"].items() if n.startswith(kind) and "placebo" in n]
            if draws:
                table += (f"\n\n{len(draws)} random sets {'scaled up' if kind == 'x' else 'zeroed'}: shift of the "
                          f"mean log-odds {np.mean(draws):+.3f} on average (range {min(draws):+.3f} to "
                          f"{max(draws):+.3f})" + (f"; the placebo set {placebo[0]:+.3f}" if placebo else "")
                          + "; teacher-forced only.")
        blocks.append(table)
    return ("Answer shares come from greedy continuations of the named interventions; random and placebo sets are "
            "scored teacher-forced only (their answer shares are n/a).\n\n" + "\n\n".join(blocks))


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
        p = results["ppl"]
        made["ppl_cross"] = plots.plot_ppl_cross(p, d / "ppl_cross.png")
        if p.get("comparisons"):
            made["ppl_random"] = plots.plot_against_draws(
                {x: (c["own_vs_none"], c["random_increase"], c.get("placebo_increase"))
                 for x, c in p["comparisons"].items()},
                d / "ppl_random.png", f"log-perplexity increase: own {p['k']} heads zeroed vs random sets of {p['k']}",
                "increase over no mask (nats/token)")
    if results.get("xquad"):
        data = {}
        for lang, r in results["xquad"].items():
            items = r["items"]
            orig = np.array(items["original"], dtype=float)
            lahis = np.mean([items[n] for n in items if n == "lahis" or n.startswith("lahis-s")], axis=0)
            cmp = stats.paired_difference(orig, lahis, binary=False).to_dict()
            cmp = {**cmp, "effect": 100 * cmp["effect"], "ci": [100 * v for v in cmp["ci"]]}
            data[lang] = (cmp, [100 * (np.mean(items[n]) - orig.mean()) for n in items if n.startswith("random")],
                          100 * (np.mean(items["placebo"]) - orig.mean()) if "placebo" in items else None)
        made["xquad"] = plots.plot_against_draws(data, d / "xquad.png", "XQuAD: accuracy gain over the original model "
                                                 "(LAHIS: mean over seeds; dots: random-heads masks)",
                                                 "gain (points)")
    if results.get("off_target"):
        ot = results["off_target"]
        data, err = {}, {}
        for task in _task_families(ot):
            for lang, per in ot.items():
                g = f"{task} {lang}"
                data[g], err[g] = {}, {}
                for name, r in per.items():
                    if name == "proxy" or task not in r["tasks"] or "off_target" not in r["tasks"][task]:
                        continue
                    rate, ci = _rate_ci(r["tasks"][task]["off_target"])
                    label = PLOT_LABELS.get(name, r["label"])
                    # one colour per intervention across languages; an undecided rate is a gap, not 0%
                    data[g][label] = float("nan") if rate is None else 100 * rate
                    err[g][label] = (float("nan"), float("nan")) if rate is None else (100 * ci[0], 100 * ci[1])
        made["off_target"] = plots.plot_grouped_bars(data, d / "off_target.png",
                                                     "generated outputs in another language than asked, among those "
                                                     "whose language was decided (95% CI)", "off-target %", errors=err)
        proxy = {}
        for task in _task_families(ot):
            for lang, per in ot.items():
                p = per.get("proxy", {}).get(task)
                if not p:
                    continue
                for kind, target in (("zero", "zero_source"), ("scale", "scale_target")):
                    base = np.array(p["none"], dtype=float)
                    c = stats.paired_difference(base, np.array(p[target], dtype=float)).to_dict()
                    proxy[f"{lang} {kind}"] = (c, [float(np.mean(np.array(v) - base)) for v in p[f"{kind}_random"]],
                                               float(np.mean(np.array(p[f"{kind}_placebo"]) - base)))
        if proxy:
            made["off_target_proxy"] = plots.plot_against_draws(
                proxy, d / "off_target_proxy.png", "target-language preference (teacher-forced): change against no "
                "intervention, the named heads vs random sets", "change (log-prob/token)")
    if results.get("transfer"):
        data = {}
        for pair, r in results["transfer"].items():
            res = r["results"]
            base = np.array([x["log_odds"] for x in res["none"]["per_item"]])
            for kind, prefix in (("x", "x"), ("zero", "zero")):
                named = [n for n in res if n.startswith(prefix) and "random" not in n and "placebo" not in n]
                if not named:
                    continue
                shift = lambda n: np.array([x["log_odds"] for x in res[n]["per_item"]]) - base  # noqa: E731
                c = stats.paired_difference(base, base + shift(named[0])).to_dict()
                placebo = [n for n in res if n.startswith(prefix) and "placebo" in n]
                data[f"{pair}\n{named[0]}"] = (c, [float(shift(n).mean()) for n in res
                                                   if n.startswith(prefix) and "random heads #" in n],
                                               float(shift(placebo[0]).mean()) if placebo else None)
        made["transfer"] = plots.plot_against_draws(data, d / "transfer.png", "Alice probe: shift of the log-odds "
                                                    "toward language 1's occupation", "shift (log-odds)")
    if results.get("lcb"):
        data = {}
        for lang, per in results["lcb"].items():
            if "none" not in per or "scale_target" not in per:
                continue
            base = np.array([np.nan if v is None else v for v in per["none"]["line_pass"]], dtype=float)

            def shift(name: str) -> float:
                v = np.array([np.nan if x is None else x for x in per[name]["line_pass"]], dtype=float)
                keep = ~(np.isnan(v) | np.isnan(base))
                return 100 * float(np.mean(v[keep] - base[keep])) if keep.any() else float("nan")

            v = np.array([np.nan if x is None else x for x in per["scale_target"]["line_pass"]], dtype=float)
            c = stats.paired_difference(base, v).to_dict()
            c = {**c, "effect": None if c["effect"] is None else 100 * c["effect"],
                 "ci": [None if x is None else 100 * x for x in c["ci"]]}
            data[lang] = (c, [shift(n) for n in per if n.startswith("scale_random_")],
                          shift("scale_placebo") if "scale_placebo" in per else None)
        if data:
            made["lcb"] = plots.plot_against_draws(data, d / "lcb.png", "LCB line-level pass rate: change with the "
                                                   "target language's heads scaled up vs random sets scaled up",
                                                   "change (points)")
    if results.get("findings"):
        made["findings"] = plots.plot_findings(results["findings"], d / "findings.png")
    return {k: str(Path(v).relative_to(out)) for k, v in made.items()}


# ---------------------------------------------------------------------------------------------- report.md
SECTIONS = [("scores", "1. LAHIS scores: language-specific and language-general heads", ["heatmaps", "overlap", "layers"]),
            ("ppl", "2. Perplexity with language-specific heads zeroed", ["ppl_cross", "ppl_random"]),
            ("xquad", "3. XQuAD: original vs random-heads masks vs LAHIS mask", ["xquad"]),
            ("off_target", "4. Off-target language rates under head interventions", ["off_target", "off_target_proxy"]),
            ("transfer", "5. Attention transfer: the Alice occupation probe", ["transfer"]),
            ("lcb", "6. Language Confusion Benchmark under head interventions", ["lcb"])]

TESTS_TEXT = """- **rank among random sets** (claims against random heads; the head set is the unit). For each language (or
  pair), the target heads' effect is ranked among the effects of N random sets of the same size drawn from the heads
  outside the target set; the ranks of independent units (languages whose sets share a head count once) are combined
  exactly, so p is the probability that sets no better than random rank this high by chance (two-sided). The smallest
  reachable p is 2 x prod 1/(N+1); the interval (two-level bootstrap over the random sets and the items) describes
  the size of the difference, and the verdict is the rank test's.
- **label permutation** (own vs other languages' heads). The matrix of perplexity increases (text language x whose
  heads are zeroed) is compared with every permutation of the head sets' language labels: its diagonal is
  significant when few relabellings put as much damage on the own languages, whatever the general harm of a set or
  the fragility of a text. The interval resamples each language's texts.
- **McNemar (paired items)** / **sign-flip (paired items)** (an intervention against none, on the same items): exact
  McNemar p with Newcombe's interval for 0/1 outcomes, a sign-flip test (exact up to 20 items) with a bootstrap
  interval otherwise. They say whether an intervention changes something, not whether it is specific to a language.
- **sign-flip over items; items x seeds interval** (the soft mask's XQuAD gain, averaged over training seeds): the p
  is a sign-flip test over items; the interval, the wider of a two-level bootstrap over items and seeds and Newcombe's
  interval over all (seed, item) pairs, covers both sources of variation. **items x seeds interval vs the paper's
  value** tests the paper's +5 points as the null with that interval (p by inverting it): the gain is as large as the
  paper's when the interval lies above +5 and smaller when it lies below.
- **Placebos.** Every test against random heads and the diagonal is repeated with a random set in the place of the
  target heads; these rows must come out inconclusive at the nominal rate (Holm within the placebo family).
- **The random-weight control** runs every step at the same sizes on a re-initialised copy of the model. A finding
  that also holds there is not evidence of learned language heads; a control whose detectable effect (80% power at
  the family level) is not below the main run's effect is "underpowered" and is not read as a pass."""


def _fmt_p(p) -> str:
    return stats.format_p(p)


def _control_text(c: dict, unit: str) -> str:
    """The control's number for one finding: effect [95% CI], p (Holm), detectable effect."""
    if c.get("effect") is None:
        return f"no number ({c.get('reason') or 'no data'})"
    text = effect_text({**c, "unit": unit, "ci_family": None}, family=False)
    d = 1 if unit == "points" else 3 if unit == "nats/token" else 2
    return text + ("" if c.get("mde") is None else f"; detectable {c['mde']:.{d}f}")


def findings_table(found: list[dict], control: bool) -> str:
    head = ("| claim | reading | verdict | effect [95% CI] (family-level CI) | p (Holm) | test | n | draws | min p | "
            "detectable (80% power) | " + ("random-weight control | " if control else "") + "evidence |")
    lines = [head, "|---|---|---|---|---|---|---:|---|---:|---:|" + ("---|" if control else "") + "---|"]
    for f in found:
        ctrl = ""
        if control:
            c = f.get("control")
            ctrl = "n/a | " if c is None else f"{c['status']}: {_control_text(c, f['unit'])} | "
        draws = "" if not f.get("draws") else (str(f["draws"][0]) if len(set(f["draws"])) == 1 else str(f["draws"]))
        d = 1 if f["unit"] == "points" else 3 if f["unit"] == "nats/token" else 2
        mde = "n/a" if f.get("mde") is None else f"{f['mde']:.{d}f}"
        lines.append(f"| {f['claim']} | {f.get('reading', '')} | {verdict_text(f)} | "
                     f"{effect_text(f).rsplit(', p=', 1)[0]} | {_fmt_p(f['p_value'])} ({_fmt_p(f.get('p_holm'))}) | "
                     f"{f.get('test', '')} | {f['n']} {f.get('n_what', '')} | {draws} | {_fmt_p(f.get('min_p'))} | "
                     f"{mde} | {ctrl}{f['evidence']} |")
    return "\n".join(lines)


def design_table(results: dict) -> str:
    """What the budget bought: the draws of every claim against random heads and the smallest p each can reach."""
    design = results.get("design")
    if not design:
        return ""
    lines = [f"alpha {design['alpha']} after Holm over {design['findings']} findings: a finding needs p < "
             f"{design['level']:.2g} when it is the smallest. `auto` draws reach p <= {design['auto_min_p']} before "
             "Holm.", "", "| claim against random heads | setting | independent units | draws | auto would use | "
             "smallest p | |", "|---|---|---:|---:|---:|---:|---|"]
    for row in design["plan"]:
        flag = "underpowered by design" if row["underpowered_by_design"] else ""
        units = str(row["units"]) + (f" (of {row['configured_units']} configured: their head sets share heads)"
                                     if "configured_units" in row else "")
        lines.append(f"| {row['claim']} | {row['setting']} | {units} | {row['draws']}"
                     f"{' (auto)' if row['auto'] else ''} | {row['needed']} | {_fmt_p(row['min_p'])} | {flag} |")
    seconds = {}
    for s in results.get("steps", []):
        part = "control" if s["step"].startswith("control/") else "main"
        kind = s["step"].split("/")[-1].split("-")[0]
        seconds[(part, kind)] = seconds.get((part, kind), 0.0) + s["seconds"]
    if seconds:
        lines += ["", "Time per step kind (seconds, as measured when each step ran): " + ", ".join(
            f"{kind} {v:.0f}" + (" (control)" if part == "control" else "") for (part, kind), v in seconds.items())
            + f"; {sum(seconds.values()) / 60:.0f} minutes in all."]
    return "\n".join(lines)


def render_report(results: dict, tables: dict, plots_made: dict) -> str:
    m = results["model"]
    found = results["findings"]
    control = results.get("control")
    lines = [f"# LAHIS reproduction on {m['name']}", "",
             f"lahis-ctrl {results['version']}; {m['layers']} layers x {m['heads']} heads ({m['kv_heads']} KV heads), "
             f"head_dim {m['head_dim']}; dtype {results['config']['dtype']}; data {results['config']['data'] or 'hub'}.",
             "Every number below is in `results.json` (the random-weight control's in `control_results.json`); the "
             "settings are in `config.yaml`.", "", "## Findings", "",
             "Each claim is read one way with one test (below). **Holds** only when the effect is in the claimed "
             "direction and significant at 0.05 after Holm's correction over the findings; **does not hold** when it "
             "is significant the other way; otherwise **inconclusive**. Intervals are shown at 95% and at the family "
             "level the verdict reads (1 - 0.05/m)."
             + (f" The random-weight control is the same architecture re-initialised (seed {control['seed']}) and "
                "run through the same steps at the same sizes." if control else ""), "",
             findings_table(found, bool(control))]
    if "findings" in plots_made:
        lines += ["", f"![findings]({plots_made['findings']})"]
    lines += ["", "## The tests", "", TESTS_TEXT, "", "## Design: draws and the smallest reachable p", "",
              design_table(results)]
    if results.get("placebo"):
        lines += ["", "## Placebo rows", "", "The same tests with a random set in the place of the target heads "
                  "(Holm within these rows). They must be inconclusive.", "",
                  findings_table(results["placebo"], False)]
    for key, title, plot_names in SECTIONS:
        if key not in tables:
            continue
        lines += ["", f"## {title}", "", tables[key], ""]
        lines += [f"![{p}]({plots_made[p]})" for p in plot_names if p in plots_made]
    if control:
        lines += ["", "## Random-weight control", "",
                  f"{control['model']}, the main run's sizes and draws; its own LAHIS scores and heads. Every number: "
                  f"`{control['results']}`.", "", findings_table(control["findings"], False)]
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
                     f"each, {any_r['n_heads']} trained heads, {any_r.get('seeds', 1)} LAHIS seed(s), "
                     f"{any_r.get('draws', 0)} random-heads masks): "
                     + ", ".join(f"{n} {_pct(v)}%" for n, v in means.items() if v is not None) + ".")
    for f in results["findings"]:
        ctrl = f.get("control")
        c_txt = "" if ctrl is None else f"; random-weight control: {ctrl['status']}"
        draws = f"; {f['draws'][0]} draws, min p {_fmt_p(f['min_p'])}" if f.get("draws") else ""
        lines.append(f"- {verdict_text(f)}: {f['claim']} [{f.get('reading', '')}] ({effect_text(f)}{draws}{c_txt}).")
    placebo = results.get("placebo") or []
    if placebo:
        held = [p for p in placebo if p["verdict"] != "inconclusive"]
        lines.append(f"- Placebo rows (a random set in the place of the target heads): {len(placebo) - len(held)} of "
                     f"{len(placebo)} inconclusive" + (f"; not inconclusive: {', '.join(p['id'] for p in held)}"
                                                       if held else "") + ".")
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
    for rel in ("report.md", "results.json", "config.yaml", "control_results.json"):
        if (out / rel).is_file():
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
    # newline="": the README's own line ends (CRLF or LF) stay as they are outside the markers
    text = readme.open(encoding="utf-8", newline="").read() if readme.is_file() else ""
    if README_START in text:
        before, rest = text.split(README_START, 1)
        after = rest.split(README_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text(readme, text)
