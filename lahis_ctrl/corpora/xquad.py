"""XQuAD (and any SQuAD-format QA file) as flat rows, plus the reference train/test split.

Rows are dicts {id, context, question, answers: {text: [...], answer_start: [...]}} in file order, which
is the order of the hub dataset `google/xquad` (config `xquad.<lang>`, split `validation`). The hub copy
was built from the same JSON files by a loader that strips surrounding whitespace from the context, the
question and each answer text (answer_start is kept as written); the local loader does the same, so
both sources give identical rows.

Sources, in order of precedence: an explicit `data_dir`; env `LAHIS_DATA_DIR`; the hub.
`data_dir` may be a directory holding `xquad.<lang>.json`, or one holding `xquad/xquad.<lang>.json`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import LahisError
from ..core.fileio import read_json

XQUAD_LANGS: tuple[str, ...] = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
HUB_ID = "google/xquad"


def check_lang(lang: str, valid: Sequence[str] = XQUAD_LANGS, what: str = "XQuAD") -> str:
    if lang not in valid:
        raise LahisError(f"unknown language '{lang}' for {what}: use one of {' '.join(valid)}")
    return lang


def _flat_rows(squad: dict, source: str) -> list[dict]:
    """SQuAD v1.1 JSON (data[].paragraphs[].qas[]) -> flat rows, in file order."""
    try:
        articles = squad["data"]
        rows = []
        for article in articles:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"].strip()
                for qa in paragraph["qas"]:
                    rows.append({
                        "id": str(qa["id"]),
                        "context": context,
                        "question": qa["question"].strip(),
                        "answers": {
                            "text": [a["text"].strip() for a in qa["answers"]],
                            "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                        },
                    })
    except (KeyError, TypeError) as exc:
        raise LahisError(f"{source} is not in SQuAD v1.1 format (data[].paragraphs[].qas[]): missing {exc}") from exc
    return rows


def load_squad_file(path: str | os.PathLike) -> list[dict]:
    """Flat rows of one SQuAD-format JSON file."""
    return _flat_rows(read_json(path, "file"), str(path))


def _local_file(lang: str, data_dir: Path) -> Path:
    for candidate in (data_dir / f"xquad.{lang}.json", data_dir / "xquad" / f"xquad.{lang}.json"):
        if candidate.is_file():
            return candidate
    raise LahisError(
        f"no XQuAD file for '{lang}' in {data_dir}: expected {data_dir}/xquad.{lang}.json or "
        f"{data_dir}/xquad/xquad.{lang}.json (SQuAD v1.1 JSON from github.com/google-deepmind/xquad)"
    )


def rows_from_dataset(dataset) -> list[dict]:
    """Rows of a `datasets.Dataset` with XQuAD's columns, as plain dicts of the same shape as the local loader's."""
    return [{"id": str(r["id"]), "context": r["context"], "question": r["question"],
             "answers": {"text": list(r["answers"]["text"]), "answer_start": [int(s) for s in r["answers"]["answer_start"]]}}
            for r in dataset]


def load_xquad(lang: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """All 1190 XQuAD rows of `lang`, in hub order.

    data_dir: a directory with `xquad.<lang>.json` (or `xquad/xquad.<lang>.json`); default env
    LAHIS_DATA_DIR when set, else the hub dataset google/xquad.
    """
    check_lang(lang)
    if data_dir is None and os.environ.get("LAHIS_DATA_DIR"):
        data_dir = os.environ["LAHIS_DATA_DIR"]
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            from ..core.fileio import check_input_dir

            check_input_dir(data_dir, "XQuAD data directory")
        return load_squad_file(_local_file(lang, data_dir))
    try:
        from datasets import load_dataset

        dataset = load_dataset(HUB_ID, f"xquad.{lang}", split="validation")
    except Exception as exc:  # offline, hub down, or datasets missing: say how to use local files instead
        raise LahisError(
            f"could not load {HUB_ID} (xquad.{lang}) from the hub ({type(exc).__name__}: {exc}). "
            "Pass a local directory of SQuAD-format files (xquad.<lang>.json) with --data / data_dir, "
            "or set LAHIS_DATA_DIR."
        ) from exc
    return rows_from_dataset(dataset)


@dataclass(frozen=True)
class SplitSpec:
    """Which rows train and test a soft mask. Defaults are the reference's: train = 200 of items
    [0:390] shuffled with seed 68, test = items [390:1190]."""

    train_start: int = 0
    train_end: int = 390
    train_size: int | None = 200  # None: all of [train_start:train_end]
    seed: int = 68
    test_start: int = 390
    test_end: int | None = 1190  # None: to the end
    test_size: int | None = None  # None: all of [test_start:test_end]; else its first test_size rows


REFERENCE_SPLIT = SplitSpec()


def reference_split(rows: Sequence[dict], spec: SplitSpec = REFERENCE_SPLIT) -> tuple[list[dict], list[dict]]:
    """(train, test) rows. The train range is shuffled with random.Random(seed) and cut to train_size;
    the test rows keep file order. Overlapping ranges are refused (test items must be held out)."""
    rows = list(rows)
    train_end = min(spec.train_end, len(rows))
    test_end = len(rows) if spec.test_end is None else min(spec.test_end, len(rows))
    if spec.train_start < test_end and spec.test_start < train_end:
        raise LahisError(
            f"train items [{spec.train_start}:{spec.train_end}] overlap test items [{spec.test_start}:{spec.test_end}]: "
            "the test split must be held out"
        )
    train = rows[spec.train_start:train_end]
    random.Random(spec.seed).shuffle(train)
    if spec.train_size is not None:
        train = train[:spec.train_size]
    test = rows[spec.test_start:test_end]
    if spec.test_size is not None:
        test = test[:spec.test_size]
    return train, test


def select(rows: Sequence[dict], split: str, spec: SplitSpec = REFERENCE_SPLIT) -> list[dict]:
    """One side of the split ('train' or 'test'), or 'all'; an empty result is an error."""
    if split == "all":
        chosen = list(rows)
    elif split in ("train", "test"):
        chosen = reference_split(rows, spec)[0 if split == "train" else 1]
    else:
        raise LahisError(f"unknown split '{split}': use train, test or all")
    if not chosen:
        raise LahisError(
            f"the {split} split is empty ({len(rows)} rows, split {spec}); check the split ranges against the data"
        )
    return chosen


# ---------------------------------------------------------------- the embedded sample
EMBEDDED_DIR = Path(__file__).parent / "data" / "qa"
# The embedded sample has 20 items per language (5 paragraphs x 4 questions); paragraphs 1-2 train,
# paragraphs 3-5 test, so test questions are about texts the mask never saw.
EMBEDDED_SPLIT = SplitSpec(train_start=0, train_end=8, train_size=None, seed=68, test_start=8, test_end=None)


def embedded_langs() -> list[str]:
    return sorted(p.name.split(".")[1] for p in EMBEDDED_DIR.glob("qa.*.json"))


def load_embedded_qa(lang: str) -> list[dict]:
    """The small QA sample shipped with the package (written for it; SQuAD format)."""
    check_lang(lang, embedded_langs(), "the embedded QA sample")
    return load_squad_file(EMBEDDED_DIR / f"qa.{lang}.json")


def load_qa(lang: str, data: str | os.PathLike | None = None) -> tuple[list[dict], SplitSpec]:
    """Rows and their default split: data='embedded' for the shipped sample, else XQuAD (load_xquad)."""
    if data is not None and str(data) == "embedded":
        return load_embedded_qa(lang), EMBEDDED_SPLIT
    return load_xquad(lang, data), REFERENCE_SPLIT
