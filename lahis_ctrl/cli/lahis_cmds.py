"""`lahis score`, `lahis heads`, `lahis plot`, `lahis train-mask`: the LAHIS method on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..core.errors import LahisError


def score(model: str = "gemma-3-270m", languages: list[str] = ["en", "de", "es", "hi"], source: str = "embedded",
          n: Optional[int] = None, out: Path = Path("runs/scores"), mode: str = "fast", max_length: int = 2048,
          batch_size: int = 4, dtype: str = "auto", device_map: Optional[str] = None, seed: int = 0,
          lr: float = 1e-2, mask_dtype: str = "float32", gradient_checkpointing: bool = False,
          checkpoint_every: int = 50, overwrite: bool = False, arch: Optional[str] = None) -> None:
    """Compute LAHIS head scores for several languages; one <out>/<lang>.safetensors per language.

    Resumable: progress is checkpointed to <out>/<lang>.ckpt.safetensors every `checkpoint_every` texts, and
    languages whose score file exists are skipped, so rerunning an interrupted command continues it.

    Args:
        model: hub id, local directory, or the embedded 'gemma-3-270m'.
        languages: language codes to score.
        source: 'wikipedia' (hub wikimedia/wikipedia 20231101.<lang>, streamed), 'embedded' (the passages shipped
            with lahis_ctrl), or a local path: a .txt / .jsonl file or a directory with <lang>.txt files
            (NTREX-128 layout). A '{lang}' in the path is replaced by each language.
        n: number of texts per language (default: all local texts; 1000 for wikipedia).
        out: output folder.
        mode: 'faithful' (reference algorithm, per text, AdamW steps on m) or 'fast' (batched, m = 1).
        max_length: tokens per text.
        batch_size: texts per batch in fast mode.
        dtype: model dtype: auto, float32, bfloat16, float16.
        device_map: e.g. 'auto' to spread a large model over several GPUs.
        seed: shuffling seed of the corpus.
        lr: AdamW learning rate of faithful mode.
        mask_dtype: float32 or bfloat16 (the reference's) for m and the accumulators in faithful mode.
        gradient_checkpointing: trade compute for memory on long texts.
        checkpoint_every: texts between checkpoints.
        overwrite: rescore languages whose score file exists.
        arch: JSON architecture override for models lahis_ctrl does not know.
    """
    from ..core.loading import load_model, load_tokenizer
    from ..lahis.scoring import score_languages

    out = Path(out)
    if overwrite:
        for lang in languages:
            for p in (out / f"{lang}.safetensors", out / f"{lang}.ckpt.safetensors"):
                if p.exists():
                    p.unlink()
    # fail on bad languages / sources before loading a large model
    from ..corpora.texts import check_source

    for lang in languages:
        check_source(source, lang)
    m = load_model(model, dtype=dtype, device_map=device_map)
    tok = load_tokenizer(model)
    results = score_languages(m, tok, languages, source=source, n=n, mode=mode, max_length=max_length,
                              batch_size=batch_size, seed=seed, out_dir=out, lr=lr, mask_dtype=mask_dtype,
                              gradient_checkpointing=gradient_checkpointing, checkpoint_every=checkpoint_every,
                              arch=arch)
    for lang, s in results.items():
        top = ", ".join(f"L{layer}H{h}" for layer, h in s.top_heads(5))
        print(f"{lang}: {s.num_texts} texts, {s.num_tokens} tokens -> {out / (lang + '.safetensors')}  top: {top}")


def heads(scores: str, q: float = 0.96, min_rep: Optional[int] = None, out: Optional[Path] = None) -> None:
    """Classify heads as language-specific or language-general from several languages' score files.

    Args:
        scores: score files written by `lahis score` (one per language, same model): their folder, a glob such as
            'runs/scores/*.safetensors', or comma-separated files.
        q: quantile above which a language keeps a head (0.96 keeps the top ~4%).
        min_rep: a head kept by at least this many languages is general (default ceil(0.8 x languages), >= 2).
        out: write the classification as JSON here (default: print only).
    """
    from ..lahis.heads import classify_heads, format_classification, load_scores

    c = classify_heads(load_scores(scores), q=q, min_rep=min_rep)
    print(format_classification(c))
    if out is not None:
        c.save(out)
        print(f"wrote {out}")


def plot(scores: str, out: Path = Path("runs/plots"), q: float = 0.96, min_rep: Optional[int] = None,
         top: Optional[int] = None) -> None:
    """PNG plots of score files: heatmaps.png, overlap.png and layers.png (specific heads per layer).

    Args:
        scores: score files written by `lahis score` (one per language, same model): their folder, a glob such as
            'runs/scores/*.safetensors', or comma-separated files.
        out: output folder.
        q: quantile of the specific/general rule.
        min_rep: languages a head must be kept by to be general (default ceil(0.8 x languages)).
        top: compare the top-N heads in the overlap plot (default: the heads above the q quantile).
    """
    from ..eval.plots import plot_heatmaps, plot_layer_distribution, plot_overlap
    from ..lahis.heads import classify_heads, load_scores

    s = load_scores(scores)
    out = Path(out)
    written = [plot_heatmaps(s, out / "heatmaps.png"), plot_overlap(s, out / "overlap.png", top=top, q=q)]
    if len(s) >= 2:
        written.append(plot_layer_distribution(classify_heads(s, q=q, min_rep=min_rep), out / "layers.png"))
    print("wrote " + ", ".join(str(p) for p in written))


def train_mask(*, lang: str, scores: Optional[Path] = None, model: str = "gemma-3-270m", heads: str = "top",
                       n: Optional[int] = None, p: float = 0.02, epochs: int = 2, lr: float = 1e-2, batch_size: int = 1,
                       seed: int = 0, data: Optional[str] = None, train_size: Optional[int] = None,
                       style: str = "paper", weight_decay: float = 0.01, max_length: Optional[int] = None,
                       dtype: str = "float32", out: Optional[Path] = None) -> None:
    """Train a soft head mask on QA in one language (XQuAD's reference train split by default).

    Args:
        lang: language (ar de el en es hi ro ru th tr vi zh).
        scores: LAHIS scores of this model for `lang` (.safetensors from `lahis score`); needed for --heads top.
        model: hub id, local directory or the embedded 'gemma-3-270m'.
        heads: 'top' (the n best-scored heads) or 'random' (n random heads: the baseline).
        n: trainable heads (default int(p * layers * heads), at least 1).
        p: share of heads to train when n is not given.
        epochs: passes over the training items.
        lr: AdamW learning rate.
        batch_size: items per step (padding is masked out of the loss).
        seed: seed for random heads and torch.
        data: XQuAD directory (xquad.<lang>.json or xquad/), 'embedded' for the shipped sample;
            default: env LAHIS_DATA_DIR, else the hub (google/xquad).
        train_size: train on only the first train_size items of the (shuffled) train split.
        style: prompt style: 'paper' or 'lm_eval'.
        weight_decay: AdamW weight decay (trainable heads only).
        max_length: cut prompts from the left to fit this many tokens with the answer.
        dtype: float32 or bfloat16 (model weights; the scales and the loss stay float32).
        out: mask file to write (.safetensors or .json); default runs/masks/<lang>-<heads>.safetensors.
            Per-epoch checkpoints go to <out>.ckpt/ and a rerun resumes from them.
    """
    from ..core.architecture import describe
    from ..core.loading import load_model, load_tokenizer
    from ..corpora.xquad import load_qa, select
    from ..lahis.softmask import score_matrix
    from ..lahis.softmask import train_mask as train

    out = Path(out) if out is not None else Path("runs/masks") / f"{lang}-{heads}.safetensors"
    if out.suffix not in (".safetensors", ".json"):
        raise LahisError(f"--out must end in .safetensors or .json, got {out}")
    if heads == "top" and scores is None:
        raise LahisError("--heads top needs --scores FILE (LAHIS scores from `lahis score`); or use --heads random")
    rows_all, split = load_qa(lang, data)
    rows = select(rows_all, "train", split)
    if train_size is not None:
        rows = rows[:train_size]
    m = load_model(model, dtype=dtype)
    spec = describe(m)
    score_obj = score_matrix(scores, spec) if scores is not None else None  # fail on wrong scores before training
    tok = load_tokenizer(model)
    mask = train(m, tok, lang, score_obj, n=n, p=p, epochs=epochs, lr=lr, batch_size=batch_size, heads=heads,
                      seed=seed, rows=rows, style=style, weight_decay=weight_decay, max_length=max_length,
                      checkpoint_dir=out.with_name(out.name + ".ckpt"), progress=True)
    mask.save(out)
    changed = ", ".join(f"L{layer}H{head}={mask.values[layer, head]:.3f}" for layer, head in mask.changed_heads())
    print(f"trained {len(mask.extra['trainable_heads'])} heads on {len(rows)} {lang} items "
          f"(loss per epoch: {', '.join(f'{x:.3f}' for x in mask.extra['epoch_loss'])})")
    print(f"changed heads: {changed or 'none'}")
    print(f"mask: {out}")
