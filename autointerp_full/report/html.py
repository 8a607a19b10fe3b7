"""The HTML report: the latent dashboard under report/ (see `report.dashboard`).

Every piece of text from the run (explanations, tokens, error messages) reaches the page only
through the DOM's textContent, never as markup: it came from a dataset or an LLM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig


def write_html_report(run_dir: Path, cfg: RunConfig) -> Path:
    """Write run_dir/report/ (index.html, one page per latent, standalone.html) and return
    report/index.html. Needs no extra: the charts are hand-written SVG."""
    from autointerp_full.report.dashboard import write_dashboard

    return write_dashboard(Path(run_dir), cfg)
