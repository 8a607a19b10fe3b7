"""The activation cache against a dense reference, plus reuse, resume, memory and reader tests."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_corpus_texts, write_sparsify_sae

from autointerp_full import models
from autointerp_full.cache import (
    CacheReader,
    build_cache,
    cache_is_complete,
    forward,
    merge,
    spill,
    verify_cache,
    writer,
)
from autointerp_full.cache.format import FORMAT_VERSION, staging_folder
from autointerp_full.cache.runs import sort_batch
from autointerp_full.config import RunConfig
from autointerp_full.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HOOK = "layers.1"
CTX = 32
N_TOKENS = 2048


def make_cfg(model_dir: Path, sae_dir: Path, corpus: Path, **overrides) -> RunConfig:
    values = dict(
        model=str(model_dir),
        sparse_model=str(sae_dir),
        hookpoints=[HOOK],
        dataset_repo=str(corpus),
        dataset_split="train",
        n_tokens=N_TOKENS,
        cache_ctx_len=CTX,
        batch_size=8,
        n_splits=3,
        device="cpu",
        pipeline_num_proc=1,
    )
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture(scope="module")
def saes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saes")
    return {
        "topk": write_sparsify_sae(root / "topk", HOOK, k=8),
        "relu": write_sparsify_sae(root / "relu", HOOK, activation="relu", seed=1),
        "transcoder": write_sparsify_sae(root / "tc", HOOK, k=6, transcode=True, seed=2),
    }


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()


# ------------------------------------------------------------------------------ reference
def reference_dense(model, tokens: torch.Tensor, sae_dir: Path, batch_size: int) -> torch.Tensor:
    """Dense latent activations [n_seqs * ctx, L] from a full forward and the SAE formula."""
    from safetensors.torch import load_file

    cfg = json.loads((sae_dir / HOOK / "cfg.json").read_text())
    w = load_file(str(sae_dir / HOOK / "sae.safetensors"))
    layer = int(HOOK.split(".")[1])
    # hidden_states[i] is the input of layers.i and hidden_states[i + 1] its output.
    index = layer if cfg["transcode"] else layer + 1
    out = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            ids = tokens[start : start + batch_size].long()
            hidden = model(ids, output_hidden_states=True).hidden_states[index]
            x = hidden.reshape(-1, hidden.shape[-1])
            if not cfg["transcode"]:
                x = x - w["b_dec"]
            pre = x @ w["encoder.weight"].T + w["encoder.bias"]
            acts = pre.relu()
            if cfg["activation"] == "topk":
                top = acts.topk(cfg["k"], dim=-1)
                acts = torch.zeros_like(acts).scatter_(-1, top.indices, top.values)
            out.append(acts)
    return torch.cat(out)


def cache_dense(reader: CacheReader) -> torch.Tensor:
    n_seqs, ctx = reader.tokens().shape
    dense = torch.zeros(n_seqs * ctx, reader.num_latents)
    for latent in range(reader.num_latents):
        locations, acts = reader.latent(latent)
        flat = locations[:, 0] * ctx + locations[:, 1]
        assert (flat[1:] > flat[:-1]).all(), "entries of a latent are in location order"
        dense[flat, latent] = acts
    return dense


def assert_close_to_reference(got: torch.Tensor, ref: torch.Tensor, k: int | None) -> None:
    """Equal up to fp16 rounding; for top-k, membership may differ only at exact near-ties."""
    same = (got != 0) == (ref != 0)
    if k is not None and not same.all():
        kth = ref.topk(k, dim=-1).values[:, -1:]
        rows = (~same).any(1)
        diff_vals = torch.where(~same, torch.maximum(got, ref), torch.zeros_like(ref))[rows]
        assert ((diff_vals - kth[rows]).abs()[~same[rows]] < 1e-4).all(), "top-k mismatch"
        ref = torch.where(same, ref, got)
    else:
        assert same.all(), f"{int((~same).sum())} non-zero positions differ"
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------ correctness
@pytest.mark.parametrize("kind", ["topk", "relu", "transcoder"])
def test_cache_equals_dense_reference(tiny_model_dir, tiny_corpus, saes, hf_model, tmp_path, kind):
    cfg = make_cfg(tiny_model_dir, saes[kind], tiny_corpus)
    folders = build_cache(cfg, tmp_path / "latents")
    assert set(folders) == {HOOK} and cache_is_complete(folders[HOOK])
    assert not (tmp_path / "latents" / ".staging").exists()
    reader = CacheReader(folders[HOOK])
    tokens = reader.tokens()
    assert tokens.dtype == torch.int32 and tokens.shape == (N_TOKENS // CTX, CTX)
    assert reader.config["transcoder"] == (kind == "transcoder")
    ref = reference_dense(hf_model, tokens, saes[kind], cfg.batch_size)
    got = cache_dense(reader)
    assert int((got != 0).sum()) > 0
    assert_close_to_reference(got, ref, {"topk": 8, "transcoder": 6}.get(kind))
    assert torch.equal(reader.firing_counts(), (got != 0).sum(0))


def test_cpu_micro_batches_equal_dense_reference(
    tiny_model_dir, tiny_corpus, saes, hf_model, tmp_path, monkeypatch
):
    # About 3 rows per forward call: batches of 8 run as 3 + 3 + 2 and are stitched together.
    threads = torch.get_num_threads()
    monkeypatch.setattr(forward, "CPU_TOKENS_PER_THREAD", -(-3 * CTX // threads))
    calls = count_forward_calls(monkeypatch)
    cfg = make_cfg(tiny_model_dir, saes["topk"], tiny_corpus)
    step = forward.forward_rows(torch.device("cpu"), cfg.batch_size, CTX)
    assert 1 < step < cfg.batch_size
    reader = CacheReader(build_cache(cfg, tmp_path / "latents")[HOOK])
    assert calls["n"] == -(-cfg.batch_size // step) * N_TOKENS // CTX // cfg.batch_size
    ref = reference_dense(hf_model, reader.tokens(), saes["topk"], cfg.batch_size)
    assert_close_to_reference(cache_dense(reader), ref, 8)


def test_shard_layout(tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path):
    """Format 2: offsets, a uint32 flat token index and fp16 values, 6 bytes per non-zero; the
    latent is implied by offsets; tokens in the smallest dtype holding the vocabulary."""
    from safetensors import safe_open

    folder = build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus), tmp_path)[HOOK]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == FORMAT_VERSION == 2
    assert [(s["start"], s["end"]) for s in config["shards"]] == [(0, 43), (43, 86), (86, 128)]
    n_tokens = config["n_seqs"] * config["ctx_len"]
    with safe_open(str(folder / "tokens.safetensors"), framework="pt") as fh:
        tokens = fh.get_tensor("tokens")
    assert config["vocab_size"] <= 2**16 and tokens.dtype == torch.uint16
    assert tokens.shape == (config["n_seqs"], config["ctx_len"])
    for i, shard in enumerate(config["shards"]):
        path = folder / f"shard_{i}.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            assert fh.metadata() == {"start": str(shard["start"]), "end": str(shard["end"])}
            assert sorted(fh.keys()) == ["activations", "index", "offsets"]
            index, offsets = fh.get_tensor("index").long(), fh.get_tensor("offsets")
            assert fh.get_tensor("index").dtype == torch.uint32 and offsets.dtype == torch.int64
            assert fh.get_tensor("activations").dtype == torch.float16
            assert len(offsets) == shard["end"] - shard["start"] + 1 and offsets[-1] == shard["n"]
            assert (0 <= index).all() and (index < n_tokens).all()
            for j in range(shard["end"] - shard["start"]):  # each latent's slice is ascending
                part = index[offsets[j] : offsets[j + 1]]
                assert (part[1:] > part[:-1]).all()
        header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
        data = path.stat().st_size - header - 8 * len(offsets)
        assert data == 6 * shard["n"]  # bytes per non-zero


def test_multiple_hookpoints_share_one_pass(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    sae = write_sparsify_sae(tmp_path / "sae", HOOK)
    write_sparsify_sae(sae, "layers.2", seed=5)
    calls = count_forward_calls(monkeypatch)
    cfg = make_cfg(tiny_model_dir, sae, tiny_corpus, hookpoints=[HOOK, "layers.2"])
    both = build_cache(cfg, tmp_path / "both")
    assert calls["n"] == N_TOKENS // CTX // cfg.batch_size  # one pass for both hookpoints
    alone = build_cache(
        make_cfg(tiny_model_dir, sae, tiny_corpus, hookpoints=["layers.2"]), tmp_path / "alone"
    )
    assert_same_cache(both["layers.2"], alone["layers.2"])


def test_filter_bos_drops_bos_positions(tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path):
    plain = CacheReader(
        build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus), tmp_path / "plain")[HOOK]
    )
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, filter_bos=True)
    filtered = CacheReader(build_cache(cfg, tmp_path / "filtered")[HOOK])
    tokens = filtered.tokens()
    bos = filtered.config["bos_token_id"]
    is_bos = (tokens == bos).reshape(-1)
    assert is_bos[::CTX].all()  # every row starts with BOS
    dropped = 0
    for latent in range(filtered.num_latents):
        loc_p, act_p = plain.latent(latent)
        loc_f, act_f = filtered.latent(latent)
        keep = ~is_bos[loc_p[:, 0] * CTX + loc_p[:, 1]]
        dropped += int((~keep).sum())
        assert torch.equal(loc_f, loc_p[keep]) and torch.equal(act_f, act_p[keep])
    assert dropped > 0


# ------------------------------------------------------------------------------ reuse
def count_forward_calls(monkeypatch, fail_after: int | None = None, delay: float = 0.0):
    calls = {"n": 0}
    real = models.forward_to_hooks

    def counting(*args, **kwargs):
        if fail_after is not None and calls["n"] >= fail_after:
            raise KeyboardInterrupt  # what Ctrl-C raises mid-run
        calls["n"] += 1
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "forward_to_hooks", counting)
    return calls


def assert_same_cache(a: Path, b: Path) -> None:
    """Same files holding equal tensors and metadata (the byte layout may differ)."""
    from safetensors import safe_open

    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            with safe_open(str(a / name), "pt") as fa, safe_open(str(b / name), "pt") as fb:
                assert fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
                for key in fa.keys():
                    assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), (name, key)
    ca, cb = (json.loads((x / "config.json").read_text()) for x in (a, b))
    assert ca == cb


def test_reuse_skips_the_model(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, monkeypatch, caplog
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    build_cache(cfg, tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when the cache is reused")

    monkeypatch.setattr(models, "load_subject_model", no_model)
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        folders = build_cache(cfg, tmp_path)
    assert "reusing cache" in caplog.text
    assert cache_is_complete(folders[HOOK])


def test_key_change_recomputes_and_names_the_field(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, caplog
):
    build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus), tmp_path)
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, n_tokens=N_TOKENS // 2)
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        folder = build_cache(cfg, tmp_path)[HOOK]
    assert "n_tokens changed from 2048 to 1024" in caplog.text
    reader = CacheReader(folder)
    assert reader.config["n_tokens"] == N_TOKENS // 2 and reader.tokens().shape[0] == 1024 // CTX


def test_overwrite_forces_recompute(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, monkeypatch, caplog
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    build_cache(cfg, tmp_path)
    calls = count_forward_calls(monkeypatch)
    cfg.overwrite = ["cache"]
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        build_cache(cfg, tmp_path)
    assert calls["n"] > 0 and "--overwrite cache" in caplog.text


def test_cache_without_config_is_incomplete(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, monkeypatch
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    folder = build_cache(cfg, tmp_path)[HOOK]
    (folder / "config.json").unlink()
    assert not cache_is_complete(folder)
    with pytest.raises(UserError, match="incomplete activation cache"):
        CacheReader(folder)
    calls = count_forward_calls(monkeypatch)
    build_cache(cfg, tmp_path)
    assert calls["n"] > 0 and cache_is_complete(folder)


# ------------------------------------------------------------------------------ resume
def test_resume_after_interrupt_matches_uninterrupted(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, monkeypatch
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    whole = build_cache(cfg, tmp_path / "whole")[HOOK]

    monkeypatch.setattr(spill, "CHUNK_RUNS", 2)  # a chunk every two batches
    calls = count_forward_calls(monkeypatch, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, tmp_path / "resumed")
    folder = tmp_path / "resumed" / HOOK
    manifest = json.loads(
        (staging_folder(tmp_path / "resumed", HOOK) / "manifest.json").read_text()
    )
    assert manifest["rows_done"] == 4 * cfg.batch_size and not cache_is_complete(folder)

    monkeypatch.undo()
    calls = count_forward_calls(monkeypatch)
    build_cache(cfg, tmp_path / "resumed")
    total_batches = N_TOKENS // CTX // cfg.batch_size
    assert calls["n"] == total_batches - 4  # resumed, not restarted
    assert_same_cache(whole, folder)


def test_partial_with_another_key_is_discarded(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, monkeypatch, caplog
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    monkeypatch.setattr(spill, "CHUNK_RUNS", 1)
    count_forward_calls(monkeypatch, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, tmp_path)
    monkeypatch.undo()
    calls = count_forward_calls(monkeypatch)
    other = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, batch_size=4)
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        build_cache(other, tmp_path)
    assert "discarding partial cache" in caplog.text and "batch_size" in caplog.text
    assert calls["n"] == N_TOKENS // CTX // 4


KILL_SCRIPT = """
import sys, time
from autointerp_full import models
from autointerp_full.cache import build_cache, spill
from autointerp_full.config import RunConfig

spill.CHUNK_RUNS = 1
real = models.forward_to_hooks
def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)
models.forward_to_hooks = slow
cfg = RunConfig(**__import__("json").loads(sys.argv[1]))
build_cache(cfg, sys.argv[2])
"""


def test_kill_9_then_rerun_matches_uninterrupted(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, batch_size=4)
    whole = build_cache(cfg, tmp_path / "whole")[HOOK]
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    latents = tmp_path / "killed"
    manifest = staging_folder(latents, HOOK) / "manifest.json"
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(cfg.public_dict()), str(latents)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if manifest.exists() and json.loads(manifest.read_text())["rows_done"] >= 12:
                break
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the build made no progress")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows_done = json.loads(manifest.read_text())["rows_done"]
    assert 12 <= rows_done < N_TOKENS // CTX and not cache_is_complete(latents / HOOK)
    build_cache(cfg, latents)
    assert_same_cache(whole, latents / HOOK)


# ------------------------------------------------------------------------------ memory
MEMORY_SCRIPT = """
import resource, sys
from autointerp_full.cache import build_cache, merge, spill
from autointerp_full.config import RunConfig
# Small buffers, so that even the small build goes through many chunks and merge blocks.
spill.CHUNK_ENTRIES = 50_000
merge.MERGE_ENTRIES = 50_000
cfg = RunConfig(**__import__("json").loads(sys.argv[1]))
build_cache(cfg, sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
# 10x apart; 2M tokens would take minutes on two shared cores, so 1M and 100k.
BIG, SMALL = 2_000_000, 200_000


def test_memory_stays_bounded(tiny_model_dir, tmp_path):
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w") as fh:
        for text in make_corpus_texts(n_docs=18_000, seed=3):
            fh.write(json.dumps({"text": text}) + "\n")
    sae = write_sparsify_sae(tmp_path / "sae", "layers.0")  # the cheapest hookpoint
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    # One thread: faster on shared cores. A fixed mmap threshold keeps glibc's heap
    # fragmentation out of the measurement, so that it sees the data the process holds.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    peaks = {}
    for n_tokens in (SMALL, BIG):
        cfg = make_cfg(
            tiny_model_dir,
            sae,
            corpus,
            hookpoints=["layers.0"],
            n_tokens=n_tokens,
            cache_ctx_len=256,
            batch_size=32,
        )
        out = subprocess.run(
            [
                sys.executable,
                str(script),
                json.dumps(cfg.public_dict()),
                str(tmp_path / str(n_tokens)),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[n_tokens] = int(out.stdout.split()[-1])
        reader = CacheReader(tmp_path / str(n_tokens) / "layers.0")
        assert reader.tokens().numel() >= n_tokens  # the corpus did not run out
        assert reader.firing_counts().sum() > 7 * n_tokens
    token_bytes = (BIG - SMALL) * 4
    growth = peaks[BIG] - peaks[SMALL]
    # Holding the non-zeros would take 1.8M tokens * 8 latents * 14 bytes = 200 MB more.
    assert growth < 3 * token_bytes + 16e6, f"peak RSS grew by {growth / 1e6:.1f} MB"


def test_parallel_shard_merge_of_many_chunks(tmp_path, monkeypatch):
    # Small merge blocks force both paths: blocks of latents, and one heavy latent copied in
    # pieces. Every shard is merged on its own thread. No model: the tensor code alone.
    monkeypatch.setattr(merge, "MERGE_ENTRIES", 90)
    n_seqs, ctx_len, num_latents, batch = 24, 8, 30, 4
    gen = torch.Generator().manual_seed(0)
    state = spill.HookpointCache("h", tmp_path / "h", {"k": 1}, None, num_latents, 3)
    spill.start_fresh(state, torch.zeros(n_seqs, ctx_len, dtype=torch.int32), "")
    dense = torch.zeros(n_seqs * ctx_len, num_latents)
    saver = spill.Saver()
    for row in range(0, n_seqs, batch):
        n_pos = batch * ctx_len
        rows = torch.arange(n_pos).repeat_interleave(3)
        latents = torch.randint(0, num_latents, (3 * n_pos,), generator=gen)
        latents[::3] = 7  # latent 7 fires everywhere: more than one block
        values = torch.rand(3 * n_pos, generator=gen) + 0.5
        dense[rows + row * ctx_len, latents] = values.half().float()
        keep = dense[rows + row * ctx_len, latents] == values.half().float()  # drop repeats
        state.add(sort_batch(rows[keep], latents[keep], values[keep], n_pos, row, ctx_len))
        if row % (2 * batch) == batch:
            state.flush(row + batch, n_seqs, ctx_len, saver)
    saver.close()
    assert state.chunks == n_seqs // (2 * batch)
    config = {
        "hookpoint": "h",
        "num_latents": num_latents,
        "n_seqs": n_seqs,
        "ctx_len": ctx_len,
        "format": FORMAT_VERSION,
    }
    writer.finish(state, config, n_seqs, ctx_len)
    verify_cache(state.folder)
    reader = CacheReader(state.folder)
    for latent in range(num_latents):
        locations, values = reader.latent(latent)
        flat = locations[:, 0].long() * ctx_len + locations[:, 1].long()
        expected = dense[:, latent].nonzero().squeeze(1)
        assert torch.equal(flat, expected), latent
        assert torch.equal(values.float(), dense[expected, latent]), latent
    left = sorted(p.name for p in state.folder.iterdir())
    assert left == ["config.json", "shard_0.safetensors", "shard_1.safetensors",
                    "shard_2.safetensors", "tokens.safetensors"]  # fmt: skip


# ------------------------------------------------------------------------------ reader
def test_reader_reads_one_shard_only(tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, n_splits=4)
    folder = build_cache(cfg, tmp_path)[HOOK]
    reader = CacheReader(folder)
    counts = reader.firing_counts()
    latent = int(torch.argmax(counts[32:64])) + 32  # in shard 1 ([32, 64))
    want = reader.latent(latent)
    assert len(want[0]) == counts[latent] > 0
    for i in (0, 2, 3):  # destroy every other shard
        (folder / f"shard_{i}.safetensors").write_bytes(b"")
    fresh = CacheReader(folder)
    got = fresh.latent(latent)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].dtype == torch.long and got[1].dtype == torch.float32
    with pytest.raises(IndexError):
        fresh.latent(128)
