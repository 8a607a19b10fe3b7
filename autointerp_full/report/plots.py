"""Numbers the report's charts are made of: a scorer's headline value of a latent and ROC points.
The dashboard draws its charts itself (SVG, no plotly)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from autointerp_full.scorers import HEADLINE_METRIC

LatentKey = tuple[str, int]


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
