"""The soft-mask comparison both `lahis reproduce` (its xquad step) and `lahis demo` run: train the LAHIS soft mask
(possibly with several training seeds) and random-heads soft masks for one language (or load them when a finished
file made with the same plan exists), then evaluate the original model and every mask on the same held-out items."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

KINDS = ("lahis", "random")


@dataclass(frozen=True)
class MaskPlan:
    """One soft mask to train.

    name: its file and evaluation name; heads: "top" (the n best heads of the language's LAHIS scores), "random" (n
    heads drawn by train_mask with `seed`) or explicit (layer, head) pairs; seed: train_mask's seed; order_seed: the
    order of the training items (None or 0: as given, the reference's; s > 0: shuffled with s) - what a training
    seed of the method varies.
    """

    name: str
    heads: Union[str, tuple]
    seed: int = 0
    order_seed: Optional[int] = None


def random_mask_names(count: int) -> list[str]:
    """"random" (the reference's single-seed baseline), then "random-s1", "random-s2", ... (seed + i)."""
    return ["random"] + [f"random-s{i}" for i in range(1, count)]


def default_plan(seed: int, random_masks: int) -> list[MaskPlan]:
    """The demo's plan: the LAHIS mask, then `random_masks` random-heads masks with seeds seed, seed + 1, ..."""
    return [MaskPlan("lahis", "top", seed)] + [MaskPlan(name, "random", seed + i)
                                               for i, name in enumerate(random_mask_names(random_masks))]


def ordered_rows(rows: Sequence[dict], order_seed: Optional[int], items: Optional[int] = None) -> list[dict]:
    """The first `items` training rows (None: all) in the order of `order_seed` (None or 0: as given)."""
    rows = list(rows)
    if order_seed:
        random.Random(f"soft-mask-order-{order_seed}").shuffle(rows)
    return rows[:items] if items else rows


def _plan_key(plan: MaskPlan, n: int, rows: Sequence[dict], epochs: int, lr: float) -> str:
    from ..core.artifacts import fingerprint

    heads = plan.heads if isinstance(plan.heads, str) else [list(h) for h in plan.heads]
    return fingerprint({"heads": heads, "seed": plan.seed, "order": [str(r.get("id")) for r in rows], "n": n,
                        "epochs": epochs, "lr": lr})


def train_or_load(model, tokenizer, lang: str, scores, plan: MaskPlan, n: int, rows: Sequence[dict], masks_dir: Path,
                  epochs: int, lr: float, progress: bool = True, extra: Optional[dict] = None,
                  train_items: Optional[int] = None):
    """(mask, trained_now): <masks_dir>/<lang>-<name>.safetensors when it exists (checked against the model) and was
    made by the same plan (heads, seed, items and their order, epochs, lr), else a mask trained on the first
    `train_items` of `rows` in the plan's order (resuming from <lang>-<name>.ckpt/) and saved there."""
    from ..core.architecture import describe
    from ..core.mask import HeadMask
    from ..lahis.softmask import train_mask

    rows = ordered_rows(rows, plan.order_seed, train_items)
    key = _plan_key(plan, n, rows, epochs, lr)
    path = Path(masks_dir) / f"{lang}-{plan.name}.safetensors"
    if path.is_file():
        from ..core.identity import identity_of, same_model

        mask = HeadMask.load(path).validate(describe(model))
        # None: a file of an earlier version, made by the default plan; another model's mask is trained anew
        if mask.extra.get("plan") in (None, key) and same_model(mask.model_identity, identity_of(model)):
            return mask, False
    mask = train_mask(model, tokenizer, lang, scores if plan.heads == "top" else None, n=n, epochs=epochs, lr=lr,
                      heads=plan.heads if isinstance(plan.heads, str) else [tuple(h) for h in plan.heads],
                      seed=plan.seed, rows=rows, checkpoint_dir=Path(masks_dir) / f"{lang}-{plan.name}.ckpt",
                      progress=progress, replace_checkpoints=True)  # the callers' folders decide: resume or redo
    mask.extra.update(extra or {})
    mask.extra.update({"plan": key, "order_seed": plan.order_seed or 0})
    mask.save(path)
    return mask, True


def compare_soft_masks(model, tokenizer, lang: str, scores, train: Sequence[dict], test: Sequence[dict], n: int,
                       masks_dir: Path, eval_dir: Path, epochs: int, lr: float = 1e-2, seed: int = 0,
                       max_new_tokens: int = 10, batch_size: int = 8, progress: bool = True, extra: Optional[dict] = None,
                       on_mask: Optional[Callable] = None, random_masks: int = 1,
                       plan: Optional[Sequence[MaskPlan]] = None, train_items: Optional[int] = None):
    """Train (or load) the masks of `plan` (default: the LAHIS mask and `random_masks` random-heads masks with seeds
    seed, seed + 1, ...), each on the first `train_items` of `train` in its plan's order, then evaluate the original
    model and every mask on `test` (each paired with the original).

    Returns (EvalReport, {name: HeadMask}). `on_mask(name, mask, path, trained_now)` is called after each
    mask is ready (the demo prints it).
    """
    from ..eval.evaluate import evaluate_masks

    plan = list(plan) if plan is not None else default_plan(seed, random_masks)
    masks = {}
    for p in plan:
        masks[p.name], trained = train_or_load(model, tokenizer, lang, scores, p, n, train, masks_dir, epochs, lr,
                                               progress, extra, train_items)
        if on_mask is not None:
            on_mask(p.name, masks[p.name], Path(masks_dir) / f"{lang}-{p.name}.safetensors", trained)
    # the original first, the LAHIS mask(s) last: the order of the tables
    names = [p.name for p in plan if p.heads != "top"] + [p.name for p in plan if p.heads == "top"]
    order = {"original": None, **{name: masks[name] for name in names}}
    report = evaluate_masks(model, tokenizer, lang, order, test, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            out_dir=eval_dir, progress=progress, overwrite=True)  # the caller's cache decides reruns
    return report, masks


def trained_heads(mask) -> list[list]:
    """[[layer, head, trained scale], ...] of a soft mask's trainable heads."""
    return [[int(l), int(h), float(mask.values[l, h])] for l, h in mask.extra["trainable_heads"]]
