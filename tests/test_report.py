"""summary.json aggregation and counts, the CLI table, and the HTML report (escaping, sections)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from autointerp_full.config import RunConfig
from autointerp_full.errors import MissingExtraError
from autointerp_full.report import print_table, write_html_report, write_summary
from autointerp_full.report.plots import roc_points

HP = "layers.1"
EVIL = "<script>alert('x')</script> & cats"


def example(words: list[str], acts: list[float], quantile: int) -> dict[str, Any]:
    return {
        "tokens": list(range(len(words))),
        "str_tokens": words,
        "activations": acts,
        "quantile": quantile,
    }


def scored(activating: bool, prediction: bool | None, probability: float | None = None) -> dict:
    entry = {
        "text": "t",
        "activating": activating,
        "quantile": 0 if activating else -1,
        "prediction": prediction,
        "correct": prediction is not None and prediction == activating,
    }
    if probability is not None:
        entry["probability"] = probability
    return entry


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """Latents 0, 1, 2 built; 5 and 6 skipped; 0 and 1 explained, 2 failed to explain.
    detection: latent 0 has 3/4 right, latent 1 4/4 right, latent 2 failed; simulation on 0."""
    run = tmp_path / "run"
    for latent in (0, 1, 2):
        write(
            run / "examples" / f"{HP}_latent_{latent}.json",
            {
                "hookpoint": HP,
                "latent": latent,
                "n_activating": 300 + latent,
                "firing_rate": 0.001 * (latent + 1),
                "max_activation": 4.0,
                "train": [example(["a", " <b>cat</b>", " sat"], [0.0, 4.0, 1.0], 2)],
                "test": [example(["the", " cat"], [0.0, 2.0], 1)],
                "non_activating": [example(["a", " dog"], [0.0, 0.0], -1)],
            },
        )
    write(run / "examples" / "skipped.json", {HP: {"5": 3, "6": 1}})
    write(run / "explanations" / f"{HP}_latent_0.txt", EVIL)
    write(run / "explanations" / f"{HP}_latent_1.txt", "the word cat " * 10)
    write(run / "explanations" / "failures.json", {f"{HP}_latent_2": "unparseable reply"})
    det = run / "scores" / "detection"

    def det_file(latent: int, examples: list[dict], metrics: dict, error: str | None) -> dict:
        return {
            "scorer": "detection",
            "hookpoint": HP,
            "latent": latent,
            "explanation": "e",
            "examples": examples,
            "metrics": metrics,
            "error": error,
        }

    write(
        det / f"{HP}_latent_0.txt",
        det_file(
            0,
            [
                scored(True, True, 0.9),
                scored(True, False, 0.4),
                scored(False, False, 0.2),
                scored(False, False, 0.1),
            ],
            {"accuracy": 0.75, "recall": 0.5, "n": 4, "n_failed": 0},
            None,
        ),
    )
    write(
        det / f"{HP}_latent_1.txt",
        det_file(
            1,
            [
                scored(True, True, 0.8),
                scored(True, True, 0.7),
                scored(False, False, 0.3),
                scored(False, None),
            ],
            {"accuracy": 0.75, "recall": 1.0, "n": 4, "n_failed": 1},
            None,
        ),
    )
    write(det / f"{HP}_latent_2.txt", det_file(2, [], {}, "every request failed (1): 500"))
    write(
        run / "scores" / "simulation" / f"{HP}_latent_0.txt",
        {
            "scorer": "simulation",
            "hookpoint": HP,
            "latent": 0,
            "explanation": "e",
            "examples": [],
            "metrics": {"correlation": 0.5, "per_example_correlation": 0.4, "n": 3},
            "error": None,
        },
    )
    return run


def config() -> RunConfig:
    return RunConfig(
        model="tiny",
        sparse_model="sae",
        hookpoints=[HP],
        name="demo",
        scorers=["detection", "simulation"],
    )


def test_write_summary_aggregates_and_counts(run_dir: Path) -> None:
    summary = write_summary(run_dir, config(), extra={"llm_usage": {"score": {"requests": 7}}})
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["llm_usage"] == {"score": {"requests": 7}}

    det = summary["scorers"]["detection"]["hookpoints"][HP]
    assert (det["n_latents"], det["n_scored"], det["n_failed"], det["n_skipped"]) == (3, 2, 1, 2)
    assert det["mean_per_latent"]["accuracy"] == pytest.approx(0.75)
    assert det["mean_per_latent"]["recall"] == pytest.approx(0.75)
    assert det["totals"] == {"n": 8, "n_failed": 1}
    pooled = det["pooled"]
    # 8 examples: TP 3, FN 1, TN 3, one negative failed -> accuracy 6/8, recall 3/4.
    assert pooled["accuracy"] == pytest.approx(6 / 8)
    assert pooled["recall"] == pytest.approx(3 / 4)
    assert pooled["precision"] == pytest.approx(1.0)
    assert pooled["balanced_accuracy"] == pytest.approx((3 / 4 + 3 / 4) / 2)
    assert pooled["n"] == 8 and pooled["n_failed"] == 1
    assert summary["scorers"]["detection"]["overall"]["n_scored"] == 2

    sim = summary["scorers"]["simulation"]["hookpoints"][HP]
    assert sim["n_scored"] == 1 and "pooled" not in sim
    assert sim["mean_per_latent"]["correlation"] == pytest.approx(0.5)

    assert summary["examples"][HP] == {"n_latents": 3, "n_skipped": 2}
    assert summary["explanations"][HP] == {"n_explained": 2, "n_failed": 1, "n_missing": 0}
    assert summary["explanation_failures"] == {f"{HP}_latent_2": "unparseable reply"}


def test_write_summary_empty_run(tmp_path: Path) -> None:
    summary = write_summary(tmp_path, config())
    assert summary["scorers"]["detection"]["overall"]["n_latents"] == 0
    assert (tmp_path / "summary.json").exists()


def test_print_table(run_dir: Path) -> None:
    table = print_table(run_dir, ["detection", "simulation"])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["hookpoint", "latent", "explanation"]
    assert len(lines) == 2 + 3
    row0, row1, row2 = lines[2:]
    assert row0.split()[-2:] == ["0.75", "0.50"]
    assert row1.endswith("-") and "..." in row1  # long explanation truncated
    assert "(failed)" in row2 and "err" in row2


def test_roc_points() -> None:
    fpr, tpr = roc_points([True, True, False, False], [0.9, 0.8, 0.3, 0.1])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert (0.0, 1.0) in list(zip(fpr, tpr, strict=True))  # perfectly separable
    assert roc_points([True], [0.5]) == ([], [])


def test_html_report(run_dir: Path) -> None:
    pytest.importorskip("plotly")
    path = write_html_report(run_dir, config())
    assert path == run_dir / "report" / "index.html"
    html = path.read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; cats" in html
    assert "&lt;b&gt;cat&lt;/b&gt;" in html  # tokens are escaped too
    assert html.count('<section class="latent"') == 3
    for latent in (0, 1, 2):
        assert f'id="latent-layers.1-{latent}"' in html
        assert f'href="#latent-layers.1-{latent}"' in html
    assert 'title="4"' in html and "rgba(220, 50, 47, 1.00)" in html
    assert "every request failed (1): 500" in html
    assert "ROC" in html  # detection gathered probabilities
    assert '<script src="http' not in html  # self-contained: plotly.js is inline


def test_html_report_without_plotly(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(MissingExtraError, match=r"visualize"):
        write_html_report(run_dir, config())
    assert not (run_dir / "report" / "index.html").exists()
