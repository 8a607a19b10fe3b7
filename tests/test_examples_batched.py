"""The batched example path: token texts decoded in one batch, windows gathered at once, the
random source's prefix draw, examples files written straight from arrays and by the workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from test_examples import (
    VOCAB,
    WordTokenizer,
    acts_of,
    cfg_for,
    find_window,
    random_cache,
    write_real_cache,
)

from autointerp_full import provenance as prov
from autointerp_full.examples import ExampleBuilder, TokenDecoder
from autointerp_full.examples.files import read_examples_file, windows_bytes
from autointerp_full.examples.non_activating import RandomSource
from autointerp_full.examples.types import LatentRecord
from autointerp_full.examples.windows import LatentActivations, inactive_blocks
from autointerp_full.io import atomic_write_bytes


def test_batch_decoding_equals_one_id_at_a_time() -> None:
    """The Rust backend's batch decode gives what tokenizer.decode([i]) gives, for every id of
    a real vocabulary (SmolLM2's byte-level BPE, loaded offline)."""
    from autointerp_full import models
    from autointerp_full.examples import load_tokenizer

    tok = load_tokenizer(str(models.smollm2_gguf_path()))
    ids = np.arange(len(tok))
    batched = TokenDecoder(tok)
    batched.prefill(ids)
    one_by_one = TokenDecoder(tok)
    sample = np.random.default_rng(0).choice(ids, 3000, replace=False)
    assert batched.lookup(sample).tolist() == [one_by_one.token(int(i)) for i in sample]
    # Ids never prefilled are decoded on demand.
    fresh = TokenDecoder(tok)
    fresh.prefill([5, 6])
    assert fresh.lookup(np.array([[5, 900], [7, 6]])).tolist() == [
        [one_by_one.token(5), one_by_one.token(900)],
        [one_by_one.token(7), one_by_one.token(6)],
    ]


def test_dense_windows_equal_single_windows() -> None:
    rng = np.random.default_rng(1)
    flat = np.flatnonzero(rng.random(20 * 32) < 0.2)
    acts = LatentActivations.from_flat(flat, rng.random(len(flat)).astype(np.float32), 32)
    rows, starts = rng.integers(0, 20, 50), rng.integers(0, 32 - 6, 50)
    dense = acts.dense_windows(rows, starts, 6)
    for i, (r, s) in enumerate(zip(rows, starts, strict=True)):
        assert dense[i].tolist() == acts.window_activations(int(r), int(s), 6).tolist()
    assert acts.dense_windows([], [], 6).shape == (0, 6)


def test_random_source_is_uniform_over_free_blocks() -> None:
    """Drawn from a random prefix of all blocks, the windows are still a uniform draw of the
    blocks where the latent never fires, and the exclusions hold."""
    n_rows, ctx, length = 12, 32, 8
    acts = acts_of([(0, 3, 1.0), (2, 9, 1.0), (2, 30, 2.0), (7, 16, 1.0)], ctx)
    rows, starts = inactive_blocks(acts, n_rows, length)
    free = set(zip(rows.tolist(), starts.tolist(), strict=True))
    source = RandomSource(n_rows, length)
    counts: dict[tuple[int, int], int] = {}
    exclude = [(5, 8)]
    for seed in range(3000):
        chosen = source.select(acts, 4, np.random.default_rng(seed), exclude=exclude)
        assert len(chosen) == len(set(chosen)) == 4
        for window in chosen:
            assert window in free and window not in exclude
            counts[window] = counts.get(window, 0) + 1
    assert set(counts) == free - set(exclude)
    expected = 3000 * 4 / len(counts)
    assert max(abs(c - expected) for c in counts.values()) < 0.25 * expected


def test_random_source_finds_the_last_free_blocks() -> None:
    """A latent firing almost everywhere: the prefix is too short, every block is looked at."""
    n_rows, ctx, length = 200, 16, 8
    mask = np.ones(n_rows * ctx, bool)
    mask[[5 * ctx + 8 + i for i in range(8)]] = False  # row 5, block 8..16 is free
    mask[[150 * ctx + i for i in range(8)]] = False  # row 150, block 0..8 is free
    flat = np.flatnonzero(mask)
    acts = LatentActivations.from_flat(flat, np.ones(len(flat), np.float32), ctx)
    chosen = RandomSource(n_rows, length).select(acts, 5, np.random.default_rng(0))
    assert sorted(chosen) == [(5, 8), (150, 0)]


def test_windows_bytes_are_the_records_json() -> None:
    reader = random_cache(density=0.1)
    cfg = cfg_for(explainer="contrastive")
    builder = ExampleBuilder(cfg, reader, None, tokenizer=WordTokenizer(VOCAB))
    built = builder.build_windows(1)
    assert built is not None and built.sections["contrast"] > 0
    inputs = {"cache": "x", "n_examples_train": 10}
    data = orjson.loads(windows_bytes(built, prov.stamp({}, inputs)))
    assert data == prov.stamp(built.record().to_dict(), inputs)
    assert list(data)[:2] == [prov.FINGERPRINT, prov.INPUTS]
    assert LatentRecord.from_dict(data) == builder.build(1)
    for example in built.record().train:  # the texts and activations of the cache's window
        r, s = find_window(reader, example)
        assert example.str_tokens == [" " + VOCAB[t] for t in example.tokens]
        assert example.activations == pytest.approx(reader.dense[r, s : s + 8, 1], abs=1e-4)


def test_workers_write_the_files_one_process_writes(tmp_path: Path) -> None:
    """write_many in 1, 2 and 3 processes writes the same bytes, and skips the same latents."""
    import autointerp_full.examples.builder as bl
    from autointerp_full.cache import CacheReader

    fake = random_cache(n_rows=60, n_latents=9, density=0.08, seed=4)
    reader = CacheReader(write_real_cache(tmp_path / "cache", fake, n_splits=3))
    latents = list(range(9))
    old = bl.PARALLEL_MIN_LATENTS
    bl.PARALLEL_MIN_LATENTS = 1
    outputs = []
    try:
        for procs in (1, 2, 3):
            folder = tmp_path / f"out{procs}"
            cfg = cfg_for(pipeline_num_proc=procs, min_examples=215)
            builder = ExampleBuilder(cfg, reader, None, tokenizer=WordTokenizer(VOCAB))

            def write(built, folder: Path = folder) -> None:
                atomic_write_bytes(folder / f"{built.latent}.json", windows_bytes(built, {}))

            flags = [(lat, has) for lat, has, _ in builder.write_many(latents, write)]
            files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
            outputs.append((flags, files))
    finally:
        bl.PARALLEL_MIN_LATENTS = old
    flags, files = outputs[0]
    assert 0 < len(files) < 9 and [lat for lat, _ in flags] == latents
    assert all(out == outputs[0] for out in outputs[1:])
    written = sorted(int(name.split(".")[0]) for name in files)
    assert written == [lat for lat, has in flags if has]
    for name, content in files.items():
        assert LatentRecord.from_dict(orjson.loads(content)).latent == int(name.split(".")[0])


def test_atomic_write_bytes_is_shared_readable_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic_write_bytes(path, b'{"x": 1}')
    assert read_examples_file(path) == {"x": 1}
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    assert read_examples_file(path) == {"x": 1}
