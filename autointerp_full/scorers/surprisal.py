"""Surprisal: does reading the explanation first make a causal LM less surprised by the text?

Each example's loss is measured twice, after the explanation and after a neutral prefix, on the
same text tokens. A good explanation lowers the loss on activating examples more than on
non-activating ones; the AUC of the loss drop measures how well it separates the two."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import TYPE_CHECKING, Any

from autointerp_full.scorers.base import Scorer, example_text, separation_metrics

if TYPE_CHECKING:
    from autointerp_full.examples.types import Example, LatentRecord

NEUTRAL_PREFIX = "Text:"
EXPLAINED_PREFIX = "Explanation: {explanation}\nText:"

# One subject model per (name, device, dtype) for the whole process, loaded on first use.
_MODELS: dict[tuple[str, str, str, bool], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()
# Forward passes share the model; one at a time keeps memory bounded.
_RUN_LOCK = threading.Lock()


def load_model(cfg: Any) -> tuple[Any, Any]:
    from autointerp_full.models import load_subject_model

    key = (cfg.model, cfg.device, cfg.dtype, bool(cfg.load_in_8bit))
    with _LOAD_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_subject_model(
                cfg.model,
                device=cfg.device,
                dtype=cfg.dtype,
                load_in_8bit=cfg.load_in_8bit,
                token=cfg.token,
            )
        return _MODELS[key]


def text_losses(
    model: Any, tokenizer: Any, prefix: str, texts: list[list[int]], batch_size: int
) -> list[float]:
    """Mean next-token loss over each text's tokens, given `prefix` before it."""
    import torch

    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prefix_ids = [tokenizer.bos_token_id, *prefix_ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    losses: list[float] = []
    for start in range(0, len(texts), batch_size):
        chunk = [prefix_ids + list(t) for t in texts[start : start + batch_size]]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, ids in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device)
            ).logits.float()
        # Position p predicts token p + 1; score only the text's tokens.
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, ids in enumerate(chunk):
            first, last = len(prefix_ids) - 1, len(ids) - 1
            losses.append(float(nll[i, first:last].mean()) if last > first else float("nan"))
    return losses


class SurprisalScorer(Scorer):
    name = "surprisal"

    async def _score(
        self, record: LatentRecord, explanation: str | None, previous: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
        chosen = [(e, True) for e in record.test] + [(e, False) for e in record.non_activating]
        with_expl, without = await asyncio.to_thread(
            self._losses, explanation or "", [e for e, _ in chosen]
        )
        records: list[dict[str, Any]] = []
        for (example, activating), loss_with, loss_without in zip(
            chosen, with_expl, without, strict=True
        ):
            # An empty text has no loss (NaN): recorded as null and left out of the metrics.
            drop = loss_without - loss_with
            records.append(
                {
                    "text": example_text(example),
                    "activating": activating,
                    "quantile": example.quantile,
                    "prediction": None if math.isnan(drop) else drop,
                    "loss_with_explanation": None if math.isnan(loss_with) else loss_with,
                    "loss_without_explanation": None if math.isnan(loss_without) else loss_without,
                }
            )
        metrics = separation_metrics(records, "loss_drop")
        return records, metrics, None

    def _losses(self, explanation: str, examples: list[Example]) -> tuple[list[float], list[float]]:
        model, tokenizer = load_model(self.cfg)
        texts = [e.tokens for e in examples]
        size = self.cfg.batch_size
        with _RUN_LOCK:
            prefix = EXPLAINED_PREFIX.format(explanation=explanation)
            with_expl = text_losses(model, tokenizer, prefix, texts, size)
            without = text_losses(model, tokenizer, NEUTRAL_PREFIX, texts, size)
        return with_expl, without
