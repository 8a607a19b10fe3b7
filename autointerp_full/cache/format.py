"""The activation cache on disk: file names, shard bounds, the safetensors header, and checks.

Torch-free, so that the S3 code, the schema checks and the preflight can use it cheaply. Every
other module names cache files through this one. Layout of `latents/<hookpoint>/`
(docs/ARCHITECTURE.md, "Cache shard format"):

- `tokens.safetensors`: "tokens" [n_seqs, ctx_len] in the smallest integer type that holds the
  vocabulary (uint8, uint16 or int32; `token_code`);
- `shard_<i>.safetensors`: latents [start, end) with start = i * ceil(L / n_splits), holding
  "offsets" int64 [end - start + 1] (latent start + j's entries are [offsets[j], offsets[j+1])),
  "index" [n], each entry's flat token index row * ctx_len + position, and "activations"
  float16 [n], sorted by (latent, index); metadata {"start", "end"}. The index is uint32 while
  the cache holds at most 2^32 tokens (6 bytes per non-zero), int64 beyond (10 bytes;
  `index_code`), so no size overflows;
- `config.json`: the cache key, the shapes and `shards` [{"file", "start", "end", "n"}],
  written last, so that its presence marks a complete cache.

A build happens in `latents/.staging/<hookpoint>/` (the same files plus the resume manifest and
chunk files) and is renamed into place once complete.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError

# 1: int32 latent + int32 (row, position) + fp16 = 14 bytes per non-zero, int32 tokens.
# 2: the latent implied by offsets, one flat index, fp16 = 6 bytes per non-zero; small tokens.
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
TOKENS_FILE = "tokens.safetensors"
# Build state inside a staging folder: the manifest records how far the build got.
MANIFEST = "manifest.json"
STAGING_DIR = ".staging"
OLD_SUFFIX = ".old"
SHARD_GLOB = "shard_*.safetensors"
CHUNK_GLOB = "chunk_*.safetensors"

# safetensors dtype codes of the cache's tensors, and their item sizes.
ITEM_BYTES = {"U8": 1, "U16": 2, "U32": 4, "I32": 4, "I64": 8, "F16": 2}
NUMPY_DTYPES = {
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "I32": "int32",
    "I64": "int64",
    "F16": "float16",
}
# A cache of at most this many tokens stores each entry's flat token index as uint32.
U32_TOKENS = 2**32
# The shard tensors in file order; "index" takes index_code(n_tokens), the others are fixed.
SHARD_TENSORS = ("offsets", "index", "activations")
_FIXED_CODES = {"offsets": "I64", "activations": "F16"}
TOKEN_CODES = ("U8", "U16", "I32")
# A fan-out range step's part of a cache records its token rows [lo, hi) in the key field
# RANGE_FIELD and the whole cache's row count in RANGE_TOTAL_FIELD (docs/KUBEFLOW.md).
RANGE_FIELD = "rows"
RANGE_TOTAL_FIELD = "n_seqs_total"
FIX = "rerun with --overwrite cache to rebuild it"


# --------------------------------------------------------------------------- names and bounds
def shard_name(i: int) -> str:
    return f"shard_{i}.safetensors"


def chunk_name(chunk: int, shard: int) -> str:
    return f"chunk_{chunk:06d}_shard_{shard}.safetensors"


def chunk_index(name: str) -> int:
    """The chunk number in a chunk file's name."""
    return int(name.split("_")[1])


def staging_folder(latents_dir: Path, hookpoint: str) -> Path:
    """Where the cache of `hookpoint` is built before it replaces `latents_dir/<hookpoint>/`."""
    return Path(latents_dir) / STAGING_DIR / hookpoint


def retired_folder(latents_dir: Path, hookpoint: str) -> Path:
    """Where a replaced cache waits, for the instant of the swap, before it is removed."""
    return Path(latents_dir) / STAGING_DIR / f"{hookpoint}{OLD_SUFFIX}"


def shard_bounds(num_latents: int, n_splits: int) -> list[tuple[int, int]]:
    """[start, end) of each shard: start_i = i * ceil(L / n_splits); empty shards are dropped."""
    step = math.ceil(num_latents / n_splits)
    bounds = []
    for i in range(n_splits):
        start, end = i * step, min((i + 1) * step, num_latents)
        if start < end:
            bounds.append((start, end))
    return bounds


def shard_ranges(config: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(file, start, end) of each shard listed by a cache's config.json.

    `shards` is the list the writer records, or a bare shard count (the ranges then follow
    shard_bounds).
    """
    shards = config["shards"]
    if isinstance(shards, list):
        return [(s["file"], int(s["start"]), int(s["end"])) for s in shards]
    bounds = shard_bounds(int(config["num_latents"]), int(shards))
    return [(shard_name(i), start, end) for i, (start, end) in enumerate(bounds)]


def index_code(n_tokens: int) -> str:
    """The dtype of the flat token index for a cache of `n_tokens` tokens (n_seqs * ctx_len)."""
    return "U32" if n_tokens <= U32_TOKENS else "I64"


def token_code(vocab_size: int) -> str:
    """The smallest dtype holding token ids [0, vocab_size)."""
    if vocab_size <= 2**8:
        return "U8"
    if vocab_size <= 2**16:
        return "U16"
    return "I32"


def shard_layout(n: int, width: int, n_tokens: int) -> list[tuple[str, str, list[int], int]]:
    """(name, dtype code, shape, bytes) of a shard's tensors in file order, for a shard of `n`
    entries over `width` latents in a cache of `n_tokens` tokens."""
    layout = []
    for name in SHARD_TENSORS:
        code = index_code(n_tokens) if name == "index" else _FIXED_CODES[name]
        shape = [width + 1 if name == "offsets" else n]
        layout.append((name, code, shape, ITEM_BYTES[code] * shape[0]))
    return layout


def shard_metadata(start: int, end: int) -> dict[str, str]:
    return {"start": str(start), "end": str(end)}


# --------------------------------------------------------------------------- the header
def encode_header(
    entries: Iterable[tuple[str, str, list[int], int]], metadata: dict[str, str]
) -> bytes:
    """A safetensors header for tensors laid out back to back in the given order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    pos = 0
    for name, code, shape, nbytes in entries:
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # keep the data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header and where its data starts; CacheFileError when unreadable."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CacheFileError(path, "is truncated (no safetensors header)")
            (size,) = struct.unpack("<Q", raw)
            if size > os.fstat(fh.fileno()).st_size - 8:
                raise CacheFileError(path, f"is truncated (header of {size} bytes announced)")
            text = fh.read(size)
    except FileNotFoundError:
        raise CacheFileError(path, "is missing") from None
    except OSError as exc:
        raise CacheFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise CacheFileError(path, "has a corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CacheFileError(path, "has a corrupt safetensors header (not an object)")
    return header, 8 + size


def shard_entries(path: Path) -> int:
    """The number of entries (non-zeros) a shard file holds, from its header."""
    header, _ = read_header(path)
    return int(header["activations"]["shape"][0])


# --------------------------------------------------------------------------- checks
class CacheFileError(UserError):
    """One file of a cache is missing or inconsistent; the message names it and the fix."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path} {problem}; {FIX}")


def _check_tensors(path: Path, expected: dict[str, tuple[str, list[int]]], header=None) -> None:
    """The header holds exactly `expected` (name -> (dtype, shape)), packed back to back, and the
    file ends where the data does. Reads the header only."""
    header, data_start = header or read_header(path)
    spans = []
    for name, (code, shape) in expected.items():
        info = header.get(name)
        if not isinstance(info, dict):
            raise CacheFileError(path, f"has no tensor {name!r}")
        if info.get("dtype") != code or info.get("shape") != shape:
            raise CacheFileError(
                path,
                f"holds {name!r} as {info.get('dtype')} {info.get('shape')} "
                f"(expected {code} {shape})",
            )
        span = info.get("data_offsets")
        nbytes = ITEM_BYTES[code] * math.prod(shape)
        if not (
            isinstance(span, list)
            and len(span) == 2
            and all(isinstance(x, int) for x in span)
            and span[1] - span[0] == nbytes
        ):
            raise CacheFileError(path, f"has inconsistent data offsets for {name!r}")
        spans.append((span[0], span[1]))
    extra = sorted(set(header) - set(expected) - {"__metadata__"})
    if extra:
        raise CacheFileError(path, f"holds unexpected tensors {', '.join(extra)}")
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise CacheFileError(path, "has overlapping or gapped tensor data offsets")
        pos = end
    expected_size, size = data_start + pos, path.stat().st_size
    if size < expected_size:
        raise CacheFileError(path, f"is truncated (expected {expected_size} bytes, found {size})")
    if size > expected_size:
        raise CacheFileError(
            path, f"has trailing bytes (expected {expected_size} bytes, found {size})"
        )


def check_tokens_file(path: Path, n_seqs: int, ctx_len: int, code: str | None = None) -> None:
    """`tokens.safetensors` holds [n_seqs, ctx_len] token ids as `code` (any of TOKEN_CODES
    when None) and is whole."""
    path = Path(path)
    header = read_header(path)
    if code is None:
        found = (header[0].get("tokens") or {}).get("dtype")
        code = found if found in TOKEN_CODES else TOKEN_CODES[-1]
    _check_tensors(path, {"tokens": (code, [n_seqs, ctx_len])}, header)


def check_shard_file(path: Path, start: int, end: int, n_tokens: int, n: int | None = None) -> None:
    """A shard file of a cache of `n_tokens` tokens holds latents [start, end) with `n`
    entries (any n when None) and is whole."""
    path = Path(path)
    header, data_start = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta != shard_metadata(start, end):
        raise CacheFileError(
            path,
            f"covers latents {meta.get('start')}..{meta.get('end')} (expected {start}..{end})",
        )
    if n is None:
        shape = (header.get("activations") or {}).get("shape") or [0]
        n = shape[0] if isinstance(shape[0], int) else 0
    layout = shard_layout(n, end - start, n_tokens)
    expected = {name: (code, shape) for name, code, shape, _ in layout}
    _check_tensors(path, expected, (header, data_start))


def read_cache_config(folder: Path) -> dict[str, Any]:
    """config.json of a cache folder; CacheFileError when missing or unreadable."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheFileError(path, "is missing (the cache is incomplete)") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise CacheFileError(path, "is not readable JSON") from None
    if not isinstance(config, dict):
        raise CacheFileError(path, "is not a JSON object")
    return config


def verify_cache(folder: Path) -> None:
    """Check a complete cache's files against its config.json, reading headers and sizes only.

    Raises UserError (one line naming the file, what is wrong and the fix) on the first
    problem: a missing or unreadable config.json, another format version, shards that do not
    tile the latents, a missing, truncated or inconsistent shard or tokens file.
    """
    folder = Path(folder)
    config = read_cache_config(folder)
    config_path = folder / CONFIG_FILE
    version = config.get("format")
    if version != FORMAT_VERSION:
        raise CacheFileError(
            config_path, f"is in cache format {version!r} (this version reads {FORMAT_VERSION})"
        )
    try:
        num_latents = int(config["num_latents"])
        n_seqs, ctx_len = int(config["n_seqs"]), int(config["ctx_len"])
        shards = [
            (str(s["file"]), int(s["start"]), int(s["end"]), int(s["n"])) for s in config["shards"]
        ]
    except (KeyError, TypeError, ValueError):
        raise CacheFileError(config_path, "lacks num_latents, n_seqs, ctx_len or shards") from None
    expected = 0
    for file, start, end, _ in shards:
        if start != expected or end <= start or "/" in file or "\\" in file:
            raise CacheFileError(
                config_path,
                f"lists {file} for latents {start}..{end}, not a tiling from {expected}",
            )
        expected = end
    if expected != num_latents or not shards:
        raise CacheFileError(
            config_path, f"has shards covering {expected} of {num_latents} latents"
        )
    check_tokens_file(folder / TOKENS_FILE, n_seqs, ctx_len, config_token_code(config))
    for file, start, end, n in shards:
        check_shard_file(folder / file, start, end, config_index_tokens(config), n)


def config_index_tokens(config: dict[str, Any]) -> int:
    """The token count that sets a cache's index dtype: the whole cache's, also for a
    fan-out range step's part (which records it as n_seqs_total)."""
    n_seqs = int(config.get(RANGE_TOTAL_FIELD, config["n_seqs"]))
    return n_seqs * int(config["ctx_len"])


def config_token_code(config: dict[str, Any]) -> str | None:
    """The tokens file's dtype a cache's config.json implies (None: any, for old configs)."""
    vocab = config.get("vocab_size")
    return token_code(int(vocab)) if isinstance(vocab, int) else None
