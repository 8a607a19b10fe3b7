"""How many scorer answers can be read, with and without structured output, from a small model
behind a real OpenAI-compatible server.

Builds a small activation cache of SmolLM2-135M-Instruct with the demo SAE (shared/demo_sae) on
CPython's documentation (as `make demo` does), takes the first --latents latents that have
examples, starts llama.cpp's server (`python -m llama_cpp.server`) on the SmolLM2 GGUF, has it
explain each latent, and then runs detection, fuzz (with --log_probs), intruder and simulation
through the vllm provider twice: --structured_output auto and off. Every answer is checked with
the scorers' own parsers (tests/test_structured_llamacpp.py: AuditClient); unreadable answers
are not re-asked here (--answer_retries 0), so each figure counts first answers.

    python bench/structured_answers.py [--latents 4] [--out results/bench/structured_answers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from autointerp_full.config import RunConfig  # noqa: E402
from autointerp_full.io import atomic_write_json  # noqa: E402

log = logging.getLogger("bench.structured_answers")


def base_config(work: Path, corpus: Path, gguf: str, latents: int) -> RunConfig:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    extra = {"answer_retries": 0} if "answer_retries" in fields else {}
    return RunConfig(
        model=gguf,
        sparse_model=str(ROOT / "shared" / "demo_sae"),
        hookpoints=["layers.15"],
        n_tokens=24576,
        cache_ctx_len=256,
        batch_size=16,
        max_latents=max(3 * latents, 12),
        min_examples=15,
        n_examples_train=10,
        n_examples_test=5,
        n_non_activating=5,
        example_ctx_len=24,
        num_examples_per_scorer_prompt=5,
        dataset_repo=str(corpus),
        dataset_split="train",
        dataset_column="text",
        results_dir=str(work),
        name="structured_answers",
        max_concurrent_requests=2,
        request_timeout=300.0,
        max_retries=2,
        **extra,
    )


def build_records(cfg: RunConfig, work: Path, latents: int) -> list[Any]:
    from autointerp_full.stages import cache_stage, examples_stage, load_records

    run = work / cfg.name
    t0 = time.perf_counter()
    cache_stage(cfg, run / "latents")
    examples_stage(cfg, run / "latents", run / "examples")
    log.info("cache and examples in %.0fs", time.perf_counter() - t0)
    return load_records(cfg, run / "examples")[:latents]


async def explain_all(cfg: RunConfig, records: list[Any]) -> list[tuple[Any, str, bool]]:
    """(record, explanation, whether the explainer gave it); a latent the explainer fails on is
    scored with its strongest token named instead, so the scorers still have a question."""
    from autointerp_full.explainers import explain
    from autointerp_full.llm import make_client
    from autointerp_full.prompts import default_prompts

    client = make_client(cfg, "explain")
    out = []
    try:
        for record in records:
            result = await explain(record, client, default_prompts(), cfg)
            if result.explanation:
                out.append((record, result.explanation, True))
                continue
            best = max(record.train, key=lambda e: e.max_activation)
            token = best.str_tokens[best.activations.index(best.max_activation)].strip()
            out.append((record, f'the token "{token}"', False))
    finally:
        await client.aclose()
    return out


async def audit(cfg: RunConfig, explained: list[tuple[Any, str, bool]]) -> dict[str, Any]:
    from test_structured_llamacpp import AuditLog, audit_scorers

    records = [(r, e) for r, e, _ in explained]
    log_book = AuditLog()
    t0 = time.perf_counter()
    with_lp = dataclasses.replace(cfg, log_probs=True)
    await audit_scorers(with_lp, records, log_book, ("detection", "fuzz"))
    await audit_scorers(cfg, records, log_book, ("intruder", "simulation"))
    summary = log_book.summary()
    total = sum(s["requests"] for s in summary.values())
    bad = sum(s["unreadable"] for s in summary.values())
    return {
        "scorers": summary,
        "requests": total,
        "unreadable": bad,
        "unreadable_fraction": bad / total if total else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=int, default=4)
    parser.add_argument("--work", default="results/bench")
    parser.add_argument("--out", default="results/bench/structured_answers.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from demo import write_python_docs_corpus
    from test_llm_llamacpp import serve_llama_cpp

    from autointerp_full.models import smollm2_gguf_path

    work = Path(args.work).resolve()
    corpus = write_python_docs_corpus(work / "corpora" / "python_docs.jsonl")
    gguf = str(smollm2_gguf_path())
    cfg = base_config(work, corpus, gguf, args.latents)
    records = build_records(cfg, work, args.latents)
    log.info("%d latents with examples: %s", len(records), [r.latent for r in records])
    report: dict[str, Any] = {"latents": [r.latent for r in records], "settings": {}}
    (work / "llama").mkdir(parents=True, exist_ok=True)
    with serve_llama_cpp(work / "llama") as (url, model):
        served = dataclasses.replace(
            cfg, explainer_provider="vllm", explainer_api_base_url=url, explainer_model=model
        )
        explained = asyncio.run(explain_all(served, records))
        report["explained_by_the_model"] = sum(1 for *_, ok in explained if ok)
        report["explanations"] = {r.latent: e for r, e, _ in explained}
        for setting in ("auto", "off"):
            setting_cfg = dataclasses.replace(served, structured_output=setting)
            result = asyncio.run(audit(setting_cfg, explained))
            report["settings"][setting] = result
            log.info("structured_output %s: %s", setting, json.dumps(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    print(f"\n{'setting':8} {'scorer':11} {'requests':>8} {'unreadable':>10} {'share':>6}")
    for setting, result in report["settings"].items():
        for name, s in result["scorers"].items():
            print(
                f"{setting:8} {name:11} {s['requests']:8d} {s['unreadable']:10d} "
                f"{s['unreadable_fraction']:6.1%}"
            )
        print(
            f"{setting:8} {'all':11} {result['requests']:8d} {result['unreadable']:10d} "
            f"{result['unreadable_fraction']:6.1%}"
        )
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
