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


def _one_line(text) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _safetensors_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "SafetensorError" and type(exc).__module__.startswith("safetensors")


def _dist_error(exc: BaseException) -> bool:
    """torch.distributed's own errors (DistError and its subclasses: a store or network failure, a timeout)."""
    return any(c.__name__ == "DistError" and c.__module__.startswith("torch") for c in type(exc).__mro__)


def is_user_error(exc: BaseException) -> bool:
    """Errors a user can act on, shown as one line at every boundary (the `lahis` command, lahis_hf and this
    package's tasks under `lm_eval`, the vLLM plugin): the project's refusals, files and disks, encodings,
    safetensors' and torch.distributed's errors."""
    return isinstance(exc, (LahisError, OSError, UnicodeError)) or _safetensors_error(exc) or _dist_error(exc)


def error_line(exc: BaseException) -> str:
    """What went wrong, in one line, naming the user's paths: the text every error boundary prints."""
    import errno
    import os
    import re

    if isinstance(exc, LahisError):
        return _one_line(exc)
    if _safetensors_error(exc):
        code = re.search(r"code: (\d+)", str(exc))
        if code and int(code.group(1)) == errno.ENOSPC:
            return "no space left on the device while writing a safetensors file: free some space and rerun " \
                   "(outputs are replaced only once complete, so nothing was replaced)"
        return f"safetensors: {_one_line(exc)}"
    if _dist_error(exc):
        return (f"torch.distributed: {_one_line(exc)} (a rank stopped, could not be reached or timed out; "
                "see the other ranks' output)")
    if isinstance(exc, OSError):
        target = exc.filename or ""
        at = f" {target}" if target else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
            return f"{what}{' while writing' + at if target else ''}: free some space (nothing was replaced)"
        if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return f"cannot write or read{at}: {exc.strerror} (a read-only folder?); choose another --out"
        if isinstance(exc, NotADirectoryError) or exc.errno == errno.ENOTDIR:
            return f"{target or 'a path'}: a file is in the way where a folder is expected"
        if isinstance(exc, IsADirectoryError):
            return f"{target or 'a path'} is a folder where a file is expected"
        if isinstance(exc, FileNotFoundError):
            if target and os.path.lexists(target):  # the path is there: something else is missing (a parent)
                return f"{target}: {exc.strerror}"
            return f"not found: {target}" if target else f"not found: {_one_line(exc)}"
        return (f"{exc.strerror or _one_line(exc)}: {target}" if target else (exc.strerror or _one_line(exc)))
    if isinstance(exc, UnicodeError):
        return f"text that is not UTF-8 ({_one_line(exc)}); save the input as UTF-8"
    return _one_line(exc)
