"""What the output side needs: which runs use it, the profile's settings, and the models it
loads once per process. Importing this is cheap; torch loads only when a model is loaded."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

OUTPUT_EXPLAINERS = ("output",)
OUTPUT_SCORERS = ("intervention", "output_detection")

# The profile's settings. They are part of its fingerprint (provenance.output_inputs).
TOP_TOKENS = 10  # tokens listed per side of the logit lens and of steering
STEER_CONTEXTS = 8  # strongest train windows a latent is clamped on
STEER_FACTOR = 4.0  # clamp value: this many times the latent's strongest recorded activation

_LOCK = threading.Lock()
_CODERS: dict[tuple[Any, ...], Any] = {}


def needs_output_profile(cfg: RunConfig) -> bool:
    """Whether the run uses output profiles: the output explainer, or an output-side scorer
    (whose score pages show the profile beside it). Other runs never compute one, so they
    never load the subject model after the cache."""
    return cfg.effective_explainer in OUTPUT_EXPLAINERS or any(
        s in OUTPUT_SCORERS for s in cfg.scorers
    )


def subject_model(cfg: RunConfig) -> tuple[Any, Any]:
    """The subject model and tokenizer, loaded once per process (shared with the surprisal
    scorer), on --device (the cache's device: the GPU when there is one)."""
    from autointerp_full.scorers.surprisal import load_model

    return load_model(cfg)


def sparse_coder(cfg: RunConfig, hookpoint: str, device: Any) -> Any:
    """The run's sparse model at `hookpoint` (its random-weights control with
    --random_sparse_model), loaded once per process and device."""
    from autointerp_full.sparse import load_run_coder

    key = (cfg.sparse_model, hookpoint, str(device), cfg.random_sparse_seed)
    with _LOCK:
        if key not in _CODERS:
            _CODERS[key] = load_run_coder(cfg, hookpoint, str(device))
        return _CODERS[key]
