"""Intervals of the scores: Wilson per latent, bootstrap over latents."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autointerp_full.stats import (
    BOOTSTRAP_RESAMPLES,
    Interval,
    bootstrap_mean,
    bootstrap_means,
    bootstrap_paired_difference,
    describe,
    wilson_bounds,
    wilson_interval,
    z_value,
)

# Reference values of the Wilson score interval (as statsmodels' proportion_confint(...,
# method="wilson") and Wilson's formula give them), to 1e-9.
WILSON_95 = {
    (8, 10): (0.49016247153664183, 0.9433178485456247),
    (0, 10): (0.0, 0.27753279986288926),
    (10, 10): (0.7224672001371106, 1.0),
    (1, 3): (0.06149194472039626, 0.7923403991979523),
    (45, 50): (0.7863976856252034, 0.9565242350681095),
    (17, 40): (0.28509392559950375, 0.5780493145800893),
}


def test_z_value() -> None:
    assert z_value(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    assert z_value(0.90) == pytest.approx(1.6448536269514722, abs=1e-12)
    with pytest.raises(ValueError, match="confidence"):
        z_value(1.0)


@pytest.mark.parametrize(("k", "n"), sorted(WILSON_95))
def test_wilson_matches_known_values(k: int, n: int) -> None:
    interval = wilson_interval(k, n)
    low, high = WILSON_95[(k, n)]
    assert interval.low == pytest.approx(low, abs=1e-9)
    assert interval.high == pytest.approx(high, abs=1e-9)
    assert interval.estimate == k / n and interval.n == n


def test_wilson_other_confidence_and_formula() -> None:
    interval = wilson_interval(8, 10, confidence=0.90)
    assert (interval.low, interval.high) == pytest.approx((0.5407928056874879, 0.9314420122624679))
    # Wilson's formula written out: centre +- half-width
    z, n, p = z_value(0.9), 10, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (interval.low, interval.high) == pytest.approx((centre - half, centre + half))


def test_wilson_edges() -> None:
    empty = wilson_interval(0, 0)
    assert (empty.estimate, empty.low, empty.high, empty.n) == (None, 0.0, 1.0, 0)
    assert wilson_interval(0, 5).low == 0.0 and wilson_interval(5, 5).high == 1.0
    with pytest.raises(ValueError):
        wilson_interval(6, 5)
    with pytest.raises(ValueError):
        wilson_interval(-1, 5)


def test_wilson_bounds_vectorised_agree_with_scalar() -> None:
    ks = np.array([k for k, _ in sorted(WILSON_95)] + [0])
    ns = np.array([n for _, n in sorted(WILSON_95)] + [0])
    low, high = wilson_bounds(ks, ns)
    for i, key in enumerate(sorted(WILSON_95)):
        assert (low[i], high[i]) == pytest.approx(WILSON_95[key], abs=1e-9)
    assert (low[-1], high[-1]) == (0.0, 1.0)


def test_wilson_narrows_with_more_examples() -> None:
    widths = [
        wilson_interval(int(0.8 * n), n).high - wilson_interval(int(0.8 * n), n).low
        for n in (10, 40, 160, 640)
    ]
    assert widths == sorted(widths, reverse=True)
    # width shrinks roughly as 1/sqrt(n)
    assert widths[0] / widths[-1] == pytest.approx(8, rel=0.15)


# ------------------------------------------------------------------------------- bootstrap
def scores(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).beta(6, 3, size=n)


def test_bootstrap_mean_contains_the_mean_and_is_seeded() -> None:
    values = scores(50)
    interval = bootstrap_mean(values, seed=1)
    assert interval.low < values.mean() < interval.high
    assert interval.estimate == pytest.approx(values.mean())
    assert interval == bootstrap_mean(values, seed=1)
    assert interval != bootstrap_mean(values, seed=2)
    assert interval.n == 50 and interval.n_missing == 0 and interval.confidence == 0.95


def test_bootstrap_interval_matches_normal_theory() -> None:
    """For many latents the percentile interval approaches mean +- 1.96 * sd / sqrt(n)."""
    values = scores(400, seed=3)
    interval = bootstrap_mean(values, seed=0)
    half = 1.959964 * values.std(ddof=1) / math.sqrt(len(values))
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.08)


def test_bootstrap_interval_shrinks_with_n() -> None:
    widths = []
    population = scores(2560, seed=5)
    for n in (40, 160, 640, 2560):
        interval = bootstrap_mean(population[:n], seed=0)
        widths.append(interval.high - interval.low)
    assert widths == sorted(widths, reverse=True)
    # about 1/sqrt(n): 64 times the latents, an eighth of the width
    assert widths[0] / widths[-1] == pytest.approx(8, rel=0.25)


def test_bootstrap_coverage_is_near_95_percent() -> None:
    """Draw many samples from a known population; about 95% of intervals hold its mean."""
    rng = np.random.default_rng(7)
    true_mean = 6 / 9  # Beta(6, 3)
    hits = 0
    trials = 200
    for t in range(trials):
        sample = rng.beta(6, 3, size=60)
        interval = bootstrap_mean(sample, n_resamples=2000, seed=t)
        hits += interval.low <= true_mean <= interval.high
    assert 0.89 <= hits / trials <= 0.99


def test_bootstrap_missing_values_are_counted_not_used() -> None:
    interval = bootstrap_mean([0.5, None, float("nan"), 0.7, 0.9])
    assert (interval.n, interval.n_missing) == (3, 2)
    assert interval.estimate == pytest.approx(0.7)


def test_bootstrap_degenerate_sizes() -> None:
    assert bootstrap_mean([]).estimate is None
    one = bootstrap_mean([0.4])
    assert (one.estimate, one.low, one.high, one.n) == (0.4, 0.4, 0.4, 1)
    same = bootstrap_mean([0.6] * 20)
    assert same.low == pytest.approx(0.6) and same.high == pytest.approx(0.6)


def test_bootstrap_means_are_vectorised_in_blocks() -> None:
    means = bootstrap_means(np.arange(5.0), n_resamples=BOOTSTRAP_RESAMPLES, seed=0)
    assert means.shape == (BOOTSTRAP_RESAMPLES,)
    assert means.min() >= 0 and means.max() <= 4
    assert np.mean(means) == pytest.approx(2.0, abs=0.05)
    # a large set goes through several blocks and still gives the same answer for the seed
    big = scores(5000)
    assert np.array_equal(
        bootstrap_means(big, n_resamples=1000, seed=4),
        bootstrap_means(big, n_resamples=1000, seed=4),
    )


def test_paired_difference_is_tighter_than_separate_intervals() -> None:
    rng = np.random.default_rng(11)
    base = rng.uniform(0.4, 1.0, size=80)  # latents differ a lot from each other
    null = base - 0.1 + rng.normal(0, 0.02, size=80)  # but each null sits just below
    diff = bootstrap_paired_difference(base, null, seed=0)
    assert diff.estimate == pytest.approx(0.1, abs=0.01)
    assert diff.low > 0.09 and diff.high < 0.11
    a, b = bootstrap_mean(base), bootstrap_mean(null)
    assert diff.high - diff.low < 0.3 * min(a.high - a.low, b.high - b.low)


def test_paired_difference_drops_incomplete_pairs() -> None:
    diff = bootstrap_paired_difference([0.9, None, 0.8, 0.7], [0.5, 0.5, float("nan"), 0.6])
    assert (diff.n, diff.n_missing) == (2, 2)
    assert diff.estimate == pytest.approx(0.25)
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_paired_difference([1.0], [1.0, 2.0])


def test_describe_and_to_dict() -> None:
    interval = Interval(0.8125, 0.7741, 0.8479, 40, 2)
    assert describe(interval) == "0.812 [0.774, 0.848] (95%, n=40, 2 missing)"
    assert describe(bootstrap_mean([])) == "n/a (n=0)"
    assert interval.to_dict() == {
        "estimate": 0.8125,
        "low": 0.7741,
        "high": 0.8479,
        "n": 40,
        "n_missing": 2,
        "confidence": 0.95,
        "method": "",
    }


def test_compare_with_null_pairs_by_latent() -> None:
    from autointerp_full.stats import compare_with_null

    scores = {("layers.1", i): 0.8 + 0.01 * (i % 5) for i in range(30)}
    null = {("layers.1", i): 0.5 + 0.01 * (i % 5) for i in range(30) if i != 3}
    scores[("layers.1", 7)] = None  # a failed latent
    block = compare_with_null(scores, null, seed=0)
    assert set(block) == {"score", "null", "difference"}
    assert block["score"]["n"] == 29 and block["score"]["n_missing"] == 1
    assert block["null"]["n"] == 29 and block["null"]["n_missing"] == 0
    diff = block["difference"]
    assert (diff["n"], diff["n_missing"]) == (28, 2)  # latent 3 has no null, 7 no score
    assert diff["estimate"] == pytest.approx(0.3)
    assert diff["low"] == pytest.approx(0.3) and diff["high"] == pytest.approx(0.3)
    assert block == compare_with_null(scores, null, seed=0)
