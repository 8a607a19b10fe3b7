"""The output stage: an output profile per latent, computed once and reused while current.

Like every stage it reads its input folder (examples/), writes only into its own (output/),
and logs how many profiles it reused and why it recomputed the others. The subject model and
the sparse model are loaded only when some profile has to be computed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full import layout
from autointerp_full import provenance as prov
from autointerp_full.io import atomic_write_json, read_json

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.layout import LatentRange
    from autointerp_full.stages import LoadedExamples

log = logging.getLogger(__name__)

LATENTS_PER_CHUNK = 32  # latents profiled together (their sums are [latents, vocab] floats)
STAGE = "output"


def profile_reason(path: Path, fp: str, inputs: dict[str, Any]) -> str | None:
    """Why a latent's profile must be computed, or None when the one on disk is current."""
    if not path.exists():
        return prov.NEW
    if prov.peek_fingerprint(path) == fp:
        return None
    old = prov.read_json_or_none(path)
    return prov.reason_changed(prov.recorded_inputs(old), inputs)


def run_output_stage(
    cfg: RunConfig, examples_dir: Path, output_dir: Path, latent_range: LatentRange = None
) -> Path:
    from autointerp_full.stages import load_examples

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    items = load_examples(cfg, examples_dir, latent_range)
    todo: dict[str, list[tuple[LoadedExamples, dict[str, Any]]]] = {}
    tallies: dict[str, prov.Tally] = {}
    for item in items:
        hp, latent = item.record.hookpoint, item.record.latent
        inputs = prov.output_inputs(cfg, item.fingerprint)
        path = layout.output_file(output_dir, hp, latent)
        reason = profile_reason(path, prov.fingerprint(inputs), inputs)
        tally = tallies.setdefault(hp, prov.Tally(f"output {hp}"))
        if reason is None:
            tally.reuse()
        else:
            tally.recompute(reason)
            todo.setdefault(hp, []).append((item, inputs))
    n_done = sum(len(v) for v in todo.values())
    loading = elapsed = 0.0
    if n_done:
        loading, elapsed = _compute(cfg, output_dir, todo)
    for tally in tallies.values():
        tally.log()
    if n_done:
        log.info(
            "output: %d profiles computed in %.1fs (%.3f s per latent), plus %.1fs loading the "
            "models",
            n_done,
            elapsed,
            elapsed / n_done,
            loading,
        )
        _record_cost(output_dir, n_done, elapsed + loading)
    return output_dir


def _compute(
    cfg: RunConfig,
    output_dir: Path,
    todo: dict[str, list[tuple[LoadedExamples, dict[str, Any]]]],
) -> tuple[float, float]:
    """Compute and write the profiles; returns (seconds loading models, seconds computing)."""
    from autointerp_full.logs import Progress
    from autointerp_full.output import sparse_coder, subject_model
    from autointerp_full.output.profile import compute_profiles
    from autointerp_full.output.steering import model_device

    started = time.perf_counter()
    model, tokenizer = subject_model(cfg)
    device = model_device(model)
    coders = {hp: sparse_coder(cfg, hp, device) for hp in todo}
    loading = time.perf_counter() - started
    total = sum(len(v) for v in todo.values())
    with Progress(total, STAGE, "latent") as progress:
        for hp, entries in todo.items():
            coder = coders[hp]
            for i in range(0, len(entries), LATENTS_PER_CHUNK):
                chunk = entries[i : i + LATENTS_PER_CHUNK]
                profiles = compute_profiles(
                    model, tokenizer, coder, hp, [item.record for item, _ in chunk],
                    rows_per_batch=cfg.batch_size,
                )  # fmt: skip
                for (item, inputs), profile in zip(chunk, profiles, strict=True):
                    path = layout.output_file(output_dir, hp, item.record.latent)
                    atomic_write_json(path, prov.stamp(profile, inputs))
                    progress.update()
    return loading, time.perf_counter() - started - loading


def _record_cost(output_dir: Path, latents: int, seconds: float) -> None:
    """Profiles computed and the seconds spent, summed over invocations (.usage.json, which the
    pipeline's report step adds up like the LLM stages' usage)."""
    path = layout.usage_file(output_dir)
    totals = prov.read_json_or_none(path)
    totals = totals if isinstance(totals, dict) else {}
    entry = totals.setdefault(STAGE, {})
    entry["profiles"] = int(entry.get("profiles", 0)) + latents
    totals["wall_seconds"] = round(float(totals.get("wall_seconds", 0)) + seconds, 3)
    atomic_write_json(path, totals)


def read_profile(output_dir: Path | None, hookpoint: str, latent: int) -> dict[str, Any] | None:
    """A latent's output profile, or None when there is none (or it cannot be read)."""
    if output_dir is None:
        return None
    path = layout.output_file(Path(output_dir), hookpoint, latent)
    if not path.exists():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
