"""LLM clients against a real (scripted) HTTP server, and the offline provider on the tiny model."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_test_server import ScriptedLLMServer  # noqa: E402

from autointerp_full.config import RunConfig  # noqa: E402
from autointerp_full.errors import UserError  # noqa: E402
from autointerp_full.llm import LLMError, Usage, make_client  # noqa: E402
from autointerp_full.llm.openai_compat import OpenAICompatClient, normalise_base_url  # noqa: E402

MSGS = [{"role": "system", "content": "You explain latents."}, {"role": "user", "content": "hi"}]
SECRET = "sk-test-SECRET-0123456789"


def client_for(server: ScriptedLLMServer, **kw) -> OpenAICompatClient:
    opts = dict(
        stage="explain",
        max_concurrent_requests=8,
        request_timeout=5.0,
        max_retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    opts.update(kw)
    return OpenAICompatClient(server.url, "test-model", **opts)


async def gather_generate(client, n: int, **kw):
    try:
        return await asyncio.gather(*(client.generate(MSGS, **kw) for _ in range(n)))
    finally:
        await client.aclose()


def test_plain_completion_and_usage():
    with ScriptedLLMServer(lambda req: "cats and dogs") as server:
        client = client_for(server)
        out = asyncio.run(gather_generate(client, 3, max_tokens=7))
    assert [c.text for c in out] == ["cats and dogs"] * 3
    assert out[0].completion_tokens == 3 and out[0].prompt_tokens == 4
    assert server.requests[0]["messages"] == MSGS  # order kept: the system prompt stays first
    assert server.requests[0]["max_tokens"] == 7 and "logprobs" not in server.requests[0]
    u = client.usage.as_dict()["explain"]
    assert u == {
        "prompt_tokens": 12,
        "completion_tokens": 9,
        "requests": 3,
        "retries": 0,
        "failures": 0,
    }


@pytest.mark.parametrize("fault", ["429", "500", "hang", "bad_json", "no_choices", "drop"])
def test_retries_recover_from_faults(fault):
    with ScriptedLLMServer(faults=[fault, fault], hang_s=5.0) as server:
        client = client_for(server, request_timeout=0.3)
        (out,) = asyncio.run(gather_generate(client, 1))
        assert server.chat_requests == 3
    assert out.text == "The latent fires on words about cats."
    u = client.usage.stage("explain")
    assert (u.requests, u.retries, u.failures) == (1, 2, 0)


def test_retry_after_is_honoured():
    with ScriptedLLMServer(faults=["429"], retry_after=0.4) as server:
        client = client_for(server)

        async def timed():
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await gather_generate(client, 1)
            return loop.time() - t0

        elapsed = asyncio.run(timed())
    assert elapsed >= 0.4  # backoff_max is 0.05, so only Retry-After explains the wait


def test_garbage_text_is_returned_as_is():
    with ScriptedLLMServer(faults=["garbage"]) as server:
        (out,) = asyncio.run(gather_generate(client_for(server), 1))
    assert out.text == "#@!%$ qq zz"
    assert server.chat_requests == 1


def test_gives_llmerror_after_max_retries():
    with ScriptedLLMServer(faults=["500"] * 10) as server:
        client = client_for(server, max_retries=2)
        with pytest.raises(LLMError, match="after 3 attempts.*HTTP 500"):
            asyncio.run(gather_generate(client, 1))
        assert server.chat_requests == 3
    u = client.usage.stage("explain")
    assert (u.requests, u.retries, u.failures) == (0, 2, 1)


def test_client_errors_are_not_retried():
    with ScriptedLLMServer() as server:
        client = OpenAICompatClient(server.url.replace("/v1", "/nope"), "test-model", max_retries=3)
        with pytest.raises(LLMError, match="HTTP 404"):
            asyncio.run(gather_generate(client, 1))
        assert server.chat_requests == 0


def test_concurrency_never_exceeds_the_cap():
    with ScriptedLLMServer(delay=0.05) as server:
        client = client_for(server, max_concurrent_requests=5)
        out = asyncio.run(gather_generate(client, 40))
        assert len(out) == 40
        assert server.peak_in_flight == 5  # reaches the cap, never more


def test_server_cap_and_delay_bound_throughput():
    with ScriptedLLMServer(delay=0.1, max_concurrent=4) as server:
        client = client_for(server, max_concurrent_requests=16)

        async def timed():
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await gather_generate(client, 16)
            return loop.time() - t0

        elapsed = asyncio.run(timed())
    assert elapsed >= 0.4  # 16 requests / (4 slots / 0.1 s)


def test_logprobs_are_requested_and_parsed():
    with ScriptedLLMServer(lambda req: "Yes") as server:
        (out,) = asyncio.run(gather_generate(client_for(server), 1, logprobs=True, top_logprobs=3))
        req = server.requests[0]
    assert req["logprobs"] is True and req["top_logprobs"] == 3
    assert out.logprobs is not None and len(out.logprobs) == 1
    lp = out.logprobs[0]
    assert lp.token == "Yes" and lp.logprob == pytest.approx(-0.1)
    assert lp.top == {"Yes": -0.1, "alt0": -2.0, "alt1": -3.0}


def test_with_stage_shares_limit_and_usage():
    with ScriptedLLMServer(delay=0.05) as server:
        client = client_for(server, max_concurrent_requests=3)
        fuzz = client.with_stage("fuzz")

        async def both():
            try:
                await asyncio.gather(
                    *(client.generate(MSGS) for _ in range(6)),
                    *(fuzz.generate(MSGS) for _ in range(6)),
                )
            finally:
                await fuzz.aclose()  # a view does not close the shared pool
                await client.aclose()

        asyncio.run(both())
        assert server.peak_in_flight == 3
    usage = client.usage.as_dict()
    assert usage["explain"]["requests"] == 6 and usage["fuzz"]["requests"] == 6
    assert fuzz.usage is client.usage


def test_usage_merge_and_total():
    a, b = Usage(), Usage()
    a.record("explain", prompt_tokens=10, completion_tokens=2, requests=1)
    b.record("detection", prompt_tokens=5, requests=1, retries=2, failures=1)
    a.merge(b)
    assert set(a.as_dict()) == {"explain", "detection"}
    t = a.total()
    assert (t.prompt_tokens, t.requests, t.retries, t.failures) == (15, 2, 2, 1)


# ---------------------------------------------------------------- make_client and /v1/models


def vllm_cfg(url: str, model: str = "test-model", **kw) -> RunConfig:
    return RunConfig(
        explainer_provider="vllm", explainer_api_base_url=url, explainer_model=model, **kw
    )


def test_make_client_checks_models_and_works():
    with ScriptedLLMServer(models=("a", "test-model")) as server:
        client = make_client(vllm_cfg(server.url, max_concurrent_requests=4), "detection")
        assert client.max_concurrent_requests == 4
        (out,) = asyncio.run(gather_generate(client, 1))
    assert out.text and client.usage.as_dict()["detection"]["requests"] == 1


def test_make_client_fails_fast_when_server_down():
    with ScriptedLLMServer() as server:
        url = server.url
    with pytest.raises(UserError) as info:
        make_client(vllm_cfg(url), "explain")
    msg = str(info.value)
    assert "--explainer_api_base_url" in msg and f"{url}/models" in msg and "\n" not in msg


def test_make_client_fails_when_model_not_served():
    with ScriptedLLMServer(models=("qwen-7b", "llama-8b")) as server:
        with pytest.raises(UserError) as info:
            make_client(vllm_cfg(server.url, model="missing-model"), "explain")
    msg = str(info.value)
    assert "--explainer_model" in msg and "missing-model" in msg
    assert "qwen-7b" in msg and "llama-8b" in msg and "\n" not in msg


def test_base_url_normalisation():
    assert normalise_base_url("http://h:8002") == "http://h:8002/v1"
    assert normalise_base_url("http://h:8002/v1/") == "http://h:8002/v1"
    assert normalise_base_url("https://openrouter.ai/api/v1") == "https://openrouter.ai/api/v1"
    with pytest.raises(UserError, match="--explainer_api_base_url"):
        normalise_base_url("localhost:8002")


def test_openrouter_requires_a_key(monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = RunConfig(explainer_provider="openrouter", explainer_model="x")
    with pytest.raises(UserError, match="OPENROUTER_API_KEY"):
        make_client(cfg, "explain")


def test_api_key_sent_but_never_logged_or_in_errors(monkeypatch, caplog):
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with ScriptedLLMServer(faults=["500", "429", "500", "500"]) as server:
        cfg = RunConfig(
            explainer_provider="openrouter",
            explainer_api_base_url=server.url,
            explainer_model="test-model",
            max_retries=2,
        )
        client = make_client(cfg, "explain")
        client.backoff_base = client.backoff_max = 0.01
        with pytest.raises(LLMError) as info:
            asyncio.run(gather_generate(client, 1))
        assert server.auth_headers[0] == f"Bearer {SECRET}"
        with pytest.raises(UserError) as bad_model:
            make_client(RunConfig(**{**cfg.public_dict(), "explainer_model": "nope"}), "x")
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in str(bad_model.value)
    assert SECRET not in repr(client) and SECRET not in caplog.text
    assert caplog.records  # retries were logged, without the key


def test_vllm_client_does_not_send_openrouter_key(monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ScriptedLLMServer() as server:
        asyncio.run(gather_generate(make_client(vllm_cfg(server.url), "explain"), 1))
        assert server.auth_headers == [None]


# ---------------------------------------------------------------- offline provider


def offline_cfg(model_dir: Path, **kw) -> RunConfig:
    opts = {"explainer_model_max_len": 128, **kw}
    return RunConfig(explainer_provider="offline", explainer_model=str(model_dir), **opts)


def test_offline_batches_concurrent_calls(tiny_model_dir):
    from autointerp_full.llm import offline

    cfg = offline_cfg(tiny_model_dir, offline_batch_size=4)
    client = make_client(cfg, "explain")
    engine = client.engine
    calls: list[int] = []
    real = engine.model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    engine.model.generate = counting_generate
    try:
        msgs = [[{"role": "user", "content": "the cat " * (i + 1)}] for i in range(10)]

        async def run():
            try:
                return await asyncio.gather(*(client.generate(m, max_tokens=5) for m in msgs))
            finally:
                await client.aclose()

        outs = asyncio.run(run())
    finally:
        engine.model.generate = real
        offline.release_engines()
    assert len(outs) == 10 and all(isinstance(o.text, str) for o in outs)
    assert all(1 <= o.completion_tokens <= 5 or o.completion_tokens == 0 for o in outs)
    assert len(calls) < 10 and max(calls) <= 4 and sum(calls) == 10
    # prompt lengths differ, so each result must be its own prompt's count (order preserved)
    assert [o.prompt_tokens for o in outs] == sorted(o.prompt_tokens for o in outs)
    assert client.usage.as_dict()["explain"]["requests"] == 10


def test_offline_greedy_is_deterministic_with_logprobs(tiny_model_dir):
    from autointerp_full.llm import offline

    client = make_client(offline_cfg(tiny_model_dir), "detection")
    msgs = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "one two three"}]

    async def run():
        try:
            a = await client.generate(msgs, max_tokens=4, logprobs=True, top_logprobs=3)
            b = await client.generate(msgs, max_tokens=4)
            return a, b
        finally:
            await client.aclose()

    try:
        a, b = asyncio.run(run())
    finally:
        offline.release_engines()
    assert a.text == b.text and b.logprobs is None
    assert a.logprobs is not None and len(a.logprobs) == a.completion_tokens > 0
    for lp in a.logprobs:
        assert lp.logprob <= 0 and len(lp.top) <= 3
        assert max(lp.top.values()) == pytest.approx(lp.logprob, abs=1e-4)  # greedy picks the top


def test_offline_truncates_long_prompts_from_the_left(tiny_model_dir, caplog):
    from autointerp_full.llm import offline

    client = make_client(offline_cfg(tiny_model_dir, explainer_model_max_len=64), "explain")
    msgs = [{"role": "user", "content": "the cat sat on a mat " * 40}]

    async def run():
        try:
            return await client.generate(msgs, max_tokens=4)
        finally:
            await client.aclose()

    caplog.set_level(logging.WARNING, logger="autointerp_full")
    try:
        out = asyncio.run(run())
    finally:
        offline.release_engines()
    assert out.prompt_tokens == 60
    assert "explainer_model_max_len" in caplog.text


def test_plain_prompt_without_chat_template():
    from autointerp_full.llm.offline import plain_prompt

    text = plain_prompt(MSGS)
    assert text == "system: You explain latents.\nuser: hi\nassistant:"


@pytest.mark.slow
def test_offline_gguf_uses_llama_cpp():
    pytest.importorskip("llama_cpp")
    from autointerp_full.llm import offline
    from autointerp_full.models import smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except Exception as exc:  # MissingExtraError without the dev extra
        pytest.skip(str(exc))
    client = make_client(offline_cfg(gguf, explainer_model_max_len=256), "detection")
    msgs = [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": "Hi?"}]

    async def run():
        try:
            a = await client.generate(msgs, max_tokens=6, logprobs=True, top_logprobs=3)
            b = await client.generate(msgs, max_tokens=6)
            return a, b
        finally:
            await client.aclose()

    try:
        assert isinstance(client.engine, offline.LlamaCppEngine)
        a, b = asyncio.run(run())
    finally:
        offline.release_engines()
    assert b.text and b.logprobs is None and a.text == b.text  # greedy either way
    assert b.prompt_tokens > 10 and 1 <= b.completion_tokens <= 6
    assert a.logprobs is not None and len(a.logprobs) == a.completion_tokens
    for lp in a.logprobs:
        assert lp.logprob <= 0 and 1 <= len(lp.top) <= 3
        assert max(lp.top.values()) == pytest.approx(lp.logprob, abs=1e-4)
    assert client.usage.as_dict()["detection"]["requests"] == 2


def test_offline_continues_an_assistant_prefix(tiny_model_dir):
    """A final assistant message is rendered as the start of the answer, not as a turn."""
    from autointerp_full.llm.offline import TransformersEngine

    engine = TransformersEngine(offline_cfg(tiny_model_dir))
    user = [{"role": "user", "content": "list please"}]
    plain = engine.encode(user, 8)
    prefixed = engine.encode([*user, {"role": "assistant", "content": "[1"}], 8)
    tail = engine.tokenizer("[1", add_special_tokens=False)["input_ids"]
    assert prefixed[: len(plain)] == plain
    assert prefixed[len(plain) :] == tail


def test_tls_context_is_built_once_per_certificate_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model check, every probe attempt and the pool's lanes share one TLS context (each
    costs ~0.1 s of CPU to build); a changed SSL_CERT_FILE gets its own."""
    import certifi

    from autointerp_full.llm import openai_compat

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = openai_compat._tls_context()
    assert openai_compat._tls_context() is default
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    own = openai_compat._tls_context()
    assert own is not default and openai_compat._tls_context() is own
