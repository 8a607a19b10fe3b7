"""Sources of non-activating windows: windows where the latent is zero throughout.

Every source returns (row, start) pairs; the caller turns them into Examples. A source that
cannot find enough hard negatives tops up with random ones, so the count is always met when the
cache has room.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from autointerp_full.examples.neighbours import Neighbours
from autointerp_full.examples.windows import LatentActivations, activating_windows, inactive_blocks

Window = tuple[int, int]


class NonActivatingSource(Protocol):
    name: str

    def select(
        self,
        acts: LatentActivations,
        n: int,
        rng: np.random.Generator,
        *,
        latent: int,
        activating_texts: list[str],
    ) -> list[Window]: ...


class RandomSource:
    """Uniformly drawn aligned blocks of the cache in which the latent never fires."""

    name = "random"

    def __init__(self, n_rows: int, length: int) -> None:
        self.n_rows, self.length = n_rows, length

    def select(
        self,
        acts: LatentActivations,
        n: int,
        rng: np.random.Generator,
        *,
        latent: int = -1,
        activating_texts: list[str] | None = None,
        exclude: list[Window] | None = None,
    ) -> list[Window]:
        rows, starts = inactive_blocks(acts, self.n_rows, self.length)
        if exclude:
            taken = {(int(r), int(s)) for r, s in exclude}
            keep = np.array(
                [(int(r), int(s)) not in taken for r, s in zip(rows, starts, strict=True)], bool
            )
            rows, starts = rows[keep], starts[keep]
        if n <= 0 or len(rows) == 0:
            return []
        pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
        return [(int(rows[i]), int(starts[i])) for i in pick]


def _overlaps(chosen: dict[int, list[int]], row: int, start: int, length: int) -> bool:
    return any(abs(start - s) < length for s in chosen.get(row, ()))


class NeighboursSource:
    """Windows where the latent's nearest neighbours fire strongly and the latent does not."""

    name = "neighbours"

    def __init__(
        self,
        reader: Any,
        neighbours: Neighbours,
        n_rows: int,
        ctx_len: int,
        length: int,
        centre: bool,
    ) -> None:
        self.reader = reader
        self.neighbours = neighbours
        self.ctx_len, self.length, self.centre = ctx_len, length, centre
        self.fallback = RandomSource(n_rows, length)

    def candidates(self, acts: LatentActivations, neighbour: int) -> list[Window]:
        """The neighbour's activating windows free of the latent, strongest first."""
        theirs = LatentActivations(*self.reader.latent(neighbour), self.ctx_len)
        windows = activating_windows(theirs, self.length, self.centre)
        if len(windows) == 0:
            return []
        windows = windows.subset(~acts.active(windows.rows, windows.starts, self.length))
        order = np.argsort(-windows.scores, kind="stable")
        return [(int(windows.rows[i]), int(windows.starts[i])) for i in order]

    def select(
        self,
        acts: LatentActivations,
        n: int,
        rng: np.random.Generator,
        *,
        latent: int,
        activating_texts: list[str] | None = None,
    ) -> list[Window]:
        queues = [self.candidates(acts, m) for m, _ in self.neighbours.get(latent, [])]
        chosen: dict[int, list[int]] = {}
        out: list[Window] = []
        # Round-robin over neighbours (closest first) so one neighbour does not fill the list.
        while len(out) < n and any(queues):
            for queue in queues:
                while queue and len(out) < n:
                    row, start = queue.pop(0)
                    if not _overlaps(chosen, row, start, self.length):
                        chosen.setdefault(row, []).append(start)
                        out.append((row, start))
                        break
        if len(out) < n:
            out += self.fallback.select(acts, n - len(out), rng, exclude=out)
        return out
