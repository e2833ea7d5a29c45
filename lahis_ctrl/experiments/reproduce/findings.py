"""The paper's claims checked against a run's numbers, with statistics.

Every finding is a paired comparison over items (texts, QA items, outputs, probe items), pooled over the
languages it covers:

    {"id", "claim", "verdict": "holds" | "does not hold" | "inconclusive", "effect", "unit", "ci": [low, high],
     "p_value", "p_holm", "method", "n", "evidence", "paper_effect" (where the paper gives one)}

"holds" only when the effect is in the claimed direction and significant after Holm's correction over all
findings of the report; "does not hold" when it is significant the other way, or when the interval excludes
the paper's effect size; otherwise "inconclusive" (eval/stats.verdict). Where a random-heads baseline has
several draws, the p-value is taken against their distribution (rank among the draws, combined exactly over
languages), not against their mean alone. The random-weight control's findings (same ids) are attached by
`attach_control`.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ...eval import stats

ALPHA = 0.05


def _task_families(ot: dict) -> list[str]:
    """The task families (xquad_xling, ntrex_en) present in off-target results {lang: {intervention: ...}}."""
    return sorted({t for per in ot.values() for r in per.values() for t in r["tasks"]})


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _finding(fid: str, claim: str, comparison: dict, direction: int, evidence: str, unit: str,
             p_value: Optional[float] = None, method: Optional[str] = None, paper_effect: Optional[float] = None,
             scale: float = 1.0) -> dict:
    """A finding from a Comparison dict; `p_value`/`method` replace the comparison's (e.g. a p against random
    draws). `scale` converts effect and CI to the unit shown (100 for percentage points)."""
    f = {"id": fid, "claim": claim, "direction": direction, "unit": unit,
         "effect": None if comparison.get("effect") is None else scale * comparison["effect"],
         "ci": [None if v is None else scale * v for v in comparison.get("ci", [None, None])],
         "p_value": comparison.get("p_value") if p_value is None else p_value,
         "method": method or comparison.get("method", ""), "n": comparison.get("n", 0), "evidence": evidence}
    if paper_effect is not None:
        f["paper_effect"] = paper_effect
    return f


def _verdicts(found: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Holm-adjust the p-values of one report's findings and give each its verdict."""
    ps = [np.nan if f["p_value"] is None else f["p_value"] for f in found]
    adjusted = stats.holm(ps) if found else []
    for f, p in zip(found, adjusted):
        f["p_holm"] = None if math.isnan(p) else p
        effect = np.nan if f["effect"] is None else f["effect"]
        ci = tuple(np.nan if v is None else v for v in f["ci"])
        cmp = stats.Comparison(effect, ci, np.nan if f["p_value"] is None else f["p_value"], f["n"])
        f["verdict"] = stats.verdict(cmp, f["direction"], alpha=alpha, adjusted_p=p,
                                     paper_effect=f.get("paper_effect"))
    return found


# ---------------------------------------------------------------------------------------------- the claims
def _ppl_findings(ppl: dict) -> list[dict]:
    xs = [x for x in ppl["languages"] if x in ppl.get("comparisons", {})]
    if not xs:
        return []
    k, draws = ppl["k"], ppl["random_trials"]
    own = np.concatenate([ppl["masked"][x][x]["losses"] for x in xs])
    rand = np.concatenate([np.mean([t["losses"] for t in ppl["random"][x]["trials"]], axis=0) for x in xs])
    cmp = stats.paired_difference(rand, own, unit="nats/token").to_dict()
    rank_ps = [ppl["comparisons"][x]["own_rank_p"] for x in xs]
    beat = [x for x in xs if ppl["comparisons"][x]["own_rank_p"] <= 1 / (draws + 1) + 1e-12]
    out = [_finding(
        "ppl_own_vs_random",
        f"zeroing a language's top-{k} specific heads raises its perplexity more than {k} random heads",
        cmp, +1, unit="nats/token", p_value=stats.combined_empirical_p(rank_ps, draws),
        method=f"paired bootstrap CI over {len(xs)} languages' texts; p: rank of the own heads' increase among "
               f"{draws} random draws per language, combined exactly over languages",
        evidence=f"own heads beat all {draws} random draws in {len(beat)} of {len(xs)} languages "
                 f"({', '.join(beat) or 'none'}); per-language rank p: "
                 + ", ".join(f"{x} {stats.format_p(p)}" for x, p in zip(xs, rank_ps)))]
    if len(ppl["masked"]) > 1:
        others = np.concatenate([np.mean([ppl["masked"][y][x]["losses"] for y in ppl["masked"] if y != x], axis=0)
                                 for x in xs])
        diag = [x for x in xs if ppl["comparisons"][x].get("most_harmful") == x]
        out.append(_finding(
            "ppl_diagonal", "a language is hurt more by its own heads than by other languages' heads "
                            "(diagonal of the ppl matrix)",
            stats.paired_difference(others, own, unit="nats/token").to_dict(), +1, unit="nats/token",
            evidence=f"hurt most by its own heads: {len(diag)} of {len(xs)} languages ({', '.join(diag) or 'none'})"))
    return out


def _paired_mde(baseline: np.ndarray, treated: np.ndarray) -> float:
    """The effect (share of items) a paired design of these items detects with 80% power, at the baseline's rate
    and the observed share of items whose outcome differs."""
    rate = min(max(float(np.mean(baseline)), 1e-3), 1 - 1e-3)
    discordant = float(np.mean(baseline != treated))
    return stats.minimum_detectable_effect(len(baseline), rate, discordant_rate=discordant if discordant > 0 else None)


def _xquad_findings(xq: dict) -> list[dict]:
    langs = [l for l, r in xq.items() if "items" in r]
    if not langs:
        return []
    pooled = {name: np.concatenate([xq[l]["items"][name] for l in langs]) for name in xq[langs[0]]["items"]}
    randoms = [n for n in pooled if n.startswith("random")]
    n_items = len(pooled["original"])
    base = float(np.mean(pooled["original"]))
    out = []
    c = stats.paired_difference(pooled["original"], pooled["lahis"], unit="share of items").to_dict()
    mde = _paired_mde(pooled["original"], pooled["lahis"])
    per = ", ".join(f"{l} {100 * (np.mean(xq[l]['items']['lahis']) - np.mean(xq[l]['items']['original'])):+.1f}"
                    for l in langs)
    out.append(_finding(
        "xquad_vs_original", "the LAHIS soft mask improves XQuAD accuracy over the original model (paper: ~+5 points)",
        c, +1, unit="points", scale=100, paper_effect=5.0,
        evidence=f"{n_items} items over {', '.join(langs)} (per language: {per}); base accuracy {100 * base:.1f}%; "
                 f"detectable with 80% power: {100 * mde:.1f} points"))
    rand = np.mean([pooled[n] for n in randoms], axis=0)
    c = stats.paired_difference(rand, pooled["lahis"], unit="share of items").to_dict()
    accs = ", ".join(f"{n} {100 * np.mean(pooled[n]):.1f}%" for n in randoms)
    mde = _paired_mde(rand, pooled["lahis"])
    out.append(_finding(
        "xquad_vs_random", "the LAHIS soft mask beats a random-heads soft mask", c, +1, unit="points", scale=100,
        evidence=f"LAHIS mask {100 * np.mean(pooled['lahis']):.1f}% vs {len(randoms)} random-heads mask(s): {accs}; "
                 f"detectable with 80% power: {100 * mde:.1f} points"))
    return out


def _random_effects(per_lang: dict, names: list[str], value) -> list[float]:
    """The pooled effect (mean over items of value(lang, name) - value(lang, 'none')) of each random draw."""
    out = []
    for name in names:
        diffs = np.concatenate([_arr(value(l, name)) - _arr(value(l, "none")) for l in per_lang])
        out.append(float(np.nanmean(diffs)) if np.any(~np.isnan(diffs)) else float("nan"))
    return out


def _intervention_findings(prefix: str, per_lang: dict, value, claims: list[tuple[str, str, int]], unit: str,
                           what: str) -> list[dict]:
    """Findings for interventions against no intervention, pooled over languages, with the random draws'
    effects as context (their distribution, and the intervention's empirical p among them)."""
    langs = [l for l in per_lang if "none" in per_lang[l]]
    randoms = sorted({n for l in langs for n in per_lang[l] if n.startswith("zero_random")},
                     key=lambda n: (len(n), n))
    out = []
    for name, claim, direction in claims:
        have = [l for l in langs if name in per_lang[l]]
        if not have:
            continue
        a = np.concatenate([_arr(value(l, "none")) for l in have])
        b = np.concatenate([_arr(value(l, name)) for l in have])
        c = stats.paired_difference(a, b, unit=unit).to_dict()
        null = [e for e in _random_effects({l: per_lang[l] for l in have}, randoms, value) if not math.isnan(e)]
        decided = int(np.sum(~np.isnan(a) & ~np.isnan(b)))
        if null and c["effect"] is not None:
            alt = "greater" if direction > 0 else "less"
            ctx = (f"zero random heads ({len(null)} draw{'s' if len(null) > 1 else ''}): "
                   + ", ".join(f"{100 * e:+.1f}" for e in null)
                   + f" points, the intervention's rank p among them {stats.format_p(stats.empirical_p(c['effect'], null, alt))}")
        else:
            ctx = "no random draw with decided outputs"
        out.append(_finding(f"{prefix}_{name}", f"{what}: {claim}", c, direction, unit="points", scale=100,
                            evidence=f"{decided} outputs decided with and without it ({', '.join(have)}); {ctx}"))
    return out


def _off_target_findings(ot: dict) -> list[dict]:
    out = []
    for t in _task_families(ot):
        per = {l: {n: r for n, r in rs.items() if t in r["tasks"]} for l, rs in ot.items()}
        per = {l: rs for l, rs in per.items() if rs and all("off_target" in r["tasks"][t] for r in rs.values())}
        if not per:
            continue
        out += _intervention_findings(
            f"off_target_{t}", per, lambda l, n, per=per, t=t: per[l][n]["tasks"][t]["off_target"],
            [("zero_source", "zeroing the source language's heads lowers the off-target rate", -1),
             ("scale_target", "scaling the target language's heads up lowers the off-target rate", -1)],
            unit="share of outputs", what=t)
    return out


def _lcb_findings(lcb: dict) -> list[dict]:
    per = {l: rs for l, rs in lcb.items() if all("line_pass" in r for r in rs.values())}
    if not per:
        return []
    return _intervention_findings(
        "lcb", per, lambda l, n: per[l][n]["line_pass"],
        [("zero_source", "zeroing the instruction language's heads raises the LCB line-level pass rate", +1),
         ("scale_target", "scaling the target language's heads up raises the LCB line-level pass rate", +1)],
        unit="share of completions", what="LCB")


def _transfer_findings(tr: dict) -> list[dict]:
    out = []
    for pair, r in tr.items():
        res = r["results"]
        if "none" not in res or "per_item" not in res["none"]:
            continue
        base = np.array([p["log_odds"] for p in res["none"]["per_item"]])
        shift = {n: np.array([p["log_odds"] for p in v["per_item"]]) - base for n, v in res.items() if n != "none"}
        names = list(res)
        specific = [n for n in names[1:] if "random" not in n]  # x<s> lang1 heads, zero lang2 heads
        for name in specific:
            kind = "zero random heads" if name.startswith("zero") else f"{name.split(' ')[0]} random heads"
            controls = [n for n in shift if n.split(" #")[0] == kind]
            if not controls:
                continue
            null = np.array([shift[n] for n in controls])  # [draws, items]
            c = stats.paired_difference(null.mean(0), shift[name], unit="log-odds").to_dict()
            emp = stats.empirical_p(float(shift[name].mean()), null.mean(1), "greater")
            out.append(_finding(
                f"transfer_{pair}_{'scale' if name.startswith('x') else 'zero'}",
                f"transfer {pair}: {name} moves the answer toward language 1's occupation more than the same change "
                "on random heads", c, +1, unit="log-odds",
                evidence=f"log-odds X:Y {res['none']['mean_log_odds']:+.2f} -> {res[name]['mean_log_odds']:+.2f} "
                         f"({shift[name].mean():+.2f}); {len(controls)} random draw(s): "
                         + ", ".join(f"{v:+.2f}" for v in null.mean(1))
                         + f" (rank p {stats.format_p(emp)}); prefers X {100 * res['none']['share_prefers_x']:.0f}% -> "
                           f"{100 * res[name]['share_prefers_x']:.0f}%"))
    return out


def findings(results: dict, alpha: float = ALPHA) -> list[dict]:
    """Each claim of the paper checked against this run's numbers (see the module docstring)."""
    found = []
    if results.get("ppl"):
        found += _ppl_findings(results["ppl"])
    if results.get("xquad"):
        found += _xquad_findings(results["xquad"])
    if results.get("off_target"):
        found += _off_target_findings(results["off_target"])
    if results.get("transfer"):
        found += _transfer_findings(results["transfer"])
    if results.get("lcb"):
        found += _lcb_findings(results["lcb"])
    return _verdicts(found, alpha)


CONTROL_NOTE = "also holds on random weights: not evidence of learned language heads"


def attach_control(found: list[dict], control: list[dict]) -> list[dict]:
    """Give each finding the random-weight control's verdict on the same claim (matched by id)."""
    by_id = {f["id"]: f for f in control}
    for f in found:
        c = by_id.get(f["id"])
        f["control"] = None if c is None else {k: c.get(k) for k in ("verdict", "effect", "ci", "p_value", "p_holm",
                                                                       "n", "evidence")}
        if c is not None and c["verdict"] == "holds":
            f["control_note"] = CONTROL_NOTE
    return found


def verdict_text(f: dict) -> str:
    """The finding's verdict in words, with the control's caveat."""
    text = {"holds": "Holds", "does not hold": "Does not hold", "inconclusive": "Inconclusive"}[f["verdict"]]
    if f["verdict"] == "holds" and f.get("control_note"):
        text += " (but " + f["control_note"] + ")"
    return text


def effect_text(f: dict) -> str:
    """"+1.23 [-0.40, +2.86] nats/token, p=0.14 (Holm 0.56)"."""
    if f["effect"] is None:
        return "no paired outputs to compare"
    digits = 1 if f["unit"] == "points" else 3 if f["unit"] == "nats/token" else 2
    low, high = f["ci"]
    return (f"{f['effect']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] {f['unit']}, "
            f"p={stats.format_p(f['p_value'])} (Holm {stats.format_p(f['p_holm'])})")
