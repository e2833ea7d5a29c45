"""Soft head mask: learn a scale for a few attention heads (the top-n of a LAHIS score matrix) on QA.

The model's weights stay frozen. A [layers, heads] tensor of scales, initialised to 1, multiplies each
head's output (lahis_ctrl.core.control.scale_heads); only n heads are trainable (n = int(p * layers * heads),
at least 1), and every other head's gradient is zeroed, so it ends exactly at 1.0. The loss is the
cross-entropy of the answer tokens only, after a prompt in the target language (lahis_ctrl.prompts).
AdamW (lr 1e-2) as in the reference; its decoupled weight decay is applied to the trainable heads only
(torch's AdamW would otherwise shrink the frozen ones too).

`heads="random"` trains n heads drawn at random (seeded) the same way: the paper's baseline.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..core.architecture import ModelSpec, describe
from ..core.artifacts import Checkpoint, fingerprint
from ..core.control import scale_heads
from ..core.errors import LahisError, MaskMismatchError
from ..core import lm
from ..core.lm import IGNORE, answer_loss, frozen, pad_batch
from ..core.mask import HeadMask
from ..corpora.prompts import format_prompt, format_target

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- scores and head selection
def default_n(spec: ModelSpec, p: float = 0.02) -> int:
    """The reference's head count: int(p * layers * heads), at least 1 (20 for 32x32, 13 for 28x24)."""
    return max(1, int(p * spec.num_layers * spec.num_heads))


def score_matrix(scores, spec: ModelSpec) -> torch.Tensor:
    """A validated float32 [layers, heads] score matrix from HeadScores, a tensor, or a score file path."""
    from .scores import HeadScores

    if isinstance(scores, (str, os.PathLike)):
        scores = HeadScores.load(Path(scores))
    if isinstance(scores, HeadScores):
        scores.validate(spec)
        matrix = scores.scores
    elif isinstance(scores, torch.Tensor):
        matrix = scores
    else:
        raise LahisError(f"scores must be HeadScores, a [layers, heads] tensor or a file path; got {type(scores).__name__}")
    matrix = torch.as_tensor(matrix).detach().to("cpu", torch.float32)
    if tuple(matrix.shape) != spec.shape:
        raise MaskMismatchError(
            f"scores of shape {tuple(matrix.shape)} do not fit this {spec.model_type} model's "
            f"{spec.num_layers} layers x {spec.num_heads} heads: use scores computed for this model"
        )
    if not torch.isfinite(matrix).all():
        raise LahisError("the score matrix holds NaN or inf")
    return matrix


def select_heads(spec: ModelSpec, n: int, heads="top", scores=None, seed: int = 0) -> list[tuple[int, int]]:
    """The n trainable heads: the n highest scores (ties broken by position), n random heads, or the given
    (layer, head) pairs (heads=[...], e.g. a random set drawn by the caller outside some other set)."""
    total = spec.num_layers * spec.num_heads
    if not isinstance(heads, str):
        given = [(int(layer), int(head)) for layer, head in heads]
        bad = [h for h in given if not (0 <= h[0] < spec.num_layers and 0 <= h[1] < spec.num_heads)]
        if len(given) != n or len(set(given)) != n or bad:
            raise LahisError(f"heads must be {n} distinct (layer, head) pairs of this {spec.num_layers}x{spec.num_heads} "
                             f"model, got {given}")
        return given
    if not 1 <= n <= total:
        raise LahisError(f"n={n} trainable heads is not possible: this model has {total} heads "
                         f"({spec.num_layers} layers x {spec.num_heads}); use 1 <= n <= {total}")
    if heads == "top":
        if scores is None:
            raise LahisError("heads='top' needs a LAHIS score matrix (scores=...); heads='random' needs none")
        matrix = score_matrix(scores, spec)
        # stable sort on the flattened [layers * heads] scores so equal scores keep (layer, head) order
        order = torch.sort(matrix.flatten(), descending=True, stable=True).indices[:n]
    elif heads == "random":
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(total, generator=gen)[:n]
    else:
        raise LahisError(f"unknown head selection '{heads}': use 'top' or 'random'")
    return [(int(i) // spec.num_heads, int(i) % spec.num_heads) for i in order]


# ---------------------------------------------------------------- data
def build_example(tokenizer, row: dict, lang: str, style: str = "paper", max_length: int | None = None) -> dict:
    """input_ids = prompt tokens + answer tokens; labels = -100 on the prompt, the answer ids on the answer.

    The prompt and the answer are tokenized separately so the label boundary is exact (the answer's
    first token never merges with the prompt's last). When max_length is set, the prompt is cut from
    the left (its end, the question and the answer cue, is what the answer depends on most).
    """
    prompt_ids = tokenizer(format_prompt(row, lang, style), add_special_tokens=True)["input_ids"]
    answer = row["answers"]["text"][0] if row["answers"]["text"] else ""
    answer_ids = tokenizer(format_target(answer, style), add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise LahisError(f"QA item {row.get('id')!r} has an empty answer: nothing to train on")
    if max_length is not None and len(prompt_ids) + len(answer_ids) > max_length:
        keep = max_length - len(answer_ids)
        if keep < 1:
            raise LahisError(f"max_length={max_length} is shorter than the answer of item {row.get('id')!r}")
        prompt_ids = prompt_ids[-keep:]
    return {"id": row.get("id"), "input_ids": list(prompt_ids) + list(answer_ids),
            "labels": [IGNORE] * len(prompt_ids) + list(answer_ids)}


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids/labels/attention_mask [batch, max_len]; padding has label -100."""
    ids, attn = pad_batch([e["input_ids"] for e in examples], pad_id)
    labels, _ = pad_batch([e["labels"] for e in examples], IGNORE)
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


# ---------------------------------------------------------------- the trainer
@dataclass
class TrainSettings:
    lang: str
    n: int
    heads: str
    selected: list[tuple[int, int]]
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    style: str
    shuffle: bool
    max_length: int | None
    item_ids: list[str]

    def fingerprint(self, spec: ModelSpec) -> str:
        """What a checkpoint must share with a run to be resumed by it (all but the epoch count)."""
        return fingerprint({**self.__dict__, "selected": [list(h) for h in self.selected],
                            "model": [spec.model_type, spec.num_layers, spec.num_heads, spec.head_dim]})


class SoftMaskTrainer:
    """Holds the [layers, heads] scales, the trainable-head mask and AdamW; one `step` per batch."""

    def __init__(self, model, spec: ModelSpec, selected: Sequence[tuple[int, int]], lr: float = 1e-2,
                 weight_decay: float = 0.01):
        self.model, self.spec = model, spec
        self.scales = torch.ones(spec.shape, dtype=torch.float32, requires_grad=True)  # [L, H] leaf
        self.trainable = torch.zeros(spec.shape, dtype=torch.bool)
        for layer, head in selected:
            self.trainable[layer, head] = True
        self.optimizer = torch.optim.AdamW([self.scales], lr=lr, weight_decay=weight_decay)
        self.steps = 0
        # Hook only the layers that hold trainable heads: every other head is exactly 1, and a layer without
        # a hook computes exactly what an all-ones hook would, but backward then stops at the lowest
        # trainable layer instead of running through the whole model.
        self.layers = sorted({layer for layer, _ in selected})
        self.sub_spec = replace(spec, num_layers=len(self.layers),
                                o_proj_names=tuple(spec.o_proj_names[layer] for layer in self.layers))
        self.layer_index = torch.tensor(self.layers, dtype=torch.long)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        sub = self.scales[self.layer_index]  # [trainable layers, heads], differentiable w.r.t. self.scales
        with scale_heads(self.model, sub, self.sub_spec):
            loss = answer_loss(self.model, batch)
        # d(loss)/d(scales) only: model weights never accumulate gradients, even if they require grad
        (grad,) = torch.autograd.grad(loss, [self.scales])
        self.scales.grad = grad * self.trainable  # frozen heads: zero gradient
        self.optimizer.step()
        with torch.no_grad():
            # AdamW's decoupled weight decay touches every element; keep the frozen heads exactly at 1
            self.scales.masked_fill_(~self.trainable, 1.0)
        self.steps += 1
        return float(loss.detach())

    # checkpoint state: plain tensors, saved as safetensors (never a pickle)
    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = self.optimizer.state.get(self.scales, {})
        tensors = {"scales": self.scales.detach().clone()}
        if state:
            tensors["exp_avg"] = state["exp_avg"].clone()
            tensors["exp_avg_sq"] = state["exp_avg_sq"].clone()
            tensors["step"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).clone()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.scales.copy_(tensors["scales"])
        if "exp_avg" in tensors:
            self.optimizer.state[self.scales] = {
                "step": tensors["step"].reshape(()).clone(),
                "exp_avg": tensors["exp_avg"].clone(),
                "exp_avg_sq": tensors["exp_avg_sq"].clone(),
            }


def _checkpoint(directory: Path, epoch: int, fp: str, identity: dict | None = None) -> Checkpoint:
    return Checkpoint(directory / f"epoch-{epoch:03d}.safetensors", fp, "soft-mask training checkpoint",
                      identity=identity)


def _latest_checkpoint(directory: Path, fp: str, epochs: int, identity: dict | None = None,
                       replace: bool = False) -> tuple[int, dict, dict] | None:
    """(epoch, tensors, history) of the latest checkpoint at or before `epochs`; files of other runs (other settings
    or another model's weights) refuse, or with `replace` are passed over (and overwritten by this run)."""
    found = None
    for path in sorted(directory.glob("epoch-*.safetensors")):
        loaded = Checkpoint(path, fp, "soft-mask training checkpoint", replace=replace, identity=identity).load()
        if loaded is None:
            continue
        tensors, state = loaded
        epoch = int(state["epoch"])  # a string in files of earlier versions, which kept the state as metadata
        history = state.get("log", {})
        history = json.loads(history) if isinstance(history, str) else history
        if epoch <= epochs:
            found = (epoch, tensors, history)
    return found


# ---------------------------------------------------------------- the API
def mask_method(heads: str) -> str:
    """The `method` a trained mask records: the LAHIS heads' mask or the random-heads baseline."""
    return "lahis-soft-mask" if heads == "top" else "random-soft-mask"  # given heads: a baseline set


def train_mask(model, tokenizer, lang: str, scores=None, n: int | None = None, p: float = 0.02, epochs: int = 2,
               lr: float = 1e-2, batch_size: int = 1, heads: str = "top", seed: int = 0,
               rows: Optional[Sequence[dict]] = None, data: str | os.PathLike | None = None, style: str = "paper",
               weight_decay: float = 0.01, shuffle: bool = False, max_length: int | None = None,
               checkpoint_dir: str | os.PathLike | None = None, progress: bool = False,
               replace_checkpoints: bool = False) -> HeadMask:
    """Train a soft head mask for `lang` and return it as a HeadMask.

    Args:
        model: a transformers causal LM (its weights stay frozen; fp32 or bf16 - the loss is taken in fp32).
        tokenizer: its tokenizer.
        lang: one of the XQuAD languages (the prompt language).
        scores: LAHIS scores of this model for `lang` (HeadScores, [layers, heads] tensor, or file);
            needed for heads="top".
        n: trainable heads; default int(p * layers * heads), at least 1.
        p: share of heads to train when n is not given (the reference: 0.02).
        epochs, lr, batch_size: AdamW training settings (reference: 2, 1e-2, 1).
        heads: "top" (the n best-scored heads) or "random" (n random heads, the baseline).
        seed: seeds head sampling (random), the optional shuffling and torch.
        rows: QA rows to train on; default the reference train split of XQuAD `lang` (from `data`).
        data: XQuAD directory (see lahis_ctrl.xquad.load_xquad), or "embedded" for the shipped sample.
        style: prompt style, "paper" or "lm_eval".
        weight_decay: AdamW's decoupled weight decay (torch's default, 0.01), trainable heads only.
        shuffle: reshuffle the rows every epoch (seeded); the reference keeps one order.
        max_length: cut prompts from the left so prompt + answer fit.
        checkpoint_dir: write a checkpoint after every epoch there, and resume from the latest one (made with the
            same settings and model weights; one made otherwise is refused).
        replace_checkpoints: checkpoints in checkpoint_dir made with other settings or weights are started over
            instead of refused.
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    from ..core.identity import model_identity
    from .scores import HeadScores

    spec = describe(model)
    if batch_size < 1 or epochs < 0:
        raise LahisError(f"batch_size must be >= 1 and epochs >= 0 (got {batch_size}, {epochs})")
    identity = model_identity(model)
    if isinstance(scores, (str, os.PathLike)):
        scores = HeadScores.load(Path(scores))
    if isinstance(scores, HeadScores):  # scores of other weights rank other heads
        scores.validate(spec)
        from ..core.identity import check_same_model

        check_same_model(scores.model_identity, identity, f"the {scores.language or ''} LAHIS scores".replace("  ", " "),
                         fix="score this model first (lahis score) and train with its scores")
    n = default_n(spec, p) if n is None else int(n)
    selected = select_heads(spec, n, heads, scores, seed)
    if rows is None:
        from ..corpora.xquad import load_qa, select

        all_rows, split = load_qa(lang, data)
        rows = select(all_rows, "train", split)
    rows = list(rows)
    if not rows:
        raise LahisError("no training rows: the training split is empty")
    examples = [build_example(tokenizer, r, lang, style, max_length) for r in rows]
    pad = lm.pad_id(tokenizer)

    settings = TrainSettings(lang=lang, n=n, heads=heads, selected=selected, lr=lr, weight_decay=weight_decay,
                             batch_size=batch_size, seed=seed, style=style, shuffle=shuffle, max_length=max_length,
                             item_ids=[str(r.get("id")) for r in rows])
    fp = settings.fingerprint(spec)
    torch.manual_seed(seed)
    trainer = SoftMaskTrainer(model, spec, selected, lr=lr, weight_decay=weight_decay)
    history: dict[str, Any] = {"epoch_loss": []}
    start_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and ckpt_dir.is_dir():
        found = _latest_checkpoint(ckpt_dir, fp, epochs, identity, replace_checkpoints)
        if found is not None:
            start_epoch, tensors, history = found
            trainer.load_state_tensors(tensors)
            log.info("resuming %s soft mask from %s (epoch %d of %d)", lang, ckpt_dir, start_epoch, epochs)

    steps_per_epoch = (len(examples) + batch_size - 1) // batch_size
    bar = tqdm(total=steps_per_epoch * epochs, initial=steps_per_epoch * start_epoch, desc=f"train-mask {lang}",
               unit="step", disable=not progress)
    # frozen: eval mode (no dropout: the mask is trained for inference behaviour, and runs are deterministic)
    try:
        with frozen(model), torch.enable_grad():
            for epoch in range(start_epoch, epochs):
                order = list(range(len(examples)))
                if shuffle:
                    random.Random(seed * 1000 + epoch).shuffle(order)
                losses = []
                for start in range(0, len(order), batch_size):
                    batch = collate([examples[i] for i in order[start:start + batch_size]], pad)
                    losses.append(trainer.step(batch))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1)
                history["epoch_loss"].append(sum(losses) / len(losses))
                if ckpt_dir is not None:
                    _checkpoint(ckpt_dir, epoch + 1, fp, identity).save(trainer.state_tensors(),
                                                              {"epoch": epoch + 1, "log": history})
    finally:
        bar.close()

    method = mask_method(heads)
    extra = {"trainable_heads": [list(h) for h in selected], "n": n, "epochs": epochs, "lr": lr,
             "batch_size": batch_size, "seed": seed, "style": style, "weight_decay": weight_decay,
             "train_items": len(rows), "epoch_loss": history["epoch_loss"], "dtype": str(next(model.parameters()).dtype)}
    return HeadMask.from_tensor(trainer.scales.detach(), spec, language=lang, method=method, extra=extra,
                                model_identity=identity)
