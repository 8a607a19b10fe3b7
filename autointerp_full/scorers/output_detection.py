"""Output detection: can the explanation tell what the steered model writes from what the
unsteered model writes?

From the opening tokens of each held-out activating window (test), the subject model writes a
short continuation twice: once with the latent clamped high at its hookpoint, once without.
The scorer LLM sees the continuations in shuffled batches and says, for each, whether it was
written with the latent amplified as the explanation describes it. The score is the balanced
accuracy; batching, re-asks and failures are those of detection (scorers.classifier).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.base import seeded_rng
from autointerp_full.scorers.classifier import ClassifierScorer, Item
from autointerp_full.scorers.intervention import STEERING_FIELDS

if TYPE_CHECKING:
    from autointerp_full.examples.types import Example, LatentRecord

PROMPT_TOKENS = 8  # tokens of a window the continuation starts from
NEW_TOKENS = 16  # tokens generated per continuation


def generate_pairs(
    cfg: Any, record: LatentRecord, windows: list[Example]
) -> tuple[list[str], list[str], float]:
    """(steered texts, unsteered texts): one continuation of each window's opening each way,
    and the seconds the model ran (loading and waiting for the model left out)."""
    import torch

    from autointerp_full.output import sparse_coder, subject_model
    from autointerp_full.output.profile import clamp_value
    from autointerp_full.output.steering import Steerer, generate, model_device
    from autointerp_full.scorers.surprisal import _RUN_LOCK

    model, tokenizer = subject_model(cfg)
    coder = sparse_coder(cfg, record.hookpoint, model_device(model))
    direction = coder.W_dec[record.latent].detach().float()[None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seed = seeded_rng(cfg.seed, record.hookpoint, record.latent, "generate").randrange(2**31)
    size = max(1, cfg.batch_size)
    steered: list[list[int]] = []
    plain: list[list[int]] = []
    steerer = Steerer(model, record.hookpoint, coder)
    with _RUN_LOCK, steerer.attached():
        started = time.perf_counter()
        for start in range(0, len(windows), size):
            chunk = windows[start : start + size]
            prompts = [list(w.tokens[:PROMPT_TOKENS]) for w in chunk]
            width = max(len(p) for p in prompts)
            acts = torch.zeros(len(chunk), width)  # left-padded like the prompts
            for i, w in enumerate(chunk):
                known = w.activations[: len(prompts[i])]
                acts[i, width - len(known) :] = torch.tensor(known, dtype=torch.float32)
            steerer.set(None)
            plain += generate(model, prompts, pad, NEW_TOKENS, seed + start)
            clamps = torch.full((len(chunk),), clamp_value(record))
            steerer.set(direction.expand(len(chunk), -1), clamps, acts)
            steered += generate(model, prompts, pad, NEW_TOKENS, seed + start)
        seconds = time.perf_counter() - started
    stop = {pad, tokenizer.eos_token_id}

    def text(ids: list[int]) -> str:
        return " ".join(tokenizer.decode([i for i in ids if i not in stop]).split())

    return [text(t) for t in steered], [text(t) for t in plain], seconds


class OutputDetectionScorer(ClassifierScorer):
    name = "output_detection"
    prompt_key = "scorers.output_detection.system"
    provenance_fields = STEERING_FIELDS + ("batch_size",)
    task = "For each text, was it written with the latent amplified, as the explanation describes?"

    def __init__(self, client: Any, prompts: Any, cfg: Any) -> None:
        super().__init__(client, prompts, cfg)
        self._items: dict[tuple[str, int], list[Item]] = {}
        self._seconds: dict[tuple[str, int], float] = {}  # generation time, both ways

    async def score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = await super().score(record, explanation, previous)
        seconds = self._seconds.pop((record.hookpoint, record.latent), None)
        if seconds is not None:
            result["generation_seconds"] = round(seconds, 3)
        return result

    async def _score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        windows = [e for e in record.test if e.tokens]
        steered, plain, seconds = await asyncio.to_thread(generate_pairs, self.cfg, record, windows)
        self._seconds[(record.hookpoint, record.latent)] = seconds
        items = [Item(t, True, e.quantile) for t, e in zip(steered, windows, strict=True)]
        items += [Item(t, False, -1) for t in plain]
        key = (record.hookpoint, record.latent)
        self._items[key] = items
        try:
            return await super()._score(record, explanation, previous)
        finally:
            self._items.pop(key, None)

    def items(self, record: LatentRecord, rng: random.Random) -> list[Item]:
        return list(self._items[(record.hookpoint, record.latent)])
