"""Output profiles: per latent, the tokens its direction promotes and suppresses through the
final norm and unembedding (logit lens), and the tokens whose probability rises most when the
latent is clamped high on its own strongest windows (steering). Batched over latents.

Profile JSON (output/<hookpoint>_latent_<id>.json, after `fingerprint` and `inputs`):
    {"hookpoint", "latent", "transcoder": bool, "direction_norm": float,
     "logit_lens": {"promoted": [Token], "suppressed": [Token]},
     "steering": {"clamp": float, "n_contexts": int, "n_positions": int,
                  "promoted": [Token], "suppressed": [Token]} | null,
     "seconds": float}
Token = {"token_id": int, "token": str, "value": float} where value is the centred logit
(logit lens) or the mean change in log-probability over the contexts' positions (steering);
steering tokens also have "prob_before" and "prob_after" (mean probabilities)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from autointerp_full.output.settings import STEER_CONTEXTS, STEER_FACTOR, TOP_TOKENS

if TYPE_CHECKING:
    import torch

    from autointerp_full.examples.types import Example, LatentRecord


def steering_windows(record: LatentRecord, n: int = STEER_CONTEXTS) -> list[Example]:
    """The latent's strongest train windows (its own activating contexts)."""
    ranked = sorted(record.train, key=lambda e: max(e.activations, default=0.0), reverse=True)
    return [e for e in ranked if e.tokens][:n]


def clamp_value(record: LatentRecord, factor: float = STEER_FACTOR) -> float:
    """The value a latent is clamped to: `factor` times its strongest recorded activation."""
    strongest = record.max_activation or max(
        (max(e.activations, default=0.0) for e in record.train), default=0.0
    )
    return float(factor * max(strongest, 1e-6))


def token_list(
    tokenizer: Any, ids: Sequence[int], values: Sequence[float], **extra: Sequence[float]
) -> list[dict[str, Any]]:
    out = []
    for j, (tid, value) in enumerate(zip(ids, values, strict=True)):
        entry = {"token_id": int(tid), "token": tokenizer.decode([int(tid)]), "value": float(value)}
        entry.update({k: float(v[j]) for k, v in extra.items()})
        out.append(entry)
    return out


def lens_tokens(tokenizer: Any, logits: torch.Tensor, k: int) -> dict[str, list[dict[str, Any]]]:
    top = logits.topk(k)
    bottom = (-logits).topk(k)
    return {
        "promoted": token_list(tokenizer, top.indices.tolist(), top.values.tolist()),
        "suppressed": token_list(tokenizer, bottom.indices.tolist(), (-bottom.values).tolist()),
    }


def steering_tokens(
    tokenizer: Any, delta: torch.Tensor, before: torch.Tensor, after: torch.Tensor, k: int
) -> dict[str, list[dict[str, Any]]]:
    sides = {}
    for side, sign in (("promoted", 1.0), ("suppressed", -1.0)):
        idx = (sign * delta).topk(k).indices.tolist()
        sides[side] = token_list(
            tokenizer,
            idx,
            delta[idx].tolist(),
            prob_before=before[idx].tolist(),
            prob_after=after[idx].tolist(),
        )
    return sides


def compute_profiles(
    model: Any,
    tokenizer: Any,
    coder: Any,
    hookpoint: str,
    records: list[LatentRecord],
    *,
    rows_per_batch: int = 32,
    top_k: int = TOP_TOKENS,
) -> list[dict[str, Any]]:
    """The profile of each record's latent (all of one hookpoint), in batches of contexts."""
    import torch

    from autointerp_full.output.steering import (
        Steerer,
        logit_lens,
        mean_logprobs,
        pad_rows,
    )

    start = time.perf_counter()
    latents = [r.latent for r in records]
    directions = coder.W_dec[latents].detach().float()
    k = min(top_k, int(logit_lens(model, directions[:1]).shape[-1]))
    lens = [logit_lens(model, directions[i : i + 256]) for i in range(0, len(latents), 256)]
    lens_logits = torch.cat(lens) if lens else torch.empty(0)

    # Steering: one row per (latent, window); rows of several latents share a batch.
    rows: list[tuple[int, Example]] = []
    for i, record in enumerate(records):
        rows += [(i, window) for window in steering_windows(record)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vocab = lens_logits.shape[-1] if len(latents) else 0
    # Sums over a latent's windows ([latents, V] each: callers pass a few dozen latents).
    sums = {name: torch.zeros(len(records), vocab) for name in ("delta", "before", "after")}
    counts = [0] * len(records)
    positions = [0] * len(records)
    steerer = Steerer(model, hookpoint, coder)
    with steerer.attached():
        for b in range(0, len(rows), max(1, rows_per_batch)):
            chunk = rows[b : b + rows_per_batch]
            ids, mask, acts = pad_rows(
                [list(w.tokens) for _, w in chunk], [list(w.activations) for _, w in chunk], pad
            )
            owners = [i for i, _ in chunk]
            steerer.set(None)
            clean_lp, clean_p = mean_logprobs(model, ids, mask)
            clamps = torch.tensor([clamp_value(records[i]) for i in owners])
            steerer.set(directions[owners], clamps, acts)
            steer_lp, steer_p = mean_logprobs(model, ids, mask)
            for row, owner in enumerate(owners):
                sums["delta"][owner] += (steer_lp[row] - clean_lp[row]).cpu()
                sums["before"][owner] += clean_p[row].cpu()
                sums["after"][owner] += steer_p[row].cpu()
                counts[owner] += 1
                positions[owner] += int(mask[row].sum())
    seconds = (time.perf_counter() - start) / max(1, len(records))

    out = []
    for i, record in enumerate(records):
        n = counts[i]
        steering = None
        if n:
            mean = {name: sums[name][i] / n for name in ("delta", "before", "after")}
            steering = {
                "clamp": clamp_value(record),
                "n_contexts": n,
                "n_positions": positions[i],
                **steering_tokens(tokenizer, mean["delta"], mean["before"], mean["after"], k),
            }
        out.append(
            {
                "hookpoint": hookpoint,
                "latent": record.latent,
                "transcoder": bool(getattr(coder, "transcoder", False)),
                "direction_norm": float(directions[i].norm()),
                "logit_lens": lens_tokens(tokenizer, lens_logits[i], k),
                "steering": steering,
                "seconds": round(seconds, 4),
            }
        )
    return out


def profile_prompt_lines(profile: dict[str, Any] | None, n: int = TOP_TOKENS) -> list[str]:
    """The profile as the output explainer shows it: token lists, quoted as repr would."""
    if not profile:
        return []

    def tokens(entries: list[dict[str, Any]]) -> str:
        return ", ".join(repr(e["token"]) for e in entries[:n]) or "(none)"

    lens = profile.get("logit_lens") or {}
    lines = [
        f"Tokens the latent's output direction promotes most: {tokens(lens.get('promoted', []))}",
        f"Tokens it suppresses most: {tokens(lens.get('suppressed', []))}",
    ]
    steering = profile.get("steering")
    if steering:
        lines.append(
            "Tokens whose probability rises most when the latent is amplified: "
            f"{tokens(steering.get('promoted', []))}"
        )
    return lines
