"""Plotly figures for the HTML report: score distributions, accuracy against firing rate, and ROC
curves where the scorers gathered probabilities. plotly is imported only when a figure is made."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from autointerp_full.errors import MissingExtraError
from autointerp_full.scorers import BINARY_SCORERS, HEADLINE_METRIC

LatentKey = tuple[str, int]


def plotly_go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MissingExtraError("plotly", "visualize", "--enable_visualization") from None
    return go


def headline(scorer: str, score: dict[str, Any]) -> float | None:
    if score.get("error"):
        return None
    value = (score.get("metrics") or {}).get(HEADLINE_METRIC.get(scorer, "accuracy"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def roc_points(labels: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float]]:
    """(false-positive rates, true-positive rates) as the threshold falls past each score."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if not pos or not neg:
        return [], []
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0
    for i, (score, label) in enumerate(pairs):
        tp += bool(label)
        fp += not label
        # One point per distinct threshold, so tied scores move diagonally.
        if i + 1 == len(pairs) or pairs[i + 1][0] != score:
            fpr.append(fp / neg)
            tpr.append(tp / pos)
    return fpr, tpr


def score_distribution_figure(scores: dict[str, dict[LatentKey, dict[str, Any]]]) -> Any:
    go = plotly_go()
    fig = go.Figure()
    for scorer, files in scores.items():
        values = [v for f in files.values() if (v := headline(scorer, f)) is not None]
        metric = HEADLINE_METRIC.get(scorer, "accuracy")
        fig.add_trace(go.Histogram(x=values, name=f"{scorer} ({metric})", opacity=0.6, nbinsx=20))
    fig.update_layout(
        title="Score per latent, by scorer",
        barmode="overlay",
        xaxis_title="score",
        yaxis_title="latents",
    )
    return fig


def firing_rate_figure(
    scores: dict[str, dict[LatentKey, dict[str, Any]]], firing_rates: dict[LatentKey, float]
) -> Any:
    go = plotly_go()
    fig = go.Figure()
    for scorer, files in scores.items():
        if scorer not in BINARY_SCORERS and scorer != "intruder":
            continue
        points = [
            (firing_rates[k], v, f"{k[0]} latent {k[1]}")
            for k, f in files.items()
            if k in firing_rates and (v := headline(scorer, f)) is not None
        ]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                text=[p[2] for p in points],
                mode="markers",
                name=scorer,
            )
        )
    fig.update_layout(
        title="Accuracy against firing rate",
        xaxis_title="firing rate",
        xaxis_type="log",
        yaxis_title="accuracy",
    )
    return fig


def roc_figure(scores: dict[str, dict[LatentKey, dict[str, Any]]]) -> Any | None:
    """ROC curves over all examples of each yes/no scorer with probabilities; None if none has."""
    go = plotly_go()
    fig = go.Figure()
    for scorer in BINARY_SCORERS:
        examples = [
            e
            for f in scores.get(scorer, {}).values()
            if not f.get("error")
            for e in f.get("examples", [])
            if isinstance(e.get("probability"), (int, float))
        ]
        fpr, tpr = roc_points(
            [e["activating"] for e in examples], [e["probability"] for e in examples]
        )
        if fpr:
            fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=scorer))
    if not fig.data:
        return None
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash"})
    )
    fig.update_layout(
        title="ROC from answer probabilities",
        xaxis_title="false-positive rate",
        yaxis_title="true-positive rate",
    )
    return fig
