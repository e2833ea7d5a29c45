"""`lahis score`, `lahis heads`, `lahis plot`, `lahis train-mask`: the LAHIS method on the command line."""

from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Literal, Optional

from ..core.argtypes import (Device, Dtype, MaskDtype, MaxLength, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                             PositiveInt, Quantile, Share)
from ..core.errors import LahisError


def score(model: str = "gemma-3-270m", languages: list[str] = ["en", "de", "es", "hi"], source: str = "embedded",
          data: Optional[str] = None, texts: Optional[PositiveInt] = None, out: Path = Path("runs/scores"),
          mode: Literal["fast", "faithful"] = "fast", max_length: MaxLength = 2048, batch_size: PositiveInt = 4,
          dtype: Dtype = "auto", device: Device = "auto", device_map: Optional[str] = None, seed: NonNegativeInt = 0,
          lr: PositiveFloat = 1e-2, mask_dtype: MaskDtype = "float32", gradient_checkpointing: bool = False,
          checkpoint_every: PositiveInt = 50, overwrite: bool = False, arch: Optional[str] = None, compile: bool = False,
          split: Literal["texts", "languages"] = "texts", peer_timeout: Optional[PositiveFloat] = None) -> None:
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
        source: 'wikipedia' (hub wikimedia/wikipedia 20231101.<lang>, streamed), 'ntrex' (NTREX-128 news text, from
            --data or downloaded), 'embedded' (the passages shipped with lahis_ctrl), or a local path: a .txt /
            .jsonl file or a directory with <lang>.txt files (NTREX-128 layout). A '{lang}' in the path is replaced
            by each language.
        data: a folder with ntrex128/ (the layout of ../shared/data; default: env LAHIS_DATA_DIR): where --source
            ntrex is read from instead of downloading it.
        texts: number of texts per language (default: all local texts; 1000 for wikipedia).
        out: output folder.
        mode: faithful (reference algorithm, per text, AdamW steps on m) or fast (batched, m = 1).
        max_length: tokens per text.
        batch_size: texts per batch in fast mode.
        dtype: model dtype (auto: the checkpoint's own).
        device: where one process runs the model: auto (the first GPU when there is one, else the CPU), cpu,
            cuda, cuda:1...; several ranks each use their own GPU; ignored with device_map.
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
        split: with several ranks: texts (each language's texts split over all ranks; fast mode only) or
            languages (whole languages per rank, each scored as one process would; any mode).
        peer_timeout: with several ranks: seconds a rank waits for the others to start before it stops with an
            error (default: env LAHIS_PEER_TIMEOUT_S, else 600). The ranks then check that they were all given
            the same options and model weights.
    """
    import logging

    from ..core.loading import load_tokenizer
    from ..lahis import distributed as dist
    from ..lahis.scoring import score_languages

    out = Path(out)
    # fail on bad settings, languages and sources before joining the other ranks or loading a large model
    dist.check_mode(mode, split)
    from ..core.architecture import check_arch
    from ..core.fileio import run_lock
    from ..core.loading import load_config
    from ..corpora.texts import check_source
    from ..core.loading import load_model_on
    from .options import source_path
    from ..core.architecture import check_max_length

    source = source_path(source, data)
    for lang in languages:
        check_source(source, lang)
    config = load_config(model)  # the model's own limits and an --arch override checked before it loads
    check_max_length(config, max_length)
    check_arch(arch, config)
    ctx = dist.setup(peer_timeout_s=peer_timeout)  # several ranks: join, select this rank's GPU before loading
    # the first collective: every rank must have been started with the same options (each its own device)
    ctx.check_agreement({"model": model, "languages": languages, "source": source, "texts": texts, "out": str(out),
                         "mode": mode, "max_length": max_length, "batch_size": batch_size, "dtype": dtype,
                         "device_map": device_map, "seed": seed, "lr": lr, "mask_dtype": mask_dtype,
                         "gradient_checkpointing": gradient_checkpointing, "checkpoint_every": checkpoint_every,
                         "overwrite": overwrite, "arch": arch, "compile": compile, "split": split}, "the option")
    lock = contextlib.ExitStack()
    try:
        # one job per output folder: rank 0 holds the lock; if it cannot, every rank stops (none waits on it)
        ctx.agree(lambda: lock.enter_context(run_lock(out, f"lahis score --out {out}")) if ctx.is_main else None,
                  "locking the output folder")
        gpu = dist.rank_device(ctx)  # several ranks: each its own GPU
        if device_map is not None and ctx.active:
            logging.getLogger(__name__).warning(
                "device_map=%r with %d ranks: every rank spreads its own copy of the model over the GPUs it sees; "
                "use one or the other", device_map, ctx.world_size)
        m = load_model_on(model, dtype, str(gpu) if gpu is not None and device_map is None else device, device_map)
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


def heads(scores: str, q: Quantile = 0.96, min_rep: Optional[PositiveInt] = None, out: Optional[Path] = None) -> None:
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
    if out is not None:  # written first: a refused or failed write prints one error line, not a half report
        c.save(out)
    print(format_classification(c))
    if out is not None:
        print(f"wrote {out}")


def plot(scores: str, out: Path = Path("runs/plots"), q: Quantile = 0.96, min_rep: Optional[PositiveInt] = None,
         top_heads: Optional[PositiveInt] = None) -> None:
    """PNG plots of score files: heatmaps.png, overlap.png and layers.png (specific heads per layer).

    Args:
        scores: score files written by `lahis score` (one per language, same model): their folder, a glob such as
            'runs/scores/*.safetensors', or comma-separated files.
        out: output folder.
        q: quantile of the specific/general rule.
        min_rep: languages a head must be kept by to be general (default ceil(0.8 x languages)).
        top_heads: compare each language's top-N heads in the overlap plot (default: the heads above the q
            quantile).
    """
    from ..eval.plots import plot_heatmaps, plot_layer_distribution, plot_overlap
    from ..lahis.heads import classify_heads, load_scores

    from ..core.fileio import replace_together

    s = load_scores(scores)
    c = classify_heads(s, q=q, min_rep=min_rep)  # also refuses score files of two models or modes
    out = Path(out)
    names = ["heatmaps.png", "overlap.png"] + (["layers.png"] if len(s) >= 2 else [])
    with replace_together(out) as staged:  # the plots of one run replace the previous ones together, or none does
        plot_heatmaps(s, staged / "heatmaps.png", q=q)
        plot_overlap(s, staged / "overlap.png", top=top_heads, q=q)
        if len(s) >= 2:
            plot_layer_distribution(c, staged / "layers.png")
    print("wrote " + ", ".join(str(out / n) for n in names))


def train_mask(*, lang: str, scores: Optional[Path] = None, model: str = "gemma-3-270m",
               pick: Literal["top", "random"] = "top", trainable_heads: Optional[PositiveInt] = None,
               head_share: Share = 0.02, epochs: PositiveInt = 2, lr: PositiveFloat = 1e-2,
               batch_size: PositiveInt = 1, seed: NonNegativeInt = 0, data: Optional[str] = None,
               train_size: Optional[PositiveInt] = None, style: Literal["paper", "lm_eval"] = "paper",
               weight_decay: NonNegativeFloat = 0.01, max_length: Optional[MaxLength] = None, dtype: Dtype = "auto",
               device: Device = "auto", device_map: Optional[str] = None, out: Optional[Path] = None,
               overwrite: bool = False) -> None:
    """Train a soft head mask on QA in one language (XQuAD's reference train split by default).

    Args:
        lang: language (ar de el en es hi ro ru th tr vi zh).
        scores: LAHIS scores of this model for `lang` (.safetensors from `lahis score`); needed for --pick top.
        model: hub id, local directory or the embedded 'gemma-3-270m'.
        pick: which heads train: top (the best-scored heads: the LAHIS mask) or random (the baseline).
        trainable_heads: how many heads to train (default int(head_share x layers x heads), at least 1).
        head_share: share of all heads to train when --trainable_heads is not given (the reference: 0.02).
        epochs: passes over the training items.
        lr: AdamW learning rate.
        batch_size: items per step (padding is masked out of the loss).
        seed: seed for random heads and torch.
        data: XQuAD directory (xquad.<lang>.json or xquad/), 'embedded' for the shipped sample;
            default: env LAHIS_DATA_DIR, else the hub (google/xquad).
        train_size: train on only the first train_size items of the (shuffled) train split.
        style: prompt style: paper (the paper's, in the language) or lm_eval (lm-eval's xquad prompt).
        weight_decay: AdamW weight decay (trainable heads only).
        max_length: cut prompts from the left to fit this many tokens with the answer.
        dtype: model weights (auto: the checkpoint's own); the scales and the loss stay float32.
        device: where the model runs: auto (the first GPU when there is one, else the CPU), cpu, cuda, cuda:1...
        device_map: e.g. 'auto' to spread a model larger than one GPU (needs accelerate); overrides --device.
        out: mask file to write (.safetensors or .json); default runs/masks/<lang>-<pick>.safetensors.
            Per-epoch checkpoints go to <out>.ckpt/ (a rerun resumes from them); it is removed once the mask is
            written.
        overwrite: replace an existing --out made for another language, model or method.
    """
    from ..core.architecture import spec_from_config
    from ..core.fileio import run_lock
    import shutil

    from ..core.loading import load_config, load_tokenizer
    from ..core.mask import HeadMask
    from ..corpora.xquad import XQUAD_LANGS, check_lang, load_qa, select
    from ..core.loading import load_model_on
    from ..lahis.scores import HeadScores
    from ..lahis.softmask import mask_method, train_mask as train

    check_lang(lang, XQUAD_LANGS)
    out = Path(out) if out is not None else Path("runs/masks") / f"{lang}-{pick}.safetensors"
    if out.suffix not in (".safetensors", ".json"):
        raise LahisError(f"--out must end in .safetensors or .json, got {out}")
    if out.is_dir():
        raise LahisError(f"--out {out} is a folder; give the mask file to write (.safetensors or .json)")
    if pick == "top" and scores is None:
        raise LahisError("--pick top needs --scores FILE (LAHIS scores from `lahis score`); or use --pick random")
    spec = spec_from_config(load_config(model), str(model))
    score_obj = None
    if scores is not None:  # the wrong model's or the wrong language's scores fail before any weights load
        score_obj = HeadScores.load(scores).validate(spec)
        if score_obj.language and score_obj.language != lang:
            raise LahisError(f"{scores} holds LAHIS scores of '{score_obj.language}', not '{lang}': pass the {lang} "
                             "score file (the mask trains the language's own top heads)")
    if out.is_file() and not overwrite:
        old = HeadMask.load(out)
        if (old.language, old.method) != (lang, mask_method(pick)) or old.shape != spec.shape:
            raise LahisError(f"{out} already holds a {old.method} mask for '{old.language}' ({old.model_name}): "
                             "choose another --out, or pass --overwrite to replace it")
    rows_all, split = load_qa(lang, data)
    rows = select(rows_all, "train", split)
    if train_size is not None:
        rows = rows[:train_size]
    with run_lock(out.parent, f"lahis train-mask --out {out}", name=f".{out.name}.lock"):
        m = load_model_on(model, dtype, device, device_map)
        if out.is_file() and not overwrite:  # the same language and method, but perhaps another model's weights
            HeadMask.load(out).check_made_from(m, f"--out {out}", "choose another --out, or pass --overwrite to "
                                               "replace it")
        tok = load_tokenizer(model)
        checkpoints = out.with_name(out.name + ".ckpt")
        mask = train(m, tok, lang, score_obj, n=trainable_heads, p=head_share, epochs=epochs, lr=lr,
                     batch_size=batch_size, heads=pick, seed=seed, rows=rows, style=style, weight_decay=weight_decay,
                     max_length=max_length, checkpoint_dir=checkpoints, progress=True, replace_checkpoints=overwrite)
        mask.save(out)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the mask is written: its per-epoch checkpoints are done
    changed = ", ".join(f"L{layer}H{head}={mask.values[layer, head]:.3f}" for layer, head in mask.changed_heads())
    print(f"trained {len(mask.extra['trainable_heads'])} heads on {len(rows)} {lang} items "
          f"(loss per epoch: {', '.join(f'{x:.3f}' for x in mask.extra['epoch_loss'])})")
    print(f"changed heads: {changed or 'none'}")
    print(f"mask: {out}")
