"""Apply per-head scales to a transformers model: hooks (temporary) or folding into the weights.

Both act on the INPUT of each layer's attention output projection, laid out as
[batch, pos, num_heads * head_dim] where head h owns features h*head_dim : (h+1)*head_dim
(see introspect.py). Scaling that slice by m[layer, h] is exactly the paper's head scale, and it works
with every attention implementation (eager, sdpa, flash) because it happens after attention.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .errors import LahisError
from .introspect import ModelSpec, describe, output_projections
from .mask import HeadMask, as_mask


def _feature_scales(row: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[num_heads] -> [num_heads * head_dim]: each head's scale repeated over its head_dim features."""
    return row.repeat_interleave(head_dim)


def _hook_for(transform: Callable[[torch.Tensor], torch.Tensor]):
    """A forward pre-hook that replaces the o_proj input x by transform(x)."""

    def pre_hook(module, args, kwargs):
        # x: [batch, pos, num_heads * head_dim] (or [tokens, num_heads * head_dim] when flattened)
        if args:
            return (transform(args[0]),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "input": transform(kwargs["input"])}

    return pre_hook


def _scaled_by(scale_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x * scale_fn(x)


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
        full = _feature_scales(row, spec.head_dim)  # [num_heads * head_dim], float32 on CPU
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
            return _feature_scales(scales[layer].to(device=x.device, dtype=x.dtype), spec.head_dim)

        entries.append((module, _scaled_by(scale_fn)))
    with installed_input_transforms(entries):
        yield spec


def head_slices(spec: ModelSpec, head: int) -> slice:
    """The o_proj input features of `head`."""
    return slice(head * spec.head_dim, (head + 1) * spec.head_dim)


def _head_block(weight: torch.Tensor, spec: ModelSpec, head: int) -> torch.Tensor:
    """View of the weight entries that multiply head `head`'s features (columns for Linear, rows for Conv1D)."""
    sl = head_slices(spec, head)
    return weight[:, sl] if spec.layout == "linear" else weight[sl, :]


@dataclass
class FoldHandle:
    """Returned by fold_head_mask. `undo()` puts back the original weights bit for bit."""

    mask: HeadMask
    _saved: list[tuple[torch.Tensor, int, torch.Tensor]] = field(default_factory=list, repr=False)
    _spec: ModelSpec | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return bool(self._saved)

    def undo(self) -> None:
        with torch.no_grad():
            for weight, head, original in reversed(self._saved):
                _head_block(weight, self._spec, head).copy_(original)
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
        with torch.no_grad():
            for layer, head in mask.changed_heads():
                weight = projections[layer].weight
                if not weight.dtype.is_floating_point or weight.device.type == "meta" or weight.numel() == 0:
                    raise LahisError(
                        f"cannot fold a mask into {spec.o_proj_names[layer]}: its weight is "
                        f"{weight.dtype} on {weight.device} (quantized, offloaded or repacked). "
                        "Use apply_head_mask(model, mask) instead, which works on any weights."
                    )
                block = _head_block(weight, spec, head)
                handle._saved.append((weight, head, block.clone()))
                scale = float(mask.values[layer, head])
                # multiply in float32 and round once, so bf16/fp16 weights lose no more than one rounding
                block.copy_((block.float() * scale).to(weight.dtype))
    except BaseException:
        handle.undo()
        raise
    return handle
