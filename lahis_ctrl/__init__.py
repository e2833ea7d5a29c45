"""lahis-ctrl: find the attention heads a multilingual LLM uses for each language, learn a soft mask
over them, and apply it in transformers, lm-evaluation-harness and vLLM.

The public names below are imported lazily, so `import lahis_ctrl` does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # model internals
    "ArchSpec": "introspect", "ModelSpec": "introspect", "describe": "introspect",
    "register_architecture": "introspect",
    # masks and the transformers controller
    "HeadMask": "mask",
    "apply_head_mask": "control", "fold_head_mask": "control", "scale_heads": "control",
    "export_folded": "export",
    # loading
    "load_model": "loading", "load_tokenizer": "loading", "DEFAULT_MODEL": "loading",
    # language ID (off-target audits)
    "get_identifier": "langid", "LanguageIdentifier": "langid", "LangPrediction": "langid",
    "normalize_lang": "langid",
    # soft head masks on QA (XQuAD) and their evaluation
    "train_mask": "train_mask", "evaluate_masks": "evaluate", "load_xquad": "xquad", "XQUAD_LANGS": "xquad",
    # errors
    "LahisError": "errors", "MaskMismatchError": "errors", "UnknownArchitectureError": "errors",
    "MissingDependencyError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lahis_ctrl' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
