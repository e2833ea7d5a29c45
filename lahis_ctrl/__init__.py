"""lahis-ctrl: find the attention heads a multilingual LLM uses for each language, learn a soft mask
over them, and apply it in transformers, lm-evaluation-harness and vLLM.

The public names below are imported lazily, so `import lahis_ctrl` does not import torch.
"""

from __future__ import annotations

from ._lazy import lazy_exports

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
    "normalize_lang": "langid", "run_audit": "audit", "audit_texts": "audit",
    # LAHIS scores, corpora, head classification, perplexity probes
    "HeadScores": "scoring", "score_heads": "scoring", "score_languages": "scoring",
    "load_texts": "corpora", "EMBEDDED_LANGUAGES": "corpora",
    "classify_heads": "heads", "top_specific_heads": "heads", "ppl_cross": "ppl", "perplexity": "ppl",
    # lm-evaluation-harness: the lahis_hf model type and the task folder
    "LahisHFLM": "lm_eval_models", "tasks_dir": "lm_eval_cli",
    # soft head masks on QA (XQuAD) and their evaluation
    "train_mask": "train_mask", "evaluate_masks": "evaluate", "load_xquad": "xquad", "XQUAD_LANGS": "xquad",
    # the paper's experiments end to end (`lahis reproduce`) and the attention-transfer probe
    "reproduce": "reproduce", "alice_probe": "transfer",
    # errors
    "LahisError": "errors", "MaskMismatchError": "errors", "UnknownArchitectureError": "errors",
    "MissingDependencyError": "errors",
    # vLLM: live masks on a running vllm.LLM, masks as PEFT LoRA adapters (per-request masks)
    "set_head_mask": "vllm.live", "export_lora": "vllm.lora",
}

__all__ = sorted(_EXPORTS) + ["__version__"]
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, ["__version__"])


# `import lahis_ctrl` registers the lm-eval model types lahis_hf / lahis_vllm (a stdlib-only import hook that acts
# when lm_eval's registry is imported; no torch or lm_eval import here). See _lahis_register.py.
try:
    import _lahis_register

    _lahis_register.install(force=True)
except ImportError:  # a source tree without the top-level module: lm-eval registration is then unavailable
    pass
