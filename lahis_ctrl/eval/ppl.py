"""Perplexity probes: does zeroing a language's specific heads hurt that language more than other heads do?

`ppl_cross` computes, for every evaluated language X and every masked language Y, the perplexity of X's
texts with Y's top-k language-specific heads zeroed (the reference's ppl-cross matrix), next to the
unmasked baseline and to k random heads (averaged over several draws). Two perplexities are reported:
  * corpus perplexity: exp(total NLL / total predicted tokens);
  * the reference's mean of per-text exp(mean NLL of the text).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from ..core.errors import LahisError


def text_losses(model, tokenizer, texts: Sequence[str], max_length: int = 2048, batch_size: int = 8,
                loss_chunk: Optional[int] = None, progress: bool = False, desc: str = "ppl") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token NLL per text [N] float32, predicted tokens per text [N] int64), batched, no grad."""
    from tqdm.auto import tqdm

    from ..core.lm import input_device, lm_parts, pad_batch, pad_id, sequence_losses, tokenize_texts

    ids = tokenize_texts(tokenizer, texts, max_length)
    parts = lm_parts(model)
    pad, device = pad_id(tokenizer), input_device(model)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    losses = torch.empty(len(ids))
    counts = torch.empty(len(ids), dtype=torch.long)
    with torch.no_grad():
        for start in tqdm(range(0, len(ids), batch_size), desc=desc, unit="batch", disable=not progress):
            rows = order[start:start + batch_size]
            x, mask = pad_batch([ids[i] for i in rows], pad, device)
            loss, count = sequence_losses(model, x, mask, loss_chunk, parts)
            losses[rows] = loss.float().cpu()
            counts[rows] = count
    return losses, counts


def summarize(losses: torch.Tensor, counts: torch.Tensor) -> dict:
    """Corpus perplexity, the reference's mean per-text exp(loss), and the counts behind them."""
    total_nll = float((losses.double() * counts.double()).sum())
    tokens = int(counts.sum())
    return {"corpus_ppl": math.exp(total_nll / tokens), "mean_text_ppl": float(losses.double().exp().mean()),
            "mean_loss": float(losses.double().mean()), "num_texts": int(losses.numel()), "num_tokens": tokens}


def perplexity(model, tokenizer, texts: Sequence[str], mask=None, max_length: int = 2048, batch_size: int = 8,
               progress: bool = False) -> dict:
    """Perplexity of `texts`, optionally under a head mask (HeadMask, path or [layers, heads] tensor)."""
    import contextlib

    from ..core.control import apply_head_mask

    ctx = apply_head_mask(model, mask) if mask is not None else contextlib.nullcontext()
    with ctx:
        return summarize(*text_losses(model, tokenizer, texts, max_length, batch_size, progress=progress))


def random_heads(num_layers: int, num_heads: int, k: int, rng: random.Random,
                 exclude: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    pool = [(l, h) for l in range(num_layers) for h in range(num_heads) if (l, h) not in set(exclude)]
    if k > len(pool):
        raise LahisError(f"cannot draw {k} random heads from {len(pool)}")
    return sorted(rng.sample(pool, k))


def ppl_cross(model, tokenizer, texts_by_lang: Mapping[str, Sequence[str]], scores_by_lang: Mapping[str, object],
              k: int = 3, random_trials: int = 3, seed: int = 0, q: float = 0.96, min_rep: Optional[int] = None,
              max_length: int = 2048, batch_size: int = 8, progress: bool = True) -> dict:
    """The ppl-cross matrix: perplexity of X's texts with Y's top-k specific heads zeroed, for all X and Y.

    Y's heads are its k best-scoring heads that are not language-general (see heads.top_specific_heads).
    Baselines: no mask, and k uniformly random heads (`random_trials` draws, the same draws for every X).
    Returns a JSON-able dict: {"k", "languages", "heads": {Y: [[l, h]]}, "random_heads": [[[l, h]]],
    "baseline": {X: stats}, "masked": {Y: {X: stats}}, "random": {X: {"trials": [stats], "corpus_ppl",
    "mean_text_ppl"}}} where stats = summarize(...).
    """
    from ..lahis.heads import top_specific_heads
    from ..core.architecture import describe
    from ..core.mask import HeadMask

    spec = describe(model)
    for lang, s in scores_by_lang.items():
        if hasattr(s, "validate"):
            s.validate(spec)
    missing = [x for x in texts_by_lang if x not in scores_by_lang]
    langs_y = list(scores_by_lang)
    if k < 1 or k > spec.num_layers * spec.num_heads:
        raise LahisError(f"k must be between 1 and {spec.num_layers * spec.num_heads}, got {k}")
    heads_by_y = {y: top_specific_heads(scores_by_lang, y, k, q=q, min_rep=min_rep) for y in langs_y}
    rng = random.Random(seed)
    draws = [random_heads(spec.num_layers, spec.num_heads, k, rng) for _ in range(random_trials)]

    def run(x: str, heads, tag: str) -> dict:
        mask = HeadMask.from_heads(spec, heads, 0.0) if heads else None
        return perplexity(model, tokenizer, texts_by_lang[x], mask=mask, max_length=max_length,
                          batch_size=batch_size, progress=progress) | {"masked_by": tag}

    result = {"k": k, "q": q, "languages": list(texts_by_lang), "masked_languages": langs_y,
              "unscored_languages": missing, "heads": {y: [list(h) for h in hs] for y, hs in heads_by_y.items()},
              "random_heads": [[list(h) for h in d] for d in draws], "random_trials": random_trials, "seed": seed,
              "baseline": {}, "masked": {y: {} for y in langs_y}, "random": {}}
    for x in texts_by_lang:
        result["baseline"][x] = run(x, [], "none")
        for y in langs_y:
            result["masked"][y][x] = run(x, heads_by_y[y], y)
        trials = [run(x, d, f"random{i}") for i, d in enumerate(draws)]
        result["random"][x] = {"trials": trials,
                               "corpus_ppl": sum(t["corpus_ppl"] for t in trials) / max(1, len(trials)),
                               "mean_text_ppl": sum(t["mean_text_ppl"] for t in trials) / max(1, len(trials))}
    return result


def format_table(result: dict, metric: str = "corpus_ppl") -> str:
    """Markdown table: rows = evaluated language X, columns = no mask, Y's heads zeroed for each Y, k random."""
    ys = result["masked_languages"]
    head = ["text \\ zeroed", "none"] + [f"{y} top-{result['k']}" for y in ys] + [f"random {result['k']} (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in result["languages"]:
        row = [x, f"{result['baseline'][x][metric]:.3f}"]
        row += [f"{result['masked'][y][x][metric]:.3f}" for y in ys]
        row.append(f"{result['random'][x][metric]:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
