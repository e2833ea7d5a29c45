"""`lahis eval`: lm-evaluation-harness with this package's tasks and model types already in place.

Light to import (the CLI imports every command's module at start-up): lm_eval is imported when the
command runs, not before.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

from ...core.errors import LahisError, require


def tasks_dir() -> Path:
    """The folder of this package's lm-eval task YAMLs (shipped inside the package as lahis_ctrl/tasks;
    the repository's top-level tasks/ is a link to it)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "tasks", here.parent / "tasks"):
        if (candidate / "xquad").is_dir():
            return candidate
    raise LahisError(f"the lm-eval task folder is missing from this installation (looked in {here / 'tasks'}); "
                     "reinstall lahis-ctrl")


def _model_args(model_args: str | None, mask: Path | None) -> str | None:
    parts = [model_args] if model_args else []
    if mask is not None:
        if not Path(mask).is_file():
            raise LahisError(f"mask file not found: {mask}")
        parts.append(f"mask={mask}")
    return ",".join(parts) or None


def lm_eval_argv(tasks: str, model: str = "lahis_hf", model_args: Optional[str] = None, mask: Optional[Path] = None,
                 limit: Optional[float] = None, num_fewshot: Optional[int] = None, batch_size: Optional[str] = None,
                 device: Optional[str] = None, gen_kwargs: Optional[str] = None, output_path: Optional[Path] = None,
                 log_samples: bool = False, data_dir: Optional[Path] = None, metadata: Optional[str] = None,
                 seed: Optional[str] = None, use_cache: Optional[str] = None,
                 extra: Optional[str] = None) -> list[str]:
    """The `lm_eval run` argument list that `lahis eval` runs (see `eval_cmd` for the arguments)."""
    argv = ["--model", model, "--tasks", tasks]
    margs = _model_args(model_args, mask)
    if margs:
        argv += ["--model_args", margs]
    argv += ["--include_path", str(tasks_dir())]
    meta: dict = {}
    if metadata:
        try:
            meta = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise LahisError(f"--metadata must be a JSON object, e.g. '{{\"lid_min_confidence\": 0.7}}': "
                             f"{exc}") from exc
        if not isinstance(meta, dict):
            raise LahisError("--metadata must be a JSON object")
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            from ...core.fileio import check_input_dir

            check_input_dir(data_dir, "data directory")
        meta["data_dir"] = str(Path(data_dir).resolve())
    if meta:
        argv += ["--metadata", json.dumps(meta)]
    for flag, value in (("--limit", limit), ("--num_fewshot", num_fewshot), ("--batch_size", batch_size),
                        ("--device", device), ("--gen_kwargs", gen_kwargs), ("--output_path", output_path),
                        ("--seed", seed), ("--use_cache", use_cache)):
        if value is not None:
            argv += [flag, str(value)]
    if log_samples:
        argv.append("--log_samples")
    if extra:
        argv += shlex.split(extra)
    return argv


def run_lm_eval(argv: list[str]) -> None:
    """Run `lm_eval run ARGV` in this process, with lahis_hf / lahis_vllm registered."""
    require("lm_eval", "eval", "lahis eval (lm-evaluation-harness)")
    import _lahis_register

    _lahis_register.install(force=True)
    from lm_eval._cli.harness import HarnessCLI

    saved = sys.argv
    sys.argv = ["lm-eval", "run", *argv]
    try:
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    except ValueError as exc:
        if str(exc).startswith("Tasks not found"):  # lm-eval's own check, before any model loads
            raise LahisError(f"{exc}. {_task_hint(str(exc).split(':', 1)[1])}") from None
        raise
    finally:
        sys.argv = saved


def _task_hint(missing: str) -> str:
    """The closest task names of this package's folder, for an unknown task."""
    import difflib

    names = sorted({p.stem for p in tasks_dir().rglob("*.yaml")})
    close = [m for name in missing.replace(",", " ").split() for m in difflib.get_close_matches(name, names, n=3)]
    return (f"Did you mean {', '.join(dict.fromkeys(close))}? " if close else "") + \
        "This package's tasks: xquad_<lang>, xquad_lahis_<lang>, xquad_xling_<lang>, ntrex_en_<lang>, " \
        "lcb_monolingual_<lang>, lcb_crosslingual_<lang> (see lahis_ctrl/integrations/lm_eval/tasks/README.md)"
