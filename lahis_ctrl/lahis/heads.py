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
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import torch

from ..core.errors import LahisError, MaskMismatchError

FORMAT = "lahis-heads/1"
RULE = ("kept(lang) = heads with score > quantile(scores[lang], q); general = heads kept by >= min_rep languages; "
        "specific(lang) = kept(lang) minus general, ranked by score")


def default_min_rep(num_languages: int) -> int:
    return max(2, math.ceil(0.8 * num_languages))


def _matrices(scores_by_lang: Mapping[str, object]) -> tuple[dict[str, torch.Tensor], dict]:
    from .scores import HeadScores

    if not isinstance(scores_by_lang, Mapping):
        raise TypeError("scores_by_lang must be a mapping {language: HeadScores or [layers, heads] tensor}, e.g. "
                        f"load_scores('runs/scores'); got a {type(scores_by_lang).__name__}")
    if not scores_by_lang:
        raise LahisError("no languages to classify: pass {lang: HeadScores or [layers, heads] tensor}")
    mats, facts = {}, {}
    first: Optional[HeadScores] = None
    for lang, s in scores_by_lang.items():
        if not isinstance(lang, str):
            raise TypeError(f"scores_by_lang's keys are language codes (str); got {lang!r}")
        if isinstance(s, HeadScores):
            if first is None:
                first = s
                facts = {"model_name": s.model_name, "model_type": s.model_type, "head_dim": s.head_dim,
                         "num_kv_heads": s.num_kv_heads, "mode": s.mode}
                if s.model_identity:
                    facts["model_identity"] = s.model_identity
            elif (s.model_type, s.head_dim, s.shape) != (first.model_type, first.head_dim, first.shape):
                raise MaskMismatchError(f"scores of '{lang}' ({s.model_type} {s.shape[0]}x{s.shape[1]}) and of "
                                        f"'{first.language}' ({first.model_type} {first.shape[0]}x{first.shape[1]}) "
                                        "come from different models")
            else:  # the same shape is not the same model: other weights rank other heads
                from ..core.identity import check_same_model

                check_same_model(s.model_identity, first.model_identity, f"the scores of '{lang}'",
                                 fix=f"the scores of '{first.language}' were made from the other; classify score files "
                                     "of one model")
                if s.mode != first.mode:
                    raise LahisError(f"the scores of '{lang}' were made in {s.mode} mode and those of "
                                     f"'{first.language}' in {first.mode} mode: classify scores of one mode")
            t = s.scores
        else:
            try:
                t = torch.as_tensor(s, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"scores of '{lang}' must be HeadScores or a [layers, heads] tensor of numbers; got "
                                f"{type(s).__name__}") from None
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


@dataclass(frozen=True)
class RankedHead:
    """A head kept by one language: its place in that language's ranking and its score."""

    layer: int
    head: int
    score: float
    rank: int = 0  # 1-based rank among the language's specific heads (0 for the kept list)


@dataclass(frozen=True)
class GeneralHead:
    layer: int
    head: int
    languages: tuple[str, ...]


@dataclass(frozen=True)
class LanguageHeads:
    threshold: Optional[float]  # the language's q-quantile score (None in hand-written files)
    kept: tuple[RankedHead, ...]
    specific: tuple[RankedHead, ...]


@dataclass(frozen=True)
class HeadClassification:
    """Language-specific and language-general heads of one model: what `classify_heads` returns and
    `lahis heads --out` writes (JSON tagged with FORMAT, which `heads=` of lahis_hf reads without guessing).

    Indexing by the JSON keys (c["per_language"], c["general"]...) is kept for code written against the
    dict of earlier versions.
    """

    q: float
    min_rep: int
    languages: tuple[str, ...]
    shape: tuple[int, int]
    general: tuple[GeneralHead, ...]
    per_language: dict[str, LanguageHeads]
    model: dict = field(default_factory=dict)
    rule: str = RULE

    def specific(self, lang: str) -> list[tuple[int, int]]:
        """The ranked language-specific heads of `lang`."""
        if lang not in self.per_language:
            raise LahisError(f"language '{lang}' is not in the classification ({', '.join(self.languages)})")
        return [(h.layer, h.head) for h in self.per_language[lang].specific]

    def general_heads(self) -> list[tuple[int, int]]:
        return [(g.layer, g.head) for g in self.general]

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "rule": self.rule, "q": self.q, "min_rep": self.min_rep,
            "languages": list(self.languages), "shape": list(self.shape), "model": dict(self.model),
            "general": [{"layer": g.layer, "head": g.head, "languages": list(g.languages)} for g in self.general],
            "per_language": {lang: {
                "threshold": d.threshold,
                "kept": [{"layer": h.layer, "head": h.head, "score": h.score} for h in d.kept],
                "specific": [{"rank": h.rank, "layer": h.layer, "head": h.head, "score": h.score} for h in d.specific],
            } for lang, d in self.per_language.items()},
        }

    @classmethod
    def from_json(cls, obj, source: str = "heads classification") -> "HeadClassification":
        """Read `to_json()`'s dict (or an untagged one written by earlier versions), checking its structure."""
        if not isinstance(obj, dict):
            raise LahisError(f"{source}: expected a JSON object, got {type(obj).__name__}")
        tag = obj.get("format")
        if tag is not None and tag != FORMAT:
            raise LahisError(f"{source} is a '{tag}' file, not a heads classification ({FORMAT})")
        try:
            per = {lang: LanguageHeads(
                threshold=None if d.get("threshold") is None else float(d["threshold"]),
                kept=tuple(RankedHead(int(h["layer"]), int(h["head"]), float(h["score"])) for h in d.get("kept", ())),
                specific=tuple(RankedHead(int(h["layer"]), int(h["head"]), float(h["score"]), int(h["rank"]))
                               for h in d["specific"]))
                for lang, d in obj["per_language"].items()}
            return cls(q=float(obj.get("q", float("nan"))), min_rep=int(obj.get("min_rep", 0)),
                       languages=tuple(obj.get("languages") or obj["per_language"]),
                       shape=tuple(int(x) for x in obj.get("shape", ())),
                       general=tuple(GeneralHead(int(g["layer"]), int(g["head"]), tuple(g["languages"]))
                                     for g in obj["general"]),
                       per_language=per, model=dict(obj.get("model") or {}), rule=obj.get("rule", RULE))
        except (KeyError, TypeError, ValueError) as exc:
            raise LahisError(f"{source} is not a heads classification (`lahis heads --out`): "
                             f"missing or malformed {exc}") from None

    def save(self, path: str | Path) -> Path:
        from ..core.fileio import write_json

        if Path(path).suffix.lower() != ".json":  # a .safetensors name would hide JSON where a tensor file is read
            raise LahisError(f"a heads classification is JSON: give a path ending in .json, not {path}")
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "HeadClassification":
        from ..core.fileio import read_json

        return cls.from_json(read_json(path, "heads file"), str(path))

    def __getitem__(self, key: str):
        return self.to_json()[key]


def _as_classification(c) -> HeadClassification:
    return c if isinstance(c, HeadClassification) else HeadClassification.from_json(c)


def classify_heads(scores_by_lang: Mapping[str, object], q: float = 0.96,
                   min_rep: Optional[int] = None) -> HeadClassification:
    """Split each language's top heads into language-specific and language-general ones.

    Args:
        scores_by_lang: {lang: HeadScores or [layers, heads] tensor}, all of the same model.
        q: quantile above which a language keeps a head (0.96: top ~4%).
        min_rep: a head kept by at least this many languages is general (default ceil(0.8 * languages), >= 2).
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
    kept, thresholds = {}, {}
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
        per_language[lang] = LanguageHeads(
            threshold=thresholds[lang],
            kept=tuple(RankedHead(l, h, float(t[l, h])) for l, h in kept[lang]),
            specific=tuple(RankedHead(l, h, float(t[l, h]), r + 1) for r, (l, h) in enumerate(specific)))
    return HeadClassification(q=q, min_rep=min_rep, languages=tuple(langs),
                              shape=tuple(next(iter(mats.values())).shape), model=facts,
                              general=tuple(GeneralHead(l, h, tuple(votes[(l, h)])) for l, h in general),
                              per_language=per_language)


def specific_heads(classification, lang: str) -> list[tuple[int, int]]:
    """The ranked language-specific heads of `lang` from a classification (or its JSON)."""
    return _as_classification(classification).specific(lang)


def top_specific_heads(scores_by_lang: Mapping[str, object], lang: str, k: int, q: float = 0.96,
                       min_rep: Optional[int] = None) -> list[tuple[int, int]]:
    """The k best heads of `lang` that are not language-general (the q-quantile rule decides which are general).

    Unlike `specific_heads`, this goes past the q quantile when k is larger than the kept set.
    """
    mats, _ = _matrices(scores_by_lang)
    if lang not in mats:
        raise LahisError(f"no scores for language '{lang}' (have {', '.join(mats)})")
    general = set(classify_heads(scores_by_lang, q=q, min_rep=min_rep).general_heads()) if len(mats) > 1 else set()
    t = mats[lang]
    order = torch.sort(-t.flatten(), stable=True).indices
    heads = t.shape[1]
    ranked = [(int(i) // heads, int(i) % heads) for i in order]
    return [h for h in ranked if h not in general][:k]


STRICT_RULE = ("strictly specific heads of a language: the heads it keeps (score above its q quantile) that no other "
               "scored language keeps, best first; when fewer than k, the rest are taken from the heads no other "
               "language keeps, ranked by specificity = the head's percentile rank in this language's scores minus "
               "the highest percentile rank any other scored language gives it (percentile ranks make languages with "
               "different score scales comparable)")


@dataclass(frozen=True)
class HeadSet:
    """The k heads an intervention uses for one language, and how they were chosen (STRICT_RULE)."""

    language: str
    heads: tuple[tuple[int, int], ...]
    strict: int   # the first `strict` heads are kept by this language only
    filled: int   # the rest: not kept by any other language, ranked by specificity

    def to_json(self) -> dict:
        return {"language": self.language, "heads": [list(h) for h in self.heads], "strict": self.strict,
                "filled": self.filled}


def _percentile_ranks(t: torch.Tensor) -> torch.Tensor:
    """[layers, heads] -> the same shape in [0, 1]: 0 for the lowest score, 1 for the highest (stable ties)."""
    flat = t.flatten()
    order = torch.sort(flat, stable=True).indices
    ranks = torch.empty_like(flat, dtype=torch.float64)
    ranks[order] = torch.arange(flat.numel(), dtype=torch.float64) / max(1, flat.numel() - 1)
    return ranks.view(t.shape)


def strict_specific_heads(scores_by_lang: Mapping[str, object], lang: str, k: int, q: float = 0.96) -> HeadSet:
    """The k heads of `lang` that no other scored language keeps (STRICT_RULE): its strictly specific heads, best
    first, then, where it has fewer than k, the heads no other language keeps ranked by specificity. Two languages
    never share a strict head; a filled head is unique to one language whenever its specificity is positive."""
    mats, _ = _matrices(scores_by_lang)
    if lang not in mats:
        raise LahisError(f"no scores for language '{lang}' (have {', '.join(mats)})")
    layers, heads = mats[lang].shape
    if not 1 <= int(k) <= layers * heads:
        raise LahisError(f"k must be between 1 and {layers * heads} (the model's heads), got {k}")
    kept = {x: kept_heads(t, q)[0] for x, t in mats.items()}
    others = {h for x, hs in kept.items() if x != lang for h in hs}
    strict = [h for h in kept[lang] if h not in others][:k]
    chosen = list(strict)
    if len(chosen) < k:
        own = _percentile_ranks(mats[lang])
        rest = [_percentile_ranks(t) for x, t in mats.items() if x != lang]
        other_max = torch.stack(rest).amax(0) if rest else torch.zeros_like(own)
        specificity = (own - other_max).flatten()
        order = torch.sort(-specificity, stable=True).indices
        for i in order.tolist():
            h = (i // heads, i % heads)
            if h not in others and h not in chosen:
                chosen.append(h)
            if len(chosen) == k:
                break
    if len(chosen) < k:
        raise LahisError(f"'{lang}' has only {len(chosen)} heads that no other scored language keeps; ask for at most "
                         f"that many (k={k})")
    return HeadSet(lang, tuple(chosen), strict=len(strict), filled=len(chosen) - len(strict))


def head_overlap(scores_by_lang: Mapping[str, object], q: float = 0.96) -> dict[str, dict[str, int]]:
    """{x: {y: the number of heads both x and y keep}}; the diagonal is the number x keeps."""
    mats, _ = _matrices(scores_by_lang)
    kept = {x: set(kept_heads(t, q)[0]) for x, t in mats.items()}
    return {x: {y: len(kept[x] & kept[y]) for y in mats} for x in mats}


def independent_groups(head_sets: Mapping[str, Sequence]) -> list[list[str]]:
    """The languages whose head sets share no head, as groups: languages are joined (transitively) when their sets
    share a head, so a combined test counts each group once instead of treating them as independent."""
    langs = list(head_sets)
    parent = {x: x for x in langs}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[tuple, str] = {}
    for x in langs:
        for h in head_sets[x]:
            h = tuple(h)
            if h in owner:
                parent[root(x)] = root(owner[h])
            else:
                owner[h] = x
    groups: dict[str, list[str]] = {}
    for x in langs:
        groups.setdefault(root(x), []).append(x)
    return list(groups.values())


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
    from .scores import HeadScores

    out = {}
    for p in score_paths(paths):
        s = HeadScores.load(p)
        lang = s.language or Path(p).stem
        if lang in out:
            raise LahisError(f"two score files for language '{lang}' ({p})")
        out[lang] = s
    return out


def format_classification(c) -> str:
    """Human-readable summary of a classification (heads written LxHy, scores in brackets)."""
    c = _as_classification(c)
    lines = [f"rule: heads above the {c.q} quantile per language; general = kept by >= {c.min_rep} of "
             f"{len(c.languages)} languages",
             "general: " + (", ".join(f"L{g.layer}H{g.head} ({'/'.join(g.languages)})" for g in c.general) or "none")]
    for lang, d in c.per_language.items():
        spec = ", ".join(f"L{s.layer}H{s.head} ({s.score:.3g})" for s in d.specific) or "none"
        lines.append(f"{lang}: specific: {spec}")
    return "\n".join(lines)
