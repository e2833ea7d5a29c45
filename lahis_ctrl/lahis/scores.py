"""HeadScores: the LAHIS scores of one language for one model, and their file.

All matrices are float32 [num_layers, num_heads]: `scores` = `importance` * `negative_fraction` (see
lahis/scoring.py for how they are computed). The .safetensors file holds the three tensors and the model facts
(core/artifacts.py: sorted metadata, so identical runs give identical bytes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..core.architecture import spec_of
from ..core.artifacts import check_fits, decode_fact, load_tensors, save_tensors
from ..core.errors import LahisError, MaskMismatchError

FORMAT = "lahis-head-scores/1"
_FACTS = ("model_name", "model_type", "num_kv_heads", "head_dim", "language", "mode", "num_texts", "num_tokens",
          "source")


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
    # the weights they were computed from (core.identity.model_identity); None in files of earlier versions
    model_identity: Optional[dict[str, Any]] = None

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
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"top_heads(n): n is a number of heads (a whole number), got {n!r}")
        if n < 0:
            raise LahisError(f"top_heads needs n >= 0, got {n}")
        flat = self.scores.flatten()
        # stable sort on the negated scores keeps ties in (layer, head) order
        order = torch.sort(-flat, stable=True).indices[: min(n, flat.numel())]
        return [(int(i) // self.num_heads, int(i) % self.num_heads) for i in order]

    def validate(self, target) -> "HeadScores":
        """Check these scores fit `target` (a model or ModelSpec); the same checks as HeadMask.validate. Given a
        loaded model, also that they were computed from its weights (scores of other weights of the same shape
        rank other heads)."""
        from ..core.identity import check_same_model, identity_of

        check_fits("scores", self.facts(), self.shape, spec_of(target))
        check_same_model(self.model_identity, identity_of(target) if hasattr(target, "named_parameters") else None,
                         f"the {self.language or ''} scores".replace("  ", " "),
                         fix="score this model first (lahis score)")
        return self

    def check_finite(self, what: str = "") -> "HeadScores":
        """Refuse scores that hold NaN or inf (a diverged run), naming where and the likely cause."""
        for name in ("scores", "importance", "negative_fraction"):
            bad = ~torch.isfinite(getattr(self, name))
            if bad.any():
                layer, head = (int(x) for x in bad.nonzero()[0])
                cause = (f"faithful mode diverged: its learning rate lr={self.extra.get('lr')} makes the head scales "
                         "overflow; use a smaller lr (the reference uses 0.01)") if self.mode == "faithful" else \
                    "the model's loss or gradients overflow (try dtype float32)"
                raise LahisError(f"{what or 'the ' + (self.language or '') + ' scores'} hold NaN or inf "
                                 f"({int(bad.sum())} of {bad.numel()} heads, first L{layer}H{head} in {name}): {cause}")
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write a .safetensors file (keys scores, importance, negative_fraction; facts in the metadata),
        atomically; the same scores give the same bytes."""
        from .. import __version__

        path = Path(path)
        if path.suffix != ".safetensors":
            raise LahisError(f"head scores are saved as .safetensors, not '{path.suffix}' ({path})")
        self.check_finite(f"scores to be written to {path}")  # a score file is never NaN
        tensors = {"scores": self.scores, "importance": self.importance, "negative_fraction": self.negative_fraction}
        identity = {"model_identity": self.model_identity} if self.model_identity else {}
        return save_tensors(path, tensors, raw={"format": FORMAT, "lahis_ctrl_version": __version__},
                            facts={**self.facts(), "extra": self.extra, **identity})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadScores":
        path = Path(path)
        tensors, meta = load_tensors(path, "LAHIS score file", required=("scores",), formats=(FORMAT,))
        if "model_type" not in meta or "head_dim" not in meta:
            raise LahisError(f"{path} does not say which model it belongs to (model_type, head_dim missing)")
        facts = {k: decode_fact(meta, k, path) for k in _FACTS + ("model_identity",) if k in meta}
        extra = decode_fact(meta, "extra", path) if "extra" in meta else {}
        if not isinstance(extra, dict) or not isinstance(facts.get("model_identity") or {}, dict):
            raise LahisError(f"{path}: the metadata entries 'extra' and 'model_identity' must be JSON objects")
        extra.setdefault("lahis_ctrl_version", meta.get("lahis_ctrl_version"))
        scores = tensors["scores"]
        # a bare score matrix (e.g. converted from the reference) has no parts: keep what we can
        importance = tensors.get("importance", scores)
        negative_fraction = tensors.get("negative_fraction", torch.ones_like(scores))
        return cls(scores, importance, negative_fraction, extra=extra, **facts)

    def __repr__(self) -> str:
        return (f"HeadScores({self.model_type} '{self.model_name}', {self.num_layers}x{self.num_heads}, "
                f"lang={self.language}, mode={self.mode}, texts={self.num_texts}, tokens={self.num_tokens})")
