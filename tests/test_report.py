"""summary.json aggregation and counts, the CLI table, and the HTML report (escaping, sections)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autointerp_full import layout
from autointerp_full import provenance as prov
from autointerp_full.config import RunConfig
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


def record(latent: int) -> dict[str, Any]:
    return {
        "hookpoint": HP,
        "latent": latent,
        "n_activating": 300 + latent,
        "firing_rate": 0.001 * (latent + 1),
        "max_activation": 4.0,
        "train": [example(["a", " <b>cat</b>", " sat"], [0.0, 4.0, 1.0], 2)],
        "test": [example(["the", " cat"], [0.0, 2.0], 1)],
        "non_activating": [example(["a", " dog"], [0.0, 0.0], -1)],
    }


class Stamper:
    """Writes artifacts with the fingerprints the current configuration gives (as the stages
    would), or with a stale one."""

    def __init__(self, run: Path, cfg: RunConfig) -> None:
        from autointerp_full.prompts import default_prompts

        self.run, self.cfg, self.prompts = run, cfg, default_prompts()
        cache = prov.cache_ref({"model": cfg.model, "hookpoint": HP, "n_tokens": 100})
        self.examples_inputs = prov.examples_inputs(cfg, cache)
        self.examples_fp = prov.fingerprint(self.examples_inputs)
        self.explanations: dict[int, prov.Explanation] = {}

    def index(self, skipped: dict[str, int]) -> None:
        entry = {"fingerprint": self.examples_fp, "inputs": self.examples_inputs,
                 "skipped": skipped}  # fmt: skip
        write(layout.skipped_file(self.run / "examples"), {HP: entry})

    def examples(self, latent: int, stale: bool = False) -> None:
        inputs = {**self.examples_inputs, "seed": -1} if stale else self.examples_inputs
        write(layout.example_file(self.run / "examples", HP, latent),
              prov.stamp(record(latent), inputs))  # fmt: skip

    def explanation(self, latent: int, text: str) -> None:
        folder = self.run / "explanations"
        inputs = prov.explanation_inputs(self.cfg, self.prompts, self.examples_fp)
        write(layout.explanation_file(folder, HP, latent), text)
        side = prov.explanation_record(HP, latent, text, inputs)
        write(layout.explanation_provenance_file(folder, HP, latent), side)
        self.explanations[latent] = prov.Explanation(text, prov.fingerprint(inputs))

    def score(self, scorer: str, latent: int, data: dict[str, Any]) -> None:
        explanation = self.explanations.get(latent, prov.Explanation("gone", None))
        inputs = prov.score_inputs(self.cfg, self.prompts, scorer, self.examples_fp, explanation)
        write(layout.score_file(self.run / "scores", scorer, HP, latent), prov.stamp(data, inputs))


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


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """Latents 0-3 built; 5 and 6 skipped; 0, 1, 2 explained, 3 failed to explain.
    detection: latent 0 has 3/4 right, latent 1 4/4 right, latent 2 failed; simulation on 0.
    Left over from another configuration: latent 9's examples, explanation and score, and a
    fuzz score (fuzz is not configured)."""
    run = tmp_path / "run"
    stamp = Stamper(run, config())
    for latent in (0, 1, 2, 3):
        stamp.examples(latent)
    stamp.examples(9, stale=True)
    stamp.index({"5": 3, "6": 1})
    stamp.explanation(0, EVIL)
    stamp.explanation(1, "the word cat " * 10)
    stamp.explanation(2, "numbers")
    stamp.explanation(9, "stale")
    write(run / "explanations" / "failures.json", {f"{HP}_latent_3": "unparseable reply"})
    examples0 = [
        scored(True, True, 0.9),
        scored(True, False, 0.4),
        scored(False, False, 0.2),
        scored(False, False, 0.1),
    ]
    stamp.score("detection", 0, det_file(0, examples0,
                {"accuracy": 0.75, "recall": 0.5, "n": 4, "n_failed": 0}, None))  # fmt: skip
    examples1 = [
        scored(True, True, 0.8),
        scored(True, True, 0.7),
        scored(False, False, 0.3),
        scored(False, None),
    ]
    stamp.score("detection", 1, det_file(1, examples1,
                {"accuracy": 0.75, "recall": 1.0, "n": 4, "n_failed": 1}, None))  # fmt: skip
    stamp.score("detection", 2, det_file(2, [], {}, "every request failed (1): 500"))
    stamp.score("detection", 9, det_file(9, examples1, {"accuracy": 0.0}, None))
    stamp.score("fuzz", 0, {**det_file(0, examples1, {"accuracy": 0.0}, None), "scorer": "fuzz"})
    stamp.score(
        "simulation",
        0,
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


def config(**changes: Any) -> RunConfig:
    base = {"model": "tiny", "sparse_model": "sae", "hookpoints": [HP], "name": "demo",
            "scorers": ["detection", "simulation"]}  # fmt: skip
    return RunConfig(**{**base, **changes})


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
    # 8 examples: TP 3, FN 1, TN 3, and one negative whose answer failed, which is left out of
    # the metrics and counted -> accuracy 6/7, recall 3/4, specificity 3/3.
    assert pooled["accuracy"] == pytest.approx(6 / 7)
    assert pooled["recall"] == pytest.approx(3 / 4)
    assert pooled["precision"] == pytest.approx(1.0)
    assert pooled["balanced_accuracy"] == pytest.approx((3 / 4 + 3 / 3) / 2)
    assert pooled["n"] == 7 and pooled["n_failed"] == 1
    assert summary["scorers"]["detection"]["overall"]["n_scored"] == 2

    sim = summary["scorers"]["simulation"]["hookpoints"][HP]
    assert sim["n_scored"] == 1 and "pooled" not in sim
    assert sim["mean_per_latent"]["correlation"] == pytest.approx(0.5)

    assert summary["examples"][HP] == {"n_latents": 4, "n_skipped": 2}
    assert summary["explanations"][HP] == {"n_explained": 3, "n_failed": 1, "n_missing": 0}
    assert summary["explanation_failures"] == {f"{HP}_latent_3": "unparseable reply"}
    # Latent 9 (examples, explanation, score) and the unconfigured fuzz score are left out.
    assert summary["left_out"] == {"examples": 1, "explanations": 1, "scores": 2, "null_scores": 0}
    assert set(summary["scorers"]) == {"detection", "simulation"}


def test_summary_follows_the_configuration(run_dir: Path) -> None:
    """Another seed or explainer voids the artifacts made under this one; a smaller selection
    leaves the other latents out."""
    summary = write_summary(run_dir, config(seed=5))
    assert summary["examples"][HP] == {"n_latents": 0, "n_skipped": 0}
    assert summary["scorers"]["detection"]["overall"]["n_latents"] == 0
    summary = write_summary(run_dir, config(explainer="single_token"))
    assert summary["examples"][HP]["n_latents"] == 4
    assert summary["explanations"][HP]["n_explained"] == 0
    assert summary["scorers"]["simulation"]["overall"]["n_latents"] == 0
    summary = write_summary(run_dir, config(max_latents=2))
    assert summary["examples"][HP] == {"n_latents": 2, "n_skipped": 0}
    assert summary["scorers"]["detection"]["overall"]["n_latents"] == 2
    (run_dir / "explanations" / f"{HP}_latent_1.txt").write_text("edited by hand")
    summary = write_summary(run_dir, config())
    # Its provenance does not vouch for the edited text, and its score was of the old one.
    assert summary["explanations"][HP]["n_explained"] == 2
    assert summary["scorers"]["detection"]["overall"]["n_latents"] == 2
    # Under --explainer none the text is taken as it is; the old score is still of another text.
    summary = write_summary(run_dir, config(explainer="none"))
    assert summary["explanations"][HP]["n_explained"] == 3
    assert summary["scorers"]["detection"]["overall"]["n_latents"] == 2


def test_write_summary_empty_run(tmp_path: Path) -> None:
    summary = write_summary(tmp_path, config())
    assert summary["scorers"]["detection"]["overall"]["n_latents"] == 0
    assert (tmp_path / "summary.json").exists()


def test_print_table(run_dir: Path) -> None:
    table = print_table(run_dir, config())
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["hookpoint", "latent", "explanation"]
    assert len(lines) == 2 + 4
    row0, row1, row2, row3 = lines[2:]
    assert row0.split()[-2:] == ["0.75", "0.50"]
    assert row1.endswith("-") and "..." in row1  # long explanation truncated
    assert "err" in row2
    assert "(failed)" in row3 and "stale" not in table


def test_roc_points() -> None:
    fpr, tpr = roc_points([True, True, False, False], [0.9, 0.8, 0.3, 0.1])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert (0.0, 1.0) in list(zip(fpr, tpr, strict=True))  # perfectly separable
    assert roc_points([True], [0.5]) == ([], [])


def test_html_report(run_dir: Path) -> None:
    """The dashboard over the current artifacts only (more in tests/test_dashboard*.py)."""
    path = write_html_report(run_dir, config())
    assert path == run_dir / "report" / "index.html"
    pages = sorted((run_dir / "report" / "data" / "latent").rglob("*.js"))
    assert len(pages) == 4  # latents 0-3; latent 9's stale files left out
    text = "".join(p.read_text() for p in pages)
    assert "</script" not in text and "alert('x')<\\/script> & cats" in text
    assert "every request failed (1): 500" in text
