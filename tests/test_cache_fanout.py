"""Cache fan-out without Kubeflow: range parts built apart, merged, equal byte for byte to a
single build (the pipeline's version of this is in tests/test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cache import CTX, HOOK, N_TOKENS, make_cfg

from autointerp_full.cache import CacheReader, build_cache
from autointerp_full.cache.fanout import merge_parts, range_rows
from autointerp_full.errors import UserError


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_range_rows_tile_the_cache_in_whole_batches():
    ranges = [range_rows(10_000, 256, 8, k, 3) for k in range(3)]
    assert ranges == [(0, 16), (16, 32), (32, 40)]  # 40 rows, starts at multiples of 8
    with pytest.raises(UserError, match="at most 5"):
        range_rows(10_000, 256, 8, 5, 6)


@pytest.mark.parametrize("n_ranges", [3])
def test_merged_ranges_equal_a_single_build(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, n_ranges
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, batch_size=2)
    single = build_cache(cfg, tmp_path / "single")[HOOK]
    parts = []
    for k in range(n_ranges):
        rows = range_rows(cfg.n_tokens, cfg.cache_ctx_len, cfg.batch_size, k, n_ranges)
        part = build_cache(cfg, tmp_path / f"range_{k}", rows=rows)[HOOK]
        config = json.loads((part / "config.json").read_text())
        assert config["rows"] == list(rows) and config["n_seqs"] == rows[1] - rows[0]
        # Each part holds only its own rows' tokens and entries.
        assert CacheReader(part).tokens().shape == (rows[1] - rows[0], CTX)
        parts.append(part)
    merged = merge_parts(list(reversed(parts)), tmp_path / "merged", HOOK)
    assert files_of(merged) == files_of(single)
    assert N_TOKENS // CTX == json.loads((merged / "config.json").read_text())["n_seqs"]
    with pytest.raises(UserError, match="next range starts at"):
        merge_parts(parts[1:], tmp_path / "broken", HOOK)
