"""The audit report: `run_audit` / `run_lcb_audit` read, identify, count and compare, then write audit.json,
audit.md, the PNG charts and examples.jsonl together (all or none), into a folder that holds no other report."""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ...core.errors import LahisError
from ...core.fileio import atomic_path
from ..langid import get_identifier
from ..lcb import lcb_identifier, whole_text
from ..stats import format_p
from .compare import compare_runs, match_items
from .plots import plot_audit, plot_compare, plot_lcb
from .rates import CONFIDENCE, GLOSSARY, INTERVAL, UND, audit_texts, condition_name, lcb_audit, predict, row_name
from .readers import read_lcb_records, read_records, relabel, split_selector

METRICS = ("offtarget", "lcb")
# every file a report may consist of: a replaced report loses all of them, so no file of the old one lingers
REPORT_FILES = ("audit.json", "audit.md", "audit.png", "compare.png", "examples.jsonl")


# ---------------------------------------------------------------------------------------------- formatting
def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def interval(ci: Sequence[float] | None, signed: bool = False) -> str:
    """'[8.1, 18.0]' (percent) for a [low, high] fraction interval; '' when there is none."""
    if ci is None or ci[0] is None or ci[1] is None:
        return ""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(100 * ci[0])}, {fmt.format(100 * ci[1])}]"


def pct_ci(x: float | None, ci: Sequence[float] | None) -> str:
    """'12.5% [8.1, 18.0]'; '-' when the figure is not defined (nothing decided)."""
    if x is None:
        return "-"
    return f"{pct(x)} {interval(ci)}".rstrip()


def points(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def p_text(p: float | None) -> str:
    return "-" if p is None else format_p(p)


def f1(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def f1_ci(x: float | None, ci: Sequence[float] | None, n: int | None = None) -> str:
    """'33.3 [6.1, 79.2]'; '100.0 (n=0)' for the reference's 1.0 of a rate without any completion to count."""
    if x is None:
        return "-"
    if n == 0:
        return f"{f1(x)} (n=0)"
    return f"{f1(x)} {interval(ci)}".rstrip()


def md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def _glossary_lines() -> list[str]:
    return ["", "## What the figures count", ""] + [f"- `{k}`: {v}" for k, v in GLOSSARY.items()] + [
        f"- `[low, high]`: the {100 * CONFIDENCE:g}% {INTERVAL} interval of a figure, in %; '-' where a figure is not "
        "defined (no output decided)"]


# ---------------------------------------------------------------------------------------------- markdown
def render_markdown(report: dict, max_columns: int = 12) -> str:
    """The report as Markdown: per condition, per expected language, the confusion table, the comparisons, the
    skipped lines and what each figure counts."""
    if report.get("metric") == "lcb":
        return render_lcb_markdown(report)
    rows = report["rows"]
    lines = ["# Off-target language audit", ""]
    if report.get("input"):
        compared = f"; compared with `{report['compare_input']}`" if report.get("compare_input") else ""
        lines.append(f"- input: `{report['input']}` (format: {report.get('format')}){compared}")
    lines += [f"- language ID: {report['backend']}, min confidence {report['min_confidence']:g}, "
              f"min letters {report['min_chars']}",
              f"- texts: {report['n']} in {len(report['conditions'])} condition(s) (run / group); figures are "
              "per condition and never pooled over conditions",
              "- off-target rate: off-target outputs among those whose language was identified (decided); shares: "
              "among all outputs (see 'What the figures count')"]
    if report.get("skipped"):
        lines.append(f"- skipped bad lines: {report['skipped']}")
    gate = report.get("gate")
    if gate:
        verdict = "PASSED" if gate["passed"] else "FAILED: " + ", ".join(
            f"{row_name(f)} {pct(f['rate'])}" for f in gate["failed"])
        lines.append(f"- gate: {gate['measures']} <= {gate['max_off_target']:g} for every row: {verdict}")
    lines += ["", "## Per condition", "", "| condition | languages | n | decided | off-target rate | "
              "off-target share | undetermined share |", "|---|---|---:|---:|---:|---:|---:|"]
    for c in report["conditions"]:
        lines.append(f"| {md_escape(c['name'])} | {', '.join(c['languages'])} | {c['n']} | {c['decided']} | "
                     f"{pct_ci(c['off_target_rate'], c['off_target_rate_ci'])} | "
                     f"{pct_ci(c['off_target_share'], c['off_target_share_ci'])} | "
                     f"{pct_ci(c['undetermined_share'], c['undetermined_share_ci'])} |")
    lines += ["", "## Per expected language", ""] + _language_table(rows)

    # confusion table: expected (rows) x identified (columns); the expected languages first, then the most frequent
    # other predictions, the rest summed in 'other'
    total = Counter()
    for r in rows:
        total.update(r["predicted"])
    expected_langs = list(dict.fromkeys(r["expected"] for r in rows))
    others = [lang for lang, _ in total.most_common() if lang not in expected_langs and lang != UND]
    cols = [lang for lang in expected_langs if lang in total] + others
    shown, rest = cols[:max_columns], cols[max_columns:]
    header = shown + (["other"] if rest else []) + [UND]
    lines += ["", "## Confusion table (rows: condition and expected language, columns: identified; counts)", ""]
    lines += ["| " + " | ".join(["row"] + header) + " |", "|" + "|".join(["---"] * (len(header) + 1)) + "|"]
    for r in rows:
        p = r["predicted"]
        cells = [str(p.get(c, 0)) for c in shown]
        if rest:
            cells.append(str(sum(p.get(c, 0) for c in rest)))
        cells.append(str(p.get(UND, 0)))
        lines.append("| " + " | ".join([md_escape(row_name(r))] + cells) + " |")
    for comp in report.get("comparisons", []):
        lines += [""] + _compare_markdown(comp)
    lines += _skipped_markdown(report)
    lines += _glossary_lines()
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


def _language_table(rows: Sequence[dict]) -> list[str]:
    head = ["condition", "expected", "n", "decided", "off-target rate", "on-target share", "off-target share",
            "undetermined share", "top wrong languages", "undetermined because"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        wrong = ", ".join(f"{lang} ({c})" for lang, c in r["top_wrong"]) or "-"
        why = ", ".join(_reason_cell(k, c, r) for k, c in r["undetermined_reasons"].items()) or "-"
        cells = [md_escape(condition_name(r.get("run"), r["group"])), r["expected"], str(r["n"]), str(r["decided"]),
                 f"{r['off_target']} of {r['decided']}: {pct_ci(r['off_target_rate'], r['off_target_rate_ci'])}",
                 pct_ci(r["on_target_share"], r["on_target_share_ci"]),
                 pct_ci(r["off_target_share"], r["off_target_share_ci"]),
                 f"{r['undetermined']}: {pct_ci(r['undetermined_share'], r['undetermined_share_ci'])}", wrong, why]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _reason_cell(kind: str, count: int, row: dict) -> str:
    """'low confidence (2; best guess en: 1)': an undetermined output's guess is shown where it names another
    language, so an off-target answer the language ID could not call with confidence is not hidden."""
    guesses = row.get("undetermined_guesses") or {}
    if kind == "low confidence" and guesses:
        return f"{kind} ({count}; best guess {', '.join(f'{lang}: {c}' for lang, c in guesses.items())})"
    return f"{kind} ({count})"


def _compare_markdown(comp: dict) -> list[str]:
    c = comp["comparison"]
    dropped = sum(r["dropped_undetermined"] for r in c["rows"] if r["expected"] != "all")
    rule = ("undetermined outputs count as off-target" if c["undetermined_as_off"] else
            f"pairs where either output is undetermined are dropped ({dropped} of {c['n_items']})")
    lines = ["## Change in off-target rate: B - A", "",
             f"- A: {comp['a']}", f"- B: {comp['b']}",
             f"- {c['n_items']} items matched by {c['matched_by']}; per item 1 = off-target, 0 = on-target; {rule}; "
             f"change = B - A in percentage points on the kept pairs with its {100 * c['confidence']:g}% interval and "
             f"p ({c['method']}); A / B off-target: rates on the kept pairs with Wilson intervals", "",
             "| expected | items | pairs | dropped | A off-target | B off-target | A only off | B only off | "
             "change (points) | p (McNemar) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in c["rows"]:
        name = "**all**" if r["expected"] == "all" else r["expected"]
        lines.append(f"| {name} | {r['n_items']} | {r['n_pairs']} | {r['dropped_undetermined']} | "
                     f"{pct_ci(r['off_target_rate_a'], r['off_target_ci_a'])} | "
                     f"{pct_ci(r['off_target_rate_b'], r['off_target_ci_b'])} | {r['a_only_off']} | "
                     f"{r['b_only_off']} | {points(r['change'])} {interval(r['change_ci'], signed=True)} | "
                     f"{p_text(r['p_value'])} |")
    return lines


# ---------------------------------------------------------------------------------------------- console
def _compare_summary(comp: dict) -> str:
    c = comp["comparison"]
    out = [f"change in off-target rate B - A ({c['matched_by']}; "
           + ("undetermined = off-target)" if c["undetermined_as_off"] else "pairs with an undetermined output "
              "dropped)"), f"  A = {comp['a']}", f"  B = {comp['b']}",
           f"{'expected':<8}  {'pairs':>5}  {'dropped':>7}  {'A off':>6}  {'B off':>6}  "
           f"{'change [95% CI] (points)':<26}  p (McNemar)"]
    for r in c["rows"]:
        change = f"{points(r['change'])} {interval(r['change_ci'], signed=True)}"
        out.append(f"{r['expected']:<8}  {r['n_pairs']:>5}  {r['dropped_undetermined']:>7}  "
                   f"{pct(r['off_target_rate_a']):>6}  {pct(r['off_target_rate_b']):>6}  {change:<26}  "
                   f"{p_text(r['p_value'])}")
    return "\n".join(out)


def summary(report: dict) -> str:
    """The printed summary: per row and per condition n, decided, the off-target rate [CI] among decided outputs,
    the off-target and undetermined shares of all outputs, the most frequent wrong languages."""
    if report.get("metric") == "lcb":
        return _lcb_summary(report)
    def wrong(r):
        guessed = ", ".join(f"{lang}?:{c}" for lang, c in r.get("undetermined_guesses", {}).items())
        return ", ".join(f"{lang}:{c}" for lang, c in r["top_wrong"]) + (f" (undetermined, best guess {guessed})"
                                                                         if guessed else "")

    entries = [(row_name(r), r, wrong(r)) for r in report["rows"]]
    entries += [(f"{c['name']} (all languages)", c, "") for c in report["conditions"] if len(c["languages"]) > 1]
    width = max([len(name) for name, _, _ in entries] + [8])
    out = [f"{'row':<{width}}  {'n':>6}  {'decided':>7}  {'off-target rate [95% CI]':<26}  {'off share':>9}  "
           f"{'undet share':>11}  top wrong"]
    for name, r, wrong in entries:
        rate = pct_ci(r["off_target_rate"], r["off_target_rate_ci"])
        out.append(f"{name:<{width}}  {r['n']:>6}  {r['decided']:>7}  {rate:<26}  {pct(r['off_target_share']):>9}  "
                   f"{pct(r['undetermined_share']):>11}  {wrong}".rstrip())
    out.append("off-target rate: among the decided outputs (as lm-eval's off_target_rate); shares: among all outputs")
    if report.get("skipped"):
        out.append(f"skipped {report['skipped']} bad lines")
    for comp in report.get("comparisons", []):
        out += ["", _compare_summary(comp)]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- writing
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


def default_out_dir(input: Path, metric: str = "offtarget", compared: bool = False,
                    select: tuple[str, str] | None = None) -> Path:
    """INPUT.audit/ beside the file (gens.jsonl.audit/; INPUT/audit/ for a folder); .lcb-audit for --metric lcb,
    -compare with a comparison, and the selector in the name for INPUT:FIELD=VALUE: each input and each kind of
    report its own folder (gens.jsonl and gens.txt never share one)."""
    input = Path(input)
    kind = ("lcb-audit" if metric == "lcb" else "audit") + ("-compare" if compared else "")
    if select is not None:
        kind = f"{select[0]}-{select[1]}.{kind}"
    return input / kind if input.is_dir() else input.with_name(f"{input.name}.{kind}")


def check_replace(out_dir: Path, key: dict, overwrite: bool) -> None:
    """Refuse to replace a report of another audit (another input, metric, comparison or settings) in out_dir unless
    overwrite: a second audit into the same folder must not silently lose the first one."""
    old_file = Path(out_dir) / "audit.json"
    if not old_file.is_file() or overwrite:
        return
    try:
        old = json.loads(old_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        old = {}
    old = old if isinstance(old, dict) else {}
    old_key = old.get("key")
    if old_key == key:
        return  # the same audit again: same inputs, same settings, same bytes
    if isinstance(old_key, dict) and (old_key.get("metric"), old_key.get("input")) == (key["metric"], key["input"]):
        what = f"an audit of {key['input']} with other settings or comparisons"
    else:
        what = f"the {old.get('metric', 'offtarget')} audit of {old.get('input', 'another input')}"
    raise LahisError(f"{out_dir} already holds {what}: choose another --out, or pass --overwrite to replace that "
                     "report")


def write_report(report: dict, out_dir: str | Path, plot: bool = True,
                 details: list[dict] | None = None) -> dict[str, Path]:
    """Write audit.json, audit.md, audit.png (compare.png with comparisons; examples.jsonl with details) under
    out_dir, all or none: every file goes to a temporary name first and they replace the old ones only once all
    are written; files of an earlier report that this one does not have are removed after."""
    out_dir = Path(out_dir)
    targets = {"json": out_dir / "audit.json", "markdown": out_dir / "audit.md"}
    if plot:
        targets["png"] = out_dir / "audit.png"
        if report.get("comparisons"):
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
            (plot_lcb if lcb else plot_audit)(report, tmp["png"])
            if "compare_png" in tmp:
                plot_compare(report, tmp["compare_png"])
        if details is not None:
            with tmp["examples"].open("w", encoding="utf-8") as f:
                for d in details:
                    f.write(json.dumps(_json_safe(d), ensure_ascii=False) + "\n")
    mine = {p.name for p in targets.values()}
    for name in REPORT_FILES:  # a replaced report's files that this one has not (e.g. compare.png)
        if name not in mine:
            (out_dir / name).unlink(missing_ok=True)
    return targets


# ---------------------------------------------------------------------------------------------- run
def _key(metric: str, input, compare, compare_by, settings: dict) -> dict:
    return {"metric": metric, "input": str(input), "compare": None if compare is None else str(compare),
            "compare_by": compare_by, **settings}


def _split(records, by: str) -> dict:
    """Records by their run or group, in first-seen order."""
    parts: dict = {}
    for r in records:
        parts.setdefault(getattr(r, by), []).append(r)
    return parts


def run_audit(input: str | Path, format: str = "auto", text_field: str | None = None,
              lang_field: str | None = None, expected: str | None = None, group_field: str | None = None,
              out: str | Path | None = None, backend: str | None = None, lid_model: str | Path | None = None,
              min_confidence: float = 0.5, min_chars: int | None = None, top: int = 3,
              max_off_target: float | None = None, undetermined_as_off: bool = False, skip_bad: bool = False,
              plot: bool = True, details: bool = False, progress: bool | None = None, metric: str = "offtarget",
              compare: str | Path | None = None, compare_by: str | None = None, overwrite: bool = False) -> dict:
    """Read INPUT, identify languages, write the report files; returns the report (with 'written').

    metric: 'offtarget' (the whole-text audit) or 'lcb' (the Language Confusion Benchmark, `run_lcb_audit`).
    INPUT and compare may end in ':FIELD=VALUE' to audit one condition of a file (examples.jsonl:mask=lahis).
    compare: a second input of the same items (another run): the report holds both (runs 'A' and 'B') and the
    change in off-target rate B - A per expected language with its paired interval and exact McNemar p.
    compare_by: a field (e.g. mask), or 'group' / 'run': compare every other value of it inside INPUT with the
    first one (the baseline), item by item.
    overwrite: replace a report of another audit in the output folder (refused otherwise).
    """
    if metric not in METRICS:
        raise LahisError(f"unknown --metric {metric!r}: choose offtarget (whole-text off-target rates) or lcb "
                         "(the Language Confusion Benchmark's line- and word-level pass rates)")
    if metric == "lcb":
        offtarget_only = [("--expected", expected), ("--text_field", text_field), ("--lang_field", lang_field),
                          ("--group_field", group_field), ("--max_off_target", max_off_target),
                          ("--undetermined_as_off", undetermined_as_off or None), ("--compare", compare),
                          ("--compare_by", compare_by)]
        used = [flag for flag, value in offtarget_only if value is not None]
        if used:
            raise LahisError(f"{used[0]} does not apply to --metric lcb (its completions name their language, "
                             "source and task in their own fields): drop it, or use --metric offtarget")
        return run_lcb_audit(input, format, out, backend, lid_model, min_confidence, min_chars, skip_bad, plot,
                             details, progress, overwrite)
    if max_off_target is not None and not 0.0 <= max_off_target <= 1.0:
        raise LahisError(f"--max_off_target is a rate between 0 and 1, got {max_off_target}")
    if compare is not None and compare_by is not None:
        raise LahisError("--compare (a second input) and --compare_by (conditions inside INPUT) are alternatives: "
                         "give one")
    path_a, select_a = split_selector(input)
    by_attr = None
    if compare_by is not None:
        if compare_by in ("group", "run"):
            by_attr = compare_by
        else:
            if group_field is not None and group_field != compare_by:
                raise LahisError(f"--compare_by {compare_by} groups the report by {compare_by}: drop --group_field "
                                 f"{group_field}")
            group_field, by_attr = compare_by, "group"
    settings = {"format": format, "text_field": text_field, "lang_field": lang_field, "expected": expected,
                "group_field": group_field, "backend": backend, "lid_model": None if lid_model is None else str(lid_model),
                "min_confidence": min_confidence, "min_chars": min_chars, "max_off_target": max_off_target,
                "undetermined_as_off": undetermined_as_off, "skip_bad": skip_bad}  # what decides the numbers
    out_dir = Path(out) if out is not None else default_out_dir(path_a, metric, compare is not None or
                                                                 compare_by is not None, select_a)
    key = _key(metric, input, compare, compare_by, settings)
    check_replace(out_dir, key, overwrite)  # before any work
    identifier = get_identifier(backend, lid_model, min_confidence, min_chars)
    records, info = read_records(path_a, format, text_field, lang_field, expected, group_field, skip_bad, select_a)
    pairs_of = []  # (A records, B records, A name, B name, (pairs, how they were matched))
    report_extra: dict = {}
    if compare is not None:
        path_b, select_b = split_selector(compare)
        if path_b.expanduser().resolve() == path_a.expanduser().resolve() and select_a == select_b:
            raise LahisError(f"--compare needs a second run: {compare} is the input itself (to compare two "
                             "conditions of one file write INPUT:FIELD=A --compare INPUT:FIELD=B, or use --compare_by)")
        b_records, b_info = read_records(path_b, format, text_field, lang_field, expected, group_field, skip_bad,
                                         select_b)
        a_records, b_records = relabel(records, "A"), relabel(b_records, "B")
        records = a_records + b_records
        pairs_of.append((a_records, b_records, f"`{input}`", f"`{compare}`",
                         match_items(a_records, b_records, "A", "B", info["skipped"], b_info["skipped"])))
        report_extra = {"compare_input": str(compare), "compare_format": b_info["format"],
                        "compare_files": b_info["files"]}
        info["skipped"] += b_info["skipped"]
        info["skipped_lines"] = (info["skipped_lines"] + b_info["skipped_lines"])[:50]
    elif by_attr is not None:
        parts = _split(records, by_attr)
        if len(parts) < 2:
            raise LahisError(f"--compare_by {compare_by}: {input} holds one value of it ({next(iter(parts))!r}); "
                             "there is nothing to compare")
        (base, base_records), *others = parts.items()
        for value, part in others:
            pairs_of.append((base_records, part, f"{compare_by} = {base} in `{input}`",
                             f"{compare_by} = {value} in `{input}`",
                             match_items(base_records, part, f"{compare_by} = {base}", f"{compare_by} = {value}",
                                         info["skipped"], info["skipped"])))
    texts = [r.text for r in records]
    preds = predict(identifier, texts, progress)
    report = {"input": str(input), "format": info["format"], "files": info["files"], **report_extra,
              **audit_texts(texts, [r.expected for r in records], [r.group for r in records], identifier, top,
                            max_off_target, undetermined_as_off, predictions=preds, runs=[r.run for r in records]),
              "skipped": info["skipped"], "skipped_lines": info["skipped_lines"]}
    if pairs_of:
        index = {id(r): i for i, r in enumerate(records)}
        comparisons = []
        for a, b, a_name, b_name, (pairs, matched_by) in pairs_of:  # items matched before any language ID ran
            comparisons.append({"a": a_name, "b": b_name, "comparison": compare_runs(
                a, [preds[index[id(r)]] for r in a], b, [preds[index[id(r)]] for r in b], pairs, matched_by,
                undetermined_as_off, a_name, b_name)})
        report["comparisons"] = comparisons
    report["key"] = key
    rows_detail = None
    if details:
        rows_detail = [{"source": r.source, "run": r.run, "group": r.group, "item": r.item, "expected": r.expected,
                        "lang": p.lang, "script": p.script, "confidence": round(p.confidence, 4), "label": p.label,
                        "reason": p.reason, "on_target": p.lang == r.expected, "text": r.text}
                       for r, p in zip(records, preds)]
    written = write_report(report, out_dir, plot=plot, details=rows_detail)
    report["written"] = {k: str(v) for k, v in written.items()}
    return report


# ---------------------------------------------------------------------------------------------- --metric lcb
def run_lcb_audit(input: str | Path, format: str = "auto", out: str | Path | None = None,
                  backend: str | None = None, lid_model: str | Path | None = None, min_confidence: float = 0.5,
                  min_chars: int | None = None, skip_bad: bool = False, plot: bool = True, details: bool = False,
                  progress: bool | None = None, overwrite: bool = False) -> dict:
    """`lahis audit INPUT --metric lcb`: read the completions, compute the benchmark's LPR / WPR / LCPR per language
    and source (with Wilson intervals) and the whole-text off-target figures, write audit.json / audit.md /
    audit.png (and examples.jsonl). backend / lid_model: the language ID of both metrics (the LCB reads the same
    fastText model raw, at its own 0.3 threshold; the default is lid.176.ftz)."""
    settings = {"format": format, "backend": backend, "lid_model": None if lid_model is None else str(lid_model),
                "min_confidence": min_confidence, "min_chars": min_chars, "skip_bad": skip_bad}
    out_dir = Path(out) if out is not None else default_out_dir(Path(input), "lcb")
    key = _key("lcb", input, None, None, settings)
    check_replace(out_dir, key, overwrite)
    identifier = get_identifier(backend, lid_model, min_confidence, min_chars)
    lid = lcb_identifier(identifier)
    records, info = read_lcb_records(input, format, skip_bad)
    preds = predict(identifier, [whole_text(r.completion) for r in records], progress)
    judged: Optional[list] = [] if details else None  # each completion's LCB judgement, for examples.jsonl
    report = {"metric": "lcb", "input": str(input), "format": info["format"], "files": info["files"],
              "n": len(records), "backend": identifier.name, "min_confidence": identifier.min_confidence,
              "min_chars": identifier.min_chars, "confidence": CONFIDENCE, "interval": INTERVAL,
              "lcb": lcb_audit(records, identifier, lid, predictions=preds, judgements=judged),
              "skipped": info["skipped"], "skipped_lines": info["skipped_lines"], "key": key}
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
    written = write_report(report, out_dir, plot=plot, details=rows_detail)
    report["written"] = {k: str(v) for k, v in written.items()}
    return report


def _lcb_table_row(label: str, m: dict, groups: int) -> str:
    """One row of the per-language or per-source LCB table: LPR, WPR, LCPR, the whole-text figures, counts."""
    w = m["whole_text"]
    star = "\\*" if m["lcpr_from_lpr_only"] else ""
    return (f"| {label} | {f1_ci(m['lpr'], m['lpr_ci'], m['lpr_n'])} | {f1_ci(m['wpr'], m['wpr_ci'], m['wpr_n'])} | "
            f"{f1(m['lcpr'])}{star} | {pct_ci(w['off_target_rate'], w['off_target_rate_ci'])} | "
            f"{pct_ci(w['off_target_share'], w['off_target_share_ci'])} | "
            f"{pct_ci(w['undetermined_share'], w['undetermined_share_ci'])} | {groups} | {w['n']} |")


def render_lcb_markdown(report: dict) -> str:
    """An `lcb_audit` report as Markdown: per model and task the overall figures, then per language, per source
    and per (source, language), each rate with its Wilson interval where it is one proportion, and the
    whole-text off-target figures beside them."""
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
        "- whole text (the project's metric: one label per completion, the text before the first \"\\nQ:\"): "
        "off-target rate among the completions whose language was identified, off-target and undetermined shares "
        "of all completions (%), pooled within one model and task",
        f"- [low, high]: {100 * report.get('confidence', CONFIDENCE):g}% Wilson interval, given where the figure "
        "is one proportion (a source and language; a language with one source); means over sources or languages "
        "have none; (n=0): no completion to count, the benchmark's rate of 1.0"]
    if report.get("skipped"):
        lines.append(f"- skipped bad lines: {report['skipped']}")
    head = ("| {} | LPR | WPR | LCPR | off-target rate (whole text) | off-target share | undetermined share | {} | "
            "completions |")
    for entry in lcb["models"]:
        if entry["model"] is not None:
            lines += ["", f"## {md_escape(entry['model'])}"]
        for task, t in entry["tasks"].items():
            o = t["overall"]
            w = o["whole_text"]
            star = "\\*" if o["lcpr_from_lpr_only"] else ""
            lines += ["", f"### {task}: LPR {f1_ci(o['lpr'], o['lpr_ci'], o['lpr_n'])} | WPR "
                          f"{f1_ci(o['wpr'], o['wpr_ci'], o['wpr_n'])} | "
                          f"LCPR {f1(o['lcpr'])}{star} | whole-text off-target rate "
                          f"{pct_ci(w['off_target_rate'], w['off_target_rate_ci'])} (languages: {o['n_languages']}, "
                          f"completions: {o['n_completions']}, skipped: {o['skipped']}, no line of 5+ tokens)", ""]
            lines += [head.format("language", "sources"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for lang, m in t["per_language"].items():
                lines.append(_lcb_table_row(lang, m, m["n_sources"]))
            lines += ["", head.format("source", "languages"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for src, m in t["per_source"].items():
                lines.append(_lcb_table_row(md_escape(src), m, m["n_languages"]))
            lines += ["", "| source / language | completions | skipped | LPR | WPR | off-target rate (whole text) |",
                      "|---|---:|---:|---:|---:|---:|"]
            for g in t["groups"]:
                w = g["whole_text"]
                lines.append(f"| {md_escape(g['source'])} / {g['language']} | {g['n']} | {g['skipped']} | "
                             f"{f1_ci(g['lpr'], g['lpr_ci'], g['lpr_n'])} | "
                             f"{f1_ci(g['wpr'], g['wpr_ci'], g['wpr_n'])} | "
                             f"{pct_ci(w['off_target_rate'], w['off_target_rate_ci'])} |")
    lines += ["", "\\* no word-level rate (WPR is measured for ar hi ja ko ru zh only): LCPR is the LPR."]
    lines += _skipped_markdown(report)
    lines += _glossary_lines()
    return "\n".join(lines) + "\n"


def _lcb_summary(report: dict) -> str:
    out = []
    for entry in report["lcb"]["models"]:
        for task, t in entry["tasks"].items():
            o = t["overall"]
            w = o["whole_text"]
            head = f"{entry['model']} / {task}" if entry["model"] is not None else task
            out.append(f"{head}: LPR {f1(o['lpr'])}  WPR {f1(o['wpr'])}  LCPR {f1(o['lcpr'])}  whole-text "
                       f"off-target rate {pct_ci(w['off_target_rate'], w['off_target_rate_ci'])}"
                       f"  ({o['n_completions']} completions, {o['skipped']} skipped)")
            out.append(f"  {'language':<8}  {'LPR':>5}  {'WPR':>5}  {'LCPR':>5}  off-target rate [95% CI]")
            for lang, m in t["per_language"].items():
                w = m["whole_text"]
                out.append(f"  {lang:<8}  {f1(m['lpr']):>5}  {f1(m['wpr']):>5}  {f1(m['lcpr']):>5}  "
                           f"{pct_ci(w['off_target_rate'], w['off_target_rate_ci'])}")
    if report.get("skipped"):
        out.append(f"skipped {report['skipped']} bad lines")
    return "\n".join(out)
