"""Benchmark: the latent dashboard of a synthetic run with 20,000 latents, in headless Chromium.

Builds the run (examples, explanations and two scorers' files, stamped as the stages would),
writes summary.json and the dashboard, then opens the report from disk (file://) and times:
the index's first rows and its full load, a sort, a filter and a search over every latent, and
a sample of latent pages (target: each under 1 s). Prints one line per measurement.

    python bench/dashboard_scale.py                 # 20,000 latents in a temp folder
    python bench/dashboard_scale.py --latents 2000 --keep /tmp/dash   # keep the run folder

Not a test: timings depend on the machine. Needs Debian's `chromium` (or $AIF_CHROMIUM).
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chromium_cdp import Chromium, find_chromium  # noqa: E402
from dashboard_run import build_run  # noqa: E402

from autointerp_full.report import write_html_report, write_summary  # noqa: E402

TARGET_LATENT_PAGE_S = 1.0


def timed_js(browser: Chromium, action: str) -> float:
    """Milliseconds the page spends on `action` (a JS statement run synchronously, as an event
    handler runs), including the layout it forces."""
    return browser.evaluate(
        "(() => { const t0 = performance.now(); " + action + "; "
        "void document.body.offsetHeight; return performance.now() - t0; })()"
    )


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=int, default=20_000, help="latents in the run")
    parser.add_argument("--pages", type=int, default=20, help="latent pages to open")
    parser.add_argument("--keep", type=Path, default=None, help="build the run here and keep it")
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: reuse the run built there before"
    )
    parser.add_argument("--screenshot", type=Path, default=None, help="save the index as PNG")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    binary = find_chromium()
    if binary is None:
        print("chromium not found (apt-get install chromium, or set AIF_CHROMIUM)")
        return 2

    base = args.keep or Path(tempfile.mkdtemp(prefix="aif-dash-bench-"))
    try:
        if args.reuse and args.keep and (args.keep / "dash" / "summary.json").is_file():
            from dashboard_run import config

            root = args.keep / "dash"
            cfg = config(["layers.10", "layers.20"], results_dir=str(args.keep))
            print(f"reusing the synthetic run in {root}")
        else:
            t = time.perf_counter()
            root, cfg = build_run(base, args.latents, ("layers.10", "layers.20"))
            took = time.perf_counter() - t
            print(f"synthetic run: {args.latents:,} latents built in {took:.1f} s")
            t = time.perf_counter()
            write_summary(root, cfg)
            print(f"summary.json: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        report = write_html_report(root, cfg).parent
        took = time.perf_counter() - t
        n_files, size = folder_size(report)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
        print(
            f"dashboard written: {took:.1f} s, {n_files:,} files, {size / 2**20:.1f} MiB in "
            f"{report} (peak memory of this process {peak:.0f} MiB)"
        )

        with Chromium(binary) as browser:
            t = time.perf_counter()
            browser.navigate(report.joinpath("index.html").as_uri())
            browser.wait_for("+(document.body.getAttribute('data-rendered') || 0) >= 1", 120)
            browser.wait_for("document.body.getAttribute('data-ready') === '1'", 300)
            full = time.perf_counter() - t
            # The page's own clock: milliseconds since navigation started.
            first_ms, ready_ms = browser.evaluate(
                "[window.__aif_state.firstRenderMs, window.__aif_state.readyMs]"
            )
            loaded = browser.evaluate("window.__aif_state.rows.length")
            print(f"index: first rows shown {first_ms / 1000:.2f} s after navigation")
            print(
                f"index: all {loaded:,} latents loaded {ready_ms / 1000:.2f} s after navigation "
                f"({full:.2f} s wall, DevTools round trips included)"
            )
            click = "document.querySelector('th[data-sort=\"score:0\"]').click()"
            print(f"sort by detection score (all latents): {timed_js(browser, click):.0f} ms")
            print(f"sort again (reversed): {timed_js(browser, click):.0f} ms")
            expl = "document.querySelector('th[data-sort=\"explanation\"]').click()"
            print(f"sort by explanation text: {timed_js(browser, expl):.0f} ms")
            search = (
                "const e = document.getElementById('search'); e.value = 'dogs';"
                " e.dispatchEvent(new Event('input'))"
            )
            ms = timed_js(browser, search)
            matching = browser.evaluate("window.__aif_state.view.length")
            print(f"search 'dogs': {ms:.0f} ms ({matching:,} matching)")
            browser.evaluate(
                "(() => { const e = document.getElementById('search'); e.value = '';"
                " e.dispatchEvent(new Event('input')); })()"
            )
            flagged = (
                "const s = document.getElementById('status'); s.value = 'flagged';"
                " s.dispatchEvent(new Event('change'))"
            )
            ms = timed_js(browser, flagged)
            matching = browser.evaluate("window.__aif_state.view.length")
            print(f"filter incomplete or failed: {ms:.0f} ms ({matching:,} matching)")
            if args.screenshot:
                browser.screenshot(args.screenshot)

            ids = random.Random(0).sample(range(loaded), min(args.pages, loaded))
            times = []
            for i in ids:
                t = time.perf_counter()
                browser.navigate(report.joinpath("latent.html").as_uri() + f"?id={i}")
                browser.wait_for("document.body.getAttribute('data-ready') === '1'", 30)
                times.append(time.perf_counter() - t)
            slow = sum(1 for x in times if x >= TARGET_LATENT_PAGE_S)
            median = statistics.median(times) * 1000
            print(
                f"latent pages: {len(times)} opened, median {median:.0f} ms,"
                f" slowest {max(times) * 1000:.0f} ms; {slow} at or over the "
                f"{TARGET_LATENT_PAGE_S:.0f} s target"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
