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


def export(*, model: str, mask: str, out: Path, format: Literal["folded", "lora", "ia3"] = "folded",
           overwrite: bool = False, dtype: Dtype = "auto", device: Device = "cpu", device_map: Optional[str] = None,
           allow_extreme_scales: bool = False, allow_refold: bool = False, base_model: Optional[str] = None,
           evaluation: Optional[list[str]] = None) -> None:
    """Write a checkpoint with a head mask applied, loadable without lahis_ctrl.

    Args:
        model: hub id, local directory, or 'gemma-3-270m'.
        mask: the head mask made for this model: a file (.safetensors or .json), a folder holding
            lahis_mask.safetensors, or a Hub repo id org/name[/FILE.safetensors][@REVISION].
        out: output directory (written atomically; never the model's own folder), with a model card README.md.
        format: 'folded' (mask multiplied into the output-projection weights), 'lora' (a PEFT LoRA adapter on the
            output projections that reproduces the mask, for vLLM's multi-LoRA serving and PEFT) or 'ia3' (a PEFT
            IA3 adapter equal to the mask, written from the model's config alone); adapters apply to the unmasked
            model.
        overwrite: replace a non-empty output directory.
        dtype: dtype to load (and save) the model in (auto: the checkpoint's own).
        device: where the model loads to fold the mask ('cpu' needs no GPU memory; 'cuda' is faster for big models).
        device_map: e.g. 'auto' to spread a model larger than one GPU (needs accelerate); overrides --device.
        allow_extreme_scales: accept negative scales or scales above 100.
        allow_refold: fold a mask into a checkpoint that already has one folded in (the scales multiply).
        base_model: what an adapter records as its base model (for AutoPeftModelForCausalLM): default the model's
            Hub id, else its folder as an absolute path.
        evaluation: result files the model card reports with intervals (`lahis evaluate --out` folders,
            lm-eval results JSON).
    """
    from ..core.architecture import spec_from_config
    from ..core.export import check_not_folded, check_out_dir
    from ..core.fileio import run_lock
    from ..core.loading import load_config, load_tokenizer, resolve
    from ..core.mask import HeadMask
    from ..core.loading import load_model_on

    # everything that can be checked without the weights is checked before they load
    head_mask = HeadMask.load(mask).check_sane(allow_extreme_scales, f"from {mask}")
    config = load_config(model)
    head_mask.validate(spec_from_config(config, str(model)))
    check_not_folded(config, allow_refold, f"model '{model}'")
    out = Path(out)
    check_out_dir(out, overwrite, (resolve(model), mask))  # a hub id is no folder: check_out_dir skips it
    evaluation = evaluation or ()
    revision = getattr(config, "_commit_hash", None) if base_model is None else None
    with run_lock(out.parent, f"lahis export --out {out}", name=f".{out.name}.lock"):
        if format == "ia3":  # the module names come from the config: no weights load
            from ..core.export import export_ia3

            out_dir = export_ia3(config, head_mask, out, overwrite=overwrite, base_model=base_model,
                                 base_revision=revision, evaluation=evaluation)
            print(f"wrote {out_dir} (ia3, {len(head_mask.changed_heads())} heads changed)")
            return
        m = load_model_on(model, dtype, device, device_map)
        if format == "folded":
            from ..core.export import export_folded

            out_dir = export_folded(m, load_tokenizer(model), head_mask, out, overwrite=overwrite,
                                    evaluation=evaluation)
        else:
            from ..integrations.vllm.lora import export_lora, read_adapter_config

            out_dir = export_lora(m, head_mask, out, overwrite=overwrite, base_model=base_model,
                                  base_revision=revision, evaluation=evaluation)
            print(f"LoRA rank {read_adapter_config(out_dir)['r']}: serve with vLLM's enable_lora=True, "
                  "max_lora_rank >= it")
    print(f"wrote {out_dir} ({format}, {len(head_mask.changed_heads())} heads changed)")


def push(mask: str, repo: str, *, model: Optional[str] = None, revision: Optional[str] = None,
         private: Optional[bool] = None, create_pr: bool = False, message: Optional[str] = None,
         evaluation: Optional[list[str]] = None, peft: Optional[bool] = None,
         allow_extreme_scales: bool = False) -> None:
    """Upload a head mask to the Hugging Face Hub with a model card (and, for a Hub base model, the equivalent
    PEFT IA3 adapter) in one commit; `HeadMask.load("org/name")` and every `mask=` option then read it by repo id.

    The token is huggingface_hub's own: `hf auth login` or the HF_TOKEN variable.

    Args:
        mask: the head mask: a file, a folder holding lahis_mask.safetensors, or a Hub reference.
        repo: the Hub repo id, org/name (created if missing).
        model: the Hub id of the model the mask was made for (default: the one the mask records).
        revision: the branch to commit to (created when missing; default main).
        private: create the repo private (an existing repo keeps its visibility).
        create_pr: open a pull request instead of committing.
        message: the commit message.
        evaluation: result files the card reports with intervals (`lahis evaluate --out` folders, lm-eval results
            JSON).
        peft: include the IA3 adapter (default: when the base model is a Hub id).
        allow_extreme_scales: share a mask with negative scales or scales above 100.
    """
    from ..core.hub import push_mask
    from ..core.mask import HeadMask

    head_mask = HeadMask.load(mask).check_sane(allow_extreme_scales, f"from {mask}")
    info = push_mask(head_mask, repo, revision=revision, private=private, create_pr=create_pr,
                     commit_message=message, evaluation=evaluation or (), base_model=model, peft=peft)
    print(f"pushed {len(head_mask.changed_heads())} changed heads to {repo}: {getattr(info, 'commit_url', info)}")
