"""The Kubeflow pipeline: its parameters come from RunConfig, the committed YAML is current, and
submission works (the whole DAG's local run is in tests/test_parity.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autointerp_full.config import RunConfig  # noqa: E402

COMPILED = ROOT / "pipelines" / "autointerp_pipeline.yaml"


def test_compiled_pipeline_is_current(tmp_path: Path) -> None:
    from pipelines.compile import compile_pipeline

    out = compile_pipeline(tmp_path / "p.yaml")
    assert COMPILED.exists(), "run `make pipeline` and commit pipelines/autointerp_pipeline.yaml"
    assert out.read_text() == COMPILED.read_text(), (
        "pipelines/autointerp_pipeline.yaml is stale: run `make pipeline`"
    )


def test_compile_is_deterministic(tmp_path: Path) -> None:
    from pipelines.compile import compile_pipeline

    a = compile_pipeline(tmp_path / "a.yaml").read_text()
    b = compile_pipeline(tmp_path / "b.yaml").read_text()
    assert a == b


def test_parameters_come_from_run_config() -> None:
    import yaml

    from components.runtime import PROMOTED_FIELDS

    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config_json", "shard_size", "cache_ranges", "baseline_uri",
                           "update_baseline", *PROMOTED_FIELDS}  # fmt: skip
    defaults = json.loads(params["config_json"]["defaultValue"])
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    # Every field but the secret and the machine-dependent one, with RunConfig's default.
    assert set(defaults) == fields - {"hf_token", "pipeline_num_proc"}
    base = RunConfig().public_dict()
    assert {k: v for k, v in defaults.items() if defaults[k] != base[k]} == {
        "explainer_provider": "vllm"
    }
    assert params["max_latents"]["parameterType"] == "NUMBER_INTEGER"
    assert params["hookpoints"]["parameterType"] == "LIST"
    assert params["model"]["parameterType"] == "STRING"
    assert params["model"]["defaultValue"] == RunConfig().model
    assert params["max_latents"]["defaultValue"] == 0  # no default: an empty value
    assert "hf_token" not in COMPILED.read_text().replace("autointerp-hf-token", "")


def test_gpu_steps_and_secrets_in_spec() -> None:
    import yaml

    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    executors = docs[0]["deploymentSpec"]["executors"]
    cache = executors["exec-cache-op"]["container"]
    assert cache["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "runtime-gpu" in cache["image"]
    assert "runtime-cpu" in executors["exec-explain-op"]["container"]["image"]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    cache_k8s = platform["exec-cache-op"]
    assert cache_k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert cache_k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert cache_k8s["secretAsEnv"][0]["secretName"] == "autointerp-hf-token"


def test_configure_merges_overrides_and_rejects_bad_input() -> None:
    from autointerp_full.errors import UserError
    from components.runtime import default_config_json, resolve_config

    base = default_config_json()
    out = json.loads(
        resolve_config(
            base,
            {"hookpoints": ["layers.1"], "max_latents": 3, "model": RunConfig().model,
             "scorers": [], "explainer_api_base_url": "http://llm:8000/v1"},
        )
    )  # fmt: skip
    assert out["hookpoints"] == ["layers.1"] and out["max_latents"] == 3
    assert out["model"] == RunConfig().model  # a default value defers to config_json
    out = json.loads(resolve_config(
        json.dumps({**json.loads(base), "model": "m2", "hookpoints": ["h"]}),
        {"model": RunConfig().model, "explainer_api_base_url": "http://llm:8000/v1"},
    ))  # fmt: skip
    assert out["model"] == "m2" and out["hookpoints"] == ["h"]
    with pytest.raises(UserError, match="config_json: not valid JSON"):
        resolve_config("{oops", {})
    with pytest.raises(UserError, match="hf_token must not be a pipeline parameter"):
        resolve_config(json.dumps({"hf_token": "x", "hookpoints": ["a"]}), {})
    with pytest.raises(UserError, match="--n_tokens"):
        resolve_config(base, {"hookpoints": ["a"], "n_tokens": -5,
                              "explainer_api_base_url": "http://x/v1"})  # fmt: skip
    with pytest.raises(UserError, match="explainer_api_base_url.*ConfigMap"):
        resolve_config(base, {"hookpoints": ["a"]})


def test_plan_ranges_cover_selection() -> None:
    from components.runtime import plan_ranges

    cfg = RunConfig(hookpoints=["a"], max_latents=10)
    assert plan_ranges(json.dumps(cfg.public_dict()), 128, 4) == [[0, 4], [4, 8], [8, 10]]
    cfg = RunConfig(hookpoints=["a"], feature_num=[90, 3, 50, 7])
    assert plan_ranges(json.dumps(cfg.public_dict()), 128, 2) == [[3, 8], [50, 91]]


# The whole DAG under kfp.local, against the CLI on the same configuration: tests/test_parity.py.


# ----------------------------------------------------------------------- submit


class FakeKFPClient:
    """Records what submit.py asks of kfp.Client (a test double of the KFP API)."""

    def __init__(self, final_state: str = "SUCCEEDED") -> None:
        self.final_state = final_state
        self.calls: list[tuple[str, dict]] = []

    def create_run_from_pipeline_package(self, package: str, **kw: object) -> object:
        self.calls.append(("run", {"package": package, **kw}))
        return type("Result", (), {"run_id": "r-1"})()

    def wait_for_run_completion(self, run_id: str, timeout: int) -> object:
        self.calls.append(("wait", {"run_id": run_id, "timeout": timeout}))
        return type("Run", (), {"state": self.final_state})()

    def create_experiment(self, name: str, namespace: str) -> object:
        return type("Experiment", (), {"experiment_id": f"exp-{name}"})()

    def create_recurring_run(self, **kw: object) -> object:
        self.calls.append(("schedule", kw))
        return type("Job", (), {"recurring_run_id": "j-1"})()


def submit(argv: list[str], client: FakeKFPClient) -> int:
    from pipelines.submit import main

    return main(argv, client_factory=lambda host, ns: client)


def test_submit_run_waits_and_reports_state(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KFP_HOST", "http://kfp.test")
    monkeypatch.setenv("KFP_NAMESPACE", "team")
    client = FakeKFPClient()
    argv = ["run", "--param", "max_latents=20", "--param", 'hookpoints=["layers.3"]',
            "--param", "model=org/model", "--wait"]  # fmt: skip
    assert submit(argv, client) == 0
    kind, call = client.calls[0]
    assert kind == "run" and call["namespace"] == "team"
    assert call["arguments"] == {
        "max_latents": 20,
        "hookpoints": ["layers.3"],
        "model": "org/model",
    }
    assert call["service_account"] == "autointerp-pipeline-runner"
    assert client.calls[1] == ("wait", {"run_id": "r-1", "timeout": 86400})
    assert submit(argv, FakeKFPClient("FAILED")) == 1


def test_submit_rejects_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KFP_HOST", raising=False)
    client = FakeKFPClient()
    assert submit(["run", "--namespace", "x"], client) == 2
    assert "--host" in capsys.readouterr().err
    base = ["--host", "http://kfp.test", "--namespace", "x"]
    assert submit(["run", *base, "--param", "nope=1"], client) == 2
    assert "not a pipeline parameter" in capsys.readouterr().err
    assert submit(["run", *base, "--param", "hf_token=abc"], client) == 2
    assert "Kubernetes Secrets" in capsys.readouterr().err
    assert submit(["schedule", *base, "--cron", "0 3 * * *", "--job-name", "n"], client) == 2
    err = capsys.readouterr().err
    assert "expected 6 fields" in err and err.count("\n") == 1
    assert client.calls == []


def test_submit_schedule_six_field_cron(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeKFPClient()
    argv = ["schedule", "--host", "http://kfp.test", "--namespace", "team", "--cron",
            "0 0 3 * * *", "--job-name", "nightly", "--param", "shard_size=32"]  # fmt: skip
    assert submit(argv, client) == 0
    kind, call = client.calls[0]
    assert kind == "schedule" and call["cron_expression"] == "0 0 3 * * *"
    assert call["experiment_id"] == "exp-autointerp" and call["no_catchup"] is True
    assert call["params"] == {"shard_size": 32}
