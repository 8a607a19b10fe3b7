"""The latent dashboard's files (no browser): what data each page gets, paging, escaping,
states, neighbours, the output side, the standalone page and the swap of the report folder."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dashboard_run import build_run

from autointerp_full import layout
from autointerp_full.report import dashboard, write_html_report
from autointerp_full.report.dashboard_data import (
    BASE_COLUMNS,
    SCORER_FIELDS,
    LatentData,
    histogram,
    index_row,
    score_interval,
)
from autointerp_full.report.dashboard_neighbours import (
    CacheDerived,
    cache_histograms,
    cooccurrence,
    decoder_neighbours,
)

HP = "layers.1"


def registered(path: Path, call: str) -> Any:
    """The JSON argument a data script passes to window.<call>(...)."""
    text = path.read_text(encoding="utf-8")
    match = re.fullmatch(rf"window\.{call}\((?:\d+, )?(.*)\);\n", text, re.S)
    assert match, text[:200]
    return json.loads(match.group(1))


def meta_of(report: Path) -> dict[str, Any]:
    text = (report / "data" / "meta.js").read_text(encoding="utf-8")
    return json.loads(text.removeprefix("window.__aif_meta = ").removesuffix(";\n"))


@pytest.fixture()
def small_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    monkeypatch.setattr(dashboard, "PAGE_ROWS", 10)
    return build_run(tmp_path, 25, (HP, "layers.2"))


def test_files_and_paging(small_run: tuple[Path, Any]) -> None:
    root, cfg = small_run
    index = write_html_report(root, cfg)
    report = root / "report"
    assert index == report / "index.html"
    meta = meta_of(report)
    assert meta["n_latents"] == 25 and meta["n_pages"] == 3
    assert [s["name"] for s in meta["scorers"]] == ["detection", "fuzz"]
    pages = [registered(report / "data" / "index" / f"{p}.js", "__aif_page") for p in range(3)]
    assert [len(p) for p in pages] == [10, 10, 5]
    rows = [r for p in pages for r in p]
    assert [r[0] for r in rows] == list(range(25))  # dense ids, in (hookpoint, latent) order
    assert len(rows[0]) == len(BASE_COLUMNS) + 2 * len(SCORER_FIELDS)
    # One shared script and style sheet, referenced (not inlined) by both pages.
    for page in ("index.html", "latent.html"):
        html = (report / page).read_text()
        assert '<script src="assets/app.js"></script>' in html
        assert '<link rel="stylesheet" href="assets/app.css">' in html
    assert sorted(p.name for p in (report / "assets").iterdir()) == ["app.css", "app.js"]
    latent_files = sorted(report.glob("data/latent/*/*.js"))
    assert len(latent_files) == 25
    assert not list(root.glob("report.*"))  # the staging folder is gone


def test_rows_mark_incomplete_and_failed_latents(small_run: tuple[Path, Any]) -> None:
    root, cfg = small_run
    write_html_report(root, cfg)
    rows = registered(root / "report" / "data" / "index" / "0.js", "__aif_page")
    status = BASE_COLUMNS.index("status")
    by_latent = {r[2]: r for r in rows if r[1] == HP}
    assert by_latent[0][status] == ""
    assert by_latent[1][status] == "incomplete"
    assert by_latent[2][status] == "error"
    assert by_latent[3][status] == "error"  # its explaining failed
    assert by_latent[3][BASE_COLUMNS.index("explanation")] == "(no explanation: unparseable reply)"
    value, low, high = by_latent[0][len(BASE_COLUMNS) : len(BASE_COLUMNS) + 3]
    assert low <= value <= high and 0 <= low < high <= 1
    assert by_latent[2][len(BASE_COLUMNS)] is None  # a failed score has no value


def test_latent_page_data(small_run: tuple[Path, Any]) -> None:
    root, cfg = small_run
    write_html_report(root, cfg)
    detail = registered(root / "report" / "data" / "latent" / "0" / "0.js", "__aif_latent")
    assert detail["explanation"] == "<script>alert('x')</script> & cats"
    # 12 train + 8 test windows over 4 quantiles, strongest quantile first.
    assert [g["quantile"] for g in detail["quantiles"]] == [3, 2, 1, 0]
    assert sum(len(g["examples"]) for g in detail["quantiles"]) == 20
    window = detail["quantiles"][0]["examples"][0]
    assert len(window["t"]) == len(window["a"]) == 16 and max(window["a"]) > 0
    assert len(detail["non_activating"]) == 4
    det = detail["scores"]["detection"]
    assert len(det["examples"]) == 10
    assert {e["correct"] for e in det["examples"]} <= {True, False}
    assert det["low"] <= det["value"] <= det["high"]
    assert sum(detail["histogram"]["counts"]) > 0 and detail["histogram_source"] == "examples"
    nb = detail["neighbours"]
    assert nb["decoder"] is None and "not available" in nb["decoder_note"]
    assert nb["cooccurrence"] is None and "cache" in nb["cooccurrence_note"]
    assert detail["output"] is None and detail["output_note"] == "not computed"


def test_text_cannot_close_a_script(small_run: tuple[Path, Any]) -> None:
    """Run text is data: '</script' never appears inside a script, so an explanation holding
    markup cannot end the inline script of standalone.html and run as HTML."""
    root, cfg = small_run
    write_html_report(root, cfg)
    report = root / "report"
    html = (report / "standalone.html").read_text(encoding="utf-8")
    assert html.count("</script") == 2  # only the closers of the two inline scripts
    assert "alert('x')<\\/script> & cats" in html  # the explanation, escaped
    for path in report.glob("data/**/*.js"):
        assert "</script" not in path.read_text(encoding="utf-8")


def test_standalone_page_is_self_contained(small_run: tuple[Path, Any]) -> None:
    root, cfg = small_run
    write_html_report(root, cfg)
    html = (root / "report" / dashboard.STANDALONE).read_text(encoding="utf-8")
    assert "src=" not in html and "href=" not in html  # nothing to fetch
    assert "window.__aif_inline_rows" in html and '"standalone":true' in html
    assert "window.__aif_page" in html  # the shared script, inline


def test_no_plotly_needed(small_run: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    root, cfg = small_run
    assert write_html_report(root, cfg).is_file()


def test_failed_report_keeps_the_previous(
    small_run: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cfg = small_run
    write_html_report(root, cfg)
    before = (root / "report" / "index.html").read_text()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(dashboard, "latent_detail", broken)
    with pytest.raises(OSError):
        write_html_report(root, cfg)
    assert (root / "report" / "index.html").read_text() == before
    assert len(list((root / "report").glob("data/latent/*/*.js"))) == 25
    assert not (root / "report.new").exists()  # the half-written one is gone


def test_a_swap_cut_short_is_recovered(small_run: tuple[Path, Any]) -> None:
    """Killed between the swap's two renames, only report.old is left: the next report
    starts from it, so the previous dashboard is never lost."""
    root, cfg = small_run
    write_html_report(root, cfg)
    (root / "report").rename(root / "report.old")
    dashboard._recover(root / "report")
    assert (root / "report" / "index.html").is_file() and not (root / "report.old").exists()


def test_output_side_shown_where_computed(small_run: tuple[Path, Any]) -> None:
    root, cfg = small_run
    if not hasattr(layout, "output_file"):
        pytest.skip("layout has no output profile file yet")
    profile = {
        "fingerprint": "0" * 64,
        "inputs": {"big": "x"},
        "hookpoint": HP,
        "latent": 4,
        "logit_lens": {
            "promoted": [{"token_id": 1, "token": " cat", "value": 3.5}],
            "suppressed": [{"token_id": 2, "token": " dog", "value": -2.0}],
        },
        "steering": None,
    }
    path = layout.output_file(layout.RunLayout(root).output, HP, 4)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(profile))
    write_html_report(root, cfg)
    detail = registered(root / "report" / "data" / "latent" / "0" / "4.js", "__aif_latent")
    assert detail["output"]["logit_lens"] == profile["logit_lens"]
    assert "inputs" not in detail["output"]
    other = registered(root / "report" / "data" / "latent" / "0" / "5.js", "__aif_latent")
    assert other["output"] is None


def test_null_scores_reach_rows_and_pages(tmp_path: Path) -> None:
    root, cfg = build_run(tmp_path, 6, (HP,), nulls=True)
    write_html_report(root, cfg)
    report = root / "report"
    assert meta_of(report)["has_nulls"] is True
    rows = registered(report / "data" / "index" / "0.js", "__aif_page")
    null = len(BASE_COLUMNS) + SCORER_FIELDS.index("null")
    assert [r[null] is not None for r in rows] == [True, True, True, False, True, True]
    detail = registered(report / "data" / "latent" / "0" / "0.js", "__aif_latent")
    assert detail["null_scores"]["detection"]["value"] == rows[0][null]


def test_summary_intervals_reach_the_index() -> None:
    summary = {
        "scorers": {
            "detection": {
                "overall": {
                    "n_scored": 3,
                    "n_failed": 1,
                    "n_incomplete": 0,
                    "mean_per_latent": {"accuracy": 0.7},
                    "headline": {
                        "score": {"estimate": 0.7, "low": 0.6, "high": 0.8, "n": 3},
                        "null": {"estimate": 0.5, "low": 0.45, "high": 0.55, "n": 3},
                        "difference": {"estimate": 0.2, "low": 0.1, "high": 0.3, "n": 3},
                    },
                }
            }
        }
    }
    (block,) = dashboard.summary_blocks(summary)
    assert block["mean"] == 0.7 and block["n_failed"] == 1
    names = {i["name"]: (i["estimate"], i["low"], i["high"]) for i in block["intervals"]}
    assert names == {"score": (0.7, 0.6, 0.8), "null": (0.5, 0.45, 0.55),
                     "difference": (0.2, 0.1, 0.3)}  # fmt: skip


def _score(right: int, n: int, **extra: Any) -> dict[str, Any]:
    examples = [{"activating": True, "prediction": True, "correct": i < right} for i in range(n)]
    return {"examples": examples, "metrics": {"accuracy": right / n, "n": n}, "error": None,
            **extra}  # fmt: skip


def test_index_row_null_and_interval() -> None:
    data = LatentData(0, HP, 7, "cats", None, {"firing_rate": 0.01, "n_activating": 5})
    data.scores = {"detection": _score(9, 10)}
    data.null_scores = {"detection": _score(5, 10)}
    row = index_row(data, ["detection"])
    value, low, high, null = row[len(BASE_COLUMNS) :]
    assert (value, null) == (0.9, 0.5)
    assert 0.55 < low < 0.6 and 0.98 < high < 0.99  # Wilson 9/10
    assert score_interval("simulation", {"metrics": {"correlation": 0.3}, "examples": []}) == (
        None,
        None,
    )


def test_histogram() -> None:
    hist = histogram([0.0, 0.0, 1.0, 2.0, 2.0, 5.0], bins=4)
    assert hist == {"edges": [1.0, 2.0, 3.0, 4.0, 5.0], "counts": [1, 2, 0, 1]}
    assert histogram([3.0, 3.0], bins=2) == {"edges": [0.0, 1.5, 3.0], "counts": [0, 2]}
    assert histogram([0.0, -1.0]) is None


class FakeReader:
    """A cache of 6 latents over 2 x 5 token positions (test double for CacheReader)."""

    ctx_len = 5
    num_latents = 6

    def __init__(self) -> None:
        # Latents 0 and 1 fire on the same tokens; 2 on half of them; 5 never.
        self.tokens = {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [2, 3], 3: [7, 8], 4: [9], 5: []}

    def latent(self, i: int) -> tuple[Any, Any]:
        import torch

        flat = torch.tensor(self.tokens[i], dtype=torch.long)
        locations = torch.stack([flat // self.ctx_len, flat % self.ctx_len], 1).reshape(-1, 2)
        return locations, torch.ones(len(flat))

    def firing_counts(self) -> Any:
        import torch

        return torch.tensor([len(self.tokens[i]) for i in range(self.num_latents)])

    def iter_latents(self, latents: list[int]) -> Any:
        for i in sorted(latents):
            flat = np.array(self.tokens[i], np.int64)
            yield i, flat, np.linspace(1.0, 2.0, len(flat)).astype(np.float32)


def test_cooccurrence_and_cache_histograms() -> None:
    out = CacheDerived()
    cooccurrence(FakeReader(), HP, [0, 3], out)
    first = out.cooccurrence[(HP, 0)]
    assert first[0] == (1, 1.0) and first[1] == (2, 0.5)
    assert all(m != 0 for m, _ in first)
    assert out.cooccurrence[(HP, 3)] == []  # nothing shares its tokens
    cache_histograms(FakeReader(), HP, [0, 5], out)
    assert sum(out.histograms[(HP, 0)]["counts"]) == 4
    assert (HP, 5) not in out.histograms  # never fires: no histogram


def test_cooccurrence_skips_when_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    from autointerp_full.report import dashboard_neighbours

    monkeypatch.setattr(dashboard_neighbours, "COOCCURRENCE_BATCH_ENTRIES", 2)
    monkeypatch.setattr(dashboard_neighbours, "COOCCURRENCE_MAX_PASSES", 1)
    out = CacheDerived()
    cooccurrence(FakeReader(), HP, [0, 1, 2], out)
    assert not out.cooccurrence
    assert "passes" in out.notes["cooccurrence"][HP]


def test_decoder_neighbours_from_a_local_sparse_model(tiny_sae_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dashboard_run import config

    cfg = config([HP], sparse_model=str(tiny_sae_dir))
    out = CacheDerived()
    decoder_neighbours(cfg, layout.RunLayout(tmp_path), HP, [0, 5], out)
    pairs = out.decoder[(HP, 0)]
    assert len(pairs) == 8 and all(m != 0 for m, _ in pairs)
    sims = [s for _, s in pairs]
    assert sims == sorted(sims, reverse=True) and sims[0] <= 1.0

    missing = config([HP], sparse_model=str(tmp_path / "nowhere"))
    out = CacheDerived()
    decoder_neighbours(missing, layout.RunLayout(tmp_path), HP, [0], out)
    assert not out.decoder and "not available" in out.notes["decoder"][HP]


def test_assets_ship_with_the_package() -> None:
    """The dashboard's script and style sheet are package data, so an installed wheel has them."""
    import ast
    import fnmatch

    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1]
    line = re.search(r"^autointerp_full\s*=\s*(\[.*\])\s*$", section, re.M)
    assert line, "no package-data for autointerp_full"
    globs = ast.literal_eval(line.group(1))  # a TOML array of strings reads as a Python list
    package = root / "autointerp_full"
    for asset in (package / "report" / "assets").iterdir():
        rel = asset.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel
