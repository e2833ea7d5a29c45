"""The paper's claims checked against a run's numbers."""

from __future__ import annotations

import math
from typing import Optional


def _task_families(ot: dict) -> list[str]:
    """The task families (xquad_xling, ntrex_en) present in off-target results {lang: {intervention: ...}}."""
    return sorted({t for per in ot.values() for r in per.values() for t in r["tasks"]})


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def findings(results: dict) -> list[dict]:
    """Each claim of the paper checked against this run's numbers: {claim, holds, evidence}."""
    out = []
    ppl = results.get("ppl")
    if ppl:
        xs = [x for x in ppl["languages"] if x in ppl["masked"]]
        own_vs_random = [x for x in xs if ppl["masked"][x][x]["corpus_ppl"] > ppl["random"][x]["corpus_ppl"]]
        diag = [x for x in xs if ppl["masked"][x][x]["corpus_ppl"] >= max(ppl["masked"][y][x]["corpus_ppl"]
                                                                             for y in ppl["masked_languages"])]
        out.append({"claim": f"zeroing a language's top-{ppl['k']} specific heads raises its perplexity more than "
                             f"{ppl['k']} random heads", "holds": len(own_vs_random) > len(xs) / 2,
                    "evidence": f"{len(own_vs_random)} of {len(xs)} languages ({', '.join(own_vs_random) or 'none'})"})
        out.append({"claim": "a language is hurt most by its own heads (diagonal of the ppl matrix)",
                    "holds": len(diag) > len(xs) / 2,
                    "evidence": f"{len(diag)} of {len(xs)} languages ({', '.join(diag) or 'none'})"})
    xq = results.get("xquad")
    if xq:
        d_orig = {l: r["summary"]["lahis"]["accuracy"] - r["summary"]["original"]["accuracy"] for l, r in xq.items()}
        d_rand = {l: r["summary"]["lahis"]["accuracy"] - r["summary"]["random"]["accuracy"] for l, r in xq.items()}
        ev = ", ".join(f"{l} {100 * d_orig[l]:+.1f}" for l in xq)
        out.append({"claim": "the LAHIS soft mask improves XQuAD accuracy over the original model (paper: ~+5 points)",
                    "holds": _mean(d_orig.values()) > 0,
                    "evidence": f"mean {100 * _mean(d_orig.values()):+.1f} points ({ev})"})
        out.append({"claim": "the LAHIS soft mask beats a random-heads soft mask",
                    "holds": _mean(d_rand.values()) > 0,
                    "evidence": f"mean {100 * _mean(d_rand.values()):+.1f} points ("
                                + ", ".join(f"{l} {100 * d_rand[l]:+.1f}" for l in xq) + ")"})
    ot = results.get("off_target")
    if ot:
        tasks = _task_families(ot)
        for t in tasks:
            def rate(per: dict, name: str):
                return per[name]["tasks"][t]["metrics"].get("off_target_rate") if t in per[name]["tasks"] else None

            for name, claim in (("zero_source", "zeroing the source language's heads lowers the off-target rate"),
                                ("scale_target", "scaling the target language's heads up lowers the off-target rate")):
                # compare only languages where both runs had outputs whose language could be decided: a mean
                # over different sets of languages would compare languages, not interventions
                langs = [l for l, per in ot.items() if rate(per, "none") is not None and rate(per, name) is not None]
                if not langs:
                    out.append({"claim": f"{t}: {claim}", "holds": None,
                                "evidence": "no language had decided outputs both with and without it (see undetermined %)"})
                    continue
                before = _mean(rate(ot[l], "none") for l in langs)
                after = _mean(rate(ot[l], name) for l in langs)
                ctrl_langs = [l for l in langs if rate(ot[l], "zero_random") is not None]
                ctrl = (f"zero random heads on the same languages: {100 * _mean(rate(ot[l], 'none') for l in ctrl_langs):.1f}% -> "
                        f"{100 * _mean(rate(ot[l], 'zero_random') for l in ctrl_langs):.1f}%" if ctrl_langs else "no random control")
                out.append({"claim": f"{t}: {claim}", "holds": after < before,
                            "evidence": f"mean off-target {100 * before:.1f}% -> {100 * after:.1f}% over {', '.join(langs)} "
                                        f"({ctrl})"})
    tr = results.get("transfer")
    if tr:
        for pair, r in tr.items():
            res = r["results"]
            names = list(res)  # none, x<s> lang1 heads, zero lang2 heads, x<s> random heads, zero random heads
            base = res["none"]
            for name, control in ((names[1], names[3]), (names[2], names[4])):
                shift = res[name]["mean_log_odds"] - base["mean_log_odds"]
                ctrl = res[control]["mean_log_odds"] - base["mean_log_odds"]
                out.append({"claim": f"transfer {pair}: {name} moves the answer toward language 1's occupation "
                                     "more than the same change on random heads",
                            "holds": shift > 0 and shift > ctrl,
                            "evidence": f"log-odds X:Y {base['mean_log_odds']:+.2f} -> {res[name]['mean_log_odds']:+.2f} "
                                        f"({shift:+.2f}; {control}: {ctrl:+.2f}); prefers X "
                                        f"{100 * base['share_prefers_x']:.0f}% -> {100 * res[name]['share_prefers_x']:.0f}%"})
    return [f | {"holds": None if f["holds"] is None else bool(f["holds"])} for f in out]


def _verdict(holds: Optional[bool], readme: bool = False) -> str:
    if holds is None:
        return "Undecided" if readme else "n/a"
    if readme:
        return "Holds" if holds else "Does not hold"
    return "yes" if holds else "**no**"
