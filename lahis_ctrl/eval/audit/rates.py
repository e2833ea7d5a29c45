"""Counting: per condition (run and group) and expected language, how many outputs were on-target, off-target or
undetermined, each figure named by what it counts (see GLOSSARY), with its Wilson interval; the CI gate; the
whole-text counts beside the Language Confusion Benchmark's figures.

Conditions are never pooled: a report has one row per (run, group, expected language) and one total per (run,
group) over its languages, never a total over different masks or runs."""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from ...core.errors import LahisError
from ..langid import LangPrediction, LanguageIdentifier, get_identifier, normalize_lang
from ..lcb import lcb_identifier, lcb_report, whole_text
from ..stats import wilson_interval
from .readers import LCBRecord

UND = "und"  # column of the confusion table for undetermined texts
CONFIDENCE = 0.95  # of every interval in the reports
INTERVAL = "Wilson score"

# every figure of a report, by what it counts (docs/audit.md has the same glossary)
GLOSSARY = {
    "n": "outputs of the row",
    "decided": "outputs whose language could be identified (n - undetermined)",
    "off_target_rate": "off-target outputs among the decided ones (off_target / decided): lm-eval's off_target_rate",
    "off_target_share": "off-target outputs among all outputs (off_target / n)",
    "on_target_share": "outputs in the expected language among all outputs (on_target / n)",
    "undetermined_share": "outputs whose language could not be identified among all outputs (undetermined / n): "
                          "lm-eval's undetermined_share",
}


def reason_kind(reason: str | None) -> str:
    return (reason or "").split(" (")[0]


def predict(identifier: LanguageIdentifier, texts: Sequence[str], progress: bool | None) -> list[LangPrediction]:
    """The identifier's prediction of each text, with a progress bar for long inputs."""
    from tqdm.auto import tqdm

    chunk = 2000
    out: list[LangPrediction] = []
    with tqdm(total=len(texts), desc=f"language ID ({identifier.name})", unit="text", disable=progress is False,
              leave=False) as bar:
        for i in range(0, len(texts), chunk):
            out.extend(identifier.predict(texts[i:i + chunk]))
            bar.update(min(chunk, len(texts) - i))
    return out


def ci(k: int, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """The Wilson score interval of k / n as [low, high]; None when n is 0 (no interval is defined)."""
    if not n:
        return None
    low, high = wilson_interval(k, n, confidence)
    return [float(low), float(high)]


def counts(n: int, on: int, und: int) -> dict:
    """The counts of n outputs (on-target, off-target, undetermined, decided) and every figure of GLOSSARY with its
    Wilson interval; off_target_rate (and its interval) is None when no output was decided."""
    off = n - on - und
    decided = n - und
    return {"n": n, "decided": decided, "on_target": on, "off_target": off, "undetermined": und,
            "off_target_rate": off / decided if decided else None, "off_target_rate_ci": ci(off, decided),
            "off_target_share": off / n if n else 0.0, "off_target_share_ci": ci(off, n),
            "on_target_share": on / n if n else 0.0, "on_target_share_ci": ci(on, n),
            "undetermined_share": und / n if n else 0.0, "undetermined_share_ci": ci(und, n)}


def condition_name(run: str | None, group: str | None) -> str:
    """'A: base / de-mask', 'tiny mask=de.safetensors / xquad_de', or 'all texts' for an input of one condition."""
    return " / ".join(x for x in (run, group) if x) or "all texts"


def row_name(row: dict) -> str:
    """'run / group / language' without the parts the input does not have."""
    return " / ".join(x for x in (row.get("run"), row.get("group"), row.get("expected")) if x)


def gate_rate(row: dict, undetermined_as_off: bool) -> float | None:
    """What --max_off_target compares: the off-target rate among decided outputs, or (off-target + undetermined)
    among all outputs with undetermined_as_off; None when nothing was decided."""
    if undetermined_as_off:
        return (row["off_target"] + row["undetermined"]) / row["n"] if row["n"] else None
    return row["off_target_rate"]


def audit_texts(texts: Sequence[str], expected: Sequence[str] | str, groups: Sequence[str | None] | None = None,
                identifier: LanguageIdentifier | None = None, top: int = 3, max_off_target: float | None = None,
                undetermined_as_off: bool = False, progress: bool | None = False,
                predictions: Sequence[LangPrediction] | None = None,
                runs: Sequence[str | None] | None = None) -> dict:
    """Audit texts against expected languages (one code for all, or one per text); returns the report dict.

    The report has 'rows' (one per run, group and expected language: the counts and figures of `counts`,
    top_wrong, predicted counts, undetermined_reasons, undetermined_guesses: the best guesses of undetermined
    outputs that are not the expected language), 'conditions' (one per run and group, pooled over its
    languages only), and 'gate' when max_off_target is set. runs / groups: one label (or None) per text.
    """
    texts = list(texts)
    if isinstance(expected, str):
        expected = [normalize_lang(expected)] * len(texts)
    else:
        expected = [normalize_lang(e) for e in expected]
    groups = [None] * len(texts) if groups is None else list(groups)
    runs = [None] * len(texts) if runs is None else list(runs)
    if not len(texts) == len(expected) == len(groups) == len(runs):
        raise LahisError(f"texts ({len(texts)}), expected languages ({len(expected)}), groups ({len(groups)}) and "
                         f"runs ({len(runs)}) must have one entry per text")
    if max_off_target is not None and not 0.0 <= max_off_target <= 1.0:
        raise LahisError(f"--max_off_target is a rate between 0 and 1, got {max_off_target}")
    identifier = identifier or get_identifier()
    preds = list(predictions) if predictions is not None else predict(identifier, texts, progress)
    cells: dict[tuple, dict] = {}
    for run, group, exp, p in zip(runs, groups, expected, preds):
        cell = cells.setdefault((run, group, exp), {"predicted": Counter(), "reasons": Counter(), "guesses": Counter()})
        cell["predicted"][p.lang or UND] += 1
        if not p.determined:
            cell["reasons"][reason_kind(p.reason)] += 1
            if p.guess is not None and p.guess != exp:  # a low-confidence other language: shown, not hidden
                cell["guesses"][p.guess] += 1
    rows, conds = [], []
    # conditions in first-seen order (a baseline before its masked runs), languages sorted within one
    for run, group in dict.fromkeys((r, g) for r, g, _ in cells):
        mine = []
        for (_, _, exp) in sorted(k for k in cells if k[:2] == (run, group)):
            cell = cells[(run, group, exp)]
            predicted, reasons = cell["predicted"], cell["reasons"]
            n = sum(predicted.values())
            wrong = [(lang, c) for lang, c in predicted.most_common() if lang not in (exp, UND)]
            mine.append({"run": run, "group": group, "expected": exp,
                         **counts(n, predicted.get(exp, 0), predicted.get(UND, 0)),
                         "top_wrong": [[lang, c] for lang, c in wrong[:top]],
                         "predicted": dict(predicted.most_common()),
                         "undetermined_reasons": dict(reasons.most_common()),
                         "undetermined_guesses": dict(cell["guesses"].most_common())})
        rows += mine
        conds.append({"run": run, "group": group, "name": condition_name(run, group),
                      "languages": [r["expected"] for r in mine],
                      **counts(sum(r["n"] for r in mine), sum(r["on_target"] for r in mine),
                               sum(r["undetermined"] for r in mine))})
    report = {"backend": identifier.name, "min_confidence": identifier.min_confidence,
              "min_chars": identifier.min_chars, "confidence": CONFIDENCE, "interval": INTERVAL, "n": len(preds),
              "grouped": any(g is not None for g in groups), "runs": any(r is not None for r in runs),
              "conditions": conds, "rows": rows}
    if max_off_target is not None:
        failed = []
        for r in rows:
            rate = gate_rate(r, undetermined_as_off)
            if rate is None or rate > max_off_target:
                failed.append({"run": r["run"], "group": r["group"], "expected": r["expected"], "rate": rate})
        report["gate"] = {"max_off_target": max_off_target, "undetermined_as_off": undetermined_as_off,
                          "measures": "(off-target + undetermined) / n" if undetermined_as_off else
                          "off_target_rate (off-target / decided)", "passed": not failed, "failed": failed}
    return report


# ---------------------------------------------------------------------------------------------- LCB
def _whole_counts(preds: Sequence[LangPrediction], langs: Sequence[str]) -> dict:
    n = len(preds)
    on = sum(p.lang == lang for p, lang in zip(preds, langs))
    und = sum(not p.determined for p in preds)
    return counts(n, on, und)


def lcb_audit(records: Sequence[LCBRecord], identifier: LanguageIdentifier | None = None, lcb_lid=None,
              progress: bool | None = False, predictions: Sequence[LangPrediction] | None = None,
              judgements: Optional[list] = None) -> dict:
    """The benchmark's figures (eval.lcb.lcb_report) with Wilson intervals, and the whole-text off-target figures.

    Adds to lcb_report's dict, per (source, language) group: ``lpr_ci`` (Wilson interval of the scored completions
    without a line error), ``wpr_ci`` (of those without a word error, among the scored ones without a line error)
    and ``whole_text`` (`counts` of `whole_text` of each completion, language ID `identifier`); per language, per
    source and overall the same ``whole_text`` pooled over their completions (one model and task: one condition),
    and ``lpr_ci`` / ``wpr_ci`` where the figure is one proportion (a language with one source, a source with one
    language), else None: the means over sources and languages are no proportions and have no interval.
    lcb_lid: the line language ID (eval.lcb.lcb_identifier; default the identifier's fastText model, read raw).
    judgements: a list to fill with each record's `lcb_completion` judgement (eval.lcb.lcb_report's).
    """
    identifier = identifier or get_identifier()
    lcb_lid = lcb_identifier(identifier if lcb_lid is None else lcb_lid)
    rows = [{"completion": r.completion, "language": r.language, "source": r.source, "task": r.task,
             "model": r.model} for r in records]
    report = lcb_report(rows, lcb_lid, judgements=judgements)
    langs = [normalize_lang(r.language) for r in records]
    preds = list(predictions) if predictions is not None else predict(
        identifier, [whole_text(r.completion) for r in records], progress)
    by: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        by.setdefault((r.model, r.task, r.source, r.language), []).append(i)

    def pooled(idx):
        return _whole_counts([preds[i] for i in idx], [langs[i] for i in idx])

    for entry in report["models"]:
        model = entry["model"]
        for task, t in entry["tasks"].items():
            keys = [k for k in by if k[0] == model and k[1] == task]
            for g in t["groups"]:
                g["lpr_ci"] = ci(g["n_scored"] - g["line_errors"], g["n_scored"])
                g["wpr_ci"] = None if g["wpr"] is None else ci(g["n_word_scored"] - g["word_errors"],
                                                               g["n_word_scored"])
                # the proportions' denominators (0: the reference's rate of 1.0 without any completion behind it)
                g["lpr_n"], g["wpr_n"] = g["n_scored"], None if g["wpr"] is None else g["n_word_scored"]
                g["whole_text"] = pooled(by[(model, task, g["source"], g["language"])])
            parts = [(m, [g for g in t["groups"] if g["language"] == lang],
                      [i for k in keys if k[3] == lang for i in by[k]]) for lang, m in t["per_language"].items()]
            parts += [(m, [g for g in t["groups"] if g["source"] == src],
                       [i for k in keys if k[2] == src for i in by[k]]) for src, m in t["per_source"].items()]
            parts.append((t["overall"], t["groups"], [i for k in keys for i in by[k]]))
            for m, gs, idx in parts:
                for key in ("lpr_ci", "wpr_ci", "lpr_n", "wpr_n"):  # only where the figure is one proportion
                    m[key] = gs[0][key] if len(gs) == 1 else None
                m["whole_text"] = pooled(idx)
            t["overall"]["skipped"] = sum(g["skipped"] for g in t["groups"])
    report["whole_text_backend"] = identifier.name
    report["confidence"] = CONFIDENCE
    return report
