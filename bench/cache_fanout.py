"""Cache fan-out: one hookpoint's cache built as N token-row ranges and merged, against one build.

Builds the cache in a single process (time T), then for each N builds the N ranges one after
the other (as N GPU steps would run them side by side), merges them, and checks the merged
files are byte-identical to the single build. Each build_cache call loads the model and the
SAE (reused within this process: the load is timed once on its own, as part of a step's
start-up) and tokenises every row, as a range step does. The projected wall time with N
workers is max(range) + merge (pod start-up and the model load not counted).

    python bench/cache_fanout.py                        # SmolLM2-135M (GGUF), demo SAE, CPU
    python bench/cache_fanout.py --n_tokens 4096 --batch_size 4 --ranges 2,4  # quick check
    python bench/cache_fanout.py --device cuda --n_tokens 1048576 --batch_size 64 --ranges 2,4,8
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from autointerp_full import models, sparse  # noqa: E402
from autointerp_full.cache import CacheReader, build_cache  # noqa: E402
from autointerp_full.cache.fanout import merge_parts, range_rows  # noqa: E402
from autointerp_full.config import RunConfig  # noqa: E402

ENWIKI = REPO.parent / "shared" / "data" / "enwiki-2015"


def corpus(work: Path) -> Path:
    """enwiki-2015 as one local JSONL file, or CPython's pydoc topics where it is absent
    (a fresh clone). One file in `work`, so every build reads the same rows."""
    path = work / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        if ENWIKI.is_dir():
            for part in sorted(ENWIKI.glob("*.jsonl.gz")):
                with gzip.open(part, "rt", encoding="utf-8") as fh:
                    for line in fh:
                        out.write(json.dumps({"text": json.loads(line)["text"]}) + "\n")
        else:
            from pydoc_data import topics

            for text in topics.topics.values():
                out.write(json.dumps({"text": text}) + "\n")
    return path


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def timed_build(cfg: RunConfig, out: Path, hookpoint: str, rows=None) -> tuple[float, Path]:
    began = time.perf_counter()
    folder = build_cache(cfg, out, rows=rows)[hookpoint]
    return time.perf_counter() - began, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model dir or .gguf (default: SmolLM2 GGUF)")
    parser.add_argument("--sae", default=str(REPO / "shared" / "demo_sae"))
    parser.add_argument("--hookpoint", default="layers.15")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n_tokens", type=int, default=32_768)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--ctx_len", type=int, default=256)
    parser.add_argument("--n_splits", type=int, default=4)
    parser.add_argument("--ranges", default="2,4", help="comma-separated numbers of ranges N")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    ns = [int(n) for n in args.ranges.split(",")]

    work = Path(tempfile.mkdtemp(prefix="cache_fanout_"))
    source = args.model or str(models.smollm2_gguf_path())
    cfg = RunConfig(
        model=source,
        sparse_model=args.sae,
        hookpoints=[args.hookpoint],
        dataset_repo=str(corpus(work)),
        dataset_split="train",
        n_tokens=args.n_tokens,
        cache_ctx_len=args.ctx_len,
        batch_size=args.batch_size,
        n_splits=args.n_splits,
        device=args.device,
        dtype=args.dtype,
        pipeline_num_proc=1,
    )
    # The fixed cost of a step before its model pass (part of a pod's start-up t0, which the
    # projection leaves out): timed here once; the builds below reuse the loaded model.
    began = time.perf_counter()
    model, _ = models.load_subject_model(source, device=args.device, dtype=args.dtype)
    param = next(model.parameters())
    sparse.load_sparse_models(args.sae, [args.hookpoint], device=param.device, dtype=param.dtype)
    load_s = time.perf_counter() - began
    dtype = param.dtype
    del model, param
    # Warm-up on one batch (the dataset's arrow cache, kernels, allocator) outside the timings.
    build_cache(dataclasses.replace(cfg, n_tokens=args.batch_size * args.ctx_len), work / "warmup")

    T, single = timed_build(cfg, work / "single", args.hookpoint)
    reader = CacheReader(single)
    n_tok = reader.n_tokens
    nnz = int(reader.firing_counts().sum())
    single_bytes = dir_bytes(single)
    shard_bytes = sum((single / s["file"]).stat().st_size for s in reader.shards)
    reader.close()
    print(
        f"model: {Path(source).name} + SAE {args.sae}; hookpoint {args.hookpoint}; device "
        f"{args.device}; dtype {dtype}; {n_tok} tokens; batch {args.batch_size} x {args.ctx_len}"
    )
    print(f"model + SAE load: {load_s:.1f} s (paid by every step at its start, not timed below)")
    print(
        f"single build: T = {T:.1f} s ({n_tok / T:,.0f} tokens/s); {single_bytes:,} bytes; "
        f"{nnz:,} non-zeros, {shard_bytes / nnz:.2f} bytes per non-zero in shards "
        f"({single_bytes / nnz:.2f} with tokens and config)"
    )

    for n in ns:
        parts, times = [], []
        for k in range(n):
            rows = range_rows(n_tok, args.ctx_len, args.batch_size, k, n)
            seconds, part = timed_build(cfg, work / f"n{n}" / f"range_{k}", args.hookpoint, rows)
            parts.append(part)
            times.append(seconds)
            print(
                f"N={n} range {k}: rows [{rows[0]}, {rows[1]}) {seconds:.1f} s, "
                f"{dir_bytes(part):,} bytes"
            )
        began = time.perf_counter()
        merged = merge_parts(parts, work / f"n{n}" / "merged", args.hookpoint)
        merge_s = time.perf_counter() - began
        assert same_files(merged, single), f"N={n}: merged cache differs from the single build"
        with CacheReader(merged) as r:
            merged_nnz = int(r.firing_counts().sum())
        merged_bytes = dir_bytes(merged)
        wall = max(times) + merge_s
        print(
            f"N={n} merge: {merge_s:.2f} s, {merged_bytes / 1e6 / merge_s:,.1f} MB/s written; "
            f"byte-identical to the single build; {merged_bytes / merged_nnz:.2f} bytes per "
            f"non-zero"
        )
        print(
            f"N={n}: sum(ranges) / T = {sum(times) / T:.2f}; with {n} workers "
            f"max(range) + merge = {wall:.1f} s; speed-up T / (max + merge) = {T / wall:.2f}x"
        )
    if args.keep:
        print(f"work folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
