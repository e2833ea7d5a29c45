"""Perplexity probes: does zeroing a language's specific heads hurt that language more than other heads do?

`ppl_cross` computes, for every evaluated language X and every masked language Y, the perplexity of X's
texts with Y's top-k language-specific heads zeroed (the reference's ppl-cross matrix), next to the
unmasked baseline and to k random heads (a distribution of draws, 20 by default). Two perplexities are
reported:
  * corpus perplexity: exp(total NLL / total predicted tokens);
  * the reference's mean of per-text exp(mean NLL of the text).

Every comparison is paired over X's texts, on the per-text mean NLL (log-perplexity, nats per token):
  * own heads vs none: the increase, paired bootstrap CI, sign-flip p;
  * own heads vs random heads: the increase over the draws' mean, paired bootstrap CI, and the empirical p
    of the own heads' increase among the draws' increases (the draws are the null distribution);
  * own heads vs other languages' heads: the increase over the other columns' mean (the diagonal claim).
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
    """Corpus perplexity, the reference's mean per-text exp(loss), the per-text losses and token counts."""
    total_nll = float((losses.double() * counts.double()).sum())
    tokens = int(counts.sum())
    return {"corpus_ppl": math.exp(total_nll / tokens), "mean_text_ppl": float(losses.double().exp().mean()),
            "mean_loss": float(losses.double().mean()), "num_texts": int(losses.numel()), "num_tokens": tokens,
            "losses": [float(x) for x in losses.double()]}


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
              k: int = 3, random_trials: int = 20, seed: int = 0, q: float = 0.96, min_rep: Optional[int] = None,
              max_length: int = 2048, batch_size: int = 8, progress: bool = True) -> dict:
    """The ppl-cross matrix: perplexity of X's texts with Y's top-k specific heads zeroed, for all X and Y.

    Y's heads are its k best-scoring heads that are not language-general (see heads.top_specific_heads).
    Baselines: no mask, and `random_trials` draws of k uniformly random heads per evaluated language (drawn
    with a seed of (seed, X), so each language's draws are independent of the others').
    Returns a JSON-able dict: {"k", "languages", "heads": {Y: [[l, h]]}, "random_heads": {X: [[[l, h]]]},
    "baseline": {X: stats}, "masked": {Y: {X: stats}}, "random": {X: {"trials": [stats], "corpus_ppl",
    "mean_text_ppl"}}, "comparisons": {X: see compare_language}} where stats = summarize(...).
    """
    from ..core.architecture import describe
    from ..core.mask import HeadMask
    from ..lahis.heads import top_specific_heads

    spec = describe(model)
    for lang, s in scores_by_lang.items():
        if hasattr(s, "validate"):
            s.validate(spec)
    missing = [x for x in texts_by_lang if x not in scores_by_lang]
    langs_y = list(scores_by_lang)
    if k < 1 or k > spec.num_layers * spec.num_heads:
        raise LahisError(f"k must be between 1 and {spec.num_layers * spec.num_heads}, got {k}")
    if random_trials < 1:
        raise LahisError(f"random_trials must be at least 1 (the random-heads baseline is a distribution of draws), "
                         f"got {random_trials}")
    heads_by_y = {y: top_specific_heads(scores_by_lang, y, k, q=q, min_rep=min_rep) for y in langs_y}
    draws = {x: random_draws(spec, k, random_trials, seed, x) for x in texts_by_lang}

    def run(x: str, heads, tag: str) -> dict:
        mask = HeadMask.from_heads(spec, heads, 0.0) if heads else None
        return perplexity(model, tokenizer, texts_by_lang[x], mask=mask, max_length=max_length,
                          batch_size=batch_size, progress=progress) | {"masked_by": tag}

    result = {"k": k, "q": q, "languages": list(texts_by_lang), "masked_languages": langs_y,
              "unscored_languages": missing, "heads": {y: [list(h) for h in hs] for y, hs in heads_by_y.items()},
              "random_heads": {x: [[list(h) for h in d] for d in ds] for x, ds in draws.items()},
              "random_trials": random_trials, "seed": seed,
              "baseline": {}, "masked": {y: {} for y in langs_y}, "random": {}, "comparisons": {}}
    for x in texts_by_lang:
        result["baseline"][x] = run(x, [], "none")
        for y in langs_y:
            result["masked"][y][x] = run(x, heads_by_y[y], y)
        trials = [run(x, d, f"random{i}") for i, d in enumerate(draws[x])]
        result["random"][x] = {"trials": trials,
                               "corpus_ppl": sum(t["corpus_ppl"] for t in trials) / len(trials),
                               "mean_text_ppl": sum(t["mean_text_ppl"] for t in trials) / len(trials)}
        if x in result["masked"]:
            result["comparisons"][x] = compare_language(result, x, seed=seed)
    return result


def random_draws(spec, k: int, trials: int, seed: int, tag: str) -> list[list[tuple[int, int]]]:
    """`trials` draws of k random heads, seeded by (seed, tag): a language or language pair's draws are
    independent of the others'."""
    rng = random.Random(f"{seed}-{tag}")
    return [random_heads(spec.num_layers, spec.num_heads, k, rng) for _ in range(trials)]


def compare_language(result: Mapping, x: str, seed: int = 0) -> dict:
    """The paired comparisons of language x's per-text losses (nats per token; see the module docstring):
    {"own_vs_none", "own_vs_random", "own_vs_others": Comparison dicts, "own_rank_p": the empirical p of the own
    heads' mean increase among the random draws', "most_harmful": the column Y that hurts x most}."""
    import numpy as np

    from . import stats

    base = np.array(result["baseline"][x]["losses"])
    own = np.array(result["masked"][x][x]["losses"])
    draws = np.array([t["losses"] for t in result["random"][x]["trials"]])  # [draws, texts]
    others = [y for y in result["masked"] if y != x]
    random_increase = (draws - base).mean(1)  # [draws]: each draw's mean increase over the texts
    out = {"own_vs_none": stats.paired_difference(base, own, seed=seed, unit="nats/token").to_dict(),
           "own_vs_random": stats.paired_difference(draws.mean(0), own, seed=seed, unit="nats/token").to_dict(),
           "own_rank_p": stats.empirical_p(float((own - base).mean()), random_increase, "greater"),
           "random_increase": [float(v) for v in random_increase]}
    if others:
        other = np.array([result["masked"][y][x]["losses"] for y in others])  # [others, texts]
        out["own_vs_others"] = stats.paired_difference(other.mean(0), own, seed=seed, unit="nats/token").to_dict()
        means = {y: float(np.mean(result["masked"][y][x]["losses"])) for y in result["masked"]}
        out["most_harmful"] = max(means, key=means.get)
    return out


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


def format_comparisons(result: dict) -> str:
    """Markdown table of each language's paired comparisons (increase in nats/token, 95% CI, p)."""
    from .stats import format_effect, format_p

    lines = ["| text language | own heads vs none | own vs random heads (mean of draws) | rank p among draws "
             "| own vs other languages' heads | hurt most by |", "|---|---|---|---:|---|---|"]
    for x, c in result.get("comparisons", {}).items():
        others = format_effect(c["own_vs_others"], digits=3) if "own_vs_others" in c else "n/a"
        lines.append(f"| {x} | {format_effect(c['own_vs_none'], digits=3)} | {format_effect(c['own_vs_random'], digits=3)} "
                     f"| {format_p(c['own_rank_p'])} ({result['random_trials']} draws) | {others} "
                     f"| {c.get('most_harmful', 'n/a')} |")
    return "\n".join(lines)
