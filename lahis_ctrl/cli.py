"""The `lahis` command: one typed function per subcommand (jsonargparse builds the parser from them).

Parameters without defaults are positional (`lahis info MODEL`); keyword-only ones are options
(`lahis export --model M --mask m.safetensors --out DIR`).

Each command lives in the module of its concern; this file only lists them. Errors meant for users
(LahisError) print as one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

# subcommand -> "module:function". Modules are imported only when the CLI starts, not on `import lahis_ctrl`.
COMMANDS: dict[str, str] = {
    "info": "lahis_ctrl.commands:info",
    "export": "lahis_ctrl.commands:export",
    "demo": "lahis_ctrl.demo:demo",
    "train-mask": "lahis_ctrl.train_mask:train_mask_command",
    "evaluate": "lahis_ctrl.evaluate:evaluate",
    "eval": "lahis_ctrl.lm_eval_cli:eval_cmd",
    "score": "lahis_ctrl.scoring:score",
    "heads": "lahis_ctrl.heads:heads",
    "plot": "lahis_ctrl.plots:plot",
    "ppl": "lahis_ctrl.ppl:ppl",
    "audit": "lahis_ctrl.audit:audit",
}


def _load(spec: str):
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import CLI

    from .errors import LahisError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {name: _load(spec) for name, spec in COMMANDS.items()}
    try:
        CLI(commands, args=argv, as_positional=True,
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
