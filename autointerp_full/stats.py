"""Uncertainty of the scores: Wilson intervals per latent, bootstrap intervals over latents.

Pure functions of numbers (numpy only), so the summary, the report and the tests share them.

- `wilson_interval(k, n)`: the Wilson score interval of a proportion, for one latent's
  accuracy over its n answered examples (k of them right). It stays inside [0, 1] and is
  sensible at k = 0, k = n and small n, where the normal approximation is not.
- `bootstrap_mean(values)`: the mean over latents with a percentile-bootstrap interval
  (latents resampled with replacement), for "how sure is this mean, given these latents".
- `bootstrap_paired_difference(a, b)`: the mean of a - b over latents that have both, with the
  bootstrap interval of that mean; the pairs are resampled together (a latent's score and its
  null score stay paired), which is what makes a difference far tighter than two intervals.
- `compare_with_null(scores, null_scores)`: the three together, as a summary would give them.

Resampling uses numpy's PCG64 generator seeded by `seed`, a fixed number of resamples
(`BOOTSTRAP_RESAMPLES`), and is vectorised in blocks so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
_BLOCK_ELEMENTS = 1 << 22  # indices drawn per block of resamples (32 MB of int64)


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval. `n` counts the values used; `n_missing` those left out
    (None or NaN, e.g. a latent whose scoring failed), so nothing is folded in silently."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int
    n_missing: int = 0
    confidence: float = CONFIDENCE
    method: str = ""

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile: 1.959964 for 0.95."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (got {confidence})")


# ---------------------------------------------------------------------------------- Wilson
def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """The Wilson score interval of successes / n.

    With z the normal quantile and p = k / n:
        centre    = (p + z^2 / 2n) / (1 + z^2 / n)
        half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)
    n = 0 gives no estimate and the whole range [0, 1] (nothing is known)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n (got {successes} of {n})")
    if n == 0:
        return Interval(None, 0.0, 1.0, 0, confidence=confidence, method="wilson")
    low, high = wilson_bounds(np.array([successes]), np.array([n]), confidence)
    return Interval(successes / n, float(low[0]), float(high[0]), n, 0, confidence, "wilson")


def wilson_bounds(
    successes: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Wilson bounds (low, high) for arrays of counts; n = 0 gives (0, 1)."""
    k = np.asarray(successes, dtype=float)
    total = np.asarray(n, dtype=float)
    if np.any(total < 0) or np.any(k < 0) or np.any(k > total):
        raise ValueError("need 0 <= successes <= n for every entry")
    z = z_value(confidence)
    safe = np.where(total > 0, total, 1.0)
    p = k / safe
    denom = 1 + z * z / safe
    centre = (p + z * z / (2 * safe)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    # At k = 0 and k = n the bounds are exactly 0 and 1; rounding would leave 1e-17 there.
    low = np.where((total > 0) & (k > 0), np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where((total > 0) & (k < total), np.clip(centre + half, 0.0, 1.0), 1.0)
    return low, high


# --------------------------------------------------------------------------------- bootstrap
def _finite(values: Sequence[float | None] | np.ndarray) -> tuple[np.ndarray, int]:
    """The finite values as float64, and how many were None or NaN."""
    raw = np.array([np.nan if v is None else v for v in values], dtype=float).reshape(-1)
    keep = np.isfinite(raw)
    return raw[keep], int((~keep).sum())


def bootstrap_means(
    values: np.ndarray, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """The means of `n_resamples` resamples (with replacement, same size) of `values`."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        raise ValueError("cannot resample an empty set")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1 (got {n_resamples})")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _percentile_interval(
    values: np.ndarray,
    n_missing: int,
    confidence: float,
    n_resamples: int,
    seed: int,
    method: str,
) -> Interval:
    _check_confidence(confidence)
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0, n_missing, confidence, method)
    estimate = float(values.mean())
    if n == 1:  # one latent: no spread to resample
        return Interval(estimate, estimate, estimate, 1, n_missing, confidence, method)
    means = bootstrap_means(values, n_resamples=n_resamples, seed=seed)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), n, n_missing, confidence, method)


def bootstrap_mean(
    values: Sequence[float | None] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean over latents with its percentile-bootstrap interval. None/NaN values are left out
    and counted in `n_missing`; one value gives a zero-width interval, none gives no estimate."""
    finite, missing = _finite(values)
    return _percentile_interval(
        finite, missing, confidence, n_resamples, seed, "percentile bootstrap over latents"
    )


def bootstrap_paired_difference(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean of a[i] - b[i] over the latents that have both, with the bootstrap interval of that
    mean (pairs resampled together). A pair with a None/NaN side is left out and counted."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths (got {len(a)} and {len(b)})")
    first = np.array([np.nan if v is None else v for v in a], dtype=float).reshape(-1)
    second = np.array([np.nan if v is None else v for v in b], dtype=float).reshape(-1)
    keep = np.isfinite(first) & np.isfinite(second)
    diff = first[keep] - second[keep]
    return _percentile_interval(
        diff,
        int((~keep).sum()),
        confidence,
        n_resamples,
        seed,
        "paired percentile bootstrap over latents",
    )


def describe(interval: Interval, digits: int = 3) -> str:
    """'0.812 [0.774, 0.848] (95%, n=40)' — or 'n/a (n=0)'; missing values are named."""
    missing = f", {interval.n_missing} missing" if interval.n_missing else ""
    if interval.estimate is None:
        return f"n/a (n=0{missing})"
    pct = f"{interval.confidence * 100:g}%"
    fmt = f"{{:.{digits}f}}"
    body = fmt.format(interval.estimate)
    if interval.low is not None and interval.high is not None:
        body += f" [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"
    return f"{body} ({pct}, n={interval.n}{missing})"


def compare_with_null(
    scores: Mapping[Hashable, float | None],
    null_scores: Mapping[Hashable, float | None],
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, float | int | str | None]]:
    """The block a summary gives per scorer: {"score", "null", "difference"}, each an
    Interval.to_dict(). Scores are keyed by latent (e.g. (hookpoint, latent)); the difference
    pairs them by key, so a latent scored only one way counts as missing there."""
    keys = sorted(set(scores) | set(null_scores), key=repr)  # a fixed order: seeded resamples

    def ordered(values: Mapping[Hashable, float | None]) -> list[float | None]:
        return [values[k] for k in keys if k in values]

    def interval(a: list, b: list | None = None) -> dict:
        if b is None:
            found = bootstrap_mean(a, confidence=confidence, n_resamples=n_resamples, seed=seed)
        else:
            found = bootstrap_paired_difference(
                a, b, confidence=confidence, n_resamples=n_resamples, seed=seed
            )
        return found.to_dict()

    paired_own = [scores.get(k) for k in keys]
    paired_null = [null_scores.get(k) for k in keys]
    return {
        "score": interval(ordered(scores)),
        "null": interval(ordered(null_scores)),
        "difference": interval(paired_own, paired_null),
    }
