"""The torch side of the output view: decoder directions, the logit lens, and clamping a latent
at its hookpoint during a forward pass (batched: every row of a batch may steer another latent).

A latent's contribution to its hookpoint is `a * W_dec[i]` (times the input's own scale when
the sparse model normalises its inputs). Clamping it to `c` therefore adds `(c - a) * W_dec[i]`
to the hookpoint module's output: for an SAE that is the module whose output it reconstructs,
for a transcoder the module whose output it writes (its output direction). `a` comes from the
examples file where it is known (the latent's recorded activations on that window) and is 0
elsewhere (tokens generated during steering), so no encoder runs and every sparse format and
the random-weights control are handled alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Where the final norm sits in common causal-LM wrappers, tried in order.
FINAL_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "language_model.model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",
    "model.decoder.final_layer_norm",
)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The norm applied before the unembedding, or None when the model has none we know."""
    for path in FINAL_NORM_PATHS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def unembedding(model: torch.nn.Module) -> torch.Tensor:
    """The unembedding matrix [V, d] (the LM head's weight; tied models share the embedding)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError("the subject model has no output embedding (LM head)")
    return head.weight


@torch.no_grad()
def logit_lens(model: torch.nn.Module, directions: torch.Tensor) -> torch.Tensor:
    """Logits [n, V] each direction [n, d] gives through the final norm and the unembedding,
    centred on their mean (only the ranking and the spread mean anything for a direction)."""
    weight = unembedding(model)
    x = directions.to(device=weight.device, dtype=weight.dtype)
    norm = final_norm(model)
    if norm is not None:
        x = norm(x)
    logits = (x @ weight.T).float()
    return logits - logits.mean(dim=-1, keepdim=True)


def input_scale(coder: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The per-token factor [B, T, 1] by which the sparse model's decoded output is scaled back
    to the hookpoint's space (its `input_norm`), or None when it does not normalise."""
    if getattr(coder, "input_norm", "none") == "none":
        return None
    flat = x.reshape(-1, x.shape[-1]).to(coder.W_enc.dtype)
    undo = coder._input_scale(flat)[1]
    return undo[0].reshape(*x.shape[:-1], 1)


def _first(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"the hooked module produced {type(value).__name__}, not a tensor")


def _replace_first(value: Any, tensor: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return tensor
    return type(value)([tensor, *value[1:]]) if isinstance(value, list) else (tensor, *value[1:])


class Steerer:
    """A forward hook on one hookpoint that adds `(clamp - acts) * vectors` to each row.

    Set `vectors` [B, d] (one direction per row; None switches steering off), `clamp` [B] and,
    optionally, `acts` [B, T]: the latent's known activations at the positions of the first
    call. A call of another length (generation with a KV cache) takes acts as 0."""

    def __init__(self, model: torch.nn.Module, hookpoint: str, coder: Any) -> None:
        from autointerp_full.models import resolve_hookpoint

        self.module = resolve_hookpoint(model, hookpoint)
        self.coder = coder
        self.vectors: torch.Tensor | None = None
        self.clamp: torch.Tensor | None = None
        self.acts: torch.Tensor | None = None

    def set(
        self,
        vectors: torch.Tensor | None,
        clamp: torch.Tensor | None = None,
        acts: torch.Tensor | None = None,
    ) -> None:
        self.vectors, self.clamp, self.acts = vectors, clamp, acts

    def hook(self, _module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        if self.vectors is None or self.clamp is None:
            return None
        out = _first(output)
        batch, length = out.shape[0], out.shape[1]
        clamp = self.clamp.to(out.device, torch.float32)[:batch, None].expand(batch, length)
        if self.acts is not None and self.acts.shape[1] == length:
            delta = clamp - self.acts.to(out.device, torch.float32)[:batch]
        else:
            delta = clamp
        added = delta[..., None] * self.vectors.to(out.device, torch.float32)[:batch, None, :]
        source = out
        if getattr(self.coder, "transcoder", False):
            source = args[0] if args else kwargs.get("hidden_states", out)
        scale = input_scale(self.coder, source) if self.coder is not None else None
        if scale is not None:
            added = added * scale.to(out.device, torch.float32)
        return _replace_first(output, (out.float() + added).to(out.dtype))

    @contextmanager
    def attached(self) -> Iterator[Steerer]:
        handle = self.module.register_forward_hook(self.hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self.set(None)


def pad_rows(
    rows: list[list[int]], acts: list[list[float]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids [B, T], attention mask [B, T], activations [B, T]), right-padded."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    values = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (row, act) in enumerate(zip(rows, acts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        values[i, : len(act)] = torch.tensor(act, dtype=torch.float32)
    return ids, mask, values


@torch.no_grad()
def mean_logprobs(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean log-probability [B, V], mean probability [B, V]) of the next token over each row's
    real positions, with whatever steering is attached at the time."""
    device = model_device(model)
    logits = model(
        input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
    ).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    weight = mask.to(device).float()[..., None]
    count = weight.sum(dim=1).clamp_min(1.0)
    mean_lp = (logprobs * weight).sum(dim=1) / count
    mean_p = (logprobs.exp() * weight).sum(dim=1) / count
    return mean_lp, mean_p


def random_directions(like: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """A uniformly random direction per row with that row's norm, drawn on the CPU from its own
    seed (the same control on every device)."""
    out = torch.empty(like.shape, dtype=torch.float32)
    norms = like.float().norm(dim=-1).cpu()
    for i, seed in enumerate(seeds):
        draw = torch.randn(like.shape[-1], generator=torch.Generator().manual_seed(seed))
        out[i] = draw * (norms[i] / draw.norm().clamp_min(1e-12))
    return out


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    pad_id: int,
    max_new_tokens: int,
    seed: int,
) -> list[list[int]]:
    """Sampled continuations (new token ids) of each prompt, with whatever steering is attached
    (left-padded batch; the generator is seeded so a rerun draws the same texts)."""
    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=True,
        top_k=50,
        temperature=1.0,
        pad_token_id=pad_id,
    )
    return [row[width:].tolist() for row in out.cpu()]
