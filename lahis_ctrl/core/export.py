"""Exports of a head mask that other runtimes load without lahis_ctrl: a checkpoint with the mask folded into its
weights (`export_folded`), and a PEFT IA3 adapter (`export_ia3`). Each writes a model card (core.card).

A head mask is exactly a PEFT IA3 adapter on the attention output projections with those modules also listed as
`feedforward_modules`: IA3 then multiplies the module's INPUT by its vector, and the vector is the mask repeated over
each head's head_dim features (core.head_layout.feature_scales). In float32 PEFT computes `x * vector`, the same
product the hooks compute, so the outputs are equal bit for bit. No weights are needed to write it: the module names
come from the model's config (its module tree built on the meta device).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .. import __version__
from .control import fold_head_mask
from .errors import LahisError
from .fileio import write_json
from .architecture import describe
from .mask import as_mask

NOTE_FILE = "lahis_mask.json"
# the config key an exported checkpoint records its folded mask under (it travels with config.json to every
# runtime: transformers, vLLM), so a second mask is not folded onto the first by accident
CONFIG_KEY = "lahis_folded_mask"


def folded_mask_of(config) -> dict | None:
    """The record of the mask already folded into a checkpoint (from its config), or None."""
    from .architecture import text_config

    for c in (config, text_config(config)):
        record = getattr(c, CONFIG_KEY, None)
        if record:
            return record
    return None


def check_not_folded(config, allow_refold: bool = False, what: str = "this model") -> None:
    """Refuse to mask a checkpoint that already has a mask folded in (the scales would multiply) unless asked."""
    record = folded_mask_of(config)
    if record is None or allow_refold:
        return
    raise LahisError(
        f"{what} already has a head mask folded into its weights ({record.get('method', 'mask')} for "
        f"'{record.get('language')}', heads {record.get('changed_heads')}): applying another mask multiplies the "
        "scales; use the unmasked base model, or pass allow_refold (--allow_refold true) to do it anyway")


def check_out_dir(out_dir: Path, overwrite: bool, sources: tuple = ()) -> None:
    """An export may replace a non-empty folder only with `overwrite`, and never a folder it reads from."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LahisError(f"{out_dir} is a file; --out names the folder to write")
    for src in sources:
        if not src or not Path(src).exists():
            continue
        a, b = out_dir.resolve(), Path(src).resolve()
        if a == b or b in a.parents or a in b.parents:
            raise LahisError(f"--out {out_dir} overlaps {src}, which this export reads: write to another folder "
                             "(replacing it would destroy the source)")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise LahisError(f"{out_dir} exists and is not empty; pass --overwrite true or choose another --out")


def export_folded(model, tokenizer, mask, out_dir: str | os.PathLike, overwrite: bool = False,
                  evaluation=()) -> Path:
    """Save `model` with `mask` folded into the output projections to `out_dir` (safetensors + config +
    tokenizer + lahis_mask.json + README.md, a model card). The in-memory model is left unchanged.
    The config records the folded mask (`lahis_folded_mask`), so the checkpoint is not masked twice by mistake.
    lahis_mask.json is the mask itself (HeadMask.load reads it) with a note; it is JSON, not safetensors, because
    vLLM reads every *.safetensors file of a checkpoint folder as weights. `evaluation`: result files the card
    reports (see core.card.evaluation_section)."""
    from .card import mask_card
    out_dir = Path(out_dir)
    source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    check_out_dir(out_dir, overwrite, (source,))
    spec = describe(model)
    mask = as_mask(mask, spec)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "export"
        previous = getattr(model.config, CONFIG_KEY, None)
        setattr(model.config, CONFIG_KEY, {**mask.facts(), "changed_heads": [list(h) for h in mask.changed_heads()],
                                           "values": mask.values.tolist()})
        try:
            with fold_head_mask(model, mask):  # undone on exit: the caller's model is not patched
                model.save_pretrained(staged, safe_serialization=True)
        finally:
            if previous is None:
                delattr(model.config, CONFIG_KEY)
            else:
                setattr(model.config, CONFIG_KEY, previous)
        if tokenizer is not None:
            tokenizer.save_pretrained(staged)
        from .fileio import read_json

        note = read_json(mask.save(staged / NOTE_FILE), "head mask file")
        write_json(staged / NOTE_FILE, {
            **note,
            "note": "this head mask is folded into the attention output-projection weights; "
                    "load this directory with AutoModelForCausalLM.from_pretrained and do NOT apply the mask again",
            "lahis_ctrl_version": __version__,
            "base_model": recorded_base(spec.name_or_path),
            "changed_heads": [list(h) for h in mask.changed_heads()],
        })
        (staged / "README.md").write_text(mask_card(mask, "folded", base_model=recorded_base(spec.name_or_path),
                                                    evaluation=evaluation), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------- PEFT IA3
IA3_CONFIG = "adapter_config.json"
IA3_WEIGHTS = "adapter_model.safetensors"


def recorded_base(name_or_path: str) -> str:
    """What an adapter or card records as its base model, so `AutoPeftModelForCausalLM.from_pretrained(adapter)`
    finds it: a Hub id as it is, a local folder (or the embedded model's cached copy) as an absolute path."""
    from .loading import EMBEDDED_MODELS, embedded_model_dir

    name = str(name_or_path or "")
    if name in EMBEDDED_MODELS:
        return str(embedded_model_dir(name).resolve())
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def meta_spec(config, name: str = "", arch=None):
    """The ModelSpec (with o_proj module names and layout) of a model built from its config on the meta device:
    no weights are read or allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # a model_type transformers cannot build: say which, and how to go on
        raise LahisError(f"cannot build the transformers model of model_type '{getattr(config, 'model_type', '?')}' "
                         f"from its config ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    spec = describe(skeleton, arch)
    if name:
        from dataclasses import replace

        spec = replace(spec, name_or_path=name)
    return spec


def _module_spec(model, arch=None):
    """A ModelSpec with module names from a loaded model, a transformers config, or a ModelSpec that has them."""
    from .architecture import ModelSpec

    if isinstance(model, ModelSpec):
        if not model.o_proj_names:
            raise LahisError("an IA3 adapter needs the output projections' module names: pass the model or its config")
        return model
    if hasattr(model, "named_modules"):
        return describe(model, arch)
    if hasattr(model, "to_json_string"):  # a transformers PretrainedConfig
        return meta_spec(model, str(getattr(model, "_name_or_path", "") or ""), arch)
    raise TypeError(f"expected a transformers model, its config or a ModelSpec, got {type(model).__name__}")


def ia3_adapter(model, mask, base_model: str | None = None, base_revision: str | None = None, arch=None) \
        -> tuple[dict, dict]:
    """(adapter_config dict, tensors) of the PEFT IA3 adapter equal to `mask` on `model` (a model, its config, or
    a ModelSpec with module names). Only layers with a changed head get a vector (1 x in_features, float32)."""
    import torch

    from . import head_layout

    spec = _module_spec(model, arch)
    mask = as_mask(mask, spec)
    if mask.is_identity:
        raise LahisError("the mask changes no head (all ones): there is nothing to export as an adapter")
    targets, tensors = [], {}
    for layer in range(spec.num_layers):
        row = mask.values[layer]
        if bool((row == 1).all()):
            continue
        name = spec.o_proj_names[layer]
        # [num_heads] -> [1, num_heads * head_dim]: PEFT's feed-forward IA3 vector, one scale per input feature
        vector = head_layout.feature_scales(row.float(), spec.head_dim).reshape(1, -1)
        tensors[f"base_model.model.{name}.ia3_l"] = vector.to(torch.float32).contiguous()
        targets.append(name)
    base = base_model or recorded_base(spec.name_or_path)
    config = {
        "peft_type": "IA3",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "revision": base_revision,
        # full module names: exactly the changed layers' output projections, and they are feed-forward modules so
        # IA3 scales their input (the concatenated head outputs) rather than their output
        "target_modules": targets,
        "feedforward_modules": targets,
        "fan_in_fan_out": spec.layout == "conv1d",  # GPT-2 Conv1D stores weights [in, out]
        "init_ia3_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    return config, tensors


def ia3_adapter_files(mask, base_model: str, base_revision: str | None = None, model=None, arch=None) \
        -> dict[str, bytes]:
    """{file name: bytes} of the IA3 adapter (adapter_config.json, adapter_model.safetensors). Without `model`, the
    module names come from `base_model`'s config (a Hub id resolved through huggingface_hub, or a folder)."""
    import json

    from safetensors.torch import save

    if model is None:
        from .loading import load_config

        model = load_config(base_model)
    config, tensors = ia3_adapter(model, mask, base_model, base_revision, arch)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return {IA3_CONFIG: text.encode("utf-8"), IA3_WEIGHTS: save(tensors, metadata={"format": "pt"})}


def export_ia3(model, mask, out_dir: str | os.PathLike, overwrite: bool = False, base_model: str | None = None,
               base_revision: str | None = None, arch=None, evaluation=()) -> Path:
    """Write `mask` as a PEFT IA3 adapter to `out_dir`, atomically: adapter_config.json, adapter_model.safetensors,
    lahis_mask.safetensors (the mask itself: the folder is also a mask reference) and README.md (the card).

    `model`: the unmasked base model, its transformers config, or a ModelSpec with module names (no weights are
    needed). `base_model` is what the adapter records for `AutoPeftModelForCausalLM.from_pretrained(out_dir)`:
    default the model's Hub id, else its folder as an absolute path. Load it with
    `peft.PeftModel.from_pretrained(model, out_dir)`; in float32 it equals the hooked model bit for bit."""
    from .card import mask_card

    spec = _module_spec(model, arch)
    mask = as_mask(mask, spec)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite, (spec.name_or_path,))
    base = base_model or recorded_base(spec.name_or_path)
    files = ia3_adapter_files(mask, base, base_revision, model=spec, arch=arch)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "adapter"
        staged.mkdir()
        for name, data in files.items():
            (staged / name).write_bytes(data)
        mask.save(staged / "lahis_mask.safetensors")
        (staged / "README.md").write_text(mask_card(mask, "ia3", base_model=base, base_revision=base_revision,
                                                    evaluation=evaluation, files=sorted(files)), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return out_dir
