"""Perplexity probes: does zeroing a language's specific heads hurt that language more than other heads do?

`ppl_cross` computes, for every evaluated language X and every masked language Y, the perplexity of X's
texts with Y's top-k language-specific heads zeroed (the reference's ppl-cross matrix), next to the
unmasked baseline and to k random heads (a distribution of draws, 20 by default). Two perplexities are
reported:
  * corpus perplexity: exp(total NLL / total predicted tokens);
  * the reference's mean of per-text exp(mean NLL of the text).

Numbers are per-text mean NLLs (log-perplexity, nats per token):
  * own heads vs none: the increase, paired over X's texts (bootstrap CI, sign-flip p);
  * own heads vs random heads: the rank of the own heads' mean increase among the random draws' increases (the
    head set is the unit; reproduce combines the languages' ranks exactly);
  * own heads vs other languages' heads: the matrix of mean increases, tested in reproduce by permuting the head
    sets' language labels;
  * a placebo set per language goes through the same tests in the place of its own heads.
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
    """k distinct heads drawn uniformly from the heads not in `exclude`, sorted."""
    excluded = {tuple(h) for h in exclude}
    pool = [(l, h) for l in range(num_layers) for h in range(num_heads) if (l, h) not in excluded]
    if k > len(pool):
        raise LahisError(f"cannot draw {k} random heads from {len(pool)}")
    return sorted(rng.sample(pool, k))


DRAW_RULE = ("each random draw is k heads drawn uniformly, without replacement, from the heads outside the target "
             "set it is compared with; draws are seeded by (seed, what they are drawn for), so each language's or "
             "pair's draws are independent of the others'")


def target_head_sets(scores_by_lang: Mapping[str, object], k: int, q: float = 0.96, min_rep: Optional[int] = None,
                     selection: str = "strict") -> dict[str, list[tuple[int, int]]]:
    """{language: its k heads}: strictly specific heads (heads.STRICT_RULE; the default) or, with
    selection="non-general", its k best heads that are not language-general (heads.top_specific_heads)."""
    from ..lahis.heads import strict_specific_heads, top_specific_heads

    if selection == "strict":
        return {y: list(strict_specific_heads(scores_by_lang, y, k, q=q).heads) for y in scores_by_lang}
    if selection == "non-general":
        return {y: top_specific_heads(scores_by_lang, y, k, q=q, min_rep=min_rep) for y in scores_by_lang}
    raise LahisError(f"unknown head selection '{selection}': use 'strict' or 'non-general'")


def ppl_cross(model, tokenizer, texts_by_lang: Mapping[str, Sequence[str]], scores_by_lang: Mapping[str, object],
              k: int = 3, random_trials: int = 20, seed: int = 0, q: float = 0.96, min_rep: Optional[int] = None,
              max_length: int = 2048, batch_size: int = 8, progress: bool = True, selection: str = "strict",
              placebo: bool = True) -> dict:
    """The ppl-cross matrix: perplexity of X's texts with Y's k language-specific heads zeroed, for all X and Y.

    Y's heads are its strictly specific heads (see target_head_sets; selection="non-general" keeps the reference's
    "top-k heads that are not language-general"). Baselines: no mask, and `random_trials` draws of k random heads
    per evaluated language X, drawn from the heads outside X's own set (DRAW_RULE). With `placebo`, one more random
    set per language Y (outside Y's set, no two sharing a head: placebo_sets) is zeroed on every language's texts:
    the placebo that the findings put through the same tests in place of the real sets.
    Returns a JSON-able dict: {"k", "languages", "heads": {Y: [[l, h]]}, "random_heads": {X: [[[l, h]]]},
    "placebo_heads": {Y: [[l, h]]}, "baseline": {X: stats}, "masked": {Y: {X: stats}}, "placebo": {Y: {X: stats}},
    "random": {X: {"trials": [stats], "corpus_ppl", "mean_text_ppl"}}, "comparisons": {X: see compare_language}}
    where stats = summarize(...).
    """
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
    if random_trials < 1:
        raise LahisError(f"random_trials must be at least 1 (the random-heads baseline is a distribution of draws), "
                         f"got {random_trials}")
    heads_by_y = target_head_sets(scores_by_lang, k, q, min_rep, selection)
    draws = {x: random_draws(spec, k, random_trials, seed, x, exclude=heads_by_y.get(x, ())) for x in texts_by_lang}
    placebo_heads = placebo_sets(spec, k, seed, "ppl", heads_by_y) if placebo else {}

    def run(x: str, heads, tag: str) -> dict:
        mask = HeadMask.from_heads(spec, heads, 0.0) if heads else None
        return perplexity(model, tokenizer, texts_by_lang[x], mask=mask, max_length=max_length,
                          batch_size=batch_size, progress=progress) | {"masked_by": tag}

    result = {"k": k, "q": q, "selection": selection, "languages": list(texts_by_lang), "masked_languages": langs_y,
              "unscored_languages": missing, "heads": {y: [list(h) for h in hs] for y, hs in heads_by_y.items()},
              "random_heads": {x: [[list(h) for h in d] for d in ds] for x, ds in draws.items()},
              "placebo_heads": {y: [list(h) for h in hs] for y, hs in placebo_heads.items()},
              "random_trials": random_trials, "seed": seed, "draw_rule": DRAW_RULE,
              "baseline": {}, "masked": {y: {} for y in langs_y}, "placebo": {y: {} for y in placebo_heads},
              "random": {}, "comparisons": {}}
    for x in texts_by_lang:
        result["baseline"][x] = run(x, [], "none")
        for y in langs_y:
            result["masked"][y][x] = run(x, heads_by_y[y], y)
        for y, heads in placebo_heads.items():
            result["placebo"][y][x] = run(x, heads, f"placebo-{y}")
        trials = [run(x, d, f"random{i}") for i, d in enumerate(draws[x])]
        result["random"][x] = {"trials": trials,
                               "corpus_ppl": sum(t["corpus_ppl"] for t in trials) / len(trials),
                               "mean_text_ppl": sum(t["mean_text_ppl"] for t in trials) / len(trials)}
        if x in result["masked"]:
            result["comparisons"][x] = compare_language(result, x, seed=seed)
    return result


def placebo_sets(spec, k: int, seed: int, tag: str, targets: Mapping) -> dict:
    """One random set of k heads per unit (a language, a pair), drawn unit after unit so that no two share a head,
    each outside its own unit's target set: placebos as independent of each other as the (disjoint) target sets they
    stand in for, so a test that counts units as independent stays valid for them."""
    rng = random.Random(f"{seed}-{tag}-placebo")
    used: list = []
    out = {}
    for unit, target in targets.items():
        out[unit] = random_heads(spec.num_layers, spec.num_heads, k, rng, [*map(tuple, target), *used])
        used += out[unit]
    return out


def random_draws(spec, k: int, trials: int, seed: int, tag: str, exclude: Sequence = ()) -> list[list[tuple[int, int]]]:
    """`trials` draws of k random heads from the heads not in `exclude` (DRAW_RULE), seeded by (seed, tag): a
    language or language pair's draws are independent of the others'."""
    rng = random.Random(f"{seed}-{tag}")
    exclude = [tuple(h) for h in exclude]
    return [random_heads(spec.num_layers, spec.num_heads, k, rng, exclude) for _ in range(trials)]


def compare_language(result: Mapping, x: str, seed: int = 0) -> dict:
    """Language x's numbers (per-text log-perplexity, nats per token): {"own_vs_none": the paired comparison of its
    texts with its own heads zeroed vs no mask (a Comparison dict), "own_increase", "random_increase" (each draw's
    mean increase), "own_rank_p": the rank p of the own heads' increase among the draws' (exact: no item-level test
    against the draws, whose heads are a sample), "placebo_increase" / "placebo_rank_p" (x's placebo set in the place
    of its own), "increase_by": {Y: mean increase with Y's heads zeroed}, "own_rank_among_sets": 1 when x's own heads
    hurt it most, "most_harmful"}."""
    import numpy as np

    from . import stats

    base = np.array(result["baseline"][x]["losses"])
    own = np.array(result["masked"][x][x]["losses"])
    draws = np.array([t["losses"] for t in result["random"][x]["trials"]])  # [draws, texts]
    random_increase = (draws - base).mean(1)  # [draws]: each draw's mean increase over the texts
    own_increase = float((own - base).mean())
    out = {"own_vs_none": stats.paired_difference(base, own, seed=seed, unit="nats/token").to_dict(),
           "own_increase": own_increase, "random_increase": [float(v) for v in random_increase],
           "own_rank_p": stats.empirical_p(own_increase, random_increase, "greater")}
    if x in result.get("placebo", {}):
        placebo = float((np.array(result["placebo"][x][x]["losses"]) - base).mean())
        out["placebo_increase"] = placebo
        out["placebo_rank_p"] = stats.empirical_p(placebo, random_increase, "greater")
    increase = {y: float((np.array(result["masked"][y][x]["losses"]) - base).mean()) for y in result["masked"]}
    out["increase_by"] = increase
    out["own_rank_among_sets"] = 1 + sum(v > own_increase for y, v in increase.items() if y != x)
    out["most_harmful"] = max(increase, key=increase.get)
    return out


def format_table(result: dict, metric: str = "corpus_ppl") -> str:
    """Markdown table: rows = evaluated language X, columns = no mask, Y's heads zeroed for each Y, k random."""
    ys = result["masked_languages"]
    head = ["text \\ zeroed", "none"] + [f"{y}'s {result['k']}" for y in ys] + [f"random {result['k']} (mean of draws)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in result["languages"]:
        row = [x, f"{result['baseline'][x][metric]:.3f}"]
        row += [f"{result['masked'][y][x][metric]:.3f}" for y in ys]
        row.append(f"{result['random'][x][metric]:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_comparisons(result: dict) -> str:
    """Markdown table, one row per text language: its own heads zeroed vs no mask (paired over its texts: increase
    in nats/token, 95% CI, p), where that increase ranks among the random draws' (exact rank p) and among the other
    languages' head sets, and the placebo set's rank among the same draws."""
    from .stats import format_effect, format_p

    n_sets = len(result.get("masked_languages", []))
    lines = ["| text language | own heads vs none (nats/token) [95% CI], p | own increase | random draws' increases "
             "| rank p among draws | placebo set's rank p | own heads' rank among the "
             f"{n_sets} languages' sets | hurt most by |", "|---|---|---:|---|---:|---:|---:|---|"]
    for x, c in result.get("comparisons", {}).items():
        draws = ", ".join(f"{v:+.3f}" for v in c["random_increase"])
        lines.append(f"| {x} | {format_effect(c['own_vs_none'], digits=3)} | {c['own_increase']:+.3f} | {draws} "
                     f"| {format_p(c['own_rank_p'])} | {format_p(c.get('placebo_rank_p'))} "
                     f"| {c['own_rank_among_sets']} | {c['most_harmful']} |")
    return "\n".join(lines)
