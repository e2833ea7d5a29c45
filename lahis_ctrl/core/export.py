"""Write a checkpoint with a head mask folded into its weights: plain transformers loads it, no lahis_ctrl needed."""

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


def export_folded(model, tokenizer, mask, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save `model` with `mask` folded into the output projections to `out_dir` (safetensors + config +
    tokenizer + lahis_mask.json, a note of the mask applied). The in-memory model is left unchanged.
    The config records the folded mask (`lahis_folded_mask`), so the checkpoint is not masked twice by mistake."""
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
        mask.save(staged / "lahis_mask.safetensors")
        write_json(staged / NOTE_FILE, {
            "note": "the head mask below is folded into the attention output-projection weights; "
                    "load this directory with AutoModelForCausalLM.from_pretrained and do NOT apply the mask again",
            "lahis_ctrl_version": __version__,
            "base_model": spec.name_or_path,
            "mask": {**mask.facts(), "changed_heads": mask.changed_heads(), "extra": mask.extra},
        })
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return out_dir
