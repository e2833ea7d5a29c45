"""lahis_ctrl.eval.stats: known textbook values, calibration by simulation, edge cases and input checks.

numpy only (no scipy): reference values are hard-coded from their sources or computed exactly with fractions.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from lahis_ctrl.eval.stats import (
    METHOD_MCNEMAR,
    METHOD_SIGNFLIP,
    Comparison,
    bootstrap_mean_ci,
    empirical_p,
    holm,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_difference,
    verdict,
    wilson_interval,
)

NAN = float("nan")


def binary_pairs(seed: int, n: int, rate_a: float, rate_b: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random(n) < rate_a).astype(float), (rng.random(n) < rate_b).astype(float)


# ---------------------------------------------------------------- Wilson


# Newcombe RG (1998), "Two-sided confidence intervals for the single proportion: comparison of seven methods",
# Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score without continuity correction).
@pytest.mark.parametrize("k, n, low, high", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
    (0, 10, 0.0, 0.2775),
])
def test_wilson_newcombe_table(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert isinstance(lo, float) and isinstance(hi, float)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_arrays_bounds_and_empty():
    lo, hi = wilson_interval(np.array([0, 5, 10, 0]), np.array([10, 10, 10, 0]))
    assert lo[0] == 0.0 and hi[2] == 1.0  # exact ends, no rounding residue
    assert lo[1] == pytest.approx(1 - hi[1]) and lo[1] < 0.5 < hi[1]  # symmetric at p = 1/2
    assert math.isnan(lo[3]) and math.isnan(hi[3])
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    narrow, wide = wilson_interval(40, 100, 0.80), wilson_interval(40, 100, 0.99)
    assert wide[0] < narrow[0] < 0.4 < narrow[1] < wide[1]


# ---------------------------------------------------------------- McNemar


def exact_mcnemar_reference(n01: int, n10: int) -> float:
    n, k = n01 + n10, min(n01, n10)
    return min(1.0, float(Fraction(2 * sum(math.comb(n, i) for i in range(k + 1)), 2 ** n))) if n else 1.0


def discordant(n01: int, n10: int, concordant: int = 0) -> tuple[list[int], list[int]]:
    a = [0] * n01 + [1] * n10 + [1] * concordant
    b = [1] * n01 + [0] * n10 + [1] * concordant
    return a, b


def test_mcnemar_published_example():
    # Fagerland, Lydersen & Laake (2013), "The McNemar test for binary matched-pairs data: mid-p and asymptotic
    # are better than exact conditional", BMC Med Res Methodol 13:91, Table 1 (Bentur et al. 2009, airway
    # hyper-responsiveness before/after stem cell transplantation, 21 children): discordant 1 and 7,
    # concordant 1 and 12. Exact conditional p = 2 * P(Bin(8, 1/2) <= 1) = 2 * 9/256 = 0.0703125 (paper: 0.070).
    a = [1] * 1 + [1] * 1 + [0] * 7 + [0] * 12
    b = [1] * 1 + [0] * 1 + [1] * 7 + [0] * 12
    assert mcnemar_exact(a, b) == pytest.approx(0.0703125, abs=1e-12)
    assert mcnemar_exact(b, a) == pytest.approx(0.0703125, abs=1e-12)  # two-sided: symmetric


@pytest.mark.parametrize("n01, n10", [(0, 0), (0, 1), (3, 3), (0, 12), (150, 86), (40, 61), (1400, 1530)])
def test_mcnemar_matches_exact_fractions(n01, n10):
    assert mcnemar_exact(*discordant(n01, n10, concordant=5)) == pytest.approx(
        exact_mcnemar_reference(n01, n10), rel=1e-9, abs=1e-300)


def test_mcnemar_large_n_is_stable():
    # 100,000 discordant pairs; reference: log pmf by lgamma, summed with fsum (independent of the cumsum path).
    n01, n10 = 49_000, 51_000
    n, k = n01 + n10, n01
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    ref = 2 * math.exp(top) * math.fsum(math.exp(v - top) for v in logs)
    p = mcnemar_exact(*discordant(n01, n10))
    assert 0 < p < 1e-9 and p == pytest.approx(ref, rel=1e-7)
    assert mcnemar_exact(*discordant(50_000, 50_000)) == 1.0


# ---------------------------------------------------------------- paired_difference


def test_bootstrap_coverage_near_nominal():
    # 600 replicates: the binomial SE of the coverage is then ~0.009, so [0.91, 0.98] is a > 3 SE band around 0.95.
    true_diff, covered, reps = 0.3, 0, 600
    for seed in range(reps):
        rng = np.random.default_rng(10_000 + seed)
        a = rng.normal(0.0, 1.0, 100)
        b = a + rng.normal(true_diff, 1.0, 100)
        c = paired_difference(a, b, n_resamples=1000, seed=seed)
        covered += c.ci[0] <= true_diff <= c.ci[1]
    assert 0.91 <= covered / reps <= 0.98


def test_planted_effect_holds():
    for seed in range(5):
        a, b = binary_pairs(seed, 400, 0.50, 0.65)
        c = paired_difference(a, b, seed=seed, unit="accuracy")
        assert c.method == METHOD_MCNEMAR and c.n == 400
        assert c.ci[0] < c.effect < c.ci[1]
        assert verdict(c, +1) == "holds"
        assert verdict(c, -1) == "does not hold"


def test_pure_noise_false_positive_rate_near_alpha():
    holds = significant = 0
    reps = 200
    for seed in range(reps):
        a, b = binary_pairs(1000 + seed, 400, 0.5, 0.5)
        c = paired_difference(a, b, n_resamples=500, seed=seed)
        holds += verdict(c, +1) == "holds"
        significant += c.p_value < 0.05
    assert holds / reps <= 0.05  # one-sided claim: ~alpha/2 expected
    assert 0.01 <= significant / reps <= 0.10  # exact McNemar is a little conservative


def test_sign_flip_null_calibration_and_power():
    reps, significant = 200, 0
    for seed in range(reps):
        rng = np.random.default_rng(5000 + seed)
        a = rng.normal(10.0, 2.0, 60)
        significant += paired_difference(a, a + rng.normal(0, 1, 60), n_resamples=500, seed=seed).p_value < 0.05
    assert 0.01 <= significant / reps <= 0.10
    rng = np.random.default_rng(7)
    a = rng.normal(10.0, 2.0, 200)
    c = paired_difference(a, a + rng.normal(-0.5, 1, 200), seed=1, unit="ppl")
    assert c.method == METHOD_SIGNFLIP and c.p_value < 0.01 and c.ci[1] < 0
    assert verdict(c, -1) == "holds"


def test_sign_flip_matches_exact_permutation_p():
    # d = (1, 2, 3): of the 8 sign vectors only (+,+,+) and (-,-,-) reach |sum| >= 6, so the exact p is 2/8;
    # up to 20 items every sign vector is enumerated, so the p is exact and the same for every seed
    for seed in range(5):
        c = paired_difference([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], seed=seed, binary=False)
        assert c.p_value == 0.25
    # six texts all moving one way: 2/64 exactly (not 0.041 from 2000 random sign vectors)
    assert paired_difference(np.zeros(6), np.arange(1.0, 7.0)).p_value == 2 / 64
    # 14 items, checked against a brute-force enumeration of the sign vectors in plain Python
    import itertools

    d = np.random.default_rng(3).normal(0.3, 1.0, 14)
    total = abs(d.sum())
    hits = sum(abs(sum(s * x for s, x in zip(signs, d))) >= total - 1e-9 for signs in itertools.product((-1, 1), repeat=14))
    assert paired_difference(np.zeros(14), d).p_value == pytest.approx(hits / 2 ** 14, abs=1e-15)
    # With only 1 + R resamples the smallest attainable p is 1 / (1 + R).
    c = paired_difference(np.zeros(50), np.arange(1.0, 51.0), n_resamples=99, seed=0)
    assert c.p_value == pytest.approx(0.01)


def test_nan_pairs_are_dropped():
    a = [1, 0, NAN, 1, 0, 1, 0, 0, 1, 0]
    b = [1, 1, 1, NAN, 1, 1, 0, 1, 1, NAN]
    c = paired_difference(a, b, seed=4)
    keep = [0, 1, 4, 5, 6, 7, 8]
    ref = paired_difference([a[i] for i in keep], [b[i] for i in keep], seed=4)
    assert c == ref and c.n == 7 and c.method == METHOD_MCNEMAR
    assert c.effect == pytest.approx(3 / 7)


def test_all_nan_and_all_zero_differences():
    c = paired_difference([NAN, 1.0], [0.0, NAN])
    assert c.n == 0 and math.isnan(c.effect) and math.isnan(c.p_value) and all(math.isnan(v) for v in c.ci)
    assert c.to_dict()["effect"] is None and c.to_dict()["ci"] == [None, None]
    assert verdict(c, +1) == "inconclusive"
    c = paired_difference([0.3, 2.5, 7.0], [0.3, 2.5, 7.0])
    assert (c.effect, c.ci, c.p_value, c.n) == (0.0, (0.0, 0.0), 1.0, 3)
    # binary outcomes without a discordant pair: Newcombe's interval stays informative (a bootstrap gives [0, 0])
    c = paired_difference([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert (c.effect, c.p_value, c.n) == (0.0, 1.0, 3) and c.ci[0] < -0.3 and c.ci[1] > 0.3


def test_determinism_and_seed():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(0.1, 1, size=300)
    assert paired_difference(a, b, seed=11) == paired_difference(a, b, seed=11)
    assert paired_difference(a, b, seed=11).ci != paired_difference(a, b, seed=12).ci
    assert bootstrap_mean_ci(b - a, seed=5) == bootstrap_mean_ci(b - a, seed=5)


def test_binary_flag_and_to_dict():
    a, b = binary_pairs(2, 50, 0.4, 0.6)
    assert paired_difference(a, b).method == METHOD_MCNEMAR
    assert paired_difference(a, b, binary=False).method == METHOD_SIGNFLIP
    assert paired_difference(a + 0.5, b, binary=None).method == METHOD_SIGNFLIP
    d = paired_difference(a, b, unit="acc").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"effect", "ci", "p_value", "n", "unit", "method", "confidence"}
    assert type(d["effect"]) is float and type(d["n"]) is int and len(d["ci"]) == 2 and d["unit"] == "acc"


def test_bootstrap_mean_ci():
    x = np.r_[np.arange(100.0), NAN]
    mean, low, high = bootstrap_mean_ci(x, seed=1)
    assert mean == pytest.approx(49.5) and low < 49.5 < high
    # Standard error of the mean is ~2.9, so a 95% interval is roughly mean +- 5.7.
    assert high - low == pytest.approx(2 * 1.96 * np.std(x[:-1]) / 10, rel=0.15)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([NAN, NAN]))


# ---------------------------------------------------------------- empirical_p, holm, MDE


def test_empirical_p_edges():
    null = np.array([0.1, 0.2, 0.2, 0.3, -0.4])
    assert empirical_p(1.0, null) == pytest.approx(1 / 6)  # beats every draw: the smallest possible p
    assert empirical_p(-1.0, null) == 1.0
    assert empirical_p(0.2, null) == pytest.approx(4 / 6)  # ties count against the effect
    assert empirical_p(-0.2, -null, "less") == empirical_p(0.2, null, "greater")
    assert empirical_p(-0.35, null, "two-sided") == pytest.approx(2 / 6)  # |-0.4| >= 0.35
    assert empirical_p(0.25, [0.1, NAN, 0.3]) == pytest.approx(2 / 3)  # NaN draws dropped
    assert math.isnan(empirical_p(NAN, null))


def test_holm_known_values():
    # Worked example of the Wikipedia article "Holm-Bonferroni method": p = 0.01, 0.04, 0.03, 0.005 (m = 4).
    # Sorted: 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, 1*0.04 = 0.04 -> running max 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.01, NAN, 0.04])  # NaN passes through and m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6, 0.9]) == [1.0, 1.0, 1.0]
    assert holm([]) == []
    rng = np.random.default_rng(0)
    p = rng.random(30) ** 3
    adj = np.array(holm(p))
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)


def test_minimum_detectable_effect():
    z = 1.959963984540054 + 0.8416212335729143  # z(0.975) + z(0.80)
    # Unpaired: 2.8016 * sqrt(2 * 0.5 * 0.5 / 400) = 0.09905 (about 10 points on 400 items).
    assert minimum_detectable_effect(400, 0.5) == pytest.approx(z * math.sqrt(0.5 / 400), rel=1e-9)
    assert minimum_detectable_effect(400, 0.5) == pytest.approx(0.09905, abs=1e-5)
    # Paired, 20% of items change: 2.8016 * sqrt(0.2 / 400) = 0.06265.
    assert minimum_detectable_effect(400, 0.5, discordant_rate=0.2) == pytest.approx(0.06265, abs=1e-5)
    mdes = [minimum_detectable_effect(n, 0.3) for n in (50, 100, 400, 1190, 10_000)]
    assert all(x > y for x, y in zip(mdes, mdes[1:]))
    assert minimum_detectable_effect(400, 0.5, alpha=0.01) > minimum_detectable_effect(400, 0.5)
    assert minimum_detectable_effect(400, 0.5, power=0.9) > minimum_detectable_effect(400, 0.5)


# ---------------------------------------------------------------- verdict


def cmp(effect, low, high, p):
    return Comparison(effect=effect, ci=(low, high), p_value=p, n=100)


def test_verdict_rules():
    assert verdict(cmp(0.10, 0.05, 0.15, 0.001), +1) == "holds"
    assert verdict(cmp(0.10, 0.05, 0.15, 0.001), -1) == "does not hold"
    assert verdict(cmp(-0.10, -0.15, -0.05, 0.001), -1) == "holds"
    assert verdict(cmp(0.02, -0.01, 0.05, 0.30), +1) == "inconclusive"
    assert verdict(cmp(0.10, 0.05, 0.15, 0.001), +1, adjusted_p=0.2) == "inconclusive"
    assert verdict(cmp(0.10, 0.05, 0.15, NAN), +1) == "inconclusive"
    assert verdict(cmp(0.10, -0.01, 0.21, 0.04), +1) == "inconclusive"  # p and CI disagree: not enough
    assert verdict(cmp(0.10, 0.06, 0.14, 0.001), +1, null_value=0.05) == "holds"
    assert verdict(cmp(0.10, 0.06, 0.14, 0.001), +1, null_value=0.08) == "inconclusive"


def test_verdict_size_reading_and_direction_are_separate():
    # a size claim is the same test with the paper's value as the null: significantly below +5 does not hold ...
    assert verdict(cmp(0.02, 0.01, 0.03, 0.001), +1, null_value=0.05) == "does not hold"
    # ... significantly at least +5 holds, and an interval around +5 is inconclusive
    assert verdict(cmp(0.10, 0.08, 0.12, 0.001), +1, null_value=0.05) == "holds"
    assert verdict(cmp(0.05, 0.01, 0.09, 0.9), +1, null_value=0.05) == "inconclusive"
    # the direction reading of a significant gain in the claimed direction is never "does not hold"
    assert verdict(cmp(0.02, 0.01, 0.03, 0.001), +1) == "holds"
    # a significant effect whose interval still touches the null on the claimed side is inconclusive
    assert verdict(cmp(-0.02, -0.04, 0.001, 0.01), +1) == "inconclusive"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call", [
    lambda: paired_difference([1, 2], [1]),
    lambda: paired_difference([], []),
    lambda: paired_difference([[1, 2]], [[1, 2]]),
    lambda: paired_difference([1.0, math.inf], [1.0, 2.0]),
    lambda: paired_difference([1, 0], [0, 1], confidence=1.0),
    lambda: paired_difference([1, 0], [0, 1], confidence=0.0),
    lambda: paired_difference([1, 0], [0, 1], confidence=95),
    lambda: paired_difference([1, 0], [0, 1], n_resamples=0),
    lambda: paired_difference([1, 0.5], [0, 1], binary=True),
    lambda: wilson_interval(-1, 10),
    lambda: wilson_interval(11, 10),
    lambda: wilson_interval(1, -1),
    lambda: wilson_interval(np.array([1, 5]), np.array([2, 4])),
    lambda: wilson_interval(1, 10, confidence=1.5),
    lambda: mcnemar_exact([0, 2], [1, 0]),
    lambda: mcnemar_exact([0, 1], [1]),
    lambda: bootstrap_mean_ci([]),
    lambda: bootstrap_mean_ci([1.0, 2.0], confidence=-0.1),
    lambda: empirical_p(0.1, []),
    lambda: empirical_p(0.1, [NAN]),
    lambda: empirical_p(0.1, [0.2], alternative="bigger"),
    lambda: holm([0.5, 1.2]),
    lambda: holm([-0.1]),
    lambda: minimum_detectable_effect(0, 0.5),
    lambda: minimum_detectable_effect(100, 0.0),
    lambda: minimum_detectable_effect(100, 1.2),
    lambda: minimum_detectable_effect(100, 0.5, alpha=0.0),
    lambda: minimum_detectable_effect(100, 0.5, power=1.0),
    lambda: minimum_detectable_effect(100, 0.5, discordant_rate=0.0),
    lambda: verdict(cmp(0.1, 0.05, 0.15, 0.01), 0),
    lambda: verdict(cmp(0.1, 0.05, 0.15, 0.01), +1, alpha=1.5),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message.endswith(".") and message.count(". ") == 0  # one clear sentence


def test_combined_empirical_p_is_the_exact_rank_sum_distribution():
    from lahis_ctrl.eval.stats import combined_empirical_p

    # two languages, one draw each: ranks 1 or 2; both rank 1 happens with probability 1/4
    assert combined_empirical_p([0.5, 0.5], 1) == pytest.approx(0.25)
    assert combined_empirical_p([1.0, 0.5], 1) == pytest.approx(0.75)
    assert combined_empirical_p([1.0, 1.0], 1) == pytest.approx(1.0)
    # 8 languages each beating all 20 draws: (1/21)^8
    assert combined_empirical_p([1 / 21] * 8, 20) == pytest.approx(21.0 ** -8)
    assert combined_empirical_p([1 / 21], 20) == pytest.approx(1 / 21)
    assert math.isnan(combined_empirical_p([float("nan")], 20))
    with pytest.raises(ValueError):
        combined_empirical_p([0.3], 20)  # not r / 21


def test_newcombe_paired_interval():
    from lahis_ctrl.eval.stats import newcombe_paired_interval, wilson_interval

    # cells n11=36, n10=12, n01=2, n00=0 (n=50): p_a=0.96, p_b=0.76; hand-computed from the method-10 formula
    a = [1] * 36 + [1] * 12 + [0] * 2
    b = [1] * 36 + [0] * 12 + [1] * 2
    low, high = newcombe_paired_interval(a, b)
    assert low == pytest.approx(-0.341, abs=1e-3) and high == pytest.approx(-0.057, abs=1e-3)  # 4-digit hand arithmetic
    # all outcomes 0 in both: phi undefined (0), the interval is the two Wilson half-widths
    _, u = wilson_interval(0, 20)
    assert newcombe_paired_interval([0] * 20, [0] * 20) == pytest.approx((-u, u))
    # coverage near 95% on correlated paired binary data with a true difference
    rng, covered, reps = np.random.default_rng(1), 0, 600
    for _ in range(reps):
        a = (rng.random(60) < 0.4).astype(float)
        flip = rng.random(60)
        b = np.where(flip < 0.25, 1 - a, a)  # 25% of items change, more often 0 -> 1
        b = np.where((a == 1) & (flip < 0.1), 1.0, b)
        true = 0.6 * 0.25 - 0.4 * 0.15  # E[b - a] = P(a=0) P(flip) - P(a=1) P(0.1 <= flip < 0.25)
        low, high = newcombe_paired_interval(a, b)
        covered += low <= true <= high
    assert 0.92 <= covered / reps <= 0.99


# ---------------------------------------------------------------- draw-level tests (the head set as the unit)


def test_min_rank_p_and_draws_needed():
    from lahis_ctrl.eval.stats import draws_needed, min_rank_p

    assert min_rank_p(20, 1, two_sided=False) == pytest.approx(1 / 21)
    assert min_rank_p([1, 3]) == pytest.approx(2 / 8)
    # the fewest draws whose smallest two-sided p is <= 0.001: 1999 for one unit, 44 for two, 6 for four, 2 for eight
    assert [draws_needed(m) for m in (1, 2, 4, 8)] == [1999, 44, 6, 2]
    for m in range(1, 12):
        n = draws_needed(m)
        assert min_rank_p(n, m) <= 0.001 and (n == 1 or min_rank_p(n - 1, m) > 0.001)


def test_rank_test_is_the_exact_rank_sum_and_calibrated():
    from lahis_ctrl.eval.stats import rank_test

    # two units, each beating both of its draws: P(R1 + R2 <= 2) = 1/9 one-sided, 2/9 two-sided
    r = rank_test([5.0, 7.0], [[1.0, 2.0], [3.0, 4.0]], +1)
    assert (r.p_greater, r.p_value, r.draws, r.unit_p) == (pytest.approx(1 / 9), pytest.approx(2 / 9), (2, 2),
                                                          (pytest.approx(1 / 3), pytest.approx(1 / 3)))
    # unequal numbers of draws and NaN draws: sizes 2 and 4, ranks 1 and 1 -> 1/8
    r = rank_test([5.0, 7.0], [[1.0, np.nan], [3.0, 4.0, 0.0]], +1)
    assert r.p_greater == pytest.approx(1 / 8) and r.draws == (1, 3)
    # ties count against the target
    assert rank_test([1.0], [[1.0, 0.0]], +1).p_greater == pytest.approx(2 / 3)
    # under the null (target exchangeable with the draws) the two-sided p is uniform-ish: P(p < 0.05) <= 0.05
    rng = np.random.default_rng(0)
    ps = [rank_test(rng.normal(size=4), rng.normal(size=(4, 6)), +1).p_value for _ in range(3000)]
    assert np.mean(np.array(ps) < 0.05) <= 0.05
    assert 0.02 <= np.mean(np.array(ps) < 0.05)


def test_rank_mde_gives_the_power_it_claims():
    from lahis_ctrl.eval.stats import rank_mde, rank_test

    delta = rank_mde([6] * 4, 0.05 / 16)
    rng = np.random.default_rng(11)
    hits = [rank_test(delta + rng.normal(size=4), rng.normal(size=(4, 6)), +1).p_value <= 0.05 / 16
            for _ in range(2000)]
    assert 0.76 <= np.mean(hits) <= 0.85
    assert rank_mde([2] * 2, 0.001) == math.inf  # 2 x (1/3)^2 = 0.22 can never reach 0.001


def test_draw_level_interval_covers_the_difference_of_means():
    from lahis_ctrl.eval.stats import draw_level_interval

    # the estimand: the target sets' own effects (each a fixed set: 1 + its deviation) minus the mean effect of random
    # sets (0), averaged over units; random sets vary (sd 0.5) and items add noise (sd 1). The interval covers it.
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(100 + seed)
        own = 1.0 + rng.normal(0, 0.5, 4)
        t = [own[u] + rng.normal(0, 1, 40) for u in range(4)]
        r = [rng.normal(0, 0.5, (8, 1)) + rng.normal(0, 1, (8, 40)) for _ in range(4)]
        effect, low, high = draw_level_interval(t, r, n_resamples=2000, seed=seed)
        covered += low <= own.mean() <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_label_permutation_test_is_exact_and_ignores_row_and_column_effects():
    from lahis_ctrl.eval.stats import label_permutation_test

    rng = np.random.default_rng(5)
    m = np.eye(5) + rng.normal(0, 0.05, (5, 5))
    out = label_permutation_test(m)
    assert out["exact"] and out["permutations"] == 120 and out["p_greater"] == pytest.approx(1 / 120)
    assert out["p_value"] == pytest.approx(2 / 120) and out["min_p"] == pytest.approx(2 / 120)
    # a text language hurt by everything (row) or a head set that hurts everything (column) changes nothing
    shifted = m + rng.normal(0, 3, (5, 1)) + rng.normal(0, 3, (1, 5))
    assert label_permutation_test(shifted)["p_value"] == pytest.approx(out["p_value"])
    # no diagonal: not significant
    assert label_permutation_test(rng.normal(0, 1, (5, 5)))["p_value"] > 0.05


def test_inverted_p_matches_the_normal_test_and_mde_exceeds_the_half_width():
    from statistics import NormalDist

    from lahis_ctrl.eval.stats import inverted_p, mde_from_interval

    z = NormalDist()

    def interval(conf):
        half = z.inv_cdf((1 + conf) / 2) * 0.5
        return 1.0 - half, 1.0 + half

    assert inverted_p(interval, 0.0) == pytest.approx(2 * (1 - z.cdf(2.0)), abs=1e-6)
    assert inverted_p(interval, 1.0) == 1.0
    ci95 = interval(0.95)
    for level in (0.05, 0.01, 0.0025):
        half = interval(1 - level)[1] - 1.0
        assert mde_from_interval(ci95, 0.95, level) > half
        assert mde_from_interval(ci95, 0.95, level) == pytest.approx((z.inv_cdf(1 - level / 2) + z.inv_cdf(0.8)) * 0.5)


def test_rank_verdict():
    from lahis_ctrl.eval.stats import rank_verdict

    assert rank_verdict(0.01, 0.005, 1.0, +1) == "holds"
    assert rank_verdict(0.01, 1.0, 0.005, +1) == "does not hold"
    assert rank_verdict(0.2, 0.1, 1.0, +1) == "inconclusive"
    assert rank_verdict(0.01, 1.0, 0.005, -1) == "holds"
