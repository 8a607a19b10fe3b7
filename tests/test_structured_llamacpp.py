"""Structured answers against a REAL llama.cpp server (and engine) serving SmolLM2-135M.

The detection, fuzz, intruder and simulation scorers run through the vllm provider with
--structured_output auto, and every answer the server gives is checked with the scorers' own
parsers: at most 5% may be unreadable (with free text it was 100% for detection and fuzz).
`bench/structured_answers.py` runs the same audit over latents of the demo SAE, for auto and off.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip(
        "llama_cpp is not importable: pip install 'llama-cpp-python[server]'",
        allow_module_level=True,
    )

sys.path.insert(0, str(Path(__file__).parent))

from test_llm_llamacpp import serve_llama_cpp, smollm2_gguf  # noqa: E402

from autointerp_full.config import RunConfig  # noqa: E402
from autointerp_full.examples.types import Example, LatentRecord  # noqa: E402
from autointerp_full.llm import make_client, openai_compat  # noqa: E402
from autointerp_full.prompts import default_prompts  # noqa: E402
from autointerp_full.scorers import SCORERS  # noqa: E402
from autointerp_full.scorers.classifier import (  # noqa: E402
    answer_probabilities,
    parse_binary_answers,
    parse_prefilled_list,
)
from autointerp_full.scorers.intruder import parse_choice  # noqa: E402
from autointerp_full.scorers.simulation import parse_predictions  # noqa: E402

AUDITED = ("detection", "fuzz", "intruder", "simulation")

# ------------------------------------------------------------------ the audit (also used by bench)


def answer_size(stage: str, schema: dict[str, Any]) -> int:
    """How many items the request was about, read from the schema it carried."""
    props = schema["properties"]
    if stage in ("detection", "fuzz"):
        return int(props["answers"]["minItems"])
    if stage == "intruder":
        return len(props["intruder"]["enum"])
    return len(schema["required"])  # simulation: one property per token


def readable(stage: str, text: str, opening: str, n: int) -> bool:
    """Whether the scorer can read this answer (the same parsers and fallbacks it uses)."""
    full = opening + text
    if stage in ("detection", "fuzz"):
        if parse_binary_answers(full, n) is not None:
            return True
        return bool(opening) and parse_prefilled_list(full, n) is not None
    if stage == "intruder":
        if parse_choice(full, n) is not None:
            return True
        first = re.match(r"\s*(\d+)", text)
        return bool(opening) and first is not None and 1 <= int(first.group(1)) <= n
    return parse_predictions(full, n) is not None


@dataclass
class AuditLog:
    """Per stage: requests, unreadable answers, and (detection, fuzz) answers with a
    probability for every example."""

    requests: Counter = field(default_factory=Counter)
    unreadable: Counter = field(default_factory=Counter)
    with_probabilities: Counter = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for stage in sorted(self.requests):
            n, bad = self.requests[stage], self.unreadable[stage]
            out[stage] = {
                "requests": n,
                "unreadable": bad,
                "unreadable_fraction": bad / n if n else None,
            }
            if stage in ("detection", "fuzz"):
                out[stage]["with_probabilities"] = self.with_probabilities[stage]
            if self.samples.get(stage):
                out[stage]["unreadable_samples"] = self.samples[stage][:3]
        return out


class AuditClient:
    """Wraps a real client: every answer is checked with the scorers' parsers as it passes."""

    def __init__(self, inner: Any, audit: AuditLog, stage: str = "") -> None:
        self.inner, self.audit, self.stage = inner, audit, stage or inner.stage
        self.usage = inner.usage

    def with_stage(self, stage: str) -> AuditClient:
        return AuditClient(self.inner.with_stage(stage), self.audit, stage)

    async def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        completion = await self.inner.generate(messages, **kwargs)
        schema = kwargs.get("schema")
        if self.stage in AUDITED and schema is not None:
            n = answer_size(self.stage, schema)
            last = messages[-1]
            opening = last["content"] if last["role"] == "assistant" else ""
            self.audit.requests[self.stage] += 1
            if not readable(self.stage, completion.text, opening, n):
                self.audit.unreadable[self.stage] += 1
                self.audit.samples.setdefault(self.stage, []).append(completion.text[:120])
            if self.stage in ("detection", "fuzz") and kwargs.get("logprobs"):
                if answer_probabilities(completion.logprobs, n) is not None:
                    self.audit.with_probabilities[self.stage] += 1
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()


async def audit_scorers(
    cfg: RunConfig,
    records: list[tuple[LatentRecord, str]],
    audit: AuditLog,
    scorers: tuple[str, ...] = AUDITED,
) -> list[dict[str, Any]]:
    """Score each (record, explanation) with each scorer through an AuditClient."""
    openai_compat._STRUCTURED_SUPPORT.clear()  # probe afresh for each setting
    client = AuditClient(make_client(cfg, "score"), audit)
    prompts = default_prompts()
    results = []
    try:
        for record, explanation in records:
            for name in scorers:
                scorer = SCORERS[name](client, prompts, cfg)
                results.append(await scorer.score(record, explanation))
    finally:
        await client.aclose()
    return results


# ------------------------------------------------------------------ a small fixed record set

SENTENCES = [
    "A function returns a value when it is called with arguments.",
    "The river ran past the old mill and into the sea.",
    "Define a function with the def keyword and a name.",
    "She bought bread and cheese at the market on Monday.",
    "Each function has its own local namespace for names.",
    "The train left the station late in the evening.",
    "A nested function can read names from the enclosing scope.",
    "Children played football in the park after school.",
    "The function object keeps a reference to its globals.",
    "Rain fell all night over the quiet little town.",
    "Calling the function again gives a fresh local scope.",
    "The painter mixed blue and yellow to make green.",
]


def window(text: str, hot: str) -> Example:
    words = text.split(" ")
    str_tokens = [(" " if i else "") + w for i, w in enumerate(words)]
    acts = [5.0 if w.strip(".,") == hot else 0.0 for w in words]
    return Example(list(range(len(words))), str_tokens, acts, 2 if any(acts) else -1)


def function_record(n_test: int = 5, n_non: int = 5) -> LatentRecord:
    """A latent that fires on the word "function" in plain English sentences."""
    examples = [window(s, "function") for s in SENTENCES]
    test = [e for e in examples if max(e.activations) > 0][:n_test]
    non = [e for e in examples if max(e.activations) == 0][:n_non]
    return LatentRecord("layers.15", 0, 6, 0.01, 5.0, train=[], test=test, non_activating=non)


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    with serve_llama_cpp(tmp_path_factory.mktemp("llama_structured")) as server:
        yield server


def server_cfg(url: str, model: str, setting: str, log_probs: bool = True) -> RunConfig:
    return RunConfig(
        explainer_provider="vllm",
        explainer_api_base_url=url,
        explainer_model=model,
        structured_output=setting,
        log_probs=log_probs,
        max_concurrent_requests=2,
        request_timeout=120.0,
        max_retries=1,
        num_examples_per_scorer_prompt=5,
    )


def test_scorer_answers_are_readable_with_structured_output(llama_server, caplog) -> None:
    url, model = llama_server
    caplog.set_level("INFO", logger="autointerp_full")
    audit = AuditLog()
    explanation = 'the word "function"'
    binary = [(function_record(), explanation)]
    results = asyncio.run(
        audit_scorers(server_cfg(url, model, "auto"), binary, audit, ("detection", "fuzz"))
    )
    # llama-cpp-python's server sorts the whole vocabulary for every logprob token: the long
    # simulation answers run without them, and on a record of 4 + 1 windows, to stay short.
    small = [(function_record(4, 1), explanation)]
    cfg = server_cfg(url, model, "auto", log_probs=False)
    asyncio.run(audit_scorers(cfg, small, audit, ("intruder", "simulation")))
    summary = audit.summary()
    assert set(summary) == set(AUDITED), summary
    total = sum(s["requests"] for s in summary.values())
    bad = sum(s["unreadable"] for s in summary.values())
    assert total >= 10 and bad <= 0.05 * total, summary
    # Log-probabilities survive the constraint: one per example on detection and fuzz.
    for stage in ("detection", "fuzz"):
        assert summary[stage]["with_probabilities"] == summary[stage]["requests"], summary
    for result in results:
        assert all(0.0 <= e["probability"] <= 1.0 for e in result["examples"]), result
    assert "answers constrained by the server (response_format, json_object)" in caplog.text


def test_llama_cpp_engine_decodes_under_the_schema() -> None:
    """The offline llama.cpp engine: a grammar from the schema, logprobs of the values."""
    from autointerp_full.llm import offline

    cfg = RunConfig(
        explainer_provider="offline",
        explainer_model=str(smollm2_gguf()),
        explainer_model_max_len=1024,
        log_probs=True,
    )
    client = make_client(cfg, "detection")
    prompts = default_prompts()
    key = "scorers.detection.system"
    messages = prompts.messages(key, "Explanation: cats\n\nExample 1: a cat\nExample 2: a car")
    messages.append({"role": "assistant", "content": "["})  # dropped under the schema

    async def run():
        try:
            schema = prompts.schema(key, 2)
            return await client.generate(
                messages, max_tokens=24, logprobs=True, top_logprobs=5, schema=schema
            )
        finally:
            await client.aclose()

    try:
        out = asyncio.run(run())
    finally:
        offline.release_engines()
    assert re.fullmatch(r'\{ ?"answers": ?\[[01], ?[01]\] ?\} ?', out.text), out.text
    assert out.finish_reason == "stop"
    probs = answer_probabilities(out.logprobs, 2)
    assert probs is not None and all(0.0 <= p <= 1.0 for p in probs)
