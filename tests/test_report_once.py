"""The report stage reads the run folder once: summary.json, the dashboard and the CLI's table
share one load_run view, and give the same bytes as the three functions each loading alone."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from dashboard_run import build_run

from autointerp_full import layout
from autointerp_full.config import RunConfig
from autointerp_full.report import dashboard, print_table, summary, write_html_report, write_summary
from autointerp_full.stages import report_stage

HPS = ("layers.1", "layers.2")


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Wrap load_run where the code looks it up: summary's own global (write_summary,
    print_table, the report stage's import) and the name dashboard.py imported."""
    calls: list[Path] = []
    real = summary.load_run

    def counted(run_dir: Path, cfg: RunConfig) -> Any:
        calls.append(Path(run_dir))
        return real(run_dir, cfg)

    monkeypatch.setattr(summary, "load_run", counted)
    monkeypatch.setattr(dashboard, "load_run", counted)
    return calls


def outputs(root: Path) -> dict[str, bytes]:
    """summary.json and every file of the dashboard, by path relative to the run folder."""
    run = layout.RunLayout(root)
    files = {"summary.json": run.summary.read_bytes()}
    if run.report_dir.exists():
        for path in sorted(run.report_dir.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root))] = path.read_bytes()
    return files


def clear(root: Path) -> None:
    run = layout.RunLayout(root)
    run.summary.unlink()
    shutil.rmtree(run.report_dir, ignore_errors=True)


@pytest.fixture()
def run(tmp_path: Path) -> tuple[Path, RunConfig]:
    root, cfg = build_run(tmp_path, 12, HPS, nulls=True)
    return root, dataclasses.replace(cfg, enable_visualization=True)


@pytest.mark.parametrize("visualize", [True, False])
def test_report_stage_loads_once(
    run: tuple[Path, RunConfig], monkeypatch: pytest.MonkeyPatch, visualize: bool
) -> None:
    root, cfg = run
    cfg = dataclasses.replace(cfg, enable_visualization=visualize)
    calls = count_loads(monkeypatch)
    report_stage(cfg, root)
    assert calls == [root]
    assert (layout.RunLayout(root).report_html.is_file()) is visualize


def test_shared_view_gives_the_same_outputs(
    run: tuple[Path, RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cfg = run
    # Each function on its own, loading for itself (the stage finds no usage files: {}).
    calls = count_loads(monkeypatch)
    write_summary(root, cfg, extra={"llm_usage": {}})
    write_html_report(root, cfg)
    table = print_table(root, cfg)
    assert len(calls) == 3
    separate = outputs(root)
    assert any(name.endswith(".js") for name in separate)  # the dashboard was written

    clear(root)
    calls.clear()
    # The CLI's flow with one view: the stage, then the table from the same view.
    view = summary.load_run(root, cfg)
    report_stage(cfg, root, view=view)
    shared_table = print_table(root, cfg, view=view)
    assert len(calls) == 1
    assert outputs(root) == separate
    assert shared_table == table
    assert "no latents scored" not in table
