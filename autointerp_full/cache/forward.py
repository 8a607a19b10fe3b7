"""The model pass: token batches through the truncated model, each hookpoint's non-zeros sorted
on the model's device and handed to its spill buffer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..logs import Progress
from .runs import sort_batch
from .spill import HookpointCache, Saver

if TYPE_CHECKING:
    import torch

# Tokens per forward call on a CPU, per torch thread (see forward_rows).
CPU_TOKENS_PER_THREAD = 256


def forward_rows(device: torch.device, batch_size: int, ctx_len: int) -> int:
    """Rows per forward call.

    On a CPU, passes of about CPU_TOKENS_PER_THREAD tokens per thread keep a layer's
    activations in cache (512 tokens on 2 cores: 17% faster than 32 x 256); an accelerator
    takes the whole batch at once.
    """
    import torch

    if device.type != "cpu":
        return batch_size
    tokens = CPU_TOKENS_PER_THREAD * torch.get_num_threads()
    return max(1, min(batch_size, tokens // ctx_len))


def encode_batch(
    model: Any,
    states: list[HookpointCache],
    batch: torch.Tensor,
    step: int,
    forward: Any,
    inputs: frozenset[str],
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each hookpoint's non-zeros (rows, latents, values) for one batch, `step` rows per pass."""
    import torch

    hookpoints = [s.hookpoint for s in states]
    inputs = inputs & set(hookpoints)
    parts: dict[str, list[tuple[torch.Tensor, ...]]] = {hp: [] for hp in hookpoints}
    t = batch.shape[1]
    for first in range(0, batch.shape[0], step):
        hidden = forward(model, hookpoints, batch[first : first + step], inputs=inputs)
        for state in states:
            x = hidden[state.hookpoint]
            rows, latents, values = state.coder.encode_sparse(x.reshape(-1, x.shape[-1]))
            parts[state.hookpoint].append((rows + first * t, latents, values))
        del hidden
    joined = {}
    for hp, found in parts.items():
        rows, latents, values = zip(*found, strict=True)
        joined[hp] = (torch.cat(rows), torch.cat(latents), torch.cat(values))
    return joined


def run_model(
    model: Any,
    states: list[HookpointCache],
    tokens: torch.Tensor,
    batch_size: int,
    bos_id: int | None,
    forward: Any,
    row_base: int = 0,
) -> float:
    """Feed `tokens` through the model in batches, streaming every hookpoint's non-zeros.

    `forward(model, hookpoints, input_ids, inputs=...)` returns hidden states per hookpoint.
    Starts at the first row some hookpoint has not done. `tokens` are rows row_base.. of the
    whole cache (a fan-out range step), so entries get their index in the whole cache.
    Returns the seconds spent.
    """
    import torch

    n_seqs, ctx_len = tokens.shape
    device = next(model.parameters()).device
    start = min(s.rows_done for s in states)
    pending = [s for s in states if s.rows_done < n_seqs]
    if not pending:
        return 0.0
    step = forward_rows(device, batch_size, ctx_len)
    inputs = frozenset(s.hookpoint for s in pending if getattr(s.coder, "transcoder", False))
    began = time.perf_counter()
    saver = Saver()
    progress = Progress((n_seqs - start) * ctx_len, "caching activations", unit="tok")
    try:
        for row in range(start, n_seqs, batch_size):
            batch = tokens[row : row + batch_size].to(device=device, dtype=torch.long)
            todo = [s for s in pending if row >= s.rows_done]
            with torch.inference_mode():
                found = encode_batch(model, todo, batch, step, forward, inputs)
                keep = (batch != bos_id).reshape(-1) if bos_id is not None else None
                first = row + row_base  # the batch's first row in the whole cache
                for s in todo:
                    s.add(sort_batch(*found[s.hookpoint], batch.numel(), first, ctx_len, keep))
            done = min(row + batch_size, n_seqs)
            progress.update((done - row) * ctx_len)
            if done == n_seqs or any(s.full() for s in pending):
                for s in pending:
                    s.flush(done, n_seqs, ctx_len, saver)
    finally:
        # Even on Ctrl-C, let the chunk being written finish so that its manifest is true.
        progress.close()
        saver.close()
    return time.perf_counter() - began
