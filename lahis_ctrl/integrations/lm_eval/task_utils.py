"""The Python side of the lm-eval tasks in `tasks/` (referenced from their YAMLs with `!function`).

Datasets (`custom_dataset`): lm-eval calls them with the task's metadata, the run's model_args and
`--metadata`, and the task's `dataset_kwargs` as keyword arguments. Data come from the hub by default;
a local directory is used when `data_dir` is given (`--metadata '{"data_dir": "..."}'`) or
LAHIS_DATA_DIR is set. Each document also carries its target language (`lang`) and the language-ID
settings (`lid_*`, from metadata) that its off-target metric uses.

Metrics (`process_results`): the project's EM/F1/contains (qa_metrics), chrF items for sacrebleu, and
per sample the language of the output (langid):
  * off_target_rate: 1.0 when the output's language was decided and is not the target language, 0.0
    when it is, NaN when it could not be decided - aggregated with lm-eval's `nanmean`, so it is the
    share of off-target outputs AMONG THE DETERMINED ONES;
  * undetermined_rate: 1.0 when the language could not be decided (too short, digits only, low
    confidence), aggregated with `mean`. Undecided outputs never count silently as on-target.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...corpora.texts import ntrex_lines  # one NTREX-128 reader for corpora and tasks
from ...core.errors import LahisError

NAN = float("nan")

# metadata keys -> get_identifier arguments
LID_KEYS = ("lid_backend", "lid_model", "lid_min_confidence", "lid_min_chars")

NTREX_LANGS = ("ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
# English names for the translation prompt (lm-eval's translation tasks: "<src> phrase: ...\n<tgt> phrase:")
LANG_NAMES = {"ar": "Arabic", "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "hi": "Hindi",
              "ro": "Romanian", "ru": "Russian", "th": "Thai", "tr": "Turkish", "vi": "Vietnamese", "zh": "Chinese",
              "fr": "French", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish",
              "pt": "Portuguese", "uk": "Ukrainian", "fa": "Persian", "he": "Hebrew", "id": "Indonesian",
              "bn": "Bengali", "sw": "Swahili"}


# ------------------------------------------------------------------------------------------ datasets
def _lid_fields(metadata: dict) -> dict:
    return {k: (None if metadata.get(k) is None else str(metadata[k])) for k in LID_KEYS}


def _dataset_dict(split: str, rows: list[dict]):
    from datasets import Dataset, DatasetDict

    if not rows:
        raise LahisError(f"the '{split}' split is empty: check the item range and the data")
    return DatasetDict({split: Dataset.from_list(rows)})


def _data_dir(metadata: dict) -> str | None:
    d = metadata.get("data_dir") or os.environ.get("LAHIS_DATA_DIR") or None
    if d is not None and not Path(d).is_dir():
        raise LahisError(f"data directory not found: {d} (from data_dir / LAHIS_DATA_DIR)")
    return d


def _xquad_rows(lang: str, data_dir: str | None) -> list[dict]:
    from ...corpora.xquad import load_xquad

    return load_xquad(lang, data_dir)


def _slice(rows: list, start, end) -> list:
    start = 0 if start is None else int(start)
    end = None if end is None else int(end)
    return rows[start:end]


def xquad(lang: str, start: int | None = None, end: int | None = None, split: str = "validation",
          **metadata: Any):
    """XQuAD rows of `lang` (all 1190 by default, or items [start:end]) as DatasetDict({split: ...})."""
    rows = _slice(_xquad_rows(lang, _data_dir(metadata)), start, end)
    lid = _lid_fields(metadata)
    return _dataset_dict(split, [{**r, "lang": lang, **lid} for r in rows])


def xquad_xling(lang: str, context_lang: str = "en", split: str = "validation", **metadata: Any):
    """Question in `lang`, context in `context_lang` (same item id), gold answers of `lang`.

    `answers_context_lang` keeps the gold answer of the context's language, to see how often the model
    copies the answer from the context instead of answering in the question's language.
    """
    if lang == context_lang:
        raise LahisError(f"xquad_xling needs a question language other than the context's ({context_lang})")
    data_dir = _data_dir(metadata)
    by_id = {r["id"]: r for r in _xquad_rows(context_lang, data_dir)}
    lid = _lid_fields(metadata)
    rows = []
    for r in _xquad_rows(lang, data_dir):
        other = by_id.get(r["id"])
        if other is None:
            raise LahisError(f"XQuAD item {r['id']} of '{lang}' has no '{context_lang}' counterpart: the files "
                             "must be the parallel XQuAD files")
        rows.append({**r, "context": other["context"], "context_lang": context_lang,
                     "answers_context_lang": other["answers"]["text"], "lang": lang, **lid})
    return _dataset_dict(split, rows)


def ntrex(lang: str, source_lang: str = "en", start: int | None = None, end: int | None = None,
          **metadata: Any):
    """NTREX-128 sentence pairs source_lang -> lang (1997 news sentences) as DatasetDict({'test': ...})."""
    data_dir = _data_dir(metadata)
    src, ref = ntrex_lines(source_lang, data_dir), ntrex_lines(lang, data_dir)
    if len(src) != len(ref):
        raise LahisError(f"NTREX-128 files are not parallel: {len(src)} {source_lang} lines vs {len(ref)} {lang} lines")
    lid = _lid_fields(metadata)
    rows = [{"id": i, "source": s, "reference": t, "source_lang": source_lang, "lang": lang,
             "source_name": LANG_NAMES.get(source_lang, source_lang), "target_name": LANG_NAMES.get(lang, lang),
             **lid} for i, (s, t) in enumerate(zip(src, ref))]
    return _dataset_dict("test", _slice(rows, start, end))


# ------------------------------------------------------------------------------------------ prompts
def xquad_prompt(doc: dict) -> str:
    """lm-eval's built-in xquad_<lang> prompt (prompts.LM_EVAL_TEMPLATES), in the document's language."""
    from ...corpora.prompts import format_prompt

    return format_prompt(doc, doc["lang"], style="lm_eval")


def paper_prompt(doc: dict) -> str:
    """The paper's prompt (prompts.PAPER_TEMPLATES) in the document's language."""
    from ...corpora.prompts import format_prompt

    return format_prompt(doc, doc["lang"], style="paper")


def first_answer(doc: dict) -> str:
    return doc["answers"]["text"][0]


# ------------------------------------------------------------------------------------------ metrics
def language_of(text: str, doc: dict | None = None):
    """LangPrediction of `text` with the document's language-ID settings (metadata lid_*), else the defaults."""
    from ...eval.langid import get_identifier

    doc = doc or {}
    kwargs = {}
    if doc.get("lid_backend"):
        kwargs["backend"] = doc["lid_backend"]
    if doc.get("lid_model"):
        kwargs["model_path"] = doc["lid_model"]
    if doc.get("lid_min_confidence") is not None:
        kwargs["min_confidence"] = float(doc["lid_min_confidence"])
    if doc.get("lid_min_chars") is not None:
        kwargs["min_chars"] = int(doc["lid_min_chars"])
    return get_identifier(**kwargs).predict_one(text)


def off_target(prediction: str, target_lang: str, doc: dict | None = None) -> dict[str, float]:
    """{off_target_rate: 1/0/NaN, undetermined_rate: 1/0} for one output (see the module docstring)."""
    from ...eval.langid import normalize_lang

    pred = language_of(prediction, doc)
    if not pred.determined:
        return {"off_target_rate": NAN, "undetermined_rate": 1.0}
    return {"off_target_rate": float(pred.lang != normalize_lang(target_lang)), "undetermined_rate": 0.0}


def process_xquad(doc: dict, results: list[str]) -> dict[str, float]:
    """xquad_<lang>: SQuAD EM / F1 (as lm-eval's built-in task), the paper's `contains`, off-target."""
    from ...eval.qa_metrics import contains, exact_match, f1

    pred = results[0]
    golds = doc["answers"]["text"]
    return {"exact_match": exact_match(pred, golds), "f1": f1(pred, golds), "contains": contains(pred, golds),
            **off_target(pred, doc["lang"], doc)}


def process_xquad_lahis(doc: dict, results: list[str]) -> dict[str, float]:
    """xquad_lahis_<lang>: the paper's accuracy (`contains` on 10 new tokens) and off-target."""
    from ...eval.qa_metrics import contains

    pred = results[0]
    return {"contains": contains(pred, doc["answers"]["text"]), **off_target(pred, doc["lang"], doc)}


def process_xquad_xling(doc: dict, results: list[str]) -> dict[str, float]:
    """xquad_xling_<lang>: process_xquad plus `contains_context_lang` (answered with the context's gold)."""
    from ...eval.qa_metrics import contains

    out = process_xquad(doc, results)
    out["contains_context_lang"] = contains(results[0], doc["answers_context_lang"])
    return out


def process_translation(doc: dict, results: list[str]) -> dict[str, Any]:
    """ntrex_en_<lang>: (reference, hypothesis) for corpus chrF, and off-target."""
    hyp = results[0].strip()
    return {"chrf": (doc["reference"], hyp), **off_target(hyp, doc["lang"], doc)}

