"""The shuffled null baseline end to end, on the known-answer bench (tests/test_known_answer.py):
right explanations score 1.0 and a wrong latent's explanation about 0.5, so the null must come
out near 0.5 and the difference near 0.5 with an interval above 0; reruns reuse null scores and
complete failed null batches; the pipeline's score step deals explanations within its range."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import test_known_answer as known
from llm_test_server import ScriptedLLMServer, known_answer_responder
from test_known_answer import N_LATENTS, cli_args

from autointerp_full import layout
from autointerp_full.cli import main
from autointerp_full.nulls import shuffled_sources
from autointerp_full.schemas import validate_artifact

HP = "embed_tokens"
SCORERS = ("detection", "fuzz")


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_corpus) -> dict[str, Any]:
    """The known-answer bench's token latents, built here for this module."""
    return known.bench.__wrapped__(tmp_path_factory, tiny_corpus)


def args(bench: dict, corpus: Path, results: Path, url: str, name: str, *more: str) -> list[str]:
    # A generous timeout: this test checks the null, not the client's fault handling.
    base = cli_args(bench, corpus, results, url, name)
    return [*base, "--request_timeout", "30", "--null_baseline", "shuffled", *more]


def null_files(run: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    """{(scorer, latent, path): JSON} of every null score file."""
    out = {}
    for folder in layout.null_scorer_dirs(run / layout.SCORES):
        for path, _, latent in layout.latent_files(folder, layout.SCORE_EXT):
            out[(folder.name, latent, str(path))] = json.loads(path.read_text())
    return out


def stamps(run: Path) -> dict[str, int]:
    folder = layout.null_dir(run / layout.SCORES)
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*.txt")}


@pytest.fixture(scope="module")
def null_run(bench: dict, tiny_corpus, tmp_path_factory) -> dict[str, Any]:
    """One CLI run with the default --null_baseline (shuffled), and its log."""
    results = tmp_path_factory.mktemp("null")
    handler = _Collect()
    logger = logging.getLogger("autointerp_full.stages")  # the CLI resets its parent's handlers
    logger.addHandler(handler)
    try:
        with ScriptedLLMServer(known_answer_responder) as server:
            assert main(args(bench, tiny_corpus, results, server.url, "n", "--verbose")) == 0
            requests = server.chat_requests
    finally:
        logger.removeHandler(handler)
    return {"results": results, "run": results / "n", "log": handler.lines, "requests": requests}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_null_is_chance_and_the_difference_excludes_zero(null_run: dict) -> None:
    summary = json.loads((null_run["run"] / layout.SUMMARY).read_text())
    validate_artifact("summary", null_run["run"] / layout.SUMMARY)
    validate_artifact("scores", null_run["run"] / layout.SCORES)
    assert summary["null_baseline"]["kind"] == "shuffled"
    assert summary["null_baseline"]["scorers"] == list(SCORERS)
    for scorer in SCORERS:
        for entry in (
            summary["scorers"][scorer]["overall"],
            summary["scorers"][scorer]["hookpoints"][HP],
        ):
            block = entry["headline"]
            assert block["metric"] == "accuracy" and block["null_baseline"] == "shuffled"
            assert block["score"]["estimate"] == pytest.approx(1.0)
            assert block["score"]["n"] == N_LATENTS
            assert abs(block["null"]["estimate"] - 0.5) <= 0.1, block["null"]
            assert block["null"]["n"] == N_LATENTS
            difference = block["difference"]
            assert abs(difference["estimate"] - 0.5) <= 0.1, difference
            assert difference["low"] > 0 and difference["n"] == N_LATENTS
            assert entry["null_scores"]["n_latents"] == N_LATENTS
    latents = summary["latents"]
    assert [x["latent"] for x in latents] == list(range(N_LATENTS))
    for entry in latents:
        det = entry["scores"]["detection"]
        assert det["value"] == 1.0 and det["interval"]["method"] == "wilson"
        assert det["interval"]["low"] < 1.0 == det["interval"]["high"]
        assert det["null"]["source"]["latent"] != entry["latent"]
        assert det["difference"] == pytest.approx(det["value"] - det["null"]["value"])


def test_sources_are_the_seeded_derangement(null_run: dict) -> None:
    files = null_files(null_run["run"])
    assert len(files) == len(SCORERS) * N_LATENTS
    expected = shuffled_sources([(HP, i) for i in range(N_LATENTS)], seed=22)
    for (scorer, latent, _), data in files.items():
        source = (data["null"]["source_hookpoint"], data["null"]["source_latent"])
        assert source == expected[(HP, latent)] != (HP, latent), (scorer, latent)
        assert data["inputs"]["null"] == {
            "kind": "shuffled",
            "seed": 22,
            "source": {"hookpoint": source[0], "latent": source[1]},
        }
        # Scored with the source's explanation, on this latent's examples.
        text = (null_run["run"] / "explanations" / f"{HP}_latent_{source[1]}.txt").read_text()
        assert data["explanation"] == text and data["latent"] == latent
    # Another seed deals another derangement (the bench has 265 of them for 6 latents).
    assert shuffled_sources(expected, seed=23) != expected


def test_cost_is_logged_before_the_llm_stages(null_run: dict) -> None:
    log = null_run["log"]
    cost = [i for i, line in enumerate(log) if line.startswith("--null_baseline shuffled:")]
    assert len(cost) == 1
    # 20 test + 20 non-activating examples, 5 per prompt: 8 requests per scorer and latent.
    assert f"about {2 * 8 * N_LATENTS} more LLM requests for {N_LATENTS} latents" in log[cost[0]]
    # Before any LLM request: right after the latents are counted, long before the tallies.
    assert log[cost[0] - 1] == f"explain and score: {N_LATENTS} latents with examples"
    done = [i for i, line in enumerate(log) if line.startswith("shuffled null: 12 null score")]
    assert len(done) == 1 and cost[0] < done[0]


def test_table_shows_the_null_and_intervals(null_run: dict, capsys) -> None:
    from autointerp_full.config import RunConfig
    from autointerp_full.report import print_table

    cfg = RunConfig(**json.loads((null_run["run"] / layout.RUN_CONFIG).read_text()))
    table = print_table(null_run["run"], cfg)
    lines = table.splitlines()
    assert "detection null" in lines[0] and "fuzz null" in lines[0]
    assert "1.00 [0.91, 1.00]" in lines[2]  # a latent's Wilson interval over 40 examples
    mean_rows = [line for line in lines if line.startswith(("detection ", "fuzz "))]
    assert len(mean_rows) == 2
    assert all(line.count("[") == 3 and f"n={N_LATENTS}" in line for line in mean_rows)
    assert any("null = the same scorer on another latent's explanation" in x for x in lines)


def test_rerun_reuses_null_scores_and_completes_failed_null_batches(
    null_run: dict, bench: dict, tiny_corpus
) -> None:
    run = null_run["run"]
    before = stamps(run)
    with ScriptedLLMServer(known_answer_responder) as server:
        assert main(args(bench, tiny_corpus, null_run["results"], server.url, "n")) == 0
        assert server.chat_requests == 0, "a finished run must not ask for its nulls again"
    assert stamps(run) == before

    # Fail one batch of one null score, as a run that lost it would have left it.
    path = layout.null_score_file(run / layout.SCORES, "fuzz", HP, 2)
    data = json.loads(path.read_text())
    answered = data["examples"]
    for entry in answered:
        if entry["batch"] == 1:
            entry["prediction"] = entry["correct"] = None
    data["incomplete"] = True
    data["metrics"]["n_failed_batches"] = 1
    path.write_text(json.dumps(data))
    with ScriptedLLMServer(known_answer_responder) as server:
        assert main(args(bench, tiny_corpus, null_run["results"], server.url, "n")) == 0
        assert server.chat_requests == 1  # only the failed batch is asked again
    redone = json.loads(path.read_text())
    assert redone["incomplete"] is False
    assert all(e["prediction"] is not None for e in redone["examples"])
    assert {k: v for k, v in stamps(run).items() if k != str(path)} == {
        k: v for k, v in before.items() if k != str(path)
    }


def test_null_baseline_none_scores_no_null(bench: dict, tiny_corpus, tmp_path: Path) -> None:
    with ScriptedLLMServer(known_answer_responder) as server:
        argv = args(bench, tiny_corpus, tmp_path, server.url, "off", "--null_baseline", "none")
        assert main(argv) == 0
        # Explanations and real scores only: 8 requests per scorer and latent.
        assert server.chat_requests == N_LATENTS + 2 * 8 * N_LATENTS
    run = tmp_path / "off"
    assert not layout.null_dir(run / layout.SCORES).exists()
    summary = json.loads((run / layout.SUMMARY).read_text())
    block = summary["scorers"]["detection"]["overall"]["headline"]
    assert block["null"] is None and block["difference"] is None
    assert block["score"]["estimate"] == 1.0 and "null_scores" not in summary["scorers"]["fuzz"]
    assert summary["null_baseline"]["scorers"] == []


def test_pipeline_score_step_deals_within_its_range(
    null_run: dict, bench: dict, tiny_corpus, tmp_path: Path
) -> None:
    """The pipeline's score step sees only its range's explanations: the null's derangement is
    over those latents, and every source lies in the range."""
    from autointerp_full.config import RunConfig
    from autointerp_full.stages import score_stage

    run = null_run["run"]
    cfg = RunConfig(**json.loads((run / layout.RUN_CONFIG).read_text()))
    scores = tmp_path / "scores"
    (tmp_path / "report").mkdir()
    with ScriptedLLMServer(known_answer_responder) as server:
        cfg.explainer_api_base_url = server.url
        for latent_range in ((0, 3), (3, 6)):
            score_stage(cfg, run / "examples", run / "explanations", scores, latent_range)
    validate_artifact("scores", scores)
    for latent_range in ((0, 3), (3, 6)):
        wanted = [(HP, i) for i in range(*latent_range)]
        expected = shuffled_sources(wanted, cfg.seed)
        for scorer in SCORERS:
            for key, source in expected.items():
                data = json.loads(layout.null_score_file(scores, scorer, *key).read_text())
                assert data["null"]["source_latent"] == source[1]
                assert latent_range[0] <= source[1] < latent_range[1]
                assert abs(data["metrics"]["balanced_accuracy"] - 0.5) <= 0.25
    # The report step's summary takes each null's recorded source as it is.
    from autointerp_full.report import write_summary

    report = tmp_path / "report"
    for folder in ("latents", "examples", "explanations"):
        (report / folder).symlink_to(run / folder)
    (report / "scores").symlink_to(scores)
    summary = write_summary(report, cfg)
    for scorer in SCORERS:
        block = summary["scorers"][scorer]["overall"]["headline"]
        assert block["null"]["n"] == N_LATENTS and block["difference"]["low"] > 0
    assert summary["left_out"]["null_scores"] == 0
