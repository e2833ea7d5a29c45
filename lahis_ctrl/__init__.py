"""lahis-ctrl: find the attention heads a multilingual LLM uses for each language, learn a soft mask
over them, and apply it in transformers, lm-evaluation-harness and vLLM.

Layers (a lower one never imports a higher one; see docs/architecture.md):

    core/          model facts, head layout, HeadMask, hooks/fold/export, the LM-likelihood core, artifacts
    lahis/         LAHIS scores, specific/general heads, the soft head mask
    corpora/       texts, XQuAD, prompts, LCB prompts, shipped data
    eval/          QA evaluation, perplexity and transfer probes, language ID, audits, LCB metrics, statistics
    integrations/  lm_eval (lahis_hf, tasks) and vllm (plugin, live masks, LoRA)
    experiments/   `lahis reproduce` and `lahis demo`
    cli/           the `lahis` command

The public names below are imported lazily, so `import lahis_ctrl` does not import torch.
"""

from __future__ import annotations

from ._lazy import install_module_aliases, lazy_exports

__version__ = "0.1.0"

# The public surface: the core objects and the main entry points of each layer.
_EXPORTS = {
    # core: model facts, masks, control, loading, errors
    "ArchSpec": "core.architecture", "ModelSpec": "core.architecture", "describe": "core.architecture",
    "register_architecture": "core.architecture",
    "HeadMask": "core.mask",
    "apply_head_mask": "core.control", "fold_head_mask": "core.control", "scale_heads": "core.control",
    "export_folded": "core.export",
    "load_model": "core.loading", "load_tokenizer": "core.loading", "DEFAULT_MODEL": "core.loading",
    "LahisError": "core.errors", "MaskMismatchError": "core.errors", "UnknownArchitectureError": "core.errors",
    "MissingDependencyError": "core.errors",
    # the LAHIS method
    "HeadScores": "lahis.scores", "score_heads": "lahis.scoring", "score_languages": "lahis.scoring",
    "HeadClassification": "lahis.heads", "classify_heads": "lahis.heads", "train_mask": "lahis.softmask",
    # evaluation
    "evaluate_masks": "eval.evaluate", "ppl_cross": "eval.ppl", "alice_probe": "eval.transfer",
    "run_audit": "eval.audit", "lcb_metrics": "eval.lcb",
    # experiments
    "reproduce": "experiments.reproduce",
    # vLLM: live masks on a running vllm.LLM, masks as PEFT LoRA adapters (per-request masks)
    "set_head_mask": "integrations.vllm.live", "export_lora": "integrations.vllm.lora",
}

# Names that were public before the layered layout: still resolved (lazily), no longer advertised.
_COMPAT = {
    "get_identifier": "eval.langid", "LanguageIdentifier": "eval.langid", "LangPrediction": "eval.langid",
    "normalize_lang": "eval.langid", "audit_texts": "eval.audit",
    "load_texts": "corpora.texts", "EMBEDDED_LANGUAGES": "corpora.texts",
    "top_specific_heads": "lahis.heads", "perplexity": "eval.ppl",
    "LahisHFLM": "integrations.lm_eval.models", "tasks_dir": "integrations.lm_eval.runner",
    "load_xquad": "corpora.xquad", "XQUAD_LANGS": "corpora.xquad",
}

__all__ = sorted(_EXPORTS) + ["__version__"]
__getattr__, _dir = lazy_exports(__name__, globals(), {**_EXPORTS, **_COMPAT}, ["__version__"])


def __dir__():
    return __all__


# Old module paths (before the layered layout) import the module at its new place. `lahis_ctrl.train_mask`
# and `lahis_ctrl.reproduce` are not among them: those names are the functions.
install_module_aliases({f"{__name__}.{old}": f"{__name__}.{new}" for old, new in {
    "errors": "core.errors", "fileio": "core.fileio", "introspect": "core.architecture", "mask": "core.mask",
    "control": "core.control", "generation": "core.lm", "loading": "core.loading", "export": "core.export",
    "scoring": "lahis.scoring", "heads": "lahis.heads",
    "xquad": "corpora.xquad", "prompts": "corpora.prompts",
    "qa_metrics": "eval.qa_metrics", "evaluate": "eval.evaluate", "ppl": "eval.ppl", "transfer": "eval.transfer",
    "langid": "eval.langid", "audit": "eval.audit", "plots": "eval.plots", "lcb": "eval.lcb",
    "lm_eval_models": "integrations.lm_eval.models", "lm_eval_tasks": "integrations.lm_eval.task_utils",
    "lm_eval_cli": "integrations.lm_eval.runner", "vllm": "integrations.vllm", "demo": "experiments.demo",
    "commands": "cli.model_cmds",
}.items()})


# `import lahis_ctrl` registers the lm-eval model types lahis_hf / lahis_vllm (a stdlib-only import hook that acts
# when lm_eval's registry is imported; no torch or lm_eval import here). See _lahis_register.py.
try:
    import _lahis_register

    _lahis_register.install(force=True)
except ImportError:  # a source tree without the top-level module: lm-eval registration is then unavailable
    pass
