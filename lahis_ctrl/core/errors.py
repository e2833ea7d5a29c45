"""Errors meant for users: the CLI prints them as one line, without a traceback."""


class LahisError(Exception):
    """Bad input or a missing dependency: the message says what was wrong and how to fix it."""


class MaskMismatchError(LahisError, ValueError):
    """A mask or score matrix that belongs to another model (shape, model_type or head_dim differ)."""


class UnknownArchitectureError(LahisError, ValueError):
    """The model's attention output projections could not be located; pass an ArchSpec override."""


class MissingDependencyError(LahisError, ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise a MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not installed: "
            f"pip install 'lahis-ctrl[{extra}]'  ({exc})"
        ) from exc
