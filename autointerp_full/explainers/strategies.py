"""The explainers' strategies: for each explainer, its prompt key, the builder of the prompt
body (the examples as the prompt shows them) and its answer budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autointerp_full.examples.types import Example, LatentRecord
from autointerp_full.explainers.formatting import (
    mark,
    marked_positions,
    strength,
    token_strengths,
    top_tokens,
)

MAX_TOKENS = 256  # an explanation is one sentence; leave room for a short preamble
COT_MAX_TOKENS = 1024
NP_MAX_ACT_EXAMPLES = 10


def _default_body(
    train: list[Example], record: LatentRecord, _neg: list[Example], threshold: float
) -> str:
    lines = []
    for i, example in enumerate(train, 1):
        lines.append(f"Excerpt {i}: {mark(example, threshold=threshold)}")
        lines.append(f"Activations: {token_strengths(example, record.max_activation, threshold)}")
        lines.append("")
    lines.append(f"Most strongly activating tokens: {top_tokens(train, record.max_activation)}")
    return "\n".join(lines)


def _single_token_body(
    train: list[Example], record: LatentRecord, _neg: list[Example], _threshold: float
) -> str:
    lines = []
    for i, example in enumerate(train, 1):
        peak = marked_positions(example, only_peak=True)
        if not peak:
            continue
        (pos,) = peak
        token = example.str_tokens[pos].strip()
        level = strength(example.activations[pos], record.max_activation)
        lines.append(f'{i}. "{token}" ({level}) in: {mark(example, peak)}')
    return "\n".join(lines)


def _contrastive_body(
    train: list[Example], _record: LatentRecord, neg: list[Example], threshold: float
) -> str:
    lines = ["ACTIVATING excerpts:"]
    lines += [f"{i}. {mark(e, threshold=threshold)}" for i, e in enumerate(train, 1)]
    lines += ["", "NON-ACTIVATING excerpts:"]
    lines += [f"{i}. {' '.join(e.text.split())}" for i, e in enumerate(neg, 1)]
    return "\n".join(lines)


def _np_max_act_body(
    train: list[Example], _record: LatentRecord, _neg: list[Example], threshold: float
) -> str:
    return "\n".join(f"{i}. {mark(e, threshold=threshold)}" for i, e in enumerate(train, 1))


def _output_body(
    train: list[Example],
    _record: LatentRecord,
    _neg: list[Example],
    threshold: float,
    profile: dict[str, Any] | None = None,
) -> str:
    """The output explainer's evidence (as Neuronpedia's max-act-logits): the output profile's
    token lists, then the strongest excerpts."""
    from autointerp_full.output.profile import profile_prompt_lines

    lines = profile_prompt_lines(profile)
    lines += ["", "Excerpts where the latent fires most strongly:"]
    lines += [f"{i}. {mark(e, threshold=threshold)}" for i, e in enumerate(train, 1)]
    return "\n".join(lines)


Body = Callable[[list[Example], LatentRecord, list[Example], float], str]

# explainer -> (prompt key, body builder, answer budget)
STRATEGIES: dict[str, tuple[str, Body, int]] = {
    "default": ("explainers.default.system", _default_body, MAX_TOKENS),
    "single_token": ("explainers.default.system_single_token", _single_token_body, MAX_TOKENS),
    "contrastive": ("explainers.default.system_contrastive", _contrastive_body, MAX_TOKENS),
    "np_max_act": ("explainers.np_max_act.system_concise", _np_max_act_body, MAX_TOKENS),
    "cot": ("explainers.default.cot", _default_body, COT_MAX_TOKENS),
    "output": ("explainers.output.system", _output_body, MAX_TOKENS),
}
