"""LLM-stage throughput against a server of known capacity.

Starts the scripted OpenAI-compatible test server with a fixed per-request delay and a concurrency
cap, so its capacity is exactly cap/delay requests per second, then drives N latents through the
explain, detection and fuzz request patterns with the product's client (make_client, bounded
concurrency, retries). A stage that keeps the server saturated reaches a ratio near 1.0; the
target is >= 0.9.

Request patterns (what the explainer and scorers send; raw requests shaped like theirs):
  explain    1 request per latent, n_examples_train highlighted windows in one prompt
  detection  ceil((n_examples_test + n_non_activating) / num_examples_per_scorer_prompt) per latent
  fuzz       the same count, with highlighted tokens

    python bench/llm_throughput.py [--latents 40] [--delay 0.2] [--cap 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from autointerp_full.config import RunConfig  # noqa: E402
from autointerp_full.llm import make_client  # noqa: E402

WORDS = (
    "the river bank money city paris london red blue green run jump walk quickly slowly and "
    "because python code function class import return number market price rose fell"
).split()

SYSTEM_EXPLAIN = (
    "You are a meticulous AI researcher studying one latent of a sparse autoencoder. You will see "
    "text examples in which the latent fires; the tokens where it fires are marked <<like this>>. "
    "Summarise in one short phrase what the marked tokens and their contexts have in common. "
) * 4
SYSTEM_SCORE = (
    "You are an intelligent and meticulous linguistics researcher. You will be given an "
    "explanation of a latent and several text examples. For each example say whether the latent "
    "described by the explanation would fire on it. Answer with a Python list of 1s and 0s. "
) * 3


def window(rng: random.Random, ctx: int, highlight: bool) -> str:
    tokens = [rng.choice(WORDS) for _ in range(ctx)]
    if highlight:
        i = rng.randrange(ctx)
        tokens[i] = f"<<{tokens[i]}>>"
    return " ".join(tokens)


def explain_messages(rng: random.Random, cfg: RunConfig) -> list[dict[str, str]]:
    body = "\n".join(
        f"Example {i + 1}: {window(rng, cfg.example_ctx_len, True)}"
        for i in range(cfg.n_examples_train)
    )
    return [{"role": "system", "content": SYSTEM_EXPLAIN}, {"role": "user", "content": body}]


def score_messages(rng: random.Random, cfg: RunConfig, fuzz: bool) -> list[list[dict[str, str]]]:
    n = cfg.n_examples_test + cfg.n_non_activating
    k = cfg.num_examples_per_scorer_prompt
    prompts = []
    for start in range(0, n, k):
        lines = [
            f"Example {j + 1}: {window(rng, cfg.example_ctx_len, fuzz)}"
            for j in range(min(k, n - start))
        ]
        user = "Explanation: words about money\n\n" + "\n".join(lines)
        prompts.append(
            [{"role": "system", "content": SYSTEM_SCORE}, {"role": "user", "content": user}]
        )
    return prompts


def responder(request: dict) -> str:
    if request["messages"][0]["content"] == SYSTEM_EXPLAIN:
        return "Words about money and markets."
    n = request["messages"][1]["content"].count("\nExample ") + 1
    return "[" + ", ".join("1" if i % 2 else "0" for i in range(n)) + "]"


async def run_stage(cfg: RunConfig, stage: str, n_latents: int) -> tuple[float, int]:
    """Every latent at once, each latent's prompts at once (as the stages do); returns seconds."""
    client = make_client(cfg, stage)
    rng = random.Random(0)
    if stage == "explain":
        per_latent = [[explain_messages(rng, cfg)] for _ in range(n_latents)]
        max_tokens = 256
    else:
        per_latent = [score_messages(rng, cfg, stage == "fuzz") for _ in range(n_latents)]
        max_tokens = 50

    async def latent(prompts: list[list[dict[str, str]]]) -> None:
        await asyncio.gather(*(client.generate(m, max_tokens=max_tokens) for m in prompts))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(latent(p) for p in per_latent))
    finally:
        await client.aclose()
    elapsed = time.perf_counter() - start
    usage = client.usage.as_dict()[stage]
    assert usage["failures"] == 0, usage
    return elapsed, usage["requests"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latents", type=int, default=40, help="latents per scorer stage")
    parser.add_argument("--explain_latents", type=int, default=800, help="latents for explain")
    parser.add_argument("--delay", type=float, default=0.2, help="server seconds per request")
    parser.add_argument("--cap", type=int, default=16, help="server concurrency cap")
    parser.add_argument("--concurrency", type=int, default=32, help="--max_concurrent_requests")
    args = parser.parse_args()

    # The server runs in its own process (own interpreter lock), as a real LLM server would.
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "llm_test_server.py"),
            "--delay",
            str(args.delay),
            "--cap",
            str(args.cap),
            "--responder",
            "bench.llm_throughput:responder",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        url = server.stdout.readline().strip()
        cfg = RunConfig(
            explainer_provider="vllm",
            explainer_api_base_url=url,
            explainer_model="test-model",
            max_concurrent_requests=args.concurrency,
        )
        capacity_rps = args.cap / args.delay
        print(
            f"server: cap {args.cap}, delay {args.delay:g}s -> {capacity_rps:g} req/s; "
            f"client --max_concurrent_requests {cfg.max_concurrent_requests}; raw requests shaped "
            "like the explainer's and scorers'"
        )
        print(
            f"{'stage':<10} {'latents':>7} {'req/lat':>7} {'seconds':>8} "
            f"{'latents/min':>12} {'capacity/min':>13} {'ratio':>6}"
        )
        ratios = []
        cpu0 = time.process_time()
        for stage in ("explain", "detection", "fuzz"):
            n = args.explain_latents if stage == "explain" else args.latents
            elapsed, requests = asyncio.run(run_stage(cfg, stage, n))
            per_latent = requests / n
            achieved = n / elapsed * 60
            capacity = capacity_rps / per_latent * 60
            ratios.append(achieved / capacity)
            print(
                f"{stage:<10} {n:>7} {per_latent:>7.0f} {elapsed:>8.2f} "
                f"{achieved:>12,.0f} {capacity:>13,.0f} {achieved / capacity:>6.2f}"
            )
        server.stdin.write("stats\n")
        server.stdin.flush()
        stats = json.loads(server.stdout.readline())
        n_req = stats["chat_requests"]
        client_ms = (time.process_time() - cpu0) / n_req * 1000
        print(
            f"peak requests in flight at the server: {stats['peak_in_flight']} "
            f"(client limit {cfg.max_concurrent_requests})"
        )
        print(
            f"CPU per request: client {client_ms:.1f} ms, test server "
            f"{stats['cpu_s'] / n_req * 1000:.1f} ms (load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores)"
        )
        print("target ratio >= 0.9:", "met" if min(ratios) >= 0.9 else "NOT met")
    finally:
        if server.stdin:
            server.stdin.close()  # EOF stops the server
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
