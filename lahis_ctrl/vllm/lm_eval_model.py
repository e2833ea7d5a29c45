"""`lahis_vllm`: lm-eval's vLLM model with a head mask folded into the weights at load time.

    lm_eval --model lahis_vllm --model_args pretrained=M,mask=m.safetensors,dtype=float32 --tasks ...

Every other model_arg is lm-eval's `vllm` model's (tensor_parallel_size, max_model_len, ...). The mask
goes to vLLM as `additional_config={"lahis_mask": PATH}`, which this package's vLLM plugin folds into the
output projections in every worker (zero runtime cost; see lahis_ctrl/vllm/plugin.py). After the engine
starts, each rank is asked what it folded, so a run never evaluates an unmasked model by mistake.
The name `lahis_vllm` is registered with lm-eval by lahis_ctrl's lm-eval integration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lm_eval.models.vllm_causallms import VLLM

from ..errors import LahisError
from ..mask import HeadMask
from . import CONFIG_KEY
from .plugin import plugin_available


class LahisVLLM(VLLM):
    """lm-eval's VLLM plus `mask=PATH` (a HeadMask .safetensors/.json made for `pretrained`)."""

    def __init__(self, pretrained: str, mask: str | os.PathLike | None = None, **kwargs):
        self.head_mask = None
        if mask:
            path = Path(str(mask)).expanduser().resolve()
            self.head_mask = HeadMask.load(path)  # a missing or unreadable file fails before the engine starts
            problem = plugin_available()
            if problem:
                raise LahisError(f"lahis_vllm cannot apply mask={mask}: {problem}")
            additional = kwargs.pop("additional_config", None) or {}
            if isinstance(additional, str):  # from --model_args as JSON
                try:
                    additional = json.loads(additional)
                except json.JSONDecodeError as exc:
                    raise LahisError(f"additional_config is not valid JSON: {exc}") from exc
            kwargs["additional_config"] = {**additional, CONFIG_KEY: str(path)}
        super().__init__(pretrained, **kwargs)
        if self.head_mask is not None and not self.head_mask.is_identity and getattr(self, "model", None) is not None:
            self._check_folded()

    def _check_folded(self) -> None:
        from .live import mask_status

        want = self.head_mask.values.tolist()
        status = mask_status(self.model)
        bad = [s["rank"] for s in status if s["values"] != want]
        if bad:
            raise LahisError(f"vLLM ranks {bad} did not fold the head mask {self.head_mask}; refusing to evaluate")
