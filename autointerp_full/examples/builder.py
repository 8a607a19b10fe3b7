"""Building each latent's record: quantile-sampled activating windows (train and test) and
non-activating windows, read from the cache in one pass over its shards.

Every random choice comes from a generator seeded by (seed, hookpoint, latent), so a latent's
examples do not depend on which other latents are processed, or in what order, or in which
worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from autointerp_full.config import RunConfig
from autointerp_full.examples.decode import TokenDecoder, as_decoder, load_tokenizer
from autointerp_full.examples.non_activating import (
    NonActivatingSource,
    hookpoint_of,
    make_non_activating_source,
)
from autointerp_full.examples.samplers import latent_rng, sample_train_test
from autointerp_full.examples.types import NON_ACTIVATING, LatentRecord, LatentWindows
from autointerp_full.examples.windows import LatentActivations, activating_windows, to_numpy
from autointerp_full.layout import neighbours_dir, select_latents
from autointerp_full.logs import Progress

# Cache entries read at once when latents are built in order (about 60 MB as read).
BLOCK_ENTRIES = 4_000_000
# Latents per batch handed to a worker process, and the fewest latents per worker worth a fork.
BATCH_LATENTS = 64
PARALLEL_MIN_LATENTS = 16

T = TypeVar("T")


def gather(
    tokens: np.ndarray,
    acts: LatentActivations,
    decoder: TokenDecoder,
    rows: np.ndarray,
    starts: np.ndarray,
    length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, their texts and the latent's activations (to 4 decimals, as stored) in the
    windows (rows[i], starts[i], length): three (windows, length) arrays, gathered at once."""
    rows, starts = np.asarray(rows, np.int64), np.asarray(starts, np.int64)
    ctx = tokens.shape[1]
    ids = tokens.reshape(-1)[(rows * ctx + starts)[:, None] + np.arange(length)]
    values = np.round(acts.dense_windows(rows, starts, length).astype(np.float64), 4)
    return ids, decoder.lookup(ids), values


def _texts(
    tokens: np.ndarray, decoder: TokenDecoder, rows: np.ndarray, starts: np.ndarray, length: int
) -> list[str]:
    return [decoder.text(tokens[r, s : s + length]) for r, s in zip(rows, starts, strict=True)]


def _build(
    reader: Any,
    latent: int,
    cfg: RunConfig,
    decoder: TokenDecoder,
    tokens: np.ndarray,
    hookpoint: str,
    rng: np.random.Generator,
    source: NonActivatingSource | None,
    acts: LatentActivations | None = None,
) -> tuple[LatentWindows | None, int]:
    """(windows or None when too few activating windows, number of activating windows);
    `acts` are the latent's activations when already read."""
    n_rows, ctx = tokens.shape
    length = min(cfg.example_ctx_len, ctx)
    if acts is None:
        acts = read_activations(reader, latent, ctx)
    windows = activating_windows(acts, length, cfg.center_examples)
    if len(windows) < cfg.min_examples:
        return None, len(windows)
    # Negatives get their own stream, so switching source leaves train/test unchanged.
    negatives_rng = np.random.default_rng(int(rng.integers(2**63)))
    # np_max_act explains from the latent's strongest windows; the others from every quantile.
    train_picks, test_picks = sample_train_test(
        windows.scores,
        cfg.n_examples_train,
        cfg.n_examples_test,
        rng,
        strongest_train=cfg.effective_explainer == "np_max_act",
    )
    picks = train_picks + test_picks
    index = np.array([i for i, _ in picks], np.int64)
    rows, starts = windows.rows[index], windows.starts[index]
    quantiles = [q for _, q in picks]
    # The contrastive explainer gets windows of its own, drawn beside the scored ones.
    n_contrast = len(train_picks) if cfg.effective_explainer == "contrastive" else 0
    if source is not None and cfg.n_non_activating + n_contrast > 0:
        chosen = source.select(
            acts,
            cfg.n_non_activating + n_contrast,
            negatives_rng,
            latent=latent,
            # Only FAISS compares texts, and it needs them before any window is chosen.
            activating_texts=_texts(tokens, decoder, rows, starts, length)
            if source.name == "FAISS"
            else [],
        )
        rows = np.concatenate([rows, np.array([r for r, _ in chosen], np.int64)])
        starts = np.concatenate([starts, np.array([s for _, s in chosen], np.int64)])
        quantiles += [NON_ACTIVATING] * len(chosen)
    ids, texts, values = gather(tokens, acts, decoder, rows, starts, length)
    n_train, n_scored = len(train_picks), len(picks)
    n_non = min(cfg.n_non_activating, len(rows) - n_scored)
    built = LatentWindows(
        hookpoint=hookpoint,
        latent=latent,
        n_activating=len(windows),
        firing_rate=len(acts) / float(n_rows * ctx),
        max_activation=acts.max_activation,
        tokens=ids,
        str_tokens=texts,
        activations=values,
        quantiles=quantiles,
        sections={
            "train": n_train,
            "test": n_scored - n_train,
            "non_activating": n_non,
            "contrast": len(rows) - n_scored - n_non,
        },
    )
    return built, len(windows)


def read_activations(reader: Any, latent: int, ctx: int) -> LatentActivations:
    """One latent's activations from a CacheReader (its flat slice) or any reader with
    `latent(i)` -> (locations, activations)."""
    if hasattr(reader, "latent_flat"):
        return LatentActivations.from_flat(*reader.latent_flat(latent), ctx)
    return LatentActivations(*reader.latent(latent), ctx)


def build_latent_record(
    reader: Any,
    latent: int,
    cfg: RunConfig,
    tokenizer: Any,
    *,
    rng: np.random.Generator | None = None,
    non_activating_source: NonActivatingSource | None = None,
    tokens: np.ndarray | None = None,
) -> LatentRecord | None:
    """One latent's record, or None when it has fewer than cfg.min_examples activating windows.

    `rng` defaults to the generator seeded by (cfg.seed, hookpoint, latent); pass `tokens`
    (reader.tokens() as numpy) to avoid re-reading them for every latent.
    """
    hookpoint = hookpoint_of(reader)
    tokens = to_numpy(reader.tokens()) if tokens is None else tokens
    rng = rng if rng is not None else latent_rng(cfg.seed, hookpoint, latent)
    built, _ = _build(
        reader, latent, cfg, as_decoder(tokenizer), tokens, hookpoint, rng, non_activating_source
    )
    return None if built is None else built.record()


class ExampleBuilder:
    """Builds records for one hookpoint's cache (what examples_stage uses).

    The tokenizer is the cache's model's (else --model's); the non-activating source is set
    up on the first build, for `latents` (default: the run's selected latents), and its neighbour
    lists / embeddings are cached in <examples_dir>/neighbours/.
    """

    def __init__(
        self,
        cfg: RunConfig,
        reader: Any,
        examples_dir: Path | None,
        *,
        tokenizer: Any = None,
        latents: list[int] | None = None,
        sparse_coder: Any = None,
        embedder: Any = None,
        faiss_pool_size: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.reader = reader
        self.hookpoint = hookpoint_of(reader)
        # The stored dtype where the reader offers it: every worker shares these pages.
        tokens_array = getattr(reader, "tokens_array", None)
        self.tokens = tokens_array() if tokens_array else to_numpy(reader.tokens())
        if tokenizer is None:
            # The model that built the cache (a .gguf path keeps its file name there).
            config = getattr(reader, "config", {}) or {}
            tokenizer = load_tokenizer(str(config.get("model") or cfg.model), cfg.token)
        self.decoder = as_decoder(tokenizer)
        self.latents = latents
        self.cache_dir = neighbours_dir(Path(examples_dir)) if examples_dir else None
        self._extras = {
            "sparse_coder": sparse_coder,
            "embedder": embedder,
            "faiss_pool_size": faiss_pool_size,
        }
        self._source: NonActivatingSource | None = None
        self._decoded = False
        self.last_count = 0
        self._prefetched: dict[int, LatentActivations] = {}
        self._order: dict[int, int] = {}
        self._upcoming: list[int] = []
        self._firing: np.ndarray | None = None
        self._plan(list(latents) if latents is not None else [])

    @property
    def source(self) -> NonActivatingSource:
        if self._source is None:
            latents = self.latents
            if latents is None:
                latents = select_latents(self.cfg, self.reader.num_latents)
            self._source = make_non_activating_source(
                self.cfg,
                self.reader,
                self.tokens,
                self.decoder,
                latents=latents,
                cache_dir=self.cache_dir,
                **self._extras,
            )
        return self._source

    def build(self, latent: int) -> LatentRecord | None:
        """The latent's record, or None (with self.last_count windows) when it is skipped."""
        built = self.build_windows(latent)
        return None if built is None else built.record()

    def build_windows(self, latent: int) -> LatentWindows | None:
        """build(), as the arrays the examples file is written from."""
        rng = latent_rng(self.cfg.seed, self.hookpoint, latent)
        source = self.source if self.cfg.n_non_activating > 0 else None
        acts = self._activations(latent)
        built, self.last_count = _build(
            self.reader,
            latent,
            self.cfg,
            self.decoder,
            self.tokens,
            self.hookpoint,
            rng,
            source,
            acts,
        )
        return built

    def build_many(self, latents: list[int]) -> Iterator[tuple[int, LatentRecord | None, int]]:
        """(latent, record or None, activating windows) for `latents`, in their order.

        With cfg.pipeline_num_proc > 1 (and a source that is safe to fork), contiguous batches
        of latents are built in forked worker processes, at most two batches per worker in
        flight, so memory stays bounded; every latent's record is the one build() gives.
        """
        return self._each(latents, LatentWindows.record)

    def write_many(
        self, latents: list[int], write: Callable[[LatentWindows], None]
    ) -> Iterator[tuple[int, bool, int]]:
        """(latent, whether it has a record, activating windows), like build_many, with
        `write(windows)` called where the record is built: in the worker process when forked,
        so files are written in parallel and records never travel between processes."""
        for latent, written, count in self._each(latents, lambda r: write(r) or True):
            yield latent, bool(written), count

    def _each(
        self, latents: list[int], finish: Callable[[LatentWindows], T]
    ) -> Iterator[tuple[int, T | None, int]]:
        latents = list(latents)
        self._decode_all()
        procs = min(self.cfg.pipeline_num_proc, max(1, len(latents) // PARALLEL_MIN_LATENTS))
        if procs <= 1 or self.cfg.non_activating_source == "FAISS" or not _can_fork():
            yield from _run_batch(self, latents, finish)
            return
        yield from _build_forked(self, latents, procs, finish)

    def _decode_all(self) -> None:
        """Decode every token id of the cache once, in one batch."""
        if not self._decoded:
            used = np.flatnonzero(np.bincount(self.tokens.reshape(-1).astype(np.int64)))
            self.decoder.prefill(used)
            self._decoded = True

    # ------------------------------------------------------------------ one pass over shards
    def _plan(self, latents: list[int]) -> None:
        """The order in which latents will be asked for, so reads can cover several at once."""
        self._order = {latent: i for i, latent in enumerate(latents)}
        self._upcoming = list(latents)

    def _activations(self, latent: int) -> LatentActivations | None:
        """The latent's activations, read together with the next planned latents (one read
        per block of consecutive latents in a shard, not one per latent)."""
        if not hasattr(self.reader, "iter_latents"):
            return None
        ctx = self.tokens.shape[1]
        if latent not in self._prefetched:
            self._prefetched.clear()
            for found, flat, values in self.reader.iter_latents(self._next_block(latent)):
                self._prefetched[found] = LatentActivations.from_flat(flat, values, ctx)
        return self._prefetched.pop(latent)

    def _next_block(self, latent: int) -> list[int]:
        """`latent` and the planned latents after it, up to about BLOCK_ENTRIES entries."""
        i = self._order.get(latent)
        if i is None:
            return [latent]
        block, size = [], 0
        for nxt in self._upcoming[i:]:
            size += self._count(nxt)
            if block and size > BLOCK_ENTRIES:
                break
            block.append(nxt)
        return block

    def _count(self, latent: int) -> int:
        """The latent's number of entries, from its shard's offsets only (a pipeline step
        holds just the shards of its latent range)."""
        count = getattr(self.reader, "entry_count", None)
        if count is not None:
            return int(count(latent))
        if self._firing is None:
            self._firing = to_numpy(self.reader.firing_counts(), np.int64)
        return int(self._firing[latent])


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _run_batch(
    builder: ExampleBuilder, latents: list[int], finish: Callable[[LatentWindows], T]
) -> Iterator[tuple[int, T | None, int]]:
    builder._plan(latents)
    for latent in latents:
        built = builder.build_windows(latent)
        yield latent, None if built is None else finish(built), builder.last_count


def _die_with_parent() -> None:
    """A worker writes files: it must not outlive a killed parent, whose rerun may be starting."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG (Linux only)
    except (AttributeError, OSError):
        pass


# What a forked worker inherited: the builder and what to do with each record.
_WORKER: tuple[ExampleBuilder, Callable[[LatentWindows], Any]] | None = None


def _worker_batch(latents: list[int]) -> list[tuple[int, Any, int]]:
    assert _WORKER is not None
    return list(_run_batch(_WORKER[0], latents, _WORKER[1]))


def _build_forked(
    builder: ExampleBuilder, latents: list[int], procs: int, finish: Callable[[LatentWindows], T]
) -> Iterator[tuple[int, T | None, int]]:
    import multiprocessing

    global _WORKER
    if builder.cfg.n_non_activating > 0:
        builder.source  # noqa: B018 -- set up (neighbour lists) once, before forking
    size = max(1, min(BATCH_LATENTS, -(-len(latents) // (4 * procs))))
    batches = [latents[i : i + size] for i in range(0, len(latents), size)]
    _WORKER = (builder, finish)
    pool = multiprocessing.get_context("fork").Pool(procs, initializer=_die_with_parent)
    try:
        pending: list[Any] = []
        queue = iter(batches)
        for batch in queue:
            pending.append(pool.apply_async(_worker_batch, (batch,)))
            if len(pending) >= 2 * procs:
                break
        while pending:
            done = pending.pop(0).get()
            for batch in queue:
                pending.append(pool.apply_async(_worker_batch, (batch,)))
                break
            for latent, result, count in done:
                builder.last_count = count
                yield latent, result, count
    finally:
        pool.terminate()
        pool.join()
        _WORKER = None


def build_records(
    reader: Any,
    latents: list[int],
    cfg: RunConfig,
    tokenizer: Any,
    *,
    examples_dir: Path | None = None,
    **builder_options: Any,
) -> Iterator[tuple[int, LatentRecord | None, int]]:
    """Yield (latent, record or None if skipped, number of activating windows), with progress."""
    latents = list(latents)
    builder = ExampleBuilder(
        cfg, reader, examples_dir, tokenizer=tokenizer, latents=latents, **builder_options
    )
    with Progress(len(latents), f"examples {builder.hookpoint}", "latent") as progress:
        for latent, record, count in builder.build_many(latents):
            progress.update()
            yield latent, record, count
