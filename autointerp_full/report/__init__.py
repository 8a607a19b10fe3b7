"""The report stage's outputs: summary.json, the CLI's final table and the HTML report.

Importing this package is cheap; the dashboard's modules load only in write_html_report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autointerp_full.report.summary import print_table, write_summary

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig


def write_html_report(run_dir: Path, cfg: RunConfig, max_examples: int = 10) -> Path:
    """run_dir/report/: the latent dashboard (report.dashboard); returns its index.html."""
    from autointerp_full.report.html import write_html_report as write

    return write(run_dir, cfg, max_examples)


__all__ = ["write_summary", "print_table", "write_html_report"]
