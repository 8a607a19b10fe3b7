"""The compact cache format (format 2) at sizes no test could allocate: the flat token index
past 65,536 rows and 2^31 tokens, offsets past 2^31 entries, and the switch to an int64 index
past 2^32 tokens. Sparse files stand in for the huge shards: only headers, offsets and a few
entries are real bytes on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autointerp_full.cache import CacheReader, verify_cache
from autointerp_full.cache.format import (
    FORMAT_VERSION,
    U32_TOKENS,
    check_shard_file,
    encode_header,
    index_code,
    shard_layout,
    shard_metadata,
    token_code,
)
from autointerp_full.cache.merge import merge_chunks
from autointerp_full.cache.runs import Run
from autointerp_full.cache.tensorio import TensorFile, load_tokens, save_run, save_tokens

CTX = 256
BIG = 2**31 + 5  # entries before the latent under test: past int32


def test_index_dtype_by_cache_size():
    assert index_code(65_536 * CTX) == "U32"
    assert index_code(U32_TOKENS) == "U32"  # every index < 2^32 fits
    assert index_code(U32_TOKENS + 1) == "I64"
    assert [token_code(v) for v in (2, 256, 257, 49_152, 65_536, 65_537, 262_144)] == [
        "U8", "U8", "U16", "U16", "U16", "I32", "I32"
    ]  # fmt: skip


def test_layout_sizes_do_not_overflow():
    n = 3 * 2**31  # entries in one shard
    layout = {name: [code, shape, size] for name, code, shape, size in shard_layout(n, 7, 2**32)}
    assert layout["offsets"] == ["I64", [8], 64]
    assert layout["index"] == ["U32", [n], 4 * n]
    assert layout["activations"] == ["F16", [n], 2 * n]
    wide = dict((name, code) for name, code, _, _ in shard_layout(n, 7, 2**32 + 1))
    assert wide["index"] == "I64"
    header = json.loads(encode_header(shard_layout(n, 7, 2**32), {})[8:])
    assert header["activations"]["data_offsets"] == [64 + 4 * n, 64 + 6 * n]


def run_of(flat: list[int], latent: int = 0) -> Run:
    return Run(
        latents=torch.full((len(flat),), latent, dtype=torch.int32),
        flat=torch.tensor(flat, dtype=torch.long),
        values=torch.arange(1, len(flat) + 1, dtype=torch.float16),
    )


@pytest.mark.parametrize("n_tokens", [U32_TOKENS, U32_TOKENS * 4])
def test_flat_index_round_trips_past_65536_rows_and_2_31(tmp_path, n_tokens):
    # Rows past uint16, a flat index past int32 and, for the int64 case, past uint32.
    flat = [5, 70_000 * CTX + 3, 2**31 + 17, U32_TOKENS - 1]
    if n_tokens > U32_TOKENS:
        flat.append(3 * U32_TOKENS + 11)
    offsets = torch.tensor([0, len(flat)], dtype=torch.long)
    path = tmp_path / "shard.safetensors"
    save_run(path, run_of(flat), offsets, n_tokens, 0, 1)
    check_shard_file(path, 0, 1, n_tokens, len(flat))
    handle = TensorFile(path)
    assert handle.read("index").tolist() == flat
    handle.close()
    bytes_per_entry = 4 if n_tokens <= U32_TOKENS else 8
    assert path.stat().st_size == handle.data_start + 16 + (bytes_per_entry + 2) * len(flat)


def test_merge_keeps_large_indices(tmp_path):
    n_tokens = U32_TOKENS
    chunks = []
    for c, flat in enumerate([[1, 2**31 + 1], [2**31 + 2, U32_TOKENS - 2]]):
        path = tmp_path / f"chunk_{c}.safetensors"
        save_run(path, run_of(flat), torch.tensor([0, 2], dtype=torch.long), n_tokens, 0, 1)
        chunks.append(path)
    out = tmp_path / "shard.safetensors"
    assert merge_chunks(chunks, out, 0, 1, n_tokens) == 4
    handle = TensorFile(out)
    assert handle.read("index").tolist() == [1, 2**31 + 1, 2**31 + 2, U32_TOKENS - 2]
    handle.close()


def sparse_cache(folder: Path, entries: dict[int, int], tail: list[int]) -> list[int]:
    """A cache of 2^24 rows x 256 (2^32 tokens) and 2 latents whose shard is a sparse file:
    latent 0 has `entries[0]` (> 2^31) entries, all zero bytes; latent 1 has `tail`."""
    folder.mkdir()
    n0, n = entries[0], entries[0] + len(tail)
    n_seqs = U32_TOKENS // CTX
    layout = shard_layout(n, 2, U32_TOKENS)
    head = encode_header(layout, shard_metadata(0, 2))
    path = folder / "shard_0.safetensors"
    with open(path, "wb") as fh:
        fh.write(head)
        fh.write(np.array([0, n0, n], np.int64).tobytes())
        fh.truncate(len(head) + sum(size for *_, size in layout))
        fh.seek(len(head) + 24 + 4 * n0)
        fh.write(np.array(tail, np.uint32).tobytes())
        fh.seek(len(head) + 24 + 4 * n + 2 * n0)
        fh.write(np.ones(len(tail), np.float16).tobytes())
    config = {
        "hookpoint": "h", "num_latents": 2, "n_seqs": n_seqs, "ctx_len": CTX,
        "format": FORMAT_VERSION, "shards": [{"file": path.name, "start": 0, "end": 2, "n": n}],
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return [n0, n]


def test_reader_past_2_31_entries_and_65536_rows(tmp_path):
    tail = [70_000 * CTX + 1, 2**31 + 9, U32_TOKENS - 1]
    folder = tmp_path / "cache"
    sparse_cache(folder, {0: BIG}, tail)
    reader = CacheReader(folder)
    assert reader.firing_counts().tolist() == [BIG, 3]
    flat, values = reader.latent_flat(1)
    assert flat.dtype == np.int64 and flat.tolist() == tail and values.tolist() == [1.0] * 3
    locations, _ = reader.latent(1)
    assert locations.tolist() == [[70_000, 1], [2**31 // CTX, 9], [U32_TOKENS // CTX - 1, 255]]
    got = [(lat, f.tolist()) for lat, f, _ in reader.iter_latents([1])]
    assert got == [(1, tail)]
    reader.close()


def test_tokens_take_the_smallest_dtype(tmp_path):
    tokens = torch.tensor([[0, 300], [65_535, 7]], dtype=torch.int32)
    path = tmp_path / "tokens.safetensors"
    save_tokens(path, tokens, token_code(65_536))
    assert path.stat().st_size == TensorFile(path).data_start + 2 * tokens.numel()
    assert torch.equal(load_tokens(path), tokens)
    with pytest.raises(ValueError):
        save_tokens(path, tokens, "U8")  # 300 does not fit


def test_verify_cache_checks_the_index_dtype(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    save_tokens(folder / "tokens.safetensors", torch.zeros(2, 4, dtype=torch.int32), "U8")
    # Written for a cache of over 2^32 tokens (int64 index), listed in one of 8 tokens.
    run = run_of([1, 2])
    save_run(folder / "shard_0.safetensors", run, torch.tensor([0, 2]), U32_TOKENS + 1, 0, 1)
    config = {
        "hookpoint": "h", "num_latents": 1, "n_seqs": 2, "ctx_len": 4, "vocab_size": 256,
        "format": FORMAT_VERSION, "shards": [{"file": "shard_0.safetensors", "start": 0,
                                               "end": 1, "n": 2}],
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="shard_0.safetensors holds 'index' as I64"):
        verify_cache(folder)
    save_run(folder / "shard_0.safetensors", run, torch.tensor([0, 2]), 8, 0, 1)
    verify_cache(folder)
