"""Change the head mask of a running `vllm.LLM` on every tensor-parallel rank."""

from __future__ import annotations

import os

import torch

from ...core.errors import LahisError
from ...core.mask import HeadMask
from .plugin import config_spec, mask_payload

_NOT_LOADED = (
    "the lahis_ctrl vLLM plugin is not active in this engine's workers: install lahis-ctrl in the Python "
    "environment vLLM runs in (it registers the 'vllm.general_plugins' entry point 'lahis_ctrl'), and if "
    "VLLM_PLUGINS is set, include 'lahis_ctrl' in it"
)


def _engine_config(llm):
    engine = getattr(llm, "llm_engine", None)
    model_config = getattr(engine, "model_config", None) or getattr(llm, "model_config", None)
    if model_config is None:
        raise LahisError(f"expected a vllm.LLM, got {type(llm).__name__}")
    return model_config


def _rpc(llm, method: str, *args):
    try:
        return llm.collective_rpc(method, args=args)
    except Exception as exc:
        # vLLM answers an unknown worker method with "Method '<name>' is not implemented."; any other
        # error (a worker's LahisError, a load format that cannot reload) keeps its own message
        if repr(method) in str(exc) and "not implemented" in str(exc).lower():
            raise LahisError(_NOT_LOADED) from exc
        raise


def set_head_mask(llm, mask) -> list[dict]:
    """Fold `mask` into the running engine's weights on every rank; `None` restores the checkpoint's.

    `mask`: a HeadMask, a mask reference (a file, a folder, a Hub repo id), a [layers, heads] tensor, or None. The weights
    are streamed from the checkpoint again through the same fold as a load-time mask, so the engine then
    computes exactly what a freshly started engine with this mask computes (any earlier mask is replaced,
    not compounded). The prefix cache is reset, since cached attention states belong to the old weights.
    Call it between `generate` calls (no request in flight). Returns each rank's status.
    """
    model_config = _engine_config(llm)
    from .requests import MASKS_KEY

    additional = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "additional_config", None)
    if isinstance(additional, dict) and additional.get(MASKS_KEY):
        raise LahisError(f"this engine serves per-request masks ({', '.join(additional[MASKS_KEY])}): they apply to the "
                         "checkpoint's weights, so a live mask would multiply with them; choose masks per request "
                         "instead (SamplingParams(extra_args={'lahis_mask': NAME}))")
    spec = config_spec(model_config.hf_config, str(model_config.model))
    if mask is not None:
        if isinstance(mask, (str, os.PathLike)):
            mask = HeadMask.load(mask)
        elif isinstance(mask, torch.Tensor):
            mask = HeadMask.from_tensor(mask, spec)
        elif not isinstance(mask, HeadMask):
            raise LahisError(f"set_head_mask takes a HeadMask, a mask file, a tensor or None; got {type(mask).__name__}")
        mask.validate(spec)  # fail here, with the reason, before any worker touches its weights
    status = _rpc(llm, "lahis_set_head_mask", None if mask is None else mask_payload(mask))
    llm.reset_prefix_cache()
    return status


def request_masks(llm) -> list[dict]:
    """Each rank's per-request masks: [{'rank', 'names', 'default', 'columns', 'layers', 'table_shape'}, ...];
    'columns' are the o_proj input columns (the heads) the rank's gain tables cover."""
    return _rpc(llm, "lahis_request_masks")


def mask_status(llm) -> list[dict]:
    """Each rank's folded mask: [{'rank', 'source', 'changed_heads', 'values', 'folded_layers'}, ...]."""
    return _rpc(llm, "lahis_mask_status")


def get_head_mask(llm) -> HeadMask | None:
    """The mask folded into a running engine (None when it serves the checkpoint's weights).

    Raises if the ranks disagree, which would mean a rank missed an update.
    """
    status = mask_status(llm)
    values = [s["values"] for s in status]
    if any(v != values[0] for v in values):
        raise LahisError(f"the tensor-parallel ranks hold different masks: {[s['changed_heads'] for s in status]}")
    if values[0] is None:
        return None
    model_config = _engine_config(llm)
    return HeadMask.from_tensor(torch.tensor(values[0]), config_spec(model_config.hf_config, str(model_config.model)),
                                method="vllm-live")
