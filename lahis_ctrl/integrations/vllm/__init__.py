"""Serve head-masked models with vLLM.

* Load-time masks: the `vllm.general_plugins` entry point (`lahis_ctrl.vllm.plugin:register`) folds a
  HeadMask into the attention output-projection weights as they stream in from the checkpoint, in every
  vLLM process that loads weights (each tensor-parallel rank scales the o_proj columns it keeps). Give
  the mask with `additional_config={"lahis_mask": PATH}` (CLI: `--additional-config '{"lahis_mask": PATH}'`)
  or the environment variable `LAHIS_MASK=PATH`.
* Live masks: `set_head_mask(llm, mask)` re-streams the weights of a running `vllm.LLM` through the
  same fold on every rank and resets the prefix cache; `mask=None` restores the checkpoint's weights.
* Per-request masks: register named masks at start (`additional_config={"lahis_masks": {"de": REF, ...}}`),
  pick one per request (`SamplingParams(extra_args={"lahis_mask": "de"})`, or `vllm_xargs` in the OpenAI
  server); a per-token gain on each output projection's input (see requests.py). `export_lora(model, mask,
  out_dir)` writes a PEFT LoRA adapter that reproduces a mask, for vLLM's multi-LoRA serving and for PEFT.
* lm-eval: `lahis_ctrl.vllm.lm_eval_model.LahisVLLM` (registered by lahis_ctrl as `lahis_vllm`).

Importing this package does not import vLLM or torch; only the functions that need them do.
"""

from __future__ import annotations

from ..._lazy import lazy_exports

MASK_ENV = "LAHIS_MASK"  # path of the mask every vLLM process started from this environment applies
CONFIG_KEY = "lahis_mask"  # key in vLLM's additional_config
ARCH_ENV = "LAHIS_ARCH"  # optional JSON ArchSpec override for architectures lahis_ctrl does not know

_EXPORTS = {
    "set_head_mask": "live", "get_head_mask": "live",
    "export_lora": "lora", "lora_rank": "lora", "VLLM_LORA_RANKS": "lora",
    "register": "plugin", "mask_status": "live", "request_masks": "live",
}

__all__ = sorted(_EXPORTS) + ["MASK_ENV", "CONFIG_KEY", "ARCH_ENV"]
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, ["MASK_ENV", "CONFIG_KEY", "ARCH_ENV"])
