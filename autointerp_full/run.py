"""The CLI's driver: every stage in one process, in the folders of results/<name>/."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from autointerp_full.config import RunConfig
from autointerp_full.errors import UserError
from autointerp_full.preflight import check_inputs

log = logging.getLogger(__name__)


def run_all(cfg: RunConfig) -> int:
    check_inputs(cfg)  # validate first: nothing in the run folder is touched before this
    from autointerp_full import stages

    if not cfg.hookpoints:
        raise UserError("--hookpoints: give at least one module path, e.g. layers.16")
    run_dir = Path(cfg.results_dir) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    stages.dump_config(cfg, run_dir)
    start = time.perf_counter()

    stages.cache_stage(cfg, run_dir / "latents")
    stages.examples_stage(cfg, run_dir / "latents", run_dir / "examples")
    asyncio.run(_explain_and_score(cfg, run_dir))
    summary_path = stages.report_stage(cfg, run_dir)

    from autointerp_full.report import print_table

    print(print_table(run_dir, cfg.scorers))
    log.info("done in %.1fs", time.perf_counter() - start)
    print(f"\nresults: {run_dir.resolve()}\nsummary: {summary_path.resolve()}")
    return 0


async def _explain_and_score(cfg: RunConfig, run_dir: Path) -> None:
    from autointerp_full.llm import make_client
    from autointerp_full.stages import llm_stages_async

    (run_dir / "explanations").mkdir(exist_ok=True)
    (run_dir / "scores").mkdir(exist_ok=True)
    client = make_client(cfg, "explain+score")
    try:
        await llm_stages_async(
            cfg, client, run_dir / "examples", run_dir / "explanations", run_dir / "scores"
        )
    finally:
        await client.aclose()
