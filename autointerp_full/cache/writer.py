"""Build the activation cache: one truncated model pass serving every hookpoint.

The steps live in their own modules: `key` (reuse decisions), `forward` (the model pass),
`runs` (sorting non-zeros), `spill` (chunk files and the resume manifest), `merge` (the shard
merge), `staging` (building beside the old cache, then swapping), `format` (the files).

Order matters for safety: everything that can fail on bad input (the sparse model, the model,
the dataset) runs before anything on disk is removed, and a complete cache is replaced only by
a complete one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..errors import UserError
from ..logs import format_duration, log
from . import forward, merge, spill, staging
from .format import FORMAT_VERSION, RANGE_FIELD, RANGE_TOTAL_FIELD, staging_folder
from .key import cache_key, key_difference, reusable, reuse_reason
from .spill import HookpointCache
from .tensorio import load_tokens

if TYPE_CHECKING:
    import torch

__all__ = ["build_cache", "cache_key", "finish", "key_difference", "reused_hookpoints"]


def _hookpoints(cfg: RunConfig) -> list[str]:
    hookpoints = list(dict.fromkeys(cfg.hookpoints))
    if not hookpoints:
        raise UserError("--hookpoints: give at least one module path, e.g. layers.16")
    return hookpoints


def reused_hookpoints(cfg: RunConfig, latents_dir: Path) -> list[str]:
    """The hookpoints whose existing cache a build would reuse, verified; changes nothing.

    Torch-free and cheap (config.json, the sparse model's fingerprint, file headers), for a
    check before a run touches anything. A corrupt cache that would be reused raises
    UserError naming the file.
    """
    overwrite = "cache" in cfg.overwrite
    return [
        hp
        for hp in _hookpoints(cfg)
        if reuse_reason(
            staging.current_folder(Path(latents_dir), hp), cache_key(cfg, hp), overwrite
        )
        is None
    ]


def build_cache(
    cfg: RunConfig, latents_dir: Path, rows: tuple[int, int] | None = None
) -> dict[str, Path]:
    """Make sure `latents_dir/<hookpoint>/` holds a complete cache for every hookpoint.

    Caches whose key matches the current configuration are verified and reused; the others
    are built in one model pass (resuming an interrupted build with the same key) beside the
    old ones, which they replace once complete. Returns hookpoint -> folder.

    With `rows` = (lo, hi), only token rows [lo, hi) of the cache are cached (a fan-out range
    step): the folder is a part that `fanout.merge_parts` joins with the other ranges' parts.
    """
    latents_dir = Path(latents_dir)
    hookpoints = _hookpoints(cfg)
    folders = {hp: latents_dir / hp for hp in hookpoints}
    keys = {hp: cache_key(cfg, hp) for hp in hookpoints}
    if rows is not None:
        for key in keys.values():
            key[RANGE_FIELD] = [int(rows[0]), int(rows[1])]
    for hp in hookpoints:
        staging.recover(latents_dir, hp)
    overwrite = "cache" in cfg.overwrite
    todo = [hp for hp in hookpoints if not reusable(folders[hp], keys[hp], overwrite)]
    if not todo:
        return folders

    from .. import models, sparse

    began = time.perf_counter()
    model, tokenizer = models.load_subject_model(
        cfg.model,
        device=cfg.device,
        dtype=cfg.dtype,
        load_in_8bit=cfg.load_in_8bit,
        token=cfg.token,
    )
    param = next(model.parameters())
    coders = sparse.load_sparse_models(
        cfg.sparse_model, todo, device=param.device, dtype=param.dtype, token=cfg.token
    )
    width = models.hidden_size(model)
    for hp in todo:
        sparse.check_dimensions(coders[hp], width, hp)

    states = [
        HookpointCache(
            hp,
            staging_folder(latents_dir, hp),
            keys[hp],
            coders[hp],
            int(coders[hp].num_latents),
            cfg.n_splits,
        )
        for hp in todo
    ]
    vocab = _vocab_size(tokenizer)
    for state in states:
        state.vocab_size = vocab
    resumed = {s.hookpoint: spill.resumable(s) for s in states}
    if rows is None:
        tokens = _tokens_for(cfg, tokenizer, [s for s in states if resumed[s.hookpoint][0]])
        all_tokens, row_base = tokens, 0
    else:  # a range step tokenises every row (cheap), so the ranges agree on them
        all_tokens = _tokens_for(cfg, tokenizer, [])
        tokens, row_base = _range_rows(all_tokens, rows), int(rows[0])
    # Only now, with the tokens in hand, is a stale staged build discarded.
    n_seqs, ctx_len = tokens.shape
    for state in states:
        state.index_tokens = all_tokens.numel()
        state.vocab_size = spill.tokens_vocab(state, all_tokens)  # the same in every range
    for state in states:
        ok, why = resumed[state.hookpoint]
        if ok and state.staged_rows == n_seqs:
            spill.drop_unrecorded_chunks(state)
            log.info("resuming cache %s from row %d of %d", state.folder, state.rows_done, n_seqs)
        else:
            spill.start_fresh(state, tokens, why or "its token rows differ")

    if cfg.random_sparse_model:  # the randomised control, its biases set on the first rows
        sparse.make_random_controls(coders, cfg.seed, model, all_tokens, models.forward_to_hooks)
    bos_id = tokenizer.bos_token_id if cfg.filter_bos else None
    if cfg.filter_bos and bos_id is None:
        log.warning("--filter_bos: the tokenizer has no BOS token; nothing is filtered")
    model_s = forward.run_model(
        model, states, tokens, cfg.batch_size, bos_id, models.forward_to_hooks, row_base
    )

    for state in states:
        config = {
            **state.key,
            "tokenizer": getattr(tokenizer, "name_or_path", "") or cfg.model,
            "num_latents": state.num_latents,
            "n_seqs": n_seqs,
            "ctx_len": ctx_len,
            "n_splits": cfg.n_splits,
            "d_in": int(getattr(state.coder, "d_in", width)),
            "transcoder": bool(getattr(state.coder, "transcoder", False)),
            "bos_token_id": tokenizer.bos_token_id,
            "vocab_size": spill.tokens_vocab(state, all_tokens),
            "format": FORMAT_VERSION,
        }
        if rows is not None:
            config[RANGE_TOTAL_FIELD] = len(all_tokens)
        finish(state, config, n_seqs, ctx_len)
        staging.commit(latents_dir, state.hookpoint)

    total = time.perf_counter() - began
    n_tok = n_seqs * ctx_len
    size = sum(_dir_size(folders[hp]) for hp in todo)
    log.info(
        "cached %d tokens for %s in %s (model pass %.0f tok/s); %s on disk in %s",
        n_tok,
        ", ".join(todo),
        format_duration(total),
        n_tok / model_s if model_s else 0.0,
        _human_bytes(size),
        latents_dir,
    )
    return folders


def finish(state: HookpointCache, config: dict[str, Any], n_seqs: int, ctx_len: int) -> None:
    """Merge every shard's chunks, then seal the staged cache (config.json written last)."""
    merge.merge_shards(state, n_seqs, ctx_len)
    merge.seal(state, config)


def _tokens_for(cfg: RunConfig, tokenizer: Any, resumed: list[HookpointCache]) -> torch.Tensor:
    """The token rows: from an interrupted build with the same key when there is one, else
    from the dataset (equal by construction: the key holds every field they depend on)."""
    from ..data import load_texts, tokenize_rows

    if resumed:
        return load_tokens(resumed[0].tokens_file)
    texts = load_texts(
        cfg.dataset_repo,
        cfg.dataset_split,
        cfg.dataset_column,
        token=cfg.token,
        num_proc=cfg.pipeline_num_proc,
    )
    return tokenize_rows(texts, tokenizer, cfg.cache_ctx_len, cfg.n_tokens)


def _range_rows(tokens: torch.Tensor, rows: tuple[int, int]) -> torch.Tensor:
    """Rows [lo, hi) of the token rows (hi clipped: the dataset may hold fewer rows)."""
    lo, hi = int(rows[0]), min(int(rows[1]), len(tokens))
    if not 0 <= lo < hi:
        raise UserError(
            f"cache fan-out: token rows {rows[0]}..{rows[1]} hold no rows of the "
            f"{len(tokens)} the dataset gives; use fewer cache ranges"
        )
    return tokens[lo:hi]


def _vocab_size(tokenizer: Any) -> int | None:
    """The number of token ids the tokenizer can produce (added tokens included)."""
    try:
        return int(len(tokenizer))
    except TypeError:
        return None


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
