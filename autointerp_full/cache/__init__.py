"""The activation cache: `build_cache` writes it while the model runs, `CacheReader` reads one
latent at a time. Layout: docs/ARCHITECTURE.md, "Cache shard format"."""

from __future__ import annotations

from pathlib import Path

from .reader import CacheReader
from .writer import build_cache

__all__ = ["CacheReader", "build_cache", "cache_is_complete"]


def cache_is_complete(path: str | Path) -> bool:
    """True when `path` holds a finished cache: config.json plus every file it names."""
    import json

    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = [s.get("file", "") for s in config.get("shards", [])]
    if not files:
        return False
    return all((folder / f).is_file() for f in [*files, "tokens.safetensors"])
