"""Choosing train and test windows evenly across a latent's activation quantiles."""

from __future__ import annotations

import zlib

import numpy as np

N_QUANTILES = 10


def latent_rng(seed: int, hookpoint: str, latent: int, purpose: str = "") -> np.random.Generator:
    """A generator that depends only on (seed, hookpoint, latent), never on processing order.

    crc32 rather than hash(): Python salts str hashes per process.
    """
    parts = [seed & 0xFFFFFFFF, zlib.crc32(hookpoint.encode()), latent & 0xFFFFFFFF]
    if purpose:
        parts.append(zlib.crc32(purpose.encode()))
    return np.random.default_rng(parts)


def quantile_bins(scores: np.ndarray, n_bins: int = N_QUANTILES) -> list[np.ndarray]:
    """Window indices split into equal-count bins by score, weakest bin first."""
    if len(scores) == 0:
        return []
    order = np.argsort(scores, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, len(scores)))]


def equal_shares(capacities: list[int], n: int) -> list[int]:
    """Spread n draws over bins as evenly as their capacities allow; leftovers go to strong bins."""
    quotas = [0] * len(capacities)
    n = min(n, sum(capacities))
    while n > 0:
        open_bins = [i for i, c in enumerate(capacities) if quotas[i] < c]
        share = n // len(open_bins)
        if share == 0:
            for i in reversed(open_bins[-n:]):
                quotas[i] += 1
            break
        for i in open_bins:
            add = min(share, capacities[i] - quotas[i])
            quotas[i] += add
            n -= add
    return quotas


def split_counts(total: int, n_train: int, n_test: int) -> tuple[int, int]:
    """How many train and test windows to draw when there may be fewer than asked for."""
    if total >= n_train + n_test:
        return n_train, n_test
    train = min(n_train, max(1, round(total * n_train / (n_train + n_test))))
    return train, min(n_test, total - train)


def sample_train_test(
    scores: np.ndarray,
    n_train: int,
    n_test: int,
    rng: np.random.Generator,
    n_bins: int = N_QUANTILES,
    strongest_train: bool = False,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Disjoint train and test draws of (window index, quantile), each spread evenly over bins.

    With `strongest_train` (the np_max_act explainer) train is instead the n_train strongest
    windows overall, and test is drawn evenly over the bins from the remaining windows. Both
    lists come back strongest window first.
    """
    scores = np.asarray(scores)
    bins = quantile_bins(scores, n_bins)
    n_train, n_test = split_counts(len(scores), n_train, n_test)
    remaining = [rng.permutation(b) for b in bins]
    picks: list[list[tuple[int, int]]] = []
    counts = (n_train, n_test)
    if strongest_train:
        top = strongest(scores, n_train)
        quantile = {int(i): q for q, b in enumerate(bins) for i in b.tolist()}
        picks.append([(i, quantile[i]) for i in top])
        taken = np.asarray(top, dtype=np.int64)
        remaining = [pool[~np.isin(pool, taken)] for pool in remaining]
        counts = (n_test,)
    for n in counts:
        quotas = equal_shares([len(b) for b in remaining], n)
        chosen = []
        for q, (pool, k) in enumerate(zip(remaining, quotas, strict=True)):
            chosen += [(int(i), q) for i in pool[:k]]
            remaining[q] = pool[k:]
        chosen.sort(key=lambda iq: (-float(scores[iq[0]]), iq[0]))
        picks.append(chosen)
    return picks[0], picks[1]


def strongest(scores: np.ndarray, n: int) -> list[int]:
    """Indices of the n highest scores, strongest first (ties: lower index first)."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return [int(i) for i in order[:n]]
