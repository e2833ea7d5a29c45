"""HeadMask: a float32 [num_layers, num_heads] scale per attention head, tied to the model it belongs to.

A value of 1.0 leaves a head alone, 0.0 silences it, 3.0 amplifies it. Files:
  * .safetensors: tensor key "mask", the model facts as string entries of the header metadata;
  * .json: {"format": ..., "mask": [[...], ...], <facts>}.
Never a pickle: `from_reference` reads the paper's .pth tensors with torch.load(weights_only=True).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from .artifacts import check_fits, decode_fact, load_tensors, save_tensors
from .errors import LahisError, MaskMismatchError
from .fileio import read_json, write_json
from .architecture import ModelSpec, describe, spec_of

FORMAT = "lahis-head-mask/1"
MAX_SANE_SCALE = 100.0  # beyond this, a scale is refused at the boundaries (CLI, lm-eval, vLLM) unless allowed
_FACTS = ("model_name", "model_type", "num_layers", "num_heads", "num_kv_heads", "head_dim", "language", "method")


_spec_of = spec_of  # name kept for callers of earlier versions


@dataclass
class HeadMask:
    """Per-head output scales for one model. `values` is float32 [num_layers, num_heads]."""

    values: torch.Tensor
    model_type: str
    head_dim: int
    model_name: str = ""
    num_kv_heads: int | None = None
    language: str | None = None
    method: str = "manual"  # how it was made: manual, lahis-soft-mask, random-soft-mask, reference-import, ...
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (training settings...)

    def __post_init__(self):
        values = torch.as_tensor(self.values).detach().to("cpu", torch.float32).clone()
        if values.dim() != 2:
            raise MaskMismatchError(
                f"a head mask is a [num_layers, num_heads] matrix; got a tensor of shape {tuple(values.shape)}"
            )
        self.values = values
        self.check_finite()

    # ---------------------------------------------------------------- construction
    @property
    def num_layers(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.values.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    @classmethod
    def _facts_from(cls, spec: ModelSpec, **kw) -> dict:
        return dict(model_type=spec.model_type, head_dim=spec.head_dim, model_name=spec.name_or_path,
                    num_kv_heads=spec.num_kv_heads, **kw)

    @classmethod
    def ones(cls, model_or_spec, **kw) -> "HeadMask":
        """The identity mask (every head at 1.0)."""
        spec = _spec_of(model_or_spec)
        return cls(torch.ones(spec.shape), **cls._facts_from(spec, **kw))

    @classmethod
    def from_heads(cls, model_or_spec, heads: Iterable[tuple[int, int]], scale: float = 0.0, **kw) -> "HeadMask":
        """All ones except `heads` [(layer, head), ...], which get `scale` (0 = masked, 3 = amplified)."""
        spec = _spec_of(model_or_spec)
        values = torch.ones(spec.shape)
        for layer, head in heads:
            if not (0 <= layer < spec.num_layers and 0 <= head < spec.num_heads):
                raise MaskMismatchError(
                    f"head ({layer}, {head}) is outside this {spec.model_type} model's "
                    f"{spec.num_layers} layers x {spec.num_heads} heads"
                )
            values[layer, head] = scale
        kw.setdefault("method", f"heads-x{scale:g}")
        return cls(values, **cls._facts_from(spec, **kw))

    @classmethod
    def from_tensor(cls, values, model_or_spec, **kw) -> "HeadMask":
        spec = _spec_of(model_or_spec)
        mask = cls(torch.as_tensor(values), **cls._facts_from(spec, **kw))
        mask.validate(spec)
        return mask

    @classmethod
    def from_reference(cls, path: str | os.PathLike, model_or_spec, language: str | None = None) -> "HeadMask":
        """Import a [layers, heads] tensor saved with torch.save by the paper's reference code (.pth)."""
        path = _existing(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled code: say so instead of a deep traceback
            raise LahisError(f"could not read {path} as a tensor file (torch.load, weights_only=True): {exc}") from exc
        if isinstance(obj, dict):
            tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise LahisError(f"{path} holds a dict with {len(tensors)} tensors; expected one [layers, heads] tensor")
            obj = tensors[0]
        if not isinstance(obj, torch.Tensor):
            raise LahisError(f"{path} holds a {type(obj).__name__}, not a [layers, heads] tensor")
        return cls.from_tensor(obj.float(), model_or_spec, language=language, method="reference-import",
                               extra={"source": str(path)})

    def with_values(self, values: torch.Tensor, **changes) -> "HeadMask":
        return replace(self, values=values, **changes)

    def __mul__(self, other: "HeadMask") -> "HeadMask":
        """Compose two masks of the same model (what nested apply_head_mask contexts do)."""
        if other.shape != self.shape:
            raise MaskMismatchError(f"cannot combine masks of shapes {self.shape} and {other.shape}")
        return self.with_values(self.values * other.values, method=f"{self.method}*{other.method}")

    # ---------------------------------------------------------------- checks
    def check_sane(self, allow_extreme: bool = False, source: str = "") -> "HeadMask":
        """Refuse negative scales and scales above MAX_SANE_SCALE (sign flips and blow-ups are almost always a
        wrong file or a units mistake) unless `allow_extreme`."""
        if allow_extreme:
            return self
        low, high = float(self.values.min()), float(self.values.max())
        if low < 0 or high > MAX_SANE_SCALE:
            (layer, head) = divmod(int((self.values < 0).float().argmax() if low < 0 else self.values.argmax()),
                                   self.num_heads)
            raise MaskMismatchError(
                f"the head mask{(' ' + source) if source else ''} scales L{layer}H{head} by "
                f"{float(self.values[layer, head]):g}: scales must lie in [0, {MAX_SANE_SCALE:g}] (0 silences a head, "
                "1 leaves it, 3 amplifies it); if that scale is intended, pass allow_extreme "
                "(--allow_extreme_scales true, or allow_extreme=true in lm-eval model_args)")
        return self

    def check_finite(self) -> None:
        bad = ~torch.isfinite(self.values)
        if bad.any():
            where = [tuple(x) for x in bad.nonzero().tolist()[:5]]
            raise MaskMismatchError(f"the head mask holds NaN or inf at (layer, head) {where}")

    def validate(self, target) -> "HeadMask":
        """Check this mask fits `target` (a model or ModelSpec); raise naming both sides if not."""
        self.check_finite()
        check_fits("mask", self.facts(), self.shape, _spec_of(target))
        return self

    @property
    def is_identity(self) -> bool:
        return bool((self.values == 1).all())

    def changed_heads(self) -> list[tuple[int, int]]:
        """(layer, head) of every head whose scale is not 1."""
        return [tuple(x) for x in (self.values != 1).nonzero().tolist()]

    # ---------------------------------------------------------------- files
    def facts(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "language": self.language,
            "method": self.method,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write `.safetensors` or `.json` (chosen by the suffix), atomically; the same mask gives the same bytes."""
        path = Path(path)
        if path.suffix == ".safetensors":
            save_tensors(path, {"mask": self.values}, raw={"format": FORMAT},
                         facts={**self.facts(), "extra": self.extra})
        elif path.suffix == ".json":
            write_json(path, {"format": FORMAT, **self.facts(), "extra": self.extra, "mask": self.values.tolist()})
        else:
            raise LahisError(f"cannot save a head mask as '{path.suffix}': use .safetensors or .json")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadMask":
        path = _existing(path)
        if path.suffix == ".safetensors":
            tensors, meta = load_tensors(path, "head mask", required=("mask",), formats=(FORMAT,))
            values = tensors["mask"]
            facts = {k: decode_fact(meta, k, path) for k in _FACTS if k in meta}
            extra = decode_fact(meta, "extra", path) if "extra" in meta else {}
        elif path.suffix == ".json":
            obj = read_json(path, "head mask file")
            if not isinstance(obj, dict) or "mask" not in obj:
                raise LahisError(f"{path} has no 'mask' field; is it a head mask?")
            values = _matrix(obj["mask"], path)
            facts = {k: obj[k] for k in _FACTS if k in obj}
            extra = obj.get("extra") or {}
        elif path.suffix in (".pth", ".pt"):
            raise LahisError(f"{path} looks like a reference-code tensor: use HeadMask.from_reference(path, model)")
        else:
            raise LahisError(f"cannot read a head mask from '{path.suffix}': use .safetensors or .json")
        if "model_type" not in facts or "head_dim" not in facts:
            raise LahisError(f"{path} does not say which model it belongs to (model_type, head_dim missing)")
        shape = (facts.pop("num_layers", None), facts.pop("num_heads", None))
        if None not in shape and tuple(values.shape) != tuple(shape):
            raise MaskMismatchError(f"{path}: the tensor's shape {tuple(values.shape)} disagrees with its header {shape}")
        return cls(values, extra=extra, **facts)

    def __repr__(self) -> str:
        changed = len(self.changed_heads())
        return (f"HeadMask({self.model_type} '{self.model_name}', {self.num_layers}x{self.num_heads}, "
                f"lang={self.language}, method={self.method}, {changed} heads != 1)")


def _matrix(rows, path) -> torch.Tensor:
    """A JSON [layers, heads] list of numbers as float32, naming the first entry that is not a number."""
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise LahisError(f"{path}: 'mask' must be a list of rows of numbers ([layers][heads])")
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise LahisError(f"{path}: mask[{i}][{j}] is {v!r}, not a number")
    if len({len(r) for r in rows}) > 1:
        raise LahisError(f"{path}: the mask's rows have different lengths {sorted({len(r) for r in rows})}")
    return torch.tensor(rows, dtype=torch.float32)


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LahisError(f"file not found: {path}")
    return path


def as_mask(mask, model_or_spec=None) -> HeadMask:
    """Coerce a HeadMask, a path, or a [layers, heads] tensor (given the model) into a validated HeadMask."""
    if isinstance(mask, (str, os.PathLike)):
        mask = HeadMask.load(mask)
    elif isinstance(mask, torch.Tensor):
        if model_or_spec is None:
            raise LahisError("a raw tensor mask needs the model it belongs to")
        return HeadMask.from_tensor(mask, model_or_spec)
    if not isinstance(mask, HeadMask):
        raise TypeError(f"expected a HeadMask, a path or a tensor, got {type(mask).__name__}")
    if model_or_spec is not None:
        mask.validate(model_or_spec)
    return mask
