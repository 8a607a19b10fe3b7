"""The shard merge: each shard's chunk files become one shard file, every step recorded.

For each shard, in the staging folder:
1. write `shard_<i>.safetensors` atomically (a lone chunk is renamed, as it already has the
   shard format), so an existing shard file is always a whole one;
2. record the shard as merged in the manifest (atomically);
3. only then remove that shard's chunk files.
A kill at any instant leaves either the chunks or the shard file, so a rerun redoes or skips
each shard and gets the same bytes. Last, config.json is written: the staged cache is complete.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..io import atomic_write, atomic_write_json
from .format import (
    CHUNK_GLOB,
    CONFIG_FILE,
    MANIFEST,
    encode_header,
    shard_entries,
    shard_layout,
    shard_metadata,
    shard_name,
)
from .runs import Run, interleave
from .tensorio import TensorFile, index_array

if TYPE_CHECKING:
    import torch

    from .spill import HookpointCache

# Entries merged in memory at once when chunks are combined into shards (shared by the
# merge threads), and the most shards merged at once.
MERGE_ENTRIES = 8_000_000
MERGE_WORKERS = 8


class StagingLost(UserError):
    """Chunk files the manifest records are gone (removed by hand): the build must restart."""

    def __init__(self, folder: Path, name: str) -> None:
        super().__init__(
            f"{folder / name} is missing from an unfinished cache build; remove {folder} and "
            "rerun to build the cache again"
        )


def merge_chunks(
    chunk_files: Sequence[Path],
    out: Path,
    start: int,
    end: int,
    n_tokens: int,
    block: int = MERGE_ENTRIES,
) -> int:
    """Stream chunk files of one shard of a cache of `n_tokens` tokens into `out`; returns the
    number of entries.

    The header comes first from the summed per-latent counts; the data follows in blocks of
    latents, each holding at most about `block` entries in memory. The bytes do not depend on
    `block` or on how the entries were split into chunks.
    """
    import torch

    handles = [TensorFile(f) for f in chunk_files]
    try:
        chunk_offsets = [h.read("offsets") for h in handles]
        counts = sum(
            (o[1:] - o[:-1] for o in chunk_offsets), torch.zeros(end - start, dtype=torch.long)
        )
        offsets = torch.zeros(end - start + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=offsets[1:])
        n = int(offsets[-1])
        layout = shard_layout(n, end - start, n_tokens)
        head = encode_header(layout, shard_metadata(start, end))
        base = {}
        pos = len(head)
        for name, _code, _shape, nbytes in layout:
            base[name] = pos
            pos += nbytes

        def write(path: Path) -> None:
            with open(path, "wb") as fh:
                fh.write(head)
                fh.write(offsets.numpy().tobytes())
                fh.truncate(pos)

                index_code = layout[1][1]

                def put(first: int, run: Run) -> None:
                    for name, array in (
                        ("index", index_array(run.flat, index_code)),
                        ("activations", run.values.contiguous().numpy()),
                    ):
                        fh.seek(base[name] + first * array.itemsize)
                        fh.write(array.data)

                _copy_blocks(handles, chunk_offsets, offsets, start, end, block, put)

        atomic_write(out, write)
    finally:
        for handle in handles:
            handle.close()
    return n


def _copy_blocks(
    handles: Sequence[TensorFile],
    chunk_offsets: Sequence[torch.Tensor],
    offsets: torch.Tensor,
    start: int,
    end: int,
    block: int,
    put: Any,
) -> None:
    """Feed `put(first_entry, run)` the shard's entries, a block of latents at a time."""
    import torch

    a = 0
    while a < end - start:
        # Grow the block while it stays under the memory budget (at least one latent).
        b = int(torch.searchsorted(offsets, offsets[a] + block, right=True)) - 1
        b = min(max(b, a + 1), end - start)
        first = int(offsets[a])
        if b == a + 1 and int(offsets[b]) - first > block:
            # One heavy latent: its chunks' slices follow each other in location order, so
            # copy them piece by piece.
            for h, o in zip(handles, chunk_offsets, strict=True):
                for lo in range(int(o[a]), int(o[b]), block):
                    hi = min(lo + block, int(o[b]))
                    latents = torch.full((hi - lo,), start + a, dtype=torch.int32)
                    put(first, h.load_slice(lo, hi, latents))
                    first += hi - lo
        else:
            ids = torch.arange(start + a, start + b, dtype=torch.int32)
            runs = [
                h.load_slice(int(o[a]), int(o[b]), _latent_ids(ids, o, a, b))
                for h, o in zip(handles, chunk_offsets, strict=True)
            ]
            put(first, interleave(runs, start + a, start + b)[0])
        a = b


def _latent_ids(ids: torch.Tensor, offsets: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """The latent of each entry of latents [a, b) of one chunk (the format stores only offsets)."""
    import torch

    return torch.repeat_interleave(ids, offsets[a + 1 : b + 1] - offsets[a:b])


def merge_shard(state: HookpointCache, i: int, n_tokens: int, block: int) -> None:
    """Step 1 for shard i: make `shard_<i>.safetensors` from its chunks, unless it is there."""
    out = state.folder / shard_name(i)
    if out.exists():  # written atomically: a shard file that exists is whole
        return
    files = [state.chunk_file(c, i) for c in range(state.chunks)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise StagingLost(state.folder, missing[0])
    start, end = state.bounds[i]
    if len(files) == 1:
        os.replace(files[0], out)  # a chunk already has the shard format
    else:
        merge_chunks(files, out, start, end, n_tokens, block)


def drop_chunks(state: HookpointCache, i: int) -> None:
    """Step 3 for shard i: its chunk files are no longer needed once the shard is recorded."""
    for c in range(state.chunks):
        state.chunk_file(c, i).unlink(missing_ok=True)


def merge_shards(state: HookpointCache, n_seqs: int, ctx_len: int) -> None:
    """Merge every shard not yet recorded, on parallel threads sharing one memory budget
    (torch and file reads release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [i for i in range(len(state.bounds)) if i not in state.merged]
    workers = max(1, min(len(todo), os.cpu_count() or 1, MERGE_WORKERS))
    budget = max(MERGE_ENTRIES // workers, 1)
    lock = threading.Lock()

    def merge(i: int) -> None:
        merge_shard(state, i, state.index_tokens or n_seqs * ctx_len, budget)
        with lock:  # step 2: record it
            state.merged.append(i)
            state.save_manifest(n_seqs, ctx_len)
        drop_chunks(state, i)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="cache-merge")
    try:
        for job in [pool.submit(merge, i) for i in todo]:
            job.result()
    finally:
        # On Ctrl-C or a failed shard, finish the merges under way but start no others.
        pool.shutdown(wait=True, cancel_futures=True)
    # Chunks of shards recorded by an earlier, killed run may still be there.
    for path in state.folder.glob(CHUNK_GLOB):
        path.unlink()


def seal(state: HookpointCache, config: dict[str, Any]) -> None:
    """Write config.json (the staged cache is now complete), then drop the build state."""
    shards = [
        {
            "file": shard_name(i),
            "start": start,
            "end": end,
            "n": shard_entries(state.folder / shard_name(i)),
        }
        for i, (start, end) in enumerate(state.bounds)
    ]
    atomic_write_json(state.folder / CONFIG_FILE, {**config, "shards": shards})
    (state.folder / MANIFEST).unlink(missing_ok=True)
