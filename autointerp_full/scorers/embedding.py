"""Embedding: is the explanation semantically closer to the activating examples than to the
non-activating ones? Cosine similarity in a sentence-embedding space, summarised as an AUC."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.base import Scorer, example_text, separation_metrics

if TYPE_CHECKING:
    from autointerp_full.examples.types import LatentRecord


def get_embedder(name: str, device: str) -> Any:
    """The shared embedder (load_embedder caches it per process); "auto" picks CUDA if present."""
    from autointerp_full.embeddings import load_embedder

    if device == "auto":
        from autointerp_full.models import resolve_device

        device = resolve_device(device)
    return load_embedder(name, device)


class EmbeddingScorer(Scorer):
    name = "embedding"

    async def _score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        chosen = [(e, True) for e in record.test] + [(e, False) for e in record.non_activating]
        texts = [example_text(e) for e, _ in chosen]
        similarities = await asyncio.to_thread(self._similarities, explanation or "", texts)
        records = [
            {
                "text": text,
                "activating": activating,
                "quantile": example.quantile,
                "prediction": sim,
            }
            for (example, activating), text, sim in zip(chosen, texts, similarities, strict=True)
        ]
        metrics = separation_metrics(records, "similarity")
        return records, metrics, None

    def _similarities(self, explanation: str, texts: list[str]) -> list[float]:
        embedder = get_embedder(self.cfg.faiss_embedding_model, self.cfg.device)
        vectors = embedder.encode([explanation, *texts])
        # Rows are L2-normalised, so the dot product is the cosine similarity.
        return [float(v) for v in vectors[1:] @ vectors[0]]
