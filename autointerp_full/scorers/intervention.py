"""Intervention: does steering the latent make the tokens its explanation predicts more likely?

The scorer LLM turns the explanation into a few tokens or short phrases the latent should make
the model say (one request: the latent's only batch). The latent is then clamped high at its
hookpoint on each of its held-out activating windows (test), and the mean change in
log-probability of the predicted tokens (the first token of each phrase, with and without a
leading space) is measured against a control that adds a random direction of the same norm
instead. The effect is the mean over windows of (steered change - control change), reported
with its bootstrap interval over windows and the standardised effect size (mean / sd).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.answers import answer_schema, find_json_object
from autointerp_full.scorers.base import (
    Scorer,
    Unreadable,
    batch_counts,
    example_text,
    failure_messages,
    seeded_rng,
)

if TYPE_CHECKING:
    from autointerp_full.examples.types import Example, LatentRecord

MAX_PREDICTED = 5  # phrases kept from the LLM's answer
# Shape the steering (and so the result) besides the scorer's own fields.
STEERING_FIELDS = ("model", "sparse_model", "sparse_weights", "dtype", "load_in_8bit")


def parse_predicted_tokens(text: str) -> list[str] | None:
    """The phrases of an answer: the JSON's "tokens" list, else the quoted strings; None when
    there is none."""
    found = find_json_object(text)
    phrases: list[Any] = []
    if found is not None and isinstance(found[0].get("tokens"), list):
        phrases = found[0]["tokens"]
    if not phrases:
        phrases = re.findall(r'"([^"\n]+)"', text)
        phrases = [p for p in phrases if p.strip().lower() != "tokens"]
    kept = list(dict.fromkeys(p.strip() for p in phrases if isinstance(p, str) and p.strip()))
    return kept[:MAX_PREDICTED] or None


def phrase_token_ids(tokenizer: Any, phrases: list[str]) -> list[dict[str, Any]]:
    """Per phrase, the ids of its first token written after a space and at a word's start."""
    out = []
    for phrase in phrases:
        ids: list[int] = []
        for variant in (" " + phrase, phrase):
            encoded = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if encoded and encoded[0] not in ids:
                ids.append(int(encoded[0]))
        out.append(
            {"phrase": phrase, "token_ids": ids, "tokens": [tokenizer.decode([i]) for i in ids]}
        )
    return out


def steering_changes(
    cfg: Any, record: LatentRecord, windows: list[Example], token_ids: list[int]
) -> tuple[list[float], list[float], float]:
    """(steered change, control change) of the mean log-probability of `token_ids` per window,
    and the seconds the model ran (loading and waiting for the model left out)."""
    import torch

    from autointerp_full.output import sparse_coder, subject_model
    from autointerp_full.output.profile import clamp_value
    from autointerp_full.output.steering import (
        Steerer,
        mean_logprobs,
        model_device,
        pad_rows,
        random_directions,
    )
    from autointerp_full.scorers.surprisal import _RUN_LOCK

    model, tokenizer = subject_model(cfg)
    coder = sparse_coder(cfg, record.hookpoint, model_device(model))
    direction = coder.W_dec[record.latent].detach().float()[None]
    seed = seeded_rng(cfg.seed, record.hookpoint, record.latent, "control").randrange(2**31)
    control = random_directions(direction, [seed])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    target = torch.tensor(token_ids, dtype=torch.long)
    clamp = clamp_value(record)
    steered: list[float] = []
    controlled: list[float] = []
    size = max(1, cfg.batch_size)
    steerer = Steerer(model, record.hookpoint, coder)
    with _RUN_LOCK, steerer.attached():
        started = time.perf_counter()
        for start in range(0, len(windows), size):
            chunk = windows[start : start + size]
            ids, mask, acts = pad_rows([w.tokens for w in chunk], [w.activations for w in chunk],
                                       pad)  # fmt: skip
            clamps = torch.full((len(chunk),), clamp)
            steerer.set(None)
            clean, _ = mean_logprobs(model, ids, mask)
            steerer.set(direction.expand(len(chunk), -1), clamps, acts)
            steer, _ = mean_logprobs(model, ids, mask)
            steerer.set(control.expand(len(chunk), -1), clamps, acts)
            ctrl, _ = mean_logprobs(model, ids, mask)
            idx = target.to(clean.device)
            steered += (steer - clean)[:, idx].mean(dim=1).tolist()
            controlled += (ctrl - clean)[:, idx].mean(dim=1).tolist()
        seconds = time.perf_counter() - started
    return steered, controlled, seconds


def effect_metrics(effects: list[float], steered: list[float], control: list[float], seed: int):
    """The effect's mean, interval and standardised size over windows."""
    import statistics

    from autointerp_full.stats import bootstrap_mean

    interval = bootstrap_mean(effects, seed=seed)
    sd = statistics.stdev(effects) if len(effects) > 1 else 0.0
    return {
        "effect": interval.estimate,
        "effect_low": interval.low,
        "effect_high": interval.high,
        "effect_size": interval.estimate / sd
        if sd > 1e-12 and interval.estimate is not None
        else None,
        "steered_logprob_change": sum(steered) / len(steered) if steered else None,
        "control_logprob_change": sum(control) / len(control) if control else None,
    }


class InterventionScorer(Scorer):
    name = "intervention"
    prompt_key = "scorers.intervention.system"
    provenance_fields = STEERING_FIELDS + ("batch_size",)
    answer_prefix = '{"tokens": ["'

    async def predict_tokens(self, explanation: str) -> Any:
        messages = self.messages(self.prompt_key, f"Explanation: {explanation}")
        prefix = self.prefix()

        async def attempt(temperature: float) -> list[str]:
            completion = await self.client.generate(
                messages,
                max_tokens=64,
                temperature=temperature,
                schema=answer_schema(self.prompts, self.prompt_key, MAX_PREDICTED),
            )
            phrases = parse_predicted_tokens(prefix + completion.text)
            if phrases is None:
                raise Unreadable(repr((prefix + completion.text)[:200]))
            return phrases

        return await self.ask_until_read(attempt)

    async def _score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        windows = [e for e in record.test if e.tokens]
        answer = await self.predict_tokens(explanation or "")
        records = [
            {"text": example_text(e), "activating": True, "quantile": e.quantile, "batch": 0,
             "prediction": None}
            for e in windows
        ]  # fmt: skip
        if answer.value is None:
            metrics = {"n": 0, "n_failed": len(records), **batch_counts(1, 1, answer.retries)}
            metrics["failures"] = failure_messages([answer.error or "failed"])
            return records, metrics, f"token prediction failed: {answer.error}"
        _, tokenizer = await asyncio.to_thread(self._tokenizer)
        predicted = phrase_token_ids(tokenizer, answer.value)
        token_ids = sorted({i for p in predicted for i in p["token_ids"]})
        steered, control, seconds = await asyncio.to_thread(
            steering_changes, self.cfg, record, windows, token_ids
        )
        self._seconds[(record.hookpoint, record.latent)] = seconds
        effects = [s - c for s, c in zip(steered, control, strict=True)]
        for entry, s, c, e in zip(records, steered, control, effects, strict=True):
            entry.update(prediction=e, steered_logprob_change=s, control_logprob_change=c)
        metrics = effect_metrics(effects, steered, control, self.cfg.seed)
        metrics.update(n=len(effects), n_failed=0, **batch_counts(1, 0, answer.retries))
        self._predicted[(record.hookpoint, record.latent)] = predicted
        return records, metrics, None

    def _tokenizer(self) -> tuple[Any, Any]:
        from autointerp_full.output import subject_model

        return subject_model(self.cfg)

    def __init__(self, client: Any, prompts: Any, cfg: Any) -> None:
        super().__init__(client, prompts, cfg)
        # The phrases each latent's answer gave, until its result is assembled.
        self._predicted: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._seconds: dict[tuple[str, int], float] = {}  # model time (three passes per window)

    async def score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = await super().score(record, explanation, previous)
        key = (record.hookpoint, record.latent)
        result["predicted_tokens"] = self._predicted.pop(key, [])
        if key in self._seconds:
            result["steering_seconds"] = round(self._seconds.pop(key), 3)
        return result
