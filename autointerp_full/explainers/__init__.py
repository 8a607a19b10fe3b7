"""Explainers: ask an LLM what a latent responds to, from its train examples.

`explain` never raises for a bad answer or a failed request: it returns an ExplainResult with
`explanation=None` and the reason in `error`, so one latent cannot stop a run.

Only a well-formed answer becomes an explanation: it must hold the "[EXPLANATION]:" marker the
prompts ask for, must not have been cut off at the token limit (finish_reason "length": a
chain of thought cut short may end on a hypothesis it would have revised), and the explanation
must contain a letter. Any other answer is asked again, up to cfg.answer_retries times, and
then the latent fails; it is never stored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from autointerp_full.examples.types import Example, LatentRecord
from autointerp_full.explainers.formatting import (
    estimate_tokens,
    mark,
    marked_positions,
    ranked,
    strength,
    token_strengths,
    top_tokens,
)

# A re-ask samples instead of repeating the greedy answer (the scorers do the same).
RETRY_TEMPERATURE = 0.7
# Handed to a local model as the opening of its answer (not for cot, which reasons first).
ANSWER_OPENING = "[EXPLANATION]:"

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.prompts import Prompts

log = logging.getLogger(__name__)

MAX_TOKENS = 256  # an explanation is one sentence; leave room for a short preamble
OPENED_MAX_TOKENS = 96  # after a handed-over "[EXPLANATION]: " only the sentence is left
COT_MAX_TOKENS = 1024
NP_MAX_ACT_EXAMPLES = 10


@dataclass
class ExplainResult:
    explanation: str | None
    raw: str = ""
    error: str | None = None
    retries: int = 0  # answers asked again because they held no usable explanation


# ----------------------------------------------------------------- prompt bodies


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
        body = partial(_output_body, profile=output_profile)
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


# ----------------------------------------------------------------------- parsing

_MARKER = re.compile(r"\[?\s*explanation\s*\]?\s*[:：]\s*", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_QUOTED = re.compile(r'^\s*["“\'](.+)["”\']\s*[.]?\s*$')
_TEMPLATE = re.compile(r"^<[^<>]*>$")  # the model echoed "<your explanation>"


def _clean(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^(?:[#>*\-+]+\s*|\d+[.)]\s+)+", "", text)  # headings, quotes, bullets
    text = re.sub(r"(\*\*|__|`)", "", text).strip()
    pairs = {'"': '"', "“": "”", "'": "'"}
    if len(text) >= 2 and pairs.get(text[0]) == text[-1]:
        text = text[1:-1]  # only a matching pair: "the noun 'cat'" keeps its quote
    return " ".join(text.split())


def _usable(text: str) -> bool:
    """A real explanation has a letter in it and is not the prompt's placeholder echoed."""
    return bool(re.search(r"[^\W\d_]", text)) and not _TEMPLATE.match(text)


def parse_explanation(answer: str) -> str | None:
    """The explanation in an LLM answer, or None when there is none.

    It is the text after the last "[EXPLANATION]:" (or "Explanation:") marker, on its line or,
    when the marker stands alone, on the next one; markdown and matching quotes are stripped.
    An answer without the marker has no explanation: its last line may be anything (reasoning,
    an apology), so it is not guessed at.
    """
    from autointerp_full.scorers.answers import json_explanation  # the schema's answer (H5)

    from_json = json_explanation(_THINK.sub("", answer or ""))
    if from_json is not None:
        answer = f"[EXPLANATION]: {from_json}"
    text = _THINK.sub("", answer or "")
    lines = [line for line in text.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        plain = re.sub(r"(\*\*|__|`)", "", lines[index])
        found = list(_MARKER.finditer(plain))
        if not found:
            continue
        # The last marker on the line: a model handed the opening may write it once more.
        rest = _clean(plain[found[-1].end() :])
        if not rest and index + 1 < len(lines):
            rest = _clean(lines[index + 1])  # marker on its own line, answer below
        return rest if _usable(rest) else None
    return None


def answer_problem(raw: str, finish_reason: str | None) -> str | None:
    """Why an answer gives no explanation, or None when parse_explanation can be trusted."""
    if finish_reason == "length":
        return "answer cut off at the token limit"
    if parse_explanation(raw) is None:
        if _MARKER.search(re.sub(r"(\*\*|__|`)", "", _THINK.sub("", raw or ""))):
            return "the explanation after the marker is empty or has no letters"
        return "no [EXPLANATION]: line in the answer"
    return None


# ------------------------------------------------------------------------ explain


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


def first_line(raw: str, start: int, finish_reason: str | None) -> tuple[str, str | None]:
    """An answer that continues the handed-over opening is that one line: the text up to the
    first line break after some text from `start` on. What follows is not part of the answer,
    as if generation had stopped at the line break, so a token limit reached later did not cut
    the explanation. Without such a break the whole text and its finish reason stand."""
    match = re.compile(r"\S[^\n]*\n").search(raw, start)
    if match is None:
        return raw, finish_reason
    return raw[: match.end() - 1], "stop"


def answer_opening(cfg: RunConfig, explainer: str) -> str:
    """The opening handed to a local model, which continues it (small models keep to the answer
    format far better); chat APIs get none, and cot must reason before it answers."""
    if cfg.explainer_provider != "offline" or explainer == "cot":
        return ""
    return ANSWER_OPENING + " "
