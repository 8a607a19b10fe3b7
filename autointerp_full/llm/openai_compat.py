"""Async client for OpenAI-compatible chat servers (vLLM, llama.cpp, OpenRouter).

Pooled httpx connections per client (created lazily inside the running event loop, so a
client must be used from one event loop), at most `max_concurrent_requests` requests in flight,
retries with exponential backoff and jitter on timeouts, connection errors, 429 (Retry-After
honoured), 5xx and malformed bodies. The API key only travels in the Authorization header: it
is never logged and never put into an exception message.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import os
import random
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from autointerp_full.config import OPENROUTER_URL, RunConfig
from autointerp_full.errors import UserError
from autointerp_full.llm import structured
from autointerp_full.llm.base import (
    Completion,
    LLMError,
    TokenLogprob,
    Usage,
    check_messages,
)

log = logging.getLogger("autointerp_full.llm")

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
LANE_SIZE = 4  # connections per httpx pool (see OpenAICompatClient._lanes)
MAX_RETRY_AFTER = 600.0  # a server asking for longer is treated as asking for this
PROBE_ATTEMPTS = 3  # a structured-output probe that keeps failing counts as "not supported"

# (base URL, model) -> the response_format style the server honours, or "" for none. Probed once
# per process, so the explain and score stages (and every with_stage view) share the answer.
_STRUCTURED_SUPPORT: dict[tuple[str, str], str] = {}


class _Retryable(Exception):
    """One attempt failed in a way that another attempt may fix; `wait` is a server-given delay."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def normalise_base_url(url: str) -> str:
    """'http://host:8002' and 'http://host:8002/v1/' both become 'http://host:8002/v1'."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(
            f"--explainer_api_base_url: expected an http(s) URL such as "
            f"http://localhost:8002/v1 (got {url!r})"
        )
    if not parts.path.endswith("/v1"):
        url += "/v1"
    return url


def api_key_for(provider: str) -> str | None:
    """OpenRouter takes OPENROUTER_API_KEY (else OPENAI_API_KEY); a vLLM server only OPENAI_API_KEY,
    so an OpenRouter key is never sent to an arbitrary self-hosted URL."""
    names = (
        ("OPENROUTER_API_KEY", "OPENAI_API_KEY")
        if provider == "openrouter"
        else ("OPENAI_API_KEY",)
    )
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_logprobs(choice: dict[str, Any]) -> list[TokenLogprob] | None:
    """Chat format `logprobs.content[*]`, or the legacy completions format some servers send."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if isinstance(content, list):
        out = []
        for item in content:
            top = {t["token"]: float(t["logprob"]) for t in item.get("top_logprobs") or []}
            out.append(TokenLogprob(item["token"], float(item["logprob"]), top))
        return out
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    if isinstance(tokens, list) and isinstance(values, list):
        tops = lp.get("top_logprobs") or [None] * len(tokens)
        return [
            TokenLogprob(tok, float(v if v is not None else float("-inf")), dict(top or {}))
            for tok, v, top in zip(tokens, values, tops, strict=False)
        ]
    return None


def parse_completion(body: bytes) -> Completion:
    """Turn a response body into a Completion; raise _Retryable when the body is malformed."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Retryable("response is not valid JSON") from None
    if not isinstance(data, dict):
        raise _Retryable("response is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Retryable("response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _Retryable("response choice has no message")
    text = message.get("content")
    if text is None:
        text = ""  # e.g. a reasoning model that spent every token thinking: the caller decides
    if not isinstance(text, str):
        raise _Retryable("response message content is not text")
    try:
        logprobs = parse_logprobs(choices[0])
    except (KeyError, TypeError, ValueError):
        raise _Retryable("response has malformed logprobs") from None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    finish = choices[0].get("finish_reason")
    return Completion(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        logprobs=logprobs,
        finish_reason=str(finish) if finish is not None else None,
    )


def _tls_context() -> ssl.SSLContext:
    """The TLS context httpx itself would build (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), made
    once per process and those settings: building one costs ~0.1 s of CPU, and the model check,
    each probe attempt and the pool's lanes all need one."""
    return _tls_context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_context_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()  # reads the two variables the cache is keyed on


class OpenAICompatClient:
    """An LLMClient for `/v1/chat/completions`. See the module docstring."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        stage: str = "default",
        provider: str = "vllm",
        max_concurrent_requests: int = 32,
        request_timeout: float = 120.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        api_key: str | None = None,
        usage: Usage | None = None,
        structured_output: str = "auto",
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.model = model
        self.stage = stage
        self.provider = provider
        self.max_concurrent_requests = max_concurrent_requests
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.usage = usage if usage is not None else Usage()
        self.usage.stage(stage)
        self._api_key = api_key
        if structured_output not in structured.SETTINGS:
            raise UserError(
                f"--structured_output: invalid choice {structured_output!r} "
                f"(choose from {', '.join(structured.SETTINGS)})"
            )
        self.structured_output = structured_output
        # Shared with with_stage() views: the lanes of httpx clients, the semaphore, and the
        # structured-output probe (its lock, and which stages have logged their mode).
        self._shared: dict[str, Any] = {
            "http": None,
            "sem": None,
            "owner": self,
            "probe_lock": None,
            "modes": structured.ModeLog(),
        }

    def __repr__(self) -> str:  # no key in reprs, logs or tracebacks
        return (
            f"OpenAICompatClient(url={self.base_url!r}, model={self.model!r}, stage={self.stage!r})"
        )

    @classmethod
    def from_config(cls, cfg: RunConfig, stage: str) -> OpenAICompatClient:
        provider = cfg.explainer_provider
        base = cfg.explainer_api_base_url
        if not base:
            if provider != "openrouter":
                raise UserError(
                    f"--explainer_api_base_url is required with --explainer_provider {provider}"
                )
            base = OPENROUTER_URL
        key = api_key_for(provider)
        if provider == "openrouter" and not key:
            raise UserError(
                "--explainer_provider openrouter needs an API key in $OPENROUTER_API_KEY"
            )
        return cls(
            base,
            cfg.explainer_model,
            stage=stage,
            provider=provider,
            max_concurrent_requests=cfg.max_concurrent_requests,
            request_timeout=cfg.request_timeout,
            max_retries=cfg.max_retries,
            api_key=key,
            structured_output=cfg.structured_output,
        )

    def with_stage(self, stage: str) -> OpenAICompatClient:
        """A view recording usage under `stage`, sharing pool, limit and Usage with this client."""
        view = object.__new__(OpenAICompatClient)
        view.__dict__.update(self.__dict__)
        view.stage = stage
        self.usage.stage(stage)
        return view

    # ------------------------------------------------------------------ http plumbing
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _lanes(self) -> list[list[Any]]:
        """The connection pool, split into lanes of at most LANE_SIZE connections.

        httpcore's pool does work proportional to its connection count on every request event;
        at 32 connections one pool cost ~7 ms of CPU per request, eight pools of 4 ~2 ms (and
        4x the throughput on 2 cores). A lane is [httpx.AsyncClient, requests in flight, size]."""
        if self._shared["http"] is None:
            import httpx

            n = self.max_concurrent_requests
            tls = _tls_context()
            lanes = []
            for start in range(0, n, LANE_SIZE):
                size = min(LANE_SIZE, n - start)
                client = httpx.AsyncClient(
                    headers=self._headers(),
                    timeout=httpx.Timeout(self.request_timeout),
                    verify=tls,
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                )
                lanes.append([client, 0, size])
            self._shared["http"] = lanes
            self._shared["sem"] = asyncio.Semaphore(n)
        return self._shared["http"]

    def check_models(self, timeout: float = 10.0) -> list[str]:
        """GET /v1/models (blocking, once, at start): fail fast with a one-line UserError when the
        server is unreachable or does not serve the configured model. Returns the served ids."""
        import httpx

        url = f"{self.base_url}/models"
        try:
            resp = httpx.get(
                url,
                headers=self._headers(),
                timeout=min(timeout, self.request_timeout),
                verify=_tls_context(),
            )
        except httpx.HTTPError as exc:
            raise UserError(
                f"--explainer_api_base_url: no LLM server answers at {url} "
                f"({type(exc).__name__}); start it or fix the URL"
            ) from None
        if resp.status_code in (401, 403):
            raise UserError(
                f"--explainer_api_base_url: {url} refused the API key (HTTP {resp.status_code}); "
                "check $OPENROUTER_API_KEY / $OPENAI_API_KEY"
            )
        if resp.status_code != 200:
            raise UserError(
                f"--explainer_api_base_url: {url} answered HTTP {resp.status_code}; "
                "is it an OpenAI-compatible server?"
            )
        try:
            served = [str(m["id"]) for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"--explainer_api_base_url: {url} did not return an OpenAI model list"
            ) from None
        if self.model not in served:
            shown = ", ".join(served[:10]) + (
                f" (+{len(served) - 10} more)" if len(served) > 10 else ""
            )
            raise UserError(
                f"--explainer_model: {self.model!r} is not served at {self.base_url} "
                f"(served: {shown or 'none'})"
            )
        return served

    async def check(self) -> list[str]:
        return await asyncio.to_thread(self.check_models)

    def _backoff(self, attempt: int, server_wait: float | None) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2**attempt)
        delay *= 0.5 + random.random() / 2  # jitter spreads retries of a burst apart
        if server_wait is not None:
            delay = max(delay, min(server_wait, MAX_RETRY_AFTER))
        return delay

    async def _attempt(self, payload: bytes) -> Completion:
        import httpx

        # The lane with most free connections: the semaphore guarantees it has one.
        lane = max(self._lanes(), key=lambda item: item[2] - item[1])
        lane[1] += 1
        try:
            resp = await asyncio.wait_for(
                lane[0].post(f"{self.base_url}/chat/completions", content=payload),
                timeout=self.request_timeout,
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Retryable(f"timed out after {self.request_timeout:g}s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error ({type(exc).__name__})") from None
        finally:
            lane[1] -= 1
        if resp.status_code == 200:
            return parse_completion(resp.content)
        detail = resp.text[:200].replace("\n", " ")
        if self._api_key:
            detail = detail.replace(self._api_key, "***")
        if resp.status_code in RETRYABLE_STATUS or resp.status_code >= 500:
            raise _Retryable(
                f"HTTP {resp.status_code}: {detail}", _retry_after(resp.headers.get("retry-after"))
            )
        raise LLMError(f"HTTP {resp.status_code} from {self.base_url}: {detail}")

    # ------------------------------------------------------------------ structured output
    async def structured_style(self) -> str:
        """The response_format style this server honours ("" for none), probed once per server
        and model (see probe_structured_output); with --structured_output on, none is a
        UserError."""
        key = (self.base_url, self.model)
        if key not in _STRUCTURED_SUPPORT:
            if self._shared["probe_lock"] is None:
                self._shared["probe_lock"] = asyncio.Lock()
            async with self._shared["probe_lock"]:
                if key not in _STRUCTURED_SUPPORT:
                    _STRUCTURED_SUPPORT[key] = await asyncio.to_thread(self.probe_structured_output)
        return self._required(_STRUCTURED_SUPPORT[key])

    def check_structured_output(self) -> str:
        """Blocking, at start: the honoured style, probed now (for --structured_output on, so
        an unsupported server stops the run before any work)."""
        key = (self.base_url, self.model)
        if key not in _STRUCTURED_SUPPORT:
            _STRUCTURED_SUPPORT[key] = self.probe_structured_output()
        return self._required(_STRUCTURED_SUPPORT[key])

    def _required(self, style: str) -> str:
        if not style and self.structured_output == "on":
            raise structured.unsupported(f"the server at {self.base_url} (model {self.model})")
        return style

    def probe_structured_output(self) -> str:
        """Which response_format style the server honours, or "" (blocking).

        The probe asks "Say hello." under a schema whose only valid answer is
        {"probe": "zq7"}: a server that ignores response_format answers something else, one
        that rejects it answers an HTTP error; either way the next style is tried. Probe
        requests are not counted in usage (they are not generate() calls)."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        for style in structured.STYLES:
            body = {
                "model": self.model,
                "messages": structured.PROBE_MESSAGES,
                "max_tokens": 24,
                "temperature": 0.0,
                "response_format": structured.response_format(style, structured.PROBE_SCHEMA),
            }
            outcome = "no answer"
            for attempt in range(PROBE_ATTEMPTS):
                try:
                    resp = httpx.post(
                        url,
                        json=body,
                        headers=self._headers(),
                        timeout=self.request_timeout,
                        verify=_tls_context(),
                    )
                except httpx.HTTPError as exc:
                    outcome = f"connection error ({type(exc).__name__})"
                    time.sleep(self._backoff(attempt, None))
                    continue
                if resp.status_code != 200:
                    outcome = f"HTTP {resp.status_code}"
                    # A rejected field is final (llama-cpp-python rejects it with a 500); a
                    # busy or failing server is asked again.
                    rejected = "response_format" in resp.text or resp.status_code < 500
                    if rejected and resp.status_code != 429:
                        break
                    wait = _retry_after(resp.headers.get("retry-after"))
                    time.sleep(self._backoff(attempt, wait))
                    continue
                try:
                    text = parse_completion(resp.content).text
                except _Retryable as exc:
                    outcome = str(exc)
                    continue
                if structured.is_probe_answer(text):
                    log.info("%s honours response_format (%s)", self.base_url, style)
                    return style
                outcome = f"ignored (answered {text[:60]!r})"
                break
            log.info("%s: response_format %s not honoured: %s", self.base_url, style, outcome)
        return ""

    async def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        """The response_format field for this request, or None (and the stage's mode logged)."""
        if schema is None:
            return None
        if self.structured_output == "off":
            self._shared["modes"].note(self.stage, "prompt")
            return None
        style = await self.structured_style()
        if not style:
            self._shared["modes"].note(self.stage, "prompt")
            return None
        self._shared["modes"].note(self.stage, "response_format", style)
        return structured.response_format(style, schema)

    async def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: bool = False,
        top_logprobs: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion; with `schema`, constrained to it where the server can be."""
        check_messages(messages)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,  # order kept: a shared system prompt first feeds prefix caching
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        fmt = await self._response_format(schema)
        if fmt is not None:
            body["response_format"] = fmt
        payload = json.dumps(body).encode()
        self._lanes()
        sem: asyncio.Semaphore = self._shared["sem"]
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.record(self.stage, retries=1)
            try:
                async with sem:
                    completion = await self._attempt(payload)
            except _Retryable as exc:
                reason = str(exc)
                if attempt < self.max_retries:
                    delay = self._backoff(attempt, exc.wait)
                    log.debug(
                        "LLM request failed (%s); retry %d in %.2fs", reason, attempt + 1, delay
                    )
                    await asyncio.sleep(delay)  # outside the semaphore: others keep going
                continue
            except LLMError:
                self.usage.record(self.stage, failures=1)
                raise
            self.usage.record(
                self.stage,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                requests=1,
            )
            return completion
        self.usage.record(self.stage, failures=1)
        raise LLMError(f"LLM request failed after {self.max_retries + 1} attempts: {reason}")

    async def aclose(self) -> None:
        if self._shared["owner"] is not self:
            return  # a with_stage view: the owner closes the pool
        lanes = self._shared["http"] or []
        self._shared["http"] = None
        for client, _, _ in lanes:
            await client.aclose()
