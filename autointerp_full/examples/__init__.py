"""Example windows for each latent: quantile-sampled activating windows (train and test) and
non-activating windows from a chosen source (random, neighbours or FAISS).

Every random choice comes from a generator seeded by (seed, hookpoint, latent), so a latent's
examples do not depend on which other latents are processed, or in what order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from autointerp_full.config import RunConfig
from autointerp_full.examples.non_activating import (
    NeighboursSource,
    NonActivatingSource,
    RandomSource,
)
from autointerp_full.examples.samplers import latent_rng, sample_train_test
from autointerp_full.examples.types import NON_ACTIVATING, Example, LatentRecord
from autointerp_full.examples.windows import LatentActivations, activating_windows, to_numpy
from autointerp_full.layout import neighbours_dir, select_latents
from autointerp_full.logs import Progress

log = logging.getLogger(__name__)

FAISS_POOL_MIN = 2000  # candidate windows embedded per hookpoint for FAISS hard negatives
# Cache entries read at once when latents are built in order (about 60 MB as read).
BLOCK_ENTRIES = 4_000_000
# Latents per batch handed to a worker process, and the fewest latents per worker worth a fork.
BATCH_LATENTS = 64
PARALLEL_MIN_LATENTS = 16

__all__ = [
    "Example",
    "ExampleBuilder",
    "LatentRecord",
    "TokenDecoder",
    "build_latent_record",
    "build_records",
    "load_tokenizer",
    "make_non_activating_source",
]


class TokenDecoder:
    """Readable text per token id (byte-level markers such as 'Ġ' resolved), memoised per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        text = self._memo.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            # SentencePiece drops a word's leading space when a token is decoded alone.
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
                text = " " + text
            self._memo[token_id] = text
        return text

    def str_tokens(self, ids: Any) -> list[str]:
        memo = self._memo
        return [memo[i] if i in memo else self.token(i) for i in map(int, ids)]

    def prefill(self, ids: Any) -> None:
        """Decode these ids now (e.g. every id in the cache, once, before forking workers)."""
        for i in ids:
            self.token(int(i))

    def text(self, ids: Any) -> str:
        return "".join(self.str_tokens(ids))


def load_tokenizer(name: str, token: str | None = None) -> Any:
    """The tokenizer of a hub id, a local model folder, or a local .gguf file."""
    from transformers import AutoTokenizer

    from autointerp_full.errors import UserError

    path = Path(name).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(name, token=token)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--model: cannot load the tokenizer of {name!r}: {first}") from None


def _decoder(tokenizer: Any) -> TokenDecoder:
    return tokenizer if isinstance(tokenizer, TokenDecoder) else TokenDecoder(tokenizer)


def _example(
    tokens: np.ndarray,
    acts: LatentActivations,
    decoder: TokenDecoder,
    row: int,
    start: int,
    length: int,
    quantile: int,
) -> Example:
    ids = tokens[row, start : start + length].tolist()
    return Example(
        tokens=ids,
        str_tokens=decoder.str_tokens(ids),
        # Most of a window is zero; round() only the rest (round(0.0, 4) is 0.0).
        activations=[
            round(a, 4) if a else 0.0 for a in acts.window_activations(row, start, length).tolist()
        ],
        quantile=quantile,
    )


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
) -> tuple[LatentRecord | None, int]:
    """(record or None when too few activating windows, number of activating windows);
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

    def activating(picks: list[tuple[int, int]]) -> list[Example]:
        return [
            _example(tokens, acts, decoder, int(windows.rows[i]), int(windows.starts[i]), length, q)
            for i, q in picks
        ]

    train, test = activating(train_picks), activating(test_picks)
    non_activating: list[Example] = []
    # The contrastive explainer gets windows of its own, drawn beside the scored ones.
    n_contrast = len(train) if cfg.effective_explainer == "contrastive" else 0
    if source is not None and cfg.n_non_activating + n_contrast > 0:
        chosen = source.select(
            acts,
            cfg.n_non_activating + n_contrast,
            negatives_rng,
            latent=latent,
            activating_texts=[e.text for e in train + test],
        )
        non_activating = [
            _example(tokens, acts, decoder, r, s, length, NON_ACTIVATING) for r, s in chosen
        ]
    contrast = non_activating[cfg.n_non_activating :]
    non_activating = non_activating[: cfg.n_non_activating]
    record = LatentRecord(
        hookpoint=hookpoint,
        latent=latent,
        n_activating=len(windows),
        firing_rate=len(acts) / float(n_rows * ctx),
        max_activation=acts.max_activation,
        train=train,
        test=test,
        non_activating=non_activating,
        contrast=contrast,
    )
    return record, len(windows)


def read_activations(reader: Any, latent: int, ctx: int) -> LatentActivations:
    """One latent's activations from a CacheReader (its flat slice) or any reader with
    `latent(i)` -> (locations, activations)."""
    if hasattr(reader, "latent_flat"):
        return LatentActivations.from_flat(*reader.latent_flat(latent), ctx)
    return LatentActivations(*reader.latent(latent), ctx)


def _hookpoint_of(reader: Any) -> str:
    return str(getattr(reader, "hookpoint", None) or reader.config["hookpoint"])


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
    hookpoint = _hookpoint_of(reader)
    tokens = to_numpy(reader.tokens()) if tokens is None else tokens
    rng = rng if rng is not None else latent_rng(cfg.seed, hookpoint, latent)
    record, _ = _build(
        reader, latent, cfg, _decoder(tokenizer), tokens, hookpoint, rng, non_activating_source
    )
    return record


def _cuda_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _sparse_weight(cfg: RunConfig, hookpoint: str, sparse_coder: Any, kind: str) -> Any:
    if sparse_coder is None:
        from autointerp_full.sparse import load_run_coder

        sparse_coder = load_run_coder(cfg, hookpoint)  # the random control's, when it is one
    return sparse_coder.W_dec if kind == "decoder_similarity" else sparse_coder.W_enc


def make_non_activating_source(
    cfg: RunConfig,
    reader: Any,
    tokens: np.ndarray,
    tokenizer: Any,
    *,
    latents: list[int],
    cache_dir: Path | None,
    sparse_coder: Any = None,
    embedder: Any = None,
    faiss_pool_size: int | None = None,
) -> NonActivatingSource:
    """The source named by cfg.non_activating_source, with neighbour lists or FAISS pool
    embeddings loaded from `cache_dir` (normally <run>/neighbours/) or computed and stored there."""
    from autointerp_full.examples import neighbours as nb

    hookpoint = _hookpoint_of(reader)
    n_rows, ctx = tokens.shape
    length = min(cfg.example_ctx_len, ctx)
    overwrite = "neighbours" in cfg.overwrite
    if cfg.non_activating_source == "random":
        return RandomSource(n_rows, length)
    if cfg.non_activating_source == "neighbours":
        kind = cfg.neighbours_type
        if kind == "co-occurrence":
            key = nb.fingerprint(kind, reader.config)

            def compute(todo: list[int]) -> nb.Neighbours:
                return nb.cooccurrence_neighbours(reader, todo, ctx)
        else:
            weight = _sparse_weight(cfg, hookpoint, sparse_coder, kind)
            key = nb.fingerprint(kind, nb.weight_fingerprint(weight), reader.config)
            alive = to_numpy(reader.firing_counts()) > 0

            def compute(todo: list[int]) -> nb.Neighbours:
                return nb.similarity_neighbours(weight, todo, alive=alive)

        if cache_dir is None:
            lists = compute(list(latents))
        else:
            path = Path(cache_dir) / f"{hookpoint}.json"
            lists = nb.cached_neighbours(path, kind, key, list(latents), compute, overwrite)
        return NeighboursSource(reader, lists, n_rows, ctx, length, cfg.center_examples)
    if cfg.non_activating_source == "FAISS":
        from autointerp_full.embeddings import load_embedder
        from autointerp_full.examples.faiss_source import FaissSource

        if embedder is None:
            embedder = load_embedder(cfg.faiss_embedding_model, _cuda_device())
        decoder = _decoder(tokenizer)
        return FaissSource(
            tokens,
            length,
            embedder,
            decoder.text,
            cache_dir,
            hookpoint,
            cfg.seed,
            faiss_pool_size or max(FAISS_POOL_MIN, 20 * cfg.n_non_activating),
            overwrite,
        )
    from autointerp_full.errors import UserError

    raise UserError(f"--non_activating_source: unknown source {cfg.non_activating_source!r}")


class ExampleBuilder:
    """Builds records for one hookpoint's cache, one latent at a time (what examples_stage uses).

    The tokenizer is the cache's model's (else --model's); the non-activating source is set
    up on the first build, for `latents` (default: the run's selected latents), and its neighbour
    lists / embeddings are cached in <examples_dir>/../neighbours/.
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
        self.hookpoint = _hookpoint_of(reader)
        self.tokens = to_numpy(reader.tokens())
        if tokenizer is None:
            # The model that built the cache (a .gguf path keeps its file name there).
            config = getattr(reader, "config", {}) or {}
            tokenizer = load_tokenizer(str(config.get("model") or cfg.model), cfg.token)
        self.decoder = _decoder(tokenizer)
        self.latents = latents
        self.cache_dir = neighbours_dir(Path(examples_dir)) if examples_dir else None
        self._extras = {
            "sparse_coder": sparse_coder,
            "embedder": embedder,
            "faiss_pool_size": faiss_pool_size,
        }
        self._source: NonActivatingSource | None = None
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
        rng = latent_rng(self.cfg.seed, self.hookpoint, latent)
        source = self.source if self.cfg.n_non_activating > 0 else None
        acts = self._activations(latent)
        record, self.last_count = _build(
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
        return record

    def build_many(self, latents: list[int]) -> Iterator[tuple[int, LatentRecord | None, int]]:
        """(latent, record or None, activating windows) for `latents`, in their order.

        With cfg.pipeline_num_proc > 1 (and a source that is safe to fork), contiguous batches
        of latents are built in forked worker processes, at most two batches per worker in
        flight, so memory stays bounded; every latent's record is the one build() gives.
        """
        latents = list(latents)
        procs = min(self.cfg.pipeline_num_proc, max(1, len(latents) // PARALLEL_MIN_LATENTS))
        if procs <= 1 or self.cfg.non_activating_source == "FAISS" or not _can_fork():
            self._plan(latents)
            for latent in latents:
                record = self.build(latent)
                yield latent, record, self.last_count
            return
        yield from _build_forked(self, latents, procs)

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


_WORKER: ExampleBuilder | None = None  # the builder a forked worker inherited


def _build_batch(latents: list[int]) -> list[tuple[int, dict[str, Any] | None, int]]:
    """In a worker: build a batch of latents (records as dicts, which pickle cheaply)."""
    builder = _WORKER
    assert builder is not None
    builder._plan(latents)
    out = []
    for latent in latents:
        record = builder.build(latent)
        out.append((latent, None if record is None else record.to_dict(), builder.last_count))
    return out


def _build_forked(
    builder: ExampleBuilder, latents: list[int], procs: int
) -> Iterator[tuple[int, LatentRecord | None, int]]:
    import multiprocessing

    global _WORKER
    if builder.cfg.n_non_activating > 0:
        builder.source  # noqa: B018 -- set up (neighbour lists) once, before forking
    builder.decoder.prefill(np.unique(builder.tokens))
    size = max(1, min(BATCH_LATENTS, -(-len(latents) // (4 * procs))))
    batches = [latents[i : i + size] for i in range(0, len(latents), size)]
    _WORKER = builder
    pool = multiprocessing.get_context("fork").Pool(procs)
    try:
        pending: list[Any] = []
        queue = iter(batches)
        for batch in queue:
            pending.append(pool.apply_async(_build_batch, (batch,)))
            if len(pending) >= 2 * procs:
                break
        while pending:
            done = pending.pop(0).get()
            for batch in queue:
                pending.append(pool.apply_async(_build_batch, (batch,)))
                break
            for latent, data, count in done:
                builder.last_count = count
                yield latent, None if data is None else LatentRecord.from_dict(data), count
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
