"""Example windows: fixed-length slices of cached token rows, placed around a latent's firing."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A numpy view of a torch tensor or array-like (no torch import needed)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class Windows:
    """Windows as parallel arrays: row in the cache, first position, strongest activation inside."""

    rows: np.ndarray
    starts: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: np.ndarray) -> Windows:
        return Windows(self.rows[index], self.starts[index], self.scores[index])

    @classmethod
    def empty(cls) -> Windows:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


class LatentActivations:
    """One latent's non-zero activations, sorted by token so window look-ups are binary searches."""

    def __init__(self, locations: Any, activations: Any, ctx_len: int) -> None:
        locs = to_numpy(locations, np.int64).reshape(-1, 2)
        values = to_numpy(activations, np.float32).reshape(-1)
        keep = values != 0
        flat = locs[keep, 0] * ctx_len + locs[keep, 1]
        order = np.argsort(flat, kind="stable")
        self.ctx_len = ctx_len
        self.flat = flat[order]
        self.values = values[keep][order]

    def __len__(self) -> int:
        return len(self.flat)

    @property
    def rows(self) -> np.ndarray:
        return self.flat // self.ctx_len

    @property
    def positions(self) -> np.ndarray:
        return self.flat % self.ctx_len

    @property
    def max_activation(self) -> float:
        return float(self.values.max()) if len(self.values) else 0.0

    def _bounds(self, rows: Any, starts: Any, length: int) -> tuple[np.ndarray, np.ndarray]:
        begin = np.asarray(rows, np.int64) * self.ctx_len + np.asarray(starts, np.int64)
        lo = np.searchsorted(self.flat, begin, side="left")
        hi = np.searchsorted(self.flat, begin + length, side="left")
        return lo, hi

    def window_activations(self, row: int, start: int, length: int) -> np.ndarray:
        """Dense activations of this latent on tokens [start, start + length) of `row`."""
        out = np.zeros(length, np.float32)
        lo, hi = self._bounds([row], [start], length)
        index = slice(int(lo[0]), int(hi[0]))
        out[self.flat[index] - (row * self.ctx_len + start)] = self.values[index]
        return out

    def active(self, rows: Any, starts: Any, length: int) -> np.ndarray:
        """Bool mask: does the latent fire anywhere in each window?"""
        lo, hi = self._bounds(rows, starts, length)
        return hi > lo

    def window_max(self, rows: Any, starts: Any, length: int) -> np.ndarray:
        lo, hi = self._bounds(rows, starts, length)
        out = np.zeros(len(lo), np.float32)
        for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
            if b > a:
                out[i] = self.values[a:b].max()
        return out


def centred_windows(acts: LatentActivations, length: int) -> Windows:
    """One window per activation peak, strongest first, centred on the peak and clamped to the row.

    Windows never overlap: a weaker activation already inside a window is covered by it; one
    outside gets its own window, shifted into the free gap, or none when the gap is too small.
    """
    ctx = acts.ctx_len
    length = min(length, ctx)
    rows, positions = acts.rows, acts.positions
    taken: dict[int, list[int]] = {}  # row -> sorted window starts
    out_rows: list[int] = []
    out_starts: list[int] = []
    for i in np.argsort(-acts.values, kind="stable").tolist():
        row, pos = int(rows[i]), int(positions[i])
        starts = taken.setdefault(row, [])
        k = bisect.bisect_right(starts, pos)
        if k and pos < starts[k - 1] + length:
            continue  # already inside a stronger peak's window
        lo = starts[k - 1] + length if k else 0
        hi = starts[k] if k < len(starts) else ctx
        if hi - lo < length:
            continue
        start = min(max(pos - length // 2, lo), hi - length)
        starts.insert(k, start)
        out_rows.append(row)
        out_starts.append(start)
    r = np.asarray(out_rows, np.int64)
    s = np.asarray(out_starts, np.int64)
    return Windows(r, s, acts.window_max(r, s, length))


def fixed_windows(acts: LatentActivations, length: int) -> Windows:
    """The aligned blocks (each row cut into ctx_len // length pieces) that contain an activation.

    A row's tail shorter than `length` belongs to no block.
    """
    n_blocks = acts.ctx_len // length
    if n_blocks == 0 or len(acts) == 0:
        return Windows.empty()
    rows, positions = acts.rows, acts.positions
    block = positions // length
    keep = block < n_blocks
    keys = rows[keep] * n_blocks + block[keep]
    unique, inverse = np.unique(keys, return_inverse=True)
    scores = np.zeros(len(unique), np.float32)
    np.maximum.at(scores, inverse, acts.values[keep])
    return Windows(unique // n_blocks, (unique % n_blocks) * length, scores)


def activating_windows(acts: LatentActivations, length: int, centre: bool) -> Windows:
    return centred_windows(acts, length) if centre else fixed_windows(acts, length)


def inactive_blocks(
    acts: LatentActivations, n_rows: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, starts) of every aligned block where the latent is zero throughout."""
    n_blocks = acts.ctx_len // length
    free = np.ones(n_rows * n_blocks, dtype=bool)
    if len(acts):
        block = acts.positions // length
        keep = block < n_blocks
        free[acts.rows[keep] * n_blocks + block[keep]] = False
    keys = np.flatnonzero(free)
    return keys // n_blocks, (keys % n_blocks) * length
