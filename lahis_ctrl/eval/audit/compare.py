"""`--compare`: two runs (or two conditions of one file) on the same items, item by item: the change in the
off-target rate with its paired interval and exact McNemar p (eval.stats.paired_difference)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ...core.errors import LahisError
from ..langid import LangPrediction
from ..stats import METHOD_MCNEMAR, paired_difference
from .rates import CONFIDENCE, ci
from .readers import AuditRecord


def _off_value(pred: LangPrediction, expected: str, undetermined_as_off: bool) -> float:
    """Per item: 1.0 off-target, 0.0 on-target, NaN undetermined (1.0 with undetermined_as_off)."""
    if not pred.determined:
        return 1.0 if undetermined_as_off else math.nan
    return float(pred.lang != expected)


def _item_name(record: AuditRecord) -> str:
    return f"item {record.item!r} ({record.expected})" if ":" not in (record.item or "") else f"item {record.item}"


def match_items(a: Sequence[AuditRecord], b: Sequence[AuditRecord], a_name: str = "A", b_name: str = "B",
                a_skipped: int = 0, b_skipped: int = 0) -> tuple[list[tuple[int, int]], str]:
    """Pairs (index in a, index in b) of the same items, in a's order, and how they were matched.

    By item key (expected language + the lm-eval task and doc_id, or the id / doc_id field) when every record of
    both inputs has one, else by line order (the i-th text of a with the i-th of b). Raises LahisError with one
    line naming the first mismatch when the two inputs do not hold the same items.
    """
    if a and b and all(r.item is not None for r in a) and all(r.item is not None for r in b):
        index: list[dict] = []
        for name, recs in ((a_name, a), (b_name, b)):
            seen: dict[tuple, int] = {}
            for i, r in enumerate(recs):
                key = (r.expected, r.item)
                if key in seen:
                    raise LahisError(f"--compare: {name} holds {_item_name(r)} twice ({recs[seen[key]].source} and "
                                     f"{r.source}): each input must hold one output per item (audit one run per file)")
                seen[key] = i
            index.append(seen)
        for key, i in index[0].items():
            if key not in index[1]:
                raise LahisError(f"--compare: the two inputs do not hold the same items: {_item_name(a[i])} of "
                                 f"{a_name} ({a[i].source}) is not in {b_name}")
        for key, j in index[1].items():
            if key not in index[0]:
                raise LahisError(f"--compare: the two inputs do not hold the same items: {_item_name(b[j])} of "
                                 f"{b_name} ({b[j].source}) is not in {a_name}")
        return [(i, index[1][key]) for key, i in index[0].items()], "item id"
    has_ids = {name: bool(recs) and all(r.item is not None for r in recs) for name, recs in ((a_name, a), (b_name, b))}
    if any(has_ids.values()):  # one side names its items, the other does not: line order could pair other items
        with_ids, without = (a_name, b_name) if has_ids[a_name] else (b_name, a_name)
        raise LahisError(f"--compare: every text of {with_ids} has an item id (id / doc_id) but not every text of "
                         f"{without}, so the two cannot be matched item by item, and line order could pair different "
                         f"items: give the texts of {without} their ids too (or remove the ids from both to pair by "
                         "line order)")
    if a_skipped or b_skipped:
        raise LahisError("--compare matches these inputs by line order (not every text has an id or doc_id), which "
                         "skipped bad lines would shift: fix the bad lines, or give every text an 'id' field")
    for i, (ra, rb) in enumerate(zip(a, b)):
        if ra.expected != rb.expected:
            raise LahisError(f"--compare: the two inputs do not hold the same items in the same order: text {i + 1} "
                             f"is expected in '{ra.expected}' in {a_name} ({ra.source}) but in '{rb.expected}' in "
                             f"{b_name} ({rb.source})")
    if len(a) != len(b):
        longer, name, other = (a, a_name, b_name) if len(a) > len(b) else (b, b_name, a_name)
        raise LahisError(f"--compare: the two inputs do not hold the same items: {a_name} has {len(a)} texts and "
                         f"{b_name} {len(b)}; text {min(len(a), len(b)) + 1} of {name} "
                         f"({longer[min(len(a), len(b))].source}) has no counterpart in {other}")
    return [(i, i) for i in range(len(a))], "line order"


def _compare_row(name: str, a: np.ndarray, b: np.ndarray) -> dict:
    keep = ~(np.isnan(a) | np.isnan(b))
    ak, bk = a[keep], b[keep]
    cmp = paired_difference(a, b, confidence=CONFIDENCE, unit="off-target rate", binary=True)
    n = int(keep.sum())
    off_a, off_b = int(ak.sum()), int(bk.sum())
    d = cmp.to_dict()
    return {"expected": name, "n_items": int(a.size), "n_pairs": n, "dropped_undetermined": int(a.size - n),
            "off_target_a": off_a, "off_target_b": off_b,
            "off_target_rate_a": off_a / n if n else None, "off_target_rate_b": off_b / n if n else None,
            "off_target_ci_a": ci(off_a, n), "off_target_ci_b": ci(off_b, n),
            "a_only_off": int(np.sum((ak == 1) & (bk == 0))), "b_only_off": int(np.sum((ak == 0) & (bk == 1))),
            "change": d["effect"], "change_ci": d["ci"], "p_value": d["p_value"], "method": d["method"]}


def compare_runs(a: Sequence[AuditRecord], a_preds: Sequence[LangPrediction], b: Sequence[AuditRecord],
                 b_preds: Sequence[LangPrediction], pairs: Sequence[tuple[int, int]], matched_by: str = "item id",
                 undetermined_as_off: bool = False, a_name: str = "A", b_name: str = "B") -> dict:
    """The change in off-target rate from run A to run B on the same items, per expected language and overall.

    Per item the outcome is 1 (off-target) or 0 (on-target); pairs where either output is undetermined are dropped
    (counted in ``dropped_undetermined``) unless undetermined_as_off (then undetermined = off-target). ``change`` =
    off-target rate of B - that of A on the kept pairs, with the paired interval and exact McNemar p of
    eval.stats.paired_difference for 0/1 outcomes (``method`` names them); ``off_target_ci_a`` / ``_b``: Wilson
    intervals of the two rates on the kept pairs (off-target rates among decided outputs, as everywhere). a_name /
    b_name: what A and B are (an input, or a condition inside one), recorded as 'a' and 'b'.
    """
    a_off = np.array([_off_value(a_preds[i], a[i].expected, undetermined_as_off) for i, _ in pairs], dtype=float)
    b_off = np.array([_off_value(b_preds[j], b[j].expected, undetermined_as_off) for _, j in pairs], dtype=float)
    langs = np.array([a[i].expected for i, _ in pairs])
    rows = [_compare_row(lang, a_off[langs == lang], b_off[langs == lang]) for lang in sorted(set(langs.tolist()))]
    if pairs:
        rows.append(_compare_row("all", a_off, b_off))
    return {"a": a_name, "b": b_name, "matched_by": matched_by, "n_items": len(pairs),
            "undetermined_as_off": undetermined_as_off,
            "confidence": CONFIDENCE, "method": rows[0]["method"] if rows else METHOD_MCNEMAR, "rows": rows}
