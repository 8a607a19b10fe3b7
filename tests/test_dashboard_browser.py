"""The dashboard in a real browser: headless Chromium opens the report from disk (file://), and
the tests check the DOM: rows present, sorting, filtering and searching, a latent page with its
examples, the standalone page. Screenshots are kept as test artifacts in tests/artifacts/ (or
$AIF_TEST_ARTIFACTS). Skipped, with the reason, where Chromium is not installed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium_cdp import Chromium, find_chromium
from dashboard_run import build_run

from autointerp_full import layout
from autointerp_full.report import dashboard, write_html_report, write_summary

BROWSER = find_chromium()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="Chromium not found (install Debian's 'chromium' package, or set AIF_CHROMIUM)",
)
ARTIFACTS = Path(os.environ.get("AIF_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
N_LATENTS = 45
PAGE_ROWS = 10  # several index pages even for a small run, so paged loading is exercised


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, cfg = build_run(
        tmp_path_factory.mktemp("dash"), N_LATENTS, ("layers.1", "layers.2"), nulls=True
    )
    token = {"token_id": 1, "token": " cat", "value": 3.2}
    profile = {"logit_lens": {"promoted": [token, token], "suppressed": [token]}, "steering": None}
    path = layout.output_file(layout.RunLayout(root).output, "layers.1", 4)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(profile))  # the output stage's profile of one latent
    write_summary(root, cfg)  # as the report stage does before the dashboard
    saved = dashboard.PAGE_ROWS
    dashboard.PAGE_ROWS = PAGE_ROWS
    try:
        return write_html_report(root, cfg).parent
    finally:
        dashboard.PAGE_ROWS = saved


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    assert BROWSER is not None
    with Chromium(BROWSER) as chromium:
        yield chromium


def open_page(browser: Chromium, url: str) -> None:
    browser.navigate(url)
    browser.wait_for("document.body.getAttribute('data-ready') === '1'", timeout=30)


def shot(browser: Chromium, name: str, full_page: bool = False) -> Path:
    path = browser.screenshot(ARTIFACTS / name, full_page=full_page)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    return path


ROWS_JS = """Array.from(document.querySelectorAll('#rows tr')).map(tr => ({
  id: +tr.dataset.id,
  latent: tr.querySelector('.c-latent').textContent,
  explanation: tr.querySelector('.c-expl').textContent,
  detection: tr.querySelector('.c-score[data-scorer=detection] .v').textContent,
  status: tr.querySelector('.c-status').textContent,
}))"""


def rows(browser: Chromium) -> list[dict[str, Any]]:
    return browser.evaluate(ROWS_JS)


def set_value(browser: Chromium, selector: str, value: str, event: str) -> None:
    browser.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        f" e.value = {json.dumps(value)}; e.dispatchEvent(new Event({json.dumps(event)})); }})()"
    )


def test_index_lists_every_latent(browser: Chromium, report: Path) -> None:
    open_page(browser, (report / "index.html").as_uri())
    assert browser.evaluate("document.body.getAttribute('data-error')") is None
    listed = rows(browser)
    assert [r["id"] for r in listed] == list(range(N_LATENTS))  # every page arrived
    count = browser.evaluate("document.getElementById('count').textContent")
    assert "45 of 45 latents loaded" in count
    first = listed[0]
    assert first["latent"] == "layers.1 #0"
    assert first["explanation"] == "<script>alert('x')</script> & cats"  # text, not markup
    assert browser.evaluate("document.querySelectorAll('#rows script').length") == 0
    assert [r["status"] for r in listed[1:4]] == ["incomplete", "error", "error"]
    assert browser.evaluate("document.querySelectorAll('#summary tbody tr').length") == 2
    summary = browser.evaluate("document.querySelector('#summary tbody tr').textContent")
    assert "null" in summary and "difference" in summary  # the null baseline's intervals
    nulls = browser.evaluate(
        "Array.from(document.querySelectorAll('#rows td.c-null')).map(td => td.textContent)"
    )
    assert len(nulls) == 2 * N_LATENTS and sum(v != "–" for v in nulls) > N_LATENTS
    shot(browser, "dashboard_index.png")


def test_sorting(browser: Chromium, report: Path) -> None:
    open_page(browser, (report / "index.html").as_uri())
    head = "document.querySelector('th[data-sort=\"score:0\"]').click()"
    browser.evaluate(head)
    values = [r["detection"] for r in rows(browser)]
    numbers = [float(v) for v in values if v != "–"]
    assert numbers == sorted(numbers, reverse=True) and len(set(numbers)) > 1
    assert values[-len(values) + len(numbers) :] == ["–"] * (len(values) - len(numbers))
    browser.evaluate(head)  # a second click: ascending, missing values still last
    values = [r["detection"] for r in rows(browser)]
    numbers = [float(v) for v in values if v != "–"]
    assert numbers == sorted(numbers) and values[-1] == "–"
    browser.evaluate("document.querySelector('th[data-sort=\"id\"]').click()")
    assert [r["id"] for r in rows(browser)][:3] == [0, 1, 2]
    shot(browser, "dashboard_sorted.png")


def test_filtering_and_search(browser: Chromium, report: Path) -> None:
    open_page(browser, (report / "index.html").as_uri())
    set_value(browser, "#search", "dogs", "input")
    found = rows(browser)
    assert found and len(found) < N_LATENTS
    assert all("dogs" in r["explanation"] for r in found)
    set_value(browser, "#search", "", "input")
    set_value(browser, "#status", "flagged", "change")
    assert [r["latent"] for r in rows(browser)] == ["layers.1 #1", "layers.1 #2", "layers.1 #3"]
    set_value(browser, "#status", "", "change")
    set_value(browser, "#hookpoint", "layers.2", "change")
    assert {r["latent"].split(" ")[0] for r in rows(browser)} == {"layers.2"}
    set_value(browser, "#hookpoint", "", "change")
    set_value(browser, "#min-scorer", "0", "change")
    set_value(browser, "#min-value", "0.7", "input")
    kept = rows(browser)
    assert kept and all(float(r["detection"]) >= 0.7 for r in kept)
    shot(browser, "dashboard_filtered.png")


def test_latent_page_shows_its_examples(browser: Chromium, report: Path) -> None:
    open_page(browser, (report / "latent.html").as_uri() + "?id=0")
    page = browser.evaluate(
        """({
      title: document.querySelector('h1').textContent,
      explanation: document.getElementById('explanation').textContent,
      quantiles: Array.from(document.querySelectorAll('#examples .quantile'))
        .map(q => [+q.dataset.quantile, q.querySelectorAll('.example').length]),
      hover: document.querySelector('#examples .tok.on').getAttribute('title'),
      non: document.querySelectorAll('#non-activating .example').length,
      right: document.querySelectorAll('details[data-scorer=detection] li.right').length,
      wrong: document.querySelectorAll('details[data-scorer=detection] li.wrong').length,
      bars: document.querySelectorAll('#histogram svg rect').length,
      neighbours: document.getElementById('neighbours').textContent,
      output: document.getElementById('output').textContent,
    })"""
    )
    assert page["title"].startswith("layers.1 latent 0")
    assert page["explanation"] == "<script>alert('x')</script> & cats"
    assert [q for q, _ in page["quantiles"]] == [3, 2, 1, 0]
    assert sum(n for _, n in page["quantiles"]) == 20
    assert ": " in page["hover"] and float(page["hover"].rsplit(": ", 1)[1]) > 0
    assert page["non"] == 4
    assert page["right"] + page["wrong"] == 10 and page["right"] > 0
    assert page["bars"] == 24
    assert "not available" in page["neighbours"]
    assert "not computed" in page["output"]
    shot(browser, "dashboard_latent.png", full_page=True)


def test_latent_page_shows_its_output_side(browser: Chromium, report: Path) -> None:
    open_page(browser, (report / "latent.html").as_uri() + "?id=4")
    promoted = browser.evaluate(
        "Array.from(document.querySelectorAll('#promoted li')).map(li => li.textContent)"
    )
    assert promoted == ['" cat" 3.200', '" cat" 3.200']
    assert browser.evaluate("document.querySelectorAll('#suppressed li').length") == 1


def test_latent_page_of_an_unknown_id(browser: Chromium, report: Path) -> None:
    browser.navigate((report / "latent.html").as_uri() + "?id=99999")
    browser.wait_for("document.body.getAttribute('data-error') === 'missing'")
    assert "No data for latent id 99999" in browser.evaluate("document.body.textContent")


def test_standalone_page(browser: Chromium, report: Path) -> None:
    open_page(browser, (report / "standalone.html").as_uri())
    assert len(rows(browser)) == N_LATENTS
    assert browser.evaluate("document.querySelectorAll('#rows a').length") == 0
    note = browser.evaluate("document.getElementById('standalone-note').textContent")
    assert "report/index.html" in note
    shot(browser, "dashboard_standalone.png")
