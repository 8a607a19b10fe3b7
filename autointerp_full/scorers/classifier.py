"""Detection and fuzz: the LLM judges, a batch of examples at a time, whether each example fits
the explanation (detection) or whether its highlighted tokens are the ones the explanation
describes (fuzz). Both are binary classifiers scored against whether the example activates."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autointerp_full.explainers.formatting import highlight, highlighted
from autointerp_full.scorers.answers import (
    answer_schema,
    binary_probabilities,
    json_binary_answers,
    spells_json,
)
from autointerp_full.scorers.base import (
    Answer,
    Scorer,
    Unreadable,
    ask_missing,
    auc,
    batch_counts,
    binary_metrics,
    example_text,
    failure_messages,
    list_answer_positions,
    top_distribution,
)

if TYPE_CHECKING:
    from autointerp_full.examples.types import LatentRecord

# One batch's answer: a prediction per example, and P(yes) per example when log-probs came back.
BatchAnswer = tuple[list[bool], list[float] | None]

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

    Reads the prompt's JSON ({"answers": [1, 0, 1]}) first; failing that, a list ("[1, 0, 1]",
    the last complete one wins), numbered lines ("1. yes", "Example 2: 0") or exactly n bare
    answers ("1 0 1", "Yes")."""
    from_json = json_binary_answers(text, n)
    if from_json is not None:
        return from_json
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
    """P(answer is 1) for each of the n list items, from the "1" and "0" token log-probabilities:
    the values of a JSON answer, else the items of the first bracketed list (whose "[" may be the
    handed-over opening, which offline clients include in the logprobs)."""
    if not logprobs:
        return None
    if spells_json(logprobs):
        return binary_probabilities(logprobs, n)
    positions = list_answer_positions(logprobs, {"0", "1"})
    if len(positions) != n:
        return None
    probs = []
    for item in positions:
        dist = top_distribution(item)
        p1, p0 = dist.get("1", 0.0), dist.get("0", 0.0)
        probs.append(p1 / (p1 + p0) if p1 + p0 > 0 else 0.5)
    return probs


def decoy_patterns(
    real: list[set[int]], n: int, rng: random.Random, lengths: list[int]
) -> list[set[int]]:
    """Marks for n wrongly marked examples: each copies the positions of one real example's
    marks, cycling through the real examples in a shuffled order. The decoys therefore have
    the same number of marks, the same runs and the same places in the window as the real
    ones, and only what the marked tokens are can tell them apart."""
    if not real:
        return [{rng.randrange(length)} if length else set() for length in lengths[:n]]
    order = list(range(len(real)))
    rng.shuffle(order)
    return [fit_pattern(real[order[i % len(order)]], lengths[i]) for i in range(n)]


def fit_pattern(pattern: set[int], length: int) -> set[int]:
    """The pattern shifted left just enough to fit a window of `length` tokens (windows are
    normally the same length, so it rarely moves)."""
    if not pattern or length <= 0:
        return set()
    shift = max(0, max(pattern) - (length - 1))
    return {p - shift for p in pattern if p - shift >= 0}


class ClassifierScorer(Scorer):
    """Shared machinery: shuffle, batch, ask concurrently, parse, score."""

    answer_prefix = "["

    prompt_key = ""
    task = ""

    async def _score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        rng = self.rng(record)
        items = self.items(record, rng)
        rng.shuffle(items)
        size = self.cfg.num_examples_per_scorer_prompt
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        done = await ask_missing(
            previous,
            [[item.text for item in b] for b in batches],
            lambda i: self.ask(explanation or "", batches[i]),
        )
        kept, asked, retries = done.kept, done.answers, done.retries

        records: list[dict[str, Any]] = []
        errors: list[str] = []
        for index, batch in enumerate(batches):
            if index in kept:
                records += kept[index]
                continue
            answer = asked[index]
            retries += answer.retries
            if answer.error:
                errors.append(answer.error)
            predictions, probs = answer.value if answer.value is not None else (None, None)
            for i, item in enumerate(batch):
                prediction = predictions[i] if predictions else None
                entry: dict[str, Any] = {
                    "text": item.text,
                    "activating": item.activating,
                    "quantile": item.quantile,
                    "batch": index,
                    "prediction": prediction,
                    "correct": None if prediction is None else prediction == item.activating,
                }
                if self.cfg.log_probs:
                    entry["probability"] = probs[i] if probs else None
                records.append(entry)
        metrics = binary_metrics(
            [r["activating"] for r in records], [r["prediction"] for r in records]
        )
        if self.cfg.log_probs:
            metrics.update(probability_auc(records))
        metrics.update(batch_counts(len(batches), len(errors), retries))
        if errors:
            metrics["failures"] = failure_messages(errors)
        error = None
        if errors and metrics["n"] == 0:
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

    async def ask(self, explanation: str, batch: list[Item]) -> Answer[BatchAnswer]:
        """One batch's answer, re-asked while unreadable; failures are returned, not raised."""
        messages = self.messages(self.prompt_key, self.user_prompt(explanation, batch))
        prefix = self.prefix()
        want_logprobs = bool(self.cfg.log_probs)

        async def attempt(temperature: float) -> BatchAnswer:
            completion = await self.client.generate(
                messages,
                max_tokens=32 + 8 * len(batch),
                temperature=temperature,
                logprobs=want_logprobs,
                top_logprobs=TOP_LOGPROBS if want_logprobs else 0,
                schema=answer_schema(self.prompts, self.prompt_key, len(batch)),
            )
            text = prefix + completion.text
            predictions = parse_binary_answers(text, len(batch))
            if predictions is None and prefix:
                predictions = parse_prefilled_list(text, len(batch))
            if predictions is None:
                raise Unreadable(repr(text[:200]))
            probs = answer_probabilities(completion.logprobs, len(batch)) if want_logprobs else None
            return predictions, probs

        return await self.ask_until_read(attempt)


def probability_auc(records: list[dict[str, Any]]) -> dict[str, Any]:
    """AUC of P(yes) over the examples that have one (failed batches have none), and how many
    examples it covers."""
    scored = [r for r in records if r.get("probability") is not None]
    pos = [r["probability"] for r in scored if r["activating"]]
    neg = [r["probability"] for r in scored if not r["activating"]]
    return {"auc": auc(pos, neg), "n_probabilities": len(pos) + len(neg)}


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
        threshold = self.cfg.highlight_threshold
        real = [highlighted(e.activations, threshold) for e in record.test]
        items = [
            Item(highlight(e.str_tokens, marks), True, e.quantile)
            for e, marks in zip(record.test, real, strict=True)
        ]
        lengths = [len(e.str_tokens) for e in record.non_activating]
        decoys = decoy_patterns(real, len(lengths), rng, lengths)
        for e, marks in zip(record.non_activating, decoys, strict=True):
            items.append(Item(highlight(e.str_tokens, marks), False, e.quantile))
        return items
