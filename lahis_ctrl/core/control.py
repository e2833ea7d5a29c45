"""Apply per-head scales to a transformers model: hooks (temporary) or folding into the weights.

Both act on the INPUT of each layer's attention output projection, laid out as
[batch, pos, num_heads * head_dim] where head h owns features h*head_dim : (h+1)*head_dim
(core/head_layout.py, the one place that spells this out). Scaling that slice by m[layer, h] is exactly the
paper's head scale, and it works with every attention implementation (eager, sdpa, flash) because it
happens after attention.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from . import head_layout
from .architecture import ModelSpec, describe, output_projections
from .errors import LahisError
from .mask import HeadMask, as_mask


def replace_input(args: tuple, kwargs: dict, transform: Callable[[torch.Tensor], torch.Tensor]) -> tuple[tuple, dict]:
    """A forward pre-hook's (args, kwargs) with the module's input x (positional or `input=`) replaced by
    transform(x)."""
    # x: [batch, pos, num_heads * head_dim] (or [tokens, num_heads * head_dim] when flattened)
    if args:
        return (transform(args[0]),) + tuple(args[1:]), kwargs
    return args, {**kwargs, "input": transform(kwargs["input"])}


def _hook_for(transform: Callable[[torch.Tensor], torch.Tensor]):
    """A forward pre-hook that replaces the o_proj input x by transform(x)."""

    def pre_hook(module, args, kwargs):
        return replace_input(args, kwargs, transform)

    return pre_hook


def check_row_input(x: torch.Tensor, batch: int) -> None:
    """Per-row scales need the o_proj input as [batch, pos, features] with the scales' batch size."""
    if x.dim() != 3 or x.shape[0] != batch:
        raise LahisError(f"per-row head scales expect [batch, pos, features] o_proj inputs; got {tuple(x.shape)}")


def _scaled_by(scale_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: head_layout.scale_input(x, scale_fn(x))


@contextlib.contextmanager
def installed_input_transforms(modules_and_fns) -> Iterator[None]:
    """Replace each module's input x by fn(x) while the context is open; hooks always removed on exit."""
    handles = []
    try:
        for module, fn in modules_and_fns:
            handles.append(module.register_forward_pre_hook(_hook_for(fn), with_kwargs=True))
        yield
    finally:  # also on exceptions, and if installing a later hook failed
        for h in handles:
            h.remove()


@contextlib.contextmanager
def apply_head_mask(model, mask, arch=None) -> Iterator[HeadMask]:
    """Scale each head's output by `mask` while the context is open; the hooks always remove themselves.

    `mask`: a HeadMask, a path to a mask file, or a [layers, heads] tensor. Nested contexts multiply.
    Layers whose scales are all 1 get no hook at all (exactly the unmasked computation).
    """
    spec = describe(model, arch)
    mask = as_mask(mask, spec)
    projections = output_projections(model, spec)
    entries = []
    for layer, module in enumerate(projections):
        row = mask.values[layer]
        if bool((row == 1).all()):
            continue
        full = head_layout.feature_scales(row, spec.head_dim)  # [num_heads * head_dim], float32 on CPU
        cache: dict[tuple, torch.Tensor] = {}

        def scale_fn(x, full=full, cache=cache):
            key = (x.device, x.dtype)
            vec = cache.get(key)
            if vec is None:  # moved once per device/dtype: models spread with device_map="auto" work
                vec = cache[key] = full.to(device=x.device, dtype=x.dtype)
            return vec

        entries.append((module, _scaled_by(scale_fn)))
    with installed_input_transforms(entries):
        yield mask


@contextlib.contextmanager
def scale_heads(model, scales: torch.Tensor, spec: ModelSpec | None = None) -> Iterator[ModelSpec]:
    """Like apply_head_mask for a raw [layers, heads] tensor that may require grad (scoring, training).

    The scale is re-read on every forward, so an optimizer may update `scales` in place between steps,
    and autograd sees d(output)/d(scales).
    """
    spec = spec or describe(model)
    if tuple(scales.shape) != spec.shape:
        raise LahisError(f"scales of shape {tuple(scales.shape)} do not fit {spec.num_layers} layers x {spec.num_heads} heads")
    entries = []
    for layer, module in enumerate(output_projections(model, spec)):
        def scale_fn(x, layer=layer):
            return head_layout.feature_scales(scales[layer].to(device=x.device, dtype=x.dtype), spec.head_dim)

        entries.append((module, _scaled_by(scale_fn)))
    with installed_input_transforms(entries):
        yield spec


@contextlib.contextmanager
def row_scales(model, spec: ModelSpec, scales: torch.Tensor) -> Iterator[None]:
    """Per-row head scales: `scales` [batch, layers, heads] multiplies row b's head outputs at every layer.

    With scales == 1 the forward is unchanged; d(sum of row losses)/d scales[b] is row b's own gradient,
    accumulated in float32 (head_layout.RowScale).
    """
    def scaled(layer: int):
        def transform(x: torch.Tensor) -> torch.Tensor:
            check_row_input(x, scales.shape[0])
            return head_layout.scale_rows(x, scales[:, layer], spec.head_dim)  # [batch, heads] of this layer

        return transform

    with installed_input_transforms([(module, scaled(layer))
                                     for layer, module in enumerate(output_projections(model, spec))]):
        yield


@dataclass
class FoldHandle:
    """Returned by fold_head_mask. `undo()` puts back the original weights bit for bit."""

    mask: HeadMask
    _saved: list[tuple[torch.Tensor, list]] = field(default_factory=list, repr=False)
    _spec: ModelSpec | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return bool(self._saved)

    def undo(self) -> None:
        for weight, blocks in reversed(self._saved):
            head_layout.unfold_in_place(weight, blocks, self._spec.head_dim, self._spec.layout)
        self._saved.clear()

    def __enter__(self) -> "FoldHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


def fold_head_mask(model, mask, arch=None) -> FoldHandle:
    """Multiply the mask into the output-projection weights, in place: zero runtime cost.

    Keeps a copy of the original weight entries of every changed head (never divides), so
    `handle.undo()` restores them exactly. Use `with fold_head_mask(model, mask): ...` for a scoped fold.
    """
    spec = describe(model, arch)
    mask = as_mask(mask, spec)
    handle = FoldHandle(mask=mask, _spec=spec)
    projections = output_projections(model, spec)
    try:
        for layer in sorted({layer for layer, _ in mask.changed_heads()}):
            weight = projections[layer].weight
            if not weight.dtype.is_floating_point or weight.device.type == "meta" or weight.numel() == 0:
                raise LahisError(
                    f"cannot fold a mask into {spec.o_proj_names[layer]}: its weight is "
                    f"{weight.dtype} on {weight.device} (quantized, offloaded or repacked). "
                    "Use apply_head_mask(model, mask) instead, which works on any weights."
                )
            handle._saved.append((weight, head_layout.fold_in_place(weight, mask.values[layer], spec.head_dim,
                                                                      spec.layout)))
    except BaseException:
        handle.undo()
        raise
    return handle
