"""A self-contained HTML report (report/index.html): the figures, an index of latents, and one
anchored section per latent with its explanation, scores and examples coloured by activation.

Every piece of text from the run (explanations, tokens, error messages) is HTML-escaped: it came
from a dataset or an LLM and may contain markup."""

from __future__ import annotations

import json
import logging
import re
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full.io import atomic_write_text, read_json
from autointerp_full.layout import RunLayout
from autointerp_full.report.plots import (
    firing_rate_figure,
    headline,
    plotly_go,
    roc_figure,
    score_distribution_figure,
)
from autointerp_full.report.summary import aggregate, load_run
from autointerp_full.scorers import HEADLINE_METRIC

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig

log = logging.getLogger(__name__)

LatentKey = tuple[str, int]
N_NON_ACTIVATING_SHOWN = 3

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
section.latent { border-top: 2px solid #888; margin-top: 2em; padding-top: 0.5em; }
.example { font-family: monospace; white-space: pre-wrap; margin: 4px 0; padding: 4px;
           background: #fafafa; border-left: 3px solid #ddd; }
.example.non { border-left-color: #9bd; }
.tok { border-radius: 2px; }
.err { color: #b00; }
"""


def anchor(key: LatentKey) -> str:
    return "latent-" + re.sub(r"[^A-Za-z0-9_.-]", "-", key[0]) + f"-{key[1]}"


def render_tokens(str_tokens: list[str], activations: list[float], top: float) -> str:
    """Tokens as spans whose red background grows with the activation (hover shows the value)."""
    parts = []
    for token, act in zip(str_tokens, activations, strict=False):
        alpha = min(1.0, max(0.0, act / top)) if top > 0 else 0.0
        if act > 0:
            parts.append(
                f'<span class="tok" style="background: rgba(220, 50, 47, {alpha:.2f})" '
                f'title="{act:.4g}">{escape(token)}</span>'
            )
        else:
            parts.append(escape(token))
    return "".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, dict)):
        return escape(json.dumps(value)[:200])
    return escape(str(value))


def latent_section(
    key: LatentKey,
    explanation: str | None,
    explain_error: str | None,
    scores: dict[str, dict[LatentKey, dict[str, Any]]],
    record: dict[str, Any] | None,
    max_examples: int,
) -> str:
    hookpoint, latent = key
    out = [f'<section class="latent" id="{escape(anchor(key))}">']
    out.append(f"<h2>{escape(hookpoint)} latent {latent}</h2>")
    if explanation is not None:
        out.append(f"<p><b>Explanation:</b> {escape(explanation)}</p>")
    else:
        out.append(f'<p class="err">No explanation: {escape(explain_error or "missing")}</p>')
    if record is not None:
        out.append(
            f"<p>firing rate {record.get('firing_rate', 0):.3g}, "
            f"{record.get('n_activating', 0)} activations, "
            f"max activation {record.get('max_activation', 0):.4g}</p>"
        )

    rows = []
    for scorer, files in scores.items():
        score = files.get(key)
        if score is None:
            continue
        if score.get("error"):
            rows.append(
                f'<tr><td>{escape(scorer)}</td><td class="err">'
                f"{escape(str(score['error']))}</td></tr>"
            )
            continue
        metrics = ", ".join(
            f"{escape(k)}={_fmt(v)}" for k, v in (score.get("metrics") or {}).items()
        )
        rows.append(f"<tr><td>{escape(scorer)}</td><td>{metrics}</td></tr>")
    if rows:
        out.append("<table><tr><th>scorer</th><th>metrics</th></tr>" + "".join(rows) + "</table>")

    if record is not None:
        top = float(record.get("max_activation") or 0.0)
        activating = sorted(
            record.get("train", []) + record.get("test", []),
            key=lambda e: -max(e.get("activations") or [0.0]),
        )[:max_examples]
        if activating:
            out.append("<h3>Activating examples</h3>")
        for e in activating:
            body = render_tokens(e["str_tokens"], e["activations"], top)
            out.append(f'<div class="example">{body}</div>')
        non = record.get("non_activating", [])[:N_NON_ACTIVATING_SHOWN]
        if non:
            out.append("<h3>Non-activating examples</h3>")
        for e in non:
            body = render_tokens(e["str_tokens"], e["activations"], top)
            out.append(f'<div class="example non">{body}</div>')
    out.append('<p><a href="#top">back to top</a></p></section>')
    return "\n".join(out)


def write_html_report(run_dir: Path, cfg: RunConfig, max_examples: int = 10) -> Path:
    """Write run_dir/report/index.html; needs plotly (the 'visualize' extra)."""
    plotly_go()  # fail before doing any work when plotly is missing
    run = RunLayout(Path(run_dir))
    view = load_run(run.root, cfg)  # the current artifacts only
    scores, explanations, failures = view.scores, view.explanations, view.explanation_failures
    keys = sorted(set(view.examples) | set(explanations) | {k for s in scores.values() for k in s})

    records: dict[LatentKey, dict[str, Any]] = {}
    for key in keys:
        path = view.examples.get(key)
        if path is not None:
            records[key] = read_json(path)
    firing_rates = {
        k: float(r["firing_rate"]) for k, r in records.items() if r.get("firing_rate", 0) > 0
    }

    figures = [score_distribution_figure(scores), firing_rate_figure(scores, firing_rates)]
    roc = roc_figure(scores)
    if roc is not None:
        figures.append(roc)
    # plotly.js is inlined once, with the first figure, so the file works offline.
    plots = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)
    ]

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>AutoInterp report: {escape(cfg.run_name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<h1 id="top">AutoInterp report: {escape(cfg.run_name)}</h1>',
        f"<p>Model {escape(cfg.model)}, sparse model {escape(cfg.sparse_model)}, "
        f"hookpoints {escape(', '.join(cfg.hookpoints))}.</p>",
        overall_table(scores),
        *plots,
        index_table(keys, explanations, scores),
    ]
    for key in keys:
        parts.append(
            latent_section(
                key,
                explanations.get(key),
                failures.get(key),
                scores,
                records.get(key),
                max_examples,
            )
        )
    parts.append("</body></html>")
    path = run.report_html
    atomic_write_text(path, "\n".join(parts))
    log.info("HTML report: %s (%d latents)", path, len(keys))
    return path


def overall_table(scores: dict[str, dict[LatentKey, dict[str, Any]]]) -> str:
    rows = []
    for scorer, files in scores.items():
        summary = aggregate(scorer, list(files.values()))
        metric = HEADLINE_METRIC.get(scorer, "accuracy")
        value = summary["mean_per_latent"].get(metric)
        rows.append(
            f"<tr><td>{escape(scorer)}</td><td>{escape(metric)}</td>"
            f"<td>{'-' if value is None else f'{value:.3f}'}</td>"
            f"<td>{summary['n_scored']}</td><td>{summary['n_failed']}</td></tr>"
        )
    return (
        "<h2>Scores</h2><table><tr><th>scorer</th><th>metric</th><th>mean per latent</th>"
        "<th>latents scored</th><th>failed</th></tr>" + "".join(rows) + "</table>"
    )


def index_table(
    keys: list[LatentKey],
    explanations: dict[LatentKey, str],
    scores: dict[str, dict[LatentKey, dict[str, Any]]],
) -> str:
    head = "".join(f"<th>{escape(s)}</th>" for s in scores)
    rows = []
    for key in keys:
        cells = []
        for scorer, files in scores.items():
            score = files.get(key)
            value = headline(scorer, score) if score else None
            if score is not None and score.get("error"):
                cells.append('<td class="err">err</td>')
            else:
                cells.append(f"<td>{'-' if value is None else f'{value:.2f}'}</td>")
        text = explanations.get(key, "(no explanation)")
        rows.append(
            f'<tr><td><a href="#{escape(anchor(key))}">{escape(key[0])} {key[1]}</a></td>'
            f"<td>{escape(text[:120])}</td>{''.join(cells)}</tr>"
        )
    return (
        f"<h2>Latents</h2><table><tr><th>latent</th><th>explanation</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )
