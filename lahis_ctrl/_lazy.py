"""Package plumbing that keeps `import lahis_ctrl` cheap: lazy public names and aliases of old module paths.

* `lazy_exports`: a package's public names are imported from their modules on first access, so importing
  the package imports neither torch nor vLLM.
* `install_module_aliases`: old import paths (`lahis_ctrl.scoring`, `lahis_ctrl.vllm.plugin`, ...) resolve
  to the SAME module object at its new place (`lahis_ctrl.lahis.scoring`, ...), imported only when asked
  for. One object, not a copy: a monkeypatch or vLLM's per-process plugin state is shared by both names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, str], extra: list[str] = ()) \
        -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) that import `package.<exports[name]>` on first access of `name` and cache it."""
    public = sorted(exports) + list(extra)

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return public

    return __getattr__, __dir__


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system has just set the alias's spec on the shared module: give it its own back
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Answers only for the old names in `aliases` and, for an aliased package, its submodules."""

    def __init__(self, aliases: dict[str, str]):
        self.aliases = aliases

    def _target(self, fullname: str) -> str | None:
        if fullname in self.aliases:
            return self.aliases[fullname]
        for old, new in self.aliases.items():  # lahis_ctrl.vllm.plugin -> lahis_ctrl.integrations.vllm.plugin
            if fullname.startswith(old + "."):
                return new + fullname[len(old):]
        return None

    def find_spec(self, fullname, path=None, target=None):
        new = self._target(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install_module_aliases(aliases: dict[str, str]) -> None:
    """Make each old dotted module name import as the module at its new name (idempotent)."""
    for finder in sys.meta_path:
        if isinstance(finder, _AliasFinder):
            finder.aliases.update(aliases)
            return
    sys.meta_path.insert(0, _AliasFinder(dict(aliases)))
