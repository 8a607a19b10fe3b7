"""What every scorer shares: the Scorer base class, the score-file layout, seeded randomness,
chat-message building, re-asking unreadable answers, log-probability helpers and the metrics
(binary, correlation, AUC).

Failures, the same way in every scorer: a request is one *batch* (a prompt of examples for
detection and fuzz, one prompt for intruder, one example for simulation). An answer that cannot
be read is asked again up to `cfg.answer_retries` times; a batch still without an answer is
*failed*. Its examples keep `prediction: null` and their `batch` index, are left out of every
metric and are counted (`metrics.n_failed`, `metrics.n_failed_batches`); the latent is marked
`"incomplete": true`, and a rerun that passes the result as `previous` asks only those batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.examples.types import Example, LatentRecord
    from autointerp_full.llm.base import LLMClient, TokenLogprob
    from autointerp_full.prompts import Prompts

# Failure messages kept in a score file; the rest are only counted.
MAX_FAILURE_MESSAGES = 5
# A re-ask samples instead of repeating the greedy answer, which would come out the same.
RETRY_TEMPERATURE = 0.7

T = TypeVar("T")


@dataclass
class Answer(Generic[T]):
    """What one batch's request came to: a value, or the reason there is none."""

    value: T | None
    error: str | None = None
    retries: int = 0  # re-asks after an unreadable answer


class Unreadable(Exception):
    """An answer that arrived but could not be read; the question is asked again."""


class Scorer:
    """Scores one latent's explanation on its held-out examples.

    Subclasses set `name` and `needs_explanation` and implement `_score`, which returns the
    per-example records, the metrics and an error (None unless the whole latent failed).
    """

    name: str = ""
    needs_explanation: bool = True

    answer_prefix = ""  # see prefix()

    def __init__(self, client: LLMClient | None, prompts: Prompts | None, cfg: RunConfig) -> None:
        # A per-scorer view of the client, when it offers one, so usage is counted per scorer.
        with_stage = getattr(client, "with_stage", None)
        self.client = with_stage(self.name) if callable(with_stage) else client
        self.prompts = prompts
        self.cfg = cfg

    async def score(
        self,
        record: LatentRecord,
        explanation: str | None,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The score file's JSON for one latent; LLM failures are recorded, never raised.

        `previous` is an earlier result of this scorer on the same record and explanation
        (the caller checks that); only its failed batches are asked again."""
        if self.needs_explanation and not explanation:
            return self.result(record, explanation, [], {}, "no explanation to score")
        if not record.test and not record.non_activating:
            return self.result(record, explanation, [], {}, "no test examples to score")
        if previous is not None and (
            previous.get("scorer") != self.name or previous.get("explanation") != explanation
        ):
            previous = None  # answers to another scorer or explanation are no answers here
        examples, metrics, error = await self._score(record, explanation, previous)
        failures = metrics.pop("failures", None)
        extra = {"failures": failures} if failures else {}
        return self.result(record, explanation, examples, metrics, error, **extra)

    async def _score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        raise NotImplementedError

    def result(
        self,
        record: LatentRecord,
        explanation: str | None,
        examples: list[dict[str, Any]],
        metrics: dict[str, Any],
        error: str | None,
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "hookpoint": record.hookpoint,
            "latent": record.latent,
            "explanation": explanation,
            "examples": examples,
            "metrics": metrics,
            # Some batch has no answer: a rerun asks it again (see the module docstring).
            "incomplete": bool(metrics.get("n_failed_batches")),
            "error": error,
            **extra,
        }

    async def ask_until_read(self, attempt: Callable[[float], Awaitable[T]]) -> Answer[T]:
        """Run `attempt(temperature)` until it returns, re-asking up to cfg.answer_retries times
        when it raises Unreadable. A request that failed for good (LLMError: the client has
        already retried it) is not asked again."""
        from autointerp_full.llm.base import LLMError

        retries = 0
        temperature = 0.0
        while True:
            try:
                return Answer(await attempt(temperature), None, retries)
            except LLMError as exc:
                return Answer(None, f"LLM request failed: {exc}", retries)
            except Unreadable as exc:
                if retries >= self.cfg.answer_retries:
                    return Answer(None, f"unreadable answer: {exc}", retries)
                retries += 1
                temperature = RETRY_TEMPERATURE

    def rng(self, record: LatentRecord) -> random.Random:
        return seeded_rng(self.cfg.seed, record.hookpoint, record.latent, self.name)

    def messages(self, key: str, user: str) -> list[dict[str, str]]:
        messages = chat_messages(self.prompts, key, user)
        prefix = self.prefix()
        return [*messages, {"role": "assistant", "content": prefix}] if prefix else messages

    def prefix(self) -> str:
        """The opening of the answer handed to a local model, which continues it: small models
        keep to the answer format far better. Chat APIs get none, since not every server
        continues a final assistant message."""
        return self.answer_prefix if self.cfg.explainer_provider == "offline" else ""


# ----------------------------------------------------------------------------- helpers


def seeded_rng(seed: int, *parts: object) -> random.Random:
    """A generator fixed by the run seed and e.g. (hookpoint, latent, scorer), stable across
    processes (Python's hash() is salted per process, so it cannot be used here)."""
    text = "\x1f".join([str(seed), *map(str, parts)])
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def example_text(example: Example) -> str:
    return "".join(example.str_tokens)


def chat_messages(prompts: Prompts | None, key: str, user: str) -> list[dict[str, str]]:
    """The same system prompt first for every request (so a server's prefix cache shares it),
    then the variable part; a {prompt} placeholder in the template receives the variable part."""
    if prompts is None:
        return [{"role": "user", "content": user}]
    build = getattr(prompts, "messages", None)
    if callable(build):
        return build(key, user)
    template = prompts.get(key)
    before, found, after = template.partition("{prompt}")
    if found:
        return [
            {"role": "system", "content": before.strip()},
            {"role": "user", "content": (user + after).strip()},
        ]
    return [{"role": "system", "content": template}, {"role": "user", "content": user}]


def failure_messages(errors: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(errors))
    return unique[:MAX_FAILURE_MESSAGES]


def strip_token(token: str) -> str:
    """A completion token without the punctuation around list items ("[1", " 0,", "1]")."""
    return token.strip().strip("[],.:'\"").strip()


def top_distribution(item: TokenLogprob) -> dict[str, float]:
    """Probabilities of the candidate tokens at one position, keyed by the stripped token text.

    Falls back to the sampled token alone when the server sent no alternatives."""
    candidates = item.top or {item.token: item.logprob}
    probs: dict[str, float] = {}
    for token, logprob in candidates.items():
        key = strip_token(token)
        probs[key] = probs.get(key, 0.0) + math.exp(logprob)
    return probs


def list_answer_positions(logprobs: Sequence[TokenLogprob], accept: set[str]) -> list[TokenLogprob]:
    """The tokens of the first bracketed list in a completion whose stripped text is in `accept`."""
    out: list[TokenLogprob] = []
    started = False
    for item in logprobs:
        token = item.token
        if not started:
            if "[" not in token:
                continue
            started = True
            token = token.split("[", 1)[1]
        if strip_token(token) in accept:
            out.append(item)
        if "]" in token:
            break
    return out


# ----------------------------------------------------------------------------- metrics


def binary_metrics(labels: Sequence[bool], predictions: Sequence[bool | None]) -> dict[str, Any]:
    """Classification metrics over the answered examples. A missing prediction (None: the answer
    failed) is left out of every metric and counted in `n_failed`; `n` counts the answered."""
    pairs = [(y, p) for y, p in zip(labels, predictions, strict=True) if p is not None]
    n = len(pairs)
    tp = sum(1 for y, p in pairs if y and p)
    fp = sum(1 for y, p in pairs if not y and p)
    tn = sum(1 for y, p in pairs if not y and not p)
    positives = sum(1 for y, _ in pairs if y)
    negatives = n - positives
    n_failed = len(labels) - n
    recall = tp / positives if positives else None
    specificity = tn / negatives if negatives else None
    precision = tp / (tp + fp) if tp + fp else 0.0
    rates = [r for r in (recall, specificity) if r is not None]
    if recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else None,
        "balanced_accuracy": sum(rates) / len(rates) if rates else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n": n,
        "n_failed": n_failed,
    }


def is_constant(values: Sequence[float]) -> bool:
    """True when the values do not vary (a correlation with them is undefined)."""
    if not values:
        return True
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) <= 1e-12


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when undefined (fewer than two points or a constant side)."""
    n = len(x)
    if n < 2 or n != len(y):
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 1e-12 or syy <= 1e-12:
        return None
    return sxy / math.sqrt(sxx * syy)


def auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """Area under the ROC curve: the chance a positive outscores a negative (ties count half)."""
    if not positive or not negative:
        return None
    ranked = sorted([(s, 1) for s in positive] + [(s, 0) for s in negative])
    # Average ranks over ties (Mann-Whitney U).
    rank_sum = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        rank_sum += mean_rank * sum(1 for k in range(i, j + 1) if ranked[k][1] == 1)
        i = j + 1
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def separation_metrics(records: Sequence[dict[str, Any]], measure: str) -> dict[str, Any]:
    """How well a per-example score (`prediction`) separates activating from other examples:
    AUC, the mean on each side and their difference, named after `measure`."""
    pos = [r["prediction"] for r in records if r["activating"] and r["prediction"] is not None]
    neg = [r["prediction"] for r in records if not r["activating"] and r["prediction"] is not None]
    mean_pos, mean_neg = mean(pos), mean(neg)
    both = mean_pos is not None and mean_neg is not None
    return {
        "auc": auc(pos, neg),
        f"mean_{measure}_activating": mean_pos,
        f"mean_{measure}_non_activating": mean_neg,
        f"{measure}_difference": mean_pos - mean_neg if both else None,
        "n": len(pos) + len(neg),
        "n_failed": len(records) - len(pos) - len(neg),
        **batch_counts(1, 0, 0),
    }


def batch_counts(n_batches: int, n_failed_batches: int, n_retries: int) -> dict[str, int]:
    return {
        "n_batches": n_batches,
        "n_failed_batches": n_failed_batches,
        "n_retries": n_retries,
    }


def carried_retries(previous: dict[str, Any] | None, kept: dict[int, Any]) -> int:
    """The re-asks counted by `previous`, when its answers are kept: n_retries covers every run."""
    if not previous or not kept:
        return 0
    return int((previous.get("metrics") or {}).get("n_retries") or 0)


@dataclass
class Asked(Generic[T]):
    """A scorer's batches after a (re)run: those kept from `previous`, the new answers, and
    the re-asks counted so far."""

    kept: dict[int, list[dict[str, Any]]]
    answers: dict[int, Answer[T]]
    retries: int


async def ask_missing(
    previous: dict[str, Any] | None,
    batches: Sequence[Sequence[str]],
    ask: Callable[[int], Awaitable[Answer[T]]],
) -> Asked[T]:
    """Keep the batches of `previous` that were answered on the same texts, and ask the others
    (`ask(index)`) concurrently."""
    kept = reusable_answers(previous, batches)
    todo = [i for i in range(len(batches)) if i not in kept]
    answers = await asyncio.gather(*(ask(i) for i in todo))
    return Asked(kept, dict(zip(todo, answers, strict=True)), carried_retries(previous, kept))


def reusable_answers(
    previous: dict[str, Any] | None, batches: Sequence[Sequence[str]]
) -> dict[int, list[dict[str, Any]]]:
    """{batch index: its example records} for the batches of `previous` that were answered and
    hold the same texts as `batches` now (so a rerun keeps them and asks only the others)."""
    if not previous:
        return {}
    by_batch: dict[int, list[dict[str, Any]]] = {}
    for entry in previous.get("examples") or []:
        index = entry.get("batch")
        if isinstance(index, int):
            by_batch.setdefault(index, []).append(entry)
    kept = {}
    for index, entries in by_batch.items():
        if index >= len(batches) or [e.get("text") for e in entries] != list(batches[index]):
            continue
        if all(e.get("prediction") is not None for e in entries):
            kept[index] = entries
    return kept
