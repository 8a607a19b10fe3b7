"""The Kubeflow pipeline: its parameters come from RunConfig, the committed YAML is current, and
the whole DAG runs locally (kfp.local) on the tiny model against a scripted LLM server."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from llm_test_server import ScriptedLLMServer  # noqa: E402

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
    assert set(params) == {"config_json", "shard_size", *PROMOTED_FIELDS}
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


# ----------------------------------------------------------------- kfp.local run


def _responder(request: dict) -> str:
    system = request["messages"][0]["content"]
    user = request["messages"][-1]["content"]
    if "You evaluate an explanation" in system:
        n = len(re.findall(r"^Example \d+:", user, re.MULTILINE))
        return json.dumps([1 if i % 2 == 0 else 0 for i in range(n)])
    return "[EXPLANATION]: common words such as the and a"


@pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner:UserWarning")
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")
def test_pipeline_runs_locally(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_sae_dir: Path,
    tiny_corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kfp import local

    from pipelines.pipeline import autointerp_pipeline

    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{Path(__file__).parent}")
    root = tmp_path / "outputs"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        workspace_root=str(tmp_path / "workspace"),
    )
    config = {
        "dataset_repo": str(tiny_corpus),
        "dataset_split": "train",
        "n_tokens": 3000,
        "batch_size": 8,
        "cache_ctx_len": 32,
        "n_splits": 4,
        "min_examples": 2,
        "n_examples_train": 3,
        "n_examples_test": 3,
        "n_non_activating": 3,
        "example_ctx_len": 8,
        "device": "cpu",
        "pipeline_num_proc": 1,
        "num_examples_per_scorer_prompt": 3,
        "explainer_provider": "vllm",
        "max_concurrent_requests": 4,
    }
    with ScriptedLLMServer(_responder) as server:
        autointerp_pipeline(
            config_json=json.dumps(config),
            model=str(tiny_model_dir),
            sparse_model=str(tiny_sae_dir),
            hookpoints=["layers.1"],
            max_latents=16,  # latents 2, 4, 8, 10 and 15 fire in the tiny cache
            explainer_model="test-model",
            explainer_api_base_url=server.url,
            scorers=["detection"],
            shard_size=8,
        )
        assert server.chat_requests > 0

    # Two latent ranges; each range's examples hold only latents of that range.
    ranges = {}
    for out in root.rglob("examples-op/executor_output.json"):
        meta = json.loads(out.read_text())["artifacts"]["examples"]["artifacts"][0]["metadata"]
        ranges[tuple(meta["latent_range"])] = out.parent / "examples"
    assert sorted(ranges) == [(0, 8), (8, 16)]
    built = []
    for (start, end), folder in ranges.items():
        ids = [int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("*_latent_*.json")]
        assert all(start <= i < end for i in ids)
        built += ids
    assert built, "no latent had enough examples"
    explained = [p for p in root.rglob("explanations/*_latent_*.txt")]
    scores = [p for p in root.rglob("scores/detection/*_latent_*.txt")]
    assert len(explained) == len(scores) == len(built)
    summary = json.loads(next(root.rglob("summary/summary.json")).read_text())
    assert summary["scorers"]["detection"]["overall"]["n_scored"] == len(built)
    run_config = json.loads(next(root.rglob("summary/run_config.json")).read_text())
    assert run_config["model"] == str(tiny_model_dir) and "hf_token" not in run_config
    assert "<table>" in next(p for p in root.rglob("report-op/report") if p.is_file()).read_text()
    outputs = json.loads(next(root.rglob("report-op/executor_output.json")).read_text())
    metrics = outputs["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["scorers.detection.overall.n_scored"] == len(built)


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
