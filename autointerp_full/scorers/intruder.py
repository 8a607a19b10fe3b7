"""Intruder: without any explanation, can the LLM spot the one non-activating example hidden among
activating ones? A latent whose activating examples share something clear scores high."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.base import Scorer, failure_messages
from autointerp_full.scorers.classifier import (
    highlight,
    mark_activating,
    typical_mark_count,
)

if TYPE_CHECKING:
    from autointerp_full.examples.types import LatentRecord


def parse_choice(text: str, n: int) -> int | None:
    """The 1-based example number the completion names as the intruder, or None.

    Prefers an explicit "ANSWER: k" (the last one); otherwise the completion must mention exactly
    one example number in range, so reasoning that names several examples does not guess."""
    marked = re.findall(r"answer\W{0,5}(?:example\s*)?(\d+)", text, re.IGNORECASE)
    for value in reversed(marked):
        if 1 <= int(value) <= n:
            return int(value)
    numbers = {int(v) for v in re.findall(r"\b(\d+)\b", text) if 1 <= int(v) <= n}
    return numbers.pop() if len(numbers) == 1 else None


class IntruderScorer(Scorer):
    answer_prefix = "The intruder is example "
    name = "intruder"
    needs_explanation = False
    prompt_key = "scorers.intruder.system"

    async def _score(
        self, record: LatentRecord, explanation: str | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        size = max(2, self.cfg.num_examples_per_scorer_prompt)
        rng = self.rng(record)
        activating = list(record.test)
        rng.shuffle(activating)
        intruders = list(record.non_activating)
        rng.shuffle(intruders)
        n_prompts = min(len(activating) // (size - 1), len(intruders))
        if n_prompts == 0:
            return [], {}, "not enough activating and non-activating examples for one prompt"
        prompts = []
        for i in range(n_prompts):
            group = activating[i * (size - 1) : (i + 1) * (size - 1)]
            shown = [mark_activating(e) for e in group]
            # The intruder gets as many marks as its companions have on average, at random.
            intruder = intruders[i]
            k = min(typical_mark_count(group), len(intruder.str_tokens))
            marked = set(rng.sample(range(len(intruder.str_tokens)), k))
            position = rng.randrange(size)
            shown.insert(position, highlight(intruder.str_tokens, marked))
            prompts.append((shown, position))
        answers = await asyncio.gather(*(self.ask(shown) for shown, _ in prompts))

        records: list[dict[str, Any]] = []
        errors: list[str] = []
        for (shown, position), (choice, error) in zip(prompts, answers, strict=True):
            if error:
                errors.append(error)
            records.append(
                {
                    "text": shown[position],
                    "activating": False,
                    "quantile": -1,
                    "intruder": position + 1,
                    "prediction": choice,
                    "correct": choice == position + 1,
                    "shown": shown,
                }
            )
        n_correct = sum(1 for r in records if r["correct"])
        metrics: dict[str, Any] = {
            "accuracy": n_correct / len(records),
            "n": len(records),
            "n_failed": len(errors),
            "chance": 1 / size,
        }
        if errors:
            metrics["failures"] = failure_messages(errors)
        error = None
        if len(errors) == len(records):
            error = f"every request failed ({len(errors)}): {errors[0]}"
        return records, metrics, error

    def user_prompt(self, shown: list[str]) -> str:
        lines = ["Examples:"]
        lines += [f"Example {i}: {text}" for i, text in enumerate(shown, 1)]
        lines += [
            "",
            f"Which of these {len(shown)} examples is the intruder? Reply with its number.",
        ]
        return "\n".join(lines)

    async def ask(self, shown: list[str]) -> tuple[int | None, str | None]:
        from autointerp_full.llm.base import LLMError

        try:
            completion = await self.client.generate(
                self.messages(self.prompt_key, self.user_prompt(shown)),
                max_tokens=64,
                temperature=0.0,
            )
        except LLMError as exc:
            return None, f"LLM request failed: {exc}"
        text = self.prefix() + completion.text
        choice = parse_choice(text, len(shown))
        if choice is None and self.prefix():
            # The number that completes the handed-over opening is the answer, whatever follows.
            first = re.match(r"\s*(\d+)", completion.text)
            if first and 1 <= int(first.group(1)) <= len(shown):
                choice = int(first.group(1))
        if choice is None:
            return None, f"unparseable answer: {text[:200]!r}"
        return choice, None
