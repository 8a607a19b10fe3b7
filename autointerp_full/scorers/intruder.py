"""Intruder: without any explanation, can the LLM spot the one non-activating example hidden among
activating ones? A latent whose activating examples share something clear scores high."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from autointerp_full.explainers.formatting import highlight, highlighted
from autointerp_full.scorers.answers import answer_schema, json_choice
from autointerp_full.scorers.base import (
    Answer,
    Scorer,
    Unreadable,
    ask_missing,
    batch_counts,
    failure_messages,
)
from autointerp_full.scorers.classifier import fit_pattern

if TYPE_CHECKING:
    from autointerp_full.examples.types import Example, LatentRecord


def parse_choice(text: str, n: int) -> int | None:
    """The 1-based example number the completion names as the intruder, or None.

    Reads the prompt's JSON ({"intruder": k}) first; then prefers an explicit "ANSWER: k" (the
    last one); otherwise the completion must mention exactly one example number in range, so
    reasoning that names several examples does not guess."""
    from_json = json_choice(text, n)
    if from_json is not None:
        return from_json
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
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
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
            shown = [self.marked(e, self.marks(e)) for e in group]
            intruder = intruders[i]
            marks = self.decoy_marks(activating, group, len(intruder.str_tokens), rng)
            position = rng.randrange(size)
            shown.insert(position, self.marked(intruder, marks))
            prompts.append((shown, position))
        done = await ask_missing(
            previous, [[shown[p]] for shown, p in prompts], lambda i: self.ask(prompts[i][0])
        )
        kept, asked, retries = done.kept, done.answers, done.retries

        records: list[dict[str, Any]] = []
        errors: list[str] = []
        for index, (shown, position) in enumerate(prompts):
            if index in kept:
                records += kept[index]
                continue
            answer = asked[index]
            retries += answer.retries
            if answer.error:
                errors.append(answer.error)
            choice = answer.value
            records.append(
                {
                    "text": shown[position],
                    "activating": False,
                    "quantile": -1,
                    "batch": index,
                    "intruder": position + 1,
                    "prediction": choice,
                    "correct": None if choice is None else choice == position + 1,
                    "shown": shown,
                }
            )
        answered = [r for r in records if r["prediction"] is not None]
        n_correct = sum(1 for r in answered if r["correct"])
        metrics: dict[str, Any] = {
            "accuracy": n_correct / len(answered) if answered else None,
            "n": len(answered),
            "n_failed": len(records) - len(answered),
            "chance": 1 / size,
            **batch_counts(n_prompts, len(errors), retries),
        }
        if errors:
            metrics["failures"] = failure_messages(errors)
        error = None
        if not answered:
            error = f"every request failed ({len(errors)}): {errors[0]}"
        return records, metrics, error

    def marks(self, example: Example) -> set[int]:
        return highlighted(example.activations, self.cfg.highlight_threshold)

    @staticmethod
    def marked(example: Example, marks: set[int]) -> str:
        return highlight(example.str_tokens, marks)

    def decoy_marks(
        self, activating: list[Example], group: list[Example], length: int, rng: Any
    ) -> set[int]:
        """The intruder's marks copy the positions of an activating example's marks, so their
        count, runs and places match its companions'. The donor is not one of the companions
        when another is available (a duplicated pattern would point at the pair)."""
        shown = {id(e) for e in group}
        donors = [e for e in activating if id(e) not in shown] or group
        return fit_pattern(self.marks(donors[rng.randrange(len(donors))]), length)

    def user_prompt(self, shown: list[str]) -> str:
        lines = ["Examples:"]
        lines += [f"Example {i}: {text}" for i, text in enumerate(shown, 1)]
        lines += [
            "",
            f"Which of these {len(shown)} examples is the intruder? Reply with its number.",
        ]
        return "\n".join(lines)

    async def ask(self, shown: list[str]) -> Answer[int]:
        messages = self.messages(self.prompt_key, self.user_prompt(shown))
        prefix = self.prefix()

        async def attempt(temperature: float) -> int:
            completion = await self.client.generate(
                messages,
                max_tokens=64,
                temperature=temperature,
                schema=answer_schema(self.prompts, self.prompt_key, len(shown)),
            )
            text = prefix + completion.text
            choice = parse_choice(text, len(shown))
            if choice is None and prefix:
                # The number that completes the handed-over opening is the answer, whatever follows.
                first = re.match(r"\s*(\d+)", completion.text)
                if first and 1 <= int(first.group(1)) <= len(shown):
                    choice = int(first.group(1))
            if choice is None:
                raise Unreadable(repr(text[:200]))
            return choice

        return await self.ask_until_read(attempt)
