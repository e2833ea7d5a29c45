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

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..core.architecture import ModelSpec, describe
from ..core.artifacts import Checkpoint, fingerprint
from ..core.control import row_scales, scale_heads
from ..core.errors import LahisError
from ..core.lm import (check_loss_matches, frozen, input_device, lm_parts, pad_batch, pad_id, sequence_losses,
                       tokenize_texts)
from .scores import HeadScores

log = logging.getLogger(__name__)

MODES = ("fast", "faithful")


# ====================================================================== per-text gradients (fast mode)
def per_text_gradients(model, tokenizer_or_ids, texts=None, max_length: int = 2048, batch_size: int = 8,
                       loss_chunk: Optional[int] = None, spec: Optional[ModelSpec] = None) -> torch.Tensor:
    """g_i = dL_i/dm at m = 1 for every text, from batched backward passes: float32 [texts, layers, heads].

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
            out.append(_batch_grads(model, spec, ids[start:start + batch_size], pad, parts, loss_chunk)[0])
    return torch.cat(out)


def _batch_grads(model, spec, seqs, pad, parts, loss_chunk):
    """([batch, layers, heads] float32 gradients, [batch] token counts) for one right-padded batch."""
    input_ids, attention_mask = pad_batch(seqs, pad, input_device(model))
    scales = torch.ones(len(seqs), spec.num_layers, spec.num_heads, dtype=torch.float32, requires_grad=True)
    with row_scales(model, spec, scales):
        losses, counts = sequence_losses(model, input_ids, attention_mask, loss_chunk, parts)
        # rows are independent, so d(sum_b L_b)/d scales[b] = dL_b/dm for text b
        losses.sum().backward()
    return scales.grad.detach(), counts


# ====================================================================== scoring
def score_heads(model, tokenizer, texts: Sequence[str], mode: str = "fast", max_length: int = 2048,
                batch_size: int = 4, language: Optional[str] = None, lr: float = 1e-2, mask_dtype: str = "float32",
                gradient_checkpointing: bool = False, loss_chunk: Optional[int] = None, source: str = "",
                checkpoint: Optional[str | os.PathLike] = None, checkpoint_every: int = 50, arch=None,
                check_loss: bool = True, progress: bool = True) -> HeadScores:
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
            same texts and settings is resumed, giving the same result as an uninterrupted run.
        arch: architecture override for models lahis_ctrl does not know (see core.architecture.ArchSpec).
        check_loss: first check that the chunked loss equals the model's own loss on a short prefix.
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    from .. import __version__

    if mode not in MODES:
        raise LahisError(f"unknown scoring mode '{mode}': use one of {MODES}")
    if mask_dtype not in ("float32", "bfloat16"):
        raise LahisError(f"mask_dtype must be 'float32' or 'bfloat16', got '{mask_dtype}'")
    if batch_size < 1:
        raise LahisError(f"batch_size must be >= 1, got {batch_size}")
    spec = describe(model, arch)
    ids = tokenize_texts(tokenizer, texts, max_length)
    pad = pad_id(tokenizer)
    parts = lm_parts(model)
    if check_loss:
        check_loss_matches(model, ids[0], parts)
    n = len(ids)
    acc_dtype = torch.bfloat16 if (mode == "faithful" and mask_dtype == "bfloat16") else torch.float32
    settings = {"mode": mode, "max_length": int(max_length), "lr": lr if mode == "faithful" else None,
                "mask_dtype": mask_dtype if mode == "faithful" else "float32",
                "batch_size": batch_size if mode == "fast" else 1, "model": spec.to_dict() | {"o_proj_names": None}}
    # the full 64-digit form, as earlier versions wrote it: their checkpoints still resume
    ckpt = Checkpoint(checkpoint, fingerprint(settings, ids=ids, length=64), "scoring checkpoint") if checkpoint else None

    importance_sum = torch.zeros(spec.shape, dtype=acc_dtype)
    negatives = torch.zeros(spec.shape, dtype=acc_dtype)
    m = torch.ones(spec.shape, dtype=acc_dtype, requires_grad=(mode == "faithful"))
    opt = torch.optim.AdamW([m], lr=lr) if mode == "faithful" else None
    done, tokens = 0, 0

    # fast mode: batches of similar length waste less padding; the order is fixed so resumption is exact
    order = sorted(range(n), key=lambda i: len(ids[i])) if mode == "fast" else list(range(n))
    step = batch_size if mode == "fast" else 1
    batches = [order[s:s + step] for s in range(0, n, step)]

    state = ckpt.load() if ckpt else None
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
        log.info("resuming %s from %s: %d of %d batches done", language or "scores", ckpt.path, done, len(batches))

    def save_ckpt(done_batches: int) -> None:
        tensors = {"importance_sum": importance_sum, "negatives": negatives}
        if opt is not None:
            tensors["m"] = m
            st = opt.state.get(m)
            if st:
                tensors.update(step=torch.as_tensor(st["step"]).reshape(()), exp_avg=st["exp_avg"],
                               exp_avg_sq=st["exp_avg_sq"])
        ckpt.save(tensors, {"done_batches": done_batches, "tokens": tokens, "language": language})

    last_saved = done
    texts_per_ckpt = max(1, int(checkpoint_every))
    bar = tqdm(total=n, initial=sum(len(b) for b in batches[:done]), desc=f"LAHIS {mode} {language or ''}".strip(),
               unit="text", disable=not progress)
    device = input_device(model)
    with frozen(model, gradient_checkpointing):
        for b in range(done, len(batches)):
            batch = batches[b]
            if mode == "fast":
                g, counts = _batch_grads(model, spec, [ids[i] for i in batch], pad, parts, loss_chunk)
                # m == 1: |g*m| = |g| and [g*m < 0] = [g < 0]; sum over the batch's texts
                importance_sum += (1000.0 * g.abs()).sum(0)
                negatives += (g < 0).to(acc_dtype).sum(0)
            else:
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
            if ckpt and sum(len(x) for x in batches[last_saved:b + 1]) >= texts_per_ckpt:
                save_ckpt(b + 1)
                last_saved = b + 1
    bar.close()
    if ckpt and last_saved != len(batches):
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
    from ..corpora.texts import load_texts

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


def describe_source(source) -> str:
    s = str(source)
    return s if s in ("embedded", "wikipedia", "ntrex") or s.startswith("wikipedia:") else f"file:{s}"
