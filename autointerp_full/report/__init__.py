"""The report stage's outputs: summary.json, the CLI's final table and the HTML report.

Importing this package is cheap; the dashboard's modules load only in write_html_report."""

from autointerp_full.report.html import write_html_report
from autointerp_full.report.summary import print_table, write_summary

__all__ = ["write_summary", "print_table", "write_html_report"]
