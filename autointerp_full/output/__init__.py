"""The output side of a latent: what it does to the model's next-token predictions.

- `profile`: the output profile of each latent (logit lens of its decoder or output direction,
  and the tokens that rise when it is clamped high on its own contexts), one artifact per
  latent in `output/` (layout.output_file), computed by the output stage.
- `steering`: the torch side (directions, the logit lens, clamping at the hookpoint).
- The `output` explainer and the `intervention` and `output_detection` scorers use them.

Importing this package is cheap; torch loads only when something is computed.
"""

from autointerp_full.output.settings import (
    OUTPUT_EXPLAINERS,
    OUTPUT_SCORERS,
    STEER_CONTEXTS,
    STEER_FACTOR,
    TOP_TOKENS,
    needs_output_profile,
    sparse_coder,
    subject_model,
)

__all__ = [
    "OUTPUT_EXPLAINERS",
    "OUTPUT_SCORERS",
    "TOP_TOKENS",
    "STEER_CONTEXTS",
    "STEER_FACTOR",
    "needs_output_profile",
    "subject_model",
    "sparse_coder",
]
