"""Cache fan-out: one hookpoint's cache built as N token-row ranges, then joined.

Range step k (of N) runs `build_cache(cfg, dir, rows=range_rows(cfg, k, N))`: its folder is
a *part*, a cache of rows [lo, hi) whose entries carry their index in the whole cache and
whose config.json records the rows (key field `rows`) and the whole cache's row count
(`n_seqs_total`). `merge_parts` joins the parts: per shard, the parts' shard files are merged
like a single build's chunk files (they are in row order), the tokens are concatenated, and
config.json is the one a single build writes. Ranges start at multiples of the batch size, so
every batch holds the same rows as in a single build and the merged cache is byte-identical.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import atomic_write_json
from ..logs import log
from . import staging
from .format import (
    CONFIG_FILE,
    RANGE_FIELD,
    RANGE_TOTAL_FIELD,
    TOKENS_FILE,
    config_index_tokens,
    config_token_code,
    read_cache_config,
    shard_name,
    staging_folder,
    verify_cache,
)
from .merge import merge_chunks


def range_rows(n_tokens: int, ctx_len: int, batch_size: int, k: int, n: int) -> tuple[int, int]:
    """Token rows [lo, hi) of range k of n: equal shares of the cache's rows, each starting at
    a multiple of batch_size (so batches are those of a single build)."""
    if not 0 <= k < n:
        raise UserError(f"cache range {k} is not in 0..{n - 1}")
    rows = math.ceil(n_tokens / ctx_len)
    per = math.ceil(math.ceil(rows / n) / batch_size) * batch_size
    lo, hi = k * per, min(rows, (k + 1) * per)
    if lo >= rows:
        most = math.ceil(rows / batch_size)
        raise UserError(
            f"cache_ranges: {n} ranges of whole batches do not fit {rows} rows of "
            f"{batch_size}; use at most {most}"
        )
    return lo, hi


def merge_parts(parts: list[Path], latents_dir: Path, hookpoint: str) -> Path:
    """Join the range parts of `hookpoint` into `latents_dir/<hookpoint>/` (built in staging,
    swapped in once complete, like a single build). Returns the cache folder."""
    configs = [_part_config(Path(p)) for p in parts]
    order = sorted(range(len(parts)), key=lambda i: configs[i][RANGE_FIELD][0])
    parts = [Path(parts[i]) for i in order]
    configs = [configs[i] for i in order]
    whole = _whole_config(configs, parts)
    latents_dir = Path(latents_dir)
    staging.recover(latents_dir, hookpoint)
    folder = staging_folder(latents_dir, hookpoint)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _join_tokens(parts, folder / TOKENS_FILE, whole)
    n_tokens = config_index_tokens(whole)
    for i, shard in enumerate(whole["shards"]):
        files = [p / shard_name(i) for p in parts]
        out = folder / shard_name(i)
        shard["n"] = merge_chunks(files, out, shard["start"], shard["end"], n_tokens)
    atomic_write_json(folder / CONFIG_FILE, whole)  # the commit point, as in a single build
    final = staging.commit(latents_dir, hookpoint)
    verify_cache(final)
    log.info("merged %d cache ranges of %s into %s", len(parts), hookpoint, final)
    return final


def _part_config(folder: Path) -> dict[str, Any]:
    verify_cache(folder)
    config = read_cache_config(folder)
    if RANGE_FIELD not in config or RANGE_TOTAL_FIELD not in config:
        raise UserError(f"{folder}: not a cache range part (its config.json has no rows)")
    return config


def _whole_config(configs: list[dict[str, Any]], parts: list[Path]) -> dict[str, Any]:
    """The config.json a single build writes, from the parts' (which must tile the rows)."""
    total = int(configs[0][RANGE_TOTAL_FIELD])
    expected = 0
    for config, part in zip(configs, parts, strict=True):
        lo = int(config[RANGE_FIELD][0])
        hi = lo + int(config["n_seqs"])
        if lo != expected:
            raise UserError(f"{part}: holds rows {lo}.. but the next range starts at {expected}")
        expected = hi
        same = {k: v for k, v in config.items() if k not in (RANGE_FIELD, "n_seqs", "shards")}
        first = {k: v for k, v in configs[0].items() if k not in (RANGE_FIELD, "n_seqs", "shards")}
        if same != first:
            field = next(k for k in set(same) | set(first) if same.get(k) != first.get(k))
            raise UserError(f"{part}: {field} differs from the first range's; rebuild it")
    if expected != total:
        raise UserError(f"the cache ranges cover rows 0..{expected} of {total}")
    whole = {k: v for k, v in configs[0].items() if k not in (RANGE_FIELD, RANGE_TOTAL_FIELD)}
    whole["n_seqs"] = total
    whole["shards"] = [dict(s) for s in configs[0]["shards"]]
    return whole


def _join_tokens(parts: list[Path], out: Path, whole: dict[str, Any]) -> None:
    import torch

    from .tensorio import load_tokens, save_tokens

    tokens = torch.cat([load_tokens(p / TOKENS_FILE) for p in parts])
    code = config_token_code(whole)
    if code is None:
        raise UserError(f"{parts[0]}: config.json has no vocab_size")
    save_tokens(out, tokens, code)
