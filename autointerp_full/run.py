"""The CLI's driver: every stage in one process, in the folders of results/<name>/."""

from __future__ import annotations

import logging
import time

from autointerp_full.config import RunConfig
from autointerp_full.errors import UserError
from autointerp_full.preflight import check_inputs

log = logging.getLogger(__name__)


def run_all(cfg: RunConfig) -> int:
    check_inputs(cfg)  # validate first: nothing in the run folder is touched before this
    from autointerp_full import stages
    from autointerp_full.io import sweep_temp
    from autointerp_full.layout import RunLayout

    if not cfg.hookpoints:
        raise UserError("--hookpoints: give at least one module path, e.g. layers.16")
    run = RunLayout.of(cfg)
    sweep_temp(run.root)  # temp files of writes a kill interrupted
    run.root.mkdir(parents=True, exist_ok=True)
    stages.dump_config(cfg, run.root)
    start = time.perf_counter()

    stages.cache_stage(cfg, run.latents)
    stages.examples_stage(cfg, run.latents, run.examples)
    stages.output_stage(cfg, run.examples, run.output)  # only with output-side explainer/scorers
    stages.explain_and_score_stage(
        cfg, run.examples, run.explanations, run.scores, output_dir=run.output
    )
    from autointerp_full.report import print_table
    from autointerp_full.report.summary import load_run

    view = load_run(run.root, cfg)  # read once for the summary, the dashboard and the table
    summary_path = stages.report_stage(cfg, run.root, view=view)
    print(print_table(run.root, cfg, view=view))
    log.info("done in %.1fs", time.perf_counter() - start)
    print(f"\nresults: {run.root.resolve()}\nsummary: {summary_path.resolve()}")
    return 0
