"""Lazy public names for packages whose import must stay cheap (no torch, no vLLM at import time)."""

from __future__ import annotations

import importlib
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
