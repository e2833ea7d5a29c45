"""Language-specific and language-general heads from several languages' LAHIS scores.

Rule (the reference's, generalised):
  * kept(lang) = heads whose score is above the q quantile of that language's [layers, heads] matrix
    (q = 0.96 keeps the top ~4%), ranked by score;
  * a head kept by at least `min_rep` languages is language-GENERAL;
  * the other kept heads of a language are its language-SPECIFIC heads, ranked by score.
The reference run used 5 languages and min_rep = 4. The default here is min_rep = ceil(0.8 * languages),
at least 2: 4 of 5 as in the reference, 2 of 2, 3 of 3, 7 of 8.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from .errors import LahisError, MaskMismatchError

RULE = ("kept(lang) = heads with score > quantile(scores[lang], q); general = heads kept by >= min_rep languages; "
        "specific(lang) = kept(lang) minus general, ranked by score")


def default_min_rep(num_languages: int) -> int:
    return max(2, math.ceil(0.8 * num_languages))


def _matrices(scores_by_lang: Mapping[str, object]) -> tuple[dict[str, torch.Tensor], dict]:
    from .scoring import HeadScores

    if not scores_by_lang:
        raise LahisError("no languages to classify: pass {lang: HeadScores or [layers, heads] tensor}")
    mats, facts = {}, {}
    first: Optional[HeadScores] = None
    for lang, s in scores_by_lang.items():
        if isinstance(s, HeadScores):
            if first is None:
                first = s
                facts = {"model_name": s.model_name, "model_type": s.model_type, "head_dim": s.head_dim,
                         "num_kv_heads": s.num_kv_heads, "mode": s.mode}
            elif (s.model_type, s.head_dim, s.shape) != (first.model_type, first.head_dim, first.shape):
                raise MaskMismatchError(f"scores of '{lang}' ({s.model_type} {s.shape[0]}x{s.shape[1]}) and of "
                                        f"'{first.language}' ({first.model_type} {first.shape[0]}x{first.shape[1]}) "
                                        "come from different models")
            t = s.scores
        else:
            t = torch.as_tensor(s, dtype=torch.float32)
        if t.dim() != 2:
            raise MaskMismatchError(f"scores of '{lang}' must be a [layers, heads] matrix, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise LahisError(f"scores of '{lang}' contain NaN or inf")
        mats[lang] = t.float()
    shapes = {tuple(t.shape) for t in mats.values()}
    if len(shapes) != 1:
        raise MaskMismatchError(f"the languages' score matrices have different shapes {sorted(shapes)}: "
                                "they must come from the same model")
    return mats, facts


def kept_heads(scores: torch.Tensor, q: float = 0.96) -> tuple[list[tuple[int, int]], float]:
    """Heads above the q quantile of `scores` [layers, heads], best first, and the threshold."""
    if not 0.0 <= q < 1.0:
        raise LahisError(f"q must be in [0, 1), got {q}")
    flat = scores.flatten()
    threshold = float(torch.quantile(flat.double(), q))
    order = torch.sort(-flat, stable=True).indices
    heads = scores.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in order if float(flat[i]) > threshold], threshold


def classify_heads(scores_by_lang: Mapping[str, object], q: float = 0.96, min_rep: Optional[int] = None) -> dict:
    """Split each language's top heads into language-specific and language-general ones (JSON-able dict).

    Args:
        scores_by_lang: {lang: HeadScores or [layers, heads] tensor}, all of the same model.
        q: quantile above which a language keeps a head (0.96: top ~4%).
        min_rep: a head kept by at least this many languages is general (default ceil(0.8 * languages), >= 2).

    Returns {"rule", "q", "min_rep", "languages", "shape", "model", "general": [{layer, head, languages}],
    "per_language": {lang: {"threshold", "kept": [...], "specific": [{rank, layer, head, score}]}}}.
    """
    mats, facts = _matrices(scores_by_lang)
    langs = list(mats)
    explicit = min_rep is not None
    if min_rep is None:
        min_rep = default_min_rep(len(langs))  # one language: 2 > 1, so every kept head is specific
    if min_rep < 1:
        raise LahisError(f"min_rep must be >= 1, got {min_rep}")
    if explicit and min_rep > len(langs):
        raise LahisError(f"min_rep={min_rep} but only {len(langs)} languages were given: no head could be general")
    kept = {}
    thresholds = {}
    for lang, t in mats.items():
        kept[lang], thresholds[lang] = kept_heads(t, q)
    votes: dict[tuple[int, int], list[str]] = {}
    for lang in langs:
        for head in kept[lang]:
            votes.setdefault(head, []).append(lang)
    general = sorted(h for h, v in votes.items() if len(v) >= min_rep)
    general_set = set(general)
    per_language = {}
    for lang in langs:
        t = mats[lang]
        specific = [h for h in kept[lang] if h not in general_set]
        per_language[lang] = {
            "threshold": thresholds[lang],
            "kept": [{"layer": l, "head": h, "score": float(t[l, h])} for l, h in kept[lang]],
            "specific": [{"rank": r + 1, "layer": l, "head": h, "score": float(t[l, h])}
                         for r, (l, h) in enumerate(specific)],
        }
    return {
        "rule": RULE,
        "q": q,
        "min_rep": min_rep,
        "languages": langs,
        "shape": list(next(iter(mats.values())).shape),
        "model": facts,
        "general": [{"layer": l, "head": h, "languages": votes[(l, h)]} for l, h in general],
        "per_language": per_language,
    }


def specific_heads(classification: dict, lang: str) -> list[tuple[int, int]]:
    """The ranked language-specific heads of `lang` from a classify_heads result."""
    try:
        return [(d["layer"], d["head"]) for d in classification["per_language"][lang]["specific"]]
    except KeyError:
        raise LahisError(f"language '{lang}' is not in the classification "
                         f"({', '.join(classification.get('languages', []))})") from None


def top_specific_heads(scores_by_lang: Mapping[str, object], lang: str, k: int, q: float = 0.96,
                       min_rep: Optional[int] = None) -> list[tuple[int, int]]:
    """The k best heads of `lang` that are not language-general (the q-quantile rule decides which are general).

    Unlike `specific_heads`, this goes past the q quantile when k is larger than the kept set.
    """
    mats, _ = _matrices(scores_by_lang)
    if lang not in mats:
        raise LahisError(f"no scores for language '{lang}' (have {', '.join(mats)})")
    c = classify_heads(scores_by_lang, q=q, min_rep=min_rep) if len(mats) > 1 else {"general": []}
    general = {(g["layer"], g["head"]) for g in c["general"]}
    t = mats[lang]
    order = torch.sort(-t.flatten(), stable=True).indices
    heads = t.shape[1]
    ranked = [(int(i) // heads, int(i) % heads) for i in order]
    return [h for h in ranked if h not in general][:k]


def score_paths(scores: Union[str, Path, list]) -> list[Path]:
    """Score files named by a folder (every *.safetensors in it but checkpoints), a glob, a comma-separated
    list, or a list of paths."""
    import glob

    if isinstance(scores, (list, tuple)):
        items = [str(x) for x in scores]
    else:
        items = [x.strip() for x in str(scores).split(",") if x.strip()]
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += sorted(q for q in p.glob("*.safetensors") if not q.name.endswith(".ckpt.safetensors"))
        elif any(c in item for c in "*?["):
            paths += sorted(Path(q) for q in glob.glob(str(p)) if not q.endswith(".ckpt.safetensors"))
        else:
            paths.append(p)
    if not paths:
        raise LahisError(f"no score files found in {scores!r}: give a folder written by `lahis score`, a glob "
                         "such as 'runs/scores/*.safetensors', or comma-separated files")
    return paths


def load_scores(paths: Union[str, Path, list]) -> dict:
    """{lang: HeadScores} from score files (see score_paths); the language comes from each file's metadata,
    else its name."""
    from .scoring import HeadScores

    out = {}
    for p in score_paths(paths):
        s = HeadScores.load(p)
        lang = s.language or Path(p).stem
        if lang in out:
            raise LahisError(f"two score files for language '{lang}' ({p})")
        out[lang] = s
    return out


def format_classification(c: dict) -> str:
    """Human-readable summary of a classify_heads result (heads written LxHy, scores in brackets)."""
    lines = [f"rule: heads above the {c['q']} quantile per language; general = kept by >= {c['min_rep']} of "
             f"{len(c['languages'])} languages",
             "general: " + (", ".join(f"L{g['layer']}H{g['head']} ({'/'.join(g['languages'])})" for g in c["general"])
                            or "none")]
    for lang, d in c["per_language"].items():
        spec = ", ".join(f"L{s['layer']}H{s['head']} ({s['score']:.3g})" for s in d["specific"]) or "none"
        lines.append(f"{lang}: specific: {spec}")
    return "\n".join(lines)


def heads(scores: str, q: float = 0.96, min_rep: Optional[int] = None, out: Optional[Path] = None) -> None:
    """Classify heads as language-specific or language-general from several languages' score files.

    Args:
        scores: score files written by `lahis score` (one per language, same model): their folder, a glob such as
            'runs/scores/*.safetensors', or comma-separated files.
        q: quantile above which a language keeps a head (0.96 keeps the top ~4%).
        min_rep: a head kept by at least this many languages is general (default ceil(0.8 x languages), >= 2).
        out: write the classification as JSON here (default: print only).
    """
    from .fileio import write_json

    c = classify_heads(load_scores(scores), q=q, min_rep=min_rep)
    print(format_classification(c))
    if out is not None:
        write_json(out, c)
        print(f"wrote {out}")
