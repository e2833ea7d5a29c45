"""Export a head mask as a PEFT LoRA adapter on the attention output projections.

Scaling head h of a layer by m_h is W -> W diag(s), with s the mask repeated over each head's head_dim
input features; only the changed heads' columns differ, so the difference is a LoRA update B @ A of rank
(changed heads in the layer) x head_dim, exact in real arithmetic (core.head_layout.lora_factors). With
lora_alpha = r the adapter's scaling is 1.
The rank is padded with zero rows/columns up to one vLLM accepts (its max_lora_rank choices), which adds
exactly nothing. Layers without a changed head get no LoRA weights at all.

vLLM serves such adapters per request (multi-LoRA: different language masks in one batch); PEFT loads
the same directory for transformers. Writing it needs neither peft nor vLLM.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ... import __version__
from ...core.errors import LahisError
from ...core.fileio import write_json
from ...core import head_layout
from ...core.architecture import describe, output_projections
from ...core.export import check_out_dir
from ...core.mask import as_mask

log = logging.getLogger(__name__)

# vLLM's allowed max_lora_rank values (vllm.config.lora); an adapter's r must not exceed the engine's.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def lora_rank(needed: int, ranks=VLLM_LORA_RANKS) -> int:
    """The smallest rank vLLM accepts that holds `needed`; `needed` itself when it exceeds them all."""
    for r in sorted(ranks):
        if r >= needed:
            return r
    return needed


def export_lora(model, mask, out_dir: str | os.PathLike, overwrite: bool = False, dtype: torch.dtype | None = None,
                ranks=VLLM_LORA_RANKS, arch=None, base_model: str | None = None, base_revision: str | None = None,
                evaluation=()) -> Path:
    """Write `mask` as a PEFT LoRA adapter for `model` (a transformers causal LM) to `out_dir`, atomically.

    The directory holds adapter_config.json, adapter_model.safetensors (the LoRA factors, in the model's
    dtype unless `dtype` is given) and lahis_mask.safetensors (the mask, for the record). Serve it with
    vLLM (`enable_lora=True, max_lora_rank >= r`, a `LoRARequest` per request, or `--lora-modules
    name=DIR` in the OpenAI server) or load it with `peft.PeftModel.from_pretrained(model, out_dir)`.
    Apply it to the UNMASKED base model. `base_model` is what the adapter records for
    `AutoPeftModelForCausalLM.from_pretrained(out_dir)` (default: the model's Hub id, else its folder as an absolute
    path); README.md is its model card (`evaluation`: result files it reports, see core.card).
    """
    from ...core.card import mask_card
    from ...core.export import recorded_base

    from safetensors.torch import save_file

    spec = describe(model, arch)
    mask = as_mask(mask, spec)
    if mask.is_identity:
        raise LahisError("the mask changes no head (all ones): there is nothing to export as an adapter")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite, (spec.name_or_path,))
    per_layer = (mask.values != 1).sum(dim=1)  # [num_layers]: changed heads per layer
    needed = int(per_layer.max()) * spec.head_dim
    r = lora_rank(needed, ranks)
    if r > max(ranks):
        log.warning("the adapter needs rank %d, above vLLM's largest max_lora_rank %d: PEFT loads it, vLLM will "
                    "refuse it; serve a folded checkpoint (lahis export --format folded) instead", r, max(ranks))
    projections = output_projections(model, spec)
    dtype = dtype or projections[0].weight.dtype
    tensors: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    for layer, module in enumerate(projections):
        row = mask.values[layer]
        if int(per_layer[layer]) == 0:
            continue
        name = spec.o_proj_names[layer]
        a, b = head_layout.lora_factors(module.weight, row, spec.head_dim, spec.layout, r, dtype)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
        targets.append(name)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model or recorded_base(spec.name_or_path),
        "revision": base_revision,
        "r": r,
        "lora_alpha": r,  # scaling alpha / r = 1: B @ A is the exact weight difference
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": spec.layout == "conv1d",  # GPT-2 Conv1D stores weights [in, out]
        # full module names: exactly the masked layers' output projections, nothing else
        "target_modules": targets,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "adapter"
        staged.mkdir()
        save_file(tensors, str(staged / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        write_json(staged / ADAPTER_CONFIG, config)
        mask.save(staged / "lahis_mask.safetensors")  # provenance; PEFT and vLLM ignore it
        write_json(staged / "lahis_lora.json", {"lahis_ctrl_version": __version__, "changed_heads": mask.changed_heads(),
                                                 "language": mask.language, "needed_rank": needed, "rank": r,
                                                 "note": "apply to the UNMASKED base model"})
        (staged / "README.md").write_text(mask_card(mask, "lora", base_model=config["base_model_name_or_path"],
                                                    base_revision=base_revision, evaluation=evaluation,
                                                    files=[ADAPTER_CONFIG, ADAPTER_WEIGHTS], lora_rank=r),
                                          encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return out_dir


def read_adapter_config(path: str | os.PathLike) -> dict:
    path = Path(path) / ADAPTER_CONFIG
    if not path.is_file():
        raise LahisError(f"{path.parent} is not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    return json.loads(path.read_text(encoding="utf-8"))
