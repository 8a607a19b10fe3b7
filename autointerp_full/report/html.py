"""The HTML report: the latent dashboard under report/ (see `report.dashboard`).

Every piece of text from the run (explanations, tokens, error messages) reaches the page only
through the DOM's textContent, never as markup: it came from a dataset or an LLM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.report.summary import RunView


def write_html_report(run_dir: Path, cfg: RunConfig, *, view: RunView | None = None) -> Path:
    """Write run_dir/report/ (index.html, one page per latent, standalone.html) and return
    report/index.html. Needs no extra: the charts are hand-written SVG. `view`: the caller's
    load_run(run_dir, cfg), so the run is not read again."""
    from autointerp_full.report.dashboard import write_dashboard

    return write_dashboard(Path(run_dir), cfg, view=view)
