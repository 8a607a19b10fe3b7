"""The cache key, and whether an existing cache folder can be reused. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..logs import log
from .format import CONFIG_FILE, FORMAT_VERSION, read_cache_config, verify_cache

if TYPE_CHECKING:
    from ..config import RunConfig

# The key field holding a hash of the sparse model's files (its cfg and tensor headers), so
# that a sparse model retrained and saved to the same path is noticed.
FINGERPRINT_FIELD = "sparse_model_fingerprint"


def sparse_fingerprint(cfg: RunConfig, hookpoint: str) -> str:
    from ..sparse_inspect import sparse_fingerprint as fingerprint

    return fingerprint(cfg.sparse_model, hookpoint, cfg.token)


def cache_key(cfg: RunConfig, hookpoint: str) -> dict[str, Any]:
    """The fields that decide a hookpoint's cache content."""
    from ..config import CACHE_KEY_FIELDS

    key = {name: getattr(cfg, name) for name in CACHE_KEY_FIELDS}
    key["hookpoint"] = hookpoint
    key[FINGERPRINT_FIELD] = sparse_fingerprint(cfg, hookpoint)
    return key


def key_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key field whose value differs (name, old, new), or None when they match."""
    for name, value in new.items():
        if old.get(name, "<missing>") != value:
            return name, old.get(name, "<missing>"), value
    return None


def reuse_reason(folder: Path, key: dict[str, Any], overwrite: bool) -> str | None:
    """None when the complete cache in `folder` is reused, else why it is (re)built.

    A cache whose key and format match is verified first (headers and sizes): a corrupt one
    raises UserError naming the file, so it is never used, and is rebuilt only on request.
    """
    folder = Path(folder)
    if not (folder / CONFIG_FILE).exists():
        return "no complete cache"
    if overwrite:
        return "--overwrite cache"
    old = read_cache_config(folder)  # unreadable: CacheFileError
    if old.get("format") != FORMAT_VERSION:
        return f"cache format changed from {old.get('format')!r} to {FORMAT_VERSION}"
    diff = key_difference(old, key)
    if diff is not None:
        name, was, now = diff
        return f"{name} changed from {was!r} to {now!r}"
    verify_cache(folder)
    return None


def reusable(folder: Path, key: dict[str, Any], overwrite: bool) -> bool:
    """reuse_reason, logged."""
    why = reuse_reason(folder, key, overwrite)
    if why is None:
        log.info("reusing cache %s", folder)
    elif why != "no complete cache":
        log.info("recomputing cache %s: %s", folder, why)
    return why is None
