"""Explaining one latent: ask the LLM, check the answer, ask again when it holds no usable
explanation; never raise for a bad answer or a failed request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autointerp_full.examples.types import LatentRecord
from autointerp_full.explainers.messages import build_messages
from autointerp_full.explainers.parsing import answer_problem, first_line, parse_explanation
from autointerp_full.explainers.strategies import STRATEGIES

# A re-ask samples instead of repeating the greedy answer (the scorers do the same).
RETRY_TEMPERATURE = 0.7
# Handed to a local model as the opening of its answer (not for cot, which reasons first).
ANSWER_OPENING = "[EXPLANATION]:"

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.prompts import Prompts

OPENED_MAX_TOKENS = 96  # after a handed-over "[EXPLANATION]: " only the sentence is left


@dataclass
class ExplainResult:
    explanation: str | None
    raw: str = ""
    error: str | None = None
    retries: int = 0  # answers asked again because they held no usable explanation


async def explain(
    record: LatentRecord,
    client: Any,
    prompts: Prompts,
    cfg: RunConfig,
    existing: str | None = None,
    output_profile: dict[str, Any] | None = None,
) -> ExplainResult:
    """Explain one latent with the strategy cfg.effective_explainer.

    With the "none" explainer nothing is asked: `existing` (the explanation already on disk) is
    returned, and its absence is an error.
    """
    explainer = cfg.effective_explainer
    if explainer == "none":
        if existing is None or not existing.strip():
            return ExplainResult(None, "", "--explainer none: no explanation on disk")
        return ExplainResult(existing.strip(), existing, None)
    if explainer not in STRATEGIES:
        return ExplainResult(None, "", f"--explainer: unknown explainer {explainer!r}")
    if not record.train:
        return ExplainResult(None, "", "no train examples to explain from")
    if explainer == "output" and output_profile is None:
        return ExplainResult(None, "", "--explainer output: no output profile for this latent")
    messages, max_tokens = build_messages(record, prompts, cfg, explainer, output_profile)
    opening = answer_opening(cfg, explainer)
    if opening:
        messages = [*messages, {"role": "assistant", "content": opening}]
        max_tokens = min(max_tokens, OPENED_MAX_TOKENS)
    from autointerp_full.scorers.answers import explanation_schema  # (H5)

    retries = 0
    temperature = 0.0
    while True:
        try:
            completion = await client.generate(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                schema=explanation_schema(prompts, explainer),
            )
        except Exception as exc:  # LLMError and provider errors: this latent fails, the run goes on
            error = f"LLM request failed: {type(exc).__name__}: {exc}"
            return ExplainResult(None, "", error, retries)
        raw = opening + (completion.text or "")
        answer, finish = raw, getattr(completion, "finish_reason", None)
        if opening:
            answer, finish = first_line(raw, len(opening), finish)
        problem = answer_problem(answer, finish)
        if problem is None:
            return ExplainResult(parse_explanation(answer), raw, None, retries)
        if retries >= cfg.answer_retries:
            snippet = " ".join(raw.split())[:120]
            error = f"{problem} (after {retries + 1} answers): {snippet!r}"
            return ExplainResult(None, raw, error, retries)
        retries += 1
        temperature = RETRY_TEMPERATURE


def answer_opening(cfg: RunConfig, explainer: str) -> str:
    """The opening handed to a local model, which continues it (small models keep to the answer
    format far better); chat APIs get none, and cot must reason before it answers."""
    if cfg.explainer_provider != "offline" or explainer == "cot":
        return ""
    return ANSWER_OPENING + " "
