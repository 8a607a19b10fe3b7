"""Build the activation cache: one truncated model pass serving every hookpoint, streamed to disk.

Layout (docs/ARCHITECTURE.md, "Cache shard format"): `latents/<hookpoint>/` holds
`tokens.safetensors`, `shard_<i>.safetensors` (latents [start, end), sorted by latent with
offsets) and, written last, `config.json`. While the model runs, each batch's non-zeros are
sorted by (latent, location) on the model's device; batches are buffered on the host and, per
batch group, interleaved into one chunk file per shard inside `.partial/`, next to a manifest
that records how many rows are done. A rerun with the same key resumes from there. At the end
the chunks of each shard are merged by streaming latent blocks into a preallocated file whose
safetensors header is written from the known sizes, so memory stays bounded whatever n_tokens is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import CACHE_KEY_FIELDS, RunConfig
from ..errors import UserError
from ..io import atomic_write, atomic_write_json, read_json
from ..logs import Progress, format_duration, log

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
PARTIAL = ".partial"
MANIFEST = "manifest.json"
TOKENS_FILE = "tokens.safetensors"
CONFIG_FILE = "config.json"

# Non-zeros buffered on the host (per hookpoint) before a chunk is written: about 14 bytes
# each, so this bounds the writer's memory at roughly 110 MB + one batch per hookpoint.
CHUNK_ENTRIES = 8_000_000
# Sorted batch runs buffered before a chunk is written; with many latents fewer, so that the
# [runs, latents] count table of a flush stays near 32 MB.
CHUNK_RUNS = 256
# Entries merged in memory at once when chunks are combined into shards (shared by the
# merge threads), and the most shards merged at once.
MERGE_ENTRIES = 8_000_000
MERGE_WORKERS = 8
_FP16_MAX = 65504.0
# Tokens per forward call on a CPU, per torch thread (see forward_rows).
CPU_TOKENS_PER_THREAD = 256


# --------------------------------------------------------------------------- keys and layout
def cache_key(cfg: RunConfig, hookpoint: str) -> dict[str, Any]:
    """The fields that decide a hookpoint's cache content."""
    key = {name: getattr(cfg, name) for name in CACHE_KEY_FIELDS}
    key["hookpoint"] = hookpoint
    return key


def key_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key field whose value differs (name, old, new), or None when they match."""
    for name, value in new.items():
        if old.get(name, "<missing>") != value:
            return name, old.get(name, "<missing>"), value
    return None


def shard_bounds(num_latents: int, n_splits: int) -> list[tuple[int, int]]:
    """[start, end) of each shard: start_i = i * ceil(L / n_splits); empty shards are dropped."""
    step = math.ceil(num_latents / n_splits)
    bounds = []
    for i in range(n_splits):
        start, end = i * step, min((i + 1) * step, num_latents)
        if start < end:
            bounds.append((start, end))
    return bounds


def shard_name(i: int) -> str:
    return f"shard_{i}.safetensors"


# --------------------------------------------------------------------------- sorted runs
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


# --------------------------------------------------------------------------- safetensors io


def _save_run(
    path: Path,
    run: Run,
    offsets: torch.Tensor,
    ctx_len: int,
    start: int,
    end: int,
) -> None:
    """Write a run in the shard format (used for chunks, which are small enough for save_file)."""
    import torch
    from safetensors.torch import save_file

    tensors = {
        "latents": run.latents.contiguous(),
        "locations": torch.stack([run.flat // ctx_len, run.flat % ctx_len], 1).int(),
        "activations": run.values.contiguous(),
        "offsets": offsets.contiguous(),
    }
    meta = {"start": str(start), "end": str(end)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


class TensorFile:
    """Reads slices of a safetensors file with plain positioned reads, not a memory map.

    Mapped pages that were read stay counted in the process's resident memory until unmapped;
    merging many chunks through mmap would make the writer's footprint grow with the cache.
    """

    _DTYPES = {"I32": "int32", "I64": "int64", "F16": "float16"}

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        (size,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
        self.header = json.loads(os.pread(self.fd, size, 8))
        self.data_start = 8 + size

    def read(self, name: str, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
        """Rows [lo, hi) of tensor `name` (all rows by default)."""
        import numpy as np
        import torch

        info = self.header[name]
        dtype = np.dtype(self._DTYPES[info["dtype"]])
        shape = info["shape"]
        row = dtype.itemsize * math.prod(shape[1:])
        lo = 0 if lo is None else lo
        hi = shape[0] if hi is None else hi
        begin = self.data_start + info["data_offsets"][0] + lo * row
        raw = bytearray(max(0, hi - lo) * row)
        if raw:
            view = memoryview(raw)
            done = 0
            while done < len(raw):  # pread may return less than asked
                chunk = os.pread(self.fd, len(raw) - done, begin + done)
                if not chunk:
                    raise OSError(f"unexpected end of file reading {name}")
                view[done : done + len(chunk)] = chunk
                done += len(chunk)
        array = np.frombuffer(raw, dtype=dtype).reshape(max(0, hi - lo), *shape[1:])
        return torch.from_numpy(array)

    def close(self) -> None:
        os.close(self.fd)


def _load_slice(chunk: TensorFile, lo: int, hi: int, ctx_len: int) -> Run:
    locations = chunk.read("locations", lo, hi).long()
    return Run(
        latents=chunk.read("latents", lo, hi),
        flat=locations[:, 0] * ctx_len + locations[:, 1],
        values=chunk.read("activations", lo, hi),
    )


def _header(entries: list[tuple[str, str, list[int], int]], metadata: dict[str, str]) -> bytes:
    """A safetensors header for tensors laid out back to back in the given order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    pos = 0
    for name, code, shape, nbytes in entries:
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # keep the data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def merge_chunks(
    chunk_files: Sequence[Path],
    out: Path,
    start: int,
    end: int,
    ctx_len: int,
    block: int = MERGE_ENTRIES,
) -> int:
    """Stream chunk files of one shard into `out`; returns the number of entries.

    The header comes first from the summed per-latent counts; the data follows in blocks of
    latents, each holding at most about `block` entries in memory.
    """
    import torch

    handles = [TensorFile(f) for f in chunk_files]
    chunk_offsets = [h.read("offsets") for h in handles]
    counts = sum(
        (o[1:] - o[:-1] for o in chunk_offsets), torch.zeros(end - start, dtype=torch.long)
    )
    offsets = torch.zeros(end - start + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=offsets[1:])
    n = int(offsets[-1])
    layout = [
        ("offsets", "I64", [end - start + 1], (end - start + 1) * 8),
        ("locations", "I32", [n, 2], n * 8),
        ("latents", "I32", [n], n * 4),
        ("activations", "F16", [n], n * 2),
    ]
    head = _header(layout, {"start": str(start), "end": str(end)})
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

            def put(first: int, run: Run) -> None:
                loc = torch.stack([run.flat // ctx_len, run.flat % ctx_len], 1).int()
                for name, tensor, width in (
                    ("locations", loc, 8),
                    ("latents", run.latents, 4),
                    ("activations", run.values, 2),
                ):
                    fh.seek(base[name] + first * width)
                    fh.write(tensor.contiguous().numpy().data)

            a = 0
            while a < end - start:
                # Grow the block while it stays under the memory budget (at least one latent).
                b = int(torch.searchsorted(offsets, offsets[a] + block, right=True)) - 1
                b = min(max(b, a + 1), end - start)
                first = int(offsets[a])
                if b == a + 1 and int(offsets[b]) - first > block:
                    # One heavy latent: its chunks' slices follow each other in location
                    # order, so copy them piece by piece.
                    for h, o in zip(handles, chunk_offsets, strict=True):
                        for lo in range(int(o[a]), int(o[b]), block):
                            hi = min(lo + block, int(o[b]))
                            put(first, _load_slice(h, lo, hi, ctx_len))
                            first += hi - lo
                else:
                    runs = [
                        _load_slice(h, int(o[a]), int(o[b]), ctx_len)
                        for h, o in zip(handles, chunk_offsets, strict=True)
                    ]
                    put(first, interleave(runs, start + a, start + b)[0])
                a = b

    try:
        atomic_write(out, write)
    finally:
        for handle in handles:
            handle.close()
    return n


# --------------------------------------------------------------------------- one hookpoint
@dataclass
class HookpointCache:
    """The build state of one hookpoint's cache folder."""

    hookpoint: str
    folder: Path
    key: dict[str, Any]
    coder: Any
    num_latents: int
    n_splits: int
    rows_done: int = 0
    chunks: int = 0
    merged: list[int] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    buffered: int = 0

    @property
    def partial(self) -> Path:
        return self.folder / PARTIAL

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return shard_bounds(self.num_latents, self.n_splits)

    def manifest(self, n_seqs: int, ctx_len: int) -> dict[str, Any]:
        return {
            "key": self.key,
            "num_latents": self.num_latents,
            "n_splits": self.n_splits,
            "n_seqs": n_seqs,
            "ctx_len": ctx_len,
            "rows_done": self.rows_done,
            "chunks": self.chunks,
            "merged": self.merged,
        }

    def chunk_file(self, chunk: int, shard: int) -> Path:
        return self.partial / f"chunk_{chunk:06d}_shard_{shard}.safetensors"

    def add(self, run: Run) -> None:
        self.runs.append(run)
        self.buffered += len(run.latents)

    @property
    def max_runs(self) -> int:
        # interleave() keeps a [runs, latents] count table: keep it near 16 MB.
        return max(2, min(CHUNK_RUNS, 2**21 // max(1, self.num_latents)))

    def flush(self, rows_done: int, n_seqs: int, ctx_len: int, saver: Saver) -> None:
        """Write the buffered runs as one chunk per shard, then record progress atomically.

        The files are written by `saver` in the background while the model goes on.
        """
        import torch

        if rows_done <= self.rows_done:
            return
        merged = merge_runs(self.runs, self.num_latents)
        self.runs, self.buffered = [], 0
        starts = [start for start, _ in self.bounds] + [self.num_latents]
        cuts = torch.searchsorted(merged.latents, torch.tensor(starts, dtype=torch.int32)).tolist()
        parts = []
        for i, (start, end) in enumerate(self.bounds):
            lo, hi = cuts[i], cuts[i + 1]
            part = Run(merged.latents[lo:hi], merged.flat[lo:hi], merged.values[lo:hi])
            bounds = torch.arange(start, end + 1, dtype=torch.int32)
            offsets = torch.searchsorted(part.latents, bounds).long()
            parts.append((self.chunk_file(self.chunks, i), part, offsets, start, end))
        self.chunks += 1
        self.rows_done = rows_done
        manifest_path, manifest = self.partial / MANIFEST, self.manifest(n_seqs, ctx_len)

        def save() -> None:
            for path, part, offsets, start, end in parts:
                _save_run(path, part, offsets, ctx_len, start, end)
            atomic_write_json(manifest_path, manifest)  # only now do these rows count as done

        saver.submit(save)


class Saver:
    """Runs file writes on one background thread, at most one at a time (bounded memory).

    A failed write re-raises in the caller at the next submit() or at close().
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")
        self._pending: Any = None

    def submit(self, fn: Any) -> None:
        self.wait()
        self._pending = self._pool.submit(fn)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------- reuse decisions
def _reusable(folder: Path, key: dict[str, Any], overwrite: bool) -> bool:
    config_path = folder / CONFIG_FILE
    if not config_path.exists():
        return False
    if overwrite:
        log.info("recomputing cache %s (--overwrite cache)", folder)
        return False
    try:
        old = read_json(config_path)
    except (OSError, ValueError):
        log.warning("recomputing cache %s: unreadable %s", folder, CONFIG_FILE)
        return False
    diff = key_difference(old, key)
    if diff is not None:
        name, was, now = diff
        log.info("recomputing cache %s: %s changed from %r to %r", folder, name, was, now)
        return False
    missing = [s["file"] for s in old.get("shards", []) if not (folder / s["file"]).exists()]
    if missing or not (folder / TOKENS_FILE).exists():
        log.warning("recomputing cache %s: missing %s", folder, ", ".join(missing or [TOKENS_FILE]))
        return False
    log.info("reusing cache %s", folder)
    return True


def _clear_complete(folder: Path) -> None:
    """Remove a finished cache's files, config.json first so that it reads as incomplete."""
    (folder / CONFIG_FILE).unlink(missing_ok=True)
    for path in folder.glob("shard_*.safetensors"):
        path.unlink()
    (folder / TOKENS_FILE).unlink(missing_ok=True)


def _resume_state(state: HookpointCache, n_seqs: int | None) -> bool:
    """Load `.partial/` progress when its key and layout match; otherwise discard it."""
    manifest_path = state.partial / MANIFEST
    if not manifest_path.exists():
        if state.partial.exists():
            shutil.rmtree(state.partial)
        return False
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError):
        manifest = {}
    diff = key_difference(manifest.get("key", {}), state.key)
    layout_ok = (
        manifest.get("num_latents") == state.num_latents
        and manifest.get("n_splits") == state.n_splits
        and (state.partial / TOKENS_FILE).exists()
        and (n_seqs is None or manifest.get("n_seqs") == n_seqs)
    )
    if diff is not None or not layout_ok:
        why = f"{diff[0]} changed from {diff[1]!r} to {diff[2]!r}" if diff else "layout changed"
        log.info("discarding partial cache in %s: %s", state.folder, why)
        shutil.rmtree(state.partial)
        return False
    merged = list(manifest.get("merged", []))
    if any(not (state.folder / shard_name(i)).exists() for i in merged):
        log.info("discarding partial cache in %s: a merged shard is missing", state.folder)
        shutil.rmtree(state.partial)
        return False
    state.rows_done = int(manifest["rows_done"])
    state.chunks = int(manifest["chunks"])
    state.merged = merged
    # Chunk files written after the last manifest update belong to no recorded chunk.
    for path in state.partial.glob("chunk_*.safetensors"):
        if int(path.name.split("_")[1]) >= state.chunks:
            path.unlink()
    log.info(
        "resuming cache %s from row %d of %s", state.folder, state.rows_done, manifest.get("n_seqs")
    )
    return True


# --------------------------------------------------------------------------- the model pass
def forward_rows(device: torch.device, batch_size: int, ctx_len: int) -> int:
    """Rows per forward call.

    On a CPU, passes of about CPU_TOKENS_PER_THREAD tokens per thread keep a layer's
    activations in cache (512 tokens on 2 cores: 17% faster than 32 x 256); an accelerator
    takes the whole batch at once.
    """
    import torch

    if device.type != "cpu":
        return batch_size
    tokens = CPU_TOKENS_PER_THREAD * torch.get_num_threads()
    return max(1, min(batch_size, tokens // ctx_len))


def _encode_batch(
    model: Any,
    states: list[HookpointCache],
    batch: torch.Tensor,
    step: int,
    forward: Any,
    inputs: frozenset[str],
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each hookpoint's non-zeros (rows, latents, values) for one batch, `step` rows per pass."""
    import torch

    hookpoints = [s.hookpoint for s in states]
    inputs = inputs & set(hookpoints)
    parts: dict[str, list[tuple[torch.Tensor, ...]]] = {hp: [] for hp in hookpoints}
    t = batch.shape[1]
    for first in range(0, batch.shape[0], step):
        hidden = forward(model, hookpoints, batch[first : first + step], inputs=inputs)
        for state in states:
            x = hidden[state.hookpoint]
            rows, latents, values = state.coder.encode_sparse(x.reshape(-1, x.shape[-1]))
            parts[state.hookpoint].append((rows + first * t, latents, values))
        del hidden
    joined = {}
    for hp, found in parts.items():
        rows, latents, values = zip(*found, strict=True)
        joined[hp] = (torch.cat(rows), torch.cat(latents), torch.cat(values))
    return joined


def run_model(
    model: Any,
    states: list[HookpointCache],
    tokens: torch.Tensor,
    batch_size: int,
    bos_id: int | None,
    forward: Any,
) -> float:
    """Feed `tokens` through the model in batches, streaming every hookpoint's non-zeros.

    `forward(model, hookpoints, input_ids, inputs=...)` returns hidden states per hookpoint.
    Returns the seconds spent.
    """
    import torch

    n_seqs, ctx_len = tokens.shape
    device = next(model.parameters()).device
    start = min(s.rows_done for s in states)
    pending = [s for s in states if s.rows_done < n_seqs]
    if not pending:
        return 0.0
    step = forward_rows(device, batch_size, ctx_len)
    inputs = frozenset(s.hookpoint for s in pending if getattr(s.coder, "transcoder", False))
    began = time.perf_counter()
    saver = Saver()
    progress = Progress((n_seqs - start) * ctx_len, "caching activations", unit="tok")
    try:
        for row in range(start, n_seqs, batch_size):
            batch = tokens[row : row + batch_size].to(device=device, dtype=torch.long)
            todo = [s for s in pending if row >= s.rows_done]
            with torch.inference_mode():
                found = _encode_batch(model, todo, batch, step, forward, inputs)
                keep = (batch != bos_id).reshape(-1) if bos_id is not None else None
                for s in todo:
                    s.add(sort_batch(*found[s.hookpoint], batch.numel(), row, ctx_len, keep))
            done = min(row + batch_size, n_seqs)
            progress.update((done - row) * ctx_len)
            if done == n_seqs or any(
                s.buffered >= CHUNK_ENTRIES or len(s.runs) >= s.max_runs for s in pending
            ):
                for s in pending:
                    s.flush(done, n_seqs, ctx_len, saver)
    finally:
        # Even on Ctrl-C, let the chunk being written finish so that its manifest is true.
        progress.close()
        saver.close()
    return time.perf_counter() - began


def finish(
    state: HookpointCache, tokens_file: Path, config: dict[str, Any], n_seqs: int, ctx_len: int
) -> None:
    """Merge every shard's chunks, move the tokens in, write config.json, drop .partial/.

    Shards are merged on parallel threads (torch and file reads release the GIL), sharing one
    memory budget.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    todo = [
        (i, start, end)
        for i, (start, end) in enumerate(state.bounds)
        if i not in state.merged or not (state.folder / shard_name(i)).exists()
    ]
    workers = max(1, min(len(todo), os.cpu_count() or 1, MERGE_WORKERS))
    budget = max(MERGE_ENTRIES // workers, 1)
    lock = threading.Lock()

    def merge(i: int, start: int, end: int) -> None:
        out = state.folder / shard_name(i)
        files = [state.chunk_file(c, i) for c in range(state.chunks)]
        if len(files) == 1:
            os.replace(files[0], out)  # a chunk already has the shard format
        else:
            merge_chunks(files, out, start, end, ctx_len, budget)
            for f in files:
                f.unlink()
        with lock:
            state.merged.append(i)
            atomic_write_json(state.partial / MANIFEST, state.manifest(n_seqs, ctx_len))

    pool = ThreadPoolExecutor(workers, thread_name_prefix="cache-merge")
    try:
        for job in [pool.submit(merge, *args) for args in todo]:
            job.result()
    finally:
        # On Ctrl-C or a failed shard, finish the merges under way but start no others.
        pool.shutdown(wait=True, cancel_futures=True)
    shards = [
        {"file": name, "start": start, "end": end, "n": _entries(state.folder / name)}
        for name, (start, end) in ((shard_name(i), b) for i, b in enumerate(state.bounds))
    ]
    target = state.folder / TOKENS_FILE
    if tokens_file != target:
        shutil.copyfile(tokens_file, target)
    atomic_write_json(state.folder / CONFIG_FILE, {**config, "shards": shards})
    shutil.rmtree(state.partial, ignore_errors=True)


def _entries(path: Path) -> int:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return int(header["latents"]["shape"][0])


def _save_tokens(path: Path, tokens: torch.Tensor) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file({"tokens": tokens.contiguous()}, str(p)))


def _load_tokens(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["tokens"]


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# --------------------------------------------------------------------------- entry point
def build_cache(cfg: RunConfig, latents_dir: Path) -> dict[str, Path]:
    """Make sure `latents_dir/<hookpoint>/` holds a complete cache for every hookpoint.

    Caches whose key matches the current configuration are reused; the others are built in one
    model pass (resuming any interrupted build with the same key). Returns hookpoint -> folder.
    """
    latents_dir = Path(latents_dir)
    hookpoints = list(dict.fromkeys(cfg.hookpoints))
    if not hookpoints:
        raise UserError("--hookpoints: give at least one module path, e.g. layers.16")
    folders = {hp: latents_dir / hp for hp in hookpoints}
    overwrite = "cache" in cfg.overwrite
    todo = [hp for hp in hookpoints if not _reusable(folders[hp], cache_key(cfg, hp), overwrite)]
    if not todo:
        return folders

    from .. import models, sparse

    began = time.perf_counter()
    model, tokenizer = models.load_subject_model(
        cfg.model,
        device=cfg.device,
        dtype=cfg.dtype,
        load_in_8bit=cfg.load_in_8bit,
        token=cfg.token,
    )
    param = next(model.parameters())
    coders = sparse.load_sparse_models(
        cfg.sparse_model, todo, device=param.device, dtype=param.dtype, token=cfg.token
    )
    width = models.hidden_size(model)
    for hp in todo:
        sparse.check_dimensions(coders[hp], width, hp)

    states = []
    for hp in todo:
        folder = folders[hp]
        folder.mkdir(parents=True, exist_ok=True)
        _clear_complete(folder)
        state = HookpointCache(
            hp, folder, cache_key(cfg, hp), coders[hp], int(coders[hp].num_latents), cfg.n_splits
        )
        _resume_state(state, None)
        states.append(state)

    tokens = _tokens_for(cfg, tokenizer, states)
    n_seqs, ctx_len = tokens.shape
    for state in states:
        if (state.partial / MANIFEST).exists() and read_json(state.partial / MANIFEST).get(
            "n_seqs"
        ) != n_seqs:
            _resume_state(state, n_seqs)  # tokens changed under it: start again
        state.partial.mkdir(parents=True, exist_ok=True)
        if not (state.partial / TOKENS_FILE).exists():
            _save_tokens(state.partial / TOKENS_FILE, tokens)
        atomic_write_json(state.partial / MANIFEST, state.manifest(n_seqs, ctx_len))

    bos_id = tokenizer.bos_token_id if cfg.filter_bos else None
    if cfg.filter_bos and bos_id is None:
        log.warning("--filter_bos: the tokenizer has no BOS token; nothing is filtered")
    model_s = run_model(model, states, tokens, cfg.batch_size, bos_id, models.forward_to_hooks)

    for state in states:
        config = {
            **state.key,
            "tokenizer": getattr(tokenizer, "name_or_path", "") or cfg.model,
            "num_latents": state.num_latents,
            "n_seqs": n_seqs,
            "ctx_len": ctx_len,
            "n_splits": cfg.n_splits,
            "d_in": int(getattr(state.coder, "d_in", width)),
            "transcoder": bool(getattr(state.coder, "transcoder", False)),
            "bos_token_id": tokenizer.bos_token_id,
            "format": FORMAT_VERSION,
        }
        finish(state, state.partial / TOKENS_FILE, config, n_seqs, ctx_len)

    total = time.perf_counter() - began
    n_tok = n_seqs * ctx_len
    size = sum(_dir_size(folders[hp]) for hp in todo)
    log.info(
        "cached %d tokens for %s in %s (model pass %.0f tok/s); %s on disk in %s",
        n_tok,
        ", ".join(todo),
        format_duration(total),
        n_tok / model_s if model_s else 0.0,
        _human_bytes(size),
        latents_dir,
    )
    return folders


def _tokens_for(cfg: RunConfig, tokenizer: Any, states: list[HookpointCache]) -> torch.Tensor:
    """The token rows: from an interrupted build's `.partial/` when there is one, else fresh."""
    from ..data import load_texts, tokenize_rows

    for state in states:
        path = state.partial / TOKENS_FILE
        if state.chunks or state.rows_done:
            if path.exists():
                return _load_tokens(path)
    texts = load_texts(
        cfg.dataset_repo,
        cfg.dataset_split,
        cfg.dataset_column,
        token=cfg.token,
        num_proc=cfg.pipeline_num_proc,
    )
    return tokenize_rows(texts, tokenizer, cfg.cache_ctx_len, cfg.n_tokens)
