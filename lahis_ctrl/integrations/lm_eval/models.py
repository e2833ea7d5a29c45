"""lm-evaluation-harness model type `lahis_hf`: lm-eval's HFLM with a head mask applied to the model.

    lm_eval --model lahis_hf --model_args pretrained=M,mask=de.safetensors --tasks xquad_de --include_path TASKS

model_args, on top of every HFLM argument:
  * mask=REF        a HeadMask made for this model: a file (.safetensors / .json), a folder holding
                    lahis_mask.safetensors, or a Hub repo id org/name[/file][@revision] (huggingface_hub's cache,
                    offline mode and token apply; see lahis_ctrl.core.hub);
  * fold=true|false fold the mask into the output-projection weights (zero overhead) or scale with
                    forward pre-hooks; default: fold when the weights allow it (floating point, not
                    offloaded or quantized), else hooks. fold=true fails loudly where folding is impossible.
  * heads=SPEC, scale=3.0   scale a list of heads (attention-transfer experiments). SPEC is
                    `layer:head+layer:head...` (e.g. heads=3:1+5:2), or a JSON file holding
                    [[layer, head], ...] or {"heads": [[layer, head], ...]} or {"<lang>": [[layer, head], ...]}
                    or the output of `lahis heads --out` (pick the language with heads_lang=<lang>, or
                    heads_lang=general). Combined with mask= by multiplication.
  * pretrained=gemma-3-270m   the embedded default model (its cached safetensors copy) is accepted too.
  * allow_extreme=true        accept negative scales or scales above 100 (refused otherwise: a wrong file);
  * allow_refold=true         mask a checkpoint that already has a mask folded in (`lahis export`).

A mask made for another model stops the run with HeadMask.validate's message (one line under the lm_eval
CLI, a MaskMismatchError from simple_evaluate). The names are registered with lm-eval without importing
this module (see _lahis_register.py); importing it registers `lahis_hf` directly as well.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ...core.errors import LahisError, require
from ...core.fileio import read_json
from ...lahis.heads import FORMAT as HEADS_FORMAT, HeadClassification

require("lm_eval", "eval", "the lahis_hf lm-eval model type")

from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

log = logging.getLogger(__name__)

_PAIR = re.compile(r"^\s*(\d+)\s*[:.]\s*(\d+)\s*$")


def parse_heads(heads, heads_lang: str | None = None) -> list[tuple[int, int]]:
    """(layer, head) pairs from `layer:head+layer:head`, a JSON file, or a list of pairs."""
    if heads is None or heads == "":
        return []
    if isinstance(heads, (list, tuple)):
        return [_pair(x, heads) for x in heads]
    text = str(heads)
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        obj = read_json(path, "heads file")
        if isinstance(obj, dict) and (obj.get("format") == HEADS_FORMAT or "per_language" in obj):
            # `lahis heads --out` (format-tagged; untagged in files of earlier versions)
            c = HeadClassification.from_json(obj, f"heads file {path}")
            if heads_lang is None:
                raise LahisError(f"heads file {path} classifies heads for {', '.join(c.languages)}: "
                                 "choose the language-specific heads of one with heads_lang=<lang> "
                                 "(or heads_lang=general)")
            return c.general_heads() if heads_lang == "general" else c.specific(heads_lang)
        if isinstance(obj, dict) and "heads" in obj:
            obj = obj["heads"]
        elif isinstance(obj, dict):
            if heads_lang is None or heads_lang not in obj:
                raise LahisError(
                    f"heads file {path} lists heads per language ({', '.join(map(str, obj))}): "
                    "choose one with heads_lang=<lang>"
                )
            obj = obj[heads_lang]
        if not isinstance(obj, list):
            raise LahisError(f"heads file {path}: expected a list of [layer, head] pairs")
        return [_pair(x, path) for x in obj]
    pairs = []
    for part in re.split(r"[+;\s]+", text.strip()):
        m = _PAIR.match(part)
        if m is None:
            raise LahisError(
                f"cannot read heads '{heads}': write layer:head pairs joined by '+' (e.g. heads=3:1+5:2) "
                "or give a JSON file of [[layer, head], ...]"
            )
        pairs.append((int(m.group(1)), int(m.group(2))))
    return pairs


def _pair(x, source) -> tuple[int, int]:
    if isinstance(x, dict) and "layer" in x and "head" in x:  # {"layer": l, "head": h, ...} entries
        x = [x["layer"], x["head"]]
    if isinstance(x, str) and _PAIR.match(x):
        m = _PAIR.match(x)
        return int(m.group(1)), int(m.group(2))
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, int) for v in x):
        return int(x[0]), int(x[1])
    raise LahisError(f"heads from {source}: {x!r} is not a (layer, head) pair of integers")


def _bool(value, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise LahisError(f"{name}={value!r}: use true, false or auto")


def _under_lm_eval_cli() -> bool:
    """True inside the `lm_eval` console script or `python -m lm_eval` (not `lahis eval`, not a library call)."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "lm_eval.__main__" in sys.modules or getattr(main_spec, "name", None) == "lm_eval.__main__"


@register_model("lahis_hf")
class LahisHFLM(HFLM):
    """HFLM plus a HeadMask (`mask=`) and/or scaled heads (`heads=`, `scale=`), folded or hooked."""

    def __init__(self, pretrained, mask=None, fold=None, heads=None, scale: float = 3.0,
                 heads_lang: str | None = None, allow_extreme=False, allow_refold=False, **kwargs: Any) -> None:
        try:
            self._lahis_setup(pretrained, mask, fold, heads, scale, heads_lang, kwargs,
                              _bool(allow_extreme, "allow_extreme") or False, _bool(allow_refold, "allow_refold") or False)
        except LahisError as exc:
            if _under_lm_eval_cli():  # one line and exit status 2, as `lahis` ends a refused run
                from ...core.errors import error_line

                print(f"lahis_hf: error: {error_line(exc)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            raise

    def _lahis_setup(self, pretrained, mask, fold, heads, scale, heads_lang, kwargs, allow_extreme: bool,
                     allow_refold: bool) -> None:
        from ...core.loading import EMBEDDED_MODELS, check_device, resolve
        from ...core.mask import HeadMask, check_sane_scale

        fold = _bool(fold, "fold")
        pairs = parse_heads(heads, heads_lang)
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise LahisError(f"scale={scale!r} is not a number") from None
        if scale != scale or scale in (float("inf"), float("-inf")):
            raise LahisError(f"scale={scale} is not a finite number")
        if pairs:  # the same range as a mask file's scales, checked before the model loads
            check_sane_scale(scale, allow_extreme, f"heads={heads} with scale=")
        if kwargs.get("device") not in (None, "", "auto"):  # lm-eval would fall back or fail later, deep inside
            check_device(kwargs["device"], "device=")
        # read the mask file before the (slow) model load, so a wrong path or an absurd scale fails at once
        loaded = HeadMask.load(mask) if isinstance(mask, (str, os.PathLike)) else mask
        if loaded is not None:
            loaded.check_sane(allow_extreme, f"mask={mask}")
        if isinstance(pretrained, str) and pretrained in EMBEDDED_MODELS:
            pretrained = resolve(pretrained)
        super().__init__(pretrained=pretrained, **kwargs)

        self._mask_stack = ExitStack()
        self.head_mask = None
        self.mask_mode = "none"
        self._mask_source = str(mask) if isinstance(mask, (str, os.PathLike)) else None
        model = self.model  # unwrapped from accelerate
        combined = None
        if loaded is not None or pairs:
            from ...core.export import check_not_folded

            check_not_folded(model.config, allow_refold, f"pretrained={pretrained}")
        if loaded is not None:
            from ...core.mask import as_mask

            combined = as_mask(loaded, model)  # HeadMask.validate: shape, model_type, head_dim
        if pairs:
            scaled = HeadMask.from_heads(model, pairs, scale=scale)
            combined = scaled if combined is None else combined * scaled
        if combined is None:
            return
        self.head_mask = combined
        self._apply(model, combined, fold)

    def _apply(self, model, mask, fold: bool | None) -> None:
        from ...core.control import apply_head_mask, fold_head_mask

        if mask.is_identity:
            self.mask_mode = "identity"  # nothing to change: exactly the unmasked model
            print(f"lahis_hf: mask {self._mask_source or mask} changes no head: the model runs unmasked",
                  file=sys.stderr, flush=True)
            return
        if fold is not False:
            try:
                self._mask_stack.enter_context(fold_head_mask(model, mask))
                self.mask_mode = "fold"
            except LahisError as exc:
                if fold:  # asked for explicitly
                    raise
                log.info("lahis_hf: cannot fold the mask (%s); scaling heads with hooks instead", exc)
        if self.mask_mode != "fold":
            self._mask_stack.enter_context(apply_head_mask(model, mask))
            self.mask_mode = "hooks"
        # on the console whatever the logging setup (lm_eval's own handlers drop this package's INFO records): which
        # mask a run measured is what its numbers mean
        print(f"lahis_hf: mask {self._mask_source or mask} applied by {self.mask_mode} "
              f"({len(mask.changed_heads())} heads changed)", file=sys.stderr, flush=True)

    def remove_mask(self) -> None:
        """Undo the fold / remove the hooks (matters when `pretrained` was a model object you keep using)."""
        self._mask_stack.close()
        self.mask_mode = "none"

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        mask = self.head_mask
        info["lahis_mask"] = None if mask is None else {
            "source": self._mask_source,
            "mode": self.mask_mode,
            "changed_heads": [list(h) for h in mask.changed_heads()],
            "sha256": mask.digest(),  # the scales themselves: which mask these numbers measured
            **{k: v for k, v in mask.facts().items() if k in ("model_name", "language", "method")},
        }
        return info
