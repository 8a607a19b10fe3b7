"""`python -m autointerp_full compare`: shared latents, paired changes with intervals, movers,
latent_scores.json round trip, bad input (one line, exit 2), and no torch import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_builder import RunBuilder, config
from subcommand import assert_rejected, assert_torch_free

from autointerp_full import compare
from autointerp_full.cli import main as cli_main

A, B = "layers.1", "layers.2"


def make_run(root: Path, name: str, right: dict[tuple[str, int], int], **changes) -> Path:
    """Detection and fuzz scored on the given latents with `right` answers of 10 each (fuzz
    always 5 of 10, so it does not change between runs)."""
    builder = RunBuilder(root / name, config(name, [A, B], **changes))
    for (hp, latent), k in right.items():
        builder.latent(hp, latent, f"latent {latent}", {"detection": k, "fuzz": 5})
    return builder.run.root


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """A: 12 latents at 5/10 right, latent 8 of layers.2 at 0/10. B: the same latents at 9/10,
    latent 7 at 0/10 and latent 8 at 10/10 instead, one latent dropped and one new."""
    keys = [(A, i) for i in range(6)] + [(B, i) for i in range(6, 12)]
    run_a = make_run(tmp_path, "a", {k: 0 if k == (B, 8) else 5 for k in keys})
    right_b = {k: 9 for k in keys[1:]}
    right_b[(B, 7)] = 0
    right_b[(B, 8)] = 10
    right_b[(B, 20)] = 9
    run_b = make_run(tmp_path, "b", right_b, explainer_model="bigger")
    return run_a, run_b


def test_compare_counts_changes_and_intervals(runs: tuple[Path, Path]) -> None:
    result = compare.compare(compare.load_scores(runs[0]), compare.load_scores(runs[1]))
    assert result["n_shared_latents"] == 11
    assert (result["n_only_a"], result["n_only_b"]) == (1, 1)
    assert result["changed_config"] == ["explainer_model"]
    det = result["scorers"]["detection"]
    overall = det["overall"]
    assert overall["n_shared"] == 11
    assert overall["a"] == {"mean": pytest.approx(5.5 / 12), "n_scored": 12, "n_failed": 0}
    # 9 latents from 0.5 to 0.9, one from 0.5 to 0.0, one from 0.0 to 1.0.
    assert overall["change"]["estimate"] == pytest.approx((9 * 0.4 - 0.5 + 1.0) / 11)
    assert overall["change"]["low"] <= overall["change"]["estimate"] <= overall["change"]["high"]
    assert overall["verdict"] == "higher"
    assert det["hookpoints"][A]["n_shared"] == 5
    assert det["hookpoints"][A]["change"]["estimate"] == pytest.approx(0.4)
    assert det["hookpoints"][A]["verdict"] == "higher"
    # fuzz did not move: the interval is [0, 0], which does not exclude 0.
    assert result["scorers"]["fuzz"]["overall"]["verdict"] == "no clear change"
    top, second = result["movers"][:2]
    assert (top["scorer"], top["hookpoint"], top["latent"]) == ("detection", B, 8)
    assert top["change"] == pytest.approx(1.0)
    assert top["outside_intervals"] is True  # Wilson [0, 0.28] vs [0.72, 1]: no overlap
    assert (second["latent"], second["change"]) == (7, pytest.approx(-0.5))
    # 5/10 -> 0/10: Wilson [0.24, 0.76] and [0, 0.28] overlap.
    assert second["outside_intervals"] is False


def test_failed_latents_are_counted_not_paired(tmp_path: Path) -> None:
    run_a = make_run(tmp_path, "a", {(A, 0): 5, (A, 1): 5})
    builder = RunBuilder(tmp_path / "b", config("b", [A, B], scorers=["detection"]))
    builder.latent(A, 0, "x", {"detection": 8})
    builder.examples(A, 1)
    builder.explanation(A, 1, "y")
    builder.score("detection", A, 1, 0, 0, error="every request failed")
    result = compare.compare(compare.load_scores(run_a), compare.load_scores(builder.run.root))
    det = result["scorers"]["detection"]["overall"]
    assert det["n_shared"] == 1
    assert det["b"] == {"mean": pytest.approx(0.8), "n_scored": 1, "n_failed": 1}
    assert result["scorers_only_a"] == ["fuzz"]
    assert "fuzz" not in result["scorers"]


def test_latent_scores_file_compares_like_the_run(runs: tuple[Path, Path], tmp_path: Path) -> None:
    saved = compare.write_latent_scores(runs[0], tmp_path / "artifact" / compare.LATENT_SCORES)
    data = json.loads(saved.read_text())
    entry = data["scorers"]["detection"]["latents"][f"{A}_latent_0"]
    assert entry == {"value": 0.5, "right": 5, "answered": 10, "error": None,
                     "incomplete": False}  # fmt: skip
    from_file = compare.compare(compare.load_scores(saved.parent), compare.load_scores(runs[1]))
    from_run = compare.compare(compare.load_scores(runs[0]), compare.load_scores(runs[1]))
    assert from_file["scorers"] == from_run["scorers"]
    assert from_file["movers"] == from_run["movers"]


def test_cli_prints_table_and_writes_json(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cmp.json"
    assert cli_main(["compare", str(runs[0]), str(runs[1]), "--json", str(out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "11 latents in both runs (1 only in A, 1 only in B)" in text
    assert "configuration differs in: explainer_model" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("detection")]
    assert [r[1] for r in rows[:3]] == ["all", A, B]
    assert rows[0][5] == "+0.373" and rows[0][-1] == "higher"
    saved = json.loads(out.read_text())
    assert len(saved["movers"]) == 3


@pytest.mark.parametrize(
    "args, needle",
    [
        (["missing_a", "missing_b"], "missing_a: no such run folder or file"),
        (["EMPTY", "EMPTY"], "neither a run folder"),
        (["BAD", "BAD"], "unreadable"),
        (["RUN", "RUN", "--top", "-1"], "--top: must be >= 0"),
        (["RUN"], "required: RUN_B"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], needle: str, runs: tuple[Path, Path], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    names = {"EMPTY": str(tmp_path / "empty"), "BAD": str(tmp_path / "bad.json"),
             "RUN": str(runs[0])}  # fmt: skip
    assert_rejected(["compare", *[names.get(a, a) for a in args]], needle, tmp_path)


def test_compare_does_not_import_torch(runs: tuple[Path, Path]) -> None:
    assert_torch_free(["compare", str(runs[0]), str(runs[1])])


def test_a_run_is_still_parsed_as_before() -> None:
    from autointerp_full.cli import parse_config

    cfg = parse_config(["some/model", "some/sae", "--hookpoints", "layers.3"])
    assert (cfg.model, cfg.sparse_model, cfg.hookpoints) == ("some/model", "some/sae", ["layers.3"])


def report_step(builder: RunBuilder, out: Path, baseline: str, update: bool) -> dict:
    """The pipeline's report step on a run folder's stage outputs (one shard each)."""
    from components.runtime import run_report

    run = builder.run
    pairs = [[(str(d), str(d))] for d in (run.examples, run.explanations, run.scores)]
    return run_report(builder.cfg.to_json(), *pairs, str(out / "summary"), str(out / "r.html"),
                      baseline, update)  # fmt: skip


def test_report_step_compares_with_the_recurring_jobs_baseline(tmp_path: Path) -> None:
    def nightly(name: str, right: int) -> RunBuilder:
        builder = RunBuilder(tmp_path / name, config(name, [A]))
        for latent in range(6):
            builder.latent(A, latent, f"l{latent}", {"detection": right, "fuzz": 5})
        return builder

    baseline = tmp_path / "baseline"
    # First run: nothing to compare with yet; it becomes the baseline.
    first = report_step(nightly("mon", 5), tmp_path / "mon", str(baseline), True)
    assert not any(k.startswith("baseline.") for k in first)
    assert (baseline / compare.LATENT_SCORES).is_file() and (baseline / "summary.json").is_file()
    assert not (tmp_path / "mon" / "summary" / "comparison.json").exists()
    # Second run: compared with the first, in the metrics, the HTML and comparison.json.
    second = report_step(nightly("tue", 9), tmp_path / "tue", str(baseline), False)
    assert second["baseline.n_shared_latents"] == 6
    assert second["baseline.detection.change"] == pytest.approx(0.4)
    assert second["baseline.detection.baseline_mean"] == pytest.approx(0.5)
    assert second["baseline.fuzz.change"] == pytest.approx(0.0)
    html = (tmp_path / "tue" / "r.html").read_text()
    assert "Compared with the baseline" in html and html.rstrip().endswith("</html>")
    saved = json.loads((tmp_path / "tue" / "summary" / "comparison.json").read_text())
    assert saved["a"]["run"] == "mon" and saved["b"]["run"] == "tue"
    # Not published (update_baseline off): the baseline is still the first run.
    kept = json.loads((baseline / compare.LATENT_SCORES).read_text())
    assert kept["run"] == "mon"


def test_update_baseline_needs_a_baseline_uri(tmp_path: Path) -> None:
    from autointerp_full.errors import UserError

    builder = RunBuilder(tmp_path / "r", config("r", [A]))
    with pytest.raises(UserError, match="update_baseline: needs baseline_uri"):
        report_step(builder, tmp_path / "out", "", True)
