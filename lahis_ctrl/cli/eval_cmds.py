"""`lahis evaluate`, `lahis ppl`: evaluation of masks on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from ..core.argtypes import Device, Dtype, MaxLength, NonNegativeInt, PositiveInt, Quantile


def evaluate(*, lang: str, mask: list[str] = ["none"], model: str = "gemma-3-270m", data: Optional[str] = None,
             split: Literal["test", "train", "all"] = "test", limit: Optional[PositiveInt] = None,
             style: Literal["paper", "lm_eval"] = "paper", max_new_tokens: PositiveInt = 10,
             batch_size: PositiveInt = 8, dtype: Dtype = "auto", device: Device = "auto",
             device_map: Optional[str] = None, out: Path = Path("runs/evaluate"), overwrite: bool = False,
             allow_extreme_scales: bool = False, allow_refold: bool = False) -> None:
    """Evaluate head masks on XQuAD (or the embedded QA sample): accuracy, exact match, F1 per mask.

    Args:
        lang: language (ar de el en es hi ro ru th tr vi zh).
        mask: the masks to compare, in order (one or a list, e.g. none,lahis=runs/masks/de-top.safetensors):
            'none' (the original model), NAME=PATH, or PATH.
        model: hub id, local directory or the embedded 'gemma-3-270m'.
        data: XQuAD directory (xquad.<lang>.json or xquad/), 'embedded' for the shipped sample;
            default: env LAHIS_DATA_DIR, else the hub (google/xquad).
        split: test (reference: items 390-1189), train or all.
        limit: evaluate only the first `limit` items of the split.
        style: prompt style: paper (instruction in the language) or lm_eval (lm-eval's xquad prompt).
        max_new_tokens: tokens generated per item (the reference: 10).
        batch_size: prompts per batch (left padding).
        dtype: model dtype (auto: the checkpoint's own).
        device: where the model runs: auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:1...
        device_map: e.g. 'auto' to spread a model larger than one GPU (needs accelerate); overrides --device.
        out: output folder (examples.jsonl, results.json, results.md); reruns resume.
        overwrite: replace the generations of another evaluation (other model, items or settings) kept in --out.
        allow_extreme_scales: accept masks with negative scales or scales above 100.
        allow_refold: evaluate masks on a checkpoint that already has a mask folded in (the scales multiply).
    """
    from ..core.architecture import spec_from_config
    from ..core.export import check_not_folded
    from ..core.fileio import run_lock
    from ..core.loading import load_config, load_tokenizer
    from ..core.mask import HeadMask
    from ..corpora.xquad import XQUAD_LANGS, check_lang, load_qa, select
    from ..eval.evaluate import evaluate_masks, parse_mask_args
    from ..core.loading import load_model_on

    check_lang(lang, XQUAD_LANGS)
    mask_paths = parse_mask_args(mask)
    config = load_config(model)
    spec = spec_from_config(config, str(model))
    # wrong masks fail before any weights load (each file is read once, here)
    head_masks = {name: None if path is None else
                  HeadMask.load(path).check_sane(allow_extreme_scales, f"'{name}' ({path})").validate(spec)
                  for name, path in mask_paths.items()}
    if any(p is not None for p in mask_paths.values()):
        check_not_folded(config, allow_refold, f"model '{model}'")
    rows_all, split_spec = load_qa(lang, data)
    rows = select(rows_all, split, split_spec)
    if limit is not None:
        rows = rows[:limit]
    with run_lock(out, f"lahis evaluate --out {out}"):
        m = load_model_on(model, dtype, device, device_map)
        tok = load_tokenizer(model)
        report = evaluate_masks(m, tok, lang, head_masks, rows, style=style, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, out_dir=out, progress=True, overwrite=overwrite)
    print(report.table())
    print(f"files: {out}/results.md, {out}/results.json, {out}/examples.jsonl")


def ppl(scores: str, model: str = "gemma-3-270m", source: str = "embedded", data: Optional[str] = None,
        languages: Optional[list[str]] = None, texts: Optional[PositiveInt] = None, k: PositiveInt = 3,
        random_trials: PositiveInt = 20, max_length: MaxLength = 512, batch_size: PositiveInt = 4, dtype: Dtype = "auto",
        device: Device = "auto", device_map: Optional[str] = None, seed: NonNegativeInt = 0, q: Quantile = 0.96,
        min_rep: Optional[PositiveInt] = None, out: Path = Path("runs/ppl"), overwrite: bool = False) -> None:
    """Perplexity of each language with each language's top-k specific heads zeroed, vs k random heads.

    Writes <out>/ppl_cross.json, ppl_cross.md (corpus and mean per-text perplexity tables) and
    ppl_cross.png (heatmap of perplexity relative to the unmasked model).

    Args:
        scores: score files of the masked languages (from `lahis score`, same model): their folder, a glob, or
            comma-separated files.
        model: hub id, local directory, or 'gemma-3-270m'.
        source: texts to evaluate: 'wikipedia', 'ntrex', 'embedded' or a local path (see `lahis score --help`).
        data: a folder with ntrex128/ (default: env LAHIS_DATA_DIR): where --source ntrex is read from.
        languages: languages to evaluate (default: the scored ones).
        texts: texts per language (default: all local texts; 1000 for wikipedia).
        k: heads zeroed per language.
        random_trials: draws of k random heads per language (the random baseline is their distribution).
        max_length: tokens per text.
        batch_size: texts per forward pass.
        dtype: model dtype (auto: the checkpoint's own).
        device: where the model runs: auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:1...
        device_map: e.g. 'auto' to spread a model larger than one GPU (needs accelerate); overrides --device.
        seed: seed of the corpus shuffle and of the random heads.
        q: quantile of the general/specific rule.
        min_rep: languages a head must be kept by to be general (default ceil(0.8 x languages)).
        out: output folder.
        overwrite: replace a ppl_cross.json made in --out with another model or other settings.
    """
    from ..corpora.texts import check_source, load_texts
    from ..core.fileio import write_json, write_text
    from ..lahis.heads import load_scores
    from ..core.loading import load_tokenizer
    from ..eval.plots import plot_ppl_cross
    from ..eval.ppl import format_comparisons, format_table, ppl_cross

    from ..core.architecture import spec_from_config
    from ..core.fileio import run_lock
    from ..core.loading import load_config
    from ..core.architecture import check_max_length
    from ..core.loading import load_model_on
    from .options import source_path

    scored = load_scores(scores)
    config = load_config(model)
    check_max_length(config, max_length)
    spec = spec_from_config(config, str(model))
    for s in scored.values():
        s.validate(spec)  # scores of another model fail before its weights load
    languages = languages or list(scored)
    source = source_path(source, data)
    for lang in languages:
        check_source(source, lang)
    out = Path(out)
    # what the files depend on: a finished run of other settings or another model is refused, not replaced
    from ..core.fileio import read_json
    from ..core.identity import check_recorded_run, model_identity

    settings = {"scores": {lang: s.extra.get("texts_digest") or s.num_tokens for lang, s in sorted(scored.items())},
                "source": source, "languages": languages, "texts": texts, "k": k, "random_trials": random_trials,
                "max_length": max_length, "dtype": dtype, "seed": seed, "q": q, "min_rep": min_rep}
    earlier = out / "ppl_cross.json"
    stored = read_json(earlier, "ppl result") if earlier.is_file() and not overwrite else None
    record = stored.get("run") if isinstance(stored, dict) else None
    fix = "choose another --out, or pass --overwrite to replace it"
    check_recorded_run(record, settings, None, f"{earlier}", fix)
    with run_lock(out, f"lahis ppl --out {out}"):
        m = load_model_on(model, dtype, device, device_map)
        for s in scored.values():
            s.validate(m)  # the weights too: scores of another model of this shape rank other heads
        identity = model_identity(m)
        check_recorded_run(record, settings, identity, f"{earlier}", fix)
        tok = load_tokenizer(model)
        by_lang = {x: load_texts(source, x, n=texts, seed=seed, tokenizer=tok) for x in languages}
        result = ppl_cross(m, tok, by_lang, scored, k=k, random_trials=random_trials, seed=seed, q=q, min_rep=min_rep,
                           max_length=max_length, batch_size=batch_size)
        md = (f"## corpus perplexity (k={k})\n\n{format_table(result, 'corpus_ppl')}\n\n"
              f"## mean per-text exp(loss) (the reference's)\n\n{format_table(result, 'mean_text_ppl')}\n\n"
              f"## paired comparisons (increase of the per-text log-perplexity, nats/token; 95% CI, p)\n\n"
              f"{format_comparisons(result)}\n")
        from ..core.fileio import replace_together

        with replace_together(out) as staged:  # the three files of one run, or the previous run's
            write_json(staged / "ppl_cross.json", {**result, "run": {"settings": settings, "model_identity": identity}})
            write_text(staged / "ppl_cross.md", md)
            plot_ppl_cross(result, staged / "ppl_cross.png")
    print(md)
    print(f"wrote {out}/ppl_cross.json, .md, .png")
