"""The chat messages of an explain request: the strategy's prompt with the latent's windows,
trimmed to the explainer model's context."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from autointerp_full.examples.types import Example, LatentRecord
from autointerp_full.explainers.formatting import estimate_tokens, ranked
from autointerp_full.explainers.strategies import NP_MAX_ACT_EXAMPLES, STRATEGIES

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.prompts import Prompts

log = logging.getLogger(__name__)


def _fits(messages: list[dict[str, str]], budget: int) -> bool:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages) <= budget


def contrast_windows(record: LatentRecord) -> list[Example]:
    """Non-activating windows for a contrastive prompt: the record's own contrast set; examples
    built for another explainer have none, and then the scored windows are shown (and logged)."""
    if record.contrast:
        return record.contrast
    log.warning(
        "%s latent %d: examples have no contrast windows (built for another explainer); "
        "the contrastive prompt shows scored windows. Delete examples/ to rebuild them.",
        record.hookpoint,
        record.latent,
    )
    return record.non_activating


def strongest_windows(record: LatentRecord) -> list[Example]:
    """The train windows, strongest first. Examples built for np_max_act hold the latent's
    strongest windows overall as train (see examples.samplers); examples built for another
    explainer hold a quantile-stratified train set, whose top is not the latent's top: that is
    logged, since the prompt then shows weaker windows than np_max_act means to."""
    train = ranked(record.train)
    if train and record.test:
        if train[-1].max_activation < max(e.max_activation for e in record.test):
            log.warning(
                "%s latent %d: examples were built for another explainer, so np_max_act sees "
                "quantile-sampled windows, not the strongest ones. Delete examples/ to rebuild.",
                record.hookpoint,
                record.latent,
            )
    return train


def build_messages(
    record: LatentRecord,
    prompts: Prompts,
    cfg: RunConfig,
    explainer: str | None = None,
    output_profile: dict[str, Any] | None = None,
) -> tuple[list[dict[str, str]], int]:
    """(chat messages, max answer tokens) for the explainer, trimmed to the model's context.

    Trimming drops the weakest activating examples first (and, for contrastive prompts, the
    last non-activating ones in turn), keeping at least one of each.
    """
    explainer = explainer or cfg.effective_explainer
    key, body, max_tokens = STRATEGIES[explainer]
    train = ranked(record.train)
    if explainer == "np_max_act":
        train = strongest_windows(record)[:NP_MAX_ACT_EXAMPLES]
    if explainer == "output":  # the profile, then the top excerpts (like np_max_act's)
        body = partial(body, profile=output_profile)  # STRATEGIES' output body
        train = train[:NP_MAX_ACT_EXAMPLES]
    negatives = list(contrast_windows(record)[: len(train)]) if explainer == "contrastive" else []
    budget = max(1, cfg.explainer_model_max_len - max_tokens)
    threshold = cfg.highlight_threshold
    while True:
        messages = prompts.messages(key, body(train, record, negatives, threshold))
        if _fits(messages, budget) or (len(train) <= 1 and len(negatives) <= 1):
            return messages, max_tokens
        if len(negatives) > 1 and len(negatives) >= len(train):
            negatives = negatives[:-1]
        elif len(train) > 1:
            train = train[:-1]
        else:
            negatives = negatives[:-1]
