"""LLM-stage throughput of the real explain and score stages against a server of known capacity.

Starts the scripted OpenAI-compatible test server with a fixed per-request delay and a
concurrency cap, so its capacity is exactly cap/delay requests per second; explain requests
get their own delay (--explain_delay), as an explanation generates about ten times the tokens
of a scorer's answer and so holds a real server's slot for longer. Builds real example
files (a synthetic cache of random tokens, no model, then the examples stage), and runs the
product's explain stage and score stage (autointerp_full.stages, detection and fuzz scorers)
on them. The ratio is the requests per second each stage achieved over the server's capacity:
a stage that keeps the server saturated reaches a ratio near 1.0; the target is >= 0.95.
The stages' own work (prompt building, parsing, writing files) is inside the timing.

Beside each ratio is its ceiling: the best ratio any client could reach for the same requests on
this server. Requests all last one delay, so they run in whole rounds of `cap` (a last round
only partly full wastes the rest), and the structured-output probe (one request per
response_format style, one style after another: this server honours neither) must answer before
any request with a schema goes out. A short run is far from 1.0 for those reasons alone.

    python bench/llm_throughput.py [--latents 400] [--explain_delay 2] [--delay 0.5] [--cap 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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

from autointerp_full import layout, models, stages  # noqa: E402
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


def start_server(delay: float, cap: int) -> subprocess.Popen:
    """The test server in its own process (own interpreter lock), as a real LLM server is."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "llm_test_server.py"), "--delay", str(delay),
         "--cap", str(cap), "--responder", "llm_test_server:interp_responder"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )  # fmt: skip


def server_stats(server: subprocess.Popen) -> dict:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("stats\n")
    server.stdin.flush()
    return json.loads(server.stdout.readline())


def attempts(usage_file: Path) -> int:
    """Requests the stage's generate() calls sent (usage.json): each call's first attempt,
    whether it succeeded or failed, and its retries. Server requests beyond these are probes."""
    usage = json.loads(usage_file.read_text())
    counts = [v for v in usage.values() if isinstance(v, dict)]
    return sum(c["requests"] + c["failures"] + c["retries"] for c in counts)


def ceiling(requests: int, probes: int, cap: int, delay: float) -> float:
    """The best ratio for `requests` of one `delay` each on `cap` slots when `probes` of them run
    one after another before the others, which then take whole rounds of `cap`."""
    rounds = probes + math.ceil((requests - probes) / cap)
    return requests / (rounds * delay) / (cap / delay)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latents", type=int, default=400, help="latents explained")
    parser.add_argument("--score_latents", type=int, default=40, help="of those, latents scored")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds per scorer request")
    parser.add_argument(
        "--explain_delay", type=float, default=2.0, help="seconds per explain request"
    )
    parser.add_argument("--cap", type=int, default=32, help="server concurrency cap")
    parser.add_argument("--concurrency", type=int, default=64, help="--max_concurrent_requests")
    args = parser.parse_args()

    servers = {"explain": start_server(args.explain_delay, args.cap),
               "score": start_server(args.delay, args.cap)}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="llm_bench_"))
    try:
        urls = {}
        for name, server in servers.items():
            assert server.stdout is not None
            urls[name] = server.stdout.readline().strip()
        cfg = RunConfig(
            model=str(models.smollm2_gguf_path()),
            hookpoints=[HOOK],
            cache_ctx_len=256,
            explainer_provider="vllm",
            explainer_api_base_url=urls["explain"],
            explainer_model="test-model",
            max_concurrent_requests=args.concurrency,
            scorers=["detection", "fuzz"],
        )
        examples = make_examples(work, cfg, args.latents)
        n_files = len(list(examples.glob("*_latent_*.json")))
        capacities = {"explain": args.cap / args.explain_delay, "score": args.cap / args.delay}
        print(
            f"servers: cap {args.cap}; explain delay {args.explain_delay:g}s -> "
            f"{capacities['explain']:g} req/s, score delay {args.delay:g}s -> "
            f"{capacities['score']:g} req/s; client --max_concurrent_requests "
            f"{cfg.max_concurrent_requests}; {n_files} example files; the real explain and score "
            "stages"
        )
        print(
            f"{'stage':<8} {'latents':>7} {'requests':>8} {'probes':>6} {'seconds':>8} "
            f"{'req/s':>7} {'ratio':>6} {'ceiling':>7}"
        )
        ratios = []
        cpu0 = time.process_time()
        score_cfg = dataclasses.replace(cfg, explainer_api_base_url=urls["score"])
        runs = (
            ("explain", lambda: stages.explain_stage(cfg, examples, work / "explanations")),
            ("score", lambda: stages.score_stage(score_cfg, examples, work / "explanations",
                                                 work / "scores", (0, args.score_latents))),
        )  # fmt: skip
        usage_files = {"explain": layout.usage_file(work / "explanations"),
                       "score": layout.usage_file(work / "scores")}  # fmt: skip
        delays = {"explain": args.explain_delay, "score": args.delay}
        for name, run in runs:
            server, capacity = servers[name], capacities[name]
            before = server_stats(server)["chat_requests"]
            began = time.perf_counter()
            run()
            elapsed = time.perf_counter() - began
            requests = server_stats(server)["chat_requests"] - before
            rate = requests / elapsed
            ratios.append(rate / capacity)
            n = n_files if name == "explain" else args.score_latents
            probes = requests - attempts(usage_files[name])
            best = ceiling(requests, probes, args.cap, delays[name])
            print(
                f"{name:<8} {n:>7} {requests:>8} {probes:>6} {elapsed:>8.2f} {rate:>7.1f} "
                f"{rate / capacity:>6.2f} {best:>7.2f}"
            )
        failures = [
            f"{p.name}: {p.read_text().strip()[:80]}" for p in (work / "scores").rglob("*failure*")
        ]
        stats = [server_stats(server) for server in servers.values()]
        n_req = sum(s["chat_requests"] for s in stats)
        print(
            "peak requests in flight at the servers: "
            f"{', '.join(str(s['peak_in_flight']) for s in stats)} (client limit "
            f"{cfg.max_concurrent_requests}); failure files: {failures or 'none'}"
        )
        server_ms = sum(s["cpu_s"] for s in stats) / n_req * 1000
        print(
            f"CPU per request: stages and client {(time.process_time() - cpu0) / n_req * 1000:.1f}"
            f" ms, test server {server_ms:.1f} ms (load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        print("target ratio >= 0.95:", "met" if min(ratios) >= 0.95 else "NOT met")
    finally:
        for server in servers.values():
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
