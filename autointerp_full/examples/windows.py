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


def _strongest_first_by_row(acts: LatentActivations) -> np.ndarray:
    """Activation indices grouped by row, strongest first within a row, ties by position.

    One sort of unique 64-bit keys (row, strength, position) when they fit, else a lexsort.
    """
    n_tokens = int(acts.flat[-1]) + 1
    pos_bits = max(1, (acts.ctx_len - 1).bit_length())
    if n_tokens.bit_length() + 32 > 64:
        return np.lexsort((-acts.values, acts.rows))
    rows = acts.rows.astype(np.uint64) << np.uint64(32 + pos_bits)
    strength = _descending(acts.values) << np.uint64(pos_bits)
    key = rows | strength | acts.positions.astype(np.uint64)
    return np.argsort(key)


def centred_windows(acts: LatentActivations, length: int) -> Windows:
    """One window per activation peak, strongest first, centred on the peak and clamped to the row.

    Windows never overlap: activations are taken strongest first (ties: earlier token first);
    one already inside a window is covered by it; one outside gets its own window, shifted
    into the free gap, or none when the gap is too small. Rows do not interact, so every row
    is served at once: round t takes each row's t-th strongest activation.
    """
    ctx = acts.ctx_len
    length = min(length, ctx)
    if len(acts) == 0:
        return Windows.empty()
    # Grouped by row, strongest first within a row (ties: earlier token first, as the
    # stable global order by strength has them).
    by_row = _strongest_first_by_row(acts)
    rows, positions = acts.rows[by_row], acts.positions[by_row]
    row_ids, first, counts = np.unique(rows, return_index=True, return_counts=True)
    slot = np.arange(len(rows)) - np.repeat(first, counts)  # the activation's turn in its row
    # Per row the window starts taken so far, ascending, padded with ctx (no window there).
    width = ctx // length + 1
    taken = np.full((len(row_ids), width), ctx, np.int64)
    n_taken = np.zeros(len(row_ids), np.int64)
    # Activations round by round (slot fits 16 bits for any sane ctx: a radix sort).
    order = np.argsort(slot.astype(np.uint16) if ctx < 2**16 else slot, kind="stable")
    cuts = np.searchsorted(slot[order], np.arange(int(slot.max()) + 2))
    row_index = np.repeat(np.arange(len(row_ids)), counts)[order]
    positions, source = positions[order], by_row[order]
    made_source, made_row, made_start = [], [], []
    for t in range(len(cuts) - 1):
        a, b = int(cuts[t]), int(cuts[t + 1])
        r, pos = row_index[a:b], positions[a:b]
        if t == 0:  # a row's strongest activation always gets a window
            lo, hi, ok = np.zeros_like(pos), np.full_like(pos, ctx), slice(None)
        else:
            starts = taken[r]
            k = (starts <= pos[:, None]).sum(1)
            at = np.arange(len(r))
            lo = np.where(k > 0, starts[at, np.maximum(k - 1, 0)] + length, 0)
            hi = starts[at, np.minimum(k, width - 1)]
            ok = ((k == 0) | (pos >= lo)) & (hi - lo >= length)
            if not ok.any():
                continue
            r, pos, lo, hi = r[ok], pos[ok], lo[ok], hi[ok]
        start = np.minimum(np.maximum(pos - length // 2, lo), hi - length)
        taken[r, n_taken[r]] = start  # one activation per row per round: no clashes
        n_taken[r] += 1
        if t:
            taken[r] = np.sort(taken[r], axis=1)
        made_source.append(source[a:b][ok])
        made_row.append(row_ids[r])
        made_start.append(start)
    made = np.concatenate(made_source)
    # Windows in the order of the activations that made them: strongest first, ties by token.
    out = np.argsort((_descending(acts.values[made]) << np.uint64(32)) | made.astype(np.uint64))
    r = np.concatenate(made_row)[out]
    s = np.concatenate(made_start)[out]
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
