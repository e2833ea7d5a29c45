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


def export_folded(model, tokenizer, mask, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save `model` with `mask` folded into the output projections to `out_dir` (safetensors + config +
    tokenizer + lahis_mask.json, a note of the mask applied). The in-memory model is left unchanged."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise LahisError(f"{out_dir} exists and is not empty; pass --overwrite true or choose another --out")
    spec = describe(model)
    mask = as_mask(mask, spec)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "export"
        with fold_head_mask(model, mask):  # undone on exit: the caller's model is not patched
            model.save_pretrained(staged, safe_serialization=True)
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
