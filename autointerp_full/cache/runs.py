"""Sorted runs of non-zeros: the pure tensor code of the cache, testable without a model.

A run holds non-zeros sorted by (latent, location). A batch becomes a run on the model's device
(`sort_batch`), buffered runs become one host run (`merge_runs`), a run is cut into the shards'
latent ranges (`split_shards`), and the chunks of one shard are merged by `interleave`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_FP16_MAX = 65504.0


@dataclass
class Run:
    """Non-zeros sorted by (latent, location): a batch, a chunk or a shard slice."""

    latents: torch.Tensor  # int32 [n]
    flat: torch.Tensor  # int64 [n]: row * ctx_len + position
    values: torch.Tensor  # float16 [n]


def sort_batch(
    rows: torch.Tensor,
    latents: torch.Tensor,
    values: torch.Tensor,
    n_pos: int,
    row_offset: int,
    ctx_len: int,
    keep: torch.Tensor | None = None,
) -> Run:
    """Sort one batch's non-zeros by (latent, row), on their device.

    `rows` index the batch's n_pos = B * T flattened positions; `keep` is a [B * T] bool mask of
    positions to keep (filter_bos).
    """
    import torch

    rows = rows.long()
    latents = latents.long()
    if keep is not None:
        mask = keep[rows]
        rows, latents, values = rows[mask], latents[mask], values[mask]
    order = torch.argsort(latents * n_pos + rows)
    values = values[order].float().clamp_(-_FP16_MAX, _FP16_MAX).half()
    return Run(latents=latents[order].int(), flat=rows[order] + row_offset * ctx_len, values=values)


def merge_runs(runs: Sequence[Run], num_latents: int) -> Run:
    """Runs (each sorted, in location order) as one host run sorted by (latent, location).

    On an accelerator a stable sort by latent is cheapest; on the CPU, `interleave` avoids the
    sort altogether.
    """
    import torch

    if runs and runs[0].latents.device.type != "cpu":
        latents = torch.cat([r.latents for r in runs])
        order = torch.sort(latents, stable=True).indices
        return Run(
            latents=latents[order].cpu(),
            flat=torch.cat([r.flat for r in runs])[order].cpu(),
            values=torch.cat([r.values for r in runs])[order].cpu(),
        )
    return interleave(runs, 0, num_latents)[0]


def interleave(runs: Sequence[Run], start: int, end: int) -> tuple[Run, torch.Tensor]:
    """Merge runs holding latents in [start, end) into one run sorted by (latent, location).

    The runs must each be sorted and come in location order (earlier rows first), so within a
    latent the entries of run r precede those of run r+1. Each entry's destination is computed
    directly from per-run latent counts: O(n), no sort. Returns the merged run and its offsets
    (int64 [end - start + 1]).
    """
    import torch

    width = end - start
    counts = (
        torch.stack([torch.bincount(r.latents.long() - start, minlength=width) for r in runs])
        if runs
        else torch.zeros(0, width, dtype=torch.long)
    )
    total = counts.sum(0)
    offsets = torch.zeros(width + 1, dtype=torch.long)
    torch.cumsum(total, 0, out=offsets[1:])
    before = torch.cumsum(counts, 0) - counts  # entries of earlier runs, per latent
    n = int(offsets[-1])
    out = Run(
        latents=torch.empty(n, dtype=torch.int32),
        flat=torch.empty(n, dtype=torch.long),
        values=torch.empty(n, dtype=torch.float16),
    )
    for r, run in enumerate(runs):
        if len(run.latents) == 0:
            continue
        run_start = torch.cumsum(counts[r], 0) - counts[r]
        base = offsets[:-1] + before[r] - run_start
        local = run.latents.long() - start
        dest = base[local] + torch.arange(len(local))
        out.latents[dest] = run.latents
        out.flat[dest] = run.flat
        out.values[dest] = run.values
    return out, offsets


def split_shards(run: Run, bounds: Sequence[tuple[int, int]]) -> list[tuple[Run, torch.Tensor]]:
    """Cut a host run sorted by latent into one (run, offsets) per shard range [start, end).

    The run's latents must all lie in the ranges, which tile [bounds[0][0], bounds[-1][1]).
    """
    import torch

    starts = [start for start, _ in bounds] + [bounds[-1][1]]
    cuts = torch.searchsorted(run.latents, torch.tensor(starts, dtype=torch.int32)).tolist()
    parts = []
    for i, (start, end) in enumerate(bounds):
        lo, hi = cuts[i], cuts[i + 1]
        part = Run(run.latents[lo:hi], run.flat[lo:hi], run.values[lo:hi])
        edges = torch.arange(start, end + 1, dtype=torch.int32)
        parts.append((part, torch.searchsorted(part.latents, edges).long()))
    return parts
