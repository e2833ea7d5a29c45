"""The `lahis` command: one typed function per subcommand (jsonargparse builds the parser from them).

Parameters without defaults are positional (`lahis info MODEL`); keyword-only ones are options
(`lahis export --model M --mask m.safetensors --out DIR`). Ranges and choices are types (core.argtypes), so
jsonargparse refuses bad values before anything runs; cli.options adds what it cannot do (lists of one item,
dashes, bare flags) and turns its errors into one line.

The command functions live in this package (model_cmds, lahis_cmds, eval_cmds, audit_cmds); `reproduce` and `demo` are
the experiments layer's own typed entry points. Nothing below the CLI imports it. Errors meant for users
(LahisError) print as one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys

# subcommand -> ("module:function", one-line description), in the order of the workflow. Modules are imported
# only when the CLI starts, not on `import lahis_ctrl`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lahis_ctrl.experiments.demo:demo",
             "The whole method on the embedded Gemma 3 270M in a few minutes: scores, heads, a soft mask, its evaluation."),
    "info": ("lahis_ctrl.cli.model_cmds:info",
             "A model's heads from its config (no weights load): layers x heads, KV heads, head_dim, projections."),
    "score": ("lahis_ctrl.cli.lahis_cmds:score",
              "LAHIS head scores per language (one GPU, several with torchrun, or the CPU); resumable."),
    "heads": ("lahis_ctrl.cli.lahis_cmds:heads",
              "Language-specific and language-general heads from the score files of several languages."),
    "plot": ("lahis_ctrl.cli.lahis_cmds:plot",
             "PNG plots of score files: heatmaps, shared top heads, specific heads per layer."),
    "ppl": ("lahis_ctrl.cli.eval_cmds:ppl",
            "Perplexity of each language with each language's top-k specific heads zeroed, vs k random heads."),
    "train-mask": ("lahis_ctrl.cli.lahis_cmds:train_mask",
                   "Train a soft head mask for one language on XQuAD (top-scored or random heads); resumable."),
    "evaluate": ("lahis_ctrl.cli.eval_cmds:evaluate",
                 "Compare head masks on XQuAD: accuracy, exact match and F1 per mask, with intervals; resumable."),
    "audit": ("lahis_ctrl.cli.audit_cmds:audit",
              "The language of generated texts: off-target rates with intervals, --compare two runs, --metric lcb."),
    "export": ("lahis_ctrl.cli.model_cmds:export",
               "A checkpoint with a head mask applied (folded weights, or a LoRA or IA3 adapter for vLLM and PEFT)."),
    "push": ("lahis_ctrl.cli.model_cmds:push",
             "Share a head mask on the Hugging Face Hub: the mask, a model card and a PEFT IA3 adapter in one commit."),
    "reproduce": ("lahis_ctrl.experiments.reproduce:reproduce",
                  "The paper's experiments on one model as a report whose findings carry intervals and p-values."),
}

# output options that name a folder (a file there is refused before anything runs)
FOLDER_OUTPUTS = {"score": ("out",), "ppl": ("out",), "evaluate": ("out",), "plot": ("out",), "reproduce": ("out",),
                  "demo": ("out",), "audit": ("out",), "export": ("out",)}

# what `lahis eval` was: lm-eval runs verbatim with this package's model types and tasks
_EVAL_REMOVED = ("`lahis eval` was removed: run lm-evaluation-harness itself, which finds this package's model types "
                 "and tasks once it is installed, e.g. lm_eval --model lahis_hf --model_args "
                 "pretrained=MODEL,mask=MASK.safetensors --tasks xquad_de (see docs/lm_eval.md)")

log = logging.getLogger("lahis_ctrl")


def _load(name: str, spec: str, summary: str = ""):
    from .options import validated

    module, func = spec.split(":")
    command = validated(getattr(importlib.import_module(module), func), FOLDER_OUTPUTS.get(name, ()))
    if summary:  # the subcommand list shows the docstring's first line: make it the whole one-line summary
        doc = command.__doc__ or ""
        rest = doc.split("\n\n", 1)[1] if "\n\n" in doc else ""
        command.__doc__ = f"{summary}\n\n{rest}"
    return command


def commands() -> dict:
    """Every subcommand's validated function, in workflow order."""
    return {name: _load(name, spec, summary) for name, (spec, summary) in COMMANDS.items()}


def version_line() -> str:
    """'lahis-ctrl 0.1.0 (torch 2.13.0, transformers 5.1.0, ...)': what a bug report needs, without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    import lahis_ctrl

    others = [f"{d} {v(d)}" for d in ("torch", "transformers", "lm_eval", "vllm") if v(d)]
    return f"lahis-ctrl {lahis_ctrl.__version__} (python {sys.version.split()[0]}; {', '.join(others)})"


def configure_logging(verbosity: int) -> None:
    """The package's own logger (not the root logger): INFO by default, -q WARNING (and no progress bars), -qq
    ERROR, -v DEBUG. Other libraries' loggers keep their own settings."""
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(max(verbosity, -2), logging.DEBUG)
    if not any(getattr(h, "_lahis_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._lahis_cli = True
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False  # a root handler of another library must not print every line twice


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """With -q no tqdm bar of the command draws: their callers pass disable= explicitly, so tqdm's own
    TQDM_DISABLE cannot reach them; the class is restored when the command ends."""
    if enabled:
        yield
        return
    from tqdm import std

    original = std.tqdm.__init__

    def quiet(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = quiet
    try:
        yield
    finally:
        std.tqdm.__init__ = original


def _parser_class():
    import argparse

    from jsonargparse import ArgumentParser

    class _Version(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(version_line())  # one line as it is: argparse's version action would wrap it
            raise SystemExit(0)

    class LahisParser(ArgumentParser):
        """jsonargparse's parser; the top-level one also lists --version, -q and -v (read before parsing)."""

        def __init__(self, *args, **kwargs):
            # no abbreviations: `--top` must not silently mean `--top_heads` (nor a future option's prefix)
            kwargs.setdefault("allow_abbrev", False)
            super().__init__(*args, **kwargs)
            if kwargs.get("prog") == "lahis":
                self.add_argument("--version", action=_Version, nargs=0,
                                  help="Print the versions of lahis-ctrl, torch, transformers, lm-eval, vLLM and exit.")
                self.add_argument("-q", "--quiet", action="count", default=0,
                                  help="Less output: -q warnings and errors only (no progress bars), -qq errors only.")
                self.add_argument("-v", "--verbose", action="count", default=0,
                                  help="More output: debug messages of lahis_ctrl.")

    return LahisParser


def main(argv: list[str] | None = None) -> int:
    import argparse

    from jsonargparse import CLI

    from ..core.errors import LahisError, error_line, is_user_error
    from .options import normalize_argv, parse_error_line

    args = sys.argv[1:] if argv is None else list(argv)
    import os

    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        # several ranks: torch's C++ logger would print stack frames for a peer that does not come; the failure is
        # reported as one line (lahis.distributed). Read when torch loads; TORCH_CPP_LOG_LEVEL=WARNING shows them.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    if args[:1] == ["eval"]:
        print(f"lahis: error: {_EVAL_REMOVED}", file=sys.stderr)
        return 2
    found = commands()
    try:
        args, verbosity = normalize_argv(args, found)
        configure_logging(verbosity)
        try:
            with progress_bars(verbosity >= 0):
                CLI(found, args=args, as_positional=True, exit_on_error=False, prog="lahis",
                    parser_class=_parser_class(),
                    description="lahis: language attention heads of multilingual LLMs - score, mask, evaluate, "
                                "serve. Options take dashes or underscores, lists as en,de, flags bare; see "
                                "docs/cli.md.")
        except argparse.ArgumentError as exc:
            raise LahisError(parse_error_line(str(exc), found, args)) from None
    except KeyboardInterrupt:
        print("lahis: interrupted (finished steps and checkpoints are kept; rerun to resume)", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # the one error boundary (core.errors): what a user can act on is one line
        if not is_user_error(exc):
            raise
        print(f"lahis: error: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
