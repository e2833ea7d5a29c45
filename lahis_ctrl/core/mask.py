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
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def check_scale(scale, name: str = "scale") -> float:
    """`scale` as a float: a real, finite number (not a bool, a string or NaN), or an error naming `name`."""
    import math
    import numbers

    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name} must be a number (0 silences a head, 1 leaves it, 3 amplifies it); got {scale!r}")
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {scale!r}")
    return value


def check_sane_scale(scale: float, allow_extreme: bool = False, what: str = "scale") -> float:
    """Refuse a negative scale or one above MAX_SANE_SCALE (a sign flip or a blow-up is almost always a wrong file or
    a units mistake) unless `allow_extreme`: the check every entry point runs (CLI, lm-eval, vLLM, HeadMask)."""
    if not allow_extreme and (scale < 0 or scale > MAX_SANE_SCALE):
        raise MaskMismatchError(
            f"{what}{'' if what.endswith('=') else ' '}{scale:g}: scales must lie in [0, {MAX_SANE_SCALE:g}] (0 silences a head, 1 leaves it, 3 "
            "amplifies it); if that scale is intended, pass allow_extreme (--allow_extreme_scales true, or "
            "allow_extreme=true in lm-eval model_args)")
    return scale


def head_pairs(heads, name: str = "heads") -> list[tuple[int, int]]:
    """`heads` as a list of (layer, head) int pairs, or an error naming what is wrong: one pair given where a list of
    pairs is expected ((1, 2) instead of [(1, 2)]), an entry that is not a pair, or indices that are not whole
    numbers (True, 1.5, '1')."""
    import numbers

    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise TypeError(f"{name} must be a list of (layer, head) pairs, e.g. [(3, 1), (7, 0)]; got {heads!r}")
    items = list(heads)
    if len(items) == 2 and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in items):
        raise TypeError(f"{name} must be a list of (layer, head) pairs; got one pair {tuple(items)!r}: write "
                        f"[{tuple(items)!r}]")
    pairs = []
    for item in items:
        if isinstance(item, torch.Tensor):
            item = item.tolist()
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise TypeError(f"{name}: {item!r} is not a (layer, head) pair")
        if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in item):
            raise TypeError(f"{name}: {tuple(item)!r} is not a pair of whole numbers (layer, head); booleans, floats "
                            "and strings are not head indices")
        pairs.append((int(item[0]), int(item[1])))
    return pairs


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
    # the weights it was made from (core.identity.model_identity); None when made from a config alone
    model_identity: dict[str, Any] | None = None

    def __post_init__(self):
        if isinstance(self.values, HeadMask):
            raise TypeError("HeadMask(values=...) takes a [num_layers, num_heads] tensor, not a HeadMask")
        try:
            values = torch.as_tensor(self.values)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"HeadMask values must be a [num_layers, num_heads] tensor of numbers; got "
                            f"{type(self.values).__name__} ({exc})") from None
        if values.is_complex() or not (values.is_floating_point() or values.dtype in _INT_DTYPES):
            raise TypeError(f"HeadMask values must be real numbers; got a {values.dtype} tensor")
        values = values.detach().to("cpu", torch.float32).clone()
        if values.dim() != 2:
            raise MaskMismatchError(
                f"a head mask is a [num_layers, num_heads] matrix; got a tensor of shape {tuple(values.shape)}"
            )
        if 0 in values.shape:
            raise MaskMismatchError(f"a head mask needs at least one layer and one head; got shape {tuple(values.shape)}")
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
    def _facts_from(cls, spec: ModelSpec, model_or_spec=None, **kw) -> dict:
        from .identity import identity_of

        kw.setdefault("model_identity", identity_of(model_or_spec))
        return dict(model_type=spec.model_type, head_dim=spec.head_dim, model_name=spec.name_or_path,
                    num_kv_heads=spec.num_kv_heads, **kw)

    @classmethod
    def ones(cls, model_or_spec, **kw) -> "HeadMask":
        """The identity mask (every head at 1.0)."""
        spec = _spec_of(model_or_spec)
        return cls(torch.ones(spec.shape), **cls._facts_from(spec, model_or_spec, **kw))

    @classmethod
    def from_heads(cls, model_or_spec, heads: Iterable[tuple[int, int]], scale: float = 0.0, **kw) -> "HeadMask":
        """All ones except `heads` [(layer, head), ...], which get `scale` (0 = masked, 3 = amplified)."""
        spec = _spec_of(model_or_spec)
        scale = check_scale(scale, "scale")
        values = torch.ones(spec.shape)
        for layer, head in head_pairs(heads):
            if not (0 <= layer < spec.num_layers and 0 <= head < spec.num_heads):
                raise MaskMismatchError(
                    f"head ({layer}, {head}) is outside this {spec.model_type} model's "
                    f"{spec.num_layers} layers x {spec.num_heads} heads (layers 0-{spec.num_layers - 1}, heads "
                    f"0-{spec.num_heads - 1})"
                )
            values[layer, head] = scale
        kw.setdefault("method", f"heads-x{scale:g}")
        return cls(values, **cls._facts_from(spec, model_or_spec, **kw))

    @classmethod
    def from_tensor(cls, values, model_or_spec, **kw) -> "HeadMask":
        spec = _spec_of(model_or_spec)
        if isinstance(values, HeadMask):
            raise TypeError("HeadMask.from_tensor(values, model) takes a [num_layers, num_heads] tensor, not a HeadMask")
        mask = cls(values, **cls._facts_from(spec, model_or_spec, **kw))
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
        if not isinstance(other, HeadMask):
            raise TypeError(f"a HeadMask multiplies only with another HeadMask of the same model (composition), not "
                            f"with {type(other).__name__}; to scale its values write "
                            "mask.with_values(mask.values * x)")
        if other.shape != self.shape:
            raise MaskMismatchError(f"cannot combine masks of shapes {self.shape} and {other.shape}")
        if (other.model_type, other.head_dim) != (self.model_type, self.head_dim):
            raise MaskMismatchError(f"cannot combine a mask for {self.model_type} (head_dim {self.head_dim}) with one "
                                    f"for {other.model_type} (head_dim {other.head_dim})")
        from .identity import same_model

        # masks apply to any model of their shape; the product was made from one model only if both were
        identity = (self.model_identity or other.model_identity) if same_model(self.model_identity,
                                                                                other.model_identity) else None
        return self.with_values(self.values * other.values, method=f"{self.method}*{other.method}",
                                model_identity=identity)

    # ---------------------------------------------------------------- checks
    def check_sane(self, allow_extreme: bool = False, source: str = "") -> "HeadMask":
        """Refuse negative scales and scales above MAX_SANE_SCALE (sign flips and blow-ups are almost always a
        wrong file or a units mistake) unless `allow_extreme`."""
        if allow_extreme:
            return self
        low, high = float(self.values.min()), float(self.values.max())
        if not (low < 0 or high > MAX_SANE_SCALE):
            return self
        if low < 0 or high > MAX_SANE_SCALE:
            (layer, head) = divmod(int((self.values < 0).float().argmax() if low < 0 else self.values.argmax()),
                                   self.num_heads)
            check_sane_scale(float(self.values[layer, head]), False,
                             f"the head mask{(' ' + source) if source else ''} scales L{layer}H{head} by")
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

    def digest(self) -> str:
        """The sha256 of the scales ([layers, heads] float32, little-endian): what a result computed under this mask
        depends on, whatever file or repo it came from (results record it to say which mask they measured)."""
        import hashlib

        values = self.values.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
        return hashlib.sha256(f"{values.shape[0]}x{values.shape[1]}:".encode() + values.tobytes()).hexdigest()

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
        from .. import __version__

        # which weights it was made from, and by which version (files of earlier versions have neither)
        made = {"lahis_ctrl_version": __version__}
        identity = {"model_identity": self.model_identity} if self.model_identity else {}
        if path.suffix == ".safetensors":
            save_tensors(path, {"mask": self.values}, raw={"format": FORMAT, **made},
                         facts={**self.facts(), "extra": self.extra, **identity})
        elif path.suffix == ".json":
            write_json(path, {"format": FORMAT, **made, **self.facts(), **identity, "extra": self.extra,
                              "mask": self.values.tolist()})
        else:
            raise LahisError(f"cannot save a head mask as '{path.suffix}': use .safetensors or .json")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, token: str | None = None, revision: str | None = None) -> "HeadMask":
        """Read a mask from a reference: a .safetensors/.json file, a folder holding lahis_mask.safetensors, or a
        Hub repo `org/name[/file.safetensors][@revision]` (through huggingface_hub's cache; see core.hub)."""
        from .hub import resolve_mask_file

        path = resolve_mask_file(path, token=token, revision=revision)
        if path.suffix == ".safetensors":
            tensors, meta = load_tensors(path, "head mask", required=("mask",), formats=(FORMAT,))
            values = tensors["mask"]
            facts = {k: decode_fact(meta, k, path) for k in _FACTS + ("model_identity",) if k in meta}
            extra = decode_fact(meta, "extra", path) if "extra" in meta else {}
        elif path.suffix == ".json":
            obj = read_json(path, "head mask file")
            if not isinstance(obj, dict) or "mask" not in obj:
                raise LahisError(f"{path} has no 'mask' field; is it a head mask?")
            values = _matrix(obj["mask"], path)
            facts = {k: obj[k] for k in _FACTS + ("model_identity",) if k in obj}
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
        if not isinstance(extra, dict) or not isinstance(facts.get("model_identity") or {}, dict):
            raise LahisError(f"{path}: the entries 'extra' and 'model_identity' must be JSON objects")
        try:
            return cls(values, extra=extra, **facts)
        except (MaskMismatchError, TypeError) as exc:  # an empty or non-numeric tensor: name the file
            raise MaskMismatchError(f"{path}: {exc}") from None

    def check_made_from(self, model, what: str = "the head mask",
                        fix: str = "use a mask made for this model, or write to another output") -> "HeadMask":
        """Refuse (naming both) a mask whose recorded weights are not `model`'s: for reusing a stored mask as this
        model's result (a resumed or skipped step). Applying a mask to another model of the same shape is
        `validate`'s business and stays allowed."""
        from .identity import check_same_model, identity_of

        check_same_model(self.model_identity, identity_of(model), what, fix)
        return self

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload this mask, a model card and (when its base model is a Hub id) the equivalent PEFT IA3 adapter to
        the Hub repo `repo_id` in one commit; `HeadMask.load(repo_id)` reads it back. Keyword arguments: those of
        core.hub.push_mask (token, revision, private, create_pr, commit_message, evaluation, base_model, peft)."""
        from .hub import push_mask

        return push_mask(self, repo_id, **kwargs)

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
    from .fileio import check_input_file

    return check_input_file(path, "head mask file")


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
