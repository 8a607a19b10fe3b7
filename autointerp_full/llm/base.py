"""Types shared by every LLM client: completions, log-probabilities, usage counters and errors.

Usage is keyed by stage name ("explain", "detection", ...). A client records into the stage it was
made for; `with_stage(name)` on a client gives a view that shares the connection pool, the
concurrency limit and the Usage object but records under another stage, so one score stage can run
several scorers through one bounded client.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


class LLMError(Exception):
    """A request that still failed after every retry (or could not be retried)."""


@dataclass
class TokenLogprob:
    """One answer token. An answer opening handed to a local model appears as one entry with
    logprob 0.0 (it was given, so certain), so answers read the same with or without one."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    # Why generation stopped, as OpenAI names it ("stop", "length", ...); None when unknown.
    # "length" means the answer was cut off at max_tokens (explainers treat it as a failure).
    finish_reason: str | None = None


@dataclass
class StageUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # generate() calls that returned a completion
    retries: int = 0  # extra attempts made after a retryable failure
    failures: int = 0  # generate() calls that raised LLMError


class Usage:
    """Token and request counters per stage; thread-safe (the offline provider counts off-loop)."""

    def __init__(self) -> None:
        self._stages: dict[str, StageUsage] = {}
        self._lock = threading.Lock()

    def stage(self, name: str) -> StageUsage:
        with self._lock:
            return self._stages.setdefault(name, StageUsage())

    def record(
        self,
        stage: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        requests: int = 0,
        retries: int = 0,
        failures: int = 0,
    ) -> None:
        with self._lock:
            s = self._stages.setdefault(stage, StageUsage())
            s.prompt_tokens += prompt_tokens
            s.completion_tokens += completion_tokens
            s.requests += requests
            s.retries += retries
            s.failures += failures

    def merge(self, other: Usage) -> None:
        """Add another client's counters into this one (e.g. to total several stages)."""
        for name, s in other.as_dict().items():
            self.record(name, **s)

    def total(self) -> StageUsage:
        out = StageUsage()
        with self._lock:
            for s in self._stages.values():
                for key, value in asdict(s).items():
                    setattr(out, key, getattr(out, key) + value)
        return out

    def as_dict(self) -> dict[str, dict[str, int]]:
        """{stage: {prompt_tokens, completion_tokens, requests, retries, failures}}, for summary."""
        with self._lock:
            return {name: asdict(s) for name, s in sorted(self._stages.items())}

    def __repr__(self) -> str:
        return f"Usage({self.as_dict()})"


@runtime_checkable
class LLMClient(Protocol):
    usage: Usage
    stage: str

    async def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: bool = False,
        top_logprobs: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> Completion: ...

    def with_stage(self, stage: str) -> LLMClient: ...

    async def aclose(self) -> None: ...


def check_messages(messages: list[dict[str, str]]) -> None:
    """Reject malformed chat messages early (a caller bug, not a server fault)."""
    if not messages:
        raise ValueError("messages must not be empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
