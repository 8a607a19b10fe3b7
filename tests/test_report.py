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
    table = print_table(run_dir, config(null_baseline="none"))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["hookpoint", "latent", "explanation"]
    assert lines[6] == ""  # 4 latent rows, then the means per scorer
    row0, row1, row2, row3 = lines[2:6]
    assert row0.split()[-4:] == ["0.75", "[0.30,", "0.95]", "0.50"]  # with its Wilson interval
    assert row1.endswith("-") and "..." in row1  # long explanation truncated
    assert "err" in row2
    assert "(failed)" in row3 and "stale" not in table
    assert lines[7].split() == ["scorer", "hookpoint", "metric", "mean", "score", "mean", "null",
                                "score", "-", "null"]  # fmt: skip
    assert lines[9].split()[:3] == ["detection", HP, "accuracy"]
    assert lines[10].split()[:4] == ["simulation", HP, "correlation", "0.500"]
    assert any(line.startswith("err: nothing could be scored (1 scores") for line in lines)
    assert lines[-1].startswith("Chance is 0.5 accuracy")


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


# --------------------------------------------------------------- null baseline, intervals


def null_file(latent: int, source: int, correct: int, n: int = 4, **extra: Any) -> dict:
    """A detection null score of `latent` with `source`'s explanation: `correct` of n right."""
    examples = [scored(i % 2 == 0, (i % 2 == 0) == (i < correct)) for i in range(n)]
    data = det_file(latent, examples, {"accuracy": correct / n, "n": n, "n_failed": 0}, None)
    return {**data, "null": {"kind": "shuffled", "source_hookpoint": HP, "source_latent": source},
            **extra}  # fmt: skip


def stamp_null(stamp: Stamper, latent: int, source: int, data: dict) -> Path:
    inputs = prov.null_score_inputs(stamp.cfg, stamp.prompts, "detection", stamp.examples_fp,
                                    (HP, source), stamp.explanations[source])  # fmt: skip
    path = layout.null_score_file(stamp.run / "scores", "detection", HP, latent)
    write(path, prov.stamp(data, inputs))
    return path


@pytest.fixture()
def null_dir(run_dir: Path) -> Path:
    """run_dir plus detection nulls: latent 0 scored with 1's explanation (2 of 4 right) and
    latent 1 with 0's (1 of 4 right, one batch failed: incomplete); a null scored with an
    explanation since replaced (latent 2 with 9's stale one) must be left out."""
    stamp = Stamper(run_dir, config())
    stamp.explanation(0, EVIL)
    stamp.explanation(1, "the word cat " * 10)
    stamp_null(stamp, 0, 1, null_file(0, 1, 2))
    stamp_null(stamp, 1, 0, null_file(1, 0, 1, incomplete=True))
    stamp.explanation(9, "stale")
    stamp_null(stamp, 2, 9, null_file(2, 9, 4))
    return run_dir


def test_summary_gives_the_null_difference_and_intervals(null_dir: Path) -> None:
    from autointerp_full.schemas import validate_artifact

    summary = write_summary(null_dir, config())
    validate_artifact("summary", null_dir / layout.SUMMARY)
    validate_artifact("scores", null_dir / "scores")
    assert summary["null_baseline"]["kind"] == "shuffled"
    assert summary["null_baseline"]["scorers"] == ["detection", "simulation"]
    assert summary["left_out"]["null_scores"] == 1  # latent 2: its source's explanation is stale
    det = summary["scorers"]["detection"]["overall"]
    block = det["headline"]
    assert block["metric"] == "accuracy"
    # Latents 0 and 1 score 0.75 each (latent 2 failed: missing); nulls 0.5 and 0.25.
    assert block["score"]["estimate"] == pytest.approx(0.75) and block["score"]["n_missing"] == 1
    assert block["null"]["estimate"] == pytest.approx(0.375) and block["null"]["n"] == 2
    difference = block["difference"]
    assert difference["estimate"] == pytest.approx(0.375) and difference["n"] == 2
    assert difference["low"] == pytest.approx(0.25) and difference["high"] == pytest.approx(0.5)
    assert det["null_scores"]["n_latents"] == 2 and det["null_scores"]["n_incomplete"] == 1
    assert summary["scorers"]["detection"]["hookpoints"][HP]["headline"] == block
    # Simulation reads explanations too, but none of its nulls exist: nothing to compare.
    sim = summary["scorers"]["simulation"]["overall"]["headline"]
    assert sim["null"]["n"] == 0 and sim["difference"]["n_missing"] == 1

    latents = {x["latent"]: x["scores"]["detection"] for x in summary["latents"]}
    assert sorted(latents) == [0, 1, 2]
    zero = latents[0]
    assert zero["value"] == 0.75 and zero["n"] == 4
    # Wilson interval of 3 of 4: [0.3006, 0.9544].
    assert zero["interval"]["low"] == pytest.approx(0.3006, abs=1e-4)
    assert zero["interval"]["high"] == pytest.approx(0.9544, abs=1e-4)
    assert zero["null"]["value"] == 0.5 and zero["null"]["source"] == {"hookpoint": HP, "latent": 1}
    assert zero["difference"] == pytest.approx(0.25)
    assert latents[1]["null"]["incomplete"] is True
    assert latents[2]["error"] and latents[2]["null"] is None and latents[2]["interval"] is None


def test_summary_without_null(null_dir: Path) -> None:
    summary = write_summary(null_dir, config(null_baseline="none"))
    assert summary["null_baseline"]["scorers"] == []
    block = summary["scorers"]["detection"]["overall"]["headline"]
    assert block["null_baseline"] == "none" and block["null"] is None is block["difference"]
    assert block["score"]["estimate"] == pytest.approx(0.75)
    assert "null_scores" not in summary["scorers"]["detection"]["overall"]
    assert summary["left_out"]["null_scores"] == 3
    assert all("null" not in x["scores"]["detection"] for x in summary["latents"])


def test_table_shows_null_intervals_and_marks_incomplete(null_dir: Path) -> None:
    table = print_table(null_dir, config(scorers=["detection"]))
    lines = table.splitlines()
    assert lines[0].split()[-3:] == ["accu", "detection", "null"]
    assert lines[2].endswith("0.75 [0.30, 0.95]            0.50")
    assert lines[3].endswith("0.25*")  # its null is incomplete
    means = next(line for line in lines if line.startswith("detection "))
    assert "0.750 [0.750, 0.750] n=2, 1 missing" in means
    assert "0.375 [0.250, 0.500] n=2" in means
    assert any(line.startswith("* incomplete: 0 scores and 1 null scores") for line in lines)
    assert any("a difference whose interval excludes 0 is real" in line for line in lines)
    plain = print_table(null_dir, config(scorers=["detection"], null_baseline="none"))
    assert "null" not in plain.splitlines()[0] and "--null_baseline none" in plain
