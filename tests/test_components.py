"""Artifact schemas, the in-step LLM server's lifecycle, and the components' helper logic."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autointerp_full.errors import MissingExtraError, UserError
from autointerp_full.schemas import SCHEMA_DIR, load_schema, validate_artifact

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------------- schemas


def test_packaged_schemas_equal_shared_ones() -> None:
    shared = sorted((ROOT / "shared" / "schemas").glob("*.schema.json"))
    packaged = sorted(SCHEMA_DIR.glob("*.schema.json"))
    assert [p.name for p in shared] == [p.name for p in packaged]
    for a, b in zip(shared, packaged, strict=True):
        assert a.read_bytes() == b.read_bytes(), (
            f"{b} differs from {a}: copy shared/schemas/*.json to autointerp_full/schema_files/"
        )


def test_schemas_are_valid_json_schemas() -> None:
    from jsonschema import Draft202012Validator

    for path in SCHEMA_DIR.glob("*.schema.json"):
        Draft202012Validator.check_schema(load_schema(path.name.removesuffix(".schema.json")))


def example(quantile: int = 0) -> dict:
    return {"tokens": [1, 2], "str_tokens": ["a", "b"], "activations": [0.0, 1.5],
            "quantile": quantile}  # fmt: skip


def record(hookpoint: str = "layers.1", latent: int = 7) -> dict:
    return {"hookpoint": hookpoint, "latent": latent, "n_activating": 12, "firing_rate": 0.01,
            "max_activation": 1.5, "train": [example()], "test": [example(1)],
            "non_activating": [example(-1)]}  # fmt: skip


def score(scorer: str = "detection", latent: int = 7) -> dict:
    return {"scorer": scorer, "hookpoint": "layers.1", "latent": latent, "explanation": "cats",
            "examples": [{"text": "a b", "activating": True, "quantile": 0, "prediction": True,
                          "correct": True}],
            "metrics": {"accuracy": 1.0}, "error": None}  # fmt: skip


FP = "0" * 64


def index_entry(skipped: dict[str, int]) -> dict:
    """One hookpoint's entry of examples/skipped.json."""
    return {"fingerprint": FP, "inputs": {"seed": 1}, "skipped": skipped}


def write_cache(folder: Path, **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.safetensors").write_bytes(b"x")
    config = {"model": "m", "sparse_model": "s", "hookpoint": folder.name, "num_latents": 10,
              "n_seqs": 2, "cache_ctx_len": 8,
              "shards": [{"file": "shard_0.safetensors", "start": 0, "end": 6},
                         {"file": "shard_1.safetensors", "start": 6, "end": 10}]}  # fmt: skip
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_cache_validation(tmp_path: Path) -> None:
    write_cache(tmp_path / "latents" / "layers.1")
    validate_artifact("cache", tmp_path / "latents")
    validate_artifact("cache", tmp_path / "latents" / "layers.1")
    (tmp_path / "latents" / "layers.1" / "tokens.safetensors").unlink()
    validate_artifact("cache", tmp_path / "latents" / "layers.1" / "config.json")  # JSON only
    with pytest.raises(UserError, match="tokens.safetensors is missing"):
        validate_artifact("cache", tmp_path / "latents")
    bad = write_cache(tmp_path / "b" / "layers.2", num_latents="ten")
    with pytest.raises(UserError, match=r"config.json: does not match the cache schema at num_lat"):
        validate_artifact("cache", bad)
    gap = write_cache(tmp_path / "c" / "layers.3", shards=[
        {"file": "shard_0.safetensors", "start": 0, "end": 4},
        {"file": "shard_1.safetensors", "start": 6, "end": 10}])  # fmt: skip
    with pytest.raises(UserError, match="next range should start at 4"):
        validate_artifact("cache", gap)
    with pytest.raises(UserError, match="unfinished or empty cache"):
        validate_artifact("cache", (tmp_path / "empty").mkdir() or tmp_path / "empty")
    moved = write_cache(tmp_path / "d" / "layers.4", hookpoint="layers.5")
    with pytest.raises(UserError, match="does not match its folder"):
        validate_artifact("cache", moved)


def test_examples_explanations_scores_summary(tmp_path: Path) -> None:
    ex = tmp_path / "examples"
    ex.mkdir()
    (ex / "layers.1_latent_7.json").write_text(json.dumps(record()))
    (ex / "skipped.json").write_text(json.dumps({"layers.1": {"3": 1}}))
    with pytest.raises(UserError, match="skipped schema"):  # the format before fingerprints
        validate_artifact("examples", ex)
    (ex / "skipped.json").write_text(json.dumps({"layers.1": index_entry({"3": 1})}))
    validate_artifact("examples", ex)
    (ex / "layers.1_latent_8.json").write_text(json.dumps(record(latent=9)))
    with pytest.raises(UserError, match="its name says 'layers.1' latent 8"):
        validate_artifact("examples", ex)
    (ex / "layers.1_latent_8.json").write_text(json.dumps({**record(latent=8), "train": [{}]}))
    with pytest.raises(UserError, match="examples schema at train/0"):
        validate_artifact("examples", ex)

    xp = tmp_path / "explanations"
    xp.mkdir()
    (xp / "layers.1_latent_7.txt").write_text("fires on cats")
    (xp / "failures.json").write_text("{}")
    validate_artifact("explanations", xp)
    (xp / "provenance").mkdir()
    side = xp / "provenance" / "layers.1_latent_7.json"
    side.write_text(json.dumps({"hookpoint": "layers.1", "latent": 7, "fingerprint": "ab",
                                "inputs": {}, "text_sha256": FP}))  # fmt: skip
    with pytest.raises(UserError, match="provenance schema at fingerprint"):
        validate_artifact("explanations", xp)
    side.write_text(json.dumps({"hookpoint": "layers.1", "latent": 7, "fingerprint": FP,
                                "inputs": {}, "text_sha256": FP}))  # fmt: skip
    validate_artifact("explanations", xp)
    (xp / "layers.1_latent_8.txt").write_text("")
    with pytest.raises(UserError, match="explanation schema at explanation"):
        validate_artifact("explanations", xp)

    sc = tmp_path / "scores"
    (sc / "detection").mkdir(parents=True)
    (sc / "detection" / "layers.1_latent_7.txt").write_text(json.dumps(score()))
    validate_artifact("scores", sc)
    (sc / "fuzz").mkdir()
    (sc / "fuzz" / "layers.1_latent_7.txt").write_text(json.dumps(score("detection")))
    with pytest.raises(UserError, match="does not match its folder 'fuzz'"):
        validate_artifact("scores", sc)

    with pytest.raises(UserError, match="summary.json is missing"):
        validate_artifact("summary", tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"scorers": {"detection": {}}}))
    validate_artifact("summary", tmp_path)
    with pytest.raises(UserError, match="unknown kind 'nope'"):
        validate_artifact("nope", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        validate_artifact("examples", tmp_path / "missing")


# ------------------------------------------------------------ in-step LLM server

SERVER_SCRIPT = textwrap.dedent(
    """
    import json, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    port, delay, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    print("loading weights", flush=True)
    if mode == "crash":
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(delay)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    if mode != "silent":
        HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    else:
        time.sleep(600)
    """
)


def server(tmp_path: Path, mode: str = "ok", delay: float = 0.3, **kw: object):
    from autointerp_full.vllm_server import VLLMServer

    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    command = [sys.executable, str(script), "{port}", str(delay), mode]
    options = {"poll_interval": 0.1, "startup_timeout": 20.0, **kw}
    return VLLMServer("m", command=command, log_path=tmp_path / "server.log", **options)


def test_server_ready_then_stopped(tmp_path: Path) -> None:
    import httpx

    srv = server(tmp_path)
    with srv as running:
        pid = running.process.pid
        assert httpx.get(f"{running.base_url}/models").json()["data"][0]["id"] == "m"
        assert running.base_url.endswith(f":{running.port}/v1")
    assert srv.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_server_crash_is_reported_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"exited with code 3 while starting.*loading weights"):
        with server(tmp_path, "crash"):
            pass


def test_server_timeout_kills_the_process(tmp_path: Path) -> None:
    srv = server(tmp_path, "silent", startup_timeout=1.0)
    with pytest.raises(UserError, match="not ready after 1s"):
        srv.__enter__()
    assert srv.process is None


def test_server_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    srv = server(tmp_path, "stubborn", stop_timeout=0.5).start()
    srv.wait_ready()
    start = time.monotonic()
    assert srv.stop() == -signal.SIGKILL
    assert time.monotonic() - start >= 0.5
    assert srv.stop() is None  # already stopped: nothing to do


def test_server_exit_code_on_sigterm(tmp_path: Path) -> None:
    srv = server(tmp_path).start()
    srv.wait_ready()
    assert srv.stop() == -signal.SIGTERM


def test_missing_vllm_is_a_clear_error() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    from autointerp_full.vllm_server import VLLMServer

    with pytest.raises(MissingExtraError, match=r"autointerp-full\[vllm\]"):
        VLLMServer("some/model")


# ------------------------------------------------------------ component helpers


def test_flatten_metrics_and_html() -> None:
    from autointerp_full.config import RunConfig
    from components.runtime import flatten_metrics, metrics_html

    summary = {"scorers": {"detection": {"overall": {"f1": 0.5, "n": 3, "ok": True,
               "nan": float("nan"), "name": "x"}}}}  # fmt: skip
    assert flatten_metrics(summary) == {
        "scorers.detection.overall.f1": 0.5,
        "scorers.detection.overall.n": 3.0,
    }
    html = metrics_html(summary, RunConfig(hookpoints=["layers.<1>"]))
    assert "scorers.detection.overall.f1" in html and "layers.&lt;1&gt;" in html


def test_assemble_links_files_and_merges_bookkeeping(tmp_path: Path) -> None:
    from components.runtime import assemble

    parts = []
    for i, latent in enumerate((3, 12)):
        part = tmp_path / f"part{i}"
        part.mkdir()
        (part / f"layers.1_latent_{latent}.json").write_text(json.dumps(record(latent=latent)))
        skipped = {"layers.1": index_entry({str(latent + 1): 0})}
        (part / "skipped.json").write_text(json.dumps(skipped))
        (part / ".usage.json").write_text(json.dumps({"explain": {"requests": 2}}))
        (part / "failures.json").write_text(json.dumps({f"layers.1_latent_{latent}": "x"}))
        parts.append(part)
    target = tmp_path / "run" / "examples"
    assemble(parts, target)
    assert sorted(p.name for p in target.glob("*_latent_*")) == [
        "layers.1_latent_12.json",
        "layers.1_latent_3.json",
    ]
    # Skips are united, the fingerprint and inputs kept as they are (numbers do not add).
    assert json.loads((target / "skipped.json").read_text()) == {
        "layers.1": index_entry({"4": 0, "13": 0})
    }
    assert json.loads((target / ".usage.json").read_text()) == {"explain": {"requests": 4}}
    assert json.loads((target / "failures.json").read_text()) == {
        "layers.1_latent_3": "x",
        "layers.1_latent_12": "x",
    }
    validate_artifact("examples", target)

    other = tmp_path / "other"
    other.mkdir()
    entry = {**index_entry({"20": 0}), "fingerprint": "1" * 64}
    (other / "skipped.json").write_text(json.dumps({"layers.1": entry}))
    with pytest.raises(UserError, match="different configurations"):
        assemble([*parts, other], tmp_path / "run2")
