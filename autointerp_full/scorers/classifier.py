"""Detection and fuzz: the LLM judges, a batch of examples at a time, whether each example fits
the explanation (detection) or whether its highlighted tokens are the ones the explanation
describes (fuzz). Both are binary classifiers scored against whether the example activates."""

from __future__ import annotations

import asyncio
import math
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.base import (
    Scorer,
    binary_metrics,
    example_text,
    failure_messages,
    list_answer_positions,
    top_distribution,
)

if TYPE_CHECKING:
    from autointerp_full.examples.types import Example, LatentRecord

TRUE_WORDS = {"1", "yes", "true", "y"}
FALSE_WORDS = {"0", "no", "false", "n"}
TOP_LOGPROBS = 5


@dataclass
class Item:
    """One example as shown to the LLM, with its ground truth."""

    text: str
    activating: bool
    quantile: int


def _word_to_bool(word: str) -> bool | None:
    word = word.strip().strip("'\"*`").lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def parse_binary_answers(text: str, n: int) -> list[bool] | None:
    """Read n yes/no answers from a completion, or None when it cannot be read unambiguously.

    Accepts a list ("[1, 0, 1]", the last complete one wins), numbered lines ("1. yes",
    "Example 2: 0") or exactly n bare answers ("1 0 1", "Yes")."""
    for body in reversed(re.findall(r"\[([^\[\]]*)\]", text)):
        values = [_word_to_bool(part) for part in body.split(",")]
        if len(values) == n and all(v is not None for v in values):
            return [bool(v) for v in values]
    numbered: dict[int, bool] = {}
    line = re.compile(
        r"^\s*[*#-]*\s*(?:example|text)?\s*(\d+)\s*[.):\-]\s*\**\s*(yes|no|true|false|1|0)\b",
        re.IGNORECASE | re.MULTILINE,
    )
    for match in line.finditer(text):
        value = _word_to_bool(match.group(2))
        if value is not None:
            numbered.setdefault(int(match.group(1)), value)
    if set(numbered) == set(range(1, n + 1)):
        return [numbered[i] for i in range(1, n + 1)]
    # Line numbers ("1.", "Example 2:") are not answers.
    unnumbered = re.sub(
        r"^\s*[*#-]*\s*(?:example|text)?\s*\d+\s*[.):\-]", "", text, flags=re.I | re.M
    )
    bare = re.findall(r"\b(yes|no|true|false|1|0)\b", unnumbered, re.IGNORECASE)
    if len(bare) == n:
        return [bool(_word_to_bool(word)) for word in bare]
    return None


def parse_prefilled_list(text: str, n: int) -> list[bool] | None:
    """The first n values of a list the model was started on ("[1, 0, 1, 1, ..." with no
    closing bracket, as small models sometimes run on), or None."""
    match = re.match(r"\[\s*((?:[01]\s*,\s*)*[01])", text)
    if match is None:
        return None
    values = [part.strip() == "1" for part in match.group(1).split(",")]
    return values[:n] if len(values) >= n else None


def answer_probabilities(logprobs: list[Any] | None, n: int) -> list[float] | None:
    """P(answer is 1) for each of the n list items, from the "1" and "0" token log-probabilities."""
    if not logprobs:
        return None
    positions = list_answer_positions(logprobs, {"0", "1"})
    if len(positions) != n:
        return None
    probs = []
    for item in positions:
        dist = top_distribution(item)
        p1, p0 = dist.get("1", 0.0), dist.get("0", 0.0)
        probs.append(p1 / (p1 + p0) if p1 + p0 > 0 else 0.5)
    return probs


def highlight(str_tokens: list[str], marked: set[int]) -> str:
    """The text with the marked tokens wrapped in <<...>>, runs of marked tokens merged."""
    out: list[str] = []
    for i, token in enumerate(str_tokens):
        if i in marked and (i - 1) not in marked:
            out.append("<<")
        out.append(token)
        if i in marked and (i + 1) not in marked:
            out.append(">>")
    return "".join(out)


def mark_activating(example: Example) -> str:
    """The example's text with the tokens where the latent fires highlighted."""
    return highlight(example.str_tokens, {i for i, a in enumerate(example.activations) if a > 0})


def typical_mark_count(examples: list[Example]) -> int:
    """How many tokens a wrongly marked example gets: the mean number of activating tokens."""
    counts = [sum(1 for a in e.activations if a > 0) for e in examples]
    return max(1, math.floor(sum(counts) / len(counts) + 0.5)) if counts else 1


class ClassifierScorer(Scorer):
    """Shared machinery: shuffle, batch, ask concurrently, parse, score."""

    answer_prefix = "["

    prompt_key = ""
    task = ""

    async def _score(
        self, record: LatentRecord, explanation: str | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        rng = self.rng(record)
        items = self.items(record, rng)
        rng.shuffle(items)
        size = self.cfg.num_examples_per_scorer_prompt
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        answers = await asyncio.gather(*(self.ask(explanation or "", b) for b in batches))

        records: list[dict[str, Any]] = []
        errors: list[str] = []
        for batch, (predictions, probs, error) in zip(batches, answers, strict=True):
            if error:
                errors.append(error)
            for i, item in enumerate(batch):
                prediction = predictions[i] if predictions else None
                entry: dict[str, Any] = {
                    "text": item.text,
                    "activating": item.activating,
                    "quantile": item.quantile,
                    "prediction": prediction,
                    "correct": prediction is not None and prediction == item.activating,
                }
                if self.cfg.log_probs:
                    entry["probability"] = probs[i] if probs else None
                records.append(entry)
        metrics = binary_metrics(
            [r["activating"] for r in records], [r["prediction"] for r in records]
        )
        metrics["n_batches"] = len(batches)
        metrics["n_failed_batches"] = len(errors)
        if errors:
            metrics["failures"] = failure_messages(errors)
        error = None
        if errors and len(errors) == len(batches):
            error = f"every request failed ({len(errors)}): {errors[0]}"
        return records, metrics, error

    def items(self, record: LatentRecord, rng: random.Random) -> list[Item]:
        raise NotImplementedError

    def user_prompt(self, explanation: str, batch: list[Item]) -> str:
        lines = [f"Explanation: {explanation}", "", "Examples:"]
        lines += [f"Example {i}: {item.text}" for i, item in enumerate(batch, 1)]
        example = ", ".join("1" if i % 2 == 0 else "0" for i in range(len(batch)))
        lines += [
            "",
            f"{self.task} Answer with a list of {len(batch)} numbers, one per example in order, "
            f"1 for yes and 0 for no, e.g. [{example}].",
        ]
        return "\n".join(lines)

    async def ask(
        self, explanation: str, batch: list[Item]
    ) -> tuple[list[bool] | None, list[float] | None, str | None]:
        """(predictions, probabilities, error) for one batch; failures are returned, not raised."""
        from autointerp_full.llm.base import LLMError

        messages = self.messages(self.prompt_key, self.user_prompt(explanation, batch))
        prefix = self.prefix()
        want_logprobs = bool(self.cfg.log_probs)
        try:
            completion = await self.client.generate(
                messages,
                max_tokens=32 + 8 * len(batch),
                temperature=0.0,
                logprobs=want_logprobs,
                top_logprobs=TOP_LOGPROBS if want_logprobs else 0,
            )
        except LLMError as exc:
            return None, None, f"LLM request failed: {exc}"
        text = prefix + completion.text
        predictions = parse_binary_answers(text, len(batch))
        if predictions is None and prefix:
            predictions = parse_prefilled_list(text, len(batch))
        if predictions is None:
            return None, None, f"unparseable answer: {text[:200]!r}"
        probs = answer_probabilities(completion.logprobs, len(batch)) if want_logprobs else None
        return predictions, probs, None


class DetectionScorer(ClassifierScorer):
    """Does the example contain what the explanation describes?"""

    name = "detection"
    prompt_key = "scorers.detection.system"
    task = "For each example, does it contain what the explanation describes?"

    def items(self, record: LatentRecord, rng: random.Random) -> list[Item]:
        return [Item(example_text(e), True, e.quantile) for e in record.test] + [
            Item(example_text(e), False, e.quantile) for e in record.non_activating
        ]


class FuzzScorer(ClassifierScorer):
    """Are the highlighted tokens the ones the explanation describes?

    Activating examples highlight their activating tokens; non-activating ones highlight as many
    random tokens, so a good explanation lets the LLM tell correct marks from wrong ones."""

    name = "fuzz"
    prompt_key = "scorers.fuzz.system"
    task = (
        "For each example, are the tokens highlighted between << and >> correctly marked "
        "according to the explanation?"
    )

    def items(self, record: LatentRecord, rng: random.Random) -> list[Item]:
        n_marked = typical_mark_count(record.test)
        items = [Item(mark_activating(e), True, e.quantile) for e in record.test]
        for e in record.non_activating:
            k = min(n_marked, len(e.str_tokens))
            marked = set(rng.sample(range(len(e.str_tokens)), k))
            items.append(Item(highlight(e.str_tokens, marked), False, e.quantile))
        return items
