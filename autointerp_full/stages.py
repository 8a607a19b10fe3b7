"""One function per stage: paths in, paths out, no global state.

The CLI (run.py) calls these in order; each Kubeflow component calls exactly one. Every stage
skips what is already on disk, so a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full.config import RunConfig
from autointerp_full.errors import UserError
from autointerp_full.io import atomic_write_json, atomic_write_text, read_json
from autointerp_full.logs import Progress

if TYPE_CHECKING:
    from autointerp_full.examples.types import LatentRecord
    from autointerp_full.llm.base import LLMClient
    from autointerp_full.prompts import Prompts

log = logging.getLogger(__name__)

LatentRange = tuple[int, int] | None
USAGE_FILE = ".usage.json"
FAILURES_FILE = "failures.json"


def latent_stem(hookpoint: str, latent: int) -> str:
    return f"{hookpoint}_latent_{latent}"


def parse_stem(stem: str) -> tuple[str, int]:
    hookpoint, _, latent = stem.rpartition("_latent_")
    return hookpoint, int(latent)


def select_latents(cfg: RunConfig, num_latents: int, latent_range: LatentRange = None) -> list[int]:
    """The latents a run analyses: --feature_num, else 0..--max_latents-1, else all."""
    if cfg.feature_num:
        bad = [i for i in cfg.feature_num if i >= num_latents]
        if bad:
            raise UserError(
                f"--feature_num: latent(s) {bad} out of range; the sparse model has "
                f"{num_latents} latents"
            )
        latents = sorted(set(cfg.feature_num))
    else:
        latents = list(range(min(cfg.max_latents or num_latents, num_latents)))
    if latent_range is not None:
        start, end = latent_range
        latents = [i for i in latents if start <= i < end]
    return latents


# ---------------------------------------------------------------------------- cache


def cache_stage(cfg: RunConfig, latents_dir: Path) -> Path:
    from autointerp_full.cache import build_cache

    build_cache(cfg, Path(latents_dir))  # it rejects an empty --hookpoints
    return Path(latents_dir)


# ------------------------------------------------------------------------- examples


def examples_stage(
    cfg: RunConfig, latents_dir: Path, examples_dir: Path, latent_range: LatentRange = None
) -> Path:
    from autointerp_full.cache import CacheReader
    from autointerp_full.examples import ExampleBuilder

    examples_dir = Path(examples_dir)
    examples_dir.mkdir(parents=True, exist_ok=True)
    skipped_path = examples_dir / "skipped.json"
    skipped: dict[str, dict[str, int]] = read_json(skipped_path) if skipped_path.exists() else {}
    for hookpoint in cfg.hookpoints:
        reader = CacheReader(Path(latents_dir) / hookpoint)
        latents = select_latents(cfg, reader.num_latents, latent_range)
        done_skips = skipped.setdefault(hookpoint, {})
        todo = [
            i
            for i in latents
            if not (examples_dir / f"{latent_stem(hookpoint, i)}.json").exists()
            and str(i) not in done_skips
        ]
        if not todo:
            log.info("examples for %s: all %d latents already built", hookpoint, len(latents))
            continue
        builder = ExampleBuilder(cfg, reader, examples_dir, latents=latents)
        with Progress(len(todo), f"examples {hookpoint}", "latent") as progress:
            for latent in todo:
                record = builder.build(latent)
                if record is None:
                    done_skips[str(latent)] = int(builder.last_count)
                else:
                    atomic_write_json(
                        examples_dir / f"{latent_stem(hookpoint, latent)}.json", record.to_dict()
                    )
                progress.update()
        atomic_write_json(skipped_path, skipped)
        n_skipped = sum(1 for i in latents if str(i) in done_skips)
        log.info(
            "examples for %s: %d latents built, %d skipped (fewer than --min_examples=%d)",
            hookpoint,
            len(latents) - n_skipped,
            n_skipped,
            cfg.min_examples,
        )
    return examples_dir


def load_records(
    cfg: RunConfig, examples_dir: Path, latent_range: LatentRange = None
) -> list[LatentRecord]:
    """The example files for the run's hookpoints and latents, in a stable order."""
    from autointerp_full.examples.types import LatentRecord

    records = []
    for path in sorted(Path(examples_dir).glob("*_latent_*.json")):
        hookpoint, latent = parse_stem(path.stem)
        if hookpoint not in cfg.hookpoints:
            continue
        if cfg.feature_num and latent not in cfg.feature_num:
            continue
        if cfg.max_latents and not cfg.feature_num and latent >= cfg.max_latents:
            continue
        if latent_range is not None and not latent_range[0] <= latent < latent_range[1]:
            continue
        records.append(LatentRecord.from_dict(read_json(path)))
    records.sort(key=lambda r: (cfg.hookpoints.index(r.hookpoint), r.latent))
    return records


# ------------------------------------------------------------------ explain & score


class LLMWork:
    """Explains and scores latents with one client, many latents in flight at once.

    The CLI explains and scores each latent back to back, so the server never idles
    between the two stages; the pipeline runs them as separate steps.
    """

    def __init__(
        self,
        cfg: RunConfig,
        client: LLMClient,
        examples_dir: Path,
        explanations_dir: Path | None,
        scores_dir: Path | None,
    ) -> None:
        from autointerp_full.prompts import load_prompts

        self.cfg = cfg
        self.client = client
        self.prompts: Prompts = load_prompts(cfg)
        self.examples_dir = Path(examples_dir)
        self.explanations_dir = Path(explanations_dir) if explanations_dir else None
        self.scores_dir = Path(scores_dir) if scores_dir else None
        self.failures: dict[str, str] = {}
        self._scorers: dict[str, Any] = {}

    # -- explanations
    def explanation_path(self, record: LatentRecord) -> Path:
        assert self.explanations_dir is not None
        return self.explanations_dir / f"{latent_stem(record.hookpoint, record.latent)}.txt"

    def existing_explanation(self, record: LatentRecord) -> str | None:
        path = self.explanation_path(record)
        return path.read_text(encoding="utf-8") if path.exists() else None

    async def explain(self, record: LatentRecord) -> str | None:
        from autointerp_full.explainers import explain

        existing = self.existing_explanation(record)
        if existing is not None:
            return existing
        if self.cfg.effective_explainer == "none":
            self.failures[latent_stem(record.hookpoint, record.latent)] = (
                "--explainer none: no explanation on disk"
            )
            return None
        result = await explain(record, self.client, self.prompts, self.cfg)
        if result.explanation is None:
            self.failures[latent_stem(record.hookpoint, record.latent)] = result.error or "failed"
            return None
        atomic_write_text(self.explanation_path(record), result.explanation)
        return result.explanation

    # -- scores
    def scorer(self, name: str) -> Any:
        from autointerp_full.scorers import SCORERS

        if name not in self._scorers:
            self._scorers[name] = SCORERS[name](self.client, self.prompts, self.cfg)
        return self._scorers[name]

    def score_path(self, scorer: str, record: LatentRecord) -> Path:
        assert self.scores_dir is not None
        return self.scores_dir / scorer / f"{latent_stem(record.hookpoint, record.latent)}.txt"

    def scores_missing(self, record: LatentRecord) -> list[str]:
        """Scorers with no result for this latent yet; a failed one is tried again."""
        return [s for s in self.cfg.scorers if not self._scored(self.score_path(s, record))]

    @staticmethod
    def _scored(path: Path) -> bool:
        return path.exists() and read_json(path).get("error") is None

    async def score(self, record: LatentRecord, explanation: str | None) -> None:
        async def one(name: str) -> None:
            scorer = self.scorer(name)
            if scorer.needs_explanation and explanation is None:
                return
            result = await scorer.score(record, explanation)
            atomic_write_json(self.score_path(name, record), result)

        await asyncio.gather(*(one(name) for name in self.scores_missing(record)))

    async def explain_and_score(self, record: LatentRecord) -> None:
        explanation = await self.explain(record) if self.explanations_dir else None
        if self.scores_dir is not None:
            await self.score(record, explanation)

    def write_failures(self) -> None:
        if self.explanations_dir is None:
            return
        path = self.explanations_dir / FAILURES_FILE
        atomic_write_json(path, dict(sorted(self.failures.items())))


async def run_bounded(
    items: Iterable[Any], work: Callable[[Any], Awaitable[None]], limit: int, progress: Progress
) -> None:
    """Run `work` over items with at most `limit` in flight; progress counts finished items."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            await work(item)
            progress.update()

    await asyncio.gather(*(worker() for _ in range(max(1, limit))))


def record_usage(folder: Path, client: LLMClient, seconds: float) -> None:
    """Add this invocation's token usage (per stage: explain, detection, ...) to the totals
    kept beside the stage's outputs, so a resumed run reports the whole run's usage."""
    path = Path(folder) / USAGE_FILE
    totals: dict[str, Any] = read_json(path) if path.exists() else {}
    for stage, counts in client.usage.as_dict().items():
        entry = totals.setdefault(stage, {})
        for key, value in counts.items():
            if isinstance(value, (int, float)):
                entry[key] = entry.get(key, 0) + value
    totals["wall_seconds"] = round(totals.get("wall_seconds", 0) + seconds, 3)
    atomic_write_json(path, totals)


async def llm_stages_async(
    cfg: RunConfig,
    client: LLMClient,
    examples_dir: Path,
    explanations_dir: Path | None,
    scores_dir: Path | None,
    latent_range: LatentRange = None,
) -> None:
    """Explain and/or score every selected latent that still lacks its outputs."""
    work = LLMWork(cfg, client, examples_dir, explanations_dir, scores_dir)
    if scores_dir is not None and "scores" in cfg.overwrite:
        for scorer in cfg.scorers:
            for path in (Path(scores_dir) / scorer).glob("*.txt"):
                path.unlink()
    records = load_records(cfg, examples_dir, latent_range)

    def pending(r: LatentRecord) -> bool:
        if explanations_dir is not None and work.existing_explanation(r) is None:
            return True
        return scores_dir is not None and bool(work.scores_missing(r))

    todo = [r for r in records if pending(r)]
    what = " and ".join(
        name for name, d in (("explain", explanations_dir), ("score", scores_dir)) if d
    )
    log.info("%s: %d latents to do, %d already done", what, len(todo), len(records) - len(todo))
    if not todo:
        return
    # Enough latents in flight to keep every request slot busy.
    limit = max(2, cfg.max_concurrent_requests)
    start = time.perf_counter()
    with Progress(len(todo), what, "latent") as progress:
        try:
            await run_bounded(todo, work.explain_and_score, limit, progress)
        finally:
            work.write_failures()
    elapsed = time.perf_counter() - start
    log.info(
        "%s: %d latents in %.1fs (%.1f latents/min)",
        what,
        len(todo),
        elapsed,
        60 * len(todo) / max(elapsed, 1e-9),
    )
    # The usage lands beside the first output the invocation wrote.
    folder = explanations_dir if explanations_dir is not None else scores_dir
    record_usage(Path(folder), client, elapsed)


def _run_llm_stage(
    cfg: RunConfig,
    stage: str,
    examples_dir: Path,
    explanations_dir: Path | None,
    scores_dir: Path | None,
    latent_range: LatentRange,
) -> None:
    from autointerp_full.llm import make_client

    async def main() -> None:
        client = make_client(cfg, stage)
        try:
            await llm_stages_async(
                cfg, client, examples_dir, explanations_dir, scores_dir, latent_range
            )
        finally:
            await client.aclose()

    asyncio.run(main())


def explain_stage(
    cfg: RunConfig, examples_dir: Path, explanations_dir: Path, latent_range: LatentRange = None
) -> Path:
    Path(explanations_dir).mkdir(parents=True, exist_ok=True)
    _run_llm_stage(cfg, "explain", examples_dir, explanations_dir, None, latent_range)
    return Path(explanations_dir)


def score_stage(
    cfg: RunConfig,
    examples_dir: Path,
    explanations_dir: Path,
    scores_dir: Path,
    latent_range: LatentRange = None,
) -> Path:
    """Score latents; explanations are read from `explanations_dir`, never written here."""
    Path(scores_dir).mkdir(parents=True, exist_ok=True)
    read_only = cfg_with(cfg, explainer="none")
    _run_llm_stage(read_only, "score", examples_dir, explanations_dir, scores_dir, latent_range)
    return Path(scores_dir)


def cfg_with(cfg: RunConfig, **changes: Any) -> RunConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# --------------------------------------------------------------------------- report


def report_stage(cfg: RunConfig, run_dir: Path) -> Path:
    from autointerp_full.report import write_summary

    run_dir = Path(run_dir)
    # Keyed by the folder the usage was recorded in: the CLI records both stages together in
    # explanations/, the pipeline's steps record their own.
    usage: dict[str, Any] = {}
    for folder in ("explanations", "scores"):
        path = run_dir / folder / USAGE_FILE
        if path.exists():
            usage[folder] = read_json(path)
    write_summary(run_dir, cfg, extra={"llm_usage": usage})
    if cfg.enable_visualization:
        from autointerp_full.report import write_html_report

        write_html_report(run_dir, cfg)
    return run_dir / "summary.json"


def dump_config(cfg: RunConfig, run_dir: Path) -> Path:
    """Write run_config.json (no secrets); an earlier, different one is kept beside it."""
    path = Path(run_dir) / "run_config.json"
    new = cfg.public_dict()
    if path.exists():
        old = read_json(path)
        if old != new:
            n = 1
            while (Path(run_dir) / f"run_config.{n}.json").exists():
                n += 1
            path.rename(Path(run_dir) / f"run_config.{n}.json")
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            log.info(
                "configuration changed (%s); previous kept as run_config.%d.json",
                ", ".join(changed),
                n,
            )
    atomic_write_json(path, new)
    return path


__all__ = [
    "cache_stage",
    "examples_stage",
    "explain_stage",
    "score_stage",
    "report_stage",
    "dump_config",
    "select_latents",
]
