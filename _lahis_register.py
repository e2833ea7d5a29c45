"""Register lahis-ctrl with lm-eval (the `lahis_hf` / `lahis_vllm` model types and the task folder) without
anyone importing lahis_ctrl.

lm-evaluation-harness has no plugin discovery: a model name resolves only once something registered it, and
tasks are found only in its own folder and in --include_path. lahis-ctrl installs `lahis_ctrl_lm_eval.pth`
into site-packages; the interpreter runs its one line at start-up, which calls `install()` below. That adds
a tiny finder to `sys.meta_path` and nothing else (standard library only: no torch, no lm_eval import, a few
microseconds). When - and only when - some process imports one of lm-eval's modules below, the finder lets
the real import run and then:

* `lm_eval.api.registry`: registers the two model names as lazy "module:Class" placeholders (nothing heavy is
  imported until lm-eval instantiates `lahis_hf` or `lahis_vllm`);
* `lm_eval.tasks.manager`: every TaskManager that includes lm-eval's built-in tasks also indexes lahis-ctrl's
  task folder, after the built-ins and before any --include_path. So `lm_eval --model lahis_hf --tasks
  xquad_de` runs this project's xquad_de (lm-eval's built-in one imports a module transformers 5 removed),
  and a user's own --include_path still overrides both.

* `lm_eval._cli.harness`: under the `lm_eval` command (not `lahis`, not a library call), an error this package
  raises (a LahisError: a mask of another model, an LCB setting out of range, missing data) is printed as one
  line, `lm_eval: error: ...`, and the command exits with status 2, as `lahis` does; everything else lm-eval
  raises is left as it is.

Opt out: set LAHIS_NO_LM_EVAL_HOOK=1 (any non-empty value but 0/false/no) and the .pth does nothing.
`import lahis_ctrl` installs the hook regardless (an explicit import is an explicit opt-in).
"""

from __future__ import annotations

import os
import sys

OPT_OUT_ENV = "LAHIS_NO_LM_EVAL_HOOK"
REGISTRY_MODULE = "lm_eval.api.registry"
TASKS_MODULE = "lm_eval.tasks.manager"
CLI_MODULE = "lm_eval._cli.harness"
_PATCHED = "__lahis_ctrl_tasks__"
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


_tasks_dir = None  # found once per process (the log filter asks for every record lm-eval's task index logs)


def tasks_dir():
    """lahis-ctrl's lm-eval task folder, found without importing lahis_ctrl (None when it is not installed)."""
    global _tasks_dir
    if _tasks_dir is None:
        _tasks_dir = _find_tasks_dir()
    return _tasks_dir


def _find_tasks_dir():
    import importlib.util

    try:
        spec = importlib.util.find_spec("lahis_ctrl")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = os.path.join(location, "integrations", "lm_eval", "tasks")
        if os.path.isdir(folder):
            return folder
    return None


def include_tasks(manager_module) -> None:
    """Make every TaskManager that indexes lm-eval's built-in tasks index lahis-ctrl's task folder too (idempotent)."""
    cls = manager_module.TaskManager
    original = cls.__init__
    if getattr(original, _PATCHED, False):
        return

    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        ours = tasks_dir()
        if include_defaults and ours is not None:
            paths = list(include_path) if isinstance(include_path, (list, tuple)) else \
                ([] if include_path is None else [include_path])
            if not any(os.path.realpath(str(p)) == os.path.realpath(ours) for p in paths):
                include_path = [ours, *paths]  # after the built-ins (ours win), before the user's (theirs win)
        original(self, verbosity=verbosity, include_path=include_path, include_defaults=include_defaults,
                 metadata=metadata)

    __init__.__wrapped__ = original
    setattr(__init__, _PATCHED, True)
    cls.__init__ = __init__
    import logging

    logging.getLogger("lm_eval.tasks._index").addFilter(_quiet_own_overrides)


def _quiet_own_overrides(record) -> bool:
    """lm-eval warns for every task of an include path that replaces a built-in one; for this package's own
    folder that replacement is the point (its xquad_<lang> tasks replace built-ins broken under transformers 5)."""
    message = record.getMessage()
    if "overrides existing task" not in message:
        return True
    ours = tasks_dir()
    return not (ours and ours in message)


def under_lm_eval_cli() -> bool:
    """True inside the `lm_eval` console script or `python -m lm_eval` (not `lahis`, not a library call)."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "lm_eval.__main__" in sys.modules or getattr(main_spec, "name", None) == "lm_eval.__main__"


def project_error_line(exc: BaseException):
    """The one line for an error this package raised (a LahisError), or None for anyone else's."""
    errors = sys.modules.get("lahis_ctrl.core.errors")
    if errors is None or not isinstance(exc, errors.LahisError):
        return None
    return errors.error_line(exc)


def guard_cli(harness_module) -> None:
    """Under the `lm_eval` command, this package's errors end the run as one line and exit status 2 (idempotent)."""
    cls = harness_module.HarnessCLI
    original = cls.execute
    if getattr(original, _PATCHED, False):
        return

    def execute(self, args):
        try:
            return original(self, args)
        except Exception as exc:
            line = project_error_line(exc)
            if line is None or not under_lm_eval_cli():
                raise
            print(f"lm_eval: error: {line}", file=sys.stderr)
            raise SystemExit(2) from None

    execute.__wrapped__ = original
    setattr(execute, _PATCHED, True)
    cls.execute = execute


_ACTIONS = {REGISTRY_MODULE: register, TASKS_MODULE: include_tasks, CLI_MODULE: guard_cli}
_MARKERS = {REGISTRY_MODULE: "model_registry", TASKS_MODULE: "TaskManager", CLI_MODULE: "HarnessCLI"}


class _Loader:
    """Wraps the real loader of one of lm-eval's modules: run it, then act (every other call delegates)."""

    def __init__(self, loader, action):
        self._loader, self._action = loader, action

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            self._action(module)
        except Exception as exc:  # never turn an lm_eval import into a failure of ours
            print(f"lahis-ctrl: could not register with lm-eval ({module.__name__}): {exc}", file=sys.stderr)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    """A sys.meta_path entry that only ever answers for the lm-eval modules in _ACTIONS."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _ACTIONS:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _Finder):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, _ACTIONS[fullname])
                return spec
        return None


def install(force: bool = False) -> bool:
    """Arrange for registration when lm-eval's registry and task manager are imported (now, if they already are).

    force=False (the .pth) honours the opt-out; force=True (`import lahis_ctrl`) does not.
    Returns whether a hook or a registration happened.
    """
    if not force and opted_out():
        return False
    pending = False
    for name, action in _ACTIONS.items():
        module = sys.modules.get(name)
        if module is not None and hasattr(module, _MARKERS[name]):
            action(module)  # already imported: act now
        else:
            pending = True
    if pending and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    return True
