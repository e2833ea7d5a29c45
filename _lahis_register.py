"""Register lahis-ctrl's lm-eval model types (`lahis_hf`, `lahis_vllm`) without anyone importing lahis_ctrl.

lm-evaluation-harness has no plugin discovery: a model name resolves only once something registered it.
lahis-ctrl installs `lahis_ctrl_lm_eval.pth` into site-packages; the interpreter runs its one line at
start-up, which calls `install()` below. That adds a tiny finder to `sys.meta_path` and nothing else
(standard library only: no torch, no lm_eval import, a few microseconds). When - and only when - some
process imports `lm_eval.api.registry`, the finder lets the real import run and then registers the two
names as lazy "module:Class" placeholders, so even then nothing heavy is imported until lm-eval
actually instantiates `lahis_hf` or `lahis_vllm`.

Opt out: set LAHIS_NO_LM_EVAL_HOOK=1 (any non-empty value but 0/false/no) and the .pth does nothing.
`import lahis_ctrl` registers the names regardless (an explicit import is an explicit opt-in).
"""

from __future__ import annotations

import os
import sys

OPT_OUT_ENV = "LAHIS_NO_LM_EVAL_HOOK"
REGISTRY_MODULE = "lm_eval.api.registry"
MODELS = {
    "lahis_hf": "lahis_ctrl.integrations.lm_eval.models:LahisHFLM",
    "lahis_vllm": "lahis_ctrl.integrations.vllm.lm_eval_model:LahisVLLM",
}


def opted_out() -> bool:
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def register(registry_module) -> None:
    """Add the lazy placeholders to lm-eval's model registry (idempotent)."""
    # lm_eval.api.registry.get_model() imports lm_eval.models (which registers the built-in models)
    # only while the registry is EMPTY; registering ours first would hide `hf`, `vllm`, ... So load that
    # mapping first: it is a dict of strings, no model code.
    try:
        import lm_eval.models  # noqa: F401
    except Exception:  # pragma: no cover - a broken lm_eval install must not break ours
        pass
    registry = registry_module.model_registry
    for name, target in MODELS.items():
        if name not in registry:
            registry.register(name, target=target)


class _Loader:
    """Wraps the real loader of lm_eval.api.registry: run it, then register (every other call delegates)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            register(module)
        except Exception as exc:  # never turn an lm_eval import into a failure of ours
            print(f"lahis-ctrl: could not register lahis_hf/lahis_vllm with lm-eval: {exc}", file=sys.stderr)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    """A sys.meta_path entry that only ever answers for lm_eval.api.registry."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != REGISTRY_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _Finder):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install(force: bool = False) -> bool:
    """Arrange for registration when lm-eval's registry is imported; register now if it already is.

    force=False (the .pth) honours the opt-out; force=True (`import lahis_ctrl`) does not.
    Returns whether a hook or a registration happened.
    """
    if not force and opted_out():
        return False
    module = sys.modules.get(REGISTRY_MODULE)
    if module is not None and hasattr(module, "model_registry"):
        register(module)
        return True
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    return True
