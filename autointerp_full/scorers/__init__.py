"""Scorers: each tests an explanation (or, for intruder, the latent itself) on held-out examples
and returns the score file's JSON (see docs/ARCHITECTURE.md, "Explainers and scorers").

Importing this package is cheap: torch, transformers and sentence-transformers load only when a
scorer that needs them runs."""

from __future__ import annotations

from autointerp_full.scorers.base import Scorer
from autointerp_full.scorers.classifier import DetectionScorer, FuzzScorer
from autointerp_full.scorers.embedding import EmbeddingScorer
from autointerp_full.scorers.intervention import InterventionScorer
from autointerp_full.scorers.intruder import IntruderScorer
from autointerp_full.scorers.output_detection import OutputDetectionScorer
from autointerp_full.scorers.simulation import SimulationScorer
from autointerp_full.scorers.surprisal import SurprisalScorer

SCORERS: dict[str, type[Scorer]] = {
    "detection": DetectionScorer,
    "fuzz": FuzzScorer,
    "simulation": SimulationScorer,
    "surprisal": SurprisalScorer,
    "embedding": EmbeddingScorer,
    "intruder": IntruderScorer,
    "intervention": InterventionScorer,
    "output_detection": OutputDetectionScorer,
}

# Scorers whose per-example predictions are yes/no, so their examples can be pooled into
# accuracy, precision, recall and F1.
BINARY_SCORERS = ("detection", "fuzz")

# The metric that stands for each scorer in tables and plots.
HEADLINE_METRIC = {
    "detection": "accuracy",
    "fuzz": "accuracy",
    "intruder": "accuracy",
    "simulation": "correlation",
    "surprisal": "auc",
    "embedding": "auc",
    "intervention": "effect",
    "output_detection": "balanced_accuracy",
}

__all__ = [
    "SCORERS",
    "BINARY_SCORERS",
    "HEADLINE_METRIC",
    "Scorer",
    "DetectionScorer",
    "FuzzScorer",
    "SimulationScorer",
    "SurprisalScorer",
    "EmbeddingScorer",
    "IntruderScorer",
    "InterventionScorer",
    "OutputDetectionScorer",
]
