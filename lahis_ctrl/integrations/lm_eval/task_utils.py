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
    off-target outputs AMONG THE DECIDED ONES (the same figure as `lahis audit`'s off-target rate);
  * off_target_share: 1.0 for a decided off-target output, else 0.0 - aggregated with `mean`: the
    off-target outputs AMONG ALL OUTPUTS;
  * undetermined_share: 1.0 when the language could not be decided (too short, digits only, low
    confidence), aggregated with `mean`. Undecided outputs never count silently as on-target.
A rate counts among decided outputs, a share among all outputs, here as in every report of the package.

The Language Confusion Benchmark tasks (lcb_*): `lcb` (dataset), `LCBTask` / `lcb_context` (the prompt: chat
template or the benchmark's few-shot base-model format), `process_lcb` (per completion the benchmark's outcome,
eval.lcb.lcb_outcome) and the aggregations `lcb_lpr`, `lcb_wpr`, `lcb_lcpr` (eval.lcb.lcb_rates: per source,
then the mean over sources, as eval.lcb.lcb_report).
"""

from __future__ import annotations

import functools
import logging
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
        from ...core.fileio import check_input_dir

        check_input_dir(d, "data directory", "from data_dir / LAHIS_DATA_DIR")
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
    """{off_target_rate: 1/0/NaN, off_target_share: 1/0, undetermined_share: 1/0} for one output (see the module
    docstring)."""
    from ...eval.langid import normalize_lang

    pred = language_of(prediction, doc)
    if not pred.determined:
        return {"off_target_rate": NAN, "off_target_share": 0.0, "undetermined_share": 1.0}
    off = float(pred.lang != normalize_lang(target_lang))
    return {"off_target_rate": off, "off_target_share": off, "undetermined_share": 0.0}


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


# ------------------------------------------------------------------------------------------ LCB
# The tasks lcb_monolingual_<lang> / lcb_crosslingual_<lang> (tasks/lcb/). Prompt: with lm-eval's
# --apply_chat_template the benchmark's prompt is the user turn of the model's chat template (the paper's setting
# for chat models: no examples); otherwise the benchmark's base-model format ("Q: ...\nA:", corpora.lcb.
# base_model_prompt) after LCB_DEFAULT_SHOTS of its own few-shot examples (the paper's base-model results are
# one-shot; it uses five shots as a mitigation). Metrics: the benchmark's LPR/WPR/LCPR (eval.lcb), aggregated per
# task exactly as eval.lcb.lcb_report aggregates (per source, then the mean over sources), and the project's
# whole-text off-target metrics.
LCB_DEFAULT_SHOTS = 1  # few-shot examples in the base-model format (metadata lcb_shots)
LCB_DEFAULT_CHAT_SHOTS = 0  # examples as earlier chat turns under a chat template (metadata lcb_chat_shots)
LCB_MAX_SHOTS = 5  # the benchmark has five examples per task and language


def _lcb_shots(value, key: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        shots = int(value)
        ok = shots == float(value) and 0 <= shots <= LCB_MAX_SHOTS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise LahisError(f"{key} must be a whole number from 0 to {LCB_MAX_SHOTS} (the benchmark's few-shot examples "
                         f"per language), got {value!r}")
    return shots


def lcb(task: str, lang: str, start: int | None = None, end: int | None = None, **metadata: Any):
    """The benchmark's `task` prompts in `lang` as DatasetDict({'test': ...}) (corpora.lcb.load_lcb; sources in the
    benchmark's order, items [start:end]).

    Each row: ``id`` (``<task>/<folder>/<lang>/<i>``), ``prompt``, ``source``, ``folder``, ``language``, ``task``
    (and ``location``, ``phrasing`` for crosslingual), ``data_dir`` (where the few-shot examples are read; None =
    the benchmark's public files), ``lcb_shots`` / ``lcb_chat_shots`` (metadata, defaults 1 / 0) and the lid_*
    settings. The few-shot examples are checked here, so that a bad setting fails before any generation.
    """
    from ...corpora.lcb import few_shot_examples, load_lcb

    data_dir = _data_dir(metadata)
    shots = _lcb_shots(metadata.get("lcb_shots"), "lcb_shots", LCB_DEFAULT_SHOTS)
    chat_shots = _lcb_shots(metadata.get("lcb_chat_shots"), "lcb_chat_shots", LCB_DEFAULT_CHAT_SHOTS)
    if max(shots, chat_shots):
        few_shot_examples(task, lang, data_dir)  # readable, and has this language
    lid = _lid_fields(metadata)
    rows, seen = [], {}
    for r in load_lcb(task, lang, data_dir):
        i = seen[r["folder"]] = seen.get(r["folder"], -1) + 1
        rows.append({"id": f"{task}/{r['folder']}/{lang}/{i}", **r,
                     "data_dir": None if data_dir is None else str(data_dir), "lcb_shots": shots,
                     "lcb_chat_shots": chat_shots, **lid})
    return _dataset_dict("test", _slice(rows, start, end))


def lcb_prompt(doc: dict) -> str:
    """The benchmark's prompt as the user wrote it (the user turn under a chat template)."""
    return doc["prompt"]


def lcb_context(doc: dict, num_fewshot: int | None = None, chat_template=None,
                system_instruction: str | None = None) -> str:
    """The text the model continues for one LCB document.

    chat_template (lm-eval's, when --apply_chat_template is on): the few-shot examples as earlier user/assistant
    turns (``lcb_chat_shots``, default 0) and the prompt as the last user turn, rendered by the model's template.
    Without it: the benchmark's base-model format ``Q: ...\\nA: ...\\n\\nQ: <prompt>\\nA:`` with ``lcb_shots``
    examples (default 1). lm-eval's --num_fewshot k, k >= 1, overrides both counts; lm-eval reports an unset
    --num_fewshot as 0, so 0 means "the task's defaults" (for no examples in the base format set lcb_shots=0).
    Examples are the benchmark's own (corpora.lcb.few_shot_examples), never other test items.
    """
    from ...corpora.lcb import base_model_prompt, chat_turns

    chat = chat_template is not None
    if num_fewshot:
        shots = _lcb_shots(num_fewshot, "--num_fewshot", LCB_DEFAULT_SHOTS)
    elif chat:
        shots = _lcb_shots(doc.get("lcb_chat_shots"), "lcb_chat_shots", LCB_DEFAULT_CHAT_SHOTS)
    else:
        shots = _lcb_shots(doc.get("lcb_shots"), "lcb_shots", LCB_DEFAULT_SHOTS)
    messages = chat_turns(doc["prompt"], doc["task"], doc["language"], shots, doc.get("data_dir"))
    if chat:
        if system_instruction:
            messages = [{"role": "system", "content": system_instruction}, *messages]
        return chat_template(messages, add_generation_prompt=True)
    prompt = base_model_prompt(messages)
    return f"{system_instruction}\n\n{prompt}" if system_instruction else prompt


def _lcb_identifier(doc: dict):
    """The LCB line language ID for a document: the lid_backend / lid_model of its metadata, else lid.176.ftz."""
    from ...eval.lcb import lcb_identifier

    if not (doc.get("lid_backend") or doc.get("lid_model")):
        return lcb_identifier(None)
    from ...eval.langid import get_identifier

    return lcb_identifier(get_identifier(backend=doc.get("lid_backend") or None,
                                         model_path=doc.get("lid_model") or None))


def process_lcb(doc: dict, results: list[str]) -> dict[str, Any]:
    """lcb_*: the completion's LCB outcome (eval.lcb.lcb_outcome: language, source, skipped, line_error,
    word_error) for lpr / lcpr (and wpr in ar hi ja ko ru zh), aggregated by lcb_lpr / lcb_wpr / lcb_lcpr; and the
    whole-text off-target metrics of the text before the first "\\nQ:"."""
    from ...eval.lcb import WPR_LANGUAGES, lcb_completion, lcb_outcome, whole_text

    text = results[0]
    lang = doc["language"]
    outcome = lcb_outcome(lcb_completion(text, lang, _lcb_identifier(doc)), doc["source"])
    out: dict[str, Any] = {"lpr": outcome, "lcpr": outcome}
    if lang in WPR_LANGUAGES:
        out["wpr"] = outcome
    out.update(off_target(whole_text(text), lang, doc))
    return out


def _scored_rates(items: list[dict], metric: str) -> dict | None:
    """lcb_rates of a task's outcomes, or None (after a warning that says so) when not one completion could be
    scored: the benchmark's empty-denominator rule would report a pass rate of 1.0 for n = 0, which lm-eval's table
    would show as a perfect score. The metric is then NaN, and the log says why."""
    from ...eval.lcb import lcb_rates

    rates = lcb_rates(items)
    if rates["n_scored"] == 0:
        logging.getLogger("lahis_ctrl").warning(
            "LCB %s: none of the %d completions could be scored (n = 0: every one was empty or skipped), so %s is "
            "reported as NaN, not as the benchmark's empty-denominator 1.0", metric, rates["n"], metric)
        return None
    return rates


def lcb_lpr(items: list[dict]) -> float:
    """Line-level pass rate of a task's outcomes: per source 1 - line errors / scored, then the mean over sources
    (NaN, with a warning, when nothing could be scored)."""
    rates = _scored_rates(items, "lpr")
    return NAN if rates is None else rates["lpr"]


def lcb_wpr(items: list[dict]) -> float:
    """Word-level pass rate (ar hi ja ko ru zh): per source 1 - word errors / scored without line errors, then the
    mean over sources; NaN for other languages (their tasks do not report it) and when nothing could be scored."""
    rates = _scored_rates(items, "wpr")
    return NAN if rates is None or rates["wpr"] is None else rates["wpr"]


def lcb_lcpr(items: list[dict]) -> float:
    """Language confusion pass rate: harmonic mean of the task's LPR and WPR (its LPR where WPR is undefined); NaN
    when nothing could be scored."""
    rates = _scored_rates(items, "lcpr")
    return NAN if rates is None else rates["lcpr"]


@functools.lru_cache(maxsize=1)
def _lcb_task_class():
    from lm_eval.api.task import ConfigurableTask

    class LCBTask(ConfigurableTask):
        """lm-eval's ConfigurableTask with the LCB prompt (`lcb_context`): the model's chat template when lm-eval
        applies one, else the benchmark's few-shot base-model format. Nothing model-specific: it runs the same
        under lahis_hf, lahis_vllm and lm-eval's own model types."""

        def __init__(self, *args, config: dict | None = None, **kwargs):
            if config is not None:  # lm-eval hands over the YAML's `class` key with the rest of the config
                config = {k: v for k, v in config.items() if k != "class"}
            super().__init__(*args, config=config, **kwargs)

        def fewshot_docs(self):
            return None  # examples come from the benchmark's few-shot file, never from the test items

        def fewshot_context(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                            fewshot_as_multiturn=False, chat_template=None, gen_prefix=None, **kwargs):
            return lcb_context(doc, self.config.num_fewshot, chat_template if apply_chat_template else None,
                               system_instruction)

    LCBTask.__module__ = __name__
    LCBTask.__qualname__ = "LCBTask"
    return LCBTask


def __getattr__(name: str):
    # LCBTask subclasses lm-eval's task class: built on first use, so importing this module needs no lm_eval
    if name == "LCBTask":
        return _lcb_task_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
