"""A scripted OpenAI-compatible server for tests and benchmarks (a test double, never shipped).

It really speaks HTTP on 127.0.0.1 (stdlib ThreadingHTTPServer, keep-alive) and serves
`/v1/models` and `/v1/chat/completions`. Knobs:

- `responder(request_json) -> str | dict`: decides the reply text, so scorer and pipeline tests can
  script answers. A dict may carry `text` and `logprobs` (the OpenAI `logprobs.content` list).
- `delay`: seconds each request holds one of `max_concurrent` slots (excess requests queue), so the
  capacity is `max_concurrent / delay` requests per second.
- `faults`: a list consumed one per chat request, in arrival order: "ok", "hang" (no answer for
  `hang_s`), "429" (with `Retry-After: retry_after`), "500", "bad_json", "no_choices", "garbage"
  (well-formed body, nonsense text), "drop" (close the connection without answering),
  "truncated" (headers promise the whole body, half of it is sent, the connection closes).
- `fault_rate`, `fault_kinds`, `fault_seed`: once the list is used up, each chat request draws
  a fault from `fault_kinds` with probability `fault_rate` (seeded, so a run is repeatable in
  its totals); `faults_injected` counts them by kind.
- A responder's dict may also carry `finish_reason` (default "stop").

Counters: `chat_requests`, `peak_in_flight` (requests received and not yet answered), `requests`
(the JSON bodies) and `auth_headers`.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], "str | dict[str, Any]"]


def default_responder(request: dict[str, Any]) -> str:
    return "The latent fires on words about cats."


def fake_logprobs(text: str, top_n: int) -> list[dict[str, Any]]:
    """Per whitespace token: the token at logprob -0.1 and up to top_n alternatives below it."""
    content = []
    for tok in text.split() or [text]:
        top = [{"token": tok, "logprob": -0.1}]
        top += [{"token": f"alt{j}", "logprob": -2.0 - j} for j in range(max(0, top_n - 1))]
        content.append({"token": tok, "logprob": -0.1, "top_logprobs": top[: max(top_n, 0)]})
    return content


class ScriptedLLMServer:
    def __init__(
        self,
        responder: Responder | None = None,
        *,
        models: tuple[str, ...] = ("test-model",),
        delay: float = 0.0,
        max_concurrent: int | None = None,
        faults: list[str] | None = None,
        hang_s: float = 30.0,
        retry_after: float = 0.05,
        fault_rate: float = 0.0,
        fault_kinds: tuple[str, ...] = ("429", "500", "hang", "truncated", "garbage"),
        fault_seed: int = 0,
    ) -> None:
        self.responder = responder or default_responder
        self.models = models
        self.delay = delay
        self.faults = list(faults or [])
        self.fault_rate = fault_rate
        self.fault_kinds = fault_kinds
        self._fault_rng = random.Random(fault_seed)
        self.faults_injected: dict[str, int] = {}
        self.hang_s = hang_s
        self.retry_after = retry_after
        self._slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.chat_requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedLLMServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ behaviour
    def _next_fault(self) -> str:
        with self._lock:
            self.chat_requests += 1
            if self.faults:
                return self.faults.pop(0)
            if self.fault_rate and self._fault_rng.random() < self.fault_rate:
                kind = self._fault_rng.choice(self.fault_kinds)
                self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1
                return kind
            return "ok"

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reply_body(self, request: dict[str, Any], fault: str) -> dict[str, Any]:
        answer = self.responder(request)
        if isinstance(answer, str):
            answer = {"text": answer}
        text = "#@!%$ qq zz" if fault == "garbage" else answer["text"]
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": answer.get("finish_reason", "stop"),
        }
        if request.get("logprobs"):
            content = answer.get("logprobs") or fake_logprobs(text, request.get("top_logprobs", 0))
            choice["logprobs"] = {"content": content}
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in request["messages"])
        return {
            "id": f"chatcmpl-{self.chat_requests}",
            "object": "chat.completion",
            "model": request.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": len(text.split()),
                "total_tokens": prompt_words + len(text.split()),
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 resets bursts of new connections

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timed-out retry) is expected here, not news


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedLLMServer
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's pool is exercised
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stall

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "test"} for m in self.owner.models]
            self._send(200, json.dumps({"object": "list", "data": data}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        srv = self.owner
        srv._enter()
        try:
            request = json.loads(raw)
            with srv._lock:
                srv.requests.append(request)
                srv.auth_headers.append(self.headers.get("Authorization"))
            fault = srv._next_fault()
            if srv._slots is not None:
                srv._slots.acquire()
            try:
                if srv.delay:
                    time.sleep(srv.delay)
                self._answer(request, fault)
            finally:
                if srv._slots is not None:
                    srv._slots.release()
        finally:
            srv._leave()

    def _answer(self, request: dict[str, Any], fault: str) -> None:
        srv = self.owner
        if fault == "hang":
            srv._stop.wait(srv.hang_s)
            self.close_connection = True
            return
        if fault == "drop":
            self.close_connection = True
            return
        if fault == "429":
            self._send(429, b'{"error": "rate limited"}', {"Retry-After": f"{srv.retry_after:g}"})
        elif fault == "500":
            self._send(500, b'{"error": "internal"}')
        elif fault == "bad_json":
            self._send(200, b'{"choices": [{"message": ')
        elif fault == "no_choices":
            self._send(200, b'{"id": "x", "object": "chat.completion"}')
        elif fault == "truncated":
            body = json.dumps(srv.reply_body(request, "ok")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._send(200, json.dumps(srv.reply_body(request, fault)).encode())


def _load_responder(spec: str) -> Responder:
    """'package.module:function' -> the function."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    """Serve in its own process (own GIL, like a real server). Prints the base URL on the first
    line of stdout; a line "stats" on stdin prints the counters as JSON; EOF stops it."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible test server")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--cap", type=int, default=None, help="max concurrent requests")
    parser.add_argument("--model", default="test-model")
    parser.add_argument("--responder", default=None, help="module:function deciding the text")
    args = parser.parse_args(argv)
    responder = _load_responder(args.responder) if args.responder else None
    with ScriptedLLMServer(
        responder, models=(args.model,), delay=args.delay, max_concurrent=args.cap
    ) as server:
        print(server.url, flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                stats = {
                    "chat_requests": server.chat_requests,
                    "peak_in_flight": server.peak_in_flight,
                    "cpu_s": time.process_time(),
                }
                print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()


def interp_responder(request: dict[str, Any]) -> str:
    """Well-formed answers for every prompt the product sends, keyed on the system prompt."""
    system = " ".join(m["content"] for m in request["messages"] if m["role"] == "system")
    if "Find the intruder" in system:
        return "2"
    if "predict how strongly" in system:
        return "1: 0\n2: 6\n3: 0"
    if "Reply with only a list" in system:
        user = request["messages"][-1]["content"]
        n = len(re.findall(r"^Example \d+:", user, re.MULTILINE)) or 5
        return "[" + ", ".join("1" if i % 2 == 0 else "0" for i in range(n)) + "]"
    return "Some reasoning first.\n[EXPLANATION]: common short words such as 'the'"


# ------------------------------------------------------------------- known-answer responder

_MARKED = re.compile(r"<<(.+?)>>")
_EXAMPLE_LINE = re.compile(r"^Example (\d+): (.*)$", re.MULTILINE)
_NAMED = re.compile(r'the word "([^"]+)"')
_TOKEN_LINE = re.compile(r'^(\d+): (".*")$', re.MULTILINE)


def known_answer_explanation(word: str) -> str:
    """How the known-answer responder words an explanation (and reads one back)."""
    return f'the word "{word}"'


def _fires(word: str, text: str) -> bool:
    # The latents fire on the token " word" (leading space): a word at a document's start is a
    # different token.
    return re.search(" " + re.escape(word) + r"(?![\w])", text) is not None


def _marks(text: str) -> list[str]:
    return [m.strip() for m in _MARKED.findall(text)]


def known_answer_responder(request: dict[str, Any]) -> str:
    """Answers every prompt by one rule: a latent fires on the word its marks show.

    - explainer prompts (marked excerpts): names the most often marked word;
    - detection (unmarked examples): 1 where the explained word occurs as a word;
    - fuzz (marked examples): 1 where every mark is on the explained word;
    - simulation (numbered tokens): 10 on the explained word, 0 elsewhere;
    - intruder (marked examples, no explanation): the one whose marks differ from the rest.
    It never looks at the truth, only at what the prompt shows, as a rule-following LLM would.
    """
    user = [m["content"] for m in request["messages"] if m["role"] == "user"][-1]
    named = _NAMED.search(user)
    examples = [text for _, text in _EXAMPLE_LINE.findall(user)]
    tokens = [json.loads(t) for _, t in _TOKEN_LINE.findall(user)]
    if named and tokens:
        word = named.group(1)
        return "\n".join(
            f"{i}: {10 if t.startswith(' ') and t.strip() == word else 0}"
            for i, t in enumerate(tokens, 1)
        )
    if named and examples:
        word = named.group(1)
        if any("<<" in text for text in examples):
            answers = [int(bool(_marks(t)) and set(_marks(t)) == {word}) for t in examples]
        else:
            answers = [int(_fires(word, t)) for t in examples]
        return "[" + ", ".join(map(str, answers)) + "]"
    if examples:  # intruder
        marks = [set(_marks(t)) for t in examples]
        counts: dict[str, int] = {}
        for m in marks:
            for w in m:
                counts[w] = counts.get(w, 0) + 1
        common = max(counts, key=lambda w: counts[w]) if counts else ""
        odd = next((i for i, m in enumerate(marks, 1) if common not in m), 1)
        return str(odd)
    marked = _marks(user)
    if not marked:
        return "I see no marked tokens."
    counts = {}
    for w in marked:
        counts[w] = counts.get(w, 0) + 1
    best = max(counts, key=lambda w: (counts[w], w))
    return f"The marks fall on one word.\n[EXPLANATION]: {known_answer_explanation(best)}"


def refusing_scorer_responder(request: dict[str, Any]) -> str:
    """Explains well (as interp_responder) but answers every scorer prompt unreadably, so
    explanations are stored and every score batch fails."""
    user = [m["content"] for m in request["messages"] if m["role"] == "user"][-1]
    if re.search(r"^(Example \d+:|\d+: \")", user, re.MULTILINE):
        return "I cannot answer that."
    return interp_responder(request)
