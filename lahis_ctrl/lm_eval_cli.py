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

from .errors import LahisError, require


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
            raise LahisError(f"data directory not found: {data_dir}")
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


def eval_cmd(tasks: Optional[str] = None, model: str = "lahis_hf", model_args: Optional[str] = None,
             mask: Optional[Path] = None,
             limit: Optional[float] = None, num_fewshot: Optional[int] = None, batch_size: Optional[str] = None,
             device: Optional[str] = None, gen_kwargs: Optional[str] = None, output_path: Optional[Path] = None,
             log_samples: bool = False, data_dir: Optional[Path] = None, metadata: Optional[str] = None,
             seed: Optional[str] = None, use_cache: Optional[str] = None,
             extra: Optional[str] = None, dry_run: bool = False) -> None:
    """Run lm-evaluation-harness with this package's tasks and lahis_hf / lahis_vllm model types.

    Runs `lm_eval run` in this process with the tasks folder (xquad_*, xquad_lahis_*, xquad_xling_*, ntrex_en_*)
    on the include path; the arguments keep lm_eval's names.

    Example: lahis eval --tasks xquad_de --model_args pretrained=gemma-3-270m,dtype=float32 --mask de.safetensors
    --device cpu --limit 20 --data_dir ../shared/data

    Args:
        tasks: Task or group names, comma-separated (as lm_eval --tasks).
        model: lm-eval model type: lahis_hf (transformers), lahis_vllm, or any built-in one (hf, vllm...).
        model_args: lm-eval model_args, "key=val,key2=val2" (pretrained=..., dtype=..., fold=..., heads=...).
        mask: A HeadMask file; shorthand for mask=PATH in model_args.
        limit: Items per task (a count, or a fraction when < 1).
        num_fewshot: Few-shot examples per prompt.
        batch_size: Batch size (an integer or "auto").
        device: Device, e.g. cuda, cuda:0 or cpu.
        gen_kwargs: Generation overrides, e.g. "max_gen_toks=32".
        output_path: Where lm-eval writes results (and samples).
        log_samples: Also write every output with its metrics.
        data_dir: Local data folder (xquad.<lang>.json / <lang>.txt files) instead of the hub; the tasks also
            read env LAHIS_DATA_DIR.
        metadata: JSON object passed to the tasks, e.g. '{"lid_min_confidence": 0.7, "lid_backend": "langdetect"}'.
        seed: lm-eval's --seed.
        use_cache: lm-eval's response cache path.
        extra: Any other lm_eval run arguments, as one shell-quoted string, e.g. "--apply_chat_template".
        dry_run: Print the lm_eval command instead of running it.
    """
    if not tasks:
        raise LahisError("lahis eval needs --tasks, e.g. --tasks xquad_de or --tasks xquad (all 12 languages)")
    argv = lm_eval_argv(tasks, model, model_args, mask, limit, num_fewshot, batch_size, device, gen_kwargs,
                        output_path, log_samples, data_dir, metadata, seed, use_cache, extra)
    if dry_run:
        print(shlex.join(["lm_eval", "run", *argv]))
        return
    run_lm_eval(argv)


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
    finally:
        sys.argv = saved

