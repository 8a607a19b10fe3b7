"""Activation-cache throughput against this machine's limit.

Caches tokens with the real writer (model pass, sparse encoding, chunk files, shard merge) and
compares tokens/s with a floor: the FLOPs per token up to and including the hooked layer
(2 * parameters used + attention 2 * 2 * T * d per layer + SAE encoder 2 * d * L) divided by the
measured throughput of a large dense matmul in the same dtype. The headline ratio takes the
best matmul rate seen just before or after the run; a second ratio takes the rate of a matmul
timed after every forward call (the probe time is left out of the model pass), which is what
the hardware actually offered during the run on a shared machine.

    python bench/cache_throughput.py                          # SmolLM2-135M (GGUF), demo SAE, CPU
    python bench/cache_throughput.py --tiny                   # the tests' tiny Llama, random SAE
    python bench/cache_throughput.py --llama8b --device cuda  # Llama-3-8B shape, random weights
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
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

import torch  # noqa: E402

from autointerp_full import models, sparse  # noqa: E402
from autointerp_full.cache import CacheReader, spill, writer  # noqa: E402
from autointerp_full.cache import forward as cache_forward  # noqa: E402
from autointerp_full.cache.format import FORMAT_VERSION  # noqa: E402
from autointerp_full.data import tokenize_rows  # noqa: E402

ENWIKI = REPO.parent / "shared" / "data" / "enwiki-2015"


# ---------------------------------------------------------------------------------- hardware
def matmul_flops(device: str, dtype: torch.dtype, size: int, seconds: float = 3.0) -> float:
    """Best FLOP/s of a size x size matmul in `dtype` on `device`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = math.inf
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


def flops_per_token(model: torch.nn.Module, hookpoint: str, ctx_len: int, coder) -> float:
    """Matmul FLOPs per token for the layers up to and including the hook, plus the encoder."""
    path = models.hookpoint_path(model, hookpoint)
    parts = path.split(".")
    index = next(i for i, p in enumerate(parts) if p.isdigit())
    layers = model.get_submodule(".".join(parts[:index]))
    last = int(parts[index])
    d = models.hidden_size(model)
    params = sum(p.numel() for layer in layers[: last + 1] for p in layer.parameters())
    attention = 2 * 2 * ctx_len * d * (last + 1)
    return 2 * params + attention + 2 * coder.d_in * coder.num_latents


# ---------------------------------------------------------------------------------- inputs
def corpus_texts() -> list[str]:
    """enwiki-2015 articles, or CPython's pydoc topics where the corpus is absent."""
    if ENWIKI.is_dir():
        texts = []
        for part in sorted(ENWIKI.glob("*.jsonl.gz")):
            with gzip.open(part, "rt", encoding="utf-8") as fh:
                texts += [json.loads(line)["text"] for line in fh]
        return texts
    from pydoc_data import topics

    return list(topics.topics.values())


def random_coder(d: int, num_latents: int, k: int, device: str, dtype: torch.dtype):
    coder = sparse.SparseCoder(d, num_latents, activation="topk", k=k, device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        coder.W_enc.copy_(torch.randn(num_latents, d, generator=gen, device=device) / d**0.5)
        coder.b_enc.copy_(torch.randn(num_latents, generator=gen, device=device) * 0.1)
    return coder.eval().requires_grad_(False)


def llama8b(device: str, dtype: torch.dtype, **shape: int) -> torch.nn.Module:
    """A Llama-3-8B-shaped model with random weights, built on meta then materialised.

    `shape` overrides config sizes (a small copy for smoke tests on the CPU).
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    sizes = dict(
        hidden_size=4096,
        num_hidden_layers=32,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    )
    sizes.update(shape)
    config = LlamaConfig(**sizes, max_position_embeddings=8192, rope_theta=500000.0)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    with torch.device(device):  # its inv_freq buffer was left empty by to_empty
        model.model.rotary_emb = LlamaRotaryEmbedding(config)
    model.eval().requires_grad_(False)
    models.fuse_rms_norms(model)  # as load_subject_model does
    return model


# ---------------------------------------------------------------------------------- timing
class Probe:
    """A short matmul after every forward call, timed apart from the model pass.

    On a shared machine the matmul rate swings by 30% from minute to minute; these probes give
    the rate the hardware offered while the model actually ran.
    """

    def __init__(self, device: str, dtype: torch.dtype, size: int) -> None:
        self.a = torch.randn(size, size, device=device).to(dtype)
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.flops = 0.0
        self.seconds = 0.0

    def forward(self, *args, **kwargs):
        hidden = models.forward_to_hooks(*args, **kwargs)
        self.sync()
        began = time.perf_counter()
        self.a @ self.a
        self.sync()
        self.seconds += time.perf_counter() - began
        self.flops += 2 * self.a.shape[0] ** 3
        return hidden

    @property
    def rate(self) -> float:
        return self.flops / self.seconds if self.seconds else math.nan


def time_writer(model, coder, hookpoint, tokens, batch_size, n_splits, out_dir: Path, probe=None):
    """Seconds for the model pass (with chunk writes, less any probes) and for the shard merge."""
    folder = out_dir / hookpoint
    state = spill.HookpointCache(
        hookpoint, folder, {"hookpoint": hookpoint}, coder, coder.num_latents, n_splits
    )
    spill.start_fresh(state, tokens, "")
    n_seqs, ctx_len = tokens.shape
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    forward = probe.forward if probe else models.forward_to_hooks
    model_s = cache_forward.run_model(model, [state], tokens, batch_size, None, forward)
    if probe:
        model_s -= probe.seconds
    began = time.perf_counter()
    config = {
        "hookpoint": hookpoint,
        "num_latents": coder.num_latents,
        "n_seqs": n_seqs,
        "ctx_len": ctx_len,
        "vocab_size": spill.tokens_vocab(state, tokens),
        "format": FORMAT_VERSION,
    }
    writer.finish(state, config, n_seqs, ctx_len)
    merge_s = time.perf_counter() - began
    return model_s, merge_s, CacheReader(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model dir or .gguf (default: SmolLM2 GGUF)")
    parser.add_argument("--tiny", action="store_true", help="use the tests' tiny Llama")
    parser.add_argument("--llama8b", action="store_true", help="Llama-3-8B shape, random (GPU)")
    parser.add_argument("--sae", default=str(REPO / "shared" / "demo_sae"))
    parser.add_argument("--hookpoint", default=None, help="default: layers.15 (layers.16 for 8B)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n_tokens", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--ctx_len", type=int, default=256)
    parser.add_argument("--n_splits", type=int, default=5)
    parser.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a matmul after each forward call (the hardware's rate during the run)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = models.resolve_device(args.device)
    dtype = models.resolve_dtype(args.dtype, device)
    work = Path(tempfile.mkdtemp(prefix="cache_bench_"))
    if args.llama8b:
        hookpoint = args.hookpoint or "layers.16"
        model = llama8b(device, dtype)
        coder = random_coder(4096, 131072, 192, device, dtype)
        n_tokens = args.n_tokens or 1_000_000
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(
            0,
            128256,
            (math.ceil(n_tokens / args.ctx_len), args.ctx_len),
            generator=gen,
            dtype=torch.int32,
        )
        batch_size = args.batch_size or 64
        name = "Llama-3-8B shape (random weights), TopK SAE 131072 latents, k=192"
    else:
        if args.tiny:
            sys.path.insert(0, str(REPO / "tests"))
            from conftest import build_tiny_model

            source = str(build_tiny_model(work / "tiny_model"))
        else:
            source = args.model or str(models.smollm2_gguf_path())
        model, tokenizer = models.load_subject_model(source, device=device, dtype=args.dtype)
        hookpoint = args.hookpoint or ("layers.1" if args.tiny else "layers.15")
        d = models.hidden_size(model)
        sae_dir = Path(args.sae)
        if (sae_dir / hookpoint).is_dir() and not args.tiny:
            coder = sparse.load_sparse_models(
                str(sae_dir), [hookpoint], device=device, dtype=dtype
            )[hookpoint]
            name = f"{Path(source).name} + SAE {sae_dir}"
        else:
            coder = random_coder(d, 8 * d, 32, device, dtype)
            name = f"{Path(source).name} + random TopK SAE ({8 * d} latents, k=32)"
        n_tokens = args.n_tokens or (200_000 if args.tiny else 32_768)
        tokens = tokenize_rows(corpus_texts(), tokenizer, args.ctx_len, n_tokens)
        batch_size = args.batch_size or 32

    n_tok = tokens.numel()
    print(
        f"model: {name}; hookpoint {hookpoint}; device {device}; dtype {dtype}; "
        f"{n_tok} tokens; batch {batch_size} x {args.ctx_len}; threads {torch.get_num_threads()}"
    )
    # Warm up (allocator, kernels) on one batch outside the measurement.
    writer_dir = work / "latents"
    time_writer(
        model, coder, hookpoint, tokens[:batch_size], batch_size, args.n_splits, work / "warmup"
    )
    # The matmul is timed just before and just after the run, and the better figure taken: on
    # a shared machine this keeps the floor honest without blaming the writer for the load.
    size = 8192 if device.startswith("cuda") else 2048
    before = matmul_flops(device, dtype, size)
    probe = Probe(device, dtype, size) if args.probe else None
    model_s, merge_s, reader = time_writer(
        model, coder, hookpoint, tokens, batch_size, args.n_splits, writer_dir, probe
    )
    after = matmul_flops(device, dtype, size)
    peak = max(before, after)
    nnz = int(reader.firing_counts().sum())
    print(f"matmul {size}x{size}: {before / 1e9:,.1f} GFLOP/s before, {after / 1e9:,.1f} after")
    per_token = flops_per_token(model, hookpoint, args.ctx_len, coder)
    floor = peak / per_token
    rate = n_tok / model_s
    total_rate = n_tok / (model_s + merge_s)
    shard_bytes = sum((reader.path / s["file"]).stat().st_size for s in reader.shards)
    tokens_bytes = (reader.path / "tokens.safetensors").stat().st_size
    print(f"non-zeros cached: {nnz} ({nnz / n_tok:.1f} per token)")
    print(
        f"model pass + chunk writes: {model_s:.2f} s, {rate:,.0f} tokens/s; "
        f"{shard_bytes / max(nnz, 1):.2f} bytes per non-zero on disk (shards, headers and "
        f"offsets included; delphi: 8), tokens {tokens_bytes / n_tok:.1f} bytes per token"
    )
    print(f"shard merge: {merge_s:.2f} s; end to end {total_rate:,.0f} tokens/s")
    print(
        f"matmul throughput ({dtype}): {peak / 1e9:,.1f} GFLOP/s; "
        f"{per_token / 1e9:.3f} GFLOP per token"
    )
    print(f"floor: {floor:,.0f} tokens/s")
    print(f"ratio (model pass): {rate / floor:.1%}; ratio (end to end): {total_rate / floor:.1%}")
    if probe:
        during = probe.rate / per_token
        print(
            f"matmul throughput between batches: {probe.rate / 1e9:,.1f} GFLOP/s; "
            f"floor {during:,.0f} tokens/s; ratio (model pass) {rate / during:.1%}"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
