"""Simulation (after OpenAI's neuron simulation): from the explanation alone, the LLM predicts
every token's activation on a 0-10 scale; the score is the correlation with the true activations."""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.answers import (
    answer_schema,
    expected_values,
    json_predictions,
    spells_json,
)
from autointerp_full.scorers.base import (
    Answer,
    Scorer,
    Unreadable,
    ask_missing,
    batch_counts,
    example_text,
    failure_messages,
    is_constant,
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
    """Predictions from the prompt's JSON ({"1": 0, "2": 8, ...}), else from "<token number>:
    <value>" lines (or, failing that, from a list of numbers), clipped to 0..10; missing tokens
    are 0 and extra ones dropped.

    Returns (n values, how many predictions the reply held), or None for no predictions."""
    from_json = json_predictions(text, n, SCALE)
    if from_json is not None:
        return from_json
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
    """The completion tokens holding a prediction: the first number after each ':' (a
    handed-over "1:" opening is in the logprobs of offline clients, so the first counts too)."""
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

    Reads the values of a JSON answer first, else the numbers of "k: v" lines. Needs each
    prediction to be one output token; when the tokenizer splits a number (say "10" into "1",
    "0") or lines are missing, the positions do not line up and None sends the caller to the
    text."""
    if not logprobs:
        return None
    if spells_json(logprobs):
        return expected_values(logprobs, n, SCALE)
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
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
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
        # One example per request: each is a batch of its own.
        done = await ask_missing(
            previous,
            [[example_text(e)] for e, _ in chosen],
            lambda i: self.simulate(explanation or "", chosen[i][0]),
        )
        kept, asked, retries = done.kept, done.answers, done.retries

        records: list[dict[str, Any]] = []
        errors: list[str] = []
        for index, (example, activating) in enumerate(chosen):
            if index in kept:
                records += kept[index]
                continue
            answer = asked[index]
            retries += answer.retries
            true = normalised(example, max_act)
            predicted, info = answer.value if answer.value is not None else (None, {})
            entry: dict[str, Any] = {
                "text": example_text(example),
                "activating": activating,
                "quantile": example.quantile,
                "batch": index,
                "true": [round(v, 3) for v in true],
                "prediction": None if predicted is None else [round(v, 3) for v in predicted],
            }
            if answer.error:
                errors.append(answer.error)
                entry["error"] = answer.error
            else:
                entry.update(info)
                entry["correlation"] = example_correlation(entry["prediction"], entry["true"])
            records.append(entry)
        metrics = simulation_metrics(records)
        metrics.update(batch_counts(len(chosen), len(errors), retries))
        if errors:
            metrics["failures"] = failure_messages(errors)
        error = None
        if errors and metrics["n"] == 0:
            error = f"every request failed ({len(errors)}): {errors[0]}"
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
    ) -> Answer[tuple[list[float], dict[str, Any]]]:
        """(predictions, details) for one example, re-asked while unreadable; failures are
        returned, not raised."""
        n = len(example.str_tokens)
        want_logprobs = bool(self.cfg.log_probs)
        messages = self.messages(self.prompt_key, self.user_prompt(explanation, example))

        async def attempt(temperature: float) -> tuple[list[float], dict[str, Any]]:
            completion = await self.client.generate(
                messages,
                max_tokens=16 + 8 * n,  # a JSON answer spends about 6 tokens per token number
                temperature=temperature,
                logprobs=want_logprobs,
                top_logprobs=TOP_LOGPROBS if want_logprobs else 0,
                schema=answer_schema(self.prompts, self.prompt_key, n),
            )
            if want_logprobs:
                expected = expected_levels(completion.logprobs, n)
                if expected is not None:
                    return expected, {"mode": "logprobs"}
            text = self.prefix() + completion.text
            parsed = parse_predictions(text, n)
            if parsed is None:
                raise Unreadable(repr(text[:200]))
            values, found = parsed
            info: dict[str, Any] = {"mode": "text"}
            if found != n:
                info["length_mismatch"] = {"expected": n, "found": found}
            return values, info

        return await self.ask_until_read(attempt)


def example_correlation(predicted: list[float], true: list[float]) -> float | None:
    """Pearson correlation of one example's predictions with its true activations.

    Constant predictions carry no information: they score 0 (pearson itself is undefined
    there), rather than being dropped, which would flatter the mean. When the true activations
    are constant (a non-activating example) there is nothing to correlate with: None."""
    if is_constant(true):
        return None
    if is_constant(predicted):
        return 0.0
    return pearson(predicted, true)


def simulation_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Correlation pooled over every answered token, its mean per example, and the counts."""
    answered = [r for r in records if r["prediction"] is not None]
    all_pred = [v for r in answered for v in r["prediction"]]
    all_true = [v for r in answered for v in r["true"]]
    per_example = [r.get("correlation") for r in answered]
    return {
        "correlation": example_correlation(all_pred, all_true) if answered else None,
        "per_example_correlation": mean(per_example),
        "n": len(answered),
        "n_failed": len(records) - len(answered),
        # Examples whose true activations vary but whose predictions did not (scored 0).
        "n_constant": sum(
            1 for r in answered if is_constant(r["prediction"]) and not is_constant(r["true"])
        ),
        "n_length_mismatch": sum(1 for r in answered if r.get("length_mismatch")),
    }
