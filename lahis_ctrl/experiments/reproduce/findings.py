"""The paper's claims checked against a run's numbers, with statistics a reviewer can check.

Every finding reads one claim in one way (`reading`) with one named test (`test`):

* "vs random heads": the head set is the unit. Per unit (a language, a language pair; units whose head sets share a
  head are merged into one), the target set's effect is ranked among the effects of N random sets of the same size
  drawn outside it, and the ranks of the units are combined exactly (stats.rank_test). The interval is a two-level
  bootstrap over the draws and the items (it describes the size; the verdict is the rank test's). Never an item-level
  test against the mean of a few draws: that treats the drawn heads as fixed and rejects a true null far too often.
* "vs other languages' heads": the ppl matrix's diagonal against a permutation of the head sets' language labels.
* "direction" / "size": an intervention against no intervention, paired over items (exact McNemar with Newcombe's
  interval for 0/1 outcomes, sign-flip with a bootstrap interval otherwise; XQuAD's soft mask over items and training
  seeds). A size reading tests the paper's value as its null: it holds when the effect is significantly at least that
  large and does not hold when significantly smaller; a significant gain in the claimed direction is never "does not
  hold" of the direction reading.

Each finding: {"id", "claim", "reading", "test", "unit", "direction", "effect", "ci" (95%), "ci_family" (at the
level Holm's first step needs, 1 - alpha/M: the interval the verdict reads), "p_value", "p_holm", "n", "n_what",
"draws", "min_p" (the smallest p its design can reach), "mde" (the effect it detects with 80% power at alpha/M),
"underpowered_by_design" (min_p > alpha/M), "reason" (why there is no number, when there is none), "evidence",
"verdict", and "paper_effect" where the paper gives one}. Verdicts are Holm-corrected within a family: the findings,
and separately the placebo rows (`placebos`: the same tests with a random set in the place of the target heads,
which must come out inconclusive at the nominal rate). The random-weight control's findings (same ids, same sizes)
are attached by `attach_control`.
"""

from __future__ import annotations

import contextvars
import math
from typing import Callable, Optional, Sequence

import numpy as np

from ...eval import stats

ALPHA = 0.05
POWER = 0.8
# the seed of every bootstrap and sign-flip resampling of one findings() call (its verdicts must not depend on it)
_SEED = contextvars.ContextVar("resampling_seed", default=0)
PAPER_XQUAD_GAIN = 5.0  # points (the paper's average over languages)

# test names (report.TESTS_TEXT says what each does)
TEST_RANK = "rank among random sets"
TEST_LABELS = "label permutation"
TEST_MCNEMAR = "McNemar (paired items)"
TEST_SIGNFLIP = "sign-flip (paired items)"
TEST_SEEDS = "sign-flip over items; items x seeds interval"
TEST_SIZE = "items x seeds interval vs the paper's value"


def _task_families(ot: dict) -> list[str]:
    """The task families (xquad_xling, ntrex_en) present in off-target results {lang: {intervention: ...}}."""
    return sorted({t for per in ot.values() for name, r in per.items() if name != "proxy" for t in r["tasks"]})


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _scaled(values, scale: float) -> list:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else scale * float(v) for v in values]


def _row_means(r: np.ndarray) -> np.ndarray:
    """Mean of each row over its non-NaN values (NaN for a row without any)."""
    valid = ~np.isnan(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, r, 0.0).sum(1) / valid.sum(1) if r.size else np.empty(0)


def _base(fid: str, claim: str, reading: str, test: str, unit: str, direction: int, evidence: str, n: int,
          n_what: str) -> dict:
    return {"id": fid, "claim": claim, "reading": reading, "test": test, "unit": unit, "direction": direction,
            "effect": None, "ci": [None, None], "p_value": None, "n": int(n), "n_what": n_what, "draws": None,
            "min_p": None, "reason": None, "evidence": evidence}


def _no_data(f: dict, reason: str) -> dict:
    f["reason"] = reason
    f["_kind"] = "none"
    return f


# ---------------------------------------------------------------------------------------------- the three designs
def _item_finding(fid: str, claim: str, reading: str, a, b, direction: int, unit: str, evidence: str, n_what: str,
                  scale: float = 1.0, reason: str = "no item has an outcome under both conditions") -> dict:
    """b (treated) against a (baseline), paired over items (NaN pairs dropped)."""
    a, b = _arr(a), _arr(b)
    keep = ~(np.isnan(a) | np.isnan(b))
    binary = bool(np.all(np.isin(a[keep], (0, 1))) and np.all(np.isin(b[keep], (0, 1))))
    f = _base(fid, claim, reading, TEST_MCNEMAR if binary else TEST_SIGNFLIP, unit, direction, evidence,
              int(keep.sum()), n_what)
    if not keep.any():
        return _no_data(f, reason)
    c = stats.paired_difference(a, b, unit=unit, seed=_SEED.get())
    f.update(effect=scale * c.effect, ci=_scaled(c.ci, scale), p_value=c.p_value,
             min_p=min(1.0, 2 * 0.5 ** int(keep.sum())) if binary or keep.sum() <= stats.EXACT_SIGN_FLIP_MAX
             else 1 / (1 + stats.N_RESAMPLES))
    f["_kind"] = "item"
    f["_interval"] = lambda conf: _scaled(stats.paired_difference(a, b, confidence=conf, seed=_SEED.get()).ci, scale)
    f["_mde"] = lambda level: stats.mde_from_interval(f["ci"], 0.95, level, POWER)
    return f


def _seeds_finding(fid: str, claim: str, reading: str, orig: dict, treated: dict, direction: int, evidence: str,
                   null_value: float = 0.0) -> dict:
    """XQuAD: per language, treated[lang] [seeds, items] against orig[lang] [items]; the interval covers items and
    training seeds; `null_value` in points (the paper's +5 for the size reading)."""
    langs = [l for l in orig if l in treated]
    diffs = [np.asarray(treated[l], dtype=float) - np.asarray(orig[l], dtype=float)[None, :] for l in langs]
    n = int(sum(d.shape[1] for d in diffs))
    f = _base(fid, claim, reading, TEST_SIZE if null_value else TEST_SEEDS, "points", direction, evidence, n,
              "test items (x training seeds)")
    if not langs or n == 0:
        return _no_data(f, "no XQuAD items")
    point, boot = stats.seeds_items_bootstrap(diffs, seed=_SEED.get())
    point, boot = 100 * point, 100 * boot
    # every (seed, item) pair as if independent, for Newcombe's interval: it stays informative where the bootstrap
    # collapses (no item changed: the bootstrap gives [0, 0])
    pooled_a = np.concatenate([np.tile(np.asarray(orig[l], dtype=float), len(treated[l])) for l in langs])
    pooled_b = np.concatenate([np.asarray(treated[l], dtype=float).ravel() for l in langs])

    def interval(conf: float) -> list:
        """The wider of the two-level bootstrap interval and Newcombe's, at level conf (points)."""
        low, high = np.quantile(boot, [(1 - conf) / 2, (1 + conf) / 2])
        n_low, n_high = stats.newcombe_paired_interval(pooled_a, pooled_b, conf)
        return [float(min(low, 100 * n_low)), float(max(high, 100 * n_high))]

    flat_a = np.concatenate([np.asarray(orig[l], dtype=float) for l in langs])
    flat_b = np.concatenate([np.mean(np.asarray(treated[l], dtype=float), axis=0) for l in langs])
    if null_value:
        p = stats.inverted_p(interval, null_value)  # the p of the interval itself: both agree at every level
        min_p = stats.INVERSION_FLOOR
    else:
        p = stats.paired_difference(flat_a, flat_b, binary=False, seed=_SEED.get()).p_value
        min_p = 2 * 0.5 ** n if n <= stats.EXACT_SIGN_FLIP_MAX else 1 / (1 + stats.N_RESAMPLES)
    f.update(effect=point, ci=interval(0.95), p_value=p, min_p=min_p, null_value=null_value)
    f["_kind"] = "item"
    f["_interval"] = interval
    f["_mde"] = lambda level: stats.mde_from_interval(f["ci"], 0.95, level, POWER)
    return f


def _rank_finding(fid: str, claim: str, units: list[dict], direction: int, unit: str, evidence: str,
                  scale: float = 1.0, what: str = "language") -> dict:
    """units: [{"name", "target": [items] (target - baseline per item), "draws": [draws, items]}], independent."""
    usable = []
    for u in units:
        t, r = _arr(u["target"]), np.atleast_2d(np.array(u["draws"], dtype=float))
        t_eff = float(np.nanmean(t)) if np.any(~np.isnan(t)) else math.nan
        r_eff = _row_means(r)
        if math.isnan(t_eff) or not np.any(~np.isnan(r_eff)):
            continue
        usable.append({**u, "t": t, "r": r, "t_eff": t_eff, "r_eff": r_eff})
    plural = "" if len(usable) == 1 else "s"
    f = _base(fid, claim, "vs random heads", TEST_RANK, unit, direction, evidence, len(usable),
              f"independent {what} group{plural}" if any("/" in u["name"] for u in usable) else f"{what}{plural}")
    if not usable:
        return _no_data(f, "no unit has an effect for its target heads and for a random draw")
    test = stats.rank_test([u["t_eff"] for u in usable], [u["r_eff"] for u in usable], direction)
    point, boot = stats.draw_level_bootstrap([u["t"] for u in usable], [u["r"] for u in usable], seed=_SEED.get())
    spread = [np.nanvar(u["r_eff"], ddof=1) for u in usable if np.sum(~np.isnan(u["r_eff"])) > 1]
    sigma = scale * math.sqrt(float(np.mean(spread))) if spread else math.nan
    f.update(effect=scale * point, p_value=test.p_value, draws=list(test.draws), min_p=test.min_p,
             ci=_scaled(np.quantile(boot, [0.025, 0.975]) if boot.size else [math.nan] * 2, scale),
             rank={"p_greater": test.p_greater, "p_less": test.p_less,
                   "units": [{"name": u["name"], "effect": scale * u["t_eff"],
                              "draws_mean": scale * float(np.nanmean(u["r_eff"])), "rank_p": p}
                             for u, p in zip(usable, test.unit_p)]},
             draw_sd=None if math.isnan(sigma) else sigma)
    f["_kind"] = "rank"
    f["_interval"] = lambda conf: _scaled(np.quantile(boot, [(1 - conf) / 2, (1 + conf) / 2]) if boot.size
                                          else [math.nan] * 2, scale)
    f["_mde"] = lambda level: stats.rank_mde(test.draws, level, POWER) * sigma
    return f


def _diagonal_finding(fid: str, claim: str, rows: dict, evidence: str) -> dict:
    """rows[x]: [sets, texts] x's per-text increase under each language's set (in the order of `rows`)."""
    langs = list(rows)
    f = _base(fid, claim, "vs other languages' heads", TEST_LABELS, "nats/token", +1, evidence, len(langs),
              "languages (head sets)")
    if len(langs) < 2:
        return _no_data(f, "fewer than 2 languages")
    means = np.array([np.nanmean(np.asarray(rows[x], dtype=float), axis=1) for x in langs])  # [texts of x, set y]
    perm = stats.label_permutation_test(means, seed=_SEED.get())
    point, boot = stats.diagonal_contrast_bootstrap([rows[x] for x in langs], seed=_SEED.get())
    f.update(effect=point, ci=list(np.quantile(boot, [0.025, 0.975]).tolist()), p_value=perm["p_value"],
             min_p=perm["min_p"], permutations=perm["permutations"],
             rank={"p_greater": perm["p_greater"], "p_less": perm["p_less"]})
    f["_kind"] = "rank"
    f["_interval"] = lambda conf: list(np.quantile(boot, [(1 - conf) / 2, (1 + conf) / 2]).tolist())
    f["_mde"] = lambda level: stats.mde_from_interval(f["ci"], 0.95, level, POWER)
    return f


# ---------------------------------------------------------------------------------------------- verdicts
def _verdicts(found: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Holm-adjust the p-values of one family, add the family-level interval, the MDE and the design's power
    flag, and give each finding its verdict."""
    ps = [np.nan if f["p_value"] is None else f["p_value"] for f in found]
    adjusted = stats.holm(ps) if found else []
    m = max(1, sum(not math.isnan(p) for p in ps))
    level = alpha / m  # Holm's first step: the level a finding must reach when it is the smallest p
    for f, p in zip(found, adjusted):
        kind = f.pop("_kind")
        interval, mde = f.pop("_interval", None), f.pop("_mde", None)
        f["p_holm"] = None if math.isnan(p) else p
        f["ci_family"] = {"confidence": 1 - level, "ci": interval(1 - level) if interval else [None, None]}
        value = mde(level) if mde else math.nan
        f["mde"] = None if value is None or math.isnan(value) else (None if math.isinf(value) else value)
        f["underpowered_by_design"] = f["min_p"] is not None and f["min_p"] > level
        if kind == "none":
            f["verdict"] = "inconclusive"
        elif kind == "rank":
            f["verdict"] = stats.rank_verdict(p, f["rank"]["p_greater"], f["rank"]["p_less"], f["direction"], alpha)
        else:
            ci = tuple(np.nan if v is None else v for v in f["ci_family"]["ci"])
            cmp = stats.Comparison(f["effect"], ci, f["p_value"], f["n"])
            f["verdict"] = stats.verdict(cmp, f["direction"], alpha=alpha, adjusted_p=p,
                                         null_value=f.get("null_value", 0.0))
    return found


# ---------------------------------------------------------------------------------------------- the claims
def _units(head_sets: dict, target: dict, draws: dict) -> list[dict]:
    """Merge languages whose head sets share a head (lahis.heads.independent_groups) into one unit each:
    {"name": "de" or "hi/ru", "target": concatenated items, "draws": [draws, concatenated items]}."""
    from ...lahis.heads import independent_groups

    out = []
    for group in independent_groups({x: [tuple(h) for h in head_sets[x]] for x in target}):
        out.append({"name": "/".join(group), "target": np.concatenate([target[x] for x in group]),
                    "draws": np.concatenate([np.atleast_2d(draws[x]) for x in group], axis=1)})
    return out


def _rank_evidence(f: dict, what: str) -> str:
    if not f.get("rank") or "units" not in f["rank"]:
        return f["evidence"]
    units = f["rank"]["units"]
    draws = f["draws"][0] if f["draws"] and len(set(f["draws"])) == 1 else f["draws"]
    beat = [u["name"] for u in units if u["rank_p"] <= 1 / ((draws if isinstance(draws, int) else max(draws)) + 1)]
    digits = 3 if f["unit"] == "nats/token" else 2
    per = "; ".join(f"{u['name']} {u['effect']:+.{digits}f} vs draws {u['draws_mean']:+.{digits}f} "
                    f"(rank p {stats.format_p(u['rank_p'])})" for u in units)
    return (f"{what} beat all {draws} random draws in {len(beat)} of {len(units)} units "
            f"({', '.join(beat) or 'none'}); {per}")


def _ppl_findings(ppl: dict, placebo: bool) -> list[dict]:
    xs = [x for x in ppl["languages"] if x in ppl.get("masked", {}) and x in ppl.get("comparisons", {})]
    if not xs:
        return []
    k = ppl["k"]
    base = {x: _arr(ppl["baseline"][x]["losses"]) for x in xs}
    draws = {x: np.array([_arr(t["losses"]) - base[x] for t in ppl["random"][x]["trials"]]) for x in xs}
    out = []
    if not placebo:
        target = {x: _arr(ppl["masked"][x][x]["losses"]) - base[x] for x in xs}
        sets = {x: ppl["heads"][x] for x in xs}
        fid, claim = "ppl_own_vs_random", (f"zeroing a language's {k} specific heads raises its perplexity more than "
                                           f"{k} random heads")
    else:
        if not ppl.get("placebo"):
            return []
        target = {x: _arr(ppl["placebo"][x][x]["losses"]) - base[x] for x in xs}
        sets = {x: ppl["placebo_heads"][x] for x in xs}
        fid, claim = "placebo_ppl_own_vs_random", f"placebo: a random set of {k} heads in the place of each language's"
    f = _rank_finding(fid, claim, _units(sets, target, draws), +1, "nats/token", "", what="language")
    f["evidence"] = _rank_evidence(f, "the placebo heads" if placebo else "own heads")
    out.append(f)
    square = [x for x in xs if all(y in ppl["masked"] for y in xs)]
    source = ppl.get("placebo") if placebo else ppl["masked"]
    if len(square) > 1 and source and all(y in source for y in square):
        rows = {x: np.array([_arr(source[y][x]["losses"]) - base[x] for y in square]) for x in square}
        means = np.array([np.nanmean(rows[x], axis=1) for x in square])
        own_first = [x for i, x in enumerate(square) if int(np.argmax(means[i])) == i]
        out.append(_diagonal_finding(
            "placebo_ppl_diagonal" if placebo else "ppl_diagonal",
            "placebo: random sets in the place of each language's heads" if placebo else
            "a language is hurt more by its own heads than by other languages' heads (diagonal of the ppl matrix)",
            rows, f"hurt most by its own {'placebo ' if placebo else ''}heads: {len(own_first)} of {len(square)} "
                  f"languages ({', '.join(own_first) or 'none'})"))
    return out


def _xquad_findings(xq: dict, placebo: bool) -> list[dict]:
    langs = [l for l, r in xq.items() if "items" in r and "original" in r["items"]]
    if not langs:
        return []
    orig = {l: xq[l]["items"]["original"] for l in langs}
    lahis = {l: [v for n, v in xq[l]["items"].items() if n == "lahis" or n.startswith("lahis-s")] for l in langs}
    randoms = {l: [v for n, v in xq[l]["items"].items() if n.startswith("random")] for l in langs}
    out = []
    per = ", ".join(f"{l} {100 * (np.mean(lahis[l]) - np.mean(orig[l])):+.1f}" for l in langs)
    seeds = len(next(iter(lahis.values())))
    if not placebo:
        desc = (f"{sum(len(orig[l]) for l in langs)} test items over {', '.join(langs)}, {seeds} training seed(s) per "
                f"language (gain per language: {per}); base accuracy {100 * np.mean(np.concatenate(list(orig.values()))):.1f}%")
        out.append(_seeds_finding("xquad_direction", "the LAHIS soft mask improves XQuAD accuracy over the original "
                                  "model", "direction", orig, lahis, +1, desc))
        size = _seeds_finding("xquad_size", f"the LAHIS soft mask's XQuAD gain is as large as the paper's "
                              f"(+{PAPER_XQUAD_GAIN:g} points)", "size", orig, lahis, +1, desc,
                              null_value=PAPER_XQUAD_GAIN)
        size["paper_effect"] = PAPER_XQUAD_GAIN
        out.append(size)
    if not all(randoms[l] for l in langs):
        return out
    target = {l: (np.mean(lahis[l], axis=0) if not placebo else _arr(xq[l]["items"]["placebo"])) - _arr(orig[l])
              for l in langs if lahis[l] and (not placebo or "placebo" in xq[l]["items"])}
    draws = {l: np.array(randoms[l], dtype=float) - _arr(orig[l])[None, :] for l in target}
    sets = {l: [h[:2] for h in xq[l]["heads"]["placebo" if placebo else "lahis"]] for l in target}
    f = _rank_finding("placebo_xquad_vs_random" if placebo else "xquad_vs_random",
                      "placebo: a random-heads soft mask in the place of the LAHIS mask" if placebo else
                      "the LAHIS soft mask beats random-heads soft masks", _units(sets, target, draws), +1, "points",
                      "", scale=100)
    f["evidence"] = _rank_evidence(f, "the placebo mask" if placebo else "the LAHIS mask (mean over its seeds)")
    out.append(f)
    return out


def _decided(per_lang: dict, name: str, value: Callable) -> tuple[np.ndarray, np.ndarray, list[str]]:
    langs = [l for l in per_lang if "none" in per_lang[l] and name in per_lang[l]]
    if not langs:
        return np.empty(0), np.empty(0), []
    a = np.concatenate([_arr(value(l, "none")) for l in langs])
    b = np.concatenate([_arr(value(l, name)) for l in langs])
    return a, b, langs


def _vs_none(fid: str, claim: str, per_lang: dict, name: str, value: Callable, direction: int, unit: str,
             what: str) -> Optional[dict]:
    a, b, langs = _decided(per_lang, name, value)
    if not langs:
        return None
    decided = int(np.sum(~np.isnan(a) & ~np.isnan(b)))
    return _item_finding(fid, claim, "direction", a, b, direction, unit,
                         f"{decided} {what} decided with and without it ({', '.join(langs)})", what, scale=100,
                         reason=f"no {what[:-1]} could be judged both with and without the intervention")


def _pearson(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3 or np.std(x[keep]) == 0 or np.std(y[keep]) == 0:
        return None
    return float(np.corrcoef(x[keep], y[keep])[0, 1])


def proxy_agreement(ot: dict, task: str) -> dict:
    """How the teacher-forced proxy's change and the generated off-target rate's change agree over the generated
    interventions (language x intervention): {"points": [[lang, name, delta proxy, delta off-target points]], "r"}."""
    points = []
    for lang, per in ot.items():
        proxy = per.get("proxy", {}).get(task)
        if not proxy or "none" not in per or task not in per["none"].get("tasks", {}):
            continue
        for name, r in per.items():
            if name in ("none", "proxy") or task not in r.get("tasks", {}):
                continue
            values = proxy.get(name)
            if values is None and name.startswith("zero_random_"):
                values = proxy["zero_random"][int(name.rsplit("_", 1)[1]) - 1]
            if values is None:
                continue
            a, b = _arr(per["none"]["tasks"][task]["off_target"]), _arr(r["tasks"][task]["off_target"])
            keep = ~(np.isnan(a) | np.isnan(b))
            d_rate = 100 * float(np.mean(b[keep] - a[keep])) if keep.any() else math.nan
            points.append([lang, name, float(np.mean(_arr(values) - _arr(proxy["none"]))), d_rate])
    return {"points": points, "r": _pearson([p[2] for p in points], [p[3] for p in points])}


def _off_target_findings(ot: dict, placebo: bool) -> list[dict]:
    out = []
    for t in _task_families(ot):
        per = {l: {n: r for n, r in rs.items() if n != "proxy" and t in r["tasks"]} for l, rs in ot.items()}
        per = {l: rs for l, rs in per.items() if rs and all("off_target" in r["tasks"][t] for r in rs.values())}
        value = lambda l, n, per=per, t=t: per[l][n]["tasks"][t]["off_target"]  # noqa: E731
        if not placebo:
            for name, claim in (("zero_source", "zeroing the source language's heads lowers the off-target rate"),
                                ("scale_target", "scaling the target language's heads up lowers the off-target rate")):
                f = _vs_none(f"off_target_{t}_{name}", f"{t}: {claim}", per, name, value, -1, "points", "outputs")
                if f is not None:
                    out.append(f)
        proxies = {l: rs["proxy"][t] for l, rs in ot.items() if t in rs.get("proxy", {})}
        if not proxies:
            continue
        agreement = proxy_agreement(ot, t)
        agree = ("" if agreement["r"] is None else
                 f"; the proxy's change and the generated off-target rate's agree with r = {agreement['r']:+.2f} over "
                 f"{len(agreement['points'])} generated interventions (a lower rate should come with a higher proxy)")
        zero_t = {l: _arr(p["zero_placebo" if placebo else "zero_source"]) - _arr(p["none"]) for l, p in proxies.items()}
        zero_r = [np.concatenate([_arr(p["zero_random"][i]) - _arr(p["none"]) for p in proxies.values()])
                  for i in range(min(len(p["zero_random"]) for p in proxies.values()))]
        if zero_r:
            src_heads = next(iter(proxies.values()))["heads"]["zero_placebo" if placebo else "zero_source"]
            f = _rank_finding(f"{'placebo_' if placebo else ''}off_target_{t}_zero_source_vs_random",
                              f"{t}: placebo: zeroed random heads in the place of the source language's" if placebo
                              else f"{t}: zeroing the source language's heads raises the target-language preference "
                                   "more than zeroing random heads",
                              [{"name": "+".join(proxies), "target": np.concatenate(list(zero_t.values())),
                                "draws": np.array(zero_r)}], +1, "log-prob/token", "", what="head set")
            f["evidence"] = (f"one head set ({', '.join(f'L{h[0]}H{h[1]}' for h in src_heads) or 'n/a'}) over "
                             f"{', '.join(proxies)}: {_rank_evidence(f, 'its effect')}; measure: the teacher-forced "
                             f"proxy{agree}")
            out.append(f)
        scale_t = {l: _arr(p["scale_placebo" if placebo else "scale_target"]) - _arr(p["none"]) for l, p in proxies.items()}
        scale_r = {l: np.array([_arr(v) - _arr(p["none"]) for v in p["scale_random"]]) for l, p in proxies.items()
                   if p["scale_random"]}
        if scale_r:
            sets = {l: proxies[l]["heads"]["scale_placebo" if placebo else "scale_target"] for l in scale_r}
            f = _rank_finding(f"{'placebo_' if placebo else ''}off_target_{t}_scale_target_vs_random",
                              f"{t}: placebo: random heads scaled up in the place of the target language's" if placebo
                              else f"{t}: scaling the target language's heads up raises the target-language preference "
                                   "more than scaling random heads up",
                              _units(sets, {l: scale_t[l] for l in scale_r}, scale_r), +1, "log-prob/token", "")
            f["evidence"] = _rank_evidence(f, "the placebo heads" if placebo else "T's heads") + \
                "; measure: the teacher-forced proxy" + agree
            out.append(f)
    return out


def _lcb_findings(lcb: dict, placebo: bool) -> list[dict]:
    per = {l: rs for l, rs in lcb.items() if all("line_pass" in r for r in rs.values())}
    if not per:
        return []
    value = lambda l, n: per[l][n]["line_pass"]  # noqa: E731
    out = []
    if not placebo:
        for name, claim in (("zero_source", "zeroing the instruction language's heads raises the LCB line-level pass "
                                            "rate"),
                            ("scale_target", "scaling the target language's heads up raises the LCB line-level pass "
                                             "rate")):
            f = _vs_none(f"lcb_{name}", f"LCB: {claim}", per, name, value, +1, "points", "completions")
            if f is not None:
                out.append(f)
    langs = [l for l in per if "none" in per[l] and any(n.startswith("scale_random_") for n in per[l])]
    if not langs:
        return out
    target = {l: _arr(value(l, "scale_placebo" if placebo else "scale_target")) - _arr(value(l, "none"))
              for l in langs if ("scale_placebo" if placebo else "scale_target") in per[l]}
    draws = {l: np.array([_arr(value(l, n)) - _arr(value(l, "none")) for n in sorted(
        (n for n in per[l] if n.startswith("scale_random_")), key=lambda n: int(n.rsplit("_", 1)[1]))]) for l in target}
    sets = {l: [h[:2] for h in per[l]["scale_placebo" if placebo else "scale_target"]["heads"]] for l in target}
    f = _rank_finding("placebo_lcb_scale_target_vs_random" if placebo else "lcb_scale_target_vs_random",
                      "LCB: placebo: random heads scaled up in the place of the target language's" if placebo else
                      "LCB: scaling the target language's heads up raises the line-level pass rate more than scaling "
                      "random heads up", _units(sets, target, draws), +1, "points", "", scale=100)
    f["evidence"] = _rank_evidence(f, "the placebo heads" if placebo else "T's heads") + \
        " (completions without a line of 5 tokens under both are left out)"
    out.append(f)
    return out


def _transfer_findings(tr: dict, placebo: bool) -> list[dict]:
    shifts: dict = {}
    sets: dict = {}
    for pair, r in tr.items():
        res = r["results"]
        if "none" not in res or "per_item" not in res["none"]:
            continue
        base = _arr([p["log_odds"] for p in res["none"]["per_item"]])
        shifts[pair] = {n: _arr([p["log_odds"] for p in v["per_item"]]) - base for n, v in res.items() if n != "none"}
        sets[pair] = {n: [tuple(h) for h in (v.get("mask") or {}).get("changed_heads", [])] for n, v in res.items()}
    if not shifts:
        return []
    out = []
    for kind, claim in (("scale", "scaling language 1's heads up moves the answer toward language 1's occupation"),
                        ("zero", "zeroing language 2's heads moves the answer toward language 1's occupation")):
        def name_of(pair: str, what: str) -> Optional[str]:
            want = "zero" if kind == "zero" else "x"
            hits = [n for n in shifts[pair] if n.startswith(want) and what in n and
                    (what != "heads" or ("random" not in n and "placebo" not in n))]
            return hits[0] if hits else None

        targets = {p: name_of(p, "placebo heads" if placebo else "heads") for p in shifts}
        targets = {p: n for p, n in targets.items() if n is not None}
        if not placebo:
            base = {p: tr[p]["results"]["none"] for p in targets}
            a = np.concatenate([_arr([x["log_odds"] for x in base[p]["per_item"]]) for p in targets])
            b = np.concatenate([_arr([x["log_odds"] for x in tr[p]["results"][n]["per_item"]])
                                for p, n in targets.items()])
            out.append(_item_finding(f"transfer_{kind}", f"transfer: {claim}", "direction", a, b, +1, "log-odds",
                                     "; ".join(f"{p}: {n} {float(np.mean(shifts[p][n])):+.2f}" for p, n in targets.items()),
                                     "probe items"))
        draws = {p: [n for n in shifts[p] if n.startswith("zero" if kind == "zero" else "x") and "random heads #" in n]
                 for p in targets}
        draws = {p: sorted(ns, key=lambda n: int(n.rsplit("#", 1)[1])) for p, ns in draws.items() if ns}
        if not draws:
            continue
        f = _rank_finding(f"{'placebo_' if placebo else ''}transfer_{kind}_vs_random",
                          f"transfer: placebo: random heads in the place of language {1 if kind == 'scale' else 2}'s"
                          if placebo else f"transfer: {claim} more than the same change on random heads",
                          _units({p: sets[p][targets[p]] for p in draws}, {p: shifts[p][targets[p]] for p in draws},
                                 {p: np.array([shifts[p][n] for n in draws[p]]) for p in draws}),
                          +1, "log-odds", "", what="pair")
        f["evidence"] = _rank_evidence(f, "the placebo heads" if placebo else "the language's heads") + \
            " (teacher-forced log-odds of language 1's occupation)"
        out.append(f)
    return out


_BUILDERS = (("ppl", _ppl_findings), ("xquad", _xquad_findings), ("off_target", _off_target_findings),
             ("transfer", _transfer_findings), ("lcb", _lcb_findings))


def _family(results: dict, alpha: float, seed: int, placebo: bool) -> list[dict]:
    token = _SEED.set(int(seed))
    try:
        return _verdicts([f for key, build in _BUILDERS if results.get(key) for f in build(results[key], placebo)],
                         alpha)
    finally:
        _SEED.reset(token)


def findings(results: dict, alpha: float = ALPHA, seed: int = 0) -> list[dict]:
    """Each claim of the paper checked against this run's numbers (see the module docstring), Holm over them.
    `seed` seeds the resampling (bootstrap intervals, sign-flip tests above 20 items): the verdicts do not depend on
    it (tests/test_designs.py checks the committed report under 20 seeds)."""
    return _family(results, alpha, seed, placebo=False)


def placebos(results: dict, alpha: float = ALPHA, seed: int = 0) -> list[dict]:
    """The placebo rows: every test against random heads (and the diagonal) with a random set in the place of the
    target heads; Holm over them as their own family. On any model they come out inconclusive at the nominal rate."""
    return _family(results, alpha, seed, placebo=True)


# ---------------------------------------------------------------------------------------------- the control
CONTROL_NOTE = "also holds on random weights: not evidence of learned language heads"
UNDERPOWERED_NOTE = "the random-weight control is underpowered: it cannot rule out the same result on random weights"


def control_status(main: dict, control: dict) -> str:
    """What the random-weight control says about a main finding: "holds" (so the main result is not evidence),
    "does not hold", "inconclusive (powered)" when it could have detected an effect of the main run's size, or
    "underpowered" (never read as a pass)."""
    if control["verdict"] == "holds":
        return "holds"
    if control["verdict"] == "does not hold":
        return "does not hold"
    effect, mde = main.get("effect"), control.get("mde")
    if effect is not None and mde is not None and mde < abs(effect):
        return "inconclusive (powered)"
    return "underpowered"


def attach_control(found: list[dict], control: list[dict]) -> list[dict]:
    """Give each finding the random-weight control's verdict on the same claim (matched by id) and its status."""
    by_id = {f["id"]: f for f in control}
    for f in found:
        c = by_id.get(f["id"])
        if c is None:
            f["control"] = None
            continue
        f["control"] = {k: c.get(k) for k in ("verdict", "effect", "ci", "ci_family", "p_value", "p_holm", "n", "mde",
                                               "min_p", "reason", "evidence")}
        f["control"]["status"] = control_status(f, c)
        if f["control"]["status"] == "holds":
            f["control_note"] = CONTROL_NOTE
        elif f["control"]["status"] == "underpowered":
            f["control_note"] = UNDERPOWERED_NOTE
    return found


def verdict_text(f: dict) -> str:
    """The finding's verdict in words, with the design's and the control's caveats."""
    text = {"holds": "Holds", "does not hold": "Does not hold", "inconclusive": "Inconclusive"}[f["verdict"]]
    notes = []
    if f.get("underpowered_by_design") and f["verdict"] != "holds":
        notes.append("underpowered by design")
    if f["verdict"] == "holds" and f.get("control_note"):
        notes.append(("but " if f["control"]["status"] == "holds" else "") + f["control_note"])
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _digits(unit: str) -> int:
    return 1 if unit == "points" else 3 if unit == "nats/token" else 2


def effect_text(f: dict, family: bool = True) -> str:
    """"+1.23 [-0.40, +2.86] nats/token (95%; [..] at 99.7%), p=0.14 (Holm 0.56)"."""
    if f["effect"] is None:
        return f"no number: {f.get('reason') or 'no data'}"
    d = _digits(f["unit"])

    def num(v: float) -> str:
        return f"{round(v, d) + 0.0:+.{d}f}"  # + 0.0: no "-0.0"

    def fmt(ci) -> str:
        low, high = ci
        return "[n/a]" if low is None or high is None else f"[{num(low)}, {num(high)}]"

    text = f"{num(f['effect'])} {fmt(f['ci'])} {f['unit']}"
    if family and f.get("ci_family"):
        text += f" (95%; {fmt(f['ci_family']['ci'])} at {100 * f['ci_family']['confidence']:.2f}%)"
    return text + f", p={stats.format_p(f['p_value'])} (Holm {stats.format_p(f['p_holm'])})"
