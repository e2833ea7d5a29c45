"""The `lahis` command: one typed function per subcommand (jsonargparse builds the parser from them).

Parameters without defaults are positional (`lahis info MODEL`); keyword-only ones are options
(`lahis export --model M --mask m.safetensors --out DIR`).

The command functions live in this package (model_cmds, lahis_cmds, eval_cmds, audit_cmds); `reproduce` and `demo` are
the experiments layer's own typed entry points. Nothing below the CLI imports it. Errors meant for users
(LahisError) print as one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

# subcommand -> "module:function". Modules are imported only when the CLI starts, not on `import lahis_ctrl`.
COMMANDS: dict[str, str] = {
    "info": "lahis_ctrl.cli.model_cmds:info",
    "export": "lahis_ctrl.cli.model_cmds:export",
    "demo": "lahis_ctrl.experiments.demo:demo",
    "train-mask": "lahis_ctrl.cli.lahis_cmds:train_mask",
    "evaluate": "lahis_ctrl.cli.eval_cmds:evaluate",
    "eval": "lahis_ctrl.cli.audit_cmds:eval_cmd",
    "score": "lahis_ctrl.cli.lahis_cmds:score",
    "heads": "lahis_ctrl.cli.lahis_cmds:heads",
    "plot": "lahis_ctrl.cli.lahis_cmds:plot",
    "ppl": "lahis_ctrl.cli.eval_cmds:ppl",
    "audit": "lahis_ctrl.cli.audit_cmds:audit",
    "reproduce": "lahis_ctrl.experiments.reproduce:reproduce",
}


# output options that name a folder (a file there is refused before anything runs)
FOLDER_OUTPUTS = {"score": ("out",), "ppl": ("out",), "evaluate": ("out",), "plot": ("out",), "reproduce": ("out",),
                  "demo": ("out",), "audit": ("out",), "export": ("out",)}
# `lahis eval` hands its arguments to lm_eval's own parser unchanged
_PASSTHROUGH = {"eval"}


def _load(name: str, spec: str):
    from .options import validated

    module, func = spec.split(":")
    return validated(getattr(importlib.import_module(module), func), FOLDER_OUTPUTS.get(name, ()))


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error_line(exc: BaseException) -> str:
    """What went wrong, in one line: the error boundary of every command."""
    import errno

    if isinstance(exc, OSError):
        target = exc.filename or ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the device while writing {target}: free some space (nothing was replaced)"
        if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return f"cannot write or read {target}: {exc.strerror} (a read-only folder?); choose another --out"
        if isinstance(exc, NotADirectoryError) or exc.errno == errno.ENOTDIR:
            return f"{target}: a file is in the way where a folder is expected"
        if isinstance(exc, IsADirectoryError):
            return f"{target} is a folder where a file is expected"
        if isinstance(exc, FileNotFoundError):
            return f"file not found: {target}"
        return f"{exc.strerror or exc}: {target}".strip(": ")
    if isinstance(exc, UnicodeError):
        return f"text that is not UTF-8 ({exc}); save the input as UTF-8"
    return _one_line(exc)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from jsonargparse import CLI

    from ..core.errors import LahisError
    from .options import normalize_argv

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {name: _load(name, spec) for name, spec in COMMANDS.items()}
    try:
        args = normalize_argv(sys.argv[1:] if argv is None else list(argv), commands, _PASSTHROUGH)
        CLI(commands, args=args, as_positional=True, exit_on_error=False, prog="lahis",
            description="lahis: language attention heads of multilingual LLMs - score, mask, evaluate, serve.")
    except (LahisError, argparse.ArgumentError, OSError, UnicodeError) as exc:
        print(f"lahis: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lahis: interrupted (finished steps and checkpoints are kept; rerun to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
