"""Validate first, then act: every input that can be checked cheaply, before the run folder is
touched.

`check_inputs(cfg)` runs before `run.run_all` creates, renames or deletes anything under
`results/<name>/`, and also when a cache is reused. Any failure is a one-line UserError naming
the parameter (exit code 2). Nothing here loads weights or tokenises the dataset: the model is
built on the meta device from its config, the sparse model is read from its cfg.json and tensor
headers, and the dataset is opened and read for its first rows only.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

from autointerp_full.config import RunConfig
from autointerp_full.errors import MissingExtraError, UserError

log = logging.getLogger(__name__)


def check_inputs(cfg: RunConfig) -> None:
    """Raise UserError (one line, naming the parameter) on the first bad input."""
    began = time.perf_counter()
    hookpoints = check_hookpoints(cfg)
    check_results_dir(cfg)
    check_extras(cfg)

    from autointerp_full import models
    from autointerp_full.prompts import load_prompts
    from autointerp_full.sparse_inspect import inspect_sparse_model

    models.check_device(cfg.device, cfg.load_in_8bit)
    load_prompts(cfg)
    infos = inspect_sparse_model(cfg.sparse_model, hookpoints, cfg.token)
    check_sparse_configs(infos)
    check_feature_num(cfg, {hp: info.num_latents for hp, info in infos.items()})
    model = models.inspect_model(cfg.model, hookpoints, token=cfg.token)
    check_widths(model["hidden_size"], {hp: info.d_in for hp, info in infos.items()})
    check_dataset(cfg)
    check_llm(cfg)
    check_caches(cfg)
    log.info("inputs checked in %.1fs", time.perf_counter() - began)


# ------------------------------------------------------------------------------- the run
def check_hookpoints(cfg: RunConfig) -> list[str]:
    hookpoints = list(dict.fromkeys(cfg.hookpoints))
    if not hookpoints:
        raise UserError("--hookpoints: give at least one module path, e.g. layers.16")
    return hookpoints


def check_results_dir(cfg: RunConfig) -> None:
    """--results_dir is (or can become) a writable folder, and results/<name> is not a file."""
    results = Path(cfg.results_dir).expanduser()
    if results.exists() and not results.is_dir():
        raise UserError(f"--results_dir: {cfg.results_dir!r} is a file, not a folder")
    from autointerp_full.layout import RunLayout

    run_dir = RunLayout.of(cfg).root
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--name: {str(run_dir)!r} is a file, not a run folder")
    existing = results
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"--results_dir: cannot create {cfg.results_dir!r}: {str(existing)!r} is a file"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--results_dir: {str(existing)!r} is not writable")


def check_extras(cfg: RunConfig) -> None:
    """Optional packages that a flag needs, so a missing one stops the run before any work."""
    faiss = cfg.non_activating_source == "FAISS"
    st = ("sentence_transformers", "sentence-transformers", "faiss")
    needs = []
    if faiss:
        needs.append(("faiss", "faiss-cpu", "faiss", "--non_activating_source FAISS"))
        needs.append((*st, "--non_activating_source FAISS"))
    if "embedding" in cfg.scorers:
        needs.append((*st, "--scorers embedding"))
    for module, package, extra, purpose in needs:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(package, extra, purpose)


def check_feature_num(cfg: RunConfig, num_latents: dict[str, int]) -> None:
    if not cfg.feature_num:
        return
    for hp, n in num_latents.items():
        bad = sorted({i for i in cfg.feature_num if i >= n})
        if bad:
            raise UserError(
                f"--feature_num: latent(s) {bad} out of range; the sparse model for {hp!r} has "
                f"{n} latents (0..{n - 1})"
            )


def check_sparse_configs(infos: dict[str, Any]) -> None:
    """The loader's own checks of a cfg.json (architecture, activation, normalisation, ...),
    given the tensor names and shapes instead of the tensors, when sparse.py offers them as
    `check_config(info: SparseInfo) -> None`."""
    from autointerp_full import sparse

    check = getattr(sparse, "check_config", None)
    if check is not None:
        for info in infos.values():
            check(info)


def check_widths(hidden_size: int, d_in: dict[str, int]) -> None:
    """Each sparse model takes inputs as wide as the subject model's hidden states."""
    for hp, width in d_in.items():
        if width != hidden_size:
            raise UserError(
                f"--sparse_model: the sparse model for {hp!r} takes inputs of size {width}, "
                f"but the subject model's hidden size there is {hidden_size}"
            )


# --------------------------------------------------------------------------- other inputs
def check_dataset(cfg: RunConfig) -> None:
    from autointerp_full.data import probe_texts

    probe_texts(cfg.dataset_repo, cfg.dataset_split, cfg.dataset_column, token=cfg.token)


def check_llm(cfg: RunConfig) -> None:
    """Remote providers: the server answers, serves --explainer_model, has its API key. The
    offline provider: --explainer_model exists (a local file or folder) or its config loads."""
    from autointerp_full.llm import check_llm as check

    check(cfg)


def check_caches(cfg: RunConfig) -> None:
    """A complete cache the run would reuse is checked against its config.json (headers and
    sizes only), so that a truncated shard is refused here instead of failing later. A cache
    whose key differs is rebuilt, so its state does not matter."""
    from autointerp_full import cache
    from autointerp_full.layout import RunLayout

    latents = RunLayout.of(cfg).latents
    reused = getattr(cache, "reused_hookpoints", None)
    if reused is not None:
        reused(cfg, latents)  # raises UserError naming a corrupt file; changes nothing
