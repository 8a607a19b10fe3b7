"""Neighbour latents: those that co-fire with a latent, or whose encoder/decoder rows point its way.

The lists are cached in <run>/neighbours/<hookpoint>.json, one section per neighbours_type, keyed
by a hash of the inputs, so reruns and other latent ranges reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from autointerp_full.examples.windows import to_numpy
from autointerp_full.io import atomic_write_json, read_json
from autointerp_full.logs import Progress

log = logging.getLogger(__name__)

N_NEIGHBOURS = 10
Neighbours = dict[int, list[tuple[int, float]]]  # latent -> [(neighbour, similarity)], best first


def _merge_topk(
    best_ids: np.ndarray, best_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest of the running best and a new block (rows are selected latents)."""
    all_ids = np.concatenate([best_ids, ids], axis=1)
    all_scores = np.concatenate([best_scores, scores], axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_ids, order, 1), np.take_along_axis(all_scores, order, 1)


def _as_lists(latents: list[int], ids: np.ndarray, scores: np.ndarray) -> Neighbours:
    out: Neighbours = {}
    for j, latent in enumerate(latents):
        out[latent] = [
            (int(i), round(float(s), 6))
            for i, s in zip(ids[j], scores[j], strict=True)
            if i >= 0 and s > 0 and np.isfinite(s)
        ]
    return out


def _token_set(reader: Any, latent: int, ctx_len: int) -> np.ndarray:
    locations, _ = reader.latent(latent)
    locs = to_numpy(locations, np.int64).reshape(-1, 2)
    return np.unique(locs[:, 0] * ctx_len + locs[:, 1])


def cooccurrence_neighbours(
    reader: Any, latents: Iterable[int], ctx_len: int, k: int = N_NEIGHBOURS, chunk: int = 512
) -> Neighbours:
    """Top-k latents by Jaccard similarity of the token sets on which they fire.

    One pass over every latent in the cache; the selected latents' tokens are held in one sorted
    array, so each other latent's overlap with all of them is a few binary searches.
    """
    latents = list(latents)
    n_sel = len(latents)
    if n_sel == 0:
        return {}
    sets = [_token_set(reader, latent, ctx_len) for latent in latents]
    sizes = np.array([len(s) for s in sets], np.float64)
    tokens = np.concatenate(sets)
    owner = np.concatenate([np.full(len(s), j, np.int64) for j, s in enumerate(sets)])
    order = np.argsort(tokens, kind="stable")
    tokens, owner = tokens[order], owner[order]
    where_selected = {latent: j for j, latent in enumerate(latents)}

    counts = to_numpy(reader.firing_counts(), np.int64)
    others = np.flatnonzero(counts > 0)
    best_ids = np.full((n_sel, 0), -1, np.int64)
    best_scores = np.zeros((n_sel, 0), np.float64)
    with Progress(len(others), "co-occurrence", "latent") as progress:
        for begin in range(0, len(others), chunk):
            block_ids = others[begin : begin + chunk]
            block = np.zeros((n_sel, len(block_ids)), np.float64)
            for col, m in enumerate(block_ids.tolist()):
                mine = _token_set(reader, m, ctx_len)
                lo = np.searchsorted(tokens, mine, side="left")
                hi = np.searchsorted(tokens, mine, side="right")
                n_hits = hi - lo
                total = int(n_hits.sum())
                if total:
                    # Indices lo[i]..hi[i]-1 for every token of m, flattened.
                    first = np.repeat(lo - (np.cumsum(n_hits) - n_hits), n_hits)
                    shared = np.bincount(owner[first + np.arange(total)], minlength=n_sel)
                    block[:, col] = shared / (sizes + len(mine) - shared)
                j = where_selected.get(m)
                if j is not None:
                    block[j, col] = 0.0  # a latent is not its own neighbour
            ids = np.broadcast_to(block_ids, block.shape)
            best_ids, best_scores = _merge_topk(best_ids, best_scores, ids, block, k)
            progress.update(len(block_ids))
    return _as_lists(latents, best_ids, best_scores)


def similarity_neighbours(
    weight: Any,
    latents: Iterable[int],
    k: int = N_NEIGHBOURS,
    chunk: int = 256,
    alive: Any = None,
) -> Neighbours:
    """Top-k latents by cosine similarity of rows of `weight` ([num_latents, d]).

    `alive` (bool [num_latents]) restricts neighbours to latents that fire in the cache: a
    neighbour that never fires offers no windows.
    """
    import torch

    latents = list(latents)
    w = torch.as_tensor(to_numpy(weight, np.float32))
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, w.shape[0] - 1)
    dead = None if alive is None else ~torch.as_tensor(to_numpy(alive, bool))
    out: Neighbours = {}
    for begin in range(0, len(latents), chunk):
        part = latents[begin : begin + chunk]
        sims = w[part] @ w.T
        if dead is not None:
            sims[:, dead] = -float("inf")
        sims[torch.arange(len(part)), torch.as_tensor(part)] = -float("inf")
        scores, ids = sims.topk(k, dim=1)
        out.update(_as_lists(part, ids.numpy(), scores.numpy()))
    return out


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts and numpy arrays."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def weight_fingerprint(weight: Any) -> str:
    """Hash of a weight matrix's shape and a strided sample of its values (cheap for big SAEs)."""
    flat = to_numpy(weight, np.float32).reshape(-1)
    step = max(1, len(flat) // 100_000)
    return fingerprint(list(np.shape(weight)), flat[::step])


def cached_neighbours(
    path: Path,
    kind: str,
    key: str,
    latents: list[int],
    compute: Callable[[list[int]], Neighbours],
    overwrite: bool = False,
) -> Neighbours:
    """Neighbour lists for `latents`, computing only those missing from the cache file.

    The file is re-read just before writing and merged, so several workers on different latent
    ranges only ever add to it.
    """

    def load() -> dict[str, Any]:
        if not path.exists():
            return {}
        try:
            return read_json(path)
        except (OSError, ValueError):
            log.warning("neighbour cache %s is unreadable; recomputing", path)
            return {}

    section = load().get(kind, {})
    known: dict[str, Any] = {}
    if not overwrite and section.get("key") == key:
        known = section.get("latents", {})
    missing = [i for i in latents if str(i) not in known]
    if missing:
        log.info("computing %s neighbours for %d latents", kind, len(missing))
        fresh = {str(i): [list(p) for p in v] for i, v in compute(missing).items()}
        data = load()
        old = data.get(kind, {})
        merged = dict(old.get("latents", {})) if old.get("key") == key else {}
        merged.update(known)
        merged.update(fresh)
        data[kind] = {"key": key, "latents": merged}
        atomic_write_json(path, data)
        known = merged
    return {i: [(int(m), float(s)) for m, s in known[str(i)]] for i in latents}
