"""Foundation CLI commands: `lahis info` and `lahis export`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from ..core.argtypes import Device, Dtype


def info(model: str, modules: bool = False, arch: Optional[str] = None) -> None:
    """Print a model's attention layout: layers x heads, KV heads, head_dim and the projection modules.

    Reads the model's config only and builds its modules on the meta device: no weights are downloaded or
    loaded (a hub 8B model costs its config.json, not 16 GB).

    Args:
        model: hub id, local directory, or the embedded name 'gemma-3-270m'.
        modules: also list every module name (to write an --arch override for an unknown architecture).
        arch: JSON override for architectures lahis_ctrl does not know, e.g.
            '{"o_proj": "model.layers.{layer}.attn.out_proj", "num_heads": 32, "num_kv_heads": 8, "head_dim": 128}'.
    """
    from ..core.architecture import check_arch, describe
    from ..core.export import folded_mask_of
    from ..core.loading import load_config

    config = load_config(model)
    arch = check_arch(arch, config)  # a malformed override fails before anything else
    m = _skeleton(config)  # the module tree on the meta device: names and shapes, no weights
    if modules:
        for name, mod in m.named_modules():
            print(f"{name}\t{type(mod).__name__}")
    spec = describe(m, arch)
    gqa = f" (GQA: {spec.num_heads // spec.num_kv_heads} query heads per KV head)" if spec.num_kv_heads != spec.num_heads else ""
    print(f"model:      {model}  ({spec.model_type})")
    print(f"heads:      {spec.num_layers} layers x {spec.num_heads} heads = {spec.num_layers * spec.num_heads}")
    print(f"KV heads:   {spec.num_kv_heads}{gqa}")
    print(f"head_dim:   {spec.head_dim}")
    print(f"o_proj:     {spec.o_proj_names[0]} ... {spec.o_proj_names[-1]}  ({spec.layout})")
    folded = folded_mask_of(config)
    if folded:
        print(f"folded:     a {folded.get('method')} mask for '{folded.get('language')}' is folded into the weights "
              f"(heads {folded.get('changed_heads')})")


def _skeleton(config):
    """The model's module tree with every tensor on the meta device (no memory, nothing read)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def export(*, model: str, mask: Path, out: Path, format: Literal["folded", "lora"] = "folded", overwrite: bool = False,
           dtype: Dtype = "auto", device: Device = "cpu", device_map: Optional[str] = None,
           allow_extreme_scales: bool = False, allow_refold: bool = False) -> None:
    """Write a checkpoint with a head mask applied, loadable without lahis_ctrl.

    Args:
        model: hub id, local directory, or 'gemma-3-270m'.
        mask: a head mask file (.safetensors or .json) made for this model.
        out: output directory (written atomically; never the model's own folder).
        format: 'folded' (mask multiplied into the output-projection weights) or 'lora' (a PEFT LoRA
            adapter on the output projections that reproduces the mask, for per-request masks in vLLM's
            multi-LoRA serving and for PEFT; apply it to the unmasked model).
        overwrite: replace a non-empty output directory.
        dtype: dtype to load (and save) the model in (auto: the checkpoint's own).
        device: where the model loads to fold the mask ('cpu' needs no GPU memory; 'cuda' is faster for big models).
        device_map: e.g. 'auto' to spread a model larger than one GPU (needs accelerate); overrides --device.
        allow_extreme_scales: accept negative scales or scales above 100.
        allow_refold: fold a mask into a checkpoint that already has one folded in (the scales multiply).
    """
    from ..core.architecture import spec_from_config
    from ..core.export import check_not_folded, check_out_dir
    from ..core.fileio import run_lock
    from ..core.loading import load_config, load_model_on, load_tokenizer, resolve
    from ..core.mask import HeadMask

    # everything that can be checked without the weights is checked before they load
    head_mask = HeadMask.load(mask).check_sane(allow_extreme_scales, f"from {mask}")
    config = load_config(model)
    head_mask.validate(spec_from_config(config, str(model)))
    check_not_folded(config, allow_refold, f"model '{model}'")
    out = Path(out)
    check_out_dir(out, overwrite, (resolve(model), mask))  # a hub id is no folder: check_out_dir skips it
    with run_lock(out.parent, f"lahis export --out {out}", name=f".{out.name}.lock"):
        m = load_model_on(model, dtype, device, device_map)
        if format == "folded":
            from ..core.export import export_folded

            out_dir = export_folded(m, load_tokenizer(model), head_mask, out, overwrite=overwrite)
        else:
            from ..integrations.vllm.lora import export_lora, read_adapter_config

            out_dir = export_lora(m, head_mask, out, overwrite=overwrite)
            print(f"LoRA rank {read_adapter_config(out_dir)['r']}: serve with vLLM's enable_lora=True, "
                  "max_lora_rank >= it")
    print(f"wrote {out_dir} ({format}, {len(head_mask.changed_heads())} heads changed)")
