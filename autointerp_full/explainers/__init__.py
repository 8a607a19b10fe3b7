"""Explainers: ask an LLM what a latent responds to, from its train examples.

`explain` never raises for a bad answer or a failed request: it returns an ExplainResult with
`explanation=None` and the reason in `error`, so one latent cannot stop a run.

Only a well-formed answer becomes an explanation: it must hold the "[EXPLANATION]:" marker the
prompts ask for, must not have been cut off at the token limit (finish_reason "length": a
chain of thought cut short may end on a hypothesis it would have revised), and the explanation
must contain a letter. Any other answer is asked again, up to cfg.answer_retries times, and
then the latent fails; it is never stored.

Modules: strategies (each explainer's prompt key, body and answer budget), messages (the
request's chat messages, trimmed to the context), parsing (the explanation in an answer), ask
(one latent's request and re-asks), formatting (how examples are shown).
"""

from autointerp_full.explainers.ask import (
    ANSWER_OPENING,
    OPENED_MAX_TOKENS,
    RETRY_TEMPERATURE,
    ExplainResult,
    answer_opening,
    explain,
)
from autointerp_full.explainers.messages import build_messages, contrast_windows, strongest_windows
from autointerp_full.explainers.parsing import answer_problem, first_line, parse_explanation
from autointerp_full.explainers.strategies import (
    COT_MAX_TOKENS,
    MAX_TOKENS,
    NP_MAX_ACT_EXAMPLES,
    STRATEGIES,
    Body,
)

__all__ = [
    "ANSWER_OPENING",
    "COT_MAX_TOKENS",
    "MAX_TOKENS",
    "NP_MAX_ACT_EXAMPLES",
    "OPENED_MAX_TOKENS",
    "RETRY_TEMPERATURE",
    "STRATEGIES",
    "Body",
    "ExplainResult",
    "answer_opening",
    "answer_problem",
    "build_messages",
    "contrast_windows",
    "explain",
    "first_line",
    "parse_explanation",
    "strongest_windows",
]
