"""Intervals, p-values and verdicts for paired comparisons of head-mask interventions (numpy only).

The same items are scored under a baseline (``a``) and a treatment (``b``): `paired_difference` gives mean(b - a)
with a paired bootstrap CI and a p-value, `holm` adjusts a family of p-values, `verdict` reads a `Comparison`.
Every random function takes ``seed`` and gives the same numbers for the same inputs and seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Elements per resampling chunk: bounds memory (~2 arrays of this many 8-byte values) whatever n and R are.
_CHUNK = 1 << 21
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


def bootstrap_mean_ci(x, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0):
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
    """Two-sided randomization p of |sum(d)| under random sign flips: (1 + #{|sum(s·d)| >= |sum(d)|}) / (1 + R)."""
    d = d[d != 0]  # zero differences contribute nothing under any sign
    if d.size == 0:
        return 1.0
    total, observed = d.sum(), abs(d.sum())
    tol = 1e-9 * np.abs(d).sum()  # so that exact ties (discrete data) are not lost to rounding
    rows, hits = max(1, _CHUNK // d.size), 0
    for start in range(0, n_resamples, rows):
        r = min(rows, n_resamples - start)
        # One random bit per item: sum(s·d) with s = 2·bit - 1 is 2·(bits @ d) - sum(d).
        bits = np.unpackbits(rng.integers(0, 256, size=(r, -(-d.size // 8)), dtype=np.uint8), axis=1,
                             count=d.size)
        hits += int(np.sum(np.abs(2 * (bits @ d) - total) >= observed - tol))
    return (1 + hits) / (1 + n_resamples)


def paired_difference(a, b, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0, unit: str = "",
                      binary: bool | None = None) -> Comparison:
    """Compare per-item outcomes a (baseline) and b (treatment) on the same items in the same order.

    Pairs where either value is NaN are dropped (e.g. undecidable off-target language); n is the number kept.
    effect = mean(b - a). Binary outcomes (``binary=None`` detects all-0/1 data): Newcombe's paired score CI
    and the exact McNemar p. Otherwise: the percentile paired bootstrap CI of mean(b - a) (item indices
    resampled with replacement, n_resamples times) and a two-sided paired sign-flip randomization test with
    n_resamples random sign vectors, p = (1 + #{|mean(s·d)| >= |mean(d)|}) / (1 + n_resamples).
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
    pmf = np.ones(1)
    for _ in range(p.size):  # distribution of the rank sum, minus the minimum m
        pmf = np.convolve(pmf, np.full(size, 1.0 / size))
    observed = int(ranks.sum()) - p.size
    return float(min(1.0, pmf[: observed + 1].sum()))


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


def verdict(comparison: Comparison, direction: int, alpha: float = 0.05, adjusted_p: float | None = None,
            null_value: float = 0.0, paper_effect: float | None = None) -> str:
    """"holds" | "does not hold" | "inconclusive" for a claim that the effect is positive (direction=+1) or
    negative (-1), using p = adjusted_p if given, else comparison.p_value.

    - "inconclusive" if p or the effect is NaN;
    - "does not hold" if paper_effect is given and the CI lies entirely on the null side of it (the paper's
      size is ruled out: paper +5, CI [-2, +3]); this wins even over a significant smaller effect in the claimed
      direction, because the claim being checked then includes its size;
    - "holds" if p < alpha, the effect is on the claimed side of null_value and the CI excludes null_value on
      that side;
    - "does not hold" if p < alpha and the effect is on the opposite side;
    - otherwise "inconclusive".
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    p = comparison.p_value if adjusted_p is None else adjusted_p
    low, high = comparison.ci
    if p is None or math.isnan(p) or math.isnan(comparison.effect):
        return "inconclusive"
    if paper_effect is not None and ((direction == 1 and high < paper_effect)
                                     or (direction == -1 and low > paper_effect)):
        return "does not hold"
    if not p < alpha:
        return "inconclusive"
    side = direction * (comparison.effect - null_value)
    excludes_null = low > null_value if direction == 1 else high < null_value
    if side > 0 and excludes_null:
        return "holds"
    if side < 0:
        return "does not hold"
    return "inconclusive"
