"""S3 / MinIO access for pipeline artifacts: fetch only the objects a step needs, upload folders.

Credentials and the endpoint come from boto3's standard chain only (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, profiles, IRSA...), never from
parameters, and are never logged. An artifact URI is `s3://bucket/prefix` (`minio://` is read
the same way); anything else is a local path and is read in place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autointerp_full.cache.format import CONFIG_FILE as CACHE_CONFIG
from autointerp_full.cache.format import TOKENS_FILE, shard_ranges
from autointerp_full.errors import MissingExtraError, UserError

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3://", "minio://")
__all__ = ["fetch_cache", "needed_shards", "shard_ranges", "upload_folder"]


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"), without a trailing slash."""
    if not is_remote(uri):
        raise UserError(f"not an s3:// URI: {uri!r}")
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UserError(f"no bucket in URI {uri!r}")
    return bucket, key.strip("/")


def make_client() -> Any:
    """A boto3 S3 client from the standard credential chain.

    A custom endpoint (MinIO, a local test server) gets path-style addressing, since such
    servers rarely resolve bucket sub-domains.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise MissingExtraError("boto3", "s3", "Reading artifacts from S3") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = "path" if endpoint else "auto"
    config = Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def download_objects(uri: str, names: Iterable[str], dest: Path, client: Any = None) -> list[str]:
    """Download `uri/<name>` to `dest/<name>` for each name; return the names fetched.

    A file already at its destination is kept: artifacts are immutable once written, and
    downloads land under a temporary name first, so a present file is a whole one.
    """
    client = client or make_client()
    bucket, prefix = split_uri(uri)
    fetched = []
    for name in names:
        target = Path(dest) / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        try:
            client.download_file(bucket, _join(prefix, name), str(tmp))
        except Exception as exc:  # botocore raises several unrelated types
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot download {uri.rstrip('/')}/{name}: {_short(exc)}") from None
        os.replace(tmp, target)
        fetched.append(name)
    return fetched


def list_objects(uri: str, client: Any = None) -> list[str]:
    """Names (relative to `uri`) of every object under the prefix."""
    client = client or make_client()
    bucket, prefix = split_uri(uri)
    base = f"{prefix}/" if prefix else ""
    names = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            names += [obj["Key"][len(base) :] for obj in page.get("Contents", [])]
    except Exception as exc:
        raise UserError(f"cannot list {uri}: {_short(exc)}") from None
    return sorted(n for n in names if n)


def download_prefix(uri: str, dest: Path, client: Any = None) -> list[str]:
    """Download every object under `uri` into `dest` (for small artifacts)."""
    client = client or make_client()
    return download_objects(uri, list_objects(uri, client), dest, client)


def upload_folder(folder: Path, uri: str, client: Any = None) -> list[str]:
    """Upload every file under `folder` to `uri/<relative path>`; return the names uploaded."""
    client = client or make_client()
    bucket, prefix = split_uri(uri)
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"upload: {folder} is not a folder")
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    for name in names:
        try:
            client.upload_file(str(folder / name), bucket, _join(prefix, name))
        except Exception as exc:
            raise UserError(f"cannot upload {folder / name} to {uri}: {_short(exc)}") from None
    return names


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


# ------------------------------------------------------------------------ caches


def needed_shards(config: dict[str, Any], latent_range: tuple[int, int] | None) -> list[str]:
    """The shard files holding any latent in [start, end); all of them when no range."""
    ranges = shard_ranges(config)
    if latent_range is None:
        return [f for f, _, _ in ranges]
    start, end = latent_range
    return [f for f, a, b in ranges if a < end and start < b]


def fetch_cache(
    uri: str,
    latents_dir: Path,
    latent_range: tuple[int, int] | None = None,
    client: Any = None,
) -> list[str]:
    """Make the cache artifact at `uri` readable as `latents_dir/<hookpoint>/`.

    The artifact holds one folder per hookpoint. From S3 only each hookpoint's config.json,
    tokens and the shards overlapping `latent_range` are downloaded; a local artifact is linked
    in place. Returns the object names downloaded (relative to `uri`).
    """
    import json

    latents_dir = Path(latents_dir)
    latents_dir.mkdir(parents=True, exist_ok=True)
    if not is_remote(uri):
        source = Path(uri)
        # Hidden folders (a build's staging area) hold no finished cache.
        configs = [
            c for c in sorted(source.glob(f"*/{CACHE_CONFIG}")) if not c.parent.name.startswith(".")
        ]
        if not configs:
            raise UserError(f"cache artifact {uri}: no <hookpoint>/config.json in it")
        for config in configs:
            link = latents_dir / config.parent.name
            if not link.exists():
                link.symlink_to(config.parent.resolve(), target_is_directory=True)
        return []

    client = client or make_client()
    # Listing finds the hookpoint folders without knowing their names (a LIST, not GETs).
    config_names = [
        n for n in list_objects(uri, client) if n.count("/") == 1 and n.endswith(f"/{CACHE_CONFIG}")
    ]
    if not config_names:
        raise UserError(f"cache artifact {uri}: no <hookpoint>/config.json in it")
    fetched = download_objects(uri, config_names, latents_dir, client)
    wanted = []
    for name in config_names:
        hookpoint = name.split("/")[0]
        config = json.loads((latents_dir / name).read_text(encoding="utf-8"))
        files = [TOKENS_FILE, *needed_shards(config, latent_range)]
        wanted += [f"{hookpoint}/{f}" for f in files]
    fetched += download_objects(uri, wanted, latents_dir, client)
    log.info(
        "cache %s: fetched %d objects for latents %s", uri, len(fetched), latent_range or "all"
    )
    return fetched


def ensure_local(uri: str, path: str | os.PathLike, scratch: Path, client: Any = None) -> Path:
    """The local folder of an artifact: `path` when it is there (KFP downloaded it, or a local
    run), else a download of every object under `uri` into a folder under `scratch`.

    The KFP launcher copies only the first artifact of a collected list into the pod, so the
    other members of a list arrive here by URI.
    """
    path = Path(path)
    if path.exists() and (path.is_file() or any(path.iterdir())):
        return path
    if not is_remote(uri):
        if Path(uri).exists():
            return Path(uri)
        raise UserError(f"artifact {uri}: not found")
    import hashlib

    target = Path(scratch) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    target.mkdir(parents=True, exist_ok=True)  # an empty artifact has no objects at all
    download_prefix(uri, target, client)
    return target
