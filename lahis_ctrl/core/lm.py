"""The LM-likelihood core: tokenising and padding, frozen weights, and every log-likelihood the project takes.

All of them go through `token_nll`: the decoder body runs once, the LM head runs only on the positions that
predict a selected token, in chunks (a 262k vocabulary never materialises [batch, pos, vocab] logits), and
the logits get exactly the transform the model's own forward applies (Gemma's final-logit softcapping,
Cohere's logit_scale, Granite's logits_scaling). On top of it:

  * `sequence_losses`       per-text mean NLL (LAHIS scoring, perplexity probes);
  * `continuation_logprobs` log P(continuation | prompt), teacher-forced (the attention-transfer probe);
  * `answer_loss`           mean NLL of answer tokens only (soft head mask training).

`check_loss_matches` compares the core with the model's own loss; the tests do so on every tiny architecture.
`greedy_generate` is the batched, left-padded greedy decoding that returns only new text.
Padding uses one pad-id rule (`pad_id`) and never changes the caller's tokenizer.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from .architecture import text_config
from .errors import LahisError

log = logging.getLogger(__name__)

IGNORE = -100  # label of tokens that carry no loss (prompt and padding), as in transformers


# ====================================================================== tokens and padding
def pad_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else BOS, else 0.

    Padded positions are masked out of attention and carry no loss, so any valid id works; the tokenizer
    itself is never modified.
    """
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def pad_batch(seqs: Sequence[Sequence[int]], pad: int, device=None, side: str = "right") \
        -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists: ([batch, max_len] ids, [batch, max_len] attention mask), right or left padded."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[r, cols] = torch.as_tensor(list(s), dtype=torch.long)
        mask[r, cols] = 1
    return ids.to(device), mask.to(device)


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


def tokenize_continuation(tokenizer, prompt: str, continuation: str) -> tuple[list[int], int]:
    """(token ids of prompt + continuation, number of prompt tokens).

    The continuation's tokens are those of tokenize(prompt + continuation) after the prompt's tokens, when
    the prompt's tokens are a prefix of it (the usual case: the continuation starts with a space);
    otherwise the continuation is tokenized on its own and appended.
    """
    p = list(tokenizer(prompt)["input_ids"])
    full = list(tokenizer(prompt + continuation)["input_ids"])
    if len(full) > len(p) and full[:len(p)] == p:
        return full, len(p)
    cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not cont:
        raise LahisError(f"the continuation {continuation!r} tokenizes to no tokens")
    return p + cont, len(p)


# ====================================================================== the model's parts
@dataclass(frozen=True)
class LMParts:
    """A causal LM split where the likelihood core needs it: body, LM head, and the logits transform."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    transform: Callable[[torch.Tensor], torch.Tensor]

    def __iter__(self):  # (decoder, head, transform) = parts
        return iter((self.decoder, self.head, self.transform))


def lm_parts(model) -> LMParts:
    """(decoder body, output embedding, logits transform) of a causal LM, found without module names.

    The transform reproduces what the model's own forward does to the logits after the LM head, in the same
    order and dtype, so the chunked loss equals the model's own loss.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        decoder = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or decoder is model or head is None:
        raise LahisError(f"cannot find the decoder body and LM head of {type(model).__name__}: lahis_ctrl needs a "
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

    return LMParts(decoder, head, transform)


def input_device(model) -> torch.device:
    """Where input ids go (the embedding's device; with device_map models the first shard's)."""
    return model.get_input_embeddings().weight.device


def default_loss_chunk(vocab_size: int) -> int:
    """Positions per LM-head chunk: about 2**27 logits (512 MiB of float32) whatever the vocabulary."""
    return max(16, int(2**27 // max(1, vocab_size)))


@contextlib.contextmanager
def frozen(model, gradient_checkpointing: bool = False) -> Iterator[None]:
    """Weights frozen (no weight gradients are computed) and eval mode, restored on exit.

    With gradient_checkpointing, layers recompute their activations in backward (transformers checkpoints
    layers only in train mode, so the model is put in train mode with every dropout kept off).
    """
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        model.eval()
        if gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise LahisError(f"{type(model).__name__} does not support gradient checkpointing")
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            model.train()
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.eval()
        yield
    finally:
        if gradient_checkpointing:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        model.train(was_training)
        for p, flag in saved:
            p.requires_grad_(flag)


# ====================================================================== the core
def token_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None,
              loss_chunk: Optional[int] = None, parts: Optional[LMParts] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL of the selected tokens of a batch: (nll [n] float32, row of each [n]).

    input_ids, attention_mask: [batch, pos]. labels: [batch, pos] aligned with input_ids (the label of
    position t is the token at t, predicted from position t-1); IGNORE (-100) excludes a token. Default:
    every attended token after the first. Position t predicts t+1 only where both are attended.
    When grad is enabled each chunk's logits are freed (fused backward, or checkpointing if the head trains).
    """
    decoder, head, transform = parts or lm_parts(model)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # [batch, pos, hidden]
    mask = attention_mask.to(hidden.device).bool()
    targets = (input_ids if labels is None else labels).to(hidden.device)
    valid = mask[:, 1:] & mask[:, :-1] & (targets[:, 1:] != IGNORE)  # [batch, pos-1]: t predicts t+1
    rows = valid.nonzero()[:, 0]  # [n] row of every predicted position
    h = hidden[:, :-1][valid]  # [n, hidden]: only the positions that carry a loss
    target = targets[:, 1:][valid]  # [n]
    if h.shape[0] == 0:
        raise LahisError("no token to score in the batch: every row has fewer than 2 tokens or no selected label")
    chunk = loss_chunk or default_loss_chunk(head.weight.shape[0])

    def chunk_nll(h_c: torch.Tensor, labels_c: torch.Tensor) -> torch.Tensor:
        logits = transform(head(h_c))  # [chunk, vocab] in the model's dtype, as the model computes them
        logits = logits if logits.dtype == torch.float64 else logits.float()  # upcast as the model's loss does
        return F.cross_entropy(logits, labels_c.to(logits.device), reduction="none").to(hidden.device)

    pieces = []
    needs_grad = torch.is_grad_enabled() and h.requires_grad
    head_frozen = not any(p.requires_grad for p in head.parameters())
    for start in range(0, h.shape[0], chunk):
        args = (h[start:start + chunk], target[start:start + chunk])
        if needs_grad and head_frozen:
            pieces.append(_FusedHeadNLL.apply(args[0], args[1], chunk_nll))
        elif needs_grad:  # the head itself is trained: keep autograd's graph, but recompute logits in backward
            pieces.append(torch.utils.checkpoint.checkpoint(chunk_nll, *args, use_reentrant=False))
        else:
            pieces.append(chunk_nll(*args))
    return torch.cat(pieces), rows


def sequence_losses(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_chunk: Optional[int] = None,
                    parts: Optional[LMParts] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean next-token cross-entropy of a right-padded batch: (losses [batch] float32, token counts
    [batch] int64, the predicted tokens per row)."""
    nll, rows = token_nll(model, input_ids, attention_mask, None, loss_chunk, parts)
    batch = input_ids.shape[0]
    counts = torch.zeros(batch, dtype=torch.long, device=rows.device).index_add(0, rows, torch.ones_like(rows))
    sums = torch.zeros(batch, dtype=nll.dtype, device=nll.device).index_add(0, rows.to(nll.device), nll)
    return sums / counts.to(nll.device).clamp(min=1), counts.cpu()


def answer_loss(model, batch: dict[str, torch.Tensor], loss_chunk: Optional[int] = None,
                parts: Optional[LMParts] = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of a batch (labels != IGNORE; prompt and padding
    excluded): what `model(**batch).loss` computes, with the LM head run only where an answer token is."""
    device = input_device(model)
    nll, _ = token_nll(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                       batch["labels"].to(device), loss_chunk, parts)
    return nll.mean()


def continuation_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 8,
                          progress: bool = False, desc: str = "score", max_tokens: Optional[int] = None,
                          per_token: bool = False, head_scales: Optional[torch.Tensor] = None) -> list[float]:
    """log P(continuation | prompt) per pair: the sum of the continuation's token log-probs, teacher-forced.

    max_tokens: score only the continuation's first max_tokens tokens; per_token: their mean log-prob instead of the
    sum. head_scales [pairs, layers, heads]: each pair under its own head mask (control.row_scales), so many masks
    share one batched forward (e.g. many random head sets). Batched with right padding (sequences sorted by length,
    so similar lengths share a batch).
    """
    from tqdm.auto import tqdm

    if len(prompts) != len(continuations):
        raise LahisError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if batch_size < 1:
        raise LahisError(f"batch_size must be at least 1; got {batch_size}")
    seqs = [tokenize_continuation(tokenizer, p, c) for p, c in zip(prompts, continuations)]
    if max_tokens is not None:  # [prompt ids + the continuation's first max_tokens ids], prompt length
        seqs = [(full[:n_prompt + int(max_tokens)], n_prompt) for full, n_prompt in seqs]
    parts = lm_parts(model)
    device, pad = input_device(model), pad_id(tokenizer)
    spec = None
    if head_scales is not None:
        from .architecture import describe

        spec = describe(model)
        if tuple(head_scales.shape) != (len(seqs), *spec.shape):
            raise LahisError(f"head_scales must be [pairs, layers, heads] = [{len(seqs)}, {spec.num_layers}, "
                             f"{spec.num_heads}], got {list(head_scales.shape)}")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out = [0.0] * len(seqs)
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
            rows = order[start:start + batch_size]
            ids, mask = pad_batch([seqs[i][0] for i in rows], pad, device)  # [batch, pos] each
            labels = torch.full_like(ids, IGNORE)
            for r, i in enumerate(rows):  # only the continuation's tokens are scored
                full, n_prompt = seqs[i]
                labels[r, n_prompt:len(full)] = ids[r, n_prompt:len(full)]
            if spec is None:
                nll, which = token_nll(model, ids, mask, labels, parts=parts)
            else:
                from .control import row_scales

                with row_scales(model, spec, head_scales[rows]):  # [batch, layers, heads]: row r's own mask
                    nll, which = token_nll(model, ids, mask, labels, parts=parts)
            sums = torch.zeros(len(rows), dtype=torch.float32, device=nll.device).index_add(0, which.to(nll.device), nll)
            for r, i in enumerate(rows):
                scored = len(seqs[i][0]) - seqs[i][1]
                out[i] = -float(sums[r]) / (scored if per_token else 1)
    return out


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


def check_loss_matches(model, ids: Sequence[int], parts: Optional[LMParts] = None, tokens: int = 16) -> None:
    """Compare the core's loss with the model's own loss on a short prefix; raise if they differ.

    Catches models whose forward transforms the logits in a way `lm_parts` does not know.
    """
    ids = list(ids)[:tokens]
    if len(ids) < 2:
        return
    x = torch.tensor([ids], device=input_device(model))
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


# ====================================================================== generation
@torch.no_grad()
def _stop_criteria_classes():
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnText(StoppingCriteria):
        """Done for each row once its decoded continuation holds one of `stop` ([batch] bools, as generate wants)."""

        def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
            self.tokenizer, self.stop, self.prompt_width = tokenizer, list(stop), prompt_width

        def __call__(self, input_ids, scores, **kwargs):
            # input_ids: [batch, prompt_width + new tokens so far]
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in self.stop) for t in texts], dtype=torch.bool,
                                device=input_ids.device)

    return StopOnText, StoppingCriteriaList


def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 8,
                    progress: bool = False, add_special_tokens: bool = True,
                    stop: Optional[Sequence[str]] = None) -> list[str]:
    """Greedy continuations of `prompts`, batched with left padding (every row's continuation starts at the
    same column). The continuation is decoded from the generated token ids alone (output[:, prompt_len:]),
    so text of the prompt can never leak into it. `stop`: strings that end a continuation (generation stops
    once every row has one; each continuation is cut before its first). The tokenizer is not modified."""
    from tqdm.auto import tqdm

    pad = pad_id(tokenizer)
    device = input_device(model)
    outputs: list[str] = []
    stop = [s for s in (stop or ()) if s]
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, unit="batch"):
        chunk = list(prompts[start:start + batch_size])
        seqs = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in chunk]
        ids, mask = pad_batch(seqs, pad, device, side="left")  # [batch, width]
        # stop strings are looked for in the decoded text: transformers' own stop_strings machinery needs a
        # tokenizer whose vocabulary maps back to text token by token and fails ("substring not found") for
        # byte-level tokenizers without a matching decoder
        extra = {}
        if stop:
            stop_on_text, criteria = _stop_criteria_classes()
            extra["stopping_criteria"] = criteria([stop_on_text(tokenizer, stop, ids.shape[1])])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, pad_token_id=pad, top_p=None, top_k=None, temperature=None, **extra)
        new_ids = out[:, ids.shape[1]:]  # [batch, new_tokens]
        texts = tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        for s in stop or ():
            texts = [t.split(s, 1)[0] for t in texts]
        outputs.extend(texts)
    return outputs
