"""Provenance: a change matrix through the CLI (change one parameter, rerun: that stage and
everything downstream are recomputed, everything upstream is reused, and the log names the
field), plus the fingerprint rules that the matrix cannot reach cheaply."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from llm_test_server import ScriptedLLMServer, interp_responder

from autointerp_full import layout
from autointerp_full import provenance as prov
from autointerp_full.cli import main, parse_config
from autointerp_full.config import RunConfig
from autointerp_full.report.summary import load_run

HP = "layers.1"
N_LATENTS = 10
STAGES = ("cache", "examples", "explanations", "scores")


def base_args(model: Path, sae: Path, corpus: Path, results: Path, url: str) -> list[str]:
    return [
        str(model), str(sae),
        "--hookpoints", HP,
        "--dataset_repo", str(corpus), "--dataset_split", "train",
        "--n_tokens", "6144", "--cache_ctx_len", "64", "--batch_size", "16",
        "--max_latents", str(N_LATENTS), "--min_examples", "3",
        "--n_examples_train", "4", "--n_examples_test", "4", "--n_non_activating", "4",
        "--example_ctx_len", "12", "--num_examples_per_scorer_prompt", "4",
        "--scorers", "detection", "fuzz",
        "--explainer_provider", "vllm", "--explainer_model", "test-model",
        "--explainer_api_base_url", url,
        "--results_dir", str(results), "--device", "cpu", "--name", "run",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    with ScriptedLLMServer(interp_responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus, server) -> Path:
    """One complete run; each case reruns a copy of it (copytree keeps the files' mtimes)."""
    results = tmp_path_factory.mktemp("template")
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, results, server.url)
    assert main(args) == 0
    return results / "run"


def stage_files(run: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """Per stage, every file it wrote: relative path -> (inode, mtime); an atomic rewrite
    changes both."""
    roots = {
        "cache": run / layout.LATENTS,
        "examples": run / layout.EXAMPLES,
        "explanations": run / layout.EXPLANATIONS,
        "scores": run / layout.SCORES,
    }
    out = {}
    for stage, root in roots.items():
        files = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name not in layout.BOOKKEEPING:
                stat = path.stat()
                files[str(path.relative_to(run))] = (stat.st_ino, stat.st_mtime_ns)
        out[stage] = files
    return out


def current_files(run: Path, cfg: RunConfig) -> dict[str, set[str]]:
    """Per stage, the artifacts that belong to `cfg` (as summary.json counts them)."""
    view = load_run(run, cfg)
    explanations = set()
    for hp, latent in view.explanations:
        explanations.add(str(layout.explanation_file(run / layout.EXPLANATIONS, hp, latent)))
        side = layout.explanation_provenance_file(run / layout.EXPLANATIONS, hp, latent)
        explanations.add(str(side))
    scores = {
        str(layout.score_file(run / layout.SCORES, scorer, hp, latent))
        for scorer, files in view.scores.items()
        for hp, latent in files
    }
    out = {
        "examples": {str(p) for p in view.examples.values()},
        "explanations": explanations,
        "scores": scores,
    }
    return {k: {str(Path(p).relative_to(run)) for p in v} for k, v in out.items()}


def write_prompts(path: Path, key: str, extra: str) -> Path:
    """A prompt override file: the built-in prompt `key` with a sentence added."""
    from autointerp_full.prompts import default_prompts

    section, name, field = key.split(".")
    text = default_prompts().get(key) + f"\n{extra}\n"
    path.write_text(yaml.safe_dump({section: {name: {field: text}}}))
    return path


ALL = ("cache", "examples", "explanations", "scores")
FROM_EXAMPLES = ALL[1:]
FROM_EXPLANATIONS = ALL[2:]
# (case id, extra arguments, the stages recomputed, what the first of them must name in the
# log). "scores:detection" means only that scorer's files.
CASES = [
    ("cache_n_tokens", ["--n_tokens", "5120"], ALL, "cache.n_tokens"),
    ("n_examples_train", ["--n_examples_train", "3"], FROM_EXAMPLES, "n_examples_train"),
    ("n_examples_test", ["--n_examples_test", "3"], FROM_EXAMPLES, "n_examples_test"),
    ("n_non_activating", ["--n_non_activating", "3"], FROM_EXAMPLES, "n_non_activating"),
    ("example_ctx_len", ["--example_ctx_len", "10"], FROM_EXAMPLES, "example_ctx_len"),
    ("center_examples", ["--no-center_examples"], FROM_EXAMPLES, "center_examples"),
    ("min_examples", ["--min_examples", "2"], FROM_EXAMPLES, "min_examples"),
    ("non_activating_source", ["--non_activating_source", "neighbours"], FROM_EXAMPLES,
     "non_activating_source"),
    ("seed", ["--seed", "7"], FROM_EXAMPLES, "seed"),
    ("explainer", ["--explainer", "single_token"], FROM_EXPLANATIONS, "explainer"),
    ("explainer_prompt", ["--prompt_override", "--prompt_config_file", "{explainer_prompts}"],
     FROM_EXPLANATIONS, "explainer_prompt"),
    ("num_examples_per_scorer_prompt", ["--num_examples_per_scorer_prompt", "2"], ("scores",),
     "num_examples_per_scorer_prompt"),
    ("scorer_prompt", ["--prompt_override", "--prompt_config_file", "{detection_prompts}"],
     ("scores:detection",), "scorer_prompt"),
    # The scripted LLM answers as before, so the scores of the same texts are kept.
    ("overwrite_explanations", ["--overwrite", "explanations"], ("explanations",),
     "--overwrite explanations"),
    # A field that shapes examples only with another source: first switch to that source.
    ("neighbours_type", ["--non_activating_source", "neighbours", "--neighbours_type",
                         "decoder_similarity"], FROM_EXAMPLES, "neighbours_type"),
    # Fields that do not shape this configuration's examples change nothing.
    ("neighbours_type_unused", ["--neighbours_type", "decoder_similarity"], (), None),
    ("faiss_model_unused", ["--faiss_embedding_model", "some/other-model"], (), None),
]  # fmt: skip


# What a stage's log names when an upstream artifact changed.
UPSTREAM = {"examples": "cache", "explanations": "examples changed", "scores": "explanation"}


def log_line(text: str, stage: str) -> str:
    """The tally line of one stage ('examples layers.1: 3 reused, ...')."""
    prefix = {"examples": f"examples {HP}:", "explanations": "explain:"}.get(stage, stage + ":")
    lines = [line for line in text.splitlines() if prefix in line and " reused, " in line]
    assert len(lines) == 1, f"expected one tally line for {stage!r}:\n{text}"
    return lines[0]


@pytest.mark.parametrize(("case", "extra", "redo", "field"), CASES, ids=[c[0] for c in CASES])
def test_change_matrix(
    case, extra, redo, field, tmp_path, finished_run, tiny_model_dir, tiny_sae_dir, tiny_corpus,
    server, caplog,
):  # fmt: skip
    shutil.copytree(finished_run, tmp_path / "run")
    run = tmp_path / "run"
    prompt_files = {
        "explainer_prompts": write_prompts(
            tmp_path / "e.yaml", "explainers.default.system", "Be brief."
        ),
        "detection_prompts": write_prompts(
            tmp_path / "d.yaml", "scorers.detection.system", "Think first."
        ),
    }
    extra = [a.format(**prompt_files) for a in extra]
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, server.url) + extra
    if "--neighbours_type" in extra and "neighbours" in extra:
        assert main([*args[: -len(extra)], *extra[:2]]) == 0  # the source, with its default
    before = stage_files(run)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        assert main(args) == 0
    text = caplog.text
    after = stage_files(run)
    current = current_files(run, parse_config(args))
    current["cache"] = set(before["cache"])
    assert all(current[s] for s in ALL), current

    first = redo[0].split(":")[0] if redo else None
    for stage in ALL:
        if stage == "scores" and "scores:detection" in redo:
            redone = {p for p in current[stage] if "/detection/" in p}
        else:
            redone = current[stage] if stage in redo else set()
        kept = current[stage] - redone
        assert redone or stage not in redo
        for path in redone:
            assert before[stage].get(path) != after[stage].get(path), f"{path} was reused"
        for path in kept:
            assert before[stage].get(path) == after[stage].get(path), f"{path} was recomputed"
        if stage == "cache":
            continue
        # The first stage names the field; the ones below it name the upstream artifact.
        named = field if stage == first else UPSTREAM[stage]
        lines = (
            [log_line(text, f"score {s}") for s in ("detection", "fuzz")]
            if stage == "scores"
            else [log_line(text, stage)]
        )
        for line in lines:
            scorer = line.split("score ")[-1].split(":")[0] if stage == "scores" else None
            redid = any(f"/{scorer}/" in p for p in redone) if scorer else bool(redone)
            assert (" 0 recomputed" not in line) == redid, line
            assert " 0 reused" in line or not redid, line
            if redid:
                assert named in line, line


def log_line_scores(text: str) -> list[str]:
    return [line for line in text.splitlines() if "score " in line and " reused, " in line]


def test_rerun_without_changes_reuses_everything(
    tmp_path, finished_run, tiny_model_dir, tiny_sae_dir, tiny_corpus, server, caplog
):
    shutil.copytree(finished_run, tmp_path / "run")
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, server.url)
    before, requests = stage_files(tmp_path / "run"), server.chat_requests
    with caplog.at_level(logging.INFO, logger="autointerp_full"):
        assert main(args) == 0
    assert stage_files(tmp_path / "run") == before
    assert server.chat_requests == requests
    for line in [log_line(caplog.text, "examples"), log_line(caplog.text, "explanations")]:
        assert " 0 recomputed" in line
    assert len(log_line_scores(caplog.text)) == 2


def test_summary_counts_only_the_current_configuration(
    tmp_path, finished_run, tiny_model_dir, tiny_sae_dir, tiny_corpus, server
):
    """A rerun with fewer latents, then one with a new explainer whose LLM is down: the summary
    counts neither the deselected latents nor the old explainer's explanations and scores."""
    shutil.copytree(finished_run, tmp_path / "run")
    run = tmp_path / "run"
    args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, server.url)
    full = json.loads((run / layout.SUMMARY).read_text())
    n_full = full["scorers"]["detection"]["overall"]["n_latents"]
    assert main([*args, "--max_latents", "4"]) == 0
    small = json.loads((run / layout.SUMMARY).read_text())
    n_small = small["scorers"]["detection"]["overall"]["n_latents"]
    assert 0 < n_small < n_full
    assert small["left_out"]["scores"] == 2 * (n_full - n_small)

    with ScriptedLLMServer(lambda req: "no marker here") as broken:
        broken_args = base_args(tiny_model_dir, tiny_sae_dir, tiny_corpus, tmp_path, broken.url)
        assert main([*broken_args, "--explainer", "single_token"]) == 0
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["scorers"]["detection"]["overall"]["n_latents"] == 0
    assert summary["explanations"][HP]["n_explained"] == 0
    assert summary["explanations"][HP]["n_failed"] == full["explanations"][HP]["n_explained"]
    # Nothing already written was lost: the first explanations are still on disk.
    assert len(list(layout.latent_files(run / layout.EXPLANATIONS, ".txt"))) >= n_full


def test_usage_lands_in_each_stage_folder(finished_run):
    explain = json.loads((finished_run / layout.EXPLANATIONS / layout.USAGE).read_text())
    score = json.loads((finished_run / layout.SCORES / layout.USAGE).read_text())
    assert set(explain) - {"wall_seconds"} == {"explain"}
    # The shuffled null's requests (on by default) are counted apart from the real scores'.
    nulls = {"detection.shuffled_null", "fuzz.shuffled_null"}
    assert set(score) - {"wall_seconds"} == {"detection", "fuzz"} | nulls
    assert explain["explain"]["requests"] > 0 and score["detection"]["requests"] > 0
    summary = json.loads((finished_run / layout.SUMMARY).read_text())
    assert summary["llm_usage"]["explain"] == explain
    assert summary["llm_usage"]["score"] == score


# ------------------------------------------------------------------ fingerprint rules


def test_fields_of_another_source_do_not_shape_examples() -> None:
    cache = prov.cache_ref({"model": "m", "n_tokens": 5, "shards": []})

    def fp(**changes: object) -> str:
        return prov.fingerprint(prov.examples_inputs(RunConfig(**changes), cache))

    assert fp(neighbours_type="decoder_similarity") == fp()
    assert fp(faiss_embedding_model="x") == fp()
    neighbours = {"non_activating_source": "neighbours"}
    assert fp(**neighbours, neighbours_type="decoder_similarity") != fp(**neighbours)
    faiss = {"non_activating_source": "FAISS"}
    assert fp(**faiss, faiss_embedding_model="x") != fp(**faiss)
    # Explainers that need their own examples (contrast windows, strongest windows).
    assert fp(explainer="contrastive") != fp()
    assert fp(explainer="np_max_act") != fp()
    assert fp(explainer="cot") == fp()


def test_cache_content_is_in_the_examples_fingerprint() -> None:
    a = prov.cache_ref({"model": "m", "shards": [{"file": "shard_0", "n": 3}]})
    b = prov.cache_ref({"model": "m", "shards": [{"file": "shard_0", "n": 4}]})
    cfg = RunConfig()
    assert prov.fingerprint(prov.examples_inputs(cfg, a)) != prov.fingerprint(
        prov.examples_inputs(cfg, b)
    )
    assert prov.changed_fields(prov.examples_inputs(cfg, a), prov.examples_inputs(cfg, b)) == [
        "cache"
    ]


def test_score_fingerprint_follows_the_explanation_text() -> None:
    from autointerp_full.prompts import default_prompts

    cfg, prompts = RunConfig(), default_prompts()

    def fp(text: str, scorer: str = "detection", **changes: object) -> str:
        explanation = prov.Explanation(text, "e" * 64)
        inputs = prov.score_inputs(RunConfig(**changes), prompts, scorer, "x" * 64, explanation)
        return prov.fingerprint(inputs)

    assert fp("cats") != fp("dogs")
    assert fp("cats", log_probs=True) != fp("cats")
    assert fp("cats", "surprisal", model="other") != fp("cats", "surprisal")
    assert fp("cats", "detection", model="other") == fp("cats")  # not a detection input
    assert prov.score_inputs(cfg, prompts, "intruder", "x" * 64, None)["explanation"] is None


def test_peek_fingerprint_reads_the_head(tmp_path: Path) -> None:
    from autointerp_full.io import atomic_write_json

    inputs = {"a": 1}
    path = tmp_path / "x.json"
    atomic_write_json(path, prov.stamp({"big": "y" * 100_000}, inputs))
    assert prov.peek_fingerprint(path) == prov.fingerprint(inputs)
    path.write_text(json.dumps({"big": 1, "fingerprint": prov.fingerprint(inputs)}))
    assert prov.peek_fingerprint(path) is None  # not where stamp puts it: read in full instead
