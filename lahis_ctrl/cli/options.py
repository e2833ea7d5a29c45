"""What every `lahis` command checks at the boundary, before any model loads.

* `RANGES`: the valid range of every numeric option, by name, whatever the command (and inside the dataclass
  sections of `lahis reproduce`'s config: `--xquad.test_items 0` is refused like `--limit 0`).
* `normalize_argv`: options spelled with dashes or underscores; lists written `en,de` or `[en, de]`; boolean
  flags usable bare (`--modules` is `--modules true`).
* `validated(fn)`: the command with its arguments checked (ranges, output folders that are files) before it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable

from ..core.errors import LahisError

# name -> (low, high, low inclusive, high inclusive); None = unbounded on that side
RANGES: dict[str, tuple] = {
    **dict.fromkeys(("batch_size", "epochs", "texts", "limit", "k", "random_trials", "random_masks", "random_draws",
                     "max_new_tokens", "max_gen_toks", "checkpoint_every", "train_size", "test_size", "train_items",
                     "test_items", "items", "top", "min_rep", "trainable_heads"), (1, None, True, True)),
    "max_length": (2, None, True, True),
    "seed": (0, None, True, True),
    "shots": (0, 5, True, True),
    "lr": (0, None, False, True),
    "weight_decay": (0, None, True, True),
    "head_share": (0, 1, False, True),
    "q": (0, 1, True, False),
    "min_confidence": (0, 1, True, True),
    "max_off_target": (0, 1, True, True),
    "alpha": (0, 1, False, False),
    "scale_up": (0, None, True, True),
    "scale": (0, None, True, True),
    "min_chars": (0, None, True, True),
}
# `heads` is a count in some sections (xquad, off_target, transfer, lcb) and a choice elsewhere
COUNT_FIELDS_IN_SECTIONS = {"heads"}


def _check_number(name: str, value, where: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    rule = RANGES.get(name)
    if isinstance(value, float) and not math.isfinite(value):
        raise LahisError(f"{where}{name} must be a finite number, got {value}")
    if rule is None:
        return
    low, high, low_in, high_in = rule
    bad_low = low is not None and (value < low or (value == low and not low_in))
    bad_high = high is not None and (value > high or (value == high and not high_in))
    if bad_low or bad_high:
        lo = "" if low is None else f"{'>=' if low_in else '>'} {low}"
        hi = "" if high is None else f"{'<=' if high_in else '<'} {high}"
        raise LahisError(f"--{where}{name} must be {' and '.join(x for x in (lo, hi) if x)}, got {value}")


def check_values(values: dict, where: str = "") -> None:
    """Check every numeric value by its name's range, recursing into dataclass sections (reproduce's config)."""
    for name, value in values.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            section = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            for field in COUNT_FIELDS_IN_SECTIONS & set(section):
                if isinstance(section[field], int) and not isinstance(section[field], bool) and section[field] < 1:
                    raise LahisError(f"--{where}{name}.{field} must be >= 1 (or null for the default), got {section[field]}")
            check_values(section, f"{where}{name}.")
        elif isinstance(value, (list, tuple)):
            for v in value:
                _check_number(name, v, where)
        else:
            _check_number(name, value, where)


def check_output_folder(path, option: str = "out") -> None:
    """An output folder must not be an existing file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise LahisError(f"--{option} {path} is a file; give a folder (it will be created if missing)")


def validated(fn: Callable, folders: tuple[str, ...] = ()) -> Callable:
    """`fn` with its arguments range-checked (and `folders`, output-folder options, checked) before it runs;
    the signature and docstring stay fn's, so jsonargparse builds the same parser."""

    @functools.wraps(fn)
    def command(*args, **kwargs):
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
        check_values(dict(bound.arguments))
        for name in folders:
            check_output_folder(bound.arguments.get(name), name)
        return fn(*args, **kwargs)

    return command


# ---------------------------------------------------------------------------------------------- argv
_OPTION = re.compile(r"^--([a-z][a-z0-9_.-]*)(=.*)?$", re.S)


def _origin_is_list(tp) -> bool:
    tp = _unoptional(tp)
    return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _unoptional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _option_types(fn: Callable) -> dict[str, Any]:
    """Option name (dotted for dataclass sections) -> its type annotation."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: no normalisation, jsonargparse reports the problem
        return {}
    types = {}
    for name, tp in hints.items():
        if name == "return":
            continue
        types[name] = tp
        inner = _unoptional(tp)
        if dataclasses.is_dataclass(inner):
            for f_name, f_tp in typing.get_type_hints(inner).items():
                types[f"{name}.{f_name}"] = f_tp
    return types


def normalize_argv(argv: list[str], commands: dict[str, Callable], passthrough: set[str] = frozenset()) -> list[str]:
    """`--max-off-target` -> `--max_off_target`; `--languages en,de` -> `--languages [en, de]`; a bare boolean
    `--modules` -> `--modules true`. Arguments after a passthrough command (lahis eval) are left alone."""
    out: list[str] = []
    types: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not types and arg in commands:
            out.append(arg)
            if arg in passthrough:
                return out + argv[i + 1:]
            types = _option_types(commands[arg])
            i += 1
            continue
        m = _OPTION.match(arg)
        if m is None:
            out.append(arg)
            i += 1
            continue
        name = m.group(1).replace("-", "_")
        value = m.group(2)[1:] if m.group(2) else None
        tp = types.get(name)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if _unoptional(tp) is bool and value is None and (nxt is None or nxt.startswith("--") or nxt in commands):
            out += [f"--{name}", "true"]
            i += 1
            continue
        if value is None and nxt is not None and not nxt.startswith("--"):
            value, i = nxt, i + 1
        if value is not None and tp is not None and _origin_is_list(tp) and "," in value \
                and not value.lstrip().startswith("["):
            value = "[" + ", ".join(v.strip() for v in value.split(",")) + "]"
        out += [f"--{name}"] + ([value] if value is not None else [])
        i += 1
    return out
