"""FAISS hard negatives: non-activating windows whose text is semantically closest to the latent's
activating windows.

A pool of random aligned windows is drawn once per hookpoint (from the seed), embedded once and
cached on disk as .npy keyed by a hash of the embedding model and the pool's tokens. For each
latent, the pool windows where it fires are dropped, and the rest are ranked by their best inner
product with any activating window.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autointerp_full.errors import MissingExtraError
from autointerp_full.examples.neighbours import fingerprint
from autointerp_full.examples.non_activating import RandomSource, Window
from autointerp_full.examples.samplers import latent_rng
from autointerp_full.examples.windows import LatentActivations
from autointerp_full.logs import Progress

log = logging.getLogger(__name__)


def build_index(vectors: np.ndarray) -> Any:
    """An exact inner-product index; on the GPU when faiss has GPU support and a GPU is up."""
    if importlib.util.find_spec("faiss") is None:
        raise MissingExtraError("faiss-cpu", "faiss", "--non_activating_source FAISS")
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


class FaissSource:
    name = "FAISS"

    def __init__(
        self,
        tokens: np.ndarray,
        length: int,
        embedder: Any,
        texts_of: Callable[[np.ndarray], str],
        cache_dir: Path | None,
        hookpoint: str,
        seed: int,
        pool_size: int,
        overwrite: bool = False,
    ) -> None:
        n_rows, ctx = tokens.shape
        n_blocks = ctx // length
        self.length = length
        self.embedder = embedder
        self.fallback = RandomSource(n_rows, length)
        rng = latent_rng(seed, hookpoint, -1, "faiss-pool")
        total = n_rows * n_blocks
        keys = np.sort(rng.choice(total, size=min(pool_size, total), replace=False))
        self.rows, self.starts = keys // n_blocks, (keys % n_blocks) * length
        # int32 whatever the stored dtype, so the embeddings' key stays the same.
        pool_tokens = np.stack(
            [tokens[r, s : s + length] for r, s in zip(self.rows, self.starts, strict=True)]
        ).astype(np.int32)
        self.vectors = self._embeddings(pool_tokens, texts_of, cache_dir, hookpoint, overwrite)
        self.index = build_index(self.vectors)

    def _embeddings(
        self,
        pool_tokens: np.ndarray,
        texts_of: Callable[[np.ndarray], str],
        cache_dir: Path | None,
        hookpoint: str,
        overwrite: bool,
    ) -> np.ndarray:
        key = fingerprint(getattr(self.embedder, "name", repr(self.embedder)), pool_tokens)
        path = Path(cache_dir) / f"{hookpoint}.faiss.{key}.npy" if cache_dir else None
        if path is not None and path.exists() and not overwrite:
            vectors = np.load(path)
            if vectors.shape[0] == len(pool_tokens):
                log.info("reusing FAISS pool embeddings %s", path)
                return vectors
        texts = [texts_of(t) for t in pool_tokens]
        chunks = []
        with Progress(len(texts), "FAISS pool embeddings", "window") as progress:
            for begin in range(0, len(texts), 256):
                chunks.append(self.embedder.encode(texts[begin : begin + 256]))
                progress.update(len(chunks[-1]))
        vectors = np.concatenate(chunks).astype(np.float32)
        if path is not None:
            from autointerp_full.io import atomic_write

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as fh:  # a handle: np.save would append .npy to a name
                    np.save(fh, vectors)

            atomic_write(path, write)
        return vectors

    def select(
        self,
        acts: LatentActivations,
        n: int,
        rng: np.random.Generator,
        *,
        latent: int = -1,
        activating_texts: list[str],
    ) -> list[Window]:
        if n <= 0:
            return []
        free = ~acts.active(self.rows, self.starts, self.length)
        out: list[Window] = []
        if activating_texts and free.any():
            queries = self.embedder.encode(activating_texts)
            k = min(len(self.rows), n + int((~free).sum()) + 8)
            sims, ids = self.index.search(queries, k)
            best = np.full(len(self.rows), -np.inf)
            for row_sims, row_ids in zip(sims, ids, strict=True):
                valid = row_ids >= 0
                np.maximum.at(best, row_ids[valid], row_sims[valid])
            best[~free] = -np.inf
            order = np.argsort(-best, kind="stable")
            out = [
                (int(self.rows[i]), int(self.starts[i])) for i in order[:n] if np.isfinite(best[i])
            ]
        if len(out) < n:
            out += self.fallback.select(acts, n - len(out), rng, exclude=out)
        return out
