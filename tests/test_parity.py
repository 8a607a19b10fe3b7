"""The same tiny configuration through the CLI and through the Kubeflow pipeline (kfp.local):
equal examples, explanations, scores and summary metrics, and no pipeline step writes into one
of its inputs. One pipeline run serves every test here (it is the slow part)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from llm_test_server import ScriptedLLMServer, interp_responder  # noqa: E402

from autointerp_full import layout  # noqa: E402

HP = "layers.1"
MAX_LATENTS = 16  # latents 2, 4, 8, 10 and 15 fire in the tiny cache
SHARD_SIZE = 8
SCORERS = ["detection", "fuzz"]
CONFIG: dict[str, Any] = {
    "dataset_repo": None,  # the tiny corpus, filled in below
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
    # The null deals explanations over the latents a score step has (its range in the pipeline,
    # all of them in the CLI), so its pairs differ between the faces by design; the pipeline's
    # null is tested in tests/test_null_baseline.py.
    "null_baseline": "none",
}


@pytest.fixture(scope="module")
def server():
    with ScriptedLLMServer(interp_responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def pipeline_root(
    tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus, server
) -> dict[str, Any]:
    """Run the compiled DAG once under kfp.local; returns its output root and request count."""
    from kfp import local

    from pipelines.pipeline import autointerp_pipeline

    tmp = tmp_path_factory.mktemp("kfp")
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", f"{ROOT}:{Path(__file__).parent}")
    root = tmp / "outputs"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        workspace_root=str(tmp / "workspace"),
    )
    before = server.chat_requests
    try:
        autointerp_pipeline(
            config_json=json.dumps({**CONFIG, "dataset_repo": str(tiny_corpus)}),
            model=str(tiny_model_dir),
            sparse_model=str(tiny_sae_dir),
            hookpoints=[HP],
            max_latents=MAX_LATENTS,
            explainer_model="test-model",
            explainer_api_base_url=server.url,
            scorers=SCORERS,
            shard_size=SHARD_SIZE,
        )
    finally:
        mp.undo()
    return {"root": root, "requests": server.chat_requests - before}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus, server) -> Path:
    from autointerp_full.cli import main

    results = tmp_path_factory.mktemp("cli")
    args = [str(tiny_model_dir), str(tiny_sae_dir), "--hookpoints", HP,
            "--max_latents", str(MAX_LATENTS), "--explainer_model", "test-model",
            "--explainer_api_base_url", server.url, "--scorers", *SCORERS,
            "--results_dir", str(results), "--name", "cli", "--no-verbose"]  # fmt: skip
    for name, value in {**CONFIG, "dataset_repo": str(tiny_corpus)}.items():
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no-{name}")
        else:
            args += [f"--{name}", str(value)]
    assert main(args) == 0
    return results / "cli"


def task_outputs(root: Path, task: str, artifact: str) -> list[Path]:
    """The folders one task wrote its artifact to, one per loop iteration."""
    return sorted(p.parent / artifact for p in root.rglob(f"{task}/executor_output.json"))


def tree(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `folder` (symlinks followed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != layout.USAGE
    }


def union(folders: list[Path]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for folder in folders:
        for name, data in tree(folder).items():
            if name in layout.BOOKKEEPING:
                continue  # merged below, not copied
            assert name not in out, f"{name} written by two shards"
            out[name] = data
    return out


def without_bookkeeping(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if Path(k).name not in layout.BOOKKEEPING}


def test_each_range_holds_only_its_latents(pipeline_root) -> None:
    root = pipeline_root["root"]
    ranges = {}
    for out in root.rglob("examples-op/executor_output.json"):
        meta = json.loads(out.read_text())["artifacts"]["examples"]["artifacts"][0]["metadata"]
        ranges[tuple(meta["latent_range"])] = out.parent / "examples"
    assert sorted(ranges) == [(0, 8), (8, 16)]
    built = []
    for (start, end), folder in ranges.items():
        ids = [latent for _, _, latent in layout.latent_files(folder, layout.EXAMPLE_EXT)]
        assert all(start <= i < end for i in ids)
        built += ids
    assert built, "no latent had enough examples"
    assert pipeline_root["requests"] > 0
    assert "<table>" in next(p for p in root.rglob("report-op/report") if p.is_file()).read_text()
    run_config = json.loads(next(root.rglob("summary/run_config.json")).read_text())
    assert run_config["hookpoints"] == [HP] and "hf_token" not in run_config


def test_cli_and_pipeline_agree(pipeline_root, cli_run: Path) -> None:
    root = pipeline_root["root"]
    for task, artifact, folder in (
        ("examples-op", "examples", layout.EXAMPLES),
        ("explain-op", "explanations", layout.EXPLANATIONS),
        ("score-op", "scores", layout.SCORES),
    ):
        pipeline = union(task_outputs(root, task, artifact))
        cli = without_bookkeeping(tree(cli_run / folder))
        assert pipeline, f"the pipeline wrote no {artifact}"
        assert sorted(pipeline) == sorted(cli), artifact
        for name, data in cli.items():
            assert pipeline[name] == data, f"{artifact}/{name} differs"

    # The examples' index (fingerprint, inputs, skips) united over the shards equals the CLI's.
    skipped: dict[str, Any] = {}
    for folder in task_outputs(root, "examples-op", "examples"):
        for hp, entry in json.loads((folder / layout.SKIPPED).read_text()).items():
            mine = skipped.setdefault(hp, {**entry, "skipped": {}})
            assert (mine["fingerprint"], mine["inputs"]) == (entry["fingerprint"], entry["inputs"])
            mine["skipped"].update(entry["skipped"])
    assert skipped == json.loads((cli_run / layout.EXAMPLES / layout.SKIPPED).read_text())

    cli_summary = json.loads((cli_run / layout.SUMMARY).read_text())
    kfp_summary = json.loads(next(root.rglob("summary/summary.json")).read_text())
    for key in ("hookpoints", "scorers", "examples", "explanations", "left_out"):
        assert kfp_summary[key] == cli_summary[key], key
    assert cli_summary["scorers"]["detection"]["overall"]["n_scored"] > 0

    # Usage of both stages reaches the summary on both faces, with the same counts.
    def counts(summary: dict[str, Any], stage: str) -> dict[str, Any]:
        return {k: v for k, v in summary["llm_usage"][stage].items() if k != "wall_seconds"}

    for stage in ("explain", "score"):
        assert counts(kfp_summary, stage) and counts(kfp_summary, stage) == counts(
            cli_summary, stage
        ), stage
    assert set(kfp_summary["llm_usage"]["score"]) - {"wall_seconds"} == set(SCORERS)


def test_no_step_writes_into_its_inputs(pipeline_root) -> None:
    """Every file and folder of a step's output artifact is older than the end of that step
    (its executor_output.json): a later step that wrote into it would leave a newer one."""
    root = pipeline_root["root"]
    checked = 0
    for done in root.rglob("executor_output.json"):
        finished = done.stat().st_mtime_ns
        for artifact in (p for p in done.parent.iterdir() if p != done):
            entries = [artifact, *artifact.rglob("*")] if artifact.is_dir() else [artifact]
            for entry in entries:
                assert entry.lstat().st_mtime_ns <= finished, (
                    f"{entry} changed after {done.parent.name} finished"
                )
                checked += 1
    assert checked > 10
    # In particular, the score step's usage and failures are its own, not the explanations'.
    for folder in task_outputs(root, "explain-op", "explanations"):
        usage = json.loads((folder / layout.USAGE).read_text())
        assert set(usage) - {"wall_seconds"} == {"explain"}
    for folder in task_outputs(root, "score-op", "scores"):
        usage = json.loads((folder / layout.USAGE).read_text())
        assert set(usage) - {"wall_seconds"} == set(SCORERS)
        assert (folder / layout.FAILURES).exists()
