"""QA metrics: the paper's substring accuracy and SQuAD v1.1 exact match / F1. Standard library only
(lm-eval tasks import this module; keep it dependency-free and fast).

SQuAD v1.1 normalisation (as in the official evaluate-v1.1.py): lowercase, drop ASCII punctuation
(Python's string.punctuation), drop the English articles a/an/the, collapse whitespace. F1 is over
whitespace tokens. What that means for other languages:
  * punctuation outside ASCII (Chinese/Japanese 。，「」, Arabic ، ؟, Hindi danda ।, Spanish ¿ ¡, Greek ;)
    is kept, so "北京。" != "北京";
  * only English articles are removed (German "der", Spanish "el" count as words);
  * Chinese and Thai are written without spaces, so a whole answer is one token and F1 collapses to
    exact match (0 or 1 per item) for them;
  * lowercasing is Unicode-aware (str.lower), so Cyrillic/Greek/Latin-extended case is folded.
This is what the SQuAD script (and transformers' old squad_metrics, which lm-eval's xquad task used)
did; MLQA-style language-aware normalisation is deliberately not mixed in, so numbers stay comparable.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Sequence

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1: lower, remove punctuation, remove articles, fix whitespace (in that order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1_one(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: str | Sequence[str]) -> float:
    """Token F1 (SQuAD v1.1), the maximum over the gold answers."""
    golds = _golds(golds)
    return max((_f1_one(prediction, g) for g in golds), default=0.0)


def _paper_gold(gold: str) -> str:
    gold = gold.strip().lower()
    return gold[:-1].rstrip() if gold.endswith(".") else gold


def contains(prediction: str, golds: str | Sequence[str]) -> float:
    """The paper's accuracy: 1.0 if a lowercased gold answer (one trailing '.' removed) is a substring of
    the lowercased prediction. `prediction` must be the continuation decoded from the generated token
    ids alone: a prompt that contains the answer would otherwise always count as correct.
    Empty gold answers never match."""
    pred = prediction.lower()
    return float(any(g and g in pred for g in map(_paper_gold, _golds(golds))))


METRICS = {"accuracy": contains, "exact_match": exact_match, "f1": f1}


def score_all(prediction: str, golds: str | Sequence[str]) -> dict[str, float]:
    """{accuracy, exact_match, f1} of one prediction."""
    return {name: fn(prediction, golds) for name, fn in METRICS.items()}
