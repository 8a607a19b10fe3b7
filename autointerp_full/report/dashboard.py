"""The latent dashboard: static files under results/<name>/report/ that open from disk (file://)
with no server.

```
report/index.html            the index: every latent, sortable, filterable, searchable
report/latent.html           one latent's page: latent.html?id=<n> loads data/latent/<b>/<n>.js
report/standalone.html       the index with its script, style and first rows inline (KFP's
                             HTML artifact shows one file); links to the full dashboard
report/assets/app.js, .css   the one script and style sheet every page shares
report/data/meta.js          the run, scorers, summary and the number of index pages
report/data/index/<p>.js     window.__aif_page(p, rows): PAGE_ROWS index rows each
report/data/latent/<b>/<n>.js  window.__aif_latent({...}): latent n's page data (b = n // 1000)
```
Browsers refuse fetch() of local files, so data travels as small scripts that register
themselves; the index loads its pages one after another and shows the first at once.
The folder is built beside the old one and swapped in when complete, so a failed report
leaves the previous one in place.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp_full import layout
from autointerp_full.examples.files import read_examples_file
from autointerp_full.io import read_json
from autointerp_full.report.dashboard_data import (
    BASE_COLUMNS,
    SCORER_FIELDS,
    LatentData,
    examples_histogram,
    index_row,
    latent_detail,
)
from autointerp_full.report.summary import load_run
from autointerp_full.scorers import HEADLINE_METRIC

if TYPE_CHECKING:
    from autointerp_full.config import RunConfig
    from autointerp_full.report.dashboard_neighbours import CacheDerived
    from autointerp_full.report.summary import RunView

log = logging.getLogger(__name__)

LatentKey = tuple[str, int]
ASSETS = Path(__file__).with_name("assets")
PAGE_ROWS = 1000  # index rows per data page
BUCKET = 1000  # latent data files per folder
STANDALONE_ROWS = 2000  # rows inlined into standalone.html
NEIGHBOUR_TEXT = 120  # characters of a neighbour's explanation shown beside it
STANDALONE = layout.REPORT_STANDALONE
LATENT_PAGE = "latent.html"


# ------------------------------------------------------------------------------ helpers
def js_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: '</' cannot close it, '<!--' cannot open a
    comment (both stay valid JSON)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere: JSON has no word for it, so null
        text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def latent_data_path(n: int) -> str:
    """The data file of latent n, relative to the report folder."""
    return f"data/latent/{n // BUCKET}/{n}.js"


def index_page_path(p: int) -> str:
    return f"data/index/{p}.js"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- gathering
def _null_scores(view: Any) -> dict[str, dict[LatentKey, dict[str, Any]]]:
    """Per scorer, each latent's score under the null baseline (another latent's explanation),
    where the summary's loader found them current (`RunView.nulls`, --null_baseline)."""
    found = getattr(view, "nulls", None)
    return found if isinstance(found, dict) else {}


def gather(
    run: layout.RunLayout, cfg: RunConfig, view: RunView | None = None
) -> tuple[list[LatentData], Any]:
    """One LatentData per latent with a current artifact, in (hookpoint, latent) order.
    `view`: the caller's load_run(run.root, cfg), so the run is not read again."""
    if view is None:
        view = load_run(run.root, cfg)
    nulls = _null_scores(view)
    keys = view.latent_keys()
    out = []
    for n, key in enumerate(keys):
        path = view.examples.get(key)
        data = LatentData(
            id=n,
            hookpoint=key[0],
            latent=key[1],
            explanation=view.explanations.get(key),
            explain_error=view.explanation_failures.get(key),
            record=None,
        )
        data.examples_path = path  # read when its page is written: records can be large
        data.scores = {s: f[key] for s, f in view.scores.items() if key in f}
        data.null_scores = {s: f[key] for s, f in nulls.items() if key in f}
        out.append(data)
    return out, view


def _neighbour_list(
    pairs: list[tuple[int, float]], hookpoint: str, ids: dict[LatentKey, LatentData]
) -> list[dict[str, Any]]:
    out = []
    for latent, similarity in pairs:
        other = ids.get((hookpoint, latent))
        text = other.explanation if other is not None else None
        out.append(
            {
                "latent": latent,
                "id": other.id if other is not None else None,
                "similarity": round(float(similarity), 4),
                "explanation": (text or "")[:NEIGHBOUR_TEXT],
            }
        )
    return out


def _neighbours(
    data: LatentData, derived: CacheDerived, ids: dict[LatentKey, LatentData]
) -> dict[str, Any]:
    key = (data.hookpoint, data.latent)
    out: dict[str, Any] = {}
    for part, found in (("decoder", derived.decoder), ("cooccurrence", derived.cooccurrence)):
        if key in found:
            out[part] = _neighbour_list(found[key], data.hookpoint, ids)
        else:
            note = derived.notes.get(part, {}).get(data.hookpoint, "not computed")
            out[part] = None
            out[part + "_note"] = note
    return out


def load_output_side(run: layout.RunLayout, key: LatentKey) -> dict[str, Any] | None:
    """The latent's output side (logit lens: promoted and suppressed tokens), where the run
    folder has the output-profile artifact (`layout.output_file`)."""
    locate = getattr(layout, "output_file", None)
    folder = getattr(run, "output", None)
    if locate is None or folder is None:
        return None
    path = locate(folder, *key)
    if not Path(path).is_file():
        return None
    try:
        found = read_json(path)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _output_view(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of an output profile the page shows (its provenance stays on disk)."""
    if profile is None:
        return None
    return {k: profile.get(k) for k in ("logit_lens", "steering", "transcoder") if k in profile}


# ------------------------------------------------------------------------------ meta data
def _intervals(prefix: str, value: Any, out: list[dict[str, Any]]) -> None:
    """Every {"estimate", "low", "high"} inside `value`, named by its path of keys."""
    if isinstance(value, dict) and "estimate" in value:
        out.append({k: value.get(k) for k in ("estimate", "low", "high", "n")} | {"name": prefix})
    elif isinstance(value, dict):
        for k, v in value.items():
            _intervals(f"{prefix} {k}".strip(), v, out)


def summary_blocks(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The overall numbers of each scorer in summary.json, as rows for the index's header: the
    mean per latent, the counts and every interval the summary gives (score, null,
    difference), whatever nesting it uses."""
    rows: list[dict[str, Any]] = []
    scorers = (summary or {}).get("scorers") or {}
    for scorer, block in scorers.items():
        overall = (block or {}).get("overall") or {}
        metric = HEADLINE_METRIC.get(scorer, "accuracy")
        intervals: list[dict[str, Any]] = []
        for k, v in overall.items():
            if k not in ("mean_per_latent", "totals", "pooled", "null_scores"):
                # The summary's headline block holds score, null and difference.
                _intervals("" if k == "headline" else k, v, intervals)
        rows.append(
            {
                "scorer": scorer,
                "metric": metric,
                "mean": (overall.get("mean_per_latent") or {}).get(metric),
                "n_scored": overall.get("n_scored"),
                "n_failed": overall.get("n_failed"),
                "n_incomplete": overall.get("n_incomplete"),
                "pooled": (overall.get("pooled") or {}).get(metric),
                "intervals": intervals,
            }
        )
    return rows


def meta(
    cfg: RunConfig,
    scorers: list[str],
    n_latents: int,
    summary: dict[str, Any] | None,
    derived: CacheDerived,
    has_nulls: bool,
) -> dict[str, Any]:
    return {
        "run": cfg.run_name,
        "model": cfg.model,
        "sparse_model": cfg.sparse_model,
        "hookpoints": list(cfg.hookpoints),
        "scorers": [{"name": s, "metric": HEADLINE_METRIC.get(s, "accuracy")} for s in scorers],
        "columns": list(BASE_COLUMNS),
        "scorer_fields": list(SCORER_FIELDS),
        "n_latents": n_latents,
        "page_rows": PAGE_ROWS,
        "n_pages": max(1, -(-n_latents // PAGE_ROWS)),
        "bucket": BUCKET,
        "summary": summary_blocks(summary),
        "null_baseline": ((summary or {}).get("null_baseline") or {}).get("description"),
        "interval_notes": (summary or {}).get("intervals") or {},
        "has_nulls": has_nulls,
        "notes": derived.notes,
    }


# ----------------------------------------------------------------------------- the pages
def _shell(title: str, body: str, head: str, scripts: str, kind: str) -> str:
    from html import escape

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n{head}\n</head>\n"
        f'<body data-page="{kind}">\n{body}\n{scripts}\n</body></html>\n'
    )


INDEX_BODY = '<div id="app"><noscript>The dashboard needs JavaScript.</noscript></div>'


def index_html(cfg: RunConfig) -> str:
    return _shell(
        f"AutoInterp: {cfg.run_name}",
        INDEX_BODY,
        '<link rel="stylesheet" href="assets/app.css">',
        '<script src="data/meta.js"></script>\n<script src="assets/app.js"></script>',
        "index",
    )


def latent_html(cfg: RunConfig) -> str:
    return _shell(
        f"AutoInterp latent: {cfg.run_name}",
        INDEX_BODY,
        '<link rel="stylesheet" href="assets/app.css">',
        '<script src="data/meta.js"></script>\n<script src="assets/app.js"></script>',
        "latent",
    )


def standalone_html(cfg: RunConfig, meta_data: dict[str, Any], rows: list[list[Any]]) -> str:
    """One self-contained file: the style, the script and the first STANDALONE_ROWS rows inline."""
    css = (ASSETS / "app.css").read_text(encoding="utf-8")
    app = (ASSETS / "app.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
    shown = rows[:STANDALONE_ROWS]
    inline = dict(meta_data, standalone=True, n_shown=len(shown))
    data = f"window.__aif_meta = {js_json(inline)};\nwindow.__aif_inline_rows = {js_json(shown)};"
    return _shell(
        f"AutoInterp: {cfg.run_name}",
        INDEX_BODY,
        f"<style>{css}</style>",
        f"<script>{data}</script>\n<script>{app}</script>",
        "index",
    )


# ------------------------------------------------------------------------------ writing
def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by the complete `staging` folder; the old one goes only after."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _recover(target: Path) -> None:
    """A swap killed between its two renames leaves only report.old: put it back."""
    old = target.with_name(target.name + ".old")
    if old.exists() and not target.exists():
        old.rename(target)


def _latent_pages(
    staging: Path,
    run: layout.RunLayout,
    latents: list[LatentData],
    scorers: list[str],
    derived: CacheDerived,
    neighbours: bool,
) -> tuple[list[list[Any]], int]:
    """Write each latent's data file; return the index rows and how many had an output side.
    Each examples file is read, used and let go, so memory holds one record at a time."""
    ids = {(d.hookpoint, d.latent): d for d in latents}
    rows = []
    output_found = 0
    for d in latents:
        key = (d.hookpoint, d.latent)
        d.record = read_examples_file(d.examples_path) if d.examples_path is not None else None
        rows.append(index_row(d, scorers))
        hist = derived.histograms.get(key)
        source = "cache"
        if hist is None and d.record:
            hist, source = examples_histogram(d.record), "examples"
        output = _output_view(load_output_side(run, key))
        output_found += output is not None
        detail = latent_detail(
            d,
            histogram_data=hist,
            histogram_source=source,
            neighbours=_neighbours(d, derived, ids) if neighbours else {},
            output_side=output,
            output_note="" if output is not None else "not computed",
        )
        _write(staging, latent_data_path(d.id), f"window.__aif_latent({js_json(detail)});\n")
        d.record = None
    return rows, output_found


def write_dashboard(
    run_dir: Path, cfg: RunConfig, *, neighbours: bool = True, view: RunView | None = None
) -> Path:
    """Write run_dir/report/ (see the module docstring) and return report/index.html.
    `view`: the caller's load_run(run_dir, cfg) (the report stage loads once for all)."""
    from autointerp_full.report.dashboard_neighbours import derive

    run = layout.RunLayout(Path(run_dir))
    _recover(run.report_dir)
    latents, view = gather(run, cfg, view)
    scorers = [s for s in cfg.scorers if s in view.scores]
    derived = derive(cfg, run, [(d.hookpoint, d.latent) for d in latents], neighbours=neighbours)
    summary = read_json(run.summary) if run.summary.is_file() else None
    has_nulls = any(d.null_scores for d in latents)

    staging = run.report_dir.with_name(run.report_dir.name + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        rows, output_found = _latent_pages(staging, run, latents, scorers, derived, neighbours)
        meta_data = meta(cfg, scorers, len(latents), summary, derived, has_nulls)
        _write(staging, "data/meta.js", f"window.__aif_meta = {js_json(meta_data)};\n")
        for p in range(meta_data["n_pages"]):
            page = rows[p * PAGE_ROWS : (p + 1) * PAGE_ROWS]
            _write(staging, index_page_path(p), f"window.__aif_page({p}, {js_json(page)});\n")
        for name in ("app.js", "app.css"):
            _write(staging, f"assets/{name}", (ASSETS / name).read_text(encoding="utf-8"))
        _write(staging, layout.REPORT_HTML, index_html(cfg))
        _write(staging, LATENT_PAGE, latent_html(cfg))
        _write(staging, layout.REPORT_STANDALONE, standalone_html(cfg, meta_data, rows))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the previous report stays as it was
        raise
    _swap_in(staging, run.report_dir)
    log.info(
        "dashboard: %s (%d latents, %d with an output side); open it in a browser",
        run.report_html,
        len(latents),
        output_found,
    )
    return run.report_html
