"""End to end through the CLI on the tiny model, with a scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_test_server import ScriptedLLMServer, interp_responder

from autointerp_full.cli import main
from autointerp_full.llm import structured

N_LATENTS = 12


def base_args(model: Path, sae: Path, corpus: Path, results: Path, url: str) -> list[str]:
    return [
        str(model), str(sae),
        "--hookpoints", "layers.1",
        "--dataset_repo", str(corpus), "--dataset_split", "train",
        "--n_tokens", "6144", "--cache_ctx_len", "64", "--batch_size", "16",
        "--max_latents", str(N_LATENTS), "--min_examples", "3",
        "--n_examples_train", "4", "--n_examples_test", "4", "--n_non_activating", "4",
        "--example_ctx_len", "12", "--num_examples_per_scorer_prompt", "4",
        "--explainer_provider", "vllm", "--explainer_model", "test-model",
        "--explainer_api_base_url", url,
        "--results_dir", str(results), "--device", "cpu", "--no-verbose",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    with ScriptedLLMServer(interp_responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus, server) -> Path:
    """One full run whose cache the other tests copy, so each test skips the model pass."""
    results = tmp_path_factory.mktemp("seed")
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, results, server.url)
    assert main([*args, "--name", "seed", "--scorers", "detection"]) == 0
    return results / "seed" / "latents"


def new_run(tmp_path: Path, seeded_cache: Path, name: str) -> Path:
    run = tmp_path / name
    shutil.copytree(seeded_cache, run / "latents")
    return run


def stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("layers.1_latent_*.txt")}


def test_full_run_layout_and_resume(
    tmp_path, seeded_cache, tiny_model_dir, tiny_sae_dir, tiny_corpus, server, capsys
):
    new_run(tmp_path, seeded_cache, "r")
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, server.url)
    os.environ["HF_TOKEN"] = "hf_do_not_leak"
    try:
        assert main([*args, "--name", "r"]) == 0
    finally:
        del os.environ["HF_TOKEN"]
    run = tmp_path / "r"
    out = capsys.readouterr().out
    assert "detection" in out and str(run.resolve()) in out
    explained = stems(run / "explanations")
    assert explained, "no explanation written"
    for scorer in ("fuzz", "detection"):
        assert stems(run / "scores" / scorer) == explained
        record = json.loads((run / "scores" / scorer / f"{sorted(explained)[0]}.txt").read_text())
        assert record["examples"] and {"prediction", "correct"} <= set(record["examples"][0])
    config_text = (run / "run_config.json").read_text()
    assert "hf_do_not_leak" not in config_text
    assert json.loads(config_text)["max_latents"] == N_LATENTS
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["scorers"]) == {"fuzz", "detection"}

    before = server.chat_requests
    assert main([*args, "--name", "r"]) == 0
    assert server.chat_requests == before, "a finished run must not call the LLM again"

    assert main([*args, "--name", "r", "--overwrite", "scores", "--scorers", "detection"]) == 0
    assert server.chat_requests > before
    assert stems(run / "explanations") == explained


def test_kill_9_midway_then_rerun_loses_nothing_and_repeats_nothing(
    tmp_path, seeded_cache, tiny_model_dir, tiny_sae_dir, tiny_corpus
):
    run = new_run(tmp_path, seeded_cache, "k")
    with ScriptedLLMServer(interp_responder, delay=0.15, max_concurrent=2) as slow:
        args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, slow.url)
        args += ["--name", "k", "--max_concurrent_requests", "2"]
        proc = subprocess.Popen([sys.executable, "-m", "autointerp_full", *args])
        deadline = time.monotonic() + 120
        while len(stems(run / "explanations")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.rglob("*_latent_*.txt")}
        assert done, "the run was killed before it wrote anything"
        n_before = slow.chat_requests
        assert subprocess.run([sys.executable, "-m", "autointerp_full", *args]).returncode == 0
        n_total = slow.chat_requests
    for path, stamp in done.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, f"{path.name} redone"
    explained = stems(run / "explanations")
    examples = {p.stem for p in (run / "examples").glob("layers.1_latent_*.json")}
    assert explained == examples, "every latent with examples is explained exactly once"
    for scorer in ("fuzz", "detection"):
        assert stems(run / "scores" / scorer) == explained
    # Both runs together asked for each latent once, give or take the requests that were in
    # flight (2 slots) when the first run was killed. Each run also probes once per
    # response_format style whether the server honours it; those are not latent work.
    probes = sum(r.get("messages") == structured.PROBE_MESSAGES for r in slow.requests)
    assert probes <= 2 * len(structured.STYLES)
    per_latent = 1 + 2 * 2 * 2  # explain + 2 batches x 2 scorers, each also for the null
    assert n_before < n_total - probes <= per_latent * len(explained) + 2


@pytest.mark.parametrize(
    "extra",
    [
        ["--explainer", "single_token"],
        ["--explainer", "contrastive"],
        ["--explainer", "np_max_act"],
        ["--explainer", "cot"],
        ["--non_activating_source", "neighbours", "--neighbours_type", "co-occurrence"],
        ["--non_activating_source", "neighbours", "--neighbours_type", "decoder_similarity"],
        ["--non_activating_source", "neighbours", "--neighbours_type", "encoder_similarity"],
        ["--non_activating_source", "FAISS"],
        ["--scorers", "simulation", "surprisal", "embedding", "intruder", "--log_probs"],
        ["--enable_visualization", "--scorers", "detection"],
    ],
    ids=lambda a: "-".join(x.lstrip("-") for x in a[:4]),
)
def test_every_option_runs_from_the_cli(
    tmp_path, seeded_cache, tiny_model_dir, tiny_sae_dir, tiny_corpus, server, extra
):
    run = new_run(tmp_path, seeded_cache, "o")
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, server.url)
    assert main([*args, "--name", "o", *extra]) == 0
    assert stems(run / "explanations")
    scorers = extra[extra.index("--scorers") + 1 :] if "--scorers" in extra else ["fuzz"]
    for scorer in (s for s in scorers if not s.startswith("--")):
        assert stems(run / "scores" / scorer), scorer
    summary = json.loads((run / "summary.json").read_text())
    assert summary["scorers"]
    if "--enable_visualization" in extra:
        report = run / "report"
        assert (report / "index.html").is_file() and (report / "standalone.html").is_file()
        pages = list((report / "data" / "latent").rglob("*.js"))  # one per latent
        assert len(pages) >= len(stems(run / "explanations")) > 0


def test_explainer_none_reuses_explanations(
    tmp_path, seeded_cache, tiny_model_dir, tiny_sae_dir, tiny_corpus, server
):
    run = new_run(tmp_path, seeded_cache, "n")
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, server.url)
    assert main([*args, "--name", "n", "--scorers", "detection"]) == 0
    explained = stems(run / "explanations")
    (run / "explanations" / f"{sorted(explained)[0]}.txt").write_text("hand-written explanation")
    shutil.rmtree(run / "scores")
    assert main([*args, "--name", "n", "--scorers", "detection", "--explainer", "none"]) == 0
    record = json.loads((run / "scores" / "detection" / f"{sorted(explained)[0]}.txt").read_text())
    assert record["explanation"] == "hand-written explanation"


def explains_but_cannot_score(request: dict) -> str:
    """Explanations come back well formed; every scorer answer is unreadable."""
    system = " ".join(m["content"] for m in request["messages"] if m["role"] == "system")
    if "[EXPLANATION]" in system:
        return "[EXPLANATION]: common short words such as 'the'"
    return "I cannot answer that."


def test_failed_scores_are_retried_on_rerun(
    tmp_path, seeded_cache, tiny_model_dir, tiny_sae_dir, tiny_corpus
):
    run = new_run(tmp_path, seeded_cache, "f")
    with ScriptedLLMServer(lambda req: "I cannot answer that.") as bad:
        args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, bad.url)
        assert main([*args, "--name", "f", "--scorers", "detection", "--explainer", "none"]) == 0
    assert not stems(run / "explanations")  # nothing to reuse, so nothing scored
    with ScriptedLLMServer(explains_but_cannot_score) as bad:
        args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, bad.url)
        assert main([*args, "--name", "f", "--scorers", "detection"]) == 0
    failed = sorted((run / "scores" / "detection").glob("*.txt"))
    assert failed
    for path in failed:
        data = json.loads(path.read_text())
        assert data["error"] or data["incomplete"], data
    explained = {p: p.stat().st_mtime_ns for p in (run / "explanations").glob("*.txt")}
    with ScriptedLLMServer(interp_responder) as good:
        args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, good.url)
        assert main([*args, "--name", "f", "--scorers", "detection"]) == 0
        systems = [r["messages"][0]["content"] for r in good.requests]
    assert not any("[EXPLANATION]" in s for s in systems), "explanations were asked again"
    for path in failed:
        data = json.loads(path.read_text())
        assert data["error"] is None and not data["incomplete"], data
    assert {p: p.stat().st_mtime_ns for p in explained} == explained


def tree_bytes(run: Path) -> dict[str, bytes]:
    """Every file of a run's cache and derived artifacts, by relative path. Usage files (they
    hold wall-clock seconds), the summary and run_config.json are not results."""
    out = {}
    for folder in ("latents", "examples", "explanations", "scores"):
        for path in sorted((run / folder).rglob("*")):
            if path.is_file() and path.name != ".usage.json":
                out[str(path.relative_to(run))] = path.read_bytes()
    return out


def kill_during_cache(args: list[str], run: Path, delay: float) -> bool:
    """Start the CLI, SIGKILL it `delay` s after its cache build began (the staging folder
    appears once the model, sparse model and dataset have loaded); True if the cache was then
    still incomplete."""
    shutil.rmtree(run, ignore_errors=True)
    proc = subprocess.Popen([sys.executable, "-m", "autointerp_full", *args])
    staging = run / "latents" / ".staging"
    deadline = time.monotonic() + 120
    while not staging.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return not (run / "latents" / "layers.1" / "config.json").exists()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_in_the_cache_then_rerun_gives_the_uninterrupted_outputs(
    tmp_path, tiny_model_dir, tiny_sae_dir, tiny_corpus, server, seed
):
    """kill -9 at a random instant of the model pass or the merge; after the rerun the cache
    and every output are byte-identical to an uninterrupted run's, with no temp file left."""
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, server.url)
    # More tokens in single-row batches: a model pass long enough to be cut.
    args += ["--scorers", "detection", "--n_tokens", "16384", "--batch_size", "1"]
    assert main([*args, "--name", "ref"]) == 0
    run = tmp_path / "k"
    rng = random.Random(seed)
    # A fast machine may finish the pass before the kill lands: try again, sooner.
    cut = any(
        kill_during_cache([*args, "--name", "k"], run, rng.uniform(0.0, 0.2) / (1 + attempt))
        for attempt in range(5)
    )
    assert cut, "every kill came after the cache was complete"
    assert (
        subprocess.run([sys.executable, "-m", "autointerp_full", *args, "--name", "k"]).returncode
        == 0
    )
    assert tree_bytes(run) == tree_bytes(tmp_path / "ref")
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == ".staging"]
    assert not leftovers
