"""The activation cache: `build_cache` writes it while the model runs, `CacheReader` reads one
latent at a time, `verify_cache` checks a finished one cheaply. Layout: format.py and
docs/ARCHITECTURE.md, "Cache shard format"."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .format import verify_cache
from .reader import CacheReader
from .writer import build_cache, reused_hookpoints

__all__ = [
    "CacheReader",
    "build_cache",
    "cache_is_complete",
    "reused_hookpoints",
    "verify_cache",
]


def cache_is_complete(path: str | Path) -> bool:
    """True when `path` holds a finished cache that passes verify_cache."""
    try:
        verify_cache(Path(path))
    except UserError:
        return False
    return True
