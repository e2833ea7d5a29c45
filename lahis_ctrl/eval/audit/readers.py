"""Reading the texts to audit: `lahis evaluate` output, lm-eval samples, any jsonl / CSV, plain text, and the
Language Confusion Benchmark's completion layout. One `_Reader` decodes each file once and collects bad lines."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from ...core.errors import LahisError
from ...core.fileio import read_text
from ..langid import normalize_lang
from ..lcb import LCB_LANGUAGES, LCB_TASKS

FORMATS = ("auto", "evaluate", "lm-eval", "jsonl", "csv", "text")
LCB_FORMATS = ("auto", "lm-eval", "jsonl", "csv")
ID_FIELDS = ("id", "doc_id")  # what --compare matches items of jsonl / csv inputs by
TEXT_FIELDS = ("generation", "text", "output", "response", "prediction", "completion")
LANG_FIELDS = ("expected_lang", "lang", "language")
LCB_FIELDS = ("completion", "language", "source", "task")
_SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9\-.]+)\.jsonl$")
_MAX_SKIPPED_LISTED = 50
# INPUT:FIELD=VALUE selects the records of one condition (e.g. examples.jsonl:mask=lahis)
_SELECTOR = re.compile(r"^(?P<path>.+):(?P<field>[A-Za-z_][\w.]*)=(?P<value>.*)$", re.S)


@dataclass(frozen=True)
class AuditRecord:
    """One text to audit.

    source: 'file:line' for messages; run: which run produced it (an lm-eval run: model, mask and date; None for a
    file that is one run); group: the condition inside a run (the mask of `lahis evaluate` output, the lm-eval task,
    --group_field); item: what `--compare` matches it by (lm-eval: 'task:doc_id'; jsonl/csv: the 'id' or 'doc_id'
    field), None without one."""

    text: str
    expected: str
    group: str | None
    source: str
    item: str | None = None
    run: str | None = None


@dataclass(frozen=True)
class LCBRecord:
    """One completion of the benchmark: its text, expected language, source, task, model (the run: None when the
    input names none) and where it was read (file:line)."""

    completion: str
    language: str
    source: str
    task: str
    model: str | None
    where: str


def split_selector(spec: str | Path) -> tuple[Path, tuple[str, str] | None]:
    """'runs/ex.jsonl:mask=lahis' -> (Path('runs/ex.jsonl'), ('mask', 'lahis')); a plain path -> (path, None). A path
    that exists as written is never split (a file may have ':' and '=' in its name)."""
    text = str(spec)
    m = _SELECTOR.match(text)
    if m is None or Path(text).expanduser().exists():
        return Path(text), None
    return Path(m.group("path")), (m.group("field"), m.group("value"))


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


def _has(rec: dict, path: str) -> bool:
    try:
        _get_path(rec, path)
        return True
    except KeyError:
        return False


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


def existing_input(input: str | Path) -> Path:
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


def _lm_eval_mask(samples: Path, date: str) -> str | None:
    """The mask of the lm-eval run that wrote `samples`, from the results_<date>.json beside it: the mask file's
    name (lahis_hf records it in config.lahis_mask), 'none' for an unmasked lahis_hf run, None when unknown."""
    results = samples.parent / f"results_{date}.json"
    if not date or not results.is_file():
        return None
    try:
        config = json.loads(read_text(results, "lm-eval results")).get("config") or {}
    except (json.JSONDecodeError, LahisError, AttributeError):
        return None
    if "lahis_mask" not in config:
        return None
    mask = config["lahis_mask"]
    if not mask:
        return "none"
    source = mask.get("source") if isinstance(mask, dict) else None
    return Path(source).name if source else "in-memory mask"


def lm_eval_runs(files: Sequence[Path]) -> dict[Path, str]:
    """A run label per samples file: the model folder lm-eval wrote it to (OUTPUT/<model>/samples_...), the mask its
    results file records, and the run's date where one label would otherwise name several runs."""
    base = {}
    for f in files:
        date = _task_and_date(f)[1]
        mask = _lm_eval_mask(f, date)
        base[f] = (f"{f.parent.name} mask={mask}" if mask is not None else f.parent.name, date)
    dates: dict[str, set] = {}
    for label, date in base.values():
        dates.setdefault(label, set()).add(date)
    return {f: f"{label} ({date})" if len(dates[label]) > 1 and date else label for f, (label, date) in base.items()}


def lm_eval_files(path: Path) -> list[tuple[Path, str]]:
    """[(samples file, task name)] of a samples file or of a folder of them (searched recursively)."""
    files = [path] if path.is_file() else sorted(path.rglob("samples_*.jsonl"))
    if not files:
        raise LahisError(f"no lm-eval samples files (samples_<task>_<date>.jsonl) under {path}: run lm_eval with "
                         "--log_samples --output_path DIR and pass DIR or one of its samples files")
    return [(f, _task_and_date(f)[0]) for f in files]


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


def _selected(rec: dict, select: tuple[str, str] | None, record: AuditRecord) -> bool:
    """Whether a record belongs to the INPUT:FIELD=VALUE condition (the field of the line, else group / run)."""
    if select is None:
        return True
    name, value = select
    if _has(rec, name):
        return str(_get_path(rec, name)) == value
    if name in ("group", "run"):
        return str(getattr(record, name)) == value
    return False


def read_records(input: str | Path, format: str = "auto", text_field: str | None = None,
                 lang_field: str | None = None, expected: str | None = None, group_field: str | None = None,
                 skip_bad: bool = False, select: tuple[str, str] | None = None) -> tuple[list[AuditRecord], dict]:
    """Read the texts to audit. Returns (records, info) where info has 'format', 'files', 'skipped' (count) and
    'skipped_lines' (the first 50, with file:line and the error). Raises LahisError on bad input.

    select: (field, value): keep only the records whose field (a dotted path of the line, or 'group' / 'run') is
    value, e.g. ('mask', 'lahis') for one mask of `lahis evaluate` output."""
    path = existing_input(input)
    if format not in FORMATS:
        raise LahisError(f"unknown input format {format!r}: choose one of {', '.join(FORMATS)}")
    reader = _Reader(skip_bad)
    fmt = _detect_format(path, reader) if format == "auto" else format
    _check_folder(path, fmt)
    fixed = normalize_lang(expected) if expected is not None else None
    files: list[str] = []

    def add(rec: dict, record: AuditRecord) -> None:
        if _selected(rec, select, record):
            reader.records.append(record)

    if fmt == "text":
        if fixed is None:
            raise LahisError(f"plain-text input ({path}) needs --expected LANG: the language every line should be in")
        if select is not None:
            raise LahisError(f"{path}:{select[0]}={select[1]}: plain text has no fields to select lines by")
        files.append(str(path))
        with io.StringIO(reader.text_of(path)) as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    reader.records.append(AuditRecord(line, fixed, None, f"{path}:{lineno}"))

    elif fmt == "lm-eval":
        found = lm_eval_files(path)
        runs = lm_eval_runs([f for f, _ in found])
        for file, task in found:
            files.append(str(file))
            task_lang = None
            if fixed is None and lang_field is None:
                task_lang = task_language(task)
            rows = list(reader.json_lines(file))
            filters = {rec.get("filter") for _, rec in rows}
            tfield = text_field or "filtered_resps"
            for source, rec in rows:
                group = task if len(filters) <= 1 else f"{task}[{rec.get('filter')}]"
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
                # the run's label (model folder, mask, date where needed) says what each row audited
                add(rec, AuditRecord(text, lang, group, source, item, runs[file]))

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
            add(rec, AuditRecord(text, lang, group, source, item))

    if select is not None and not reader.records and not reader.n_skipped:
        raise LahisError(f"{path}: no record has {select[0]} = {select[1]!r} (INPUT:{select[0]}=VALUE selects one "
                         "condition of a file; see the groups of the report without the selector)")
    reader.check_found(path, len(reader.records), "records")
    info = {"format": fmt, "files": files, "skipped": reader.n_skipped, "skipped_lines": reader.skipped}
    return reader.records, info


def relabel(records: Sequence[AuditRecord], run: str) -> list[AuditRecord]:
    """The records with their run set to `run` ('A', 'B' of a comparison), the earlier run label kept inside it."""
    return [replace(r, run=run if r.run is None else f"{run}: {r.run}") for r in records]


# ---------------------------------------------------------------------------------------------- the LCB layout
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


def read_lcb_records(input: str | Path, format: str = "auto",
                     skip_bad: bool = False) -> tuple[list[LCBRecord], dict]:
    """The completions of a Language Confusion Benchmark run.

    Inputs: the benchmark's completion layout as CSV (its outputs/*.csv) or JSONL, with ``completion``,
    ``language``, ``source``, ``task`` and optionally ``model``; or lm-eval samples files of this package's
    ``lcb_*`` tasks (a file, or the --output_path folder; the text is ``filtered_resps[0]``, language, source and
    task come from the doc, the model label from the run: its folder, mask and date). Returns (records, info) like
    `read_records`; raises LahisError with the file and line on bad input (unless skip_bad).
    """
    path = existing_input(input)
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
        found = lm_eval_files(path)
        labels = lm_eval_runs([f for f, _ in found])
        for file, task_name in found:
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
