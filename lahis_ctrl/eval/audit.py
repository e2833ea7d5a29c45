"""Off-target language audits: `lahis audit INPUT` classifies the language of generated texts and reports,
per expected language, how many came out in that language (on-target), in another one (off-target), or could
not be told (undetermined: empty, digits only, too short, code, low confidence); every rate with its 95% Wilson
score interval (eval.stats.wilson_interval).

Inputs (``--format auto`` tells them apart):

- ``evaluate``: the per-example jsonl of ``lahis evaluate`` (``generation``, ``expected_lang`` or ``lang``;
  grouped by ``mask`` so a baseline and a masked run are reported side by side);
- ``lm-eval``: ``--log_samples`` files of lm-evaluation-harness (``samples_<task>_<date>.jsonl``, or the
  ``--output_path`` folder holding them); the text is ``filtered_resps[0]``, the expected language comes from
  ``--expected``, ``--lang_field`` (e.g. ``doc.lang``) or the task name (``xquad_de``, ``flores_en-de`` ->
  ``de``, ``belebele_deu_Latn`` -> ``de``); grouped by task;
- ``jsonl`` / ``csv``: any jsonl or CSV (with a header line), with ``--text_field`` / ``--lang_field`` (dotted
  paths such as ``doc.lang`` or ``resps.0.0`` reach into nested values) or ``--expected`` for all lines;
- ``text``: plain text, one generation a line (blank lines are skipped), with ``--expected LANG``.

``--compare B``: a second run on the same items (matched by lm-eval task and ``doc_id``, or the ``id`` / ``doc_id``
field, else by line order; a one-line error names the first item the two inputs do not share): per expected
language and overall, the change in off-target rate B - A on the pairs where both outputs were determined (the
others are dropped and counted), with the paired interval and exact McNemar p of eval.stats.paired_difference.

``--metric lcb``: the Language Confusion Benchmark (`run_lcb_audit`): its completion layout (CSV or JSONL with
``completion``, ``language``, ``source``, ``task``, optionally ``model``) or lm-eval samples of the ``lcb_*``
tasks; LPR / WPR / LCPR per language and source (eval.lcb.lcb_report) with Wilson intervals where a figure is one
proportion, and the whole-text off-target rates of the same completions beside them.

Outputs, written atomically together (a failed run leaves any earlier report untouched): ``audit.json``,
``audit.md`` (tables, confusion matrix), ``audit.png`` (bars with error bars), ``compare.png`` with --compare, and
with ``--details`` the per-example ``examples.jsonl``. ``--max_off_target RATE`` makes the command exit with status
1 when any expected language's off-target rate is above RATE (CI gates); bad input exits with status 2.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence

import numpy as np

from ..core.errors import LahisError
from ..core.fileio import atomic_path, read_text
from .langid import LangPrediction, LanguageIdentifier, get_identifier, normalize_lang
from .lcb import LCB_LANGUAGES, LCB_TASKS, lcb_identifier, lcb_report, whole_text
from .stats import METHOD_MCNEMAR, format_p, paired_difference, wilson_interval

__all__ = ["AuditRecord", "LCBRecord", "audit_texts", "compare_runs", "lcb_audit", "match_items", "read_lcb_records",
           "read_records", "render_lcb_markdown", "render_markdown", "run_audit", "run_lcb_audit", "task_language",
           "whole_text", "write_report"]

FORMATS = ("auto", "evaluate", "lm-eval", "jsonl", "csv", "text")
ID_FIELDS = ("id", "doc_id")  # what --compare matches items of jsonl / csv inputs by
TEXT_FIELDS = ("generation", "text", "output", "response", "prediction", "completion")
LANG_FIELDS = ("expected_lang", "lang", "language")
UND = "und"  # column of the confusion table for undetermined texts
METRICS = ("offtarget", "lcb")
CONFIDENCE = 0.95  # of every interval in the reports
INTERVAL = "Wilson score"
_SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9\-.]+)\.jsonl$")
_MAX_SKIPPED_LISTED = 50


@dataclass(frozen=True)
class AuditRecord:
    """One text to audit. source: 'file:line' for messages; group: e.g. the mask or the lm-eval task; item: what
    `--compare` matches it by (lm-eval: 'task:doc_id'; jsonl/csv: the 'id' or 'doc_id' field), None without one."""

    text: str
    expected: str
    group: str | None
    source: str
    item: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Reading inputs


def _get_path(obj: Any, path: str) -> Any:
    """obj['a']['b'][0] for 'a.b.0'; KeyError naming the missing part."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                raise KeyError(part)
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit():
            idx = int(part)
            if not -len(cur) <= idx < len(cur):
                raise KeyError(part)
            cur = cur[idx]
        else:
            raise KeyError(part)
    return cur


def task_language(task: str) -> str:
    """The expected (output) language of an lm-eval task from its name.

    Looks, from the end of the name, for a 2-letter code ('xquad_de'), a language_Script pair
    ('belebele_deu_Latn', 'flores_eng_Latn-deu_Latn' -> the target 'deu_Latn') or a translation pair
    ('wmt16-en-de', 'flores_en-de' -> 'de'). Raises LahisError when the name carries no language.
    """
    tokens = [t for t in re.split(r"[_\-.:/ ]+", task) if t]
    for i in range(len(tokens) - 1, -1, -1):
        tok = tokens[i]
        if re.fullmatch(r"[A-Z][a-z]{3}", tok) and i > 0 and re.fullmatch(r"[a-z]{2,3}", tokens[i - 1]):
            try:
                return normalize_lang(f"{tokens[i - 1]}_{tok}")
            except LahisError:
                pass
        if re.fullmatch(r"[a-z]{2}", tok):
            try:
                return normalize_lang(tok)
            except LahisError:
                pass
    raise LahisError(f"cannot tell the expected language from the lm-eval task name '{task}': pass --expected LANG, "
                     "or --lang_field with the field that holds it (e.g. doc.lang)")


def _existing_input(input: str | Path) -> Path:
    """The input file or folder, ~ expanded; a LahisError naming it when it is not there."""
    path = Path(input).expanduser()
    if not path.exists():
        raise LahisError(f"input not found: {path}")
    return path


def _check_folder(path: Path, fmt: str) -> None:
    if path.is_dir() and fmt != "lm-eval":
        raise LahisError(f"{path} is a folder: only the lm-eval format reads folders (of samples_*.jsonl files)")


def _detect_format(path: Path, reader: "_Reader") -> str:
    if path.is_dir():
        return "lm-eval"
    if _SAMPLES_NAME.match(path.name):
        return "lm-eval"
    if path.suffix.lower() in (".txt", ".text"):
        return "text"
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    with io.StringIO(reader.text_of(path, keep=True)) as f:  # not UTF-8: named, never replaced silently
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # not JSON at all: plain text unless the name promises JSON lines
                return "jsonl" if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "text"
            if isinstance(rec, dict) and "doc_id" in rec and "filtered_resps" in rec:
                return "lm-eval"
            if isinstance(rec, dict) and "generation" in rec and ("expected_lang" in rec or "mask" in rec):
                return "evaluate"
            return "jsonl"
    return "jsonl"  # empty file: reported as such by the reader


def _task_and_date(f: Path) -> tuple[str, str]:
    """(task, run date) of an lm-eval samples file name (samples_<task>_<date>.jsonl); (stem, "") otherwise."""
    m = _SAMPLES_NAME.match(f.name)
    return (m.group("task"), m.group("date")) if m else (f.stem, "")


def _lm_eval_files(path: Path) -> list[tuple[Path, str, str]]:
    """[(samples file, task name, report group)] for a samples file or a folder of them (searched recursively).

    The group is the task name, or 'task (date)' when the folder holds several runs of one task."""
    files = [path] if path.is_file() else sorted(path.rglob("samples_*.jsonl"))
    parsed = [(f, *_task_and_date(f)) for f in files]
    runs = Counter(task for _, task, _ in parsed)
    out = [(f, task, f"{task} ({date})" if runs[task] > 1 and date else task) for f, task, date in parsed]
    if not out:
        raise LahisError(f"no lm-eval samples files (samples_<task>_<date>.jsonl) under {path}: run lm_eval with "
                         "--log_samples --output_path DIR and pass DIR or one of its samples files")
    return out


class _Reader:
    """Collects records and bad lines; raises on the first bad line unless skip_bad."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.records: list[AuditRecord] = []
        self.skipped: list[dict] = []
        self.n_skipped = 0
        self._kept: dict[Path, str] = {}

    def text_of(self, path: Path, keep: bool = False) -> str:
        """The file's text, decoded once: format detection keeps it for the read that follows."""
        text = self._kept.pop(path, None)
        if text is None:
            text = read_text(path, "audit input")  # not UTF-8: named, never replaced silently
        if keep:
            self._kept[path] = text
        return text

    def check_found(self, path: Path, found: int, what: str) -> None:
        """Refuse an input that gave nothing to audit, saying whether it was empty or all bad."""
        if found:
            return
        if self.n_skipped:
            raise LahisError(f"{path}: all {self.n_skipped} lines were bad (first: {self.skipped[0]['source']}: "
                             f"{self.skipped[0]['error']})")
        raise LahisError(f"{path}: no {what} to audit (the input is empty)")

    def bad(self, source: str, message: str) -> None:
        if not self.skip_bad:
            raise LahisError(f"{source}: {message} (fix the line, or pass --skip_bad to skip and count such lines)")
        self.n_skipped += 1
        if len(self.skipped) < _MAX_SKIPPED_LISTED:
            self.skipped.append({"source": source, "error": message})

    def expected_lang(self, source: str, value: Any, where: str) -> str | None:
        if not isinstance(value, str):
            self.bad(source, f"the expected language in {where} is {value!r}, not a language code")
            return None
        try:
            return normalize_lang(value)
        except LahisError as exc:
            self.bad(source, f"{exc} (in {where})")
            return None

    def json_lines(self, path: Path) -> Iterable[tuple[str, dict]]:
        with io.StringIO(self.text_of(path)) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                source = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.bad(source, f"invalid JSON ({exc.msg} at column {exc.colno})")
                    continue
                if not isinstance(rec, dict):
                    self.bad(source, f"expected a JSON object, got {type(rec).__name__}")
                    continue
                yield source, rec

    def csv_rows(self, path: Path) -> Iterable[tuple[str, dict]]:
        """(file:line where the row starts, row) of a CSV file with a header line (.tsv: tab-separated)."""
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # completions can be long
        with io.StringIO(self.text_of(path), newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if not reader.fieldnames:
                return
            start = reader.line_num + 1
            for rec in reader:
                source = f"{path}:{start}"
                start = reader.line_num + 1
                if None in rec:  # more cells than header columns
                    self.bad(source, f"{len(rec[None]) + len(reader.fieldnames)} cells for "
                                     f"{len(reader.fieldnames)} columns ({', '.join(reader.fieldnames)})")
                    continue
                yield source, rec

    def field(self, source: str, rec: dict, path: str, what: str, flag: str) -> tuple[bool, Any]:
        try:
            return True, _get_path(rec, path)
        except KeyError as exc:
            keys = ", ".join(list(rec)[:12])
            self.bad(source, f"no field '{path}' for the {what} (missing '{exc.args[0]}'; top-level fields: {keys}); "
                             f"pass {flag}")
            return False, None

    def missing(self, source: str, rec: dict, candidates: Sequence[str], what: str, flag: str) -> None:
        """None of the candidate fields is there."""
        if len(candidates) == 1:
            self.field(source, rec, candidates[0], what, flag)
            return
        keys = ", ".join(list(rec)[:12])
        self.bad(source, f"no field for the {what}: none of {', '.join(candidates)} is there (top-level fields: "
                         f"{keys}); pass {flag}")

    def text(self, source: str, value: Any, path: str) -> str | None:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]  # lm-eval keeps one response per request in a list
        if not isinstance(value, str):
            self.bad(source, f"field '{path}' holds {type(value).__name__} {value!r:.60}, not text")
            return None
        return value


def read_records(input: str | Path, format: str = "auto", text_field: str | None = None,
                 lang_field: str | None = None, expected: str | None = None, group_field: str | None = None,
                 skip_bad: bool = False) -> tuple[list[AuditRecord], dict]:
    """Read the texts to audit. Returns (records, info) where info has 'format', 'files', 'skipped' (count) and
    'skipped_lines' (the first 50, with file:line and the error). Raises LahisError on bad input."""
    path = _existing_input(input)
    if format not in FORMATS:
        raise LahisError(f"unknown input format {format!r}: choose one of {', '.join(FORMATS)}")
    reader = _Reader(skip_bad)
    fmt = _detect_format(path, reader) if format == "auto" else format
    _check_folder(path, fmt)
    fixed = normalize_lang(expected) if expected is not None else None
    files: list[str] = []

    if fmt == "text":
        if fixed is None:
            raise LahisError(f"plain-text input ({path}) needs --expected LANG: the language every line should be in")
        files.append(str(path))
        with io.StringIO(reader.text_of(path)) as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    reader.records.append(AuditRecord(line, fixed, None, f"{path}:{lineno}"))

    elif fmt == "lm-eval":
        for file, task, task_group in _lm_eval_files(path):
            files.append(str(file))
            task_lang = None
            if fixed is None and lang_field is None:
                task_lang = task_language(task)
            rows = list(reader.json_lines(file))
            filters = {rec.get("filter") for _, rec in rows}
            tfield = text_field or "filtered_resps"
            for source, rec in rows:
                group = task_group if len(filters) <= 1 else f"{task_group}[{rec.get('filter')}]"
                if group_field is not None:
                    ok, g = reader.field(source, rec, group_field, "group", "--group_field")
                    if not ok:
                        continue
                    group = str(g)
                ok, value = reader.field(source, rec, tfield, "text", "--text_field")
                if not ok:
                    continue
                if text_field is None and isinstance(value, list) and value and not isinstance(value[0], str):
                    reader.bad(source, f"task '{task}' generated no text (filtered_resps = {value!r:.60}): only "
                                       "generate_until tasks can be audited, not loglikelihood ones")
                    continue
                text = reader.text(source, value, tfield)
                if text is None:
                    continue
                if fixed is not None:
                    lang = fixed
                elif lang_field is not None:
                    ok, value = reader.field(source, rec, lang_field, "expected language", "--lang_field or --expected")
                    if not ok:
                        continue
                    lang = reader.expected_lang(source, value, f"field '{lang_field}'")
                    if lang is None:
                        continue
                else:
                    lang = task_lang
                item = None
                if rec.get("doc_id") is not None:
                    item = f"{task}[{rec.get('filter')}]:{rec['doc_id']}" if len(filters) > 1 else \
                        f"{task}:{rec['doc_id']}"
                reader.records.append(AuditRecord(text, lang, group, source, item))

    else:  # jsonl / evaluate / csv
        files.append(str(path))
        if fmt == "evaluate":
            text_fields = (text_field,) if text_field else ("generation",)
            lang_fields = (lang_field,) if lang_field else ("expected_lang", "lang")
            gfield = group_field or "mask"
        else:
            text_fields = (text_field,) if text_field else TEXT_FIELDS
            lang_fields = (lang_field,) if lang_field else LANG_FIELDS
            gfield = group_field
        rows = reader.csv_rows(path) if fmt == "csv" else reader.json_lines(path)
        for source, rec in rows:
            tpath = next((f for f in text_fields if _has(rec, f)), None)
            if tpath is None:
                reader.missing(source, rec, text_fields, "text", "--text_field")
                continue
            text = reader.text(source, _get_path(rec, tpath), tpath)
            if text is None:
                continue
            if fixed is not None:
                lang = fixed
            else:
                lpath = next((f for f in lang_fields if _has(rec, f) and _get_path(rec, f) is not None), None)
                if lpath is None:
                    reader.missing(source, rec, lang_fields, "expected language", "--lang_field or --expected")
                    continue
                lang = reader.expected_lang(source, _get_path(rec, lpath), f"field '{lpath}'")
                if lang is None:
                    continue
            group = None
            if gfield is not None:
                if _has(rec, gfield):
                    group = _get_path(rec, gfield)
                    group = None if group is None else str(group)
                elif group_field is not None:  # asked for explicitly: its absence is an error
                    reader.field(source, rec, gfield, "group", "--group_field")
                    continue
            item = next((str(rec[f]) for f in ID_FIELDS if rec.get(f) not in (None, "")), None)
            reader.records.append(AuditRecord(text, lang, group, source, item))

    reader.check_found(path, len(reader.records), "records")
    info = {"format": fmt, "files": files, "skipped": reader.n_skipped, "skipped_lines": reader.skipped}
    return reader.records, info


def _has(rec: dict, path: str) -> bool:
    try:
        _get_path(rec, path)
        return True
    except KeyError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# Report


def _reason_kind(reason: str | None) -> str:
    return (reason or "").split(" (")[0]


def _predict(identifier: LanguageIdentifier, texts: Sequence[str], progress: bool | None) -> list[LangPrediction]:
    from tqdm.auto import tqdm

    chunk = 2000
    out: list[LangPrediction] = []
    with tqdm(total=len(texts), desc=f"language ID ({identifier.name})", unit="text", disable=progress is False,
              leave=False) as bar:
        for i in range(0, len(texts), chunk):
            out.extend(identifier.predict(texts[i:i + chunk]))
            bar.update(min(chunk, len(texts) - i))
    return out


def audit_texts(texts: Sequence[str], expected: Sequence[str] | str, groups: Sequence[str | None] | None = None,
                identifier: LanguageIdentifier | None = None, top: int = 3, max_off_target: float | None = None,
                undetermined_as_off: bool = False, progress: bool | None = False,
                predictions: Sequence[LangPrediction] | None = None) -> dict:
    """Audit texts against expected languages (one code for all, or one per text); returns the report dict.

    The report has 'rows' (one per group and expected language: n, on_target, off_target, undetermined, their
    rates, top_wrong, predicted counts, undetermined_reasons), totals, and 'gate' when max_off_target is set.
    """
    texts = list(texts)
    if isinstance(expected, str):
        expected = [normalize_lang(expected)] * len(texts)
    else:
        expected = [normalize_lang(e) for e in expected]
    groups = [None] * len(texts) if groups is None else list(groups)
    if not len(texts) == len(expected) == len(groups):
        raise LahisError(f"texts ({len(texts)}), expected languages ({len(expected)}) and groups ({len(groups)}) "
                         "must have one entry per text")
    identifier = identifier or get_identifier()
    preds = list(predictions) if predictions is not None else _predict(identifier, texts, progress)
    return _build_report(expected, groups, preds, identifier, top, max_off_target, undetermined_as_off)


def _rate(k: int, n: int) -> float:
    return k / n if n else 0.0


def _ci(k: int, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """The Wilson score interval of k / n as [low, high]; None when n is 0."""
    if not n:
        return None
    low, high = wilson_interval(k, n, confidence)
    return [float(low), float(high)]


def _counts(n: int, on: int, und: int) -> dict:
    """n, the on-target, off-target and undetermined counts of n outputs, and their rates."""
    off = n - on - und
    return {"n": n, "on_target": on, "off_target": off, "undetermined": und,
            "on_target_rate": _rate(on, n), "off_target_rate": _rate(off, n), "undetermined_rate": _rate(und, n)}


def _with_cis(row: dict) -> dict:
    """Add on_target_ci, off_target_ci, undetermined_ci (Wilson) to a dict with n and the three counts."""
    for key in ("on_target", "off_target", "undetermined"):
        row[f"{key}_ci"] = _ci(row[key], row["n"])
    return row


def _build_report(expected: Sequence[str], groups: Sequence[str | None], preds: Sequence[LangPrediction],
                  identifier: LanguageIdentifier, top: int, max_off_target: float | None,
                  undetermined_as_off: bool) -> dict:
    if max_off_target is not None and not 0.0 <= max_off_target <= 1.0:
        raise LahisError(f"--max_off_target is a rate between 0 and 1, got {max_off_target}")
    keys: dict[tuple, dict] = {}
    for exp, group, p in zip(expected, groups, preds):
        row = keys.get((group, exp))
        if row is None:
            row = keys[(group, exp)] = {"predicted": Counter(), "reasons": Counter()}
        row["predicted"][p.lang or UND] += 1
        if not p.determined:
            row["reasons"][_reason_kind(p.reason)] += 1
    rows = []
    has_group = any(g is not None for g in groups)
    # groups in first-seen order (a baseline before its masked runs), languages sorted within a group
    group_order = list(dict.fromkeys(g for g, _ in keys))
    for group in group_order:
        for (g, exp) in sorted(k for k in keys if k[0] == group):
            predicted, reasons = keys[(g, exp)]["predicted"], keys[(g, exp)]["reasons"]
            n = sum(predicted.values())
            on, und = predicted.get(exp, 0), predicted.get(UND, 0)
            wrong = [(lang, c) for lang, c in predicted.most_common() if lang not in (exp, UND)]
            rows.append(_with_cis({
                "group": g, "expected": exp, **_counts(n, on, und),
                "top_wrong": [[lang, c] for lang, c in wrong[:top]],
                "predicted": dict(predicted.most_common()),
                "undetermined_reasons": dict(reasons.most_common()),
            }))
    n = len(preds)
    on = sum(r["on_target"] for r in rows)
    und = sum(r["undetermined"] for r in rows)
    report = _with_cis({
        "backend": identifier.name, "min_confidence": identifier.min_confidence, "min_chars": identifier.min_chars,
        "grouped": has_group, "confidence": CONFIDENCE, "interval": INTERVAL, **_counts(n, on, und),
    })
    report["rows"] = rows  # after the totals' intervals in the JSON
    if max_off_target is not None:
        failed = []
        for r in rows:
            rate = r["off_target_rate"] + (r["undetermined_rate"] if undetermined_as_off else 0.0)
            if rate > max_off_target:
                failed.append({"group": r["group"], "expected": r["expected"], "rate": rate})
        report["gate"] = {"max_off_target": max_off_target, "undetermined_as_off": undetermined_as_off,
                          "passed": not failed, "failed": failed}
    return report


# ---------------------------------------------------------------------------------------------------------------
# --compare: two runs on the same items


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
            "off_target_ci_a": _ci(off_a, n), "off_target_ci_b": _ci(off_b, n),
            "a_only_off": int(np.sum((ak == 1) & (bk == 0))), "b_only_off": int(np.sum((ak == 0) & (bk == 1))),
            "change": d["effect"], "change_ci": d["ci"], "p_value": d["p_value"], "method": d["method"]}


def compare_runs(a: Sequence[AuditRecord], a_preds: Sequence[LangPrediction], b: Sequence[AuditRecord],
                 b_preds: Sequence[LangPrediction], pairs: Sequence[tuple[int, int]], matched_by: str = "item id",
                 undetermined_as_off: bool = False) -> dict:
    """The change in off-target rate from run A to run B on the same items, per expected language and overall.

    Per item the outcome is 1 (off-target) or 0 (on-target); pairs where either output is undetermined are dropped
    (counted in ``dropped_undetermined``) unless undetermined_as_off (then undetermined = off-target). ``change`` =
    off-target rate of B - that of A on the kept pairs, with the paired interval and exact McNemar p of
    eval.stats.paired_difference for 0/1 outcomes (``method`` names them); ``off_target_ci_a`` / ``_b``: Wilson
    intervals of the two rates on the kept pairs.
    """
    a_off = np.array([_off_value(a_preds[i], a[i].expected, undetermined_as_off) for i, _ in pairs], dtype=float)
    b_off = np.array([_off_value(b_preds[j], b[j].expected, undetermined_as_off) for _, j in pairs], dtype=float)
    langs = np.array([a[i].expected for i, _ in pairs])
    rows = [_compare_row(lang, a_off[langs == lang], b_off[langs == lang]) for lang in sorted(set(langs.tolist()))]
    if pairs:
        rows.append(_compare_row("all", a_off, b_off))
    return {"matched_by": matched_by, "n_items": len(pairs), "undetermined_as_off": undetermined_as_off,
            "confidence": CONFIDENCE, "method": rows[0]["method"] if rows else METHOD_MCNEMAR, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _row_name(row: dict) -> str:
    return f"{row['group']} / {row['expected']}" if row["group"] is not None else row["expected"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _interval(ci: Sequence[float] | None, signed: bool = False) -> str:
    """'[8.1, 18.0]' (percent) for a [low, high] fraction interval; '' when there is none."""
    if ci is None or ci[0] is None or ci[1] is None:
        return ""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(100 * ci[0])}, {fmt.format(100 * ci[1])}]"


def _pct_ci(x: float | None, ci: Sequence[float] | None) -> str:
    """'12.5% [8.1, 18.0]'."""
    if x is None:
        return "-"
    return f"{_pct(x)} {_interval(ci)}".rstrip()


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def render_markdown(report: dict, max_columns: int = 12) -> str:
    """The report as Markdown: summary, per-language table, confusion table, the comparison, skipped lines."""
    if report.get("metric") == "lcb":
        return render_lcb_markdown(report)
    rows = report["rows"]
    grouped = report["grouped"]
    lines = ["# Off-target language audit", ""]
    if report.get("input"):
        lines.append(f"- input: `{report['input']}` (format: {report.get('format')})")
    lines += [f"- language ID: {report['backend']}, min confidence {report['min_confidence']:g}, "
              f"min letters {report['min_chars']}",
              f"- texts: {report['n']}; on-target {_pct_ci(report['on_target_rate'], report.get('on_target_ci'))}, "
              f"off-target {_pct_ci(report['off_target_rate'], report.get('off_target_ci'))}, undetermined "
              f"{_pct_ci(report['undetermined_rate'], report.get('undetermined_ci'))}",
              f"- [low, high]: {100 * report.get('confidence', CONFIDENCE):g}% {report.get('interval', INTERVAL)} "
              "interval of each rate, in %"]
    if report.get("skipped"):
        lines.append(f"- skipped bad lines: {report['skipped']}")
    gate = report.get("gate")
    if gate:
        verdict = "PASSED" if gate["passed"] else "FAILED: " + ", ".join(
            f"{_row_name(f)} {_pct(f['rate'])}" for f in gate["failed"])
        lines.append(f"- gate: off-target rate <= {gate['max_off_target']:g}"
                     f"{' (undetermined counted as off-target)' if gate['undetermined_as_off'] else ''}: {verdict}")
    lines += ["", "## Per expected language", ""]
    lines += _language_table(rows, grouped)

    # confusion table: expected (rows) x predicted (columns); the expected languages first, then the most frequent
    # other predictions, the rest summed in 'other'
    total = Counter()
    for r in rows:
        total.update(r["predicted"])
    expected_langs = list(dict.fromkeys(r["expected"] for r in rows))
    others = [lang for lang, _ in total.most_common() if lang not in expected_langs and lang != UND]
    cols = [lang for lang in expected_langs if lang in total] + others
    shown = cols[:max_columns]
    rest = cols[max_columns:]
    header = shown + (["other"] if rest else []) + [UND]
    lines += ["", "## Confusion table (rows: expected, columns: identified)", ""]
    lines += ["| " + " | ".join(["expected"] + header) + " |", "|" + "|".join(["---"] * (len(header) + 1)) + "|"]
    for r in rows:
        p = r["predicted"]
        cells = [str(p.get(c, 0)) for c in shown]
        if rest:
            cells.append(str(sum(p.get(c, 0) for c in rest)))
        cells.append(str(p.get(UND, 0)))
        lines.append("| " + " | ".join([_md_escape(_row_name(r))] + cells) + " |")
    if report.get("compare"):
        lines += [""] + _compare_markdown(report)
    lines += _skipped_markdown(report)
    return "\n".join(lines) + "\n"


def _skipped_markdown(report: dict) -> list[str]:
    """The 'Skipped lines' section of a markdown report (the first 50 with file:line and error), or nothing."""
    if not report.get("skipped_lines"):
        return []
    lines = ["", f"## Skipped lines ({report['skipped']})", ""]
    lines += [f"- `{s['source']}`: {s['error']}" for s in report["skipped_lines"]]
    if report["skipped"] > len(report["skipped_lines"]):
        lines.append(f"- ... and {report['skipped'] - len(report['skipped_lines'])} more")
    return lines


def _language_table(rows: Sequence[dict], grouped: bool) -> list[str]:
    head = (["group"] if grouped else []) + ["expected", "n", "on-target", "off-target", "undetermined",
                                              "top wrong languages", "undetermined because"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        wrong = ", ".join(f"{lang} ({c})" for lang, c in r["top_wrong"]) or "-"
        why = ", ".join(f"{k} ({c})" for k, c in r["undetermined_reasons"].items()) or "-"
        cells = ([_md_escape(r["group"])] if grouped else []) + [
            r["expected"], str(r["n"]), f"{r['on_target']} ({_pct_ci(r['on_target_rate'], r.get('on_target_ci'))})",
            f"{r['off_target']} ({_pct_ci(r['off_target_rate'], r.get('off_target_ci'))})",
            f"{r['undetermined']} ({_pct_ci(r['undetermined_rate'], r.get('undetermined_ci'))})", wrong, why]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _points(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _p(p: float | None) -> str:
    return "-" if p is None else format_p(p)


def _compare_markdown(report: dict) -> list[str]:
    b, c = report["compare"], report["compare"]["comparison"]
    dropped = sum(r["dropped_undetermined"] for r in c["rows"] if r["expected"] != "all")
    rule = ("undetermined outputs count as off-target" if c["undetermined_as_off"] else
            f"pairs where either output is undetermined are dropped ({dropped} of {c['n_items']})")
    lines = ["## Change in off-target rate: B - A", "",
             f"- A: `{report.get('input')}`; B: `{b['input']}` (format: {b.get('format')}); {c['n_items']} items "
             f"matched by {c['matched_by']}",
             f"- per item 1 = off-target, 0 = on-target; {rule}; change = B - A in percentage points on the kept "
             f"pairs with its {100 * c['confidence']:g}% interval and p ({c['method']}); A / B off-target: rates on "
             "the kept pairs with Wilson intervals",
             f"- B overall: texts {b['n']}; on-target {_pct_ci(b['on_target_rate'], b.get('on_target_ci'))}, "
             f"off-target {_pct_ci(b['off_target_rate'], b.get('off_target_ci'))}, undetermined "
             f"{_pct_ci(b['undetermined_rate'], b.get('undetermined_ci'))}", "",
             "| expected | items | pairs | dropped | A off-target | B off-target | A only off | B only off | "
             "change (points) | p (McNemar) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in c["rows"]:
        name = "**all**" if r["expected"] == "all" else r["expected"]
        lines.append(f"| {name} | {r['n_items']} | {r['n_pairs']} | {r['dropped_undetermined']} | "
                     f"{_pct_ci(r['off_target_rate_a'], r['off_target_ci_a'])} | "
                     f"{_pct_ci(r['off_target_rate_b'], r['off_target_ci_b'])} | {r['a_only_off']} | "
                     f"{r['b_only_off']} | {_points(r['change'])} {_interval(r['change_ci'], signed=True)} | "
                     f"{_p(r['p_value'])} |")
    lines += ["", "### B per expected language", ""] + _language_table(b["rows"], b["grouped"])
    return lines


def _compare_summary(report: dict) -> str:
    c = report["compare"]["comparison"]
    out = [f"change in off-target rate B - A ({c['matched_by']}; "
           + ("undetermined = off-target)" if c["undetermined_as_off"] else "pairs with an undetermined output "
              "dropped)"),
           f"{'expected':<8}  {'pairs':>5}  {'dropped':>7}  {'A off':>6}  {'B off':>6}  "
           f"{'change [95% CI] (points)':<26}  p (McNemar)"]
    for r in c["rows"]:
        a = "-" if r["off_target_rate_a"] is None else _pct(r["off_target_rate_a"])
        b = "-" if r["off_target_rate_b"] is None else _pct(r["off_target_rate_b"])
        change = f"{_points(r['change'])} {_interval(r['change_ci'], signed=True)}"
        out.append(f"{r['expected']:<8}  {r['n_pairs']:>5}  {r['dropped_undetermined']:>7}  {a:>6}  {b:>6}  "
                   f"{change:<26}  {_p(r['p_value'])}")
    return "\n".join(out)


def _err(values: Sequence[float], cis: Sequence[Sequence[float] | None]) -> np.ndarray:
    """matplotlib xerr (2 x n) of values with [low, high] intervals (0 where there is none)."""
    lo = [v - c[0] if c is not None and c[0] is not None else 0.0 for v, c in zip(values, cis)]
    hi = [c[1] - v if c is not None and c[1] is not None else 0.0 for v, c in zip(values, cis)]
    return np.maximum(np.array([lo, hi], dtype=float), 0.0)


_COLORS = {"on": "#2e7d32", "off": "#c62828", "und": "#9e9e9e"}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [f"{_row_name(r)}  (n={r['n']})" for r in rows]
    height = 1.5 + 0.55 * len(rows)  # inches: room for title, axis and legend, plus three bars per row
    fig, ax = plt.subplots(figsize=(8, height))
    y = np.arange(len(rows))[::-1].astype(float)  # first row on top
    bar = 0.26
    for offset, key, label, color in ((bar, "on_target", "on-target", _COLORS["on"]),
                                      (0.0, "off_target", "off-target", _COLORS["off"]),
                                      (-bar, "undetermined", "undetermined", _COLORS["und"])):
        values = [r[f"{key}_rate"] for r in rows]
        ax.barh(y + offset, values, height=bar, color=color, label=label,
                xerr=_err(values, [r.get(f"{key}_ci") for r in rows]),
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#212121"})
    for yi, r in zip(y, rows):
        if r["top_wrong"]:
            ax.text(1.01, yi, ", ".join(lang for lang, _ in r["top_wrong"]), va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    gate = report.get("gate")
    if gate:  # rows above the --max_off_target rate get red labels
        failed = {(f["group"], f["expected"]) for f in gate["failed"]}
        for tick, r in zip(ax.get_yticklabels(), rows):
            if (r["group"], r["expected"]) in failed:
                tick.set_color(_COLORS["off"])
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of texts, {100 * report.get('confidence', CONFIDENCE):g}% Wilson intervals "
                  "(right: most frequent wrong languages)", fontsize=9)
    ax.set_title(f"Language of the outputs vs the expected language ({report['backend']})", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1))
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _plot_compare(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = report["compare"]["comparison"]
    rows = [r for r in c["rows"] if r["change"] is not None]
    height = 1.6 + 0.35 * max(1, len(rows))
    fig, ax = plt.subplots(figsize=(7, height))
    y = np.arange(len(rows))[::-1].astype(float)
    values = [100 * r["change"] for r in rows]
    cis = [[100 * r["change_ci"][0], 100 * r["change_ci"][1]] for r in rows]
    colors = [_COLORS["off"] if v > 0 else _COLORS["on"] if v < 0 else _COLORS["und"] for v in values]
    ax.axvline(0, color="#616161", linewidth=0.8, linestyle="--")
    for yi, v, ci, color in zip(y, values, cis, colors):
        ax.errorbar([v], [yi], xerr=_err([v], [ci]), fmt="o", color=color, ecolor=color, capsize=3, markersize=5)
    ax.set_yticks(y, [f"{r['expected']}  (pairs {r['n_pairs']}, p {_p(r['p_value'])})" for r in rows], fontsize=8)
    ax.set_xlabel(f"change in off-target rate, B - A (percentage points; {100 * c['confidence']:g}% "
                  f"{c['method'].split(',')[0]})", fontsize=9)
    ax.set_title("Off-target rate: B vs A on the same items", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path, plot: bool = True,
                 details: list[dict] | None = None) -> dict[str, Path]:
    """Write audit.json, audit.md, audit.png (compare.png with --compare; examples.jsonl with details) under
    out_dir, all or none: every file goes to a temporary name first and they replace the old ones only once all
    are written."""
    out_dir = Path(out_dir)
    targets = {"json": out_dir / "audit.json", "markdown": out_dir / "audit.md"}
    if plot:
        targets["png"] = out_dir / "audit.png"
        if report.get("compare"):
            targets["compare_png"] = out_dir / "compare.png"
    if details is not None:
        targets["examples"] = out_dir / "examples.jsonl"
    lcb = report.get("metric") == "lcb"
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p)) for k, p in targets.items()}
        tmp["json"].write_text(json.dumps(_json_safe(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                               encoding="utf-8")
        tmp["markdown"].write_text(render_markdown(report), encoding="utf-8")
        if plot:
            (_plot_lcb if lcb else _plot)(report, tmp["png"])
            if "compare_png" in tmp:
                _plot_compare(report, tmp["compare_png"])
        if details is not None:
            with tmp["examples"].open("w", encoding="utf-8") as f:
                for d in details:
                    f.write(json.dumps(_json_safe(d), ensure_ascii=False) + "\n")
    return targets


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python numbers, tuples -> lists (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _summary(report: dict) -> str:
    if report.get("metric") == "lcb":
        return _lcb_summary(report)
    name_w = max([len(_row_name(r)) for r in report["rows"]] + [8])
    out = [f"{'expected':<{name_w}}  {'n':>6}  {'on':>7}  {'off [95% CI]':<20}  {'undet':>7}  top wrong"]

    def off(r):
        return f"{_pct(r['off_target_rate'])} {_interval(r.get('off_target_ci'))}".rstrip()

    for r in report["rows"]:
        wrong = ", ".join(f"{lang}:{c}" for lang, c in r["top_wrong"])
        out.append(f"{_row_name(r):<{name_w}}  {r['n']:>6}  {_pct(r['on_target_rate']):>7}  {off(r):<20}  "
                   f"{_pct(r['undetermined_rate']):>7}  {wrong}".rstrip())
    out.append(f"{'all':<{name_w}}  {report['n']:>6}  {_pct(report['on_target_rate']):>7}  {off(report):<20}  "
               f"{_pct(report['undetermined_rate']):>7}")
    if report.get("skipped"):
        out.append(f"skipped {report['skipped']} bad lines")
    if report.get("compare"):
        out += ["", _compare_summary(report)]
    return "\n".join(out)


def default_out_dir(input: Path) -> Path:
    input = Path(input)
    return input / "audit" if input.is_dir() else input.with_name(input.stem + ".audit")


def run_audit(input: str | Path, format: str = "auto", text_field: str | None = None,
              lang_field: str | None = None, expected: str | None = None, group_field: str | None = None,
              out: str | Path | None = None, backend: str | None = None, lid_model: str | Path | None = None,
              min_confidence: float = 0.5, min_chars: int | None = None, top: int = 3,
              max_off_target: float | None = None, undetermined_as_off: bool = False, skip_bad: bool = False,
              plot: bool = True, details: bool = False, progress: bool | None = None, metric: str = "offtarget",
              compare: str | Path | None = None) -> dict:
    """Read INPUT, identify languages, write the report files; returns the report (with 'written').

    metric: 'offtarget' (the whole-text audit) or 'lcb' (the Language Confusion Benchmark, `run_lcb_audit`).
    compare: a second input of the same items (another run): the report then holds B's rows and, per expected
    language, the change in off-target rate B - A with its paired interval and exact McNemar p (`compare_runs`).
    """
    if metric not in METRICS:
        raise LahisError(f"unknown --metric {metric!r}: choose offtarget (whole-text off-target rates) or lcb "
                         "(the Language Confusion Benchmark's line- and word-level pass rates)")
    if metric == "lcb":
        offtarget_only = [("--expected", expected), ("--text_field", text_field), ("--lang_field", lang_field),
                          ("--group_field", group_field), ("--max_off_target", max_off_target),
                          ("--undetermined_as_off", undetermined_as_off or None), ("--compare", compare)]
        used = [flag for flag, value in offtarget_only if value is not None]
        if used:
            raise LahisError(f"{used[0]} does not apply to --metric lcb (its completions name their language, "
                             "source and task in their own fields): drop it, or use --metric offtarget")
        return run_lcb_audit(input, format, out, backend, lid_model, min_confidence, min_chars, skip_bad, plot,
                             details, progress)
    if max_off_target is not None and not 0.0 <= max_off_target <= 1.0:
        raise LahisError(f"--max_off_target is a rate between 0 and 1, got {max_off_target}")
    identifier = get_identifier(backend, lid_model, min_confidence, min_chars)
    records, info = read_records(input, format, text_field, lang_field, expected, group_field, skip_bad)
    pairs = None
    if compare is not None:
        if Path(compare).expanduser().resolve() == Path(input).expanduser().resolve():
            raise LahisError(f"--compare needs a second run: {compare} is the input itself")
        b_records, b_info = read_records(compare, format, text_field, lang_field, expected, group_field, skip_bad)
        pairs, matched_by = match_items(records, b_records, "A", "B", info["skipped"], b_info["skipped"])
    texts = [r.text for r in records]
    preds = _predict(identifier, texts, progress)
    report = {"input": str(input), "format": info["format"], "files": info["files"],
              **audit_texts(texts, [r.expected for r in records], [r.group for r in records], identifier, top,
                            max_off_target, undetermined_as_off, predictions=preds),
              "skipped": info["skipped"], "skipped_lines": info["skipped_lines"]}
    if compare is not None:
        b_texts = [r.text for r in b_records]
        b_preds = _predict(identifier, b_texts, progress)
        b_report = audit_texts(b_texts, [r.expected for r in b_records], [r.group for r in b_records], identifier,
                               top, predictions=b_preds)
        for key in ("backend", "min_confidence", "min_chars", "confidence", "interval"):
            b_report.pop(key, None)
        report["compare"] = {
            "input": str(compare), "format": b_info["format"], "files": b_info["files"], **b_report,
            "skipped": b_info["skipped"], "skipped_lines": b_info["skipped_lines"],
            "comparison": compare_runs(records, preds, b_records, b_preds, pairs, matched_by, undetermined_as_off)}
    rows_detail = None
    if details:
        rows_detail = [{"source": r.source, "item": r.item, "group": r.group, "expected": r.expected, "lang": p.lang,
                        "script": p.script, "confidence": round(p.confidence, 4), "label": p.label,
                        "reason": p.reason, "on_target": p.lang == r.expected, "text": r.text}
                       for r, p in zip(records, preds)]
    out_dir = Path(out) if out is not None else default_out_dir(Path(input))
    written = write_report(report, out_dir, plot=plot, details=rows_detail)
    report["written"] = {k: str(v) for k, v in written.items()}
    return report


# ---------------------------------------------------------------------------------------------------------------
# --metric lcb: the Language Confusion Benchmark


LCB_FORMATS = ("auto", "lm-eval", "jsonl", "csv")
LCB_FIELDS = ("completion", "language", "source", "task")


@dataclass(frozen=True)
class LCBRecord:
    """One completion of the benchmark: its text, expected language, source, task, model (None when the input
    names none) and where it was read (file:line)."""

    completion: str
    language: str
    source: str
    task: str
    model: str | None
    where: str


def _lcb_row(reader: _Reader, where: str, rec: dict, model: Any) -> LCBRecord | None:
    missing = [k for k in LCB_FIELDS if k not in rec]
    if missing:
        reader.bad(where, f"no '{missing[0]}' (the LCB layout has {', '.join(LCB_FIELDS)} and optionally model; "
                          f"fields here: {', '.join(list(rec)[:12])})")
        return None
    text, lang, task, source = rec["completion"], rec["language"], rec["task"], rec["source"]
    if isinstance(text, list) and len(text) == 1:
        text = text[0]
    if text is None:
        text = ""
    if not isinstance(text, str):
        reader.bad(where, f"the completion is {type(text).__name__} {text!r:.60}, not text")
        return None
    if task not in LCB_TASKS:
        reader.bad(where, f"unknown LCB task {task!r}: the benchmark's tasks are {', '.join(LCB_TASKS)}")
        return None
    if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2,3}", lang):
        reader.bad(where, f"the language {lang!r} is not a lowercase code as the benchmark writes it "
                          f"({', '.join(LCB_LANGUAGES)})")
        return None
    if not isinstance(source, str) or not source:
        reader.bad(where, f"the source {source!r} is not a name (e.g. okapi, sharegpt, aya_human_annotated)")
        return None
    return LCBRecord(text, lang, source, task, None if model in (None, "") else str(model), where)


def _lm_eval_run_labels(files: Sequence[Path]) -> dict[Path, str]:
    """A model label per samples file: its folder's name (lm-eval writes OUTPUT/<model>/samples_...), with the run's
    date when one folder holds several runs."""
    date_of = {f: _task_and_date(f)[1] for f in files}
    dates: dict[Path, set] = {}
    for f, date in date_of.items():
        dates.setdefault(f.parent, set()).add(date)
    return {f: f"{f.parent.name} ({date})" if len(dates[f.parent]) > 1 and date else f.parent.name
            for f, date in date_of.items()}


def read_lcb_records(input: str | Path, format: str = "auto",
                     skip_bad: bool = False) -> tuple[list[LCBRecord], dict]:
    """The completions of a Language Confusion Benchmark run.

    Inputs: the benchmark's completion layout as CSV (its outputs/*.csv) or JSONL, with ``completion``,
    ``language``, ``source``, ``task`` and optionally ``model``; or lm-eval samples files of this package's
    ``lcb_*`` tasks (a file, or the --output_path folder; the text is ``filtered_resps[0]``, language, source and
    task come from the doc, the model label from the folder lm-eval wrote them to). Returns (records, info) like
    `read_records`; raises LahisError with the file and line on bad input (unless skip_bad).
    """
    path = _existing_input(input)
    if format not in LCB_FORMATS:
        raise LahisError(f"--metric lcb reads {', '.join(LCB_FORMATS[1:])} (or auto), not --format {format}")
    reader = _Reader(skip_bad)
    fmt = _detect_format(path, reader) if format == "auto" else format
    if fmt == "evaluate":
        fmt = "jsonl"
    if fmt == "text":
        raise LahisError(f"{path}: --metric lcb needs the benchmark's completion layout (CSV or JSONL with "
                         f"{', '.join(LCB_FIELDS)}, optionally model) or lm-eval samples of the lcb_* tasks")
    _check_folder(path, fmt)
    records: list[LCBRecord] = []
    files: list[str] = []
    if fmt == "lm-eval":
        found = _lm_eval_files(path)
        labels = _lm_eval_run_labels([f for f, _, _ in found])
        for file, task_name, _ in found:
            files.append(str(file))
            rows = list(reader.json_lines(file))
            filters = {rec.get("filter") for _, rec in rows}
            for where, rec in rows:
                doc = rec.get("doc")
                if not isinstance(doc, dict) or any(k not in doc for k in ("language", "source", "task")):
                    reader.bad(where, f"task '{task_name}': the sample's doc has no language, source and task (the "
                                      "lcb_* tasks of this package write them); audit other tasks with --metric "
                                      "offtarget")
                    continue
                text = rec.get("filtered_resps")
                if isinstance(text, list) and text and not isinstance(text[0], str):
                    reader.bad(where, f"task '{task_name}' generated no text (filtered_resps = {text!r:.60})")
                    continue
                label = labels[file] + (f" [{rec.get('filter')}]" if len(filters) > 1 else "")
                r = _lcb_row(reader, where, {**doc, "completion": text}, label)
                if r is not None:
                    records.append(r)
    else:
        files.append(str(path))
        rows = reader.csv_rows(path) if fmt == "csv" else reader.json_lines(path)
        for where, rec in rows:
            r = _lcb_row(reader, where, rec, rec.get("model"))
            if r is not None:
                records.append(r)
    reader.check_found(path, len(records), "completions")
    return records, {"format": fmt, "files": files, "skipped": reader.n_skipped, "skipped_lines": reader.skipped}


def _whole_counts(preds: Sequence[LangPrediction], langs: Sequence[str]) -> dict:
    n = len(preds)
    on = sum(p.lang == lang for p, lang in zip(preds, langs))
    und = sum(not p.determined for p in preds)
    return _with_cis(_counts(n, on, und))


def lcb_audit(records: Sequence[LCBRecord], identifier: LanguageIdentifier | None = None, lcb_lid=None,
              progress: bool | None = False, predictions: Sequence[LangPrediction] | None = None,
              judgements: Optional[list] = None) -> dict:
    """The benchmark's figures (eval.lcb.lcb_report) with Wilson intervals, and the whole-text off-target rates.

    Adds to lcb_report's dict, per (source, language) group: ``lpr_ci`` (Wilson interval of the scored completions
    without a line error), ``wpr_ci`` (of those without a word error, among the scored ones without a line error)
    and ``whole_text`` (n, on/off-target and undetermined counts, rates and Wilson intervals of `whole_text` of
    each completion, language ID `identifier`); per language, per source and overall the same ``whole_text``
    pooled over their completions, and ``lpr_ci`` / ``wpr_ci`` where the figure is one proportion (a language with
    one source, a source with one language), else None: the means over sources and languages are no proportions.
    lcb_lid: the line language ID (eval.lcb.lcb_identifier; default the identifier's fastText model, read raw).
    judgements: a list to fill with each record's `lcb_completion` judgement (eval.lcb.lcb_report's).
    """
    identifier = identifier or get_identifier()
    lcb_lid = lcb_identifier(identifier if lcb_lid is None else lcb_lid)
    rows = [{"completion": r.completion, "language": r.language, "source": r.source, "task": r.task,
             "model": r.model} for r in records]
    report = lcb_report(rows, lcb_lid, judgements=judgements)
    langs = [normalize_lang(r.language) for r in records]
    preds = list(predictions) if predictions is not None else _predict(
        identifier, [whole_text(r.completion) for r in records], progress)
    by: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        by.setdefault((r.model, r.task, r.source, r.language), []).append(i)

    def counts(idx):
        return _whole_counts([preds[i] for i in idx], [langs[i] for i in idx])

    for entry in report["models"]:
        model = entry["model"]
        for task, t in entry["tasks"].items():
            keys = [k for k in by if k[0] == model and k[1] == task]
            for g in t["groups"]:
                g["lpr_ci"] = _ci(g["n_scored"] - g["line_errors"], g["n_scored"])
                g["wpr_ci"] = None if g["wpr"] is None else _ci(g["n_word_scored"] - g["word_errors"],
                                                                g["n_word_scored"])
                # the proportions' denominators (0: the reference's rate of 1.0 without any completion behind it)
                g["lpr_n"], g["wpr_n"] = g["n_scored"], None if g["wpr"] is None else g["n_word_scored"]
                g["whole_text"] = counts(by[(model, task, g["source"], g["language"])])
            parts = [(m, [g for g in t["groups"] if g["language"] == lang],
                      [i for k in keys if k[3] == lang for i in by[k]]) for lang, m in t["per_language"].items()]
            parts += [(m, [g for g in t["groups"] if g["source"] == src],
                       [i for k in keys if k[2] == src for i in by[k]]) for src, m in t["per_source"].items()]
            parts.append((t["overall"], t["groups"], [i for k in keys for i in by[k]]))
            for m, gs, idx in parts:
                for key in ("lpr_ci", "wpr_ci", "lpr_n", "wpr_n"):  # only where the figure is one proportion
                    m[key] = gs[0][key] if len(gs) == 1 else None
                m["whole_text"] = counts(idx)
            t["overall"]["skipped"] = sum(g["skipped"] for g in t["groups"])
    report["whole_text_backend"] = identifier.name
    report["confidence"] = CONFIDENCE
    return report


def run_lcb_audit(input: str | Path, format: str = "auto", out: str | Path | None = None,
                  backend: str | None = None, lid_model: str | Path | None = None, min_confidence: float = 0.5,
                  min_chars: int | None = None, skip_bad: bool = False, plot: bool = True, details: bool = False,
                  progress: bool | None = None) -> dict:
    """`lahis audit INPUT --metric lcb`: read the completions, compute the benchmark's LPR / WPR / LCPR per language
    and source (with Wilson intervals) and the whole-text off-target rates, write audit.json / audit.md /
    audit.png (and examples.jsonl). backend / lid_model: the language ID of both metrics (the LCB reads the same
    fastText model raw, at its own 0.3 threshold; the default is lid.176.ftz)."""
    identifier = get_identifier(backend, lid_model, min_confidence, min_chars)
    lid = lcb_identifier(identifier)
    records, info = read_lcb_records(input, format, skip_bad)
    preds = _predict(identifier, [whole_text(r.completion) for r in records], progress)
    judged: Optional[list] = [] if details else None  # each completion's LCB judgement, for examples.jsonl
    report = {"metric": "lcb", "input": str(input), "format": info["format"], "files": info["files"],
              "n": len(records), "backend": identifier.name, "min_confidence": identifier.min_confidence,
              "min_chars": identifier.min_chars, "confidence": CONFIDENCE, "interval": INTERVAL,
              "lcb": lcb_audit(records, identifier, lid, predictions=preds, judgements=judged),
              "skipped": info["skipped"], "skipped_lines": info["skipped_lines"]}
    rows_detail = None
    if details:
        rows_detail = []
        for r, p, j in zip(records, preds, judged):
            rows_detail.append({
                "source": r.where, "model": r.model, "task": r.task, "lcb_source": r.source, "language": r.language,
                "skipped": j["skipped"], "line_error": j["line_error"], "word_error": j["word_error"],
                "lines": j["lines"], "line_labels": j["labels"], "english_tokens": j["english_tokens"],
                "whole_text_lang": p.lang, "whole_text_confidence": round(p.confidence, 4),
                "whole_text_reason": p.reason, "completion": r.completion})
    out_dir = Path(out) if out is not None else default_out_dir(Path(input))
    written = write_report(report, out_dir, plot=plot, details=rows_detail)
    report["written"] = {k: str(v) for k, v in written.items()}
    return report


def _f1(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _f1_ci(x: float | None, ci: Sequence[float] | None, n: int | None = None) -> str:
    """'33.3 [6.1, 79.2]'; '100.0 (n=0)' for the reference's 1.0 of a rate without any completion to count."""
    if x is None:
        return "-"
    if n == 0:
        return f"{_f1(x)} (n=0)"
    return f"{_f1(x)} {_interval(ci)}".rstrip()


def _lcb_table_row(label: str, m: dict, groups: int) -> str:
    """One row of the per-language or per-source LCB table: LPR, WPR, LCPR, the whole-text rates, counts."""
    w = m["whole_text"]
    star = "\\*" if m["lcpr_from_lpr_only"] else ""
    return (f"| {label} | {_f1_ci(m['lpr'], m['lpr_ci'], m['lpr_n'])} | {_f1_ci(m['wpr'], m['wpr_ci'], m['wpr_n'])} | "
            f"{_f1(m['lcpr'])}{star} | {_pct_ci(w['off_target_rate'], w['off_target_ci'])} | "
            f"{_pct_ci(w['undetermined_rate'], w['undetermined_ci'])} | {groups} | {w['n']} |")


def render_lcb_markdown(report: dict) -> str:
    """An `lcb_audit` report as Markdown: per model and task the overall figures, then per language, per source
    and per (source, language), each rate with its Wilson interval where it is one proportion, and the
    whole-text off-target rate beside them."""
    lcb = report["lcb"]
    lines = ["# Language Confusion Benchmark audit", ""]
    if report.get("input"):
        lines.append(f"- input: `{report['input']}` (format: {report.get('format')}); completions: {report['n']}")
    lines += [
        f"- line language ID: {lcb['identifier']} (a line's label counts at probability > {lcb['lid_threshold']}); "
        f"whole-text language ID: {report['backend']}, min confidence {report['min_confidence']:g}, min letters "
        f"{report['min_chars']}",
        "- LPR / WPR: the benchmark's line- and word-level pass rates (%, higher is better; WPR for ar hi ja ko ru "
        "zh only), LCPR their harmonic mean (\\* = the LPR, no WPR); per language the mean over its sources, per "
        "source the mean over its languages, overall the mean of the per-language means",
        "- off-target / undetermined: the project's whole-text metric (one label per completion, the text before "
        "the first \"\\nQ:\"), shares of all completions (%), pooled",
        f"- [low, high]: {100 * report.get('confidence', CONFIDENCE):g}% Wilson interval, given where the figure "
        "is one proportion (a source and language; a language with one source); means over sources or languages "
        "have none; (n=0): no completion to count, the benchmark's rate of 1.0"]
    if report.get("skipped"):
        lines.append(f"- skipped bad lines: {report['skipped']}")
    for entry in lcb["models"]:
        if entry["model"] is not None:
            lines += ["", f"## {_md_escape(entry['model'])}"]
        for task, t in entry["tasks"].items():
            o = t["overall"]
            w = o["whole_text"]
            star = "\\*" if o["lcpr_from_lpr_only"] else ""
            lines += ["", f"### {task}: LPR {_f1_ci(o['lpr'], o['lpr_ci'], o['lpr_n'])} | WPR "
                          f"{_f1_ci(o['wpr'], o['wpr_ci'], o['wpr_n'])} | "
                          f"LCPR {_f1(o['lcpr'])}{star} | whole-text off-target "
                          f"{_pct_ci(w['off_target_rate'], w['off_target_ci'])} (languages: {o['n_languages']}, "
                          f"completions: {o['n_completions']}, skipped: {o['skipped']}, no line of 5+ tokens)", ""]
            lines += ["| language | LPR | WPR | LCPR | off-target (whole text) | undetermined | sources | "
                      "completions |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for lang, m in t["per_language"].items():
                lines.append(_lcb_table_row(lang, m, m["n_sources"]))
            lines += ["", "| source | LPR | WPR | LCPR | off-target (whole text) | undetermined | languages | "
                          "completions |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for src, m in t["per_source"].items():
                lines.append(_lcb_table_row(_md_escape(src), m, m["n_languages"]))
            lines += ["", "| source / language | completions | skipped | LPR | WPR | off-target (whole text) |",
                      "|---|---:|---:|---:|---:|---:|"]
            for g in t["groups"]:
                w = g["whole_text"]
                lines.append(f"| {_md_escape(g['source'])} / {g['language']} | {g['n']} | {g['skipped']} | "
                             f"{_f1_ci(g['lpr'], g['lpr_ci'], g['lpr_n'])} | "
                             f"{_f1_ci(g['wpr'], g['wpr_ci'], g['wpr_n'])} | "
                             f"{_pct_ci(w['off_target_rate'], w['off_target_ci'])} |")
    lines += ["", "\\* no word-level rate (WPR is measured for ar hi ja ko ru zh only): LCPR is the LPR."]
    lines += _skipped_markdown(report)
    return "\n".join(lines) + "\n"


def _lcb_summary(report: dict) -> str:
    out = []
    for entry in report["lcb"]["models"]:
        for task, t in entry["tasks"].items():
            o = t["overall"]
            head = f"{entry['model']} / {task}" if entry["model"] is not None else task
            out.append(f"{head}: LPR {_f1(o['lpr'])}  WPR {_f1(o['wpr'])}  LCPR {_f1(o['lcpr'])}  whole-text "
                       f"off-target {_pct_ci(o['whole_text']['off_target_rate'], o['whole_text']['off_target_ci'])}"
                       f"  ({o['n_completions']} completions, {o['skipped']} skipped)")
            out.append(f"  {'language':<8}  {'LPR':>5}  {'WPR':>5}  {'LCPR':>5}  off-target [95% CI]")
            for lang, m in t["per_language"].items():
                w = m["whole_text"]
                out.append(f"  {lang:<8}  {_f1(m['lpr']):>5}  {_f1(m['wpr']):>5}  {_f1(m['lcpr']):>5}  "
                           f"{_pct_ci(w['off_target_rate'], w['off_target_ci'])}")
    if report.get("skipped"):
        out.append(f"skipped {report['skipped']} bad lines")
    return "\n".join(out)


def _plot_lcb(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(entry["model"], task, t) for entry in report["lcb"]["models"] for task, t in entry["tasks"].items()]
    sizes = [len(t["per_language"]) for _, _, t in panels]
    height = 1.2 + sum(0.9 + 0.5 * n for n in sizes)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, height), squeeze=False,
                             gridspec_kw={"height_ratios": [max(1, n) for n in sizes]})
    bar = 0.26
    for ax, (model, task, t) in zip(axes[:, 0], panels):
        langs = list(t["per_language"])
        y = np.arange(len(langs))[::-1].astype(float)
        per = [t["per_language"][lang] for lang in langs]
        def rate(m, key):  # no bar for the benchmark's 1.0 of a rate with nothing to count
            return None if m.get(f"{key}_n") == 0 else m[key]

        series = (
            (bar, "LPR (line level)", "#1565c0", [rate(m, "lpr") for m in per], [m["lpr_ci"] for m in per]),
            (0.0, "WPR (word level)", "#6a1b9a", [rate(m, "wpr") for m in per], [m["wpr_ci"] for m in per]),
            (-bar, "on-target (whole text)", _COLORS["on"], [m["whole_text"]["on_target_rate"] for m in per],
             [m["whole_text"]["on_target_ci"] for m in per]),
        )
        for offset, label, color, values, cis in series:
            keep = [i for i, v in enumerate(values) if v is not None]
            vals = [values[i] for i in keep]
            ax.barh(y[keep] + offset, vals, height=bar, color=color, label=label,
                    xerr=_err(vals, [cis[i] for i in keep]),
                    error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#212121"})
        ax.set_yticks(y, [f"{lang} ({t['per_language'][lang]['whole_text']['n']})" for lang in langs], fontsize=8)
        ax.set_xlim(0, 1)
        o = t["overall"]
        title = f"{model} / {task}" if model is not None else task
        ax.set_title(f"{title}: LPR {_f1(o['lpr'])}, WPR {_f1(o['wpr'])}, LCPR {_f1(o['lcpr'])}", fontsize=9)
    axes[-1, 0].set_xlabel(f"pass rate / share (error bars: {100 * report.get('confidence', CONFIDENCE):g}% Wilson "
                           "intervals, where the figure is one proportion; no bar: no completion to count)",
                           fontsize=8)
    legend: dict = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Language Confusion Benchmark ({report['lcb']['identifier']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1))
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
