"""A vLLM OpenAI-compatible server run as a subprocess for the lifetime of one step.

    with VLLMServer("Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2) as server:
        cfg = dataclasses.replace(cfg, explainer_provider="vllm",
                                  explainer_api_base_url=server.base_url)
        explain_stage(cfg, ...)

Readiness is a poll of GET /v1/models until the model is listed (or the process dies, or the
timeout passes). Shutdown sends SIGTERM to the server's process group (vLLM spawns workers),
waits, then SIGKILLs. The HF token reaches the server through its environment, never argv.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from autointerp_full.errors import MissingExtraError, UserError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class VLLMServer:
    """Start, wait for, and stop one `vllm.entrypoints.openai.api_server` process.

    `command` replaces the vLLM command line (tests, or another OpenAI-compatible server such
    as llama.cpp's); `{host}`, `{port}` and `{model}` in it are filled in.
    """

    def __init__(
        self,
        model: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tensor_parallel_size: int | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 1800.0,
        poll_interval: float = 2.0,
        stop_timeout: float = 30.0,
        command: Sequence[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.model = model
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        if command is None:
            command = self._vllm_command(
                tensor_parallel_size, max_model_len, gpu_memory_utilization, extra_args
            )
        values = {"host": host, "port": str(self.port), "model": model}
        self.command = [part.format(**values) for part in command]
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    def _vllm_command(
        self,
        tensor_parallel_size: int | None,
        max_model_len: int | None,
        gpu_memory_utilization: float,
        extra_args: Sequence[str],
    ) -> list[str]:
        if importlib.util.find_spec("vllm") is None:
            raise MissingExtraError("vllm", "vllm", "Serving the explainer inside the step")
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", "{model}", "--host", "{host}", "--port", "{port}",
            "--gpu-memory-utilization", str(gpu_memory_utilization),
        ]  # fmt: skip
        if tensor_parallel_size:
            cmd += ["--tensor-parallel-size", str(tensor_parallel_size)]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        return cmd + list(extra_args)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> VLLMServer:
        if self.process is not None:
            return self
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        log.info("starting LLM server for %s on port %d", self.model, self.port)
        # A new session, so that stop() can signal the server and every worker it spawned.
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ.copy(),
        )
        return self

    def wait_ready(self) -> None:
        """Poll /v1/models until the server lists a model; raise UserError on death or timeout."""
        import httpx

        assert self.process is not None, "start() first"
        deadline = time.monotonic() + self.startup_timeout
        started = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise UserError(
                    f"LLM server for {self.model} exited with code {code} while starting; "
                    f"last log lines: {self.log_tail()}"
                )
            try:
                reply = httpx.get(f"{self.base_url}/models", timeout=5.0)
                if reply.status_code == 200 and reply.json().get("data"):
                    log.info("LLM server ready after %.0fs", time.monotonic() - started)
                    return
            except (httpx.HTTPError, ValueError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise UserError(
                    f"LLM server for {self.model} not ready after {self.startup_timeout:.0f}s "
                    f"(GET {self.base_url}/models); last log lines: {self.log_tail()}"
                )
            time.sleep(self.poll_interval)

    def stop(self) -> int | None:
        """SIGTERM the server's process group, SIGKILL after `stop_timeout`; return the exit
        code (None when it was not running)."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            code = process.poll()
            if code is None:
                self._signal(process, signal.SIGTERM)
                try:
                    code = process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "LLM server ignored SIGTERM for %.0fs; killing it", self.stop_timeout
                    )
                    self._signal(process, signal.SIGKILL)
                    code = process.wait()
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        return code

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
