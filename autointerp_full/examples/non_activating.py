"""Sources of non-activating windows: windows where the latent is zero throughout.

Every source returns (row, start) pairs; the caller turns them into Examples. A source that
cannot find enough hard negatives tops up with random ones, so the count is always met when the
cache has room.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from autointerp_full.examples import neighbours as nb
from autointerp_full.examples.decode import as_decoder
from autointerp_full.examples.neighbours import Neighbours
from autointerp_full.examples.windows import (
    LatentActivations,
    activating_windows,
    inactive_blocks,
    to_numpy,
)

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

Window = tuple[int, int]
FAISS_POOL_MIN = 2000  # candidate windows embedded per hookpoint for FAISS hard negatives


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
        if n <= 0:
            return []
        n_blocks = acts.ctx_len // self.length
        total = self.n_rows * n_blocks
        taken = {(int(r), int(s)) for r, s in exclude or ()}
        # A random ordering of all blocks, filtered, is a uniform draw from the free ones: look
        # at a prefix a few times longer than needed, and enumerate every block only when it
        # is too short (a latent that fires almost everywhere).
        drawn = min(total, 4 * (n + len(taken)) + 64)
        blocks = rng.choice(total, size=drawn, replace=False) if drawn < total else None
        if blocks is not None:
            rows, starts = blocks // n_blocks, (blocks % n_blocks) * self.length
            free = ~acts.active(rows, starts, self.length)
            picked = _without(rows[free], starts[free], taken)
            if len(picked) >= n:
                return picked[:n]
        rows, starts = inactive_blocks(acts, self.n_rows, self.length)
        free_blocks = _without(rows, starts, taken)
        if not free_blocks:
            return []
        pick = rng.choice(len(free_blocks), size=min(n, len(free_blocks)), replace=False)
        return [free_blocks[i] for i in pick.tolist()]


def _without(rows: np.ndarray, starts: np.ndarray, taken: set[Window]) -> list[Window]:
    pairs = list(zip(rows.tolist(), starts.tolist(), strict=True))
    return [p for p in pairs if p not in taken] if taken else pairs


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


# ------------------------------------------------------------------------- choosing one
def hookpoint_of(reader: Any) -> str:
    return str(getattr(reader, "hookpoint", None) or reader.config["hookpoint"])


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
    hookpoint = hookpoint_of(reader)
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
        decoder = as_decoder(tokenizer)
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
