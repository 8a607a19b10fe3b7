"""LLM-stage throughput of the real explain and score stages against a server of known capacity.

Starts the scripted OpenAI-compatible test server with a fixed per-request delay and a
concurrency cap, so its capacity is exactly cap/delay requests per second. Builds real example
files (a synthetic cache of random tokens, no model, then the examples stage), and runs the
product's explain stage and score stage (autointerp_full.stages, detection and fuzz scorers)
on them. The ratio is the requests per second each stage achieved over the server's capacity:
a stage that keeps the server saturated reaches a ratio near 1.0; the target is >= 0.95.
The stages' own work (prompt building, parsing, writing files) is inside the timing.

    python bench/llm_throughput.py [--latents 200] [--delay 0.2] [--cap 16]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from autointerp_full import models, stages  # noqa: E402
from autointerp_full.config import RunConfig  # noqa: E402
from autointerp_full.examples import load_tokenizer  # noqa: E402

HOOK = "layers.0"


def make_examples(work: Path, cfg: RunConfig, latents: int) -> Path:
    """Real example files: a synthetic cache (examples_throughput.write_cache) of latents dense
    enough that every one gets examples, then the examples stage."""
    from examples_throughput import write_cache

    model = str(models.smollm2_gguf_path())
    args = argparse.Namespace(
        n_tokens=400_000, latents=latents, dense=latents, ctx_len=cfg.cache_ctx_len,
        n_splits=2, seed=0,
    )  # fmt: skip
    folder = work / "latents" / HOOK
    write_cache(folder, args, len(load_tokenizer(model)))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model": model}))
    return stages.examples_stage(cfg, work / "latents", work / "examples")


def server_stats(server: subprocess.Popen) -> dict:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("stats\n")
    server.stdin.flush()
    return json.loads(server.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latents", type=int, default=400, help="latents explained")
    parser.add_argument("--score_latents", type=int, default=40, help="of those, latents scored")
    parser.add_argument("--delay", type=float, default=0.5, help="server seconds per request")
    parser.add_argument("--cap", type=int, default=32, help="server concurrency cap")
    parser.add_argument("--concurrency", type=int, default=64, help="--max_concurrent_requests")
    args = parser.parse_args()

    # The server runs in its own process (own interpreter lock), as a real LLM server would.
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "llm_test_server.py"), "--delay", str(args.delay),
         "--cap", str(args.cap), "--responder", "llm_test_server:interp_responder"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="llm_bench_"))
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        cfg = RunConfig(
            model=str(models.smollm2_gguf_path()),
            hookpoints=[HOOK],
            cache_ctx_len=256,
            explainer_provider="vllm",
            explainer_api_base_url=url,
            explainer_model="test-model",
            max_concurrent_requests=args.concurrency,
            scorers=["detection", "fuzz"],
        )
        examples = make_examples(work, cfg, args.latents)
        n_files = len(list(examples.glob("*_latent_*.json")))
        capacity = args.cap / args.delay
        print(
            f"server: cap {args.cap}, delay {args.delay:g}s -> {capacity:g} req/s; client "
            f"--max_concurrent_requests {cfg.max_concurrent_requests}; {n_files} example files; "
            "the real explain and score stages"
        )
        print(
            f"{'stage':<8} {'latents':>7} {'requests':>8} {'seconds':>8} {'req/s':>7} {'ratio':>6}"
        )
        ratios = []
        cpu0 = time.process_time()
        runs = (
            ("explain", lambda: stages.explain_stage(cfg, examples, work / "explanations")),
            ("score", lambda: stages.score_stage(
                cfg, examples, work / "explanations", work / "scores", (0, args.score_latents))),
        )  # fmt: skip
        for name, run in runs:
            before = server_stats(server)["chat_requests"]
            began = time.perf_counter()
            run()
            elapsed = time.perf_counter() - began
            requests = server_stats(server)["chat_requests"] - before
            rate = requests / elapsed
            ratios.append(rate / capacity)
            n = n_files if name == "explain" else args.score_latents
            print(
                f"{name:<8} {n:>7} {requests:>8} {elapsed:>8.2f} {rate:>7.1f} "
                f"{rate / capacity:>6.2f}"
            )
        failures = [
            f"{p.name}: {p.read_text().strip()[:80]}" for p in (work / "scores").rglob("*failure*")
        ]
        stats = server_stats(server)
        n_req = stats["chat_requests"]
        print(
            f"peak requests in flight at the server: {stats['peak_in_flight']} "
            f"(client limit {cfg.max_concurrent_requests}); failure files: {failures or 'none'}"
        )
        print(
            f"CPU per request: stages and client {(time.process_time() - cpu0) / n_req * 1000:.1f}"
            f" ms, test server {stats['cpu_s'] / n_req * 1000:.1f} ms (load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        print("target ratio >= 0.95:", "met" if min(ratios) >= 0.95 else "NOT met")
    finally:
        if server.stdin:
            server.stdin.close()  # EOF stops the server
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
