"""The dashboard's data: one index row per latent and one detail record per latent, built from the
run folder's current artifacts (`summary.load_run`). Pure data, no HTML; `dashboard.py` writes it.

Each latent gets a dense id (its position in the sorted list of latents), which names its data
file and its page (`latent.html?id=<n>`): hookpoint names may hold characters a URL would mangle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp_full import stats
from autointerp_full.report.plots import headline
from autointerp_full.scorers import BINARY_SCORERS, HEADLINE_METRIC

LatentKey = tuple[str, int]
# Scorers whose per-example records say right or wrong, so a Wilson interval applies.
INTERVAL_SCORERS = (*BINARY_SCORERS, "intruder")
# Index columns in the order of each row array (the page files hold arrays, not objects).
BASE_COLUMNS = ("id", "hookpoint", "latent", "explanation", "firing_rate", "n_activating", "status")
# Per scorer, these follow the base columns: headline value, Wilson low, Wilson high, null value.
SCORER_FIELDS = ("value", "low", "high", "null")
EXPLANATION_CHARS = 400  # the index shows this much of an explanation; the latent page all of it
HISTOGRAM_BINS = 24


@dataclass
class LatentData:
    """What the dashboard shows of one latent."""

    id: int
    hookpoint: str
    latent: int
    explanation: str | None
    explain_error: str | None
    record: dict[str, Any] | None  # the examples file, read only while its page is written
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    null_scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples_path: Path | None = None  # the current examples file, if any
    # Worked out once: the index row and the latent page both show each one.
    _intervals: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def interval(self, scorer: str) -> tuple[float | None, float | None]:
        """The interval of this latent's score by `scorer` (None, None without one)."""
        if scorer not in self._intervals:
            score = self.scores.get(scorer)
            self._intervals[scorer] = score_interval(scorer, score) if score else (None, None)
        return self._intervals[scorer]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def score_status(score: dict[str, Any] | None) -> str:
    """'' (complete), 'incomplete' (some batches failed every retry), 'error', or 'missing'."""
    if score is None:
        return "missing"
    if score.get("error"):
        return "error"
    if score.get("incomplete"):
        return "incomplete"
    return ""


def score_interval(scorer: str, score: dict[str, Any]) -> tuple[float | None, float | None]:
    """The 95% Wilson interval of a latent's accuracy over its answered examples: the one the
    score file records (`<metric>_low`/`_high`, or `ci`), else computed from its examples."""
    shared = _summary_interval(score, scorer)
    if shared is not None:
        return shared
    metrics = score.get("metrics") or {}
    metric = HEADLINE_METRIC.get(scorer, "accuracy")
    low, high = _number(metrics.get(f"{metric}_low")), _number(metrics.get(f"{metric}_high"))
    if low is not None and high is not None:
        return low, high
    if scorer not in INTERVAL_SCORERS or score.get("error"):
        return None, None
    answered = [e for e in score.get("examples") or [] if e.get("prediction") is not None]
    if scorer == "intruder":
        answered = [e for e in score.get("examples") or [] if e.get("correct") is not None]
    if not answered:
        return None, None
    right = sum(1 for e in answered if e.get("correct"))
    interval = stats.wilson_interval(right, len(answered))
    return interval.low, interval.high


def _summary_interval(score: dict[str, Any], scorer: str) -> tuple[float, float] | None:
    """The interval summary.json gives the latent (`summary.latent_interval`), so that the
    dashboard and the summary agree; None where it gives none."""
    try:
        from autointerp_full.report.summary import latent_interval
    except ImportError:  # a summary without per-latent intervals
        return None
    found = latent_interval(score, scorer)
    if not found or found.get("low") is None or found.get("high") is None:
        return None
    return float(found["low"]), float(found["high"])


def latent_status(data: LatentData) -> str:
    """The latent's worst state over its scores: error > incomplete > ''; 'no explanation' when
    explaining it failed."""
    states = [score_status(s) for s in data.scores.values()]
    if data.explain_error and data.explanation is None:
        return "error"
    if "error" in states:
        return "error"
    if "incomplete" in states:
        return "incomplete"
    return ""


def index_row(data: LatentData, scorers: list[str]) -> list[Any]:
    """The latent's row of the index, in BASE_COLUMNS then SCORER_FIELDS per scorer order."""
    record = data.record or {}
    text = data.explanation
    if text is None:
        text = f"(no explanation: {data.explain_error})" if data.explain_error else ""
    row: list[Any] = [
        data.id,
        data.hookpoint,
        data.latent,
        text[:EXPLANATION_CHARS],
        _number(record.get("firing_rate")),
        record.get("n_activating"),
        latent_status(data),
    ]
    for scorer in scorers:
        score = data.scores.get(scorer)
        value = headline(scorer, score) if score else None
        low, high = data.interval(scorer)
        null = data.null_scores.get(scorer)
        null_value = headline(scorer, null) if null else None
        row += [_round(value), _round(low), _round(high), _round(null_value)]
    return row


def _score_detail(
    scorer: str, score: dict[str, Any], interval: tuple[float | None, float | None] | None = None
) -> dict[str, Any]:
    """A scorer's result on the latent page: metrics, state, interval and its examples."""
    low, high = interval if interval is not None else score_interval(scorer, score)
    metrics = {k: v for k, v in (score.get("metrics") or {}).items() if _number(v) is not None}
    examples = [
        {
            "text": e.get("text", ""),
            "activating": e.get("activating"),
            "quantile": e.get("quantile"),
            "prediction": e.get("prediction"),
            "correct": e.get("correct"),
            "probability": e.get("probability"),
        }
        for e in score.get("examples") or []
    ]
    return {
        "metric": HEADLINE_METRIC.get(scorer, "accuracy"),
        "value": _round(headline(scorer, score)),
        "low": _round(low),
        "high": _round(high),
        "status": score_status(score),
        "error": score.get("error"),
        "metrics": metrics,
        "examples": examples,
    }


def _example(e: dict[str, Any]) -> dict[str, Any]:
    acts = [round(float(a), 3) for a in e.get("activations") or []]
    return {"t": list(e.get("str_tokens") or []), "a": acts, "q": e.get("quantile")}


def examples_by_quantile(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The activating windows (train and test) grouped by quantile, strongest quantile first and
    strongest window first within one."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for e in (record.get("train") or []) + (record.get("test") or []):
        groups.setdefault(int(e.get("quantile", 0)), []).append(e)
    out = []
    for q in sorted(groups, reverse=True):
        windows = sorted(groups[q], key=lambda e: -max(e.get("activations") or [0.0]))
        out.append({"quantile": q, "examples": [_example(e) for e in windows]})
    return out


def histogram(values: Any, bins: int = HISTOGRAM_BINS) -> dict[str, Any] | None:
    """Counts of positive activations in `bins` equal bins from the smallest to the largest
    (from 0 where they are all equal): sparse codes rarely fire near 0, so the bins go where
    the values are."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return None
    low, top = float(values.min()), float(values.max())
    if low == top:
        low = 0.0
    counts, edges = np.histogram(values, bins=bins, range=(low, top))
    return {"edges": [round(float(x), 4) for x in edges], "counts": counts.tolist()}


def examples_histogram(record: dict[str, Any]) -> dict[str, Any] | None:
    """The activation histogram from the examples' own tokens, when the cache is not at hand."""
    values = [
        a
        for part in ("train", "test")
        for e in record.get(part) or []
        for a in e.get("activations") or []
    ]
    return histogram(values)


def latent_detail(
    data: LatentData,
    *,
    histogram_data: dict[str, Any] | None,
    histogram_source: str,
    neighbours: dict[str, Any],
    output_side: dict[str, Any] | None,
    output_note: str,
) -> dict[str, Any]:
    """Everything the latent's page shows (its data file holds exactly this)."""
    record = data.record or {}
    return {
        "id": data.id,
        "hookpoint": data.hookpoint,
        "latent": data.latent,
        "explanation": data.explanation,
        "explain_error": data.explain_error,
        "status": latent_status(data),
        "firing_rate": _number(record.get("firing_rate")),
        "n_activating": record.get("n_activating"),
        "max_activation": _number(record.get("max_activation")),
        "scores": {
            s: _score_detail(s, score, data.interval(s)) for s, score in data.scores.items()
        },
        "null_scores": {
            s: _score_detail(s, score) for s, score in data.null_scores.items() if score
        },
        "histogram": histogram_data,
        "histogram_source": histogram_source,
        "quantiles": examples_by_quantile(record) if record else [],
        "non_activating": [_example(e) for e in record.get("non_activating") or []],
        "neighbours": neighbours,
        "output": output_side,
        "output_note": output_note,
        "has_examples": bool(record),
    }
