"""The soft-mask comparison both `lahis reproduce` (its xquad step) and `lahis demo` run: train a LAHIS soft mask
and a random-heads soft mask for one language (or load them when a finished file exists), then evaluate the
original model and both masks on the same held-out items."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

KINDS = ("lahis", "random")


def random_mask_names(count: int) -> list[str]:
    """"random" (the reference's single-seed baseline), then "random-s1", "random-s2", ... (seed + i)."""
    return ["random"] + [f"random-s{i}" for i in range(1, count)]


def train_or_load(model, tokenizer, lang: str, scores, kind: str, n: int, rows: Sequence[dict], masks_dir: Path,
                  epochs: int, lr: float, seed: int, progress: bool = True, extra: Optional[dict] = None):
    """(mask, trained_now): <masks_dir>/<lang>-<kind>.safetensors when it exists (checked against the model),
    else a mask trained on `rows` (resuming from <lang>-<kind>.ckpt/) and saved there. `kind` is "lahis" (the
    top-n heads of `scores`) or a random-heads name ("random", "random-s1", ...; the random heads and training
    are seeded with `seed`)."""
    from ..core.architecture import describe
    from ..core.mask import HeadMask
    from ..lahis.softmask import train_mask

    path = Path(masks_dir) / f"{lang}-{kind}.safetensors"
    if path.is_file():
        return HeadMask.load(path).validate(describe(model)), False
    mask = train_mask(model, tokenizer, lang, scores if kind == "lahis" else None, n=n, epochs=epochs, lr=lr,
                      heads="top" if kind == "lahis" else "random", seed=seed, rows=rows,
                      checkpoint_dir=Path(masks_dir) / f"{lang}-{kind}.ckpt", progress=progress)
    mask.extra.update(extra or {})
    mask.save(path)
    return mask, True


def compare_soft_masks(model, tokenizer, lang: str, scores, train: Sequence[dict], test: Sequence[dict], n: int,
                       masks_dir: Path, eval_dir: Path, epochs: int, lr: float = 1e-2, seed: int = 0,
                       max_new_tokens: int = 10, batch_size: int = 8, progress: bool = True, extra: Optional[dict] = None,
                       on_mask: Optional[Callable] = None, random_masks: int = 1):
    """Train (or load) the LAHIS soft mask and `random_masks` random-heads soft masks (seeds seed, seed + 1, ...),
    then evaluate original / random ... / lahis on `test` (each mask paired with the original).

    Returns (EvalReport, {name: HeadMask}). `on_mask(name, mask, path, trained_now)` is called after each
    mask is ready (the demo prints it).
    """
    from ..eval.evaluate import evaluate_masks

    masks = {}
    for i, name in enumerate(["lahis"] + random_mask_names(random_masks)):
        masks[name], trained = train_or_load(model, tokenizer, lang, scores, name, n, train, masks_dir, epochs, lr,
                                             seed + (0 if name == "lahis" else i - 1), progress, extra)
        if on_mask is not None:
            on_mask(name, masks[name], Path(masks_dir) / f"{lang}-{name}.safetensors", trained)
    order = {"original": None, **{name: masks[name] for name in random_mask_names(random_masks)}, "lahis": masks["lahis"]}
    report = evaluate_masks(model, tokenizer, lang, order, test, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            out_dir=eval_dir, progress=progress, overwrite=True)  # the caller's cache decides reruns
    return report, masks


def trained_heads(mask) -> list[list]:
    """[[layer, head, trained scale], ...] of a soft mask's trainable heads."""
    return [[int(l), int(h), float(mask.values[l, h])] for l, h in mask.extra["trainable_heads"]]
