"""The cache under crashes: kill -9 during the model pass and the merge, interrupted swaps, failed
rebuilds, damaged files, temp files, and the key fields that decide reuse."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_sparsify_sae

from autointerp_full import models
from autointerp_full.cache import (
    CacheReader,
    build_cache,
    merge,
    reused_hookpoints,
    spill,
    staging,
    verify_cache,
)
from autointerp_full.cache.format import MANIFEST, STAGING_DIR, staging_folder
from autointerp_full.cache.key import cache_key, key_difference, reuse_reason
from autointerp_full.config import RunConfig
from autointerp_full.errors import UserError
from autointerp_full.io import sweep_temp

REPO = Path(__file__).resolve().parents[1]
HOOK = "layers.1"
CTX = 32
N_TOKENS = 2048
N_SEQS = N_TOKENS // CTX


def make_cfg(model_dir: Path, sae_dir: Path, corpus: Path, **overrides) -> RunConfig:
    values = dict(
        model=str(model_dir),
        sparse_model=str(sae_dir),
        hookpoints=[HOOK],
        dataset_repo=str(corpus),
        dataset_split="train",
        n_tokens=N_TOKENS,
        cache_ctx_len=CTX,
        batch_size=4,
        n_splits=3,
        device="cpu",
        pipeline_num_proc=1,
    )
    values.update(overrides)
    return RunConfig(**values)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file and folder under `root` (hidden ones included) by relative path, with the
    file's bytes (None for a folder)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def assert_identical(got: Path, want: Path) -> None:
    a, b = snapshot(got), snapshot(want)
    assert sorted(a) == sorted(b), f"files differ: {sorted(set(a) ^ set(b))}"
    for name in a:
        assert a[name] == b[name], f"{name} differs"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path_factory) -> Path:
    """An uninterrupted build with the default settings: the bytes every rerun must match."""
    latents = tmp_path_factory.mktemp("reference") / "latents"
    build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus), latents)
    return latents


@pytest.fixture(scope="module")
def older(tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path_factory) -> Path:
    """A complete cache of another key (half the tokens), for rebuilds to replace."""
    latents = tmp_path_factory.mktemp("older") / "latents"
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, n_tokens=N_TOKENS // 2)
    build_cache(cfg, latents)
    return latents


# ------------------------------------------------------------------------------ kill -9
# The builds to kill are forked from one process that has imported torch and transformers
# once (importing them takes most of a fresh interpreter's start on a busy machine). Each
# forked build is a process of its own, killed with SIGKILL. In it, a chunk per batch and
# small merge blocks give the merge many pieces, and sleeps in each forward call and each
# merged block stretch both phases past the longest kill delay (a loaded machine only
# stretches them further). None of this changes the bytes written.
FORKER = """
import json, os, sys, time
import torch, transformers  # noqa: F401  (imported once, shared by every fork)
from transformers import LlamaForCausalLM  # noqa: F401
from autointerp_full import data, models, sparse  # noqa: F401
from autointerp_full.cache import build_cache, merge, spill
from autointerp_full.config import RunConfig

def build(cfg, latents):
    spill.CHUNK_RUNS = 1
    merge.MERGE_ENTRIES = 600
    real_forward, real_interleave = models.forward_to_hooks, merge.interleave

    def slow_forward(*args, **kwargs):
        time.sleep(0.06)
        return real_forward(*args, **kwargs)

    def slow_interleave(*args, **kwargs):
        time.sleep(0.03)
        return real_interleave(*args, **kwargs)

    models.forward_to_hooks, merge.interleave = slow_forward, slow_interleave
    build_cache(RunConfig(**cfg), latents)

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1), os.dup2(log, 2)
        try:
            build(job["cfg"], job["latents"])
        finally:
            os._exit(0)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    script = tmp_path_factory.mktemp("forker") / "forker.py"
    script.write_text(FORKER)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": str(REPO)},  # same threads as here: same arithmetic
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def manifest_rows(latents: Path) -> int | None:
    try:
        return json.loads((staging_folder(latents, HOOK) / MANIFEST).read_text())["rows_done"]
    except (OSError, ValueError):
        return None


def kill_during(forker, phase: str, delay: float, cfg: RunConfig, latents: Path) -> None:
    """Start a build, wait for `phase` to begin, sleep `delay`, then SIGKILL it."""
    log = latents.parent / "build.log"
    job = {"cfg": cfg.public_dict(), "latents": str(latents), "log": str(log)}
    forker.stdin.write(json.dumps(job) + "\n")
    forker.stdin.flush()
    pid = int(forker.stdout.readline())
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            rows = manifest_rows(latents)
            if rows is not None and (phase == "pass" or rows == N_SEQS):
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"the build never reached the {phase}: {log.read_text()[-2000:]}")
        time.sleep(delay)
    finally:
        os.kill(pid, signal.SIGKILL)
        code = int(forker.stdout.readline())
    assert code == -signal.SIGKILL, f"the {phase} ended within {delay:.2f} s: stretch it"


@pytest.mark.parametrize(
    ("phase", "seed"),
    [("pass", 0), ("pass", 1), ("pass", 2), ("merge", 0), ("merge", 1), ("merge", 2)],
)
def test_kill_9_then_rerun_is_byte_identical(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, forker, tmp_path, phase, seed
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    latents = tmp_path / "latents"
    # The pass lasts at least 16 x 0.06 s, the merge at least 12 blocks x 0.03 s per thread.
    delay = random.Random(seed).uniform(0.0, 0.7 if phase == "pass" else 0.3)
    kill_during(forker, phase, delay, cfg, latents)
    assert not (latents / HOOK / "config.json").exists(), "killed, yet complete"
    build_cache(cfg, latents)  # the rerun, with the default settings
    assert_identical(latents, reference)  # no temp file, no staging folder either


# ------------------------------------------------------------------------------ injected crashes
class Crash(BaseException):
    """Stands for a kill at a chosen point (BaseException: nothing in the code catches it)."""


def crash_at(monkeypatch, target, name: str, on_call: int = 1) -> None:
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= on_call:  # and every call after it, as after a kill (other threads)
            raise Crash(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


CRASH_POINTS = {
    # merge step 1 done (shard file written), step 2 (its record) not
    "before a merge is recorded": (spill.HookpointCache, "save_manifest", 2),
    # merge step 2 done, step 3 (chunk removal) not: the second shard's record goes through
    "before chunks are removed": (merge, "drop_chunks", 2),
    # sealed (config.json written in staging), not swapped
    "before the swap": (staging, "commit", 1),
    # the old cache moved aside, the new one not yet in place
    "between the renames": (staging, "_rename", 2),
    # the new cache in place, the old one not yet removed
    "before the old cache is removed": (staging, "_remove", 1),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_at_each_commit_step_then_rerun(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, older, tmp_path, monkeypatch, point
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    latents = tmp_path / "latents"
    # An older complete cache of another key is there, so every swap step has work to do.
    shutil.copytree(older, latents)
    monkeypatch.setattr(spill, "CHUNK_RUNS", 4)  # several chunks, so the merge has steps
    target, name, on_call = CRASH_POINTS[point]
    crash_at(monkeypatch, target, name, on_call)
    with pytest.raises(Crash):
        build_cache(cfg, latents)
    monkeypatch.undo()
    # At every instant a complete cache, old or new, is there (or is what recovery swaps in).
    verify_cache(staging.current_folder(latents, HOOK))
    build_cache(cfg, latents)
    assert_identical(latents, reference)


def test_merge_steps_are_recorded(tiny_model_dir, tiny_corpus, tiny_sae_dir, tmp_path, monkeypatch):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    monkeypatch.setattr(spill, "CHUNK_RUNS", 4)
    crash_at(monkeypatch, merge, "seal")
    with pytest.raises(Crash):
        build_cache(cfg, tmp_path)
    staged = staging_folder(tmp_path, HOOK)
    manifest = json.loads((staged / MANIFEST).read_text())
    assert manifest["rows_done"] == N_SEQS and manifest["merged"] == [0, 1, 2]
    names = sorted(p.name for p in staged.iterdir())
    assert names == [MANIFEST, "shard_0.safetensors", "shard_1.safetensors",
                     "shard_2.safetensors", "tokens.safetensors"]  # fmt: skip
    assert not (tmp_path / HOOK).exists()  # nothing is in place before the swap


# ------------------------------------------------------------------------------ failed rebuilds
@pytest.mark.parametrize(
    "bad",
    [
        {"dataset_column": "no_such_column"},
        {"dataset_split": "no_such_split"},
        {"dataset_repo": "/no/such/corpus.jsonl"},
        {"hookpoints": [HOOK, "layers.99"], "n_tokens": N_TOKENS // 2},
    ],
)
def test_failed_rebuild_keeps_the_complete_cache(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, tmp_path, bad
):
    latents = tmp_path / "latents"
    shutil.copytree(reference, latents)
    with pytest.raises(UserError):
        build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, **bad), latents)
    assert_identical(latents, reference)


def test_interrupted_rebuild_keeps_the_old_cache_until_the_new_is_complete(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, tmp_path, monkeypatch, caplog
):
    latents = tmp_path / "latents"
    shutil.copytree(reference, latents)
    other = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, n_tokens=N_TOKENS // 2)
    monkeypatch.setattr(spill, "CHUNK_RUNS", 1)
    crash_at(monkeypatch, models, "forward_to_hooks", 4)
    with pytest.raises(Crash):
        build_cache(other, latents)
    assert (staging_folder(latents, HOOK) / MANIFEST).exists()
    assert snapshot(latents / HOOK) == snapshot(reference / HOOK)  # untouched
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        build_cache(other, latents)
    assert "resuming cache" in caplog.text
    assert CacheReader(latents / HOOK).config["n_tokens"] == N_TOKENS // 2
    assert not (latents / STAGING_DIR).exists()


# ------------------------------------------------------------------------------ damaged files
def damage(folder: Path, how: str) -> str:
    """Damage a copy of a cache; returns the name of the file that verify_cache must name."""
    shard, tokens, config = (
        folder / "shard_1.safetensors",
        folder / "tokens.safetensors",
        folder / "config.json",
    )
    if how == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-100])
        return shard.name
    if how == "truncated tokens":
        tokens.write_bytes(tokens.read_bytes()[:-4])
        return tokens.name
    if how == "corrupt header":
        raw = bytearray(shard.read_bytes())
        raw[8:20] = b"#" * 12
        shard.write_bytes(bytes(raw))
        return shard.name
    if how == "missing shard":
        shard.unlink()
        return shard.name
    if how == "trailing bytes":
        shard.write_bytes(shard.read_bytes() + b"\0" * 8)
        return shard.name
    if how == "entry count":
        data = json.loads(config.read_text())
        data["shards"][1]["n"] += 1
        config.write_text(json.dumps(data))
        return shard.name
    if how == "corrupt config":
        config.write_text("{not json")
        return config.name
    raise ValueError(how)


DAMAGES = ["truncated shard", "truncated tokens", "corrupt header", "missing shard",
           "trailing bytes", "entry count", "corrupt config"]  # fmt: skip


@pytest.mark.parametrize("how", DAMAGES)
def test_verify_cache_names_the_damaged_file(reference, tmp_path, how):
    folder = tmp_path / HOOK
    shutil.copytree(reference / HOOK, folder)
    verify_cache(folder)  # whole before the damage
    name = damage(folder, how)
    with pytest.raises(UserError) as err:
        verify_cache(folder)
    message = str(err.value)
    assert "\n" not in message and f"{folder / name}" in message, message
    assert "--overwrite cache" in message


def test_truncated_shard_message_gives_both_sizes(reference, tmp_path):
    folder = tmp_path / HOOK
    shutil.copytree(reference / HOOK, folder)
    size = (folder / "shard_0.safetensors").stat().st_size
    with open(folder / "shard_0.safetensors", "r+b") as fh:
        fh.truncate(size - 10)
    with pytest.raises(
        UserError, match=f"is truncated \\(expected {size} bytes, found {size - 10}\\)"
    ):
        verify_cache(folder)


@pytest.mark.parametrize("how", ["truncated shard", "corrupt header"])
def test_damaged_cache_is_refused_at_reuse_and_by_the_reader(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, tmp_path, how, monkeypatch
):
    latents = tmp_path / "latents"
    shutil.copytree(reference, latents)
    name = damage(latents / HOOK, how)
    before = snapshot(latents)
    monkeypatch.setattr(models, "load_subject_model", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(UserError, match=name):
        build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus), latents)
    assert snapshot(latents) == before
    reader = CacheReader(latents / HOOK)
    with pytest.raises(UserError, match=name):
        reader.latent(60)  # a latent of shard 1


def test_other_format_is_rebuilt_with_a_log_line(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, tmp_path, caplog
):
    latents = tmp_path / "latents"
    shutil.copytree(reference, latents)
    config = latents / HOOK / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "format": 1}))
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus), latents)
    assert "cache format changed from 1 to 2" in caplog.text
    assert_identical(latents, reference)


# ------------------------------------------------------------------------------ temp files
def test_sweep_temp_removes_only_killed_writes(tmp_path, caplog):
    (tmp_path / "a" / "b").mkdir(parents=True)
    temps = [
        tmp_path / ".config.json.k3j_x9q2.tmp",
        tmp_path / "a" / "b" / ".shard_0.safetensors.abcdefgh.tmp",
    ]
    kept = [
        tmp_path / "notes.tmp",
        tmp_path / ".hidden.tmp",
        tmp_path / "a" / "shard_0.safetensors",
        tmp_path / ".x.toolongname.tmp",
    ]
    for path in temps + kept:
        path.write_text("x")
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        assert sweep_temp(tmp_path) == 2
    assert not any(p.exists() for p in temps) and all(p.exists() for p in kept)
    assert ".config.json.k3j_x9q2.tmp" in caplog.text
    assert sweep_temp(tmp_path / "missing") == 0


def test_build_start_sweeps_temp_files(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, tmp_path
):
    latents = tmp_path / "latents"
    shutil.copytree(reference, latents)
    (latents / HOOK / ".shard_2.safetensors.a1b2c3d4.tmp").write_bytes(b"half a shard")
    (latents / HOOK / ".config.json.zzzzzzzz.tmp").write_text("{")
    build_cache(make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus), latents)  # reused
    assert_identical(latents, reference)


# ------------------------------------------------------------------------------ the key
def test_key_covers_dtype_and_8bit(tiny_model_dir, tiny_corpus, tiny_sae_dir, reference):
    folder = reference / HOOK
    base = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    assert reuse_reason(folder, cache_key(base, HOOK), overwrite=False) is None
    for field, value in (("dtype", "float16"), ("load_in_8bit", True)):
        cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, **{field: value})
        why = reuse_reason(folder, cache_key(cfg, HOOK), overwrite=False)
        assert why is not None and why.startswith(f"{field} changed"), why


def test_key_notices_a_retrained_sparse_model(
    tiny_model_dir, tiny_corpus, tmp_path, monkeypatch, caplog
):
    sae = write_sparsify_sae(tmp_path / "sae", HOOK, seed=3)
    cfg = make_cfg(tiny_model_dir, sae, tiny_corpus, n_tokens=512)
    before = cache_key(cfg, HOOK)
    folder = build_cache(cfg, tmp_path / "latents")[HOOK]
    write_sparsify_sae(tmp_path / "sae", HOOK, seed=4)  # same path, same shapes, new weights
    after = cache_key(cfg, HOOK)
    assert key_difference(before, after)[0] == "sparse_model_fingerprint"
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        build_cache(cfg, tmp_path / "latents")
    assert "sparse_model_fingerprint changed" in caplog.text
    assert (
        CacheReader(folder).config["sparse_model_fingerprint"] == after["sparse_model_fingerprint"]
    )


def test_written_config_matches_the_schema(reference):
    from autointerp_full.schemas import validate_artifact

    validate_artifact("cache", reference)
    config = json.loads((reference / HOOK / "config.json").read_text())
    assert {"dtype", "load_in_8bit", "sparse_model_fingerprint", "format"} <= set(config)


def test_reused_hookpoints_decides_like_build_cache_without_torch(
    tiny_model_dir, tiny_corpus, tiny_sae_dir, reference, tmp_path
):
    cfg = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus)
    # Torch-free, so that a check before the run stays cheap.
    code = (
        "import json, sys\n"
        "from autointerp_full.cache import reused_hookpoints\n"
        "from autointerp_full.config import RunConfig\n"
        "cfg = RunConfig(**json.loads(sys.argv[1]))\n"
        "print(json.dumps(reused_hookpoints(cfg, sys.argv[2])), 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg.public_dict()), str(reference)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [json.dumps([HOOK]), "False"], out.stderr
    other = make_cfg(tiny_model_dir, tiny_sae_dir, tiny_corpus, n_tokens=N_TOKENS // 2)
    assert reused_hookpoints(other, reference) == []
    latents = tmp_path / "latents"
    shutil.copytree(reference, latents)
    damage(latents / HOOK, "truncated shard")
    with pytest.raises(UserError, match="shard_1.safetensors is truncated"):
        reused_hookpoints(cfg, latents)
    assert reused_hookpoints(other, latents) == []  # rebuilt anyway: its damage does not matter


def test_sweep_temp_knows_atomic_write_names(tmp_path):
    from autointerp_full.io import atomic_write, is_temp_file

    seen = []
    atomic_write(
        tmp_path / "shard_0.safetensors", lambda p: seen.append(p.name) or p.write_text("x")
    )
    assert is_temp_file(seen[0]) and not is_temp_file("shard_0.safetensors"), seen
