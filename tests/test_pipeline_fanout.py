"""The pipeline's cache fan-out under kfp.local: the real configure, cache-ranges, cache and
merge components, in the pipeline's own wiring (pipelines.pipeline), with the cache split over
token ranges; the merged cache equals a single process's byte for byte, and each range step's
artifact holds only its own rows."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HP = "layers.1"
CONFIG = {
    "dataset_split": "train",
    "n_tokens": 3000,
    "batch_size": 8,
    "cache_ctx_len": 32,
    "n_splits": 4,
    "device": "cpu",
    "pipeline_num_proc": 1,
}
RANGES = 3


def fanout_pipeline():
    """configure -> cache ranges -> cache (per range) -> merge, wired as the full pipeline is."""
    from kfp import dsl

    from components.runtime import promoted_parameters
    from components.steps import cache_op, cache_ranges_op, configure_op, merge_cache_op

    @dsl.pipeline(name="cache-fanout")
    def pipeline(config_json: str, model: str, sparse_model: str, cache_ranges: int) -> list:
        defaults = {name: default for name, _, default in promoted_parameters()}
        defaults.update(model=model, sparse_model=sparse_model, hookpoints=[HP])
        conf = configure_op(config_json=config_json, serve_in_step=False, **defaults)
        ranges = cache_ranges_op(config=conf.output, cache_ranges=cache_ranges)
        with dsl.ParallelFor(ranges.output) as item:
            cache = cache_op(config=item.config, hookpoint=item.hookpoint, rows=item.rows)
        merge = merge_cache_op(
            config=conf.output,
            part_uris=dsl.Collected(cache.outputs["Output"]),
            cache_ranges=cache_ranges,
        )
        return merge.outputs["Output"]

    return pipeline


def test_fanned_out_cache_equals_a_single_build(
    tmp_path, monkeypatch, tiny_model_dir, tiny_sae_dir, tiny_corpus
):
    from kfp import local

    from autointerp_full.cache import build_cache
    from autointerp_full.config import RunConfig

    config = {**CONFIG, "dataset_repo": str(tiny_corpus)}
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{Path(__file__).parent}")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "outputs"),
        workspace_root=str(tmp_path / "workspace"),
    )
    task = fanout_pipeline()(
        config_json=json.dumps(config),
        model=str(tiny_model_dir),
        sparse_model=str(tiny_sae_dir),
        cache_ranges=RANGES,
    )
    (merged_uri,) = task.output
    merged = Path(merged_uri) / HP

    cfg = RunConfig(**{**config, "model": str(tiny_model_dir), "sparse_model": str(tiny_sae_dir),
                       "hookpoints": [HP]})  # fmt: skip
    single = build_cache(cfg, tmp_path / "single")[HP]
    files = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in merged.iterdir()) == files
    for name in files:
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name

    # Each range step's artifact holds its own rows only.
    parts = sorted((tmp_path / "outputs").rglob(f"cache/{HP}/config.json"))
    rows = sorted(json.loads(p.read_text())["rows"] for p in parts)
    n_seqs = json.loads((single / "config.json").read_text())["n_seqs"]
    assert len(rows) == RANGES and rows[0][0] == 0 and rows[-1][1] == n_seqs
    for part in parts:
        lo, hi = json.loads(part.read_text())["rows"]
        tokens = part.parent / "tokens.safetensors"
        header = 8 + int.from_bytes(tokens.read_bytes()[:8], "little")
        assert tokens.stat().st_size - header == 2 * (hi - lo) * CONFIG["cache_ctx_len"]
