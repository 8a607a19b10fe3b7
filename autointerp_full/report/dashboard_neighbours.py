"""What the dashboard computes from the cache and the sparse model: each latent's activation
histogram over the whole cache, and its nearest latents by decoder similarity and by
co-occurrence. Each part is bounded (blocks of latents, a cap on the entries held at once) and
skipped with a note saying why where its input is not at hand (the pipeline's report step has no
cache; a hub sparse model may be unreachable)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full.errors import UserError
from autointerp_full.layout import RunLayout
from autointerp_full.report.dashboard_data import histogram

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

log = logging.getLogger(__name__)

N_NEIGHBOURS = 8
# Co-occurrence holds the token sets of a batch of latents; this caps the entries per batch.
COOCCURRENCE_BATCH_ENTRIES = 20_000_000
# Each batch is one pass over the whole cache; past this many passes co-occurrence is skipped.
COOCCURRENCE_MAX_PASSES = 4

LatentKey = tuple[str, int]
Neighbour = tuple[int, float]


@dataclass
class CacheDerived:
    """Per hookpoint: histograms and neighbour lists by latent, and notes for what was skipped."""

    histograms: dict[LatentKey, dict[str, Any]] = field(default_factory=dict)
    decoder: dict[LatentKey, list[Neighbour]] = field(default_factory=dict)
    cooccurrence: dict[LatentKey, list[Neighbour]] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)  # part -> hookpoint -> why

    def note(self, part: str, hookpoint: str, why: str) -> None:
        self.notes.setdefault(part, {})[hookpoint] = why
        log.info("dashboard: %s for %s skipped: %s", part, hookpoint, why)


def _open_cache(run: RunLayout, hookpoint: str) -> Any | None:
    from autointerp_full.cache.format import CONFIG_FILE

    folder = run.cache(hookpoint)
    if not (folder / CONFIG_FILE).is_file():
        return None
    from autointerp_full.cache.reader import CacheReader

    return CacheReader(folder)


def cache_histograms(reader: Any, hookpoint: str, latents: list[int], out: CacheDerived) -> None:
    """One pass over the cache, a bounded block of latents at a time."""
    for latent, _flat, values in reader.iter_latents(latents):
        hist = histogram(values)
        if hist is not None:
            out.histograms[(hookpoint, latent)] = hist


def cooccurrence(reader: Any, hookpoint: str, latents: list[int], out: CacheDerived) -> None:
    """Top latents by Jaccard similarity of the tokens they fire on, in batches of selected
    latents whose entries fit COOCCURRENCE_BATCH_ENTRIES (each batch: one pass over the cache)."""
    from autointerp_full.examples.neighbours import cooccurrence_neighbours

    counts = reader.firing_counts().numpy()
    batches: list[list[int]] = [[]]
    size = 0
    for latent in latents:
        n = int(counts[latent])
        if batches[-1] and size + n > COOCCURRENCE_BATCH_ENTRIES:
            batches.append([])
            size = 0
        batches[-1].append(latent)
        size += n
    if len(batches) > COOCCURRENCE_MAX_PASSES:
        out.note(
            "cooccurrence",
            hookpoint,
            f"the selected latents fire {int(counts[latents].sum()):,} times in the cache, "
            f"which would take {len(batches)} passes over it (at most "
            f"{COOCCURRENCE_MAX_PASSES})",
        )
        return
    for batch in batches:
        found = cooccurrence_neighbours(reader, batch, reader.ctx_len, k=N_NEIGHBOURS)
        for latent, pairs in found.items():
            out.cooccurrence[(hookpoint, latent)] = pairs


def decoder_neighbours(
    cfg: RunConfig, run: RunLayout, hookpoint: str, latents: list[int], out: CacheDerived
) -> None:
    """Top latents by cosine similarity of decoder rows. Loads the sparse model only from a local
    folder, or where the run folder has the cache (the CLI: the model was loaded to build it)."""
    local = Path(cfg.sparse_model).expanduser().exists()
    if not local and not run.cache(hookpoint).is_dir():
        out.note("decoder", hookpoint, "the sparse model is not available in this step")
        return
    try:
        from autointerp_full.examples.neighbours import similarity_neighbours
        from autointerp_full.sparse import load_run_coder

        weight = load_run_coder(cfg, hookpoint).W_dec.detach()
        found = similarity_neighbours(weight, latents, k=N_NEIGHBOURS)
    except (UserError, OSError, RuntimeError, ValueError) as exc:
        out.note("decoder", hookpoint, f"could not load the sparse model ({exc})")
        return
    for latent, pairs in found.items():
        out.decoder[(hookpoint, latent)] = pairs


def derive(
    cfg: RunConfig, run: RunLayout, keys: list[LatentKey], *, neighbours: bool = True
) -> CacheDerived:
    """Histograms and neighbours for `keys`, per hookpoint, from what the run folder holds."""
    out = CacheDerived()
    by_hookpoint: dict[str, list[int]] = {}
    for hookpoint, latent in keys:
        by_hookpoint.setdefault(hookpoint, []).append(latent)
    for hookpoint, latents in by_hookpoint.items():
        latents = sorted(latents)
        try:
            reader = _open_cache(run, hookpoint)
        except UserError as exc:
            reader = None
            log.warning("dashboard: cache of %s unreadable: %s", hookpoint, exc)
        if reader is None:
            why = "the activation cache is not in this run folder"
            out.note("histogram", hookpoint, why + "; the histogram counts the examples' tokens")
            out.note("cooccurrence", hookpoint, why)
        else:
            with reader:
                in_range = [x for x in latents if x < reader.num_latents]
                cache_histograms(reader, hookpoint, in_range, out)
                if neighbours:
                    cooccurrence(reader, hookpoint, in_range, out)
        if neighbours:
            decoder_neighbours(cfg, run, hookpoint, latents, out)
    return out
