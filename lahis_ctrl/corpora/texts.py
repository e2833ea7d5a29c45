"""Text corpora for scoring and perplexity probes: hub Wikipedia, local files, and an embedded sample.

`load_texts(source, lang, n, seed)`:
  * "wikipedia": the hub dataset `wikimedia/wikipedia`, config `20231101.<lang>`, streamed; the first n
    articles, shuffled with `seed` (as the reference does). Needs the hub.
  * "ntrex": NTREX-128 news sentences (github.com/MicrosoftTranslator/NTREX, downloaded) joined into
    passages of about `passage_tokens` tokens, as for a local NTREX directory below;
  * "embedded": short passages written for lahis_ctrl and shipped in the package
    (lahis_ctrl/corpora/data/passages/<lang>.txt), so the demo needs no data at all. See EMBEDDED_LANGUAGES.
  * a local path (a '{lang}' in it is replaced by the language):
      - `.txt`: passages separated by blank lines, or one passage per line when there are no blank lines;
      - `.jsonl`: one JSON object per line with a "text" field;
      - a directory: `<lang>.txt` (or `<lang>.jsonl`) inside. A directory of `.txt` files is the NTREX-128
        layout (one sentence per line, parallel across languages): consecutive lines are joined into
        passages of about `passage_tokens` tokens (counted with `tokenizer` when given, else estimated).
"""

from __future__ import annotations

import json
import os
import random
import re
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from ..core.errors import LahisError
from ..core.fileio import read_text

WIKIPEDIA_DATASET = "wikimedia/wikipedia"
WIKIPEDIA_DATE = "20231101"
DEFAULT_WIKIPEDIA_N = 1000

# Languages of the embedded sample (lahis_ctrl/corpora/data/passages/<code>.txt).
EMBEDDED_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "fr", "pt", "it", "hi", "zh", "vi", "ru", "ja", "ar")

# NTREX-128 file codes (github.com/MicrosoftTranslator/NTREX, NTREX-128/newstest2019-ref.<code>.txt)
NTREX_CODES = {"en": "eng-US", "ar": "arb", "de": "deu", "el": "ell", "es": "spa", "hi": "hin", "ro": "ron",
               "ru": "rus", "th": "tha", "tr": "tur", "vi": "vie", "zh": "zho-CN", "fr": "fra", "it": "ita",
               "ja": "jpn", "ko": "kor", "nl": "nld", "pl": "pol", "pt": "por", "uk": "ukr", "fa": "fas",
               "he": "heb", "id": "ind", "bn": "ben", "sw": "swa"}
NTREX_URL = "https://raw.githubusercontent.com/MicrosoftTranslator/NTREX/main/NTREX-128/newstest2019-ref.{code}.txt"

_LANG_CODE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


def embedded_languages() -> list[str]:
    """Languages that have embedded passages (what is actually shipped)."""
    root = resources.files("lahis_ctrl.corpora") / "data" / "passages"
    return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".txt"))


def _check_lang(lang: str) -> str:
    if not isinstance(lang, str) or not _LANG_CODE.match(lang):
        raise LahisError(f"'{lang}' is not a language code; use ISO 639-1/639-3 codes such as en, zh, hi, vi, es")
    return lang


def _take(texts: list[str], n: Optional[int], seed: Optional[int]) -> list[str]:
    """The first n texts, shuffled with seed (seed None keeps the order)."""
    if n is not None:
        if n < 1:
            raise LahisError(f"n must be >= 1, got {n}")
        texts = texts[:n]
    if seed is not None:
        texts = list(texts)
        random.Random(seed).shuffle(texts)
    return texts


def _split_passages(raw: str) -> list[str]:
    raw = raw.replace("\r\n", "\n")
    if re.search(r"\n[ \t]*\n", raw):
        blocks = re.split(r"\n[ \t]*\n", raw)
        return [" ".join(line.strip() for line in b.splitlines() if line.strip()) for b in blocks if b.strip()]
    return [line.strip() for line in raw.splitlines() if line.strip()]


def _read_jsonl(path: Path, field: str = "text") -> list[str]:
    texts = []
    for i, line in enumerate(read_text(path, "corpus file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LahisError(f"{path}:{i} is not valid JSON ({exc})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise LahisError(f"{path}:{i} has no string field '{field}' (each line must be an object like "
                             f'{{"{field}": "..."}})')
        if obj[field].strip():
            texts.append(obj[field].strip())
    return texts


def _estimate_tokens(text: str) -> int:
    # ~4 UTF-8 bytes per token in alphabetic scripts and ~1 token per CJK character (3 bytes): bytes/3.5
    return max(1, round(len(text.encode("utf-8")) / 3.5))


def join_lines(lines: Sequence[str], passage_tokens: int = 256, tokenizer=None) -> list[str]:
    """Join consecutive sentences into passages of about `passage_tokens` tokens (the last may be shorter)."""
    if passage_tokens < 2:
        raise LahisError(f"passage_tokens must be >= 2, got {passage_tokens}")
    count = (lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])) if tokenizer is not None else _estimate_tokens
    passages, current, size = [], [], 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        current.append(line)
        size += count(line)
        if size >= passage_tokens:
            passages.append(_join(current))
            current, size = [], 0
    if current:
        passages.append(_join(current))
    return passages


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def _join(sentences: list[str]) -> str:
    """Join sentences with spaces, except after Chinese/Japanese sentences (those scripts use no spaces)."""
    out = sentences[0]
    for prev, sentence in zip(sentences, sentences[1:]):
        out += ("" if _CJK.search(prev) else " ") + sentence
    return out


def _local_file(source: str, lang: str) -> Path:
    path = Path(source.replace("{lang}", lang)).expanduser()
    if path.is_dir():
        for name in (f"{lang}.txt", f"{lang}.jsonl"):
            if (path / name).is_file():
                return path / name
        have = sorted(p.stem for p in path.iterdir() if p.suffix in (".txt", ".jsonl") and _LANG_CODE.match(p.stem))
        raise LahisError(f"no text for language '{lang}' in {path} (expected {lang}.txt or {lang}.jsonl); "
                         f"languages there: {', '.join(have) or 'none'}")
    if not path.is_file():
        if os.path.lexists(path):  # something is there: a pipe, a device, a broken link - say which
            from ..core.fileio import check_input_file

            check_input_file(path, "corpus source")
        raise LahisError(f"corpus source not found: {path} (use 'wikipedia', 'embedded', a .txt/.jsonl file or a "
                         "directory of <lang>.txt files)")
    if path.suffix not in (".txt", ".jsonl"):
        raise LahisError(f"cannot read texts from '{path.suffix}' files ({path}): use .txt or .jsonl")
    return path


def check_source(source: str, lang: str) -> None:
    """Raise a LahisError now (before any model is loaded) if `source` cannot give texts of `lang`."""
    _check_lang(lang)
    src = str(source)
    if src == "embedded":
        if lang not in embedded_languages():
            raise LahisError(f"no embedded passages for language '{lang}'; embedded: {', '.join(embedded_languages())}. "
                             "Use source='wikipedia' or a local file for other languages.")
    elif src == "wikipedia" or src.startswith("wikipedia:"):
        return
    elif src == "ntrex":
        if lang not in NTREX_CODES:
            raise LahisError(f"no NTREX-128 text for language '{lang}'; NTREX languages here: {' '.join(sorted(NTREX_CODES))}")
    else:
        _local_file(src, lang)


def load_texts(source: str, lang: str, n: Optional[int] = None, seed: Optional[int] = 0, tokenizer=None,
               passage_tokens: int = 256, text_field: str = "text", min_chars: int = 1) -> list[str]:
    """Texts of language `lang` from `source` (see the module docstring), the first n shuffled with `seed`.

    Args:
        source: "wikipedia", "wikipedia:<date>" (another dump date), "ntrex", "embedded", or a local path.
        lang: language code (en, zh, hi, ...).
        n: number of texts (default: all local texts; 1000 Wikipedia articles).
        seed: shuffling seed (None keeps the source's order).
        tokenizer: counts tokens when joining NTREX-style lines into passages.
        passage_tokens: target passage length for line-per-sentence directories.
        text_field: the field of .jsonl records (and of the hub dataset) that holds the text.
        min_chars: drop texts shorter than this.
    """
    _check_lang(lang)
    src = str(source)
    check_source(src, lang)
    if src == "embedded":
        raw = (resources.files("lahis_ctrl.corpora") / "data" / "passages" / f"{lang}.txt").read_text(encoding="utf-8")
        texts = _split_passages(raw)
    elif src == "wikipedia" or src.startswith("wikipedia:"):
        date = src.split(":", 1)[1] if ":" in src else WIKIPEDIA_DATE
        texts = load_wikipedia(lang, n or DEFAULT_WIKIPEDIA_N, date=date, text_field=text_field)
    elif src == "ntrex":
        texts = join_lines(ntrex_lines(lang), passage_tokens, tokenizer)
    else:
        path = _local_file(src, lang)
        if path.suffix == ".jsonl":
            texts = _read_jsonl(path, text_field)
        elif Path(src.replace("{lang}", lang)).expanduser().is_dir():
            texts = join_lines(read_text(path, "corpus file").splitlines(), passage_tokens, tokenizer)
        else:
            texts = _split_passages(read_text(path, "corpus file"))
    texts = [t for t in texts if len(t) >= min_chars]
    texts = _take(texts, n, seed)
    if not texts:
        raise LahisError(f"no texts of language '{lang}' in {src}")
    return texts


def load_wikipedia(lang: str, n: int = DEFAULT_WIKIPEDIA_N, date: str = WIKIPEDIA_DATE,
                   text_field: str = "text") -> list[str]:
    """The first n articles of the hub's wikimedia/wikipedia `<date>.<lang>` dump, streamed (nothing else downloaded)."""
    import datasets
    config = f"{date}.{lang}"
    try:
        stream = datasets.load_dataset(WIKIPEDIA_DATASET, config, split="train", streaming=True)
        texts = []
        for row in stream:
            text = (row.get(text_field) or "").strip()
            if text:
                texts.append(text)
            if len(texts) >= n:
                break
    except Exception as exc:
        raise LahisError(f"could not stream {WIKIPEDIA_DATASET} config '{config}' from the hub ({exc}). Check the "
                         "language code and your connection, or pass a local .txt/.jsonl file as the source.") from exc
    return texts


def ntrex_lines(lang: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The 1997 NTREX-128 news sentences of `lang`: from `data_dir` (ntrex128/<lang>.txt, <lang>.txt or the
    upstream file name) or downloaded from the NTREX GitHub repository."""
    if lang not in NTREX_CODES:
        raise LahisError(f"unknown NTREX-128 language '{lang}': use one of {' '.join(sorted(NTREX_CODES))}")
    if data_dir is not None:
        base = Path(data_dir)
        for path in (base / "ntrex128" / f"{lang}.txt", base / f"{lang}.txt",
                     base / f"newstest2019-ref.{NTREX_CODES[lang]}.txt"):
            if path.is_file():
                return read_text(path, "NTREX-128 file").splitlines()
        raise LahisError(f"no NTREX-128 file for '{lang}' in {base}: expected ntrex128/{lang}.txt, {lang}.txt "
                         f"or newstest2019-ref.{NTREX_CODES[lang]}.txt (one sentence a line)")
    try:
        from datasets import load_dataset

        url = NTREX_URL.format(code=NTREX_CODES[lang])
        ds = load_dataset("text", data_files={"test": url}, split="test")
    except Exception as exc:
        raise LahisError(f"could not download NTREX-128 ({lang}) from GitHub ({type(exc).__name__}: {exc}); "
                         "set data_dir / LAHIS_DATA_DIR to a directory of <lang>.txt files") from exc
    return list(ds["text"])
