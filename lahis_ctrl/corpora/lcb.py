"""The Language Confusion Benchmark's prompts (Marchisio et al., 2024; for-ai/language-confusion, Apache-2.0).

- `load_lcb(task, lang)`: the test prompts, from a local copy of the benchmark's ``test_sets`` (``data_dir``: the
  folder that holds ``lcb/``, or ``lcb/`` itself) or, without ``data_dir``, from the benchmark's public files at
  the pinned commit (`LCB_COMMIT`).
- `few_shot_examples(task, lang)`: the benchmark's own few-shot turns, read from its ``few_shot_prompting.py``
  WITHOUT executing it (the dict literals are parsed with ``ast.literal_eval``).
- `base_model_prompt(turns)`: the benchmark's base-model format (its ``turns_to_prompt``)::

      Q: <user>
      A: <chatbot>

      Q: <prompt>
      A:

- `chat_turns(prompt, task, lang, shots)`: the same conversation as ``{"role": "user"/"assistant", "content"}``
  messages for a chat template.

The benchmark's two tasks: *monolingual* (the user writes in the language and expects an answer in it) and
*crosslingual* (an English instruction asks for an answer in the language). The language and source tables
below are those of the files at `LCB_COMMIT` (the monolingual Okapi set has 10 languages there: no ru, no hi,
so the monolingual task has 2,400 prompts; the crosslingual one 4,186).

This module depends on the standard library only (the metrics live in ``lahis_ctrl.eval.lcb``).
"""

from __future__ import annotations

import ast
import csv
import functools
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..core.errors import LahisError
from ..core.fileio import read_text

__all__ = [
    "CROSSLINGUAL_LANGUAGES", "CROSSLINGUAL_SOURCES", "LCB_COMMIT", "LCB_LANGUAGES", "LCB_TASKS", "LCB_URL",
    "MONOLINGUAL_LANGUAGES", "MONOLINGUAL_SOURCES", "SOURCE_NAMES", "WPR_LANGUAGES", "base_model_prompt",
    "chat_turns", "few_shot_examples", "lcb_dir", "load_lcb", "sources_for",
]

LCB_COMMIT = "0cfdbb4a64502648938c456b2fa9689968f22298"
LCB_URL = f"https://raw.githubusercontent.com/for-ai/language-confusion/{LCB_COMMIT}"
LCB_TASKS = ("monolingual", "crosslingual")

# test_sets/<task>/<folder>/<lang>.csv at LCB_COMMIT; folder -> languages (the files' order of the paper's table).
MONOLINGUAL_SOURCES: dict[str, tuple[str, ...]] = {
    "aya": ("en", "tr", "ar", "zh", "pt"),
    "dolly": ("hi", "ru", "fr", "ar", "es"),
    "okapi": ("en", "fr", "it", "de", "zh", "vi", "es", "id", "pt", "ar"),
    "native": ("es", "fr", "ja", "ko"),
}
CROSSLINGUAL_LANGUAGES = ("fr", "de", "es", "pt", "it", "ja", "ko", "zh", "ar", "tr", "hi", "ru", "id", "vi")
CROSSLINGUAL_SOURCES: dict[str, tuple[str, ...]] = {
    "okapi": CROSSLINGUAL_LANGUAGES,
    "sharegpt": CROSSLINGUAL_LANGUAGES,
    "complex_prompts": CROSSLINGUAL_LANGUAGES,
}
# The "source" column of the CSV files for each folder (the benchmark groups its metrics by this column).
SOURCE_NAMES = {
    "monolingual": {"aya": "aya_human_annotated", "dolly": "dolly_human_edited", "okapi": "okapi",
                    "native": "native_prompts"},
    "crosslingual": {"okapi": "okapi", "sharegpt": "sharegpt", "complex_prompts": "complex_prompts"},
}
MONOLINGUAL_LANGUAGES = tuple(sorted({lang for langs in MONOLINGUAL_SOURCES.values() for lang in langs}))
LCB_LANGUAGES = tuple(sorted(set(MONOLINGUAL_LANGUAGES) | set(CROSSLINGUAL_LANGUAGES)))
# Word-level confusion (WPR) is only measured for the languages whose script is not Latin.
WPR_LANGUAGES = ("ar", "hi", "ja", "ko", "ru", "zh")

_TASK_SOURCES = {"monolingual": MONOLINGUAL_SOURCES, "crosslingual": CROSSLINGUAL_SOURCES}
_EXTRA_COLUMNS = {"monolingual": (), "crosslingual": ("location", "phrasing")}
_FEW_SHOT_VARS = {"monolingual": "few_shot_examples_monolingual", "crosslingual": "few_shot_examples_crosslingual"}
_DOWNLOAD_TIMEOUT_S = 30


def _check_task(task: str) -> str:
    if task not in LCB_TASKS:
        raise LahisError(f"unknown LCB task {task!r}: choose one of {', '.join(LCB_TASKS)}")
    return task


def _check_lang(task: str, lang: str) -> str:
    langs = MONOLINGUAL_LANGUAGES if task == "monolingual" else CROSSLINGUAL_LANGUAGES
    if lang not in langs:
        raise LahisError(f"the LCB {task} task has no language {lang!r}: choose one of {', '.join(langs)}")
    return lang


def sources_for(task: str, lang: str) -> tuple[str, ...]:
    """The source folders of `task` that have `lang` ('monolingual', 'ja' -> ('native',))."""
    _check_lang(_check_task(task), lang)
    return tuple(src for src, langs in _TASK_SOURCES[task].items() if lang in langs)


# ---------------------------------------------------------------------------------------------------------------
# Files


def lcb_dir(data_dir: str | os.PathLike) -> Path:
    """The benchmark's folder in `data_dir`: `data_dir`/lcb when it has test_sets/, else `data_dir` itself."""
    base = Path(data_dir).expanduser()
    for cand in (base / "lcb", base):
        if (cand / "test_sets").is_dir():
            return cand
    raise LahisError(f"no Language Confusion Benchmark files in {base}: data_dir must be the folder that holds "
                     "lcb/test_sets/ (e.g. shared/data) or the lcb/ folder itself")


def download_cache(rel: str) -> Path:
    """Where a downloaded file of the benchmark is kept: $LAHIS_CACHE/lcb/<LCB_COMMIT>/<rel> (the commit is pinned,
    so a kept file never goes stale)."""
    from ..core.loading import cache_dir

    return cache_dir() / "lcb" / LCB_COMMIT / rel


@functools.lru_cache(maxsize=256)
def _download(rel: str) -> str:
    """The text of a file of the benchmark's repository at LCB_COMMIT: downloaded once, then read from
    `download_cache` (and kept in memory for the process)."""
    import urllib.error
    import urllib.request

    from ..core.fileio import write_text

    cached = download_cache(rel)
    if cached.is_file():
        return read_text(cached, "cached LCB file")
    url = f"{LCB_URL}/{rel}"
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            text = resp.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LahisError(f"could not download the LCB file {url} ({reason}); offline, pass data_dir= (or --data) "
                         "pointing at a local copy of the benchmark: the folder that holds lcb/test_sets/ or the "
                         "lcb/ folder itself") from exc
    try:
        write_text(cached, text)  # atomic: a half-written cache file never looks complete
    except OSError:  # a read-only cache costs a download next time, nothing else
        pass
    return text


def _read_text(rel: str, data_dir: str | os.PathLike | None) -> str:
    if data_dir is None:
        return _download(rel)
    path = lcb_dir(data_dir) / rel
    if not path.is_file():
        raise LahisError(f"LCB file not found: {path} (data_dir must hold the benchmark's test_sets/ and "
                         "few_shot_prompting.py)")
    return read_text(path, "LCB file")


def _as_list(value, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    out = list(value)
    if not all(isinstance(v, str) for v in out):
        raise LahisError(f"{name} must be a string or a list of strings, got {value!r:.80}")
    return out


def load_lcb(task: str, lang: str | Iterable[str] | None, data_dir: str | os.PathLike | None = None,
             sources: str | Iterable[str] | None = None) -> list[dict]:
    """The benchmark's prompts of `task` in `lang` (a code, a list of codes, or None for all of the task's).

    Each row: ``prompt``, ``source`` (the CSV's source column, e.g. 'okapi', 'aya_human_annotated'), ``folder``
    (the source's folder, e.g. 'aya'), ``language``, ``task``, and for the crosslingual task ``location`` and
    ``phrasing``. Rows come in source-then-file order. `sources` keeps some sources (folder or column names).

    data_dir: the folder that holds lcb/ (or lcb/ itself); None reads the benchmark's public files at LCB_COMMIT
    over the network (offline that fails with a LahisError that names data_dir).
    """
    _check_task(task)
    task_sources = _TASK_SOURCES[task]
    langs = _as_list(lang, "lang")
    if langs is None:
        langs = list(MONOLINGUAL_LANGUAGES if task == "monolingual" else CROSSLINGUAL_LANGUAGES)
    for code in langs:
        _check_lang(task, code)
    wanted = _as_list(sources, "sources")
    if wanted is not None:
        by_name = {**{f: f for f in task_sources}, **{v: f for f, v in SOURCE_NAMES[task].items()}}
        unknown = [s for s in wanted if s not in by_name]
        if unknown:
            raise LahisError(f"the LCB {task} task has no source {unknown[0]!r}: choose among "
                             f"{', '.join(task_sources)} (or their column names "
                             f"{', '.join(SOURCE_NAMES[task].values())})")
        wanted = {by_name[s] for s in wanted}
    rows: list[dict] = []
    for code in langs:
        folders = [f for f in task_sources if code in task_sources[f] and (wanted is None or f in wanted)]
        if not folders:
            raise LahisError(f"none of the sources {', '.join(sorted(wanted or ()))} has {task} prompts in "
                             f"{code!r}; the ones that do: {', '.join(sources_for(task, code))}")
        for folder in folders:
            rows.extend(_read_csv(task, folder, code, data_dir))
    return rows


def _read_csv(task: str, folder: str, lang: str, data_dir) -> list[dict]:
    rel = f"test_sets/{task}/{folder}/{lang}.csv"
    text = _read_text(rel, data_dir)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    needed = ("prompt", "source", "language", *_EXTRA_COLUMNS[task])
    missing = [c for c in needed if c not in (reader.fieldnames or ())]
    if missing:
        raise LahisError(f"the LCB file {rel} has no column {missing[0]!r} (columns: {reader.fieldnames})")
    out = []
    for rec in reader:
        row = {"prompt": rec["prompt"], "source": rec["source"], "folder": folder, "language": rec["language"],
               "task": task}
        for col in _EXTRA_COLUMNS[task]:
            row[col] = rec[col]
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Few-shot prompting


@functools.lru_cache(maxsize=8)
def _few_shot_tables(text: str) -> dict[str, dict[str, list[dict]]]:
    """The dict literals assigned at the top level of few_shot_prompting.py, parsed without running the file."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise LahisError(f"few_shot_prompting.py does not parse as Python: {exc}") from exc
    tables: dict[str, dict] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in _FEW_SHOT_VARS.values():
                try:
                    tables[name] = ast.literal_eval(node.value)
                except ValueError as exc:
                    raise LahisError(f"few_shot_prompting.py: {name} is not a plain literal ({exc})") from exc
    return tables


def few_shot_examples(task: str, lang: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The benchmark's few-shot turns for `task` and `lang`: ``[{'role': 'User'|'Chatbot', 'message': ...}]``.

    Five examples (ten turns), user then chatbot; the benchmark's k-shot prompt takes the first 2k turns. The
    examples of a language are in OTHER languages (monolingual: each answer in its question's language;
    crosslingual: English instructions asking for other languages), so that a model learns the rule, not a
    language. Read from few_shot_prompting.py in `data_dir` (see `load_lcb`) or downloaded at LCB_COMMIT.
    """
    _check_lang(_check_task(task), lang)
    tables = _few_shot_tables(_read_text("few_shot_prompting.py", data_dir))
    var = _FEW_SHOT_VARS[task]
    if var not in tables:
        raise LahisError(f"few_shot_prompting.py defines no {var}")
    if lang not in tables[var]:
        raise LahisError(f"few_shot_prompting.py has no {task} examples for {lang!r} "
                         f"(it has {', '.join(sorted(tables[var]))})")
    return [dict(turn) for turn in tables[var][lang]]


_USER_ROLES = {"User": "user", "user": "user", "Chatbot": "assistant", "assistant": "assistant"}


def _turn(turn: dict) -> tuple[str, str]:
    """(user|assistant, text) of a benchmark turn {'role', 'message'} or a chat message {'role', 'content'}."""
    if not isinstance(turn, dict) or "role" not in turn:
        raise LahisError(f"a turn must be a dict with 'role' and 'message' (or 'content'), got {turn!r:.80}")
    role = _USER_ROLES.get(turn["role"])
    if role is None:
        raise LahisError(f"unknown turn role {turn['role']!r}: use 'User'/'Chatbot' (the benchmark's) or "
                         "'user'/'assistant'")
    text = turn.get("message", turn.get("content"))
    if not isinstance(text, str):
        raise LahisError(f"a turn needs its text as 'message' (or 'content'), got {turn!r:.80}")
    return role, text


def base_model_prompt(turns: Sequence[dict]) -> str:
    """The benchmark's base-model prompt (its ``turns_to_prompt``): "Q: ...\\nA: ..." turns, ending in "A:".

    Each user turn adds ``"Q: {msg}\\n"``, each chatbot turn ``"A: {msg}\\n\\n"``; after a final user turn comes
    ``"A:"``; newlines at both ends are stripped. Turns are the benchmark's ``{'role': 'User'|'Chatbot',
    'message'}`` or chat messages ``{'role': 'user'|'assistant', 'content'}`` (e.g. from `chat_turns`).
    """
    if not turns:
        raise LahisError("base_model_prompt needs at least one turn")
    prompt = ""
    role = None
    for turn in turns:
        role, text = _turn(turn)
        prompt += f"Q: {text}\n" if role == "user" else f"A: {text}\n\n"
    if role == "user":
        prompt += "A:"
    return prompt.strip("\n")


def chat_turns(prompt: str, task: str, lang: str, shots: int = 0,
               data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The first `shots` few-shot examples of `task`/`lang` then `prompt`, as chat messages.

    ``[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ..., {"role": "user",
    "content": prompt}]``, ready for a chat template; `base_model_prompt` of the result is the benchmark's
    base-model prompt. shots: 0 to 5 (the paper uses 0 for chat models, 1 or 5 for base models).
    """
    if not isinstance(prompt, str):
        raise LahisError(f"prompt must be a string, got {type(prompt).__name__}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise LahisError(f"shots must be a whole number from 0 to 5, got {shots!r}")
    _check_lang(_check_task(task), lang)
    messages = []
    if shots:
        examples = few_shot_examples(task, lang, data_dir)
        if 2 * shots > len(examples):
            raise LahisError(f"the benchmark has {len(examples) // 2} few-shot examples for {task}/{lang}, "
                             f"not {shots}")
        for turn in examples[: 2 * shots]:
            role, text = _turn(turn)
            messages.append({"role": role, "content": text})
    messages.append({"role": "user", "content": prompt})
    return messages
