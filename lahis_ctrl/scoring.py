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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import LahisError, MaskMismatchError
from .control import installed_input_transforms
from .fileio import atomic_path
from .introspect import ModelSpec, describe, output_projections, text_config

log = logging.getLogger(__name__)

FORMAT = "lahis-head-scores/1"
CHECKPOINT_FORMAT = "lahis-score-checkpoint/1"
MODES = ("fast", "faithful")
_FACTS = ("model_name", "model_type", "num_kv_heads", "head_dim", "language", "mode", "num_texts", "num_tokens",
          "source")


# ====================================================================== the score file


@dataclass
class HeadScores:
    """LAHIS scores of one language for one model. All matrices are float32 [num_layers, num_heads]."""

    scores: torch.Tensor
    importance: torch.Tensor
    negative_fraction: torch.Tensor
    model_type: str
    head_dim: int
    model_name: str = ""
    num_kv_heads: Optional[int] = None
    language: Optional[str] = None
    mode: str = "fast"
    num_texts: int = 0
    num_tokens: int = 0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # settings (max_length, lr, batch_size, version...)

    def __post_init__(self):
        for name in ("scores", "importance", "negative_fraction"):
            t = torch.as_tensor(getattr(self, name)).detach().to("cpu", torch.float32).clone()
            if t.dim() != 2:
                raise MaskMismatchError(f"HeadScores.{name} must be [num_layers, num_heads]; got shape {tuple(t.shape)}")
            setattr(self, name, t)
        if not (self.scores.shape == self.importance.shape == self.negative_fraction.shape):
            raise MaskMismatchError("HeadScores: scores, importance and negative_fraction have different shapes")

    @property
    def num_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.scores.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    def facts(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _FACTS} | {"num_layers": self.num_layers, "num_heads": self.num_heads}

    def top_heads(self, n: int) -> list[tuple[int, int]]:
        """The n highest-scoring heads as (layer, head), best first (ties: lower layer, then lower head)."""
        if n < 0:
            raise LahisError(f"top_heads needs n >= 0, got {n}")
        flat = self.scores.flatten()
        # stable sort on the negated scores keeps ties in (layer, head) order
        order = torch.sort(-flat, stable=True).indices[: min(n, flat.numel())]
        return [(int(i) // self.num_heads, int(i) % self.num_heads) for i in order]

    def validate(self, target) -> "HeadScores":
        """Check these scores fit `target` (a model or ModelSpec); the same checks as HeadMask.validate."""
        from .mask import HeadMask

        probe = HeadMask(self.scores, model_type=self.model_type, head_dim=self.head_dim, model_name=self.model_name,
                         num_kv_heads=self.num_kv_heads)
        try:
            probe.validate(target)
        except MaskMismatchError as exc:
            msg = str(exc).replace("mask for", "scores for", 1).replace("Use a mask made", "Use scores made")
            raise MaskMismatchError(msg) from None
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write a .safetensors file (keys scores, importance, negative_fraction; facts in the metadata)."""
        from safetensors.torch import save_file

        from . import __version__

        path = Path(path)
        if path.suffix != ".safetensors":
            raise LahisError(f"head scores are saved as .safetensors, not '{path.suffix}' ({path})")
        meta = {"format": FORMAT, "lahis_ctrl_version": __version__, "extra": json.dumps(self.extra, ensure_ascii=False)}
        meta.update({k: json.dumps(v, ensure_ascii=False) for k, v in self.facts().items()})
        tensors = {"scores": self.scores.contiguous(), "importance": self.importance.contiguous(),
                   "negative_fraction": self.negative_fraction.contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadScores":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LahisError(f"score file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
                if "scores" not in keys:
                    raise LahisError(f"{path} has no tensor named 'scores' (keys: {sorted(keys)}); is it a LAHIS score file?")
                tensors = {k: f.get_tensor(k) for k in keys}
        except LahisError:
            raise
        except Exception as exc:
            raise LahisError(f"{path} is not a readable safetensors file: {exc}") from exc
        if "model_type" not in meta or "head_dim" not in meta:
            raise LahisError(f"{path} does not say which model it belongs to (model_type, head_dim missing)")
        facts = {k: json.loads(meta[k]) for k in _FACTS if k in meta}
        extra = json.loads(meta.get("extra", "{}"))
        extra.setdefault("lahis_ctrl_version", meta.get("lahis_ctrl_version"))
        scores = tensors["scores"]
        # a bare score matrix (e.g. converted from the reference) has no parts: keep what we can
        importance = tensors.get("importance", scores)
        negative_fraction = tensors.get("negative_fraction", torch.ones_like(scores))
        return cls(scores, importance, negative_fraction, extra=extra, **facts)

    def __repr__(self) -> str:
        return (f"HeadScores({self.model_type} '{self.model_name}', {self.num_layers}x{self.num_heads}, "
                f"lang={self.language}, mode={self.mode}, texts={self.num_texts}, tokens={self.num_tokens})")


# ====================================================================== chunked LM head + loss


def _lm_parts(model):
    """(decoder body, output embedding, logits transform) of a causal LM, found without module names.

    The transform reproduces what the model's own forward does to the logits after the LM head
    (Gemma's final-logit softcapping, Cohere's logit_scale, Granite's logits_scaling), in the same order
    and dtype, so the chunked loss equals the model's own loss.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        decoder = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or decoder is model or head is None:
        raise LahisError(f"cannot find the decoder body and LM head of {type(model).__name__}: LAHIS scoring needs a "
                         "transformers causal LM (…ForCausalLM or a multimodal model with a text decoder)")
    tc = text_config(model.config)
    cap = getattr(tc, "final_logit_softcapping", None)
    logit_scale = getattr(model, "logit_scale", None)  # Cohere: logits * logit_scale
    logits_scaling = getattr(tc, "logits_scaling", None) if getattr(tc, "model_type", "").startswith("granite") else None

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if logit_scale is not None:
            logits = logits * logit_scale
        if logits_scaling is not None:
            logits = logits / logits_scaling
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return decoder, head, transform


def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    return emb.weight.device


def default_loss_chunk(vocab_size: int) -> int:
    """Positions per LM-head chunk: about 2**27 logits (512 MiB of float32) whatever the vocabulary."""
    return max(16, int(2**27 // max(1, vocab_size)))


def sequence_losses(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_chunk: Optional[int] = None,
                    parts=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean next-token cross-entropy of a right-padded batch, with a chunked LM head.

    input_ids, attention_mask: [batch, pos] (right padding: a row's real tokens come first).
    Returns (losses [batch] float32, token counts [batch] int64: predicted tokens per row).
    When grad is enabled each chunk is checkpointed, so backward recomputes its [chunk, vocab] logits
    instead of keeping all of them alive.
    """
    decoder, head, transform = parts or _lm_parts(model)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # [batch, pos, hidden]
    mask = attention_mask.to(hidden.device).bool()
    valid = mask[:, 1:] & mask[:, :-1]  # [batch, pos-1]: position t predicts token t+1
    rows = valid.nonzero()[:, 0]  # [n] row of every predicted position
    h = hidden[:, :-1][valid]  # [n, hidden]: only the positions that carry a loss
    labels = input_ids.to(hidden.device)[:, 1:][valid]  # [n]
    batch = input_ids.shape[0]
    counts = valid.sum(1)
    if h.shape[0] == 0:
        raise LahisError("no text in the batch has 2 or more tokens; a next-token loss needs at least 2")
    chunk = loss_chunk or default_loss_chunk(head.weight.shape[0])

    def chunk_nll(h_c: torch.Tensor, labels_c: torch.Tensor) -> torch.Tensor:
        logits = transform(head(h_c))  # [chunk, vocab] in the model's dtype, as the model computes them
        logits = logits if logits.dtype == torch.float64 else logits.float()  # upcast as the model's loss does
        return F.cross_entropy(logits, labels_c.to(logits.device), reduction="none").to(hidden.device)

    pieces = []
    needs_grad = torch.is_grad_enabled() and h.requires_grad
    head_frozen = not any(p.requires_grad for p in head.parameters())
    for start in range(0, h.shape[0], chunk):
        args = (h[start:start + chunk], labels[start:start + chunk])
        if needs_grad and head_frozen:
            pieces.append(_FusedHeadNLL.apply(args[0], args[1], chunk_nll))
        elif needs_grad:  # the head itself is trained: keep autograd's graph, but recompute logits in backward
            pieces.append(torch.utils.checkpoint.checkpoint(chunk_nll, *args, use_reentrant=False))
        else:
            pieces.append(chunk_nll(*args))
    nll = torch.cat(pieces)  # [n] float32
    sums = torch.zeros(batch, dtype=nll.dtype, device=nll.device).index_add(0, rows.to(nll.device), nll)
    return sums / counts.to(nll.device).clamp(min=1), counts.cpu()


class _FusedHeadNLL(torch.autograd.Function):
    """Per-position NLL of one chunk whose backward needs no logits: d nll_i / d h_i is taken in forward.

    nll_i depends on h_i alone, so J = d(sum_i nll_i)/dh [chunk, hidden] holds every position's own
    gradient, and backward is grad_nll[:, None] * J for any upstream weighting. The [chunk, vocab] logits
    are freed before the next chunk, and the LM head runs twice (forward, backward to h) instead of three
    times (forward, recompute, backward) as with checkpointing. Only valid when the head is frozen.
    """

    @staticmethod
    def forward(ctx, h, labels, fn):
        with torch.enable_grad():
            hc = h.detach().requires_grad_(True)
            nll = fn(hc, labels)
            (jac,) = torch.autograd.grad(nll.sum(), hc)
        ctx.save_for_backward(jac)
        return nll.detach()

    @staticmethod
    def backward(ctx, grad_nll):
        (jac,) = ctx.saved_tensors
        return (grad_nll.to(jac.device)[:, None] * jac.float()).to(jac.dtype), None, None


# ====================================================================== tokenisation and checks


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int = 2048) -> list[list[int]]:
    """Token ids of each text (special tokens added as the model expects), truncated to max_length."""
    if max_length is None or int(max_length) < 2:
        raise LahisError(f"max_length must be at least 2 (a next-token loss needs two tokens); got {max_length}")
    if isinstance(texts, str):
        raise LahisError("texts must be a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise LahisError("the corpus is empty: no texts to score (check the source, language and n)")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise LahisError(f"texts must be strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}")
    ids = [tokenizer(t, truncation=True, max_length=int(max_length))["input_ids"] for t in texts]
    short = [i for i, x in enumerate(ids) if len(x) < 2]
    if short:
        raise LahisError(f"{len(short)} text(s) have fewer than 2 tokens (first: item {short[0]}, "
                         f"{texts[short[0]][:40]!r}); a next-token loss needs at least 2. Remove empty or one-word texts.")
    return ids


def _pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists: ([batch, max_len] ids, [batch, max_len] attention mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0  # padded positions are masked out and carry no loss: any valid id will do


def check_loss_matches(model, ids: Sequence[int], parts=None, tokens: int = 16) -> None:
    """Compare the chunked loss with the model's own loss on a short prefix; raise if they differ.

    Catches models whose forward transforms the logits in a way `_lm_parts` does not know.
    """
    ids = list(ids)[:tokens]
    if len(ids) < 2:
        return
    device = _input_device(model)
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        mine = sequence_losses(model, x, torch.ones_like(x), parts=parts)[0][0].item()
        try:
            theirs = model(input_ids=x, labels=x, use_cache=False).loss.item()
        except Exception as exc:  # a wrapper whose forward takes no labels: nothing to compare with
            log.warning("could not compute the model's own loss to check the chunked loss (%s)", exc)
            return
    dtype = next(model.parameters()).dtype
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    if not math.isclose(mine, theirs, rel_tol=tol, abs_tol=tol):
        raise LahisError(f"the chunked LM loss ({mine:.5f}) differs from {type(model).__name__}'s own loss ({theirs:.5f}): "
                         "its forward transforms the logits in a way lahis_ctrl does not know. Please report the model type.")


@contextlib.contextmanager
def _frozen(model, gradient_checkpointing: bool = False) -> Iterator[None]:
    """Weights frozen (no weight gradients are computed), eval mode unless gradient checkpointing needs train mode."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        if gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise LahisError(f"{type(model).__name__} does not support gradient checkpointing")
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            model.train()  # transformers checkpoints layers only in train mode
            for m in model.modules():  # ...but dropout must stay off
                if isinstance(m, torch.nn.Dropout):
                    m.eval()
        yield
    finally:
        if gradient_checkpointing:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        model.train(was_training)
        for p, flag in saved:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _row_scales(model, spec: ModelSpec, scales: torch.Tensor) -> Iterator[None]:
    """Per-row head scales: `scales` [batch, layers, heads] multiplies row b's head outputs at every layer.

    With scales == 1 the forward is unchanged; d(sum of row losses)/d scales[b] is row b's own gradient.
    The product is taken in float32 so the per-position sum behind the gradient is accumulated in float32
    even for bf16 models.
    """
    def scaled(layer: int):
        def transform(x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 3 or x.shape[0] != scales.shape[0]:
                raise LahisError(f"fast scoring expects [batch, pos, features] o_proj inputs; got {tuple(x.shape)}")
            # scales[:, layer]: [batch, heads] -> [batch, 1, heads * head_dim], head h owns its head_dim features
            s = scales[:, layer].to(x.device).repeat_interleave(spec.head_dim, dim=-1)[:, None, :]
            return (x.float() * s).to(x.dtype)

        return transform

    with installed_input_transforms([(module, scaled(layer))
                                     for layer, module in enumerate(output_projections(model, spec))]):
        yield


def per_text_gradients(model, tokenizer_or_ids, texts=None, max_length: int = 2048, batch_size: int = 8,
                       loss_chunk: Optional[int] = None, spec: Optional[ModelSpec] = None) -> torch.Tensor:
    """g_i = dL_i/dm at m = 1 for every text, from batched backward passes: float32 [texts, layers, heads].

    `tokenizer_or_ids`: a tokenizer (then pass `texts`) or a list of token-id lists.
    """
    spec = spec or describe(model)
    if texts is not None:
        ids = tokenize_texts(tokenizer_or_ids, texts, max_length)
        pad = _pad_id(tokenizer_or_ids)
    else:
        ids, pad = [list(x) for x in tokenizer_or_ids], 0
    parts = _lm_parts(model)
    out = []
    with _frozen(model):
        for start in range(0, len(ids), batch_size):
            out.append(_batch_grads(model, spec, ids[start:start + batch_size], pad, parts, loss_chunk)[0])
    return torch.cat(out)


def _batch_grads(model, spec, seqs, pad_id, parts, loss_chunk):
    """([batch, layers, heads] float32 gradients, [batch] token counts) for one right-padded batch."""
    device = _input_device(model)
    input_ids, attention_mask = _pad_batch(seqs, pad_id, device)
    scales = torch.ones(len(seqs), spec.num_layers, spec.num_heads, dtype=torch.float32, requires_grad=True)
    with _row_scales(model, spec, scales):
        losses, counts = sequence_losses(model, input_ids, attention_mask, loss_chunk, parts)
        # rows are independent, so d(sum_b L_b)/d scales[b] = dL_b/dm for text b
        losses.sum().backward()
    return scales.grad.detach(), counts


# ====================================================================== scoring


def _fingerprint(ids: list[list[int]], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for seq in ids:
        h.update(len(seq).to_bytes(4, "little"))
        h.update(torch.as_tensor(seq, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": CHECKPOINT_FORMAT, "state": json.dumps(meta)})


def _load_checkpoint(path: Path, fingerprint: str) -> Optional[tuple[dict[str, torch.Tensor], dict]]:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise LahisError(f"cannot read the scoring checkpoint {path} ({exc}); delete it to start over") from exc
    if meta.get("fingerprint") != fingerprint:
        raise LahisError(f"the checkpoint {path} was written for other texts or settings (mode, max_length, batch "
                         "size, model...); delete it to start over, or rerun with the same settings to resume")
    return tensors, meta


def score_heads(model, tokenizer, texts: Sequence[str], mode: str = "fast", max_length: int = 2048,
                batch_size: int = 4, language: Optional[str] = None, lr: float = 1e-2, mask_dtype: str = "float32",
                gradient_checkpointing: bool = False, loss_chunk: Optional[int] = None, source: str = "",
                checkpoint: Optional[str | os.PathLike] = None, checkpoint_every: int = 50, arch=None,
                check_loss: bool = True, progress: bool = True) -> HeadScores:
    """LAHIS scores of `texts` (one language) for every attention head of `model`.

    Args:
        model: a transformers causal LM (any architecture lahis_ctrl.introspect knows, or `arch=` override);
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
            same texts and settings is resumed, giving the same result as an uninterrupted run.
        arch: architecture override for models lahis_ctrl does not know (see introspect.ArchSpec).
        check_loss: first check that the chunked loss equals the model's own loss on a short prefix.
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    from . import __version__

    if mode not in MODES:
        raise LahisError(f"unknown scoring mode '{mode}': use one of {MODES}")
    if mask_dtype not in ("float32", "bfloat16"):
        raise LahisError(f"mask_dtype must be 'float32' or 'bfloat16', got '{mask_dtype}'")
    if batch_size < 1:
        raise LahisError(f"batch_size must be >= 1, got {batch_size}")
    spec = describe(model, arch)
    ids = tokenize_texts(tokenizer, texts, max_length)
    pad = _pad_id(tokenizer)
    parts = _lm_parts(model)
    if check_loss:
        check_loss_matches(model, ids[0], parts)
    n = len(ids)
    acc_dtype = torch.bfloat16 if (mode == "faithful" and mask_dtype == "bfloat16") else torch.float32
    settings = {"mode": mode, "max_length": int(max_length), "lr": lr if mode == "faithful" else None,
                "mask_dtype": mask_dtype if mode == "faithful" else "float32",
                "batch_size": batch_size if mode == "fast" else 1, "model": spec.to_dict() | {"o_proj_names": None}}
    fingerprint = _fingerprint(ids, settings)
    ckpt_path = Path(checkpoint) if checkpoint else None

    importance_sum = torch.zeros(spec.shape, dtype=acc_dtype)
    negatives = torch.zeros(spec.shape, dtype=acc_dtype)
    m = torch.ones(spec.shape, dtype=acc_dtype, requires_grad=(mode == "faithful"))
    opt = torch.optim.AdamW([m], lr=lr) if mode == "faithful" else None
    done, tokens = 0, 0

    # fast mode: batches of similar length waste less padding; the order is fixed so resumption is exact
    order = sorted(range(n), key=lambda i: len(ids[i])) if mode == "fast" else list(range(n))
    step = batch_size if mode == "fast" else 1
    batches = [order[s:s + step] for s in range(0, n, step)]

    state = _load_checkpoint(ckpt_path, fingerprint) if ckpt_path else None
    if state is not None:
        t, meta = state
        importance_sum, negatives = t["importance_sum"].to(acc_dtype), t["negatives"].to(acc_dtype)
        done, tokens = int(meta["done_batches"]), int(meta["tokens"])
        if opt is not None:
            with torch.no_grad():
                m.copy_(t["m"])
            if "exp_avg" in t:
                opt.load_state_dict({"state": {0: {"step": t["step"], "exp_avg": t["exp_avg"],
                                                   "exp_avg_sq": t["exp_avg_sq"]}},
                                     "param_groups": opt.state_dict()["param_groups"]})
        log.info("resuming %s from %s: %d of %d batches done", language or "scores", ckpt_path, done, len(batches))

    def save_ckpt(done_batches: int) -> None:
        tensors = {"importance_sum": importance_sum, "negatives": negatives}
        if opt is not None:
            tensors["m"] = m
            st = opt.state.get(m)
            if st:
                tensors.update(step=torch.as_tensor(st["step"]).reshape(()), exp_avg=st["exp_avg"],
                               exp_avg_sq=st["exp_avg_sq"])
        _save_checkpoint(ckpt_path, tensors, {"fingerprint": fingerprint, "done_batches": done_batches,
                                              "tokens": tokens, "language": language})

    last_saved = done
    texts_per_ckpt = max(1, int(checkpoint_every))
    bar = tqdm(total=n, initial=sum(len(b) for b in batches[:done]), desc=f"LAHIS {mode} {language or ''}".strip(),
               unit="text", disable=not progress)
    device = _input_device(model)
    with _frozen(model, gradient_checkpointing):
        for b in range(done, len(batches)):
            batch = batches[b]
            if mode == "fast":
                g, counts = _batch_grads(model, spec, [ids[i] for i in batch], pad, parts, loss_chunk)
                # m == 1: |g*m| = |g| and [g*m < 0] = [g < 0]; sum over the batch's texts
                importance_sum += (1000.0 * g.abs()).sum(0)
                negatives += (g < 0).to(acc_dtype).sum(0)
            else:
                from .control import scale_heads

                x = torch.tensor([ids[batch[0]]], device=device)
                with scale_heads(model, m, spec):
                    loss = sequence_losses(model, x, torch.ones_like(x), loss_chunk, parts)[0][0]
                    loss.backward()
                g = m.grad.detach()
                with torch.no_grad():
                    importance_sum += 1000.0 * g.abs() * m.detach()
                    negatives += (g * m.detach() < 0).to(acc_dtype)
                opt.step()
                opt.zero_grad(set_to_none=True)
            tokens += sum(len(ids[i]) for i in batch)
            bar.update(len(batch))
            if ckpt_path and sum(len(x) for x in batches[last_saved:b + 1]) >= texts_per_ckpt:
                save_ckpt(b + 1)
                last_saved = b + 1
    bar.close()
    if ckpt_path and last_saved != len(batches):
        save_ckpt(len(batches))

    importance = importance_sum.float() / n
    negative_fraction = negatives.float() / n
    extra = {"max_length": int(max_length), "lahis_ctrl_version": __version__, "dtype": str(next(model.parameters()).dtype)}
    if mode == "faithful":
        extra.update(lr=lr, mask_dtype=mask_dtype, final_m=m.detach().float().tolist())
    else:
        extra.update(batch_size=batch_size)
    return HeadScores(importance * negative_fraction, importance, negative_fraction, model_type=spec.model_type,
                      head_dim=spec.head_dim, model_name=spec.name_or_path, num_kv_heads=spec.num_kv_heads,
                      language=language, mode=mode, num_texts=n, num_tokens=tokens, source=str(source), extra=extra)


def score_languages(model, tokenizer, languages: Sequence[str], source: str = "embedded", n: Optional[int] = None,
                    mode: str = "fast", max_length: int = 2048, batch_size: int = 4, seed: int = 0,
                    out_dir: Optional[str | os.PathLike] = None, progress: bool = True, **kwargs) -> dict[str, HeadScores]:
    """Score several languages: {lang: HeadScores}. Texts come from `corpora.load_texts(source, lang, n, seed)`.

    With `out_dir`, each language is saved as <out_dir>/<lang>.safetensors (checkpointed while it runs)
    and a language whose file already exists for the same model and mode is loaded instead of rescored.
    """
    from .corpora import load_texts

    spec = describe(model, kwargs.get("arch"))
    results: dict[str, HeadScores] = {}
    for lang in languages:
        path = Path(out_dir) / f"{lang}.safetensors" if out_dir else None
        texts = load_texts(source, lang, n=n, seed=seed, tokenizer=tokenizer)
        if path is not None and path.is_file():
            done = HeadScores.load(path).validate(spec)
            wanted = (mode, describe_source(source), len(texts), int(max_length))
            have = (done.mode, done.source, done.num_texts, done.extra.get("max_length"))
            if have != wanted:
                raise LahisError(f"{path} already holds {lang} scores made with other settings (mode, source, texts, "
                                 f"max_length = {have}, now {wanted}); use another output folder or overwrite it")
            log.info("%s: already scored (%s)", lang, path)
            results[lang] = done
            continue
        ckpt = path.with_suffix(".ckpt.safetensors") if path is not None else None
        results[lang] = score_heads(model, tokenizer, texts, mode=mode, max_length=max_length, batch_size=batch_size,
                                    language=lang, source=describe_source(source), checkpoint=ckpt,
                                    progress=progress, **kwargs)
        if path is not None:
            results[lang].save(path)
            if ckpt.exists():
                ckpt.unlink()
    return results


def describe_source(source) -> str:
    s = str(source)
    return s if s in ("embedded", "wikipedia", "ntrex") or s.startswith("wikipedia:") else f"file:{s}"


# ====================================================================== CLI


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
    from .loading import load_model, load_tokenizer

    out = Path(out)
    if overwrite:
        for lang in languages:
            for p in (out / f"{lang}.safetensors", out / f"{lang}.ckpt.safetensors"):
                if p.exists():
                    p.unlink()
    # fail on bad languages / sources before loading a large model
    from .corpora import check_source

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
