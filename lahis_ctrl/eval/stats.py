"""Intervals, p-values and verdicts for paired comparisons of head-mask interventions (numpy only).

The same items are scored under a baseline (``a``) and a treatment (``b``): `paired_difference` gives mean(b - a)
with a paired bootstrap CI and a p-value, `holm` adjusts a family of p-values, `verdict` reads a `Comparison`.
Every random function takes ``seed`` and gives the same numbers for the same inputs and seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence
from statistics import NormalDist

import numpy as np

# Elements per resampling chunk: bounds memory (~2 arrays of this many 8-byte values) whatever n and R are.
_CHUNK = 1 << 21
# Resamples of every bootstrap and sign-flip test: with 20,000 the Monte Carlo error of a p near 0.05 is ~0.0015,
# so a verdict does not move with the resampling seed. Up to EXACT_SIGN_FLIP_MAX non-zero differences the sign-flip
# p is exact (all 2^n sign vectors).
N_RESAMPLES = 20_000
EXACT_SIGN_FLIP_MAX = 20
_BOOT = "paired bootstrap CI"
METHOD_MCNEMAR = "Newcombe paired score CI, exact McNemar p"
METHOD_SIGNFLIP = f"{_BOOT}, sign-flip permutation p"


def _check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}.")
    return float(confidence)


def _check_resamples(n_resamples: int) -> int:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}.")
    return int(n_resamples)


def _vector(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values; use NaN for missing outcomes.")
    return arr


def _pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both vectors, with every pair where either side is NaN dropped."""
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.size != b.size:
        raise ValueError(f"a and b must have the same length (paired items), got {a.size} and {b.size}.")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def wilson_interval(successes, n, confidence: float = 0.95) -> tuple:
    """Wilson score interval for a binomial proportion p = successes / n.

    With z the two-sided normal quantile: centre = (p + z²/2n) / (1 + z²/n) and
    half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n). Scalars give floats, arrays give arrays (broadcast);
    n == 0 gives (nan, nan).
    """
    z = NormalDist().inv_cdf(0.5 + _check_confidence(confidence) / 2)
    k, m = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    if np.any(k < 0) or np.any(m < 0):
        raise ValueError("successes and n must be non-negative counts.")
    if np.any(k > m):
        raise ValueError("successes cannot exceed n.")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / m
        denom = 1 + z * z / m
        centre = (p + z * z / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / denom
    # Exact 0 and 1 at the ends: rounding leaves the 0/n lower bound (n/n upper bound) a hair off.
    low, high = np.where(k == 0, 0.0, centre - half), np.where(k == m, 1.0, centre + half)
    low, high = np.where(m == 0, np.nan, low), np.where(m == 0, np.nan, high)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


@dataclass(frozen=True)
class Comparison:
    """A paired comparison: effect = mean(treatment - baseline), its CI, a p-value and the number of pairs."""

    effect: float
    ci: tuple[float, float]
    p_value: float
    n: int
    unit: str = ""
    method: str = ""
    confidence: float = 0.95

    def to_dict(self) -> dict:
        """Plain JSON-able values: floats (nan -> None), ``ci`` as a 2-list."""
        return {"effect": _f(self.effect), "ci": [_f(self.ci[0]), _f(self.ci[1])], "p_value": _f(self.p_value),
                "n": int(self.n), "unit": self.unit, "method": self.method, "confidence": float(self.confidence)}


def format_effect(comparison, scale: float = 1.0, digits: int = 2, p: bool = True) -> str:
    """"+1.23 [-0.40, +2.86], p=0.14" for a Comparison or its to_dict() (effect and CI times `scale`)."""
    c = comparison.to_dict() if isinstance(comparison, Comparison) else comparison
    if c.get("effect") is None:
        return "n/a"
    low, high = c["ci"]
    text = f"{scale * c['effect']:+.{digits}f} [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"
    return text + (f", p={format_p(c['p_value'])}" if p else "")


def format_p(p) -> str:
    """p-values as people read them: 0.032, 0.0004, <1e-6; n/a for None or NaN."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<1e-6" if p < 1e-6 else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}".rstrip("0").rstrip(".") or "0")


def _bootstrap_means(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_resamples resamples of x drawn with replacement, in chunks of at most _CHUNK elements."""
    n, out = x.size, np.empty(n_resamples)
    rows = max(1, _CHUNK // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        out[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _percentile_ci(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def bootstrap_mean_ci(x, n_resamples: int = N_RESAMPLES, confidence: float = 0.95, seed: int = 0):
    """(mean, low, high): the mean of x (NaNs dropped) and its percentile bootstrap CI.

    The CI is the (1-c)/2 and (1+c)/2 quantiles of the means of n_resamples resamples of x with replacement.
    All values NaN gives (nan, nan, nan).
    """
    x, confidence = _vector(x, "x"), _check_confidence(confidence)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    boot = _bootstrap_means(x, _check_resamples(n_resamples), np.random.default_rng(seed))
    return (float(x.mean()), *_percentile_ci(boot, confidence))


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (log C(n, i) by a running sum) for large n."""
    if k >= n:
        return 1.0
    i = np.arange(1, k + 1, dtype=float)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - i + 1) - np.log(i))])
    log_p = log_comb - n * math.log(2)
    top = log_p.max()
    return float(math.exp(top) * np.exp(log_p - top).sum())


def newcombe_paired_interval(a, b, confidence: float = 0.95) -> tuple[float, float]:
    """CI of mean(b) - mean(a) for paired 0/1 outcomes: Newcombe's (1998) hybrid score method 10.

    It combines the Wilson intervals of both proportions with the correlation of the pairs, so it stays
    informative where a bootstrap collapses (no discordant pair: the bootstrap gives [0, 0], this does not):
    with cells n11, n10 (a=1, b=0), n01, n00, p_a = (n11 + n10)/n, p_b = (n11 + n01)/n, Wilson intervals
    (l_a, u_a), (l_b, u_b), phi the pairs' correlation (its numerator n11·n00 - n10·n01 reduced by n/2 toward 0
    when positive, 0 when undefined), and theta = p_b - p_a:
    low = theta - sqrt((p_b - l_b)² - 2 phi (p_b - l_b)(u_a - p_a) + (u_a - p_a)²),
    high = theta + sqrt((u_b - p_b)² - 2 phi (u_b - p_b)(p_a - l_a) + (p_a - l_a)²).
    """
    a, b = _pairs(a, b)
    if not (_is_binary(a) and _is_binary(b)):
        raise ValueError("newcombe_paired_interval needs binary outcomes: every value of a and b must be 0 or 1.")
    n = a.size
    if n == 0:
        return math.nan, math.nan
    n11, n10 = int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    n01, n00 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 0) & (b == 0)))
    ka, kb = n11 + n10, n11 + n01
    pa, pb = ka / n, kb / n
    la, ua = wilson_interval(ka, n, confidence)
    lb, ub = wilson_interval(kb, n, confidence)
    denom = math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    num = n11 * n00 - n10 * n01
    num = max(num - n / 2, 0) if num > 0 else num
    phi = num / denom if denom > 0 else 0.0
    theta = pb - pa
    low = theta - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    high = theta + math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact(a, b) -> float:
    """Exact two-sided McNemar p for paired 0/1 outcomes (pairs with a NaN dropped).

    With discordant counts n01 = #(a=0, b=1) and n10 = #(a=1, b=0): p = min(1, 2·P(X <= min(n01, n10))),
    X ~ Binomial(n01 + n10, 1/2); 1.0 when there are no discordant pairs.
    """
    a, b = _pairs(a, b)
    if not (_is_binary(a) and _is_binary(b)):
        raise ValueError("mcnemar_exact needs binary outcomes: every value of a and b must be 0 or 1.")
    n01, n10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    if n01 + n10 == 0:
        return 1.0
    return min(1.0, 2 * _binom_cdf_half(min(n01, n10), n01 + n10))


def _sign_flip_p(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> float:
    """Two-sided randomization p of |sum(d)| under sign flips: exact over all 2^n sign vectors when at most
    EXACT_SIGN_FLIP_MAX differences are non-zero (#{|sum(s·d)| >= |sum(d)|} / 2^n), else
    (1 + #{|sum(s·d)| >= |sum(d)|}) / (1 + R) over R random sign vectors."""
    d = d[d != 0]  # zero differences contribute nothing under any sign
    if d.size == 0:
        return 1.0
    total, observed = d.sum(), abs(d.sum())
    tol = 1e-9 * np.abs(d).sum()  # so that exact ties (discrete data) are not lost to rounding
    if d.size <= EXACT_SIGN_FLIP_MAX:
        count, hits = 1 << d.size, 0
        shifts = np.arange(d.size, dtype=np.int64)
        step = max(1, _CHUNK // d.size)
        for start in range(0, count, step):
            codes = np.arange(start, min(start + step, count), dtype=np.int64)
            bits = ((codes[:, None] >> shifts) & 1).astype(float)  # [vectors, n]: bit j = sign of item j
            hits += int(np.sum(np.abs(2 * (bits @ d) - total) >= observed - tol))
        return hits / count
    rows, hits = max(1, _CHUNK // d.size), 0
    for start in range(0, n_resamples, rows):
        r = min(rows, n_resamples - start)
        # One random bit per item: sum(s·d) with s = 2·bit - 1 is 2·(bits @ d) - sum(d).
        bits = np.unpackbits(rng.integers(0, 256, size=(r, -(-d.size // 8)), dtype=np.uint8), axis=1,
                             count=d.size)
        hits += int(np.sum(np.abs(2 * (bits @ d) - total) >= observed - tol))
    return (1 + hits) / (1 + n_resamples)


def paired_difference(a, b, n_resamples: int = N_RESAMPLES, confidence: float = 0.95, seed: int = 0, unit: str = "",
                      binary: bool | None = None) -> Comparison:
    """Compare per-item outcomes a (baseline) and b (treatment) on the same items in the same order.

    Pairs where either value is NaN are dropped (e.g. undecidable off-target language); n is the number kept.
    effect = mean(b - a). Binary outcomes (``binary=None`` detects all-0/1 data): Newcombe's paired score CI
    and the exact McNemar p. Otherwise: the percentile paired bootstrap CI of mean(b - a) (item indices
    resampled with replacement, n_resamples times) and a two-sided paired sign-flip randomization test: exact over
    all sign vectors up to EXACT_SIGN_FLIP_MAX non-zero differences, else with n_resamples random sign vectors,
    p = (1 + #{|mean(s·d)| >= |mean(d)|}) / (1 + n_resamples).
    """
    a, b = _pairs(a, b)
    confidence, n_resamples = _check_confidence(confidence), _check_resamples(n_resamples)
    if binary is None:
        binary = _is_binary(a) and _is_binary(b)
    elif binary and not (_is_binary(a) and _is_binary(b)):
        raise ValueError("binary=True but a or b holds values other than 0 and 1.")
    method = METHOD_MCNEMAR if binary else METHOD_SIGNFLIP
    common = dict(n=int(a.size), unit=unit, method=method, confidence=confidence)
    if a.size == 0:
        return Comparison(math.nan, (math.nan, math.nan), math.nan, **common)
    d = b - a
    if binary:
        return Comparison(float(d.mean()), newcombe_paired_interval(a, b, confidence), mcnemar_exact(a, b), **common)
    if not d.any():
        return Comparison(0.0, (0.0, 0.0), 1.0, **common)
    rng = np.random.default_rng(seed)
    ci = _percentile_ci(_bootstrap_means(d, n_resamples, rng), confidence)
    return Comparison(float(d.mean()), ci, _sign_flip_p(d, n_resamples, rng), **common)


def empirical_p(effect: float, null_effects, alternative: str = "greater") -> float:
    """Empirical p of an observed effect against effects of random-head draws (NaNs in the null dropped).

    "greater": (1 + #{null >= effect}) / (1 + N); "less": (1 + #{null <= effect}) / (1 + N);
    "two-sided": (1 + #{|null| >= |effect|}) / (1 + N). A NaN effect gives nan.
    """
    null = _vector(null_effects, "null_effects")
    null = null[~np.isnan(null)]
    if null.size == 0:
        raise ValueError("null_effects holds no non-NaN values.")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}.")
    if math.isnan(effect):
        return math.nan
    if alternative == "greater":
        count = np.sum(null >= effect)
    elif alternative == "less":
        count = np.sum(null <= effect)
    else:
        count = np.sum(np.abs(null) >= abs(effect))
    return float((1 + count) / (1 + null.size))


def _rank_sum_cdf(sizes: Sequence[int]) -> np.ndarray:
    """cdf[s] = P(R_1 + ... + R_m - m <= s) for independent ranks R_u uniform on 1..sizes[u] (exact convolution)."""
    pmf = np.ones(1)
    for size in sizes:
        pmf = np.convolve(pmf, np.full(int(size), 1.0 / int(size)))
    return np.cumsum(pmf)


def combined_rank_p(ranks: Sequence[int], sizes: Sequence[int]) -> float:
    """P(R_1 + ... + R_m <= r_1 + ... + r_m) for independent R_u uniform on 1..sizes[u]: the exact combination of
    units whose observed effect has rank r_u among sizes[u] - 1 exchangeable random draws plus itself. Units that
    each beat all their draws give prod(1 / sizes[u])."""
    ranks, sizes = [int(r) for r in ranks], [int(n) for n in sizes]
    if len(ranks) != len(sizes) or not ranks:
        raise ValueError("ranks and sizes must be non-empty and of the same length.")
    if any(not 1 <= r <= n for r, n in zip(ranks, sizes)):
        raise ValueError("every rank must lie in 1..its size.")
    return float(min(1.0, _rank_sum_cdf(sizes)[sum(ranks) - len(ranks)]))


def combined_empirical_p(p_values, n_draws: int) -> float:
    """Exact combination of independent empirical p-values, each from `empirical_p` against n_draws null draws.

    Under the null each p_i = r_i / (n_draws + 1) with the rank r_i uniform on 1..n_draws + 1 (the observed effect
    is exchangeable with the draws). The combined p is P(R_1 + ... + R_m <= r_1 + ... + r_m) for independent
    uniform ranks (exact, by convolution): m languages each beating all 20 draws give (1/21)^m, not 1/21.
    NaNs are dropped; none left gives nan.
    """
    if int(n_draws) != n_draws or n_draws < 1:
        raise ValueError(f"n_draws must be a positive integer, got {n_draws!r}.")
    p = np.asarray(p_values, dtype=float).ravel()
    p = p[~np.isnan(p)]
    if p.size == 0:
        return math.nan
    size = int(n_draws) + 1
    ranks = np.rint(p * size).astype(int)
    if np.any(ranks < 1) or np.any(ranks > size) or not np.allclose(ranks / size, p, atol=1e-9):
        raise ValueError(f"p-values must be empirical p-values r / {size} with r in 1..{size}.")
    return combined_rank_p(ranks, [size] * p.size)


# ---------------------------------------------------------------------------------------------- draw-level tests
# A claim that some heads matter "more than random heads" takes the head set as its unit: the target set's effect is
# ranked among the effects of N random head sets of the same size, per unit (a language, a language pair), and the
# ranks of independent units are combined exactly (`combined_rank_p`). Item-level tests against the mean of a few
# draws would treat the drawn heads as fixed and reject a true null far too often.


def min_rank_p(n_draws: Sequence[int] | int, n_units: int = 1, two_sided: bool = True) -> float:
    """The smallest p a combined rank test can reach: prod(1 / (N_u + 1)) over the units (doubled if two-sided)."""
    draws = [int(n_draws)] * int(n_units) if np.isscalar(n_draws) else [int(n) for n in n_draws]
    if not draws or any(n < 1 for n in draws):
        raise ValueError(f"every unit needs at least one random draw, got {n_draws!r}.")
    p = float(np.prod([1.0 / (n + 1) for n in draws]))
    return min(1.0, 2 * p) if two_sided else p


def draws_needed(n_units: int, target: float = 0.001, two_sided: bool = True) -> int:
    """The fewest random draws per unit for which `min_rank_p` reaches `target` with n_units independent units."""
    if int(n_units) != n_units or n_units < 1:
        raise ValueError(f"n_units must be a positive integer, got {n_units!r}.")
    if not 0 < target < 1:
        raise ValueError(f"target must lie strictly between 0 and 1, got {target!r}.")
    n = max(1, math.ceil((target / (2.0 if two_sided else 1.0)) ** (-1.0 / n_units)) - 1)
    while min_rank_p(n, n_units, two_sided) > target:
        n += 1
    while n > 1 and min_rank_p(n - 1, n_units, two_sided) <= target:
        n -= 1
    return n


def _unit_ranks(targets: Sequence[float], draws: Sequence[np.ndarray], alternative: str) -> tuple[list[int], list[int]]:
    """Rank of each unit's target among its (non-NaN) draws, ties counted against the target."""
    ranks, sizes = [], []
    for t, r in zip(targets, draws):
        r = np.asarray(r, dtype=float)
        r = r[~np.isnan(r)]
        ranks.append(1 + int(np.sum(r >= t) if alternative == "greater" else np.sum(r <= t)))
        sizes.append(r.size + 1)
    return ranks, sizes


@dataclass(frozen=True)
class RankTest:
    """A draw-level test: per unit, the target effect's rank among random draws; p combined exactly over units."""

    p_value: float          # two-sided: 2 * min(combined p for "greater", combined p for "less"), at most 1
    p_greater: float
    p_less: float
    unit_p: tuple           # per unit, the one-sided rank p in the claimed direction
    draws: tuple            # per unit, the number of non-NaN draws
    min_p: float            # the smallest p_value this design can reach

    def to_dict(self) -> dict:
        return {"p_value": _f(self.p_value), "p_greater": _f(self.p_greater), "p_less": _f(self.p_less),
                "unit_p": [_f(p) for p in self.unit_p], "draws": list(self.draws), "min_p": _f(self.min_p)}


def rank_test(targets: Sequence[float], draws: Sequence[Sequence[float]], direction: int = 1) -> RankTest:
    """Rank each unit's target effect among its random draws' effects and combine the units exactly.

    targets[u]: the target head set's effect in unit u; draws[u]: the effects of that unit's random head sets (NaNs
    dropped). Units must be independent (no head set shared between them). Ties count against the target. Returns
    a two-sided p (twice the smaller one-sided combined p) and the per-unit p in the claimed direction.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}.")
    targets = [float(t) for t in targets]
    if not targets or len(targets) != len(draws):
        raise ValueError("targets and draws must be non-empty and give one entry per unit.")
    if any(math.isnan(t) for t in targets):
        raise ValueError("a unit's target effect is NaN: drop units without data before testing.")
    g_ranks, sizes = _unit_ranks(targets, draws, "greater")
    l_ranks, _ = _unit_ranks(targets, draws, "less")
    if any(n < 2 for n in sizes):
        raise ValueError("every unit needs at least one non-NaN random draw.")
    p_g, p_l = combined_rank_p(g_ranks, sizes), combined_rank_p(l_ranks, sizes)
    own = g_ranks if direction == 1 else l_ranks
    return RankTest(p_value=min(1.0, 2 * min(p_g, p_l)), p_greater=p_g, p_less=p_l,
                    unit_p=tuple(r / n for r, n in zip(own, sizes)), draws=tuple(n - 1 for n in sizes),
                    min_p=min_rank_p([n - 1 for n in sizes]))


def _weighted_nanmean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """counts [R, n] (resample multiplicities) times values [n, k] (NaN = missing) -> [R, k] weighted means
    over the non-missing values (NaN where a resample kept none)."""
    valid = ~np.isnan(values)
    if valid.all():  # no missing value: every resample's weights sum to its number of items
        return (counts @ values) / counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.where(valid, values, 0.0)) / (counts @ valid.astype(float))


def _resample_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """[rows, n] multiplicities of n indices drawn with replacement, rows times."""
    idx = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]  # row r's draws offset into its block
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def draw_level_bootstrap(target_items: Sequence, draw_items: Sequence, n_resamples: int = N_RESAMPLES,
                         seed: int = 0) -> tuple[float, np.ndarray]:
    """(effect, resampled effects) of mean over units of (target effect - mean of the draws' effects), by a
    two-level bootstrap: per unit, items are resampled (the same items for the target and every draw: paired) and
    the draws are resampled.

    target_items[u]: [items] per-item effect of the target set (treated - baseline; NaN = no outcome);
    draw_items[u]: [draws, items] the same for each random set. Units without data are left out; none left gives
    (nan, empty array).
    """
    n_resamples = _check_resamples(n_resamples)
    rng = np.random.default_rng(seed)
    units = []
    for t, r in zip(target_items, draw_items):
        t, r = np.asarray(t, dtype=float), np.atleast_2d(np.asarray(r, dtype=float))
        if r.shape[1] != t.size:
            raise ValueError(f"draws give {r.shape[1]} items where the target gives {t.size}.")
        r = r[~np.all(np.isnan(r), axis=1)]
        if t.size == 0 or r.shape[0] == 0 or np.all(np.isnan(t)):
            continue
        units.append((t, r))
    if not units:
        return math.nan, np.empty(0)
    point = float(np.mean([np.nanmean(t) - np.mean(np.nanmean(r, axis=1)) for t, r in units]))
    boot = np.zeros(n_resamples)
    for t, r in units:
        n_items, n_draws = t.size, r.shape[0]
        rows = max(1, _CHUNK // max(n_items, n_draws))
        for start in range(0, n_resamples, rows):
            stop = min(start + rows, n_resamples)
            items = _resample_counts(rng, stop - start, n_items)            # [R, items]
            t_star = _weighted_nanmean(items, t[:, None])[:, 0]              # [R]: target's mean over resampled items
            r_star = _weighted_nanmean(items, r.T)                            # [R, draws]: each draw's, same items
            weights = _resample_counts(rng, stop - start, n_draws)           # [R, draws]: resampled draws
            valid = ~np.isnan(r_star)
            with np.errstate(invalid="ignore", divide="ignore"):
                r_mean = np.sum(np.where(valid, r_star, 0.0) * weights, 1) / np.sum(valid * weights, 1)
            boot[start:stop] += t_star - r_mean
    boot /= len(units)
    return point, boot[~np.isnan(boot)]


def draw_level_interval(target_items: Sequence, draw_items: Sequence, confidence: float = 0.95,
                        n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(effect, low, high): `draw_level_bootstrap`'s effect and its percentile interval."""
    confidence = _check_confidence(confidence)
    point, boot = draw_level_bootstrap(target_items, draw_items, n_resamples, seed)
    if boot.size == 0:
        return point, math.nan, math.nan
    return (point, *_percentile_ci(boot, confidence))


def seeds_items_bootstrap(diffs: Sequence, n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, np.ndarray]:
    """(effect, resampled effects) of the mean over units of the mean over training seeds and items of diffs[u]
    [seeds, items] (treated - baseline per item, one row per training seed; NaN = no outcome), resampling the items
    (the same items for every seed) and the seeds of each unit: an interval that covers both sources of variation."""
    point, boot = draw_level_bootstrap([np.zeros(np.shape(d)[1]) for d in diffs], diffs, n_resamples, seed)
    return -point, -boot


def bootstrap_p(boot: np.ndarray, null_value: float = 0.0) -> float:
    """Two-sided bootstrap p of `null_value`: (1 + #{resamples on the far side of it}) / (1 + R), doubled, at most 1."""
    boot = np.asarray(boot, dtype=float)
    if boot.size == 0:
        return math.nan
    low, high = np.sum(boot <= null_value), np.sum(boot >= null_value)
    return float(min(1.0, 2 * (1 + min(low, high)) / (1 + boot.size)))


def diagonal_contrast_bootstrap(rows: Sequence, n_resamples: int = N_RESAMPLES, seed: int = 0) \
        -> tuple[float, np.ndarray]:
    """(effect, resampled effects) of mean over x of (rows[x][x] - mean over y != x of rows[x][y]), where rows[x] is
    [sets, items]: x's items under each language's head set (same order of sets as of rows). x's items are resampled
    (the same items for every set)."""
    n = len(rows)
    rng = np.random.default_rng(seed)
    mats = [np.asarray(r, dtype=float) for r in rows]
    if n < 2 or any(m.shape[0] != n for m in mats):
        raise ValueError("rows must hold one [sets, items] array per language, with one set per language.")

    def contrast(means: np.ndarray, x: int) -> np.ndarray:  # means [..., sets]
        return means[..., x] - (means.sum(-1) - means[..., x]) / (n - 1)

    point = float(np.mean([contrast(np.nanmean(m, axis=1), x) for x, m in enumerate(mats)]))
    boot = np.zeros(_check_resamples(n_resamples))
    for x, m in enumerate(mats):
        counts = _resample_counts(rng, n_resamples, m.shape[1])      # [R, items]
        boot += contrast(_weighted_nanmean(counts, m.T), x)           # [R]
    return point, boot / n


def rank_mde(n_draws: Sequence[int], alpha: float, power: float = 0.8, reps: int = 4000, seed: int = 0) -> float:
    """The smallest shift of every unit's target effect, in standard deviations of its draws' effects, that the
    two-sided combined rank test detects at level alpha with the given power (normal draws; Monte Carlo with a
    fixed seed, so the same design gives the same number). inf when min_rank_p(n_draws) > alpha."""
    return _rank_mde(tuple(int(n) for n in n_draws), float(alpha), float(power), int(reps), int(seed))


@functools.lru_cache(maxsize=256)
def _rank_mde(n_draws: tuple, alpha: float, power: float, reps: int, seed: int) -> float:
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must lie strictly between 0 and 1, got {alpha!r} and {power!r}.")
    if min_rank_p(n_draws) > alpha:
        return math.inf
    sizes = [n + 1 for n in n_draws]
    cdf = _rank_sum_cdf(sizes)
    rng = np.random.default_rng(seed)
    noise_t = rng.standard_normal((reps, len(n_draws)))
    noise_r = [rng.standard_normal((reps, n)) for n in n_draws]

    def detects(delta: float) -> float:
        ranks = sum(1 + np.sum(r >= (delta + noise_t[:, [u]]), axis=1) for u, r in enumerate(noise_r))  # [reps]
        p = np.minimum(1.0, 2 * cdf[ranks - len(n_draws)])
        return float(np.mean(p <= alpha))

    low, high = 0.0, 1.0
    while detects(high) < power:
        high *= 2
        if high > 1e3:
            return math.inf
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if detects(mid) < power else (low, mid)
    return high


def label_permutation_test(matrix, n_resamples: int = N_RESAMPLES, seed: int = 0, max_exact: int = 9) -> dict:
    """Does each row's own column stand out? matrix[x][y]: the effect on x's items of y's head set (x, y over the same
    languages). Statistic: the trace; null: the head sets' language labels are exchangeable, so the trace is compared
    with sum_x matrix[x][pi(x)] over permutations pi (exact over all n! for n <= max_exact, else random ones with the
    identity counted). Row and column main effects (a text that is hurt by everything, a head set that hurts
    everything) do not change the statistic under permutation. Returns {"p_value" (two-sided), "p_greater",
    "p_less", "min_p", "permutations", "exact"}."""
    import itertools

    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"matrix must be square with at least 2 rows, got shape {m.shape}.")
    if np.isnan(m).any():
        raise ValueError("matrix contains NaN.")
    n = m.shape[0]
    observed = float(np.trace(m))
    tol = 1e-9 * max(1.0, float(np.abs(m).sum()))
    rows = np.arange(n)
    if n <= max_exact:
        perms = np.array(list(itertools.permutations(range(n))))
        stats_ = m[rows, perms].sum(1)
        count = len(perms)
        p_g, p_l = np.sum(stats_ >= observed - tol) / count, np.sum(stats_ <= observed + tol) / count
        min_p, exact = 1.0 / count, True
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((n_resamples, n)), axis=1)
        stats_ = m[rows, perms].sum(1)
        count = n_resamples + 1
        p_g, p_l = (1 + np.sum(stats_ >= observed - tol)) / count, (1 + np.sum(stats_ <= observed + tol)) / count
        min_p, exact = 1.0 / count, False
    return {"p_value": float(min(1.0, 2 * min(p_g, p_l))), "p_greater": float(p_g), "p_less": float(p_l),
            "min_p": float(min(1.0, 2 * min_p)), "permutations": int(count), "exact": exact}


def holm(p_values) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    With the m non-NaN p-values sorted ascending, p_(i) -> max_{j<=i} min(1, (m - j + 1)·p_(j)). NaNs stay NaN
    and do not count toward m. An empty list gives an empty list.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError("p-values must lie in [0, 1].")
    out, idx = np.full(p.shape, np.nan), np.flatnonzero(valid)
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return [float(x) for x in out]


def minimum_detectable_effect(n: int, base_rate: float, alpha: float = 0.05, power: float = 0.8,
                              discordant_rate: float | None = None) -> float:
    """Smallest true difference in a rate (a fraction: 0.05 = 5 points) a two-sided test at alpha detects with
    the given power on n paired items, by normal approximation with z_a = z(1 - alpha/2), z_b = z(power).

    - With discordant_rate (the share of items whose outcome changes between the two conditions), the paired
      McNemar approximation: (z_a + z_b)·sqrt(discordant_rate / n).
    - Without it, the conservative two-independent-proportions approximation, which ignores the pairing:
      (z_a + z_b)·sqrt(2·p·(1 - p) / n) with p = base_rate.
    """
    if n != int(n) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    if not 0 < base_rate < 1:
        raise ValueError(f"base_rate must lie strictly between 0 and 1, got {base_rate!r}.")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must lie strictly between 0 and 1, got {alpha!r} and {power!r}.")
    if discordant_rate is not None and not 0 < discordant_rate <= 1:
        raise ValueError(f"discordant_rate must lie in (0, 1], got {discordant_rate!r}.")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    variance = discordant_rate if discordant_rate is not None else 2 * base_rate * (1 - base_rate)
    return z * math.sqrt(variance / n)


INVERSION_FLOOR = 1e-6


def inverted_p(interval, null_value: float) -> float:
    """The two-sided p of `null_value` that an interval procedure implies: 1 - the smallest confidence at which
    interval(confidence) contains null_value (by bisection; at most 1, at least INVERSION_FLOOR), so the test and the
    interval never disagree at any level."""
    def contains(conf: float) -> bool:
        low, high = interval(conf)
        return low <= null_value <= high

    if contains(1e-9):
        return 1.0
    if not contains(1 - INVERSION_FLOOR):
        return INVERSION_FLOOR
    low, high = 1e-9, 1 - INVERSION_FLOOR
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (low, mid) if contains(mid) else (mid, high)
    return float(1 - high)


def mde_from_interval(ci: Sequence[float], confidence: float = 0.95, alpha: float = 0.05, power: float = 0.8) -> float:
    """The effect a two-sided test at level `alpha` detects with `power`, from a `confidence` interval of the same
    estimate: (z(1 - alpha/2) + z(power)) * SE with SE = half-width / z((1 + confidence)/2). It is never smaller
    than the half-width of an interval at level 1 - alpha. nan without an interval."""
    low, high = (np.nan if v is None else float(v) for v in ci)
    if math.isnan(low) or math.isnan(high):
        return math.nan
    se = (high - low) / 2 / NormalDist().inv_cdf((1 + _check_confidence(confidence)) / 2)
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must lie strictly between 0 and 1, got {alpha!r} and {power!r}.")
    return (NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)) * se


def verdict(comparison: Comparison, direction: int, alpha: float = 0.05, adjusted_p: float | None = None,
            null_value: float = 0.0) -> str:
    """"holds" | "does not hold" | "inconclusive" for a claim that the effect is above null_value (direction=+1) or
    below it (-1), using p = adjusted_p if given, else comparison.p_value (a two-sided test of null_value).

    - "inconclusive" if p or the effect is NaN;
    - "holds" if p < alpha, the effect is on the claimed side of null_value and the CI excludes null_value on
      that side;
    - "does not hold" if p < alpha, the effect is on the opposite side and the CI excludes null_value there;
    - otherwise "inconclusive".
    A size claim ("as large as the paper's +5 points") is the same test with null_value = the paper's effect: it
    holds when the effect is significantly at least that large and does not hold when it is significantly smaller.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    p = comparison.p_value if adjusted_p is None else adjusted_p
    low, high = comparison.ci
    if p is None or math.isnan(p) or math.isnan(comparison.effect):
        return "inconclusive"
    if not p < alpha:
        return "inconclusive"
    side = direction * (comparison.effect - null_value)
    above, below = low > null_value, high < null_value
    if side > 0 and (above if direction == 1 else below):
        return "holds"
    if side < 0 and (below if direction == 1 else above):
        return "does not hold"
    return "inconclusive"


def rank_verdict(p_adjusted: float, p_greater: float, p_less: float, direction: int, alpha: float = 0.05) -> str:
    """The verdict of a draw-level test: "holds" when the Holm-adjusted two-sided p is below alpha and the target
    lies on the claimed side of the random draws (its one-sided p on that side is the smaller), "does not hold"
    when significant on the other side, else "inconclusive"."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}.")
    if p_adjusted is None or math.isnan(p_adjusted) or not p_adjusted < alpha:
        return "inconclusive"
    claimed, other = (p_greater, p_less) if direction == 1 else (p_less, p_greater)
    if claimed < other:
        return "holds"
    if other < claimed:
        return "does not hold"
    return "inconclusive"
