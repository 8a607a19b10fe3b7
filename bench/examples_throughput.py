"""Example building against the read limit, on a synthetic cache (no model).

Writes a format-2 cache of about 10M tokens with the cache's own file writers: thousands of
latents whose firing rates are log-uniform between 1e-5 and 3e-3 (most of a TopK SAE's
latents), plus a few dense ones firing on 5-30% of tokens. Then times
  (a) reading the whole cache once through CacheReader.iter_latents, the path the examples
      use (cold: the files' pages dropped first with posix_fadvise; and warm),
  (b) the examples stage itself (stages.examples_stage, default settings): every latent's
      examples built and its file written (fsync'd, renamed into place),
  (c) building the same records in the same worker processes, without writing them,
and prints (b) / (a) and (c) / (a), with the peak memory of the stage's processes.

    python bench/examples_throughput.py                      # 10M tokens, 4096 latents
    python bench/examples_throughput.py --n_tokens 2000000 --num_proc 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from autointerp_full import models  # noqa: E402
from autointerp_full.cache import CacheReader  # noqa: E402
from autointerp_full.cache.format import (  # noqa: E402
    FORMAT_VERSION,
    shard_bounds,
    shard_name,
    token_code,
)
from autointerp_full.cache.runs import Run  # noqa: E402
from autointerp_full.cache.tensorio import save_run, save_tokens  # noqa: E402
from autointerp_full.config import RunConfig  # noqa: E402
from autointerp_full.examples import ExampleBuilder, load_tokenizer  # noqa: E402


def firing_rates(n_latents: int, n_dense: int, rng: np.random.Generator) -> np.ndarray:
    rates = np.exp(rng.uniform(np.log(1e-5), np.log(3e-3), n_latents))
    dense = rng.choice(n_latents, n_dense, replace=False)
    rates[dense] = rng.uniform(0.05, 0.3, n_dense)
    return rates


def write_cache(folder: Path, args: argparse.Namespace, vocab: int) -> int:
    """A synthetic cache in `folder`; returns its number of non-zeros."""
    rng = np.random.default_rng(args.seed)
    n_seqs = -(-args.n_tokens // args.ctx_len)
    n_tokens = n_seqs * args.ctx_len
    folder.mkdir(parents=True)
    tokens = torch.from_numpy(rng.integers(0, vocab, (n_seqs, args.ctx_len), dtype=np.int32))
    save_tokens(folder / "tokens.safetensors", tokens, token_code(vocab))
    rates = firing_rates(args.latents, args.dense, rng)
    shards, total = [], 0
    for i, (start, end) in enumerate(shard_bounds(args.latents, args.n_splits)):
        flats, counts = [], [0]
        for j in range(start, end):
            flat = np.unique(rng.integers(0, n_tokens, rng.binomial(n_tokens, rates[j])))
            flats.append(flat)
            counts.append(len(flat))
        n = sum(counts)
        values = (rng.gamma(2.0, 1.5, n) + 0.05).astype(np.float16)
        run = Run(
            latents=torch.zeros(0, dtype=torch.int32),  # implied by the offsets on disk
            flat=torch.from_numpy(np.concatenate(flats).astype(np.int64)),
            values=torch.from_numpy(values),
        )
        offsets = torch.from_numpy(np.cumsum(counts).astype(np.int64))
        save_run(folder / shard_name(i), run, offsets, n_tokens, start, end)
        shards.append({"file": shard_name(i), "start": start, "end": end, "n": n})
        total += n
    config = {
        "hookpoint": "layers.0",
        "model": "synthetic",
        "num_latents": args.latents,
        "n_seqs": n_seqs,
        "ctx_len": args.ctx_len,
        "vocab_size": vocab,
        "format": FORMAT_VERSION,
        "shards": shards,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return total


def drop_pages(folder: Path) -> None:
    """Ask the kernel to forget the cache files' pages, so the next read comes from disk."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(folder: Path) -> tuple[float, int]:
    began = time.perf_counter()
    reader = CacheReader(folder)
    entries = 0
    for _latent, flat, _values in reader.iter_latents(range(reader.num_latents)):
        entries += len(flat)
    reader.tokens()
    reader.close()
    return time.perf_counter() - began, entries


def build_all(folder: Path, cfg: RunConfig, tokenizer_dir: Path) -> tuple[float, int, int]:
    began = time.perf_counter()
    reader = CacheReader(folder)
    latents = list(range(reader.num_latents))
    tokenizer = load_tokenizer(str(tokenizer_dir))
    builder = ExampleBuilder(cfg, reader, None, tokenizer=tokenizer, latents=latents)
    built = skipped = 0
    # Built where the stage builds them (the workers), then dropped.
    for _latent, has_record, _count in builder.write_many(latents, lambda _windows: None):
        built += has_record
        skipped += not has_record
    reader.close()
    return time.perf_counter() - began, built, skipped


def stage_in_child(work: Path, num_proc: int, ctx_len: int) -> dict:
    """The examples stage into a fresh folder, in a fresh interpreter as a real run has it (this
    one holds the generated cache): seconds, files and bytes written, and the peak resident
    memory of that process and of its largest worker."""
    code = (
        "import json, resource, shutil, sys, time; from pathlib import Path; "
        "from autointerp_full import stages; from autointerp_full.config import RunConfig; "
        "work = Path(sys.argv[1]); out = work / 'examples'; shutil.rmtree(out, True); "
        "cfg = RunConfig(cache_ctx_len=int(sys.argv[3]), pipeline_num_proc=int(sys.argv[2]), "
        "hookpoints=['layers.0']); "
        "t = time.perf_counter(); stages.examples_stage(cfg, work / 'latents', out); "
        "s = time.perf_counter() - t; files = list(out.glob('*_latent_*.json')); "
        # VmHWM: ru_maxrss would carry the forking bench's peak across exec.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print(json.dumps({'seconds': s, 'files': len(files), "
        "'bytes': sum(p.stat().st_size for p in files), 'rss_main': int(hwm.split()[1]) / 1024, "
        "'rss_worker': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
    )
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", code, str(work), str(num_proc), str(ctx_len)],
        check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_tokens", type=int, default=10_000_000)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--dense", type=int, default=16, help="latents firing on 5-30%% of tokens")
    parser.add_argument("--ctx_len", type=int, default=256)
    parser.add_argument("--n_splits", type=int, default=5)
    parser.add_argument("--num_proc", type=int, default=2, help="--pipeline_num_proc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="examples_bench_"))
    # The tokenizer as a plain folder, as a hub model's is (a .gguf one takes seconds to load).
    tokenizer_dir = work / "tokenizer"
    tokenizer = load_tokenizer(str(models.smollm2_gguf_path()))
    tokenizer.save_pretrained(str(tokenizer_dir))
    folder = work / "latents" / "layers.0"
    began = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    nnz = write_cache(folder, args, len(tokenizer))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model": str(tokenizer_dir)}))
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(
        f"synthetic cache: {args.n_tokens} tokens, {args.latents} latents ({args.dense} dense), "
        f"{nnz} non-zeros ({nnz / args.n_tokens:.1f} per token), {size / 1e6:.0f} MB, "
        f"written in {time.perf_counter() - began:.0f} s"
    )
    cfg = RunConfig(
        cache_ctx_len=args.ctx_len, pipeline_num_proc=args.num_proc, hookpoints=["layers.0"]
    )

    drop_pages(folder)
    cold, entries = read_all(folder)
    warm, _ = read_all(folder)
    assert entries == nnz
    drop_pages(folder)
    stage = stage_in_child(work, args.num_proc, args.ctx_len)
    stage_s, files, written = stage["seconds"], stage["files"], stage["bytes"]
    build_s, built, skipped = build_all(folder, cfg, tokenizer_dir)
    assert built == files
    print(f"(a) read the whole cache once: {cold:.2f} s cold, {warm:.2f} s warm")
    print(
        f"(b) examples stage, {args.num_proc} processes, default settings: {stage_s:.2f} s; "
        f"{files} files ({written / 1e6:.0f} MB), {skipped} latents skipped "
        f"(< {cfg.min_examples} activating windows); peak memory {stage['rss_main']:.0f} MB "
        f"(main process), {stage['rss_worker']:.0f} MB (largest worker)"
    )
    print(f"(c) the same records built, not written: {build_s:.2f} s")
    print(
        f"ratio (b) / (a): {stage_s / cold:.1f} against the cold read "
        f"({stage_s / warm:.1f} against the warm read); (c) / (a): {build_s / cold:.1f}"
    )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
