"""Chunk spilling and the resume manifest of one hookpoint's staged build.

While the model runs, each hookpoint's sorted batch runs are buffered on the host; every so
often they become one chunk file per shard (`chunk_<c>_shard_<i>.safetensors`), written on a
background thread, and only after them the manifest (`manifest.json`) that counts the rows
done. A rerun with the same key resumes from the manifest; chunk files it does not count are
left-overs of a killed write and are removed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_write_json, read_json
from ..logs import log
from .format import (
    CHUNK_GLOB,
    CONFIG_FILE,
    FORMAT_VERSION,
    MANIFEST,
    TOKENS_FILE,
    CacheFileError,
    check_tokens_file,
    chunk_index,
    chunk_name,
    index_code,
    shard_bounds,
    shard_name,
    token_code,
)
from .key import key_difference
from .runs import Run, merge_runs, split_shards
from .tensorio import save_run, save_tokens

if TYPE_CHECKING:
    import torch

# Non-zeros buffered on the host (per hookpoint) before a chunk is written: 14 bytes each in
# memory (int32 latent, int64 flat index, fp16), so this bounds the writer's memory at roughly
# 110 MB + one batch per hookpoint.
CHUNK_ENTRIES = 8_000_000
# Sorted batch runs buffered before a chunk is written; with many latents fewer, so that the
# [runs, latents] count table of a flush stays near 32 MB.
CHUNK_RUNS = 256


@dataclass
class HookpointCache:
    """The build state of one hookpoint's staging folder (`latents/.staging/<hookpoint>/`)."""

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
    # Token rows of the staged build found on disk (by `resumable`); -1 when none.
    staged_rows: int = -1
    # The tokenizer's vocabulary size, which sets the tokens file's dtype (None: from the ids).
    vocab_size: int | None = None
    # Tokens of the whole cache, which set the index dtype; differs from this build's own rows
    # in a fan-out range step (None: this build's rows are the whole cache).
    index_tokens: int | None = None

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return shard_bounds(self.num_latents, self.n_splits)

    @property
    def tokens_file(self) -> Path:
        return self.folder / TOKENS_FILE

    def manifest(self, n_seqs: int, ctx_len: int) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "key": self.key,
            "num_latents": self.num_latents,
            "n_splits": self.n_splits,
            "n_seqs": n_seqs,
            "ctx_len": ctx_len,
            "rows_done": self.rows_done,
            "chunks": self.chunks,
            "merged": sorted(self.merged),
        }

    def save_manifest(self, n_seqs: int, ctx_len: int) -> None:
        atomic_write_json(self.folder / MANIFEST, self.manifest(n_seqs, ctx_len))

    def chunk_file(self, chunk: int, shard: int) -> Path:
        return self.folder / chunk_name(chunk, shard)

    def add(self, run: Run) -> None:
        self.runs.append(run)
        self.buffered += len(run.latents)

    @property
    def max_runs(self) -> int:
        # interleave() keeps a [runs, latents] count table: keep it near 16 MB.
        return max(2, min(CHUNK_RUNS, 2**21 // max(1, self.num_latents)))

    def full(self) -> bool:
        """Whether the buffered runs should be written out now."""
        return self.buffered >= CHUNK_ENTRIES or len(self.runs) >= self.max_runs

    def flush(self, rows_done: int, n_seqs: int, ctx_len: int, saver: Saver) -> None:
        """Write the buffered runs as one chunk per shard, then record progress atomically.

        The files are written by `saver` in the background while the model goes on.
        """
        if rows_done <= self.rows_done:
            return
        merged = merge_runs(self.runs, self.num_latents)
        self.runs, self.buffered = [], 0
        parts = [
            (self.chunk_file(self.chunks, i), part, offsets, start, end)
            for i, ((part, offsets), (start, end)) in enumerate(
                zip(split_shards(merged, self.bounds), self.bounds, strict=True)
            )
        ]
        self.chunks += 1
        self.rows_done = rows_done
        manifest_path, manifest = self.folder / MANIFEST, self.manifest(n_seqs, ctx_len)
        index_tokens = self.index_tokens or n_seqs * ctx_len

        def save() -> None:
            for path, part, offsets, start, end in parts:
                save_run(path, part, offsets, index_tokens, start, end)
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


# --------------------------------------------------------------------------- resuming
def resumable(state: HookpointCache) -> tuple[bool, str]:
    """Whether the staging folder holds a build of this key and layout that can go on, and
    why not. Reads only: nothing is removed here (the tokens may still fail to load)."""
    folder = state.folder
    if not (folder / MANIFEST).exists():
        return False, "no manifest"
    try:
        manifest = read_json(folder / MANIFEST)
        n_seqs, ctx_len = int(manifest["n_seqs"]), int(manifest["ctx_len"])
        rows_done, chunks = int(manifest["rows_done"]), int(manifest["chunks"])
        merged = [int(i) for i in manifest.get("merged", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"unreadable {MANIFEST}"
    if manifest.get("format") != FORMAT_VERSION:
        return False, f"its chunks are in cache format {manifest.get('format')!r}"
    diff = key_difference(manifest.get("key", {}), state.key)
    if diff is not None:
        return False, f"{diff[0]} changed from {diff[1]!r} to {diff[2]!r}"
    if (
        manifest.get("num_latents") != state.num_latents
        or manifest.get("n_splits") != state.n_splits
    ):
        return False, "layout changed"
    try:
        check_tokens_file(state.tokens_file, n_seqs, ctx_len)
    except CacheFileError as exc:
        return False, f"{TOKENS_FILE} {exc.problem}"
    for i in range(len(state.bounds)):
        if (folder / shard_name(i)).exists():
            continue  # merged (recorded or not): its chunks are no longer needed
        if i in merged:
            return False, f"merged {shard_name(i)} is missing"
        for c in range(chunks):
            if not (folder / chunk_name(c, i)).exists():
                return False, f"{chunk_name(c, i)} is missing"
    state.rows_done, state.chunks, state.merged = rows_done, chunks, merged
    state.staged_rows = n_seqs
    return True, ""


def drop_unrecorded_chunks(state: HookpointCache) -> None:
    """Chunk files written after the last manifest update belong to no recorded chunk."""
    for path in state.folder.glob(CHUNK_GLOB):
        if chunk_index(path.name) >= state.chunks:
            path.unlink()


def start_fresh(state: HookpointCache, tokens: torch.Tensor, why: str) -> None:
    """Empty the staging folder (logging why, when it held a build), then save the tokens and
    a manifest with no rows done."""
    folder = state.folder
    if folder.exists():
        if any(folder.iterdir()):
            log.info("discarding partial cache in %s: %s", folder, why)
        shutil.rmtree(folder)
    state.rows_done, state.chunks, state.merged = 0, 0, []
    state.staged_rows = len(tokens)
    folder.mkdir(parents=True)
    n_seqs, ctx_len = tokens.shape
    check_index_size(state.index_tokens or n_seqs * ctx_len)
    save_tokens(state.tokens_file, tokens, token_code(tokens_vocab(state, tokens)))
    state.save_manifest(n_seqs, ctx_len)


def tokens_vocab(state: HookpointCache, tokens: torch.Tensor) -> int:
    """The vocabulary size the tokens file's dtype must hold (at least every id present)."""
    top = int(tokens.max()) + 1 if tokens.numel() else 0
    return max(state.vocab_size or 0, top)


def check_index_size(n_tokens: int) -> None:
    """Past 2^32 tokens the flat index is int64; log it, as each entry then takes 10 bytes."""
    if index_code(n_tokens) != "U32":
        log.info(
            "caching %d tokens (over 2^32): the flat token index is int64, 10 bytes per non-zero",
            n_tokens,
        )


def is_sealed(folder: Path) -> bool:
    """A staged build whose config.json is written: complete, waiting to be swapped in."""
    return (Path(folder) / CONFIG_FILE).exists()
