"""Simulation (after OpenAI's neuron simulation): from the explanation alone, the LLM predicts
every token's activation on a 0-10 scale; the score is the correlation with the true activations."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.base import (
    Scorer,
    example_text,
    failure_messages,
    mean,
    pearson,
    strip_token,
    top_distribution,
)

if TYPE_CHECKING:
    from autointerp_full.examples.types import Example, LatentRecord

SCALE = 10
TOP_LOGPROBS = 20
LEVELS = {str(v) for v in range(SCALE + 1)}


def parse_predictions(text: str, n: int) -> tuple[list[float], int] | None:
    """Predictions from "<token number>: <value>" lines (or, failing that, from a list of
    numbers), clipped to 0..10; missing tokens are 0 and extra ones dropped.

    Returns (n values, how many predictions the reply held), or None for no predictions."""
    by_index: dict[int, float] = {}
    for index, value in re.findall(r"(?m)^\s*(\d+)\s*[:.)=-]\s*(-?\d+(?:\.\d+)?)", text):
        by_index.setdefault(int(index), float(value))
    if by_index:
        raw = [by_index.get(i, 0.0) for i in range(1, n + 1)]
        found = len(by_index)
    else:
        match = re.search(r"\[([^\[\]]*)\]?", text)
        if not match:
            return None
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", match.group(1))]
        if not numbers:
            return None
        raw = numbers[:n] + [0.0] * (n - len(numbers))
        found = len(numbers)
    return [min(float(SCALE), max(0.0, v)) for v in raw], found


def prediction_positions(logprobs: list[Any]) -> list[Any]:
    """The completion tokens holding a prediction: the first number after each ':'."""
    out = []
    after_colon = False
    for item in logprobs:
        token = item.token
        if ":" in token:
            after_colon = True
            token = token.rsplit(":", 1)[1]
            if not token.strip():
                continue
        if after_colon and strip_token(token) in LEVELS:
            out.append(item)
            after_colon = False
        elif "\n" in token:
            after_colon = False
    return out


def expected_levels(logprobs: list[Any] | None, n: int) -> list[float] | None:
    """Expected activation per token from the top log-probabilities over "0".."10".

    Needs each prediction to be one output token; when the tokenizer splits a number (say "10"
    into "1", "0") or lines are missing, the positions do not line up and None sends the caller
    to the text."""
    if not logprobs:
        return None
    positions = prediction_positions(logprobs)
    if len(positions) != n:
        return None
    values = []
    for item in positions:
        dist = {k: p for k, p in top_distribution(item).items() if k in LEVELS}
        total = sum(dist.values())
        if total <= 0:
            return None
        values.append(sum(int(k) * p for k, p in dist.items()) / total)
    return values


def normalised(example: Example, max_activation: float) -> list[float]:
    top = max_activation if max_activation > 0 else max(example.activations, default=0.0)
    if top <= 0:
        return [0.0] * len(example.activations)
    return [min(float(SCALE), max(0.0, SCALE * a / top)) for a in example.activations]


class SimulationScorer(Scorer):
    answer_prefix = "1:"
    name = "simulation"
    prompt_key = "scorers.simulation.system"

    async def _score(
        self, record: LatentRecord, explanation: str | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        rng = self.rng(record)
        # Every test example plus a quarter as many non-activating ones, so that predicting
        # "always high" is not rewarded.
        n_non = min(len(record.non_activating), math.ceil(len(record.test) / 4))
        chosen = [(e, True) for e in record.test] + [
            (e, False) for e in rng.sample(record.non_activating, n_non)
        ]
        max_act = record.max_activation or max(
            (max(e.activations, default=0.0) for e in record.test), default=0.0
        )
        answers = await asyncio.gather(*(self.simulate(explanation or "", e) for e, _ in chosen))

        records: list[dict[str, Any]] = []
        errors: list[str] = []
        all_true: list[float] = []
        all_pred: list[float] = []
        per_example: list[float | None] = []
        n_mismatched = 0
        for (example, activating), (predicted, info, error) in zip(chosen, answers, strict=True):
            true = normalised(example, max_act)
            entry: dict[str, Any] = {
                "text": example_text(example),
                "activating": activating,
                "quantile": example.quantile,
                "true": [round(v, 3) for v in true],
                "prediction": None if predicted is None else [round(v, 3) for v in predicted],
            }
            if error:
                errors.append(error)
                entry["error"] = error
            else:
                assert predicted is not None
                entry.update(info)
                n_mismatched += bool(info.get("length_mismatch"))
                correlation = pearson(predicted, true)
                entry["correlation"] = correlation
                per_example.append(correlation)
                all_true += true
                all_pred += predicted
            records.append(entry)
        metrics: dict[str, Any] = {
            "correlation": pearson(all_pred, all_true),
            "per_example_correlation": mean(per_example),
            "n": len(records) - len(errors),
            "n_failed": len(errors),
            "n_length_mismatch": n_mismatched,
        }
        if errors:
            metrics["failures"] = failure_messages(errors)
        error = (
            f"every request failed ({len(errors)}): {errors[0]}"
            if errors and len(errors) == len(records)
            else None
        )
        return records, metrics, error

    def user_prompt(self, explanation: str, example: Example) -> str:
        n = len(example.str_tokens)
        lines = [f"Explanation: {explanation}", "", f"Tokens ({n}):"]
        # JSON quoting shows leading spaces and newlines inside tokens unambiguously.
        lines += [
            f"{i}: {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(example.str_tokens, 1)
        ]
        lines += [
            "",
            f"Reply with {n} lines, '<token number>: <prediction from 0 to {SCALE}>', one per "
            "token in order, and nothing else.",
        ]
        return "\n".join(lines)

    async def simulate(
        self, explanation: str, example: Example
    ) -> tuple[list[float] | None, dict[str, Any], str | None]:
        """(predictions, details, error) for one example; failures are returned, not raised."""
        from autointerp_full.llm.base import LLMError

        n = len(example.str_tokens)
        want_logprobs = bool(self.cfg.log_probs)
        try:
            completion = await self.client.generate(
                self.messages(self.prompt_key, self.user_prompt(explanation, example)),
                max_tokens=16 + 6 * n,
                temperature=0.0,
                logprobs=want_logprobs,
                top_logprobs=TOP_LOGPROBS if want_logprobs else 0,
            )
        except LLMError as exc:
            return None, {}, f"LLM request failed: {exc}"
        if want_logprobs:
            expected = expected_levels(completion.logprobs, n)
            if expected is not None:
                return expected, {"mode": "logprobs"}, None
        text = self.prefix() + completion.text
        parsed = parse_predictions(text, n)
        if parsed is None:
            return None, {}, f"unparseable answer: {text[:200]!r}"
        values, found = parsed
        info: dict[str, Any] = {"mode": "text"}
        if found != n:
            info["length_mismatch"] = {"expected": n, "found": found}
        return values, info, None
