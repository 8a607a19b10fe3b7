"""Example windows: fixed-length slices of cached token rows, placed around a latent's firing."""

from __future__ import annotations

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

    @classmethod
    def from_flat(cls, flat: np.ndarray, values: np.ndarray, ctx_len: int) -> LatentActivations:
        """From a cache slice: flat token indices (ascending, as the cache stores them) and
        activations; the same object as from (row, position) locations, without the sort."""
        flat = np.asarray(flat, np.int64)
        values = np.asarray(values, np.float32)
        if len(flat) > 1 and not bool((flat[1:] > flat[:-1]).all()):
            locations = np.stack([flat // ctx_len, flat % ctx_len], 1)
            return cls(locations, values, ctx_len)
        acts = cls.__new__(cls)
        keep = values != 0
        acts.ctx_len = ctx_len
        acts.flat = flat if keep.all() else flat[keep]
        acts.values = values if keep.all() else values[keep]
        return acts

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
        if len(begin) < 64:
            lo = np.searchsorted(self.flat, begin, side="left")
            return lo, np.searchsorted(self.flat, begin + length, side="left")
        # Many windows: search in ascending order, which walks the array once.
        order = np.argsort(begin)
        ends = np.stack([begin[order], begin[order] + length], 1).reshape(-1)
        found = np.searchsorted(self.flat, ends, side="left").reshape(-1, 2)
        lo, hi = np.empty_like(found[:, 0]), np.empty_like(found[:, 1])
        lo[order], hi[order] = found[:, 0], found[:, 1]
        return lo, hi

    def window_activations(self, row: int, start: int, length: int) -> np.ndarray:
        """Dense activations of this latent on tokens [start, start + length) of `row`."""
        out = np.zeros(length, np.float32)
        lo, hi = self._bounds([row], [start], length)
        index = slice(int(lo[0]), int(hi[0]))
        out[self.flat[index] - (row * self.ctx_len + start)] = self.values[index]
        return out

    def dense_windows(self, rows: Any, starts: Any, length: int) -> np.ndarray:
        """window_activations of many windows at once: a (len(rows), length) array."""
        rows, starts = np.asarray(rows, np.int64), np.asarray(starts, np.int64)
        out = np.zeros((len(rows), length), np.float32)
        if len(rows) == 0 or len(self) == 0:
            return out
        lo, hi = self._bounds(rows, starts, length)
        counts = hi - lo
        if not counts.any():
            return out
        window = np.repeat(np.arange(len(rows)), counts)
        # The entries of every window, one after another: lo[w], lo[w] + 1, ..., hi[w] - 1.
        entry = np.arange(int(counts.sum())) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
        begin = rows * self.ctx_len + starts
        out[window, self.flat[entry] - begin[window]] = self.values[entry]
        return out

    def active(self, rows: Any, starts: Any, length: int) -> np.ndarray:
        """Bool mask: does the latent fire anywhere in each window?"""
        lo, hi = self._bounds(rows, starts, length)
        return hi > lo

    def window_max(self, rows: Any, starts: Any, length: int) -> np.ndarray:
        """The strongest activation inside each window (0 where it never fires)."""
        lo, hi = self._bounds(rows, starts, length)
        out = np.zeros(len(lo), np.float32)
        full = hi > lo
        if not full.any():
            return out
        lo, hi = lo[full], hi[full]
        order = np.argsort(lo, kind="stable")
        bounds = np.stack([lo[order], hi[order]], 1).reshape(-1)
        if (np.diff(bounds) >= 0).all():  # disjoint windows: one reduceat over their slices
            padded = np.append(self.values, np.float32(0))
            maxima = np.empty(len(lo), np.float32)
            maxima[order] = np.maximum.reduceat(padded, bounds)[::2]
        else:
            maxima = np.array([self.values[a:b].max() for a, b in zip(lo, hi, strict=True)])
        out[full] = maxima
        return out


def _descending(values: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is the float32 values' descending order."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    negative = (bits >> np.uint64(31)).astype(bool)
    ascending = np.where(negative, ~bits & np.uint64(0xFFFFFFFF), bits | np.uint64(1 << 31))
    return np.uint64(0xFFFFFFFF) - ascending


def centred_windows(acts: LatentActivations, length: int) -> Windows:
    """One window per activation peak, strongest first, centred on the peak and clamped to the row.

    Windows never overlap: activations are taken strongest first (ties: earlier token first);
    one already inside a window is covered by it; one outside gets its own window, shifted
    into the free gap, or none when the gap is too small. A passed-over activation can never
    get a window later, and a window splits its gap into two that never interact, so every gap
    of every row is served at once: each round places a window at each gap's strongest
    activation, then drops the activations the new windows cover or leave too little room.
    """
    ctx = acts.ctx_len
    length = min(length, ctx)
    if len(acts) == 0:
        return Windows.empty()
    # The candidates in token order (grouped by row, then by free gap), each with its gap
    # [lo, hi), all as flat token indices (a gap never crosses a row's end).
    # 32-bit indices where they fit: the rounds are bound by memory traffic.
    small = np.int32 if int(acts.flat[-1]) + ctx < 2**31 else np.int64
    flat, value = acts.flat.astype(small), acts.values
    lo = flat - flat % small(ctx)
    hi = lo + small(ctx)
    made_flat: list[np.ndarray] = []
    made_value: list[np.ndarray] = []
    made_start: list[np.ndarray] = []
    while len(flat):
        new_gap = np.empty(len(flat), bool)
        new_gap[0] = True
        np.not_equal(lo[1:], lo[:-1], out=new_gap[1:])
        gap = np.cumsum(new_gap, dtype=small) - 1
        best = np.flatnonzero(value == np.maximum.reduceat(value, np.flatnonzero(new_gap))[gap])
        best = best[np.r_[True, gap[best][1:] != gap[best][:-1]]]  # earliest of a gap's ties
        start = np.minimum(
            np.maximum(flat[best] - small(length // 2), lo[best]), hi[best] - small(length)
        )
        made_flat.append(flat[best])
        made_value.append(value[best])
        made_start.append(start)
        # Every gap got a window: split it, and drop what the window covers or leaves too short.
        cut = start[gap]
        left = flat < cut
        cut_end = cut + small(length)
        right = flat >= cut_end
        np.copyto(hi, cut, where=left)
        np.copyto(lo, cut_end, where=right)
        keep = np.flatnonzero((left | right) & (hi - lo >= length))
        flat, value, lo, hi = flat[keep], value[keep], lo[keep], hi[keep]
    # Windows in the order of the activations that made them: strongest first, ties by token.
    peaks, peak_tokens = np.concatenate(made_value), np.concatenate(made_flat)
    if int(acts.flat[-1]) < 2**32:
        key = (_descending(peaks) << np.uint64(32)) | peak_tokens.astype(np.uint64)
        out = np.argsort(key)
    else:
        out = np.lexsort((peak_tokens, -peaks))
    starts = np.concatenate(made_start).astype(np.int64)[out]
    # A window holds only activations of its own gap, the strongest of which made it.
    return Windows(starts // ctx, starts % ctx, peaks[out])


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
