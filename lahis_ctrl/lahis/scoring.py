"""LAHIS: Language Attention Head Importance Scores (Liu et al., AAAI 2026), faithful and fast.

A scale m[layer, head] (1 = untouched) multiplies each head's output before the attention output
projection. For every text i of one language, L_i is the mean next-token cross-entropy of the whole text
and g_i = dL_i/dm. Over N texts:

    importance        = mean_i 1000 * |g_i| * m        (the reference's x1000)
    negative_fraction = mean_i [g_i * m < 0]           (raising the head's scale would lower the loss)
    score             = importance * negative_fraction,  a float32 [layers, heads] matrix

Two modes:
  * ``faithful``: the reference algorithm step for step: one forward+backward per text, then one
    AdamW(lr=1e-2) step on m, so later gradients are taken at m != 1.
  * ``fast``: m fixed at 1 and texts batched. A text's loss depends only on its own row of the batch, so
    the gradient of the SUM of the per-text losses with respect to a per-row scale m[row, layer, head]
    is exactly that text's own g_i. One batched backward gives every text's g_i (and so the same |g| and
    sign statistics the reference accumulates), without the online updates of m.

The LM head and loss are chunked (and recomputed in backward) so a 262k vocabulary never materialises
[batch, pos, vocab] float32 logits at once.

Under torch.distributed (torchrun, accelerate launch; lahis/distributed.py) fast mode deals the length-sorted
batches out to the ranks, balanced by tokens; each rank sums its own texts and the sums are all-reduced, so
every rank returns the scores of one process (up to float32 summation order). Each rank checkpoints its own
partial sums. `score_languages(split="languages")` instead gives every rank whole languages.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from ..core import head_layout
from ..core.architecture import ModelSpec, describe, output_projections
from ..core.artifacts import Checkpoint, fingerprint
from ..core.control import check_row_input, replace_input, row_scales, scale_heads
from ..core.errors import LahisError
from ..core.identity import check_same_model, model_identity
from ..core.lm import (check_loss_matches, frozen, input_device, lm_parts, pad_batch, pad_id, sequence_losses,
                       tokenize_texts)
from . import distributed as dist
from .scores import HeadScores

log = logging.getLogger(__name__)

MODES = ("fast", "faithful")


# ====================================================================== per-text gradients (fast mode)
def per_text_gradients(model, tokenizer_or_ids, texts=None, max_length: int = 2048, batch_size: int = 8,
                       loss_chunk: Optional[int] = None, spec: Optional[ModelSpec] = None) -> torch.Tensor:
    """g_i = dL_i/dm at m = 1 for every text, from batched backward passes: float32 [texts, layers, heads] on the CPU.

    `tokenizer_or_ids`: a tokenizer (then pass `texts`) or a list of token-id lists.
    """
    spec = spec or describe(model)
    if texts is not None:
        ids = tokenize_texts(tokenizer_or_ids, texts, max_length)
        pad = pad_id(tokenizer_or_ids)
    else:
        ids, pad = [list(x) for x in tokenizer_or_ids], 0
    parts = lm_parts(model)
    out = []
    with frozen(model):
        for start in range(0, len(ids), batch_size):
            out.append(_batch_grads(model, spec, ids[start:start + batch_size], pad, parts, loss_chunk)[0].cpu())
    return torch.cat(out)


def _batch_grads(model, spec, seqs, pad, parts, loss_chunk, compiled: Optional["_CompiledScales"] = None):
    """([batch, layers, heads] float32 gradients, [batch] token counts) for one right-padded batch.

    The scales live on the model's input device (no host round trip per layer on GPUs)."""
    device = input_device(model)
    input_ids, attention_mask = pad_batch(seqs, pad, device)
    scales = torch.ones(len(seqs), spec.num_layers, spec.num_heads, dtype=torch.float32, device=device,
                        requires_grad=True)
    with (row_scales(model, spec, scales) if compiled is None else compiled.rows(scales)):
        losses, counts = sequence_losses(model, input_ids, attention_mask, loss_chunk, parts)
        # rows are independent, so d(sum_b L_b)/d scales[b] = dL_b/dm for text b
        losses.sum().backward()
    return scales.grad.detach(), counts


# ====================================================================== torch.compile of the decoder layers
def _compiled_row_hook(module, args, kwargs):
    """Per-row scales (fast mode) read from the module, so one hook function serves every layer (no per-layer
    constants for the compiler to guard on)."""
    rows = module._lahis_scale  # [batch, heads] float32, set per batch

    def fn(x):
        check_row_input(x, rows.shape[0])
        return head_layout.scale_rows(x, rows, module._lahis_head_dim, head_layout.CompiledRowScale)

    return replace_input(args, kwargs, fn)


def _compiled_head_hook(module, args, kwargs):
    """One scale per head (faithful mode), as control.scale_heads applies it."""
    row = module._lahis_scale  # [heads], a view of m set per text

    def fn(x):
        return head_layout.scale_input(x, head_layout.feature_scales(row.to(device=x.device, dtype=x.dtype),
                                                                     module._lahis_head_dim))

    return replace_input(args, kwargs, fn)


def _decoder_layers(model, spec: ModelSpec) -> Optional[list]:
    """The decoder layer (a ModuleList entry) holding each layer's o_proj, or None when they cannot be found."""
    modules = dict(model.named_modules())
    layers = []
    for name in spec.o_proj_names:
        parts = name.split(".")
        found = None
        for k in range(1, len(parts)):
            parent = modules.get(".".join(parts[:k - 1]))
            if parts[k - 1].isdigit() and isinstance(parent, torch.nn.ModuleList):
                found = modules[".".join(parts[:k])]
                break
        if found is None:
            return None
        layers.append(found)
    return layers if len({id(x) for x in layers}) == len(layers) else None


class _CompiledScales:
    """Hooks installed once for a compiled run; the scales of each batch / text are handed over through an
    attribute of each o_proj, so the compiled layers see them as graph inputs."""

    def __init__(self, projections):
        self.projections = projections

    def rows(self, scales: torch.Tensor):  # fast mode: [batch, layers, heads] -> layer l gets [batch, heads]
        return self._bind(scales, layer_dim=1)

    def heads(self, m: torch.Tensor):  # faithful mode: [layers, heads] -> layer l gets [heads]
        return self._bind(m, layer_dim=0)

    @contextlib.contextmanager
    def _bind(self, t: torch.Tensor, layer_dim: int) -> Iterator[None]:
        for layer, module in enumerate(self.projections):
            module._lahis_scale = t.select(layer_dim, layer)
        try:
            yield
        finally:
            for module in self.projections:
                module._lahis_scale = None


def _compile_backend(compile) -> Optional[str]:
    if compile is None or compile is False:
        return None
    if compile is True:
        return "inductor"
    if isinstance(compile, str) and compile:
        return compile
    raise LahisError(f"compile must be True, False or a torch.compile backend name; got {compile!r}")


@contextlib.contextmanager
def compiled_layers(model, spec: ModelSpec, backend: Optional[str], mode: str) -> Iterator[Optional[_CompiledScales]]:
    """Wrap each decoder layer with torch.compile (`backend`, dynamic shapes) while the context is open.

    Yields the per-batch scale setter, or None (plain eager run) when `backend` is None or compiling is not
    possible here (a warning says why). On exit the layers are what they were before (nothing stays compiled).
    """
    if backend is None:
        yield None
        return
    import torch._dynamo

    layers = _decoder_layers(model, spec)
    reason = None
    if not torch._dynamo.is_dynamo_supported():
        reason = "torch.compile is not supported with this Python / torch build"
    elif layers is None:
        reason = f"the decoder layers of {type(model).__name__} were not found"
    elif not all(hasattr(layer, "_compiled_call_impl") for layer in layers):
        reason = "this torch version cannot compile a module in place"
    if reason is not None:
        warnings.warn(f"compile=True ignored: {reason}; scoring runs eagerly (same results)", RuntimeWarning, stacklevel=3)
        yield None
        return
    projections = output_projections(model, spec)
    hook = _compiled_row_hook if mode == "fast" else _compiled_head_hook
    saved = [(layer, layer._compiled_call_impl) for layer in layers]
    handles = []
    # module-attribute tensors as dynamic graph inputs; a few shapes (first layer's input needs no grad, batch 1);
    # a backend failure falls back to eager for that layer (with dynamo's warning) instead of stopping the run
    patches = {k: v for k, v in {"force_nn_module_property_static_shapes": False, "recompile_limit": 32,
                                 "suppress_errors": True}.items() if hasattr(torch._dynamo.config, k)}
    try:
        for module in projections:
            module._lahis_head_dim = spec.head_dim
            module._lahis_scale = None
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for layer in layers:
            layer.compile(backend=backend, dynamic=True)
        with torch._dynamo.config.patch(**patches):
            yield _CompiledScales(projections)
    finally:
        for layer, previous in saved:
            layer._compiled_call_impl = previous
        for h in handles:
            h.remove()
        for module in projections:
            for attr in ("_lahis_head_dim", "_lahis_scale"):
                module.__dict__.pop(attr, None)


# ====================================================================== scoring
def score_heads(model, tokenizer, texts: Sequence[str], mode: str = "fast", max_length: int = 2048,
                batch_size: int = 4, language: Optional[str] = None, lr: float = 1e-2, mask_dtype: str = "float32",
                gradient_checkpointing: bool = False, loss_chunk: Optional[int] = None, source: str = "",
                checkpoint: Optional[str | os.PathLike] = None, checkpoint_every: int = 50, arch=None,
                check_loss: bool = True, progress: bool = True, compile: Union[bool, str] = False,
                distributed: bool = True, replace_checkpoint: bool = False) -> HeadScores:
    """LAHIS scores of `texts` (one language) for every attention head of `model`.

    Args:
        model: a transformers causal LM (any architecture lahis_ctrl.core.architecture knows, or `arch=` override);
            any dtype and device, including device_map-dispatched models. Its weights are left unchanged.
        tokenizer: the model's tokenizer.
        texts: the language's texts; each is truncated to `max_length` tokens and must have >= 2 tokens.
        mode: "faithful" (the reference: per-text forward+backward and an AdamW step on m after each text)
            or "fast" (m = 1, batched; each text's own gradient from one batched backward).
        max_length: tokens per text (the reference uses 2048).
        batch_size: texts per batch in fast mode (faithful mode is one text at a time by definition).
        language: language code stored with the scores.
        lr: the AdamW learning rate of faithful mode (reference: 1e-2).
        mask_dtype: dtype of m and of the accumulators in faithful mode: "float32" (default) or "bfloat16"
            (what the reference does).
        gradient_checkpointing: recompute layer activations in backward (less memory, ~30% more time).
        loss_chunk: positions per LM-head chunk (default: about 2**27 logits per chunk).
        source: where the texts came from (stored in the file's metadata).
        checkpoint: a file to save progress to every `checkpoint_every` texts; an existing one made with the
            same texts, settings and model weights is resumed, giving the same result as an uninterrupted run; one
            made otherwise is refused (`replace_checkpoint=True`: replaced). Under several ranks each rank uses its
            own file, <stem>.rank<r>-of-<N><suffix>, resumed by the same rank of a job with the same world size.
        arch: architecture override for models lahis_ctrl does not know (see core.architecture.ArchSpec).
        check_loss: first check that the chunked loss equals the model's own loss on a short prefix.
        progress: show a tqdm progress bar (rank 0 only under several ranks).
        compile: wrap each decoder layer with torch.compile while scoring (True: the inductor backend; a string
            names another backend). For GPUs; on CPUs compiling usually costs more than it saves. Results equal
            the eager ones up to float32 rounding. Falls back to eager, with a warning, where it cannot compile.
        distributed: under torch.distributed with several ranks (torchrun / accelerate launch: WORLD_SIZE > 1),
            fast mode splits the texts over the ranks and all-reduces the sums (every rank must call this with the
            same texts, settings and model weights, which the ranks check before they start; every rank returns the
            same scores). False: this process scores alone.
        replace_checkpoint: a checkpoint made with other texts, settings or weights is started over instead of
            refused.

    The result records the model's identity (core.identity.model_identity) and a digest of the texts. Scores
    that are not finite (a faithful run whose lr makes the scales overflow) are refused with the cause, never
    returned.
    """
    from tqdm.auto import tqdm

    from .. import __version__

    if mode not in MODES:
        raise LahisError(f"unknown scoring mode '{mode}': use one of {MODES}")
    if mask_dtype not in ("float32", "bfloat16"):
        raise LahisError(f"mask_dtype must be 'float32' or 'bfloat16', got '{mask_dtype}'")
    if batch_size < 1:
        raise LahisError(f"batch_size must be >= 1, got {batch_size}")
    backend = _compile_backend(compile)
    if mode == "faithful" and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                               or lr < 0):
        raise LahisError(f"lr must be a finite number >= 0 (0: no updates), got {lr!r}")
    # everything that fails the same way on every rank fails here, before the first collective
    dist.check_mode(mode, "texts", distributed)
    spec = describe(model, arch)
    identity = model_identity(model)
    ids = tokenize_texts(tokenizer, texts, max_length)
    pad = pad_id(tokenizer)
    parts = lm_parts(model)
    ctx = dist.context(distributed)
    n = len(ids)
    acc_dtype = torch.bfloat16 if (mode == "faithful" and mask_dtype == "bfloat16") else torch.float32
    settings = {"mode": mode, "max_length": int(max_length), "lr": lr if mode == "faithful" else None,
                "mask_dtype": mask_dtype if mode == "faithful" else "float32",
                "batch_size": batch_size if mode == "fast" else 1, "model": spec.to_dict() | {"o_proj_names": None}}

    # fast mode: batches of similar length waste less padding; the order is fixed so resumption is exact
    order = sorted(range(n), key=lambda i: len(ids[i])) if mode == "fast" else list(range(n))
    step = batch_size if mode == "fast" else 1
    batches = [order[s:s + step] for s in range(0, n, step)]
    if ctx.active:  # this rank's share of the batches, balanced by padded tokens
        mine = dist.shard_batches([len(b) * max(len(ids[i]) for i in b) for b in batches], ctx.world_size)[ctx.rank]
        key = {**settings, "rank": ctx.rank, "world_size": ctx.world_size}
    else:
        mine, key = list(range(len(batches))), settings
    ckpt = None
    if checkpoint:
        # one process: the full 64-digit form, as earlier versions wrote it, so their checkpoints still resume
        ckpt = Checkpoint(dist.rank_checkpoint_path(checkpoint, ctx.rank, ctx.world_size),
                          fingerprint(key, ids=ids, length=64), "scoring checkpoint", replace=replace_checkpoint,
                          identity=identity)
    texts_digest = fingerprint(None, ids=ids)
    # the ranks must be summing the same texts with the same settings on the same weights
    ctx.check_agreement({"settings": settings, "texts": texts_digest, "language": language,
                         "model weights": identity["weights_fingerprint"]}, "score_heads' input")

    device = input_device(model)
    # faithful mode keeps m, the AdamW state and the accumulators where the model's inputs are (no host round trips)
    importance_sum = torch.zeros(spec.shape, dtype=acc_dtype, device=device)
    negatives = torch.zeros(spec.shape, dtype=acc_dtype, device=device)
    m = torch.ones(spec.shape, dtype=acc_dtype, device=device, requires_grad=(mode == "faithful"))
    opt = torch.optim.AdamW([m], lr=lr) if mode == "faithful" else None
    done, tokens = 0, 0

    def setup():  # may fail on one rank only (its checkpoint file): run under ctx.agree
        if check_loss:
            check_loss_matches(model, ids[0], parts)
        if checkpoint and ctx.is_main:
            others = dist.rank_checkpoints(checkpoint, other_than=ctx.world_size)
            if others:
                log.warning("%s: ignoring checkpoints of runs with another number of ranks (%s); a run resumes only "
                            "with the world size that wrote its checkpoints", language or "scores",
                            ", ".join(p.name for p in others))
        return ckpt.load() if ckpt else None

    state = ctx.agree(setup, "checking the model and loading checkpoints")
    if state is not None:
        t, meta = state
        importance_sum = t["importance_sum"].to(device=device, dtype=acc_dtype)
        negatives = t["negatives"].to(device=device, dtype=acc_dtype)
        done, tokens = int(meta["done_batches"]), int(meta["tokens"])
        if opt is not None:
            with torch.no_grad():
                m.copy_(t["m"])
            if "exp_avg" in t:
                opt.load_state_dict({"state": {0: {"step": t["step"], "exp_avg": t["exp_avg"],
                                                   "exp_avg_sq": t["exp_avg_sq"]}},
                                     "param_groups": opt.state_dict()["param_groups"]})
        log.info("resuming %s from %s: %d of %d batches done", language or "scores", ckpt.path, done, len(mine))

    def save_ckpt(done_batches: int) -> None:
        tensors = {"importance_sum": importance_sum, "negatives": negatives}
        if opt is not None:
            tensors["m"] = m
            st = opt.state.get(m)
            if st:
                tensors.update(step=torch.as_tensor(st["step"]).reshape(()), exp_avg=st["exp_avg"],
                               exp_avg_sq=st["exp_avg_sq"])
        meta = {"done_batches": done_batches, "tokens": tokens, "language": language}
        if ctx.active:
            meta.update(rank=ctx.rank, world_size=ctx.world_size)
        ckpt.save(tensors, meta)

    def check_finite_gradients(g: torch.Tensor, batch: list[int]) -> None:
        """Every score from a non-finite gradient on would be NaN: stop at once and say why."""
        if bool(torch.isfinite(g).all()):
            return
        where = f"text {batch[0] + 1} of {n}" if mode == "faithful" else f"a batch of {len(batch)} texts"
        cause = (f"AdamW with lr={lr:g} has driven the head scales to {float(m.detach().abs().max()):.3g}; use a "
                 "smaller lr (the reference uses 0.01)") if mode == "faithful" and bool((m.detach() != 1).any()) else \
            f"the model's loss overflows in {next(model.parameters()).dtype}; score in float32 or bfloat16"
        raise LahisError(f"LAHIS {mode} scoring of {language or 'the texts'} got non-finite gradients at {where}: "
                         f"{cause}")

    def run() -> None:
        nonlocal importance_sum, negatives, tokens
        last_saved = done
        texts_per_ckpt = max(1, int(checkpoint_every))
        bar = tqdm(total=sum(len(batches[b]) for b in mine), initial=sum(len(batches[b]) for b in mine[:done]),
                   desc=f"LAHIS {mode} {language or ''}".strip(), unit="text", disable=not progress or not ctx.is_main)
        try:  # the bar is closed on errors too: an error line never continues a half-drawn bar
            with frozen(model, gradient_checkpointing), compiled_layers(model, spec, backend, mode) as compiled:
                for k in range(done, len(mine)):
                    batch = batches[mine[k]]
                    if mode == "fast":
                        g, counts = _batch_grads(model, spec, [ids[i] for i in batch], pad, parts, loss_chunk, compiled)
                        check_finite_gradients(g, batch)
                        # m == 1: |g*m| = |g| and [g*m < 0] = [g < 0]; sum over the batch's texts
                        importance_sum += (1000.0 * g.abs()).sum(0)
                        negatives += (g < 0).to(acc_dtype).sum(0)
                    else:
                        x = torch.tensor([ids[batch[0]]], device=device)
                        with (scale_heads(model, m, spec) if compiled is None else compiled.heads(m)):
                            loss = sequence_losses(model, x, torch.ones_like(x), loss_chunk, parts)[0][0]
                            loss.backward()
                        g = m.grad.detach()
                        check_finite_gradients(g, batch)
                        with torch.no_grad():
                            importance_sum += 1000.0 * g.abs() * m.detach()
                            negatives += (g * m.detach() < 0).to(acc_dtype)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    tokens += sum(len(ids[i]) for i in batch)
                    bar.update(len(batch))
                    if ckpt and sum(len(batches[b]) for b in mine[last_saved:k + 1]) >= texts_per_ckpt:
                        save_ckpt(k + 1)
                        last_saved = k + 1
        finally:
            bar.close()
        if ckpt and last_saved != len(mine):
            save_ckpt(len(mine))

    ctx.agree(run, f"scoring {language or 'the texts'}")
    if ctx.active:  # every rank's sums -> the sums of one process (float32; counts are exact)
        total = torch.tensor([tokens], dtype=torch.int64)
        ctx.all_reduce_sum_(importance_sum, negatives, total)
        tokens = int(total.item())

    importance = importance_sum.float().cpu() / n
    negative_fraction = negatives.float().cpu() / n
    extra = {"max_length": int(max_length), "lahis_ctrl_version": __version__,
             "dtype": str(next(model.parameters()).dtype), "world_size": ctx.world_size,
             "texts_digest": fingerprint([str(t) for t in texts])}  # what a stored file is reused for (check_reusable)
    if mode == "faithful":
        extra.update(lr=lr, mask_dtype=mask_dtype, final_m=m.detach().float().cpu().tolist())
    else:
        extra.update(batch_size=batch_size)
    result = HeadScores(importance * negative_fraction, importance, negative_fraction, model_type=spec.model_type,
                        head_dim=spec.head_dim, model_name=spec.name_or_path, num_kv_heads=spec.num_kv_heads,
                        language=language, mode=mode, num_texts=n, num_tokens=tokens, source=str(source), extra=extra,
                        model_identity=identity)
    return result.check_finite()


def score_languages(model, tokenizer, languages: Sequence[str], source: str = "embedded", n: Optional[int] = None,
                    mode: str = "fast", max_length: int = 2048, batch_size: int = 4, seed: int = 0,
                    out_dir: Optional[str | os.PathLike] = None, progress: bool = True, split: str = "texts",
                    overwrite: bool = False, distributed: bool = True, **kwargs) -> dict[str, HeadScores]:
    """Score several languages: {lang: HeadScores}. Texts come from `corpora.load_texts(source, lang, n, seed)`.

    With `out_dir`, each language is saved as <out_dir>/<lang>.safetensors (checkpointed while it runs)
    and a language whose file already exists for the same model weights (core.identity), texts and settings
    (mode, source, texts, max_length, dtype; lr and mask_dtype in faithful mode) is loaded instead of rescored;
    a file made otherwise is refused, naming both sides (`overwrite=True`: it is rescored; its old file is
    replaced only when the new scores are written, and an interrupted overwrite resumes from its checkpoint).

    Under torch.distributed with several ranks (every rank calls this with the same arguments; each returns
    the same dict):
      * split="texts" (default): the languages one after the other, each language's texts split over all
        ranks (score_heads); rank 0 decides what is already scored and writes the files.
      * split="languages": whole languages per rank (language i on rank i % world_size), each scored by its rank
        alone, exactly as one process scores it (no all-reduce; faithful mode allowed); each rank writes its own
        languages' files and checkpoints (<lang>.ckpt.safetensors, the one-process format), then the ranks
        exchange their results.
    """
    dist.check_mode(mode, split, distributed)
    if isinstance(languages, (str, bytes)) or not hasattr(languages, "__iter__"):
        raise TypeError(f"languages must be a list of language codes, e.g. ['en', 'de']; got {languages!r}")
    languages = list(languages)
    ctx = dist.context(distributed)
    common = dict(source=source, n=n, mode=mode, max_length=max_length, batch_size=batch_size, seed=seed,
                  out_dir=out_dir, progress=progress, overwrite=overwrite)
    if ctx.active:  # before the first collective: the ranks must have been given the same job
        ctx.check_agreement({**{k: v for k, v in common.items() if k != "progress"}, "languages": languages,
                             "split": split, **{k: v for k, v in kwargs.items() if k != "progress"},
                             "model weights": model_identity(model)["weights_fingerprint"]}, "score_languages' input")
    if ctx.active and split == "languages":
        mine = dist.split_languages(languages, ctx.world_size)[ctx.rank]
        local = ctx.agree(lambda: score_languages(model, tokenizer, mine, distributed=False, **common, **kwargs),
                          "scoring", kept="finished languages and checkpoints are kept")
        gathered = ctx.all_gather_object(local)
        merged = {lang: s for res in gathered for lang, s in res.items()}
        return {lang: merged[lang] for lang in languages}
    return _score_languages_in_turn(ctx, model, tokenizer, languages, distributed=distributed, **common, **kwargs)


def _score_languages_in_turn(ctx, model, tokenizer, languages, source, n, mode, max_length, batch_size, seed, out_dir,
                             progress, overwrite, distributed, **kwargs) -> dict[str, HeadScores]:
    """One language after the other; under several ranks each language's texts are split over all of them."""
    from ..corpora.texts import load_texts

    spec = describe(model, kwargs.get("arch"))
    identity = model_identity(model)
    results: dict[str, HeadScores] = {}
    for lang in languages:
        path = Path(out_dir) / f"{lang}.safetensors" if out_dir else None
        ckpt = path.with_suffix(".ckpt.safetensors") if path is not None else None

        def prepare(lang=lang, path=path):
            # with overwrite, the finished file stays until the new one replaces it (atomically, once this run has
            # finished the language), and a checkpoint of this same run resumes: an interrupted overwrite goes on
            texts = load_texts(source, lang, n=n, seed=seed, tokenizer=tokenizer)
            if path is None or not ctx.is_main or not path.is_file() or overwrite:
                return texts, None
            done = HeadScores.load(path).validate(spec)
            check_same_model(done.model_identity, identity, f"{path} (scores of '{lang}')",
                             fix="choose another output folder, or pass overwrite (--overwrite) to rescore it")
            check_reusable(done, path, lang, scoring_settings(model, mode, source, texts, max_length, kwargs))
            try:  # a NaN file of an earlier version is never handed back as this run's scores
                done.check_finite(f"{path}")
            except LahisError as exc:
                raise LahisError(f"{exc}; pass overwrite (--overwrite) to rescore it") from None
            return texts, done

        texts, done = ctx.agree(prepare, f"preparing {lang}")
        done = ctx.broadcast_object(done)  # rank 0 looked at the output folder: every rank follows its decision
        if done is not None:
            log.info("%s: already scored (%s)", lang, path)
            results[lang] = done
            continue
        results[lang] = score_heads(model, tokenizer, texts, mode=mode, max_length=max_length, batch_size=batch_size,
                                    language=lang, source=describe_source(source), checkpoint=ckpt,
                                    progress=progress, distributed=distributed, replace_checkpoint=overwrite, **kwargs)
        if path is not None:
            ctx.agree(lambda lang=lang, path=path: results[lang].save(path) if ctx.is_main else None, f"writing {path}")
            dist.rank_checkpoint_path(ckpt, ctx.rank, ctx.world_size).unlink(missing_ok=True)
    return results


def scoring_settings(model, mode: str, source, texts: Sequence[str], max_length: int, kwargs: dict) -> dict:
    """What a stored score file must share with a run to stand for its result (the weights are checked apart)."""
    wanted = {"mode": mode, "source": describe_source(source), "num_texts": len(texts), "max_length": int(max_length),
              "dtype": str(next(model.parameters()).dtype), "texts": fingerprint([str(t) for t in texts])}
    if mode == "faithful":
        wanted.update(lr=kwargs.get("lr", 1e-2), mask_dtype=kwargs.get("mask_dtype", "float32"))
    return wanted


def check_reusable(done: HeadScores, path: Path, lang: str, wanted: dict) -> None:
    """Refuse a stored score file made with other settings than `wanted` (scoring_settings), naming each difference.
    A setting the file does not record (files of earlier versions) is not compared."""
    have = {"mode": done.mode, "source": done.source, "num_texts": done.num_texts, **done.extra,
            "texts": done.extra.get("texts_digest")}
    differ = [f"{k} {have[k]!r} (now {v!r})" for k, v in wanted.items() if have.get(k) is not None and have[k] != v]
    if differ:
        raise LahisError(f"{path} already holds '{lang}' scores made with other settings: {', '.join(differ)}; choose "
                         "another output folder, or pass overwrite (--overwrite) to rescore it")


def describe_source(source) -> str:
    s = str(source)
    return s if s in ("embedded", "wikipedia", "ntrex") or s.startswith("wikipedia:") else f"file:{s}"
