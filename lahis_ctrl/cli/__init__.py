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
import re
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


def _load(spec: str):
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


_DASHED_OPTION = re.compile(r"^--([a-z][a-z0-9]*(?:-[a-z0-9]+)+)(=.*)?$", re.S)
# `lahis eval` hands its arguments to lm_eval's own parser unchanged
_PASSTHROUGH = {"eval"}


def _underscore_options(argv: list[str]) -> list[str]:
    """Accept `--max-off-target` as well as jsonargparse's `--max_off_target` spelling."""
    out = []
    for i, arg in enumerate(argv):
        if arg in _PASSTHROUGH:
            return out + argv[i:]
        m = _DASHED_OPTION.match(arg)
        out.append(f"--{m.group(1).replace('-', '_')}{m.group(2) or ''}" if m else arg)
    return out


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import CLI

    from ..core.errors import LahisError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {name: _load(spec) for name, spec in COMMANDS.items()}
    try:
        args = _underscore_options(sys.argv[1:] if argv is None else list(argv))
        CLI(commands, args=args, as_positional=True,
            description="lahis: language attention heads of multilingual LLMs - score, mask, evaluate, serve.")
    except LahisError as exc:
        print(f"lahis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lahis: interrupted (finished steps and checkpoints are kept; rerun to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
