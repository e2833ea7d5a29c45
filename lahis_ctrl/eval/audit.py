"""Off-target language audits: `lahis audit INPUT` classifies the language of generated texts and reports,
per expected language, how many came out in that language (on-target), in another one (off-target), or could
not be told (undetermined: empty, digits only, too short, code, low confidence).

Inputs (``--format auto`` tells them apart):

- ``evaluate``: the per-example jsonl of ``lahis evaluate`` (``generation``, ``expected_lang`` or ``lang``;
  grouped by ``mask`` so a baseline and a masked run are reported side by side);
- ``lm-eval``: ``--log_samples`` files of lm-evaluation-harness (``samples_<task>_<date>.jsonl``, or the
  ``--output_path`` folder holding them); the text is ``filtered_resps[0]``, the expected language comes from
  ``--expected``, ``--lang_field`` (e.g. ``doc.lang``) or the task name (``xquad_de``, ``flores_en-de`` ->
  ``de``, ``belebele_deu_Latn`` -> ``de``); grouped by task;
- ``jsonl``: any jsonl, with ``--text_field`` / ``--lang_field`` (dotted paths such as ``doc.lang`` or
  ``resps.0.0`` reach into nested values) or ``--expected`` for all lines;
- ``text``: plain text, one generation a line (blank lines are skipped), with ``--expected LANG``.

Outputs, written atomically together (a failed run leaves any earlier report untouched): ``audit.json``,
``audit.md`` (tables, confusion matrix), ``audit.png`` (stacked bars), and with ``--details`` the per-example
``examples.jsonl``. ``--max_off_target RATE`` makes the command exit with status 1 when any expected language's
off-target rate is above RATE (CI gates); bad input exits with status 2.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence

from ..core.errors import LahisError
from ..core.fileio import atomic_path
from .langid import LangPrediction, LanguageIdentifier, get_identifier, normalize_lang

__all__ = ["AuditRecord", "audit", "audit_texts", "read_records", "render_markdown", "run_audit", "task_language",
           "write_report"]

FORMATS = ("auto", "evaluate", "lm-eval", "jsonl", "text")
TEXT_FIELDS = ("generation", "text", "output", "response", "prediction", "completion")
LANG_FIELDS = ("expected_lang", "lang", "language")
UND = "und"  # column of the confusion table for undetermined texts
_SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9\-.]+)\.jsonl$")
_MAX_SKIPPED_LISTED = 50


@dataclass(frozen=True)
class AuditRecord:
    """One text to audit. source: 'file:line' for messages; group: e.g. the mask or the lm-eval task."""

    text: str
    expected: str
    group: str | None
    source: str


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


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "lm-eval"
    if _SAMPLES_NAME.match(path.name):
        return "lm-eval"
    if path.suffix.lower() in (".txt", ".text"):
        return "text"
    with path.open(encoding="utf-8", errors="replace") as f:
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


def _lm_eval_files(path: Path) -> list[tuple[Path, str, str]]:
    """[(samples file, task name, report group)] for a samples file or a folder of them (searched recursively).

    The group is the task name, or 'task (date)' when the folder holds several runs of one task."""
    files = [path] if path.is_file() else sorted(path.rglob("samples_*.jsonl"))
    parsed = []
    for f in files:
        m = _SAMPLES_NAME.match(f.name)
        parsed.append((f, m.group("task") if m else f.stem, m.group("date") if m else ""))
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
        with path.open(encoding="utf-8", errors="replace") as f:
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
    path = Path(input).expanduser()
    if not path.exists():
        raise LahisError(f"input not found: {path}")
    if format not in FORMATS:
        raise LahisError(f"unknown input format {format!r}: choose one of {', '.join(FORMATS)}")
    fmt = _detect_format(path) if format == "auto" else format
    if path.is_dir() and fmt != "lm-eval":
        raise LahisError(f"{path} is a folder: only the lm-eval format reads folders (of samples_*.jsonl files)")
    fixed = normalize_lang(expected) if expected is not None else None
    reader = _Reader(skip_bad)
    files: list[str] = []

    if fmt == "text":
        if fixed is None:
            raise LahisError(f"plain-text input ({path}) needs --expected LANG: the language every line should be in")
        files.append(str(path))
        with path.open(encoding="utf-8", errors="replace") as f:
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
                reader.records.append(AuditRecord(text, lang, group, source))

    else:  # jsonl / evaluate
        files.append(str(path))
        if fmt == "evaluate":
            text_fields = (text_field,) if text_field else ("generation",)
            lang_fields = (lang_field,) if lang_field else ("expected_lang", "lang")
            gfield = group_field or "mask"
        else:
            text_fields = (text_field,) if text_field else TEXT_FIELDS
            lang_fields = (lang_field,) if lang_field else LANG_FIELDS
            gfield = group_field
        for source, rec in reader.json_lines(path):
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
            reader.records.append(AuditRecord(text, lang, group, source))

    if not reader.records:
        if reader.n_skipped:
            raise LahisError(f"{path}: all {reader.n_skipped} lines were bad (first: {reader.skipped[0]['source']}: "
                             f"{reader.skipped[0]['error']})")
        raise LahisError(f"{path}: no records to audit (the input is empty)")
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
            off = n - on - und
            wrong = [(lang, c) for lang, c in predicted.most_common() if lang not in (exp, UND)]
            rows.append({
                "group": g, "expected": exp, "n": n, "on_target": on, "off_target": off, "undetermined": und,
                "on_target_rate": _rate(on, n), "off_target_rate": _rate(off, n), "undetermined_rate": _rate(und, n),
                "top_wrong": [[lang, c] for lang, c in wrong[:top]],
                "predicted": dict(predicted.most_common()),
                "undetermined_reasons": dict(reasons.most_common()),
            })
    n = len(preds)
    on = sum(r["on_target"] for r in rows)
    und = sum(r["undetermined"] for r in rows)
    report = {
        "backend": identifier.name, "min_confidence": identifier.min_confidence, "min_chars": identifier.min_chars,
        "grouped": has_group,
        "n": n, "on_target": on, "off_target": n - on - und, "undetermined": und,
        "on_target_rate": _rate(on, n), "off_target_rate": _rate(n - on - und, n), "undetermined_rate": _rate(und, n),
        "rows": rows,
    }
    if max_off_target is not None:
        failed = []
        for r in rows:
            rate = r["off_target_rate"] + (r["undetermined_rate"] if undetermined_as_off else 0.0)
            if rate > max_off_target:
                failed.append({"group": r["group"], "expected": r["expected"], "rate": rate})
        report["gate"] = {"max_off_target": max_off_target, "undetermined_as_off": undetermined_as_off,
                          "passed": not failed, "failed": failed}
    return report


def _row_name(row: dict) -> str:
    return f"{row['group']} / {row['expected']}" if row["group"] is not None else row["expected"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def render_markdown(report: dict, max_columns: int = 12) -> str:
    """The report as Markdown: summary, per-language table, confusion table, skipped lines."""
    rows = report["rows"]
    grouped = report["grouped"]
    lines = ["# Off-target language audit", ""]
    if report.get("input"):
        lines.append(f"- input: `{report['input']}` (format: {report.get('format')})")
    lines += [f"- language ID: {report['backend']}, min confidence {report['min_confidence']:g}, "
              f"min letters {report['min_chars']}",
              f"- texts: {report['n']}; on-target {_pct(report['on_target_rate'])}, off-target "
              f"{_pct(report['off_target_rate'])}, undetermined {_pct(report['undetermined_rate'])}"]
    if report.get("skipped"):
        lines.append(f"- skipped bad lines: {report['skipped']}")
    gate = report.get("gate")
    if gate:
        verdict = "PASSED" if gate["passed"] else "FAILED: " + ", ".join(
            f"{_row_name(f)} {_pct(f['rate'])}" for f in gate["failed"])
        lines.append(f"- gate: off-target rate <= {gate['max_off_target']:g}"
                     f"{' (undetermined counted as off-target)' if gate['undetermined_as_off'] else ''}: {verdict}")
    lines += ["", "## Per expected language", ""]
    head = (["group"] if grouped else []) + ["expected", "n", "on-target", "off-target", "undetermined",
                                              "top wrong languages", "undetermined because"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        wrong = ", ".join(f"{lang} ({c})" for lang, c in r["top_wrong"]) or "-"
        why = ", ".join(f"{k} ({c})" for k, c in r["undetermined_reasons"].items()) or "-"
        cells = ([_md_escape(r["group"])] if grouped else []) + [
            r["expected"], str(r["n"]), f"{r['on_target']} ({_pct(r['on_target_rate'])})",
            f"{r['off_target']} ({_pct(r['off_target_rate'])})",
            f"{r['undetermined']} ({_pct(r['undetermined_rate'])})", wrong, why]
        lines.append("| " + " | ".join(cells) + " |")

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
    if report.get("skipped_lines"):
        lines += ["", f"## Skipped lines ({report['skipped']})", ""]
        lines += [f"- `{s['source']}`: {s['error']}" for s in report["skipped_lines"]]
        if report["skipped"] > len(report["skipped_lines"]):
            lines.append(f"- ... and {report['skipped'] - len(report['skipped_lines'])} more")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [f"{_row_name(r)}  (n={r['n']})" for r in rows]
    on = [r["on_target_rate"] for r in rows]
    off = [r["off_target_rate"] for r in rows]
    und = [r["undetermined_rate"] for r in rows]
    height = 1.5 + 0.38 * len(rows)  # inches: room for title, axis and legend, plus one bar per row
    fig, ax = plt.subplots(figsize=(8, height))
    y = list(range(len(rows)))[::-1]  # first row on top
    ax.barh(y, on, color="#2e7d32", label="on-target")
    ax.barh(y, off, left=on, color="#c62828", label="off-target")
    ax.barh(y, und, left=[a + b for a, b in zip(on, off)], color="#9e9e9e", label="undetermined")
    for yi, r in zip(y, rows):
        if r["top_wrong"]:
            ax.text(1.01, yi, ", ".join(lang for lang, _ in r["top_wrong"]), va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    gate = report.get("gate")
    if gate:  # rows above the --max_off_target rate get red labels
        failed = {(f["group"], f["expected"]) for f in gate["failed"]}
        for tick, r in zip(ax.get_yticklabels(), rows):
            if (r["group"], r["expected"]) in failed:
                tick.set_color("#c62828")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of texts (right: most frequent wrong languages)", fontsize=9)
    ax.set_title(f"Language of the outputs vs the expected language ({report['backend']})", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1))
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path, plot: bool = True,
                 details: list[dict] | None = None) -> dict[str, Path]:
    """Write audit.json, audit.md, audit.png (and examples.jsonl) under out_dir, all or none: every file goes to a
    temporary name first and they replace the old ones only once all are written."""
    out_dir = Path(out_dir)
    targets = {"json": out_dir / "audit.json", "markdown": out_dir / "audit.md"}
    if plot:
        targets["png"] = out_dir / "audit.png"
    if details is not None:
        targets["examples"] = out_dir / "examples.jsonl"
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p)) for k, p in targets.items()}
        tmp["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp["markdown"].write_text(render_markdown(report), encoding="utf-8")
        if plot:
            _plot(report, tmp["png"])
        if details is not None:
            with tmp["examples"].open("w", encoding="utf-8") as f:
                for d in details:
                    f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return targets


def _summary(report: dict) -> str:
    name_w = max([len(_row_name(r)) for r in report["rows"]] + [8])
    out = [f"{'expected':<{name_w}}  {'n':>6}  {'on':>7}  {'off':>7}  {'undet':>7}  top wrong"]
    for r in report["rows"]:
        wrong = ", ".join(f"{lang}:{c}" for lang, c in r["top_wrong"])
        out.append(f"{_row_name(r):<{name_w}}  {r['n']:>6}  {_pct(r['on_target_rate']):>7}  "
                   f"{_pct(r['off_target_rate']):>7}  {_pct(r['undetermined_rate']):>7}  {wrong}")
    out.append(f"{'all':<{name_w}}  {report['n']:>6}  {_pct(report['on_target_rate']):>7}  "
               f"{_pct(report['off_target_rate']):>7}  {_pct(report['undetermined_rate']):>7}")
    if report.get("skipped"):
        out.append(f"skipped {report['skipped']} bad lines")
    return "\n".join(out)


def default_out_dir(input: Path) -> Path:
    input = Path(input)
    return input / "audit" if input.is_dir() else input.with_name(input.stem + ".audit")


def run_audit(input: str | Path, format: str = "auto", text_field: str | None = None,
              lang_field: str | None = None, expected: str | None = None, group_field: str | None = None,
              out: str | Path | None = None, backend: str | None = None, lid_model: str | Path | None = None,
              min_confidence: float = 0.5, min_chars: int | None = None, top: int = 3,
              max_off_target: float | None = None, undetermined_as_off: bool = False, skip_bad: bool = False,
              plot: bool = True, details: bool = False, progress: bool | None = None) -> dict:
    """Read INPUT, identify languages, write the report files; returns the report (with 'files')."""
    if max_off_target is not None and not 0.0 <= max_off_target <= 1.0:
        raise LahisError(f"--max_off_target is a rate between 0 and 1, got {max_off_target}")
    identifier = get_identifier(backend, lid_model, min_confidence, min_chars)
    records, info = read_records(input, format, text_field, lang_field, expected, group_field, skip_bad)
    texts = [r.text for r in records]
    preds = _predict(identifier, texts, progress)
    report = {"input": str(input), "format": info["format"], "files": info["files"],
              **audit_texts(texts, [r.expected for r in records], [r.group for r in records], identifier, top,
                            max_off_target, undetermined_as_off, predictions=preds),
              "skipped": info["skipped"], "skipped_lines": info["skipped_lines"]}
    rows_detail = None
    if details:
        rows_detail = [{"source": r.source, "group": r.group, "expected": r.expected, "lang": p.lang,
                        "script": p.script, "confidence": round(p.confidence, 4), "label": p.label,
                        "reason": p.reason, "on_target": p.lang == r.expected, "text": r.text}
                       for r, p in zip(records, preds)]
    out_dir = Path(out) if out is not None else default_out_dir(Path(input))
    written = write_report(report, out_dir, plot=plot, details=rows_detail)
    report["written"] = {k: str(v) for k, v in written.items()}
    return report
