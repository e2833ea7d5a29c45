"""`lahis score`, `lahis heads`, `lahis plot`, `lahis train-mask`: the LAHIS method on the command line."""

from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Optional

from ..core.errors import LahisError


def score(model: str = "gemma-3-270m", languages: list[str] = ["en", "de", "es", "hi"], source: str = "embedded",
          texts: Optional[int] = None, out: Path = Path("runs/scores"), mode: str = "fast", max_length: int = 2048,
          batch_size: int = 4, dtype: str = "auto", device: str = "auto", device_map: Optional[str] = None, seed: int = 0,
          lr: float = 1e-2, mask_dtype: str = "float32", gradient_checkpointing: bool = False,
          checkpoint_every: int = 50, overwrite: bool = False, arch: Optional[str] = None, compile: bool = False,
          split: str = "texts") -> None:
    """Compute LAHIS head scores for several languages; one <out>/<lang>.safetensors per language.

    Resumable: progress is checkpointed to <out>/<lang>.ckpt.safetensors every `checkpoint_every` texts, and
    languages whose score file exists are skipped, so rerunning an interrupted command continues it.

    Data parallel: `torchrun --standalone --nproc-per-node N -m lahis_ctrl score --config ...` (or `accelerate
    launch --multi_gpu --num_processes N -m lahis_ctrl score ...`) runs one process per GPU (NCCL; gloo on CPUs), each on
    cuda:LOCAL_RANK unless device_map is given. Each language's texts are split over the ranks (fast mode) and
    each rank checkpoints to <out>/<lang>.ckpt.rank<r>-of-<N>.safetensors; rank 0 writes the score files.

    Args:
        model: hub id, local directory, or the embedded 'gemma-3-270m'.
        languages: language codes to score.
        source: 'wikipedia' (hub wikimedia/wikipedia 20231101.<lang>, streamed), 'embedded' (the passages shipped
            with lahis_ctrl), or a local path: a .txt / .jsonl file or a directory with <lang>.txt files
            (NTREX-128 layout). A '{lang}' in the path is replaced by each language.
        texts: number of texts per language (default: all local texts; 1000 for wikipedia).
        out: output folder.
        mode: 'faithful' (reference algorithm, per text, AdamW steps on m) or 'fast' (batched, m = 1).
        max_length: tokens per text.
        batch_size: texts per batch in fast mode.
        dtype: model dtype: auto, float32, bfloat16, float16.
        device: where one process runs the model: 'auto' (the first GPU when there is one, else the CPU), 'cpu',
            'cuda', 'cuda:1'...; several ranks each use their own GPU; ignored with device_map.
        device_map: e.g. 'auto' to spread a large model over several GPUs in ONE process (an alternative to
            several ranks, not a companion: with torchrun each rank would spread its copy over every GPU it sees).
        seed: shuffling seed of the corpus.
        lr: AdamW learning rate of faithful mode.
        mask_dtype: float32 or bfloat16 (the reference's) for m and the accumulators in faithful mode.
        gradient_checkpointing: trade compute for memory on long texts.
        checkpoint_every: texts between checkpoints.
        overwrite: rescore languages whose score file exists.
        arch: JSON architecture override for models lahis_ctrl does not know.
        compile: wrap each decoder layer with torch.compile (for GPUs; on CPUs it usually costs more than it saves).
        split: with several ranks: 'texts' (each language's texts split over all ranks; fast mode only) or
            'languages' (whole languages per rank, each scored as one process would; any mode).
    """
    import logging

    from ..core.loading import load_model, load_tokenizer
    from ..lahis import distributed as dist
    from ..lahis.scoring import score_languages

    out = Path(out)
    # fail on bad settings, languages and sources before joining the other ranks or loading a large model
    dist.check_mode(mode, split)
    from ..core.architecture import check_arch
    from ..core.fileio import run_lock
    from ..core.loading import load_config
    from ..corpora.texts import check_source
    from ..core.architecture import check_max_length

    for lang in languages:
        check_source(source, lang)
    config = load_config(model)  # the model's own limits and an --arch override checked before it loads
    check_max_length(config, max_length)
    check_arch(arch, config)
    ctx = dist.setup()  # several ranks: join the group and select this rank's GPU before the model is loaded
    lock = contextlib.ExitStack()
    try:
        # one job per output folder: rank 0 holds the lock; if it cannot, every rank stops (none waits on it)
        ctx.agree(lambda: lock.enter_context(run_lock(out, f"lahis score --out {out}")) if ctx.is_main else None,
                  "locking the output folder")
        placement, move_to = device_map, None
        gpu = dist.rank_device(ctx)
        if gpu is None and device_map is None and device != "cpu":
            import torch

            if device != "auto":
                gpu = torch.device(device)
            elif torch.cuda.is_available():
                gpu = torch.device("cuda", 0)
        if device_map is not None and ctx.active:
            logging.getLogger(__name__).warning(
                "device_map=%r with %d ranks: every rank spreads its own copy of the model over the GPUs it sees; "
                "use one or the other", device_map, ctx.world_size)
        elif gpu is not None:
            import importlib.util

            if importlib.util.find_spec("accelerate") is not None and gpu.type == "cuda":
                placement = {"": 0 if gpu.index is None else gpu.index}  # loaded straight onto this GPU
            else:
                move_to = gpu
        m = load_model(model, dtype=dtype, device_map=placement)
        if move_to is not None:
            m = m.to(move_to)
        tok = load_tokenizer(model)
        results = score_languages(m, tok, languages, source=source, n=texts, mode=mode, max_length=max_length,
                                  batch_size=batch_size, seed=seed, out_dir=out, lr=lr, mask_dtype=mask_dtype,
                                  gradient_checkpointing=gradient_checkpointing, checkpoint_every=checkpoint_every,
                                  arch=arch, compile=compile, split=split, overwrite=overwrite)
        if ctx.is_main:
            for lang, s in results.items():
                top = ", ".join(f"L{layer}H{h}" for layer, h in s.top_heads(5))
                print(f"{lang}: {s.num_texts} texts, {s.num_tokens} tokens -> {out / (lang + '.safetensors')}  top: {top}")
    finally:
        lock.close()
        dist.shutdown()


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
               trainable_heads: Optional[int] = None, head_share: float = 0.02, epochs: int = 2, lr: float = 1e-2,
               batch_size: int = 1, seed: int = 0, data: Optional[str] = None, train_size: Optional[int] = None,
               style: str = "paper", weight_decay: float = 0.01, max_length: Optional[int] = None,
               dtype: str = "float32", out: Optional[Path] = None, overwrite: bool = False) -> None:
    """Train a soft head mask on QA in one language (XQuAD's reference train split by default).

    Args:
        lang: language (ar de el en es hi ro ru th tr vi zh).
        scores: LAHIS scores of this model for `lang` (.safetensors from `lahis score`); needed for --heads top.
        model: hub id, local directory or the embedded 'gemma-3-270m'.
        heads: 'top' (the best-scored heads) or 'random' (random heads: the baseline).
        trainable_heads: how many heads to train (default int(head_share x layers x heads), at least 1).
        head_share: share of all heads to train when --trainable_heads is not given (the reference: 0.02).
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
        overwrite: replace an existing --out made for another language, model or method.
    """
    from ..core.architecture import spec_from_config
    from ..core.fileio import run_lock
    from ..core.loading import load_config, load_model, load_tokenizer
    from ..core.mask import HeadMask
    from ..corpora.xquad import XQUAD_LANGS, check_lang, load_qa, select
    from ..lahis.scores import HeadScores
    from ..lahis.softmask import mask_method, train_mask as train

    check_lang(lang, XQUAD_LANGS)
    if heads not in ("top", "random"):
        raise LahisError(f"--heads must be 'top' or 'random', got {heads!r}")
    out = Path(out) if out is not None else Path("runs/masks") / f"{lang}-{heads}.safetensors"
    if out.suffix not in (".safetensors", ".json"):
        raise LahisError(f"--out must end in .safetensors or .json, got {out}")
    if out.is_dir():
        raise LahisError(f"--out {out} is a folder; give the mask file to write (.safetensors or .json)")
    if heads == "top" and scores is None:
        raise LahisError("--heads top needs --scores FILE (LAHIS scores from `lahis score`); or use --heads random")
    spec = spec_from_config(load_config(model), str(model))
    score_obj = None
    if scores is not None:  # the wrong model's or the wrong language's scores fail before any weights load
        score_obj = HeadScores.load(scores).validate(spec)
        if score_obj.language and score_obj.language != lang:
            raise LahisError(f"{scores} holds LAHIS scores of '{score_obj.language}', not '{lang}': pass the {lang} "
                             "score file (the mask trains the language's own top heads)")
    if out.is_file() and not overwrite:
        old = HeadMask.load(out)
        if (old.language, old.method) != (lang, mask_method(heads)) or old.shape != spec.shape:
            raise LahisError(f"{out} already holds a {old.method} mask for '{old.language}' ({old.model_name}): "
                             "choose another --out, or pass --overwrite to replace it")
    rows_all, split = load_qa(lang, data)
    rows = select(rows_all, "train", split)
    if train_size is not None:
        rows = rows[:train_size]
    with run_lock(out.parent, f"lahis train-mask --out {out}", name=f".{out.name}.lock"):
        m = load_model(model, dtype=dtype)
        tok = load_tokenizer(model)
        mask = train(m, tok, lang, score_obj, n=trainable_heads, p=head_share, epochs=epochs, lr=lr,
                     batch_size=batch_size, heads=heads, seed=seed, rows=rows, style=style, weight_decay=weight_decay,
                     max_length=max_length, checkpoint_dir=out.with_name(out.name + ".ckpt"), progress=True)
        mask.save(out)
    changed = ", ".join(f"L{layer}H{head}={mask.values[layer, head]:.3f}" for layer, head in mask.changed_heads())
    print(f"trained {len(mask.extra['trainable_heads'])} heads on {len(rows)} {lang} items "
          f"(loss per epoch: {', '.join(f'{x:.3f}' for x in mask.extra['epoch_loss'])})")
    print(f"changed heads: {changed or 'none'}")
    print(f"mask: {out}")
