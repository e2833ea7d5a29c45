"""The `lahis` option grammar: what jsonargparse cannot do by itself, and one line for what it refuses.

Ranges and choices are types in the command signatures (core.argtypes: `PositiveInt`, `Literal[...]`), so
jsonargparse refuses them while parsing, before anything runs, and `--help` shows them. This module adds:

* `normalize_argv`: option names with dashes or underscores (`--max-off-target`); lists of one item and
  comma lists (`--languages en`, `--languages en,de`; `[en, de]` as jsonargparse writes them); boolean flags
  without a value (`--modules` is `--modules true`); `--languages+ x` (jsonargparse's append) only after a
  `--config` whose list it extends, never silently onto a default list; the package's own logger options
  (`-q`, `-v`) before the subcommand.
* `parse_error_line`: jsonargparse's several-line parse errors as one line naming the option, what it takes
  and what it got.
* `validated(fn)`: the checks no type can express (an output folder that is an existing file, a float that is
  not finite, a device torch does not know or does not have), before the command runs.
* `source_path`: --source ntrex read from --data.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

from ..core.errors import LahisError

_BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "null", "none", "on", "off"}


# ---------------------------------------------------------------------------------------------- types
def _unoptional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _list_item(tp):
    """The item type of a list option (None when `tp` is no list)."""
    tp = _unoptional(tp)
    if typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        return args[0] if args else str
    return str if tp in (list, tuple) else None


def option_types(fn: Callable) -> dict[str, Any]:
    """Option name (dotted for dataclass sections, e.g. 'xquad.test_items') -> its type annotation."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: jsonargparse reports the problem itself
        return {}
    found = {}
    for name, tp in hints.items():
        if name == "return":
            continue
        found[name] = tp
        inner = _unoptional(tp)
        if dataclasses.is_dataclass(inner):
            for f_name, f_tp in typing.get_type_hints(inner).items():
                found[f"{name}.{f_name}"] = f_tp
    return found


def describe_type(tp) -> str:
    """What an option takes, in words: 'an integer > 0', 'one of fast, faithful', 'a list such as en,de'."""
    optional = _is_optional(tp)
    tp = _unoptional(tp)
    if typing.get_origin(tp) is typing.Literal:
        text = "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    elif getattr(tp, "_expression", None):  # jsonargparse's restricted number types: 'v>0 and v<1'
        base = "an integer" if getattr(tp, "_type", None) is int else "a number"
        bounds = re.sub(r"v\s*([<>=!]+)\s*", r"\1 ", tp._expression)
        text = f"{base} {bounds}"
    elif tp is bool:
        text = "true or false"
    elif tp is int:
        text = "an integer"
    elif tp is float:
        text = "a number"
    elif _list_item(tp) is not None:
        text = "a list such as en,de or [en, de]"
    elif tp in (Path, str):
        text = "a path" if tp is Path else "a string"
    else:
        text = getattr(tp, "__name__", str(tp))
    return text + (" (or null)" if optional else "")


# ---------------------------------------------------------------------------------------------- argv
_OPTION = re.compile(r"^--([A-Za-z][A-Za-z0-9_.-]*?)(\+?)(=.*)?$", re.S)


def _as_list(value: str) -> str:
    """'en' -> '[en]', 'en,de' -> '[en, de]'; '[...]', 'null' and YAML/JSON lists stay as they are."""
    text = value.strip()
    if text.startswith("[") or text.lower() in ("null", "~"):
        return value
    return "[" + ", ".join(v.strip() for v in text.split(",")) + "]"


def normalize_argv(argv: list[str], commands: dict[str, Callable]) -> tuple[list[str], int]:
    """(argv in jsonargparse's grammar, verbosity): see the module docstring. Verbosity: -1 per -q, +1 per -v, given
    before the subcommand. Raises LahisError on an option it refuses (`--x+` without a --config)."""
    out: list[str] = []
    verbosity = 0
    found: dict[str, Any] = {}
    command = None
    config_seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if command is None:
            if arg in commands:
                command = arg
                found = option_types(commands[arg])
                out.append(arg)
                i += 1
                continue
            short = re.fullmatch(r"-([qv]+)", arg)
            if short or arg in ("--quiet", "--verbose"):
                letters = short.group(1) if short else arg[2]
                verbosity += letters.count("v") - letters.count("q")
                i += 1
                continue
        m = _OPTION.match(arg)
        if m is None:
            out.append(arg)
            i += 1
            continue
        name = m.group(1).replace("-", "_")
        append = m.group(2) == "+"
        value = m.group(3)[1:] if m.group(3) else None
        if name == "config":
            config_seen = True
        tp = found.get(name)
        if append and not config_seen:
            raise LahisError(f"--{name}+ appends to a list, here to the default one; give the whole list instead "
                             f"(--{name} {'en,de' if 'lang' in name else 'A,B'}), or put --config FILE before it to "
                             "extend the config's list")
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if _unoptional(tp) is bool and value is None and (nxt is None or nxt.lower() not in _BOOL_WORDS):
            out += [f"--{name}", "true"]  # a bare flag
            i += 1
            continue
        if value is None and nxt is not None and not (nxt.startswith("--") and len(nxt) > 2):
            value, i = nxt, i + 1
        item = _list_item(tp) if tp is not None else None
        if value is not None and item is not None and _list_item(item) is None:
            value = _as_list(value)
        out += [f"--{name}{'+' if append else ''}"] + ([value] if value is not None else [])
        i += 1
    return out, verbosity


# ---------------------------------------------------------------------------------------------- errors
def _positional(fn: Callable) -> list[str]:
    """Parameters given by position (no default, not keyword-only): `lahis info MODEL`."""
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.KEYWORD_ONLY]


# options an earlier version spelled otherwise: (command, old name) -> the one spelling now
RENAMED = {("train-mask", "heads"): "--pick", ("evaluate", "masks"): "--mask", ("plot", "top"): "--top_heads",
           ("audit", "top"): "--top_wrong", ("reproduce", "force"): "--overwrite"}
_KEY = re.compile(r'Parser key "([^"]+)"')
_GOT = re.compile(r"(?:Got value|Given value): (.*?)\s*$", re.M)
_NOT_CONFORM = re.compile(r"Not of type \w+: (.+?) does not conform")
_UNKNOWN = re.compile(r"unrecognized arguments: (.*)$", re.S)


def parse_error_line(message: str, commands: dict[str, Callable], argv: list[str]) -> str:
    """jsonargparse's parse error as one line: the option, what it takes, what it got (or the closest option)."""
    command = next((a for a in argv if a in commands), None)
    found = option_types(commands[command]) if command else {}
    key = _KEY.search(message)
    if key:
        name = key.group(1)
        if command and name.startswith(command + "."):
            name = name[len(command) + 1:]
        got = _GOT.search(message) or _NOT_CONFORM.search(message)
        value = got.group(1).strip() if got else None
        tp = found.get(name)
        if tp is not None:
            return f"--{name} must be {describe_type(tp)}" + (f", got {value}" if value is not None else "")
        return f"--{name}: " + " ".join(part.strip() for part in message.splitlines()[1:2])
    unknown = _UNKNOWN.search(message)
    if unknown:
        words = unknown.group(1).split()
        bad = next((w for w in words if w.startswith("-")), words[0] if words else "")
        where = f"lahis {command}" if command else "lahis"
        positional = _positional(commands[command]) if command else []
        name = bad.split("=")[0].lstrip("-").replace("-", "_")
        options = [f"--{n}" for n in found if n not in positional]
        close = difflib.get_close_matches(bad.split("=")[0], options, n=1)
        if name in positional:
            hint = f": {name.upper()} is its first argument ({where} {name.upper()} ...)"
        elif (command, name) in RENAMED:
            hint = f": it is {RENAMED[(command, name)]} now (docs/cli.md: one spelling per concept)"
        else:
            hint = f"; did you mean {close[0]}?" if close else f"; see {where} --help"
        return f"{where} has no option {bad}{hint}" if bad.startswith("-") else \
            f"{where}: unexpected argument {bad!r}; see {where} --help"
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    m = re.match(r"argument --(\S+): expected one argument", text)
    if m:
        tp = found.get(m.group(1).replace("-", "_"))
        return f"--{m.group(1)} needs a value" + (f": {describe_type(tp)}" if tp is not None else "")
    return text


# ---------------------------------------------------------------------------------------------- checks
def check_output_folder(path, option: str = "out") -> None:
    """An output folder must not be an existing file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise LahisError(f"--{option} {path} is a file; give a folder (it will be created if missing)")


def check_device(device: Optional[str], option: str = "device") -> None:
    """A device string torch knows, and one this machine has: refused before the model loads (core.loading's
    check, the one every entry point uses: the CLI, lahis_hf's device=, reproduce)."""
    if device is None or device == "auto":
        return
    from ..core.loading import check_device as check

    check(device, f"--{option}")


def _check_finite(values: dict) -> None:
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise LahisError(f"--{name} must be a finite number, got {value}")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _check_finite({f"{name}.{f.name}": getattr(value, f.name) for f in dataclasses.fields(value)})


def validated(fn: Callable, folders: tuple[str, ...] = ()) -> Callable:
    """`fn` with the checks no type can express run first (finite floats, output folders that are files, the
    device); the signature and docstring stay fn's, so jsonargparse builds the same parser."""

    @functools.wraps(fn)
    def command(*args, **kwargs):
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
        _check_finite(dict(bound.arguments))
        for name in folders:
            check_output_folder(bound.arguments.get(name), name)
        check_device(bound.arguments.get("device"))
        check_paths_apart(dict(bound.arguments))
        return fn(*args, **kwargs)

    return command


# options that name what a command reads, and what it writes, whatever the command (by name, like the types)
INPUT_OPTIONS = ("input", "scores", "model", "source", "data", "mask", "masks", "compare", "lid_model", "readme")
OUTPUT_OPTIONS = ("out", "output_path")


def _paths_of(value) -> list[str]:
    """The file-system paths an option value names: lists, comma-separated lists, NAME=PATH entries, and the fixed
    folder in front of a glob or a '{lang}' template."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths_of(v)]
    text = str(value)
    if "," in text and not Path(text).exists():
        return [p for part in text.split(",") if part.strip() for p in _paths_of(part.strip())]
    if "=" in text and not Path(text).exists():  # evaluate's NAME=PATH
        text = text.split("=", 1)[1]
    cut = min([i for i in (text.find(c) for c in "*?[{") if i >= 0], default=-1)
    if cut >= 0:  # a glob or a template: the folder it lies in is what is read
        text = str(Path(text[:cut] + "x").parent)
    return [text]


def check_paths_apart(arguments: dict) -> None:
    """The one outputs-vs-inputs check of every command (core.fileio.check_outputs_apart): an output that is, holds
    or lies inside one of the command's inputs is refused before anything runs."""
    from ..core.fileio import check_outputs_apart

    outputs = {k: _paths_of(arguments.get(k)) for k in OUTPUT_OPTIONS if arguments.get(k) is not None}
    inputs = {k: _paths_of(arguments.get(k)) for k in INPUT_OPTIONS if arguments.get(k) is not None}
    if outputs and inputs:
        check_outputs_apart(outputs, inputs)


def source_path(source: str, data: Optional[str] = None) -> str:
    """--source with --data: 'ntrex' reads <data>/ntrex128 (default data: env LAHIS_DATA_DIR) instead of downloading."""
    import os

    if data is not None and not Path(data).is_dir():
        raise LahisError(f"--data {data}: no such folder (it should hold ntrex128/, xquad/ and lcb/, like the "
                         "project's ../shared/data)")
    env = os.environ.get("LAHIS_DATA_DIR")
    data = data or (env if env and Path(env).is_dir() else None)
    if str(source) == "ntrex" and data is not None:
        return str(Path(data) / "ntrex128")
    return str(source)
