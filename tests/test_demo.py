"""scripts/demo.py: the arguments it hands the CLI (chosen latents, the dashboard on), the
user's own selection winning, and the closing lines beside the table. The full demo run is
`make demo` (README, "The demo"); here the CLI is replaced by a recorder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_demo():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Runs demo.main with the CLI replaced; returns (argv the CLI got, demo module)."""
    import autointerp_full.cli
    import autointerp_full.models

    calls: list[list[str]] = []

    def fake_cli(argv: list[str]) -> int:
        calls.append(list(argv))
        index = tmp_path / "results" / "demo" / "report" / "index.html"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text("<html></html>")
        return 0

    monkeypatch.setattr(autointerp_full.cli, "main", fake_cli)
    monkeypatch.setattr(autointerp_full.models, "smollm2_gguf_path", lambda: tmp_path / "m.gguf")
    demo = load_demo()

    def run(*extra: str) -> list[str]:
        monkeypatch.setattr(sys, "argv", ["demo.py", "--results_dir", str(tmp_path / "results"),
                                          *extra])  # fmt: skip
        assert demo.main() == 0
        return calls[-1]

    return run, demo


def value_of(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    out = []
    for item in argv[i + 1 :]:
        if item.startswith("--"):
            break
        out.append(item)
    return out


def test_demo_runs_the_chosen_latents_with_the_dashboard(recorded, capsys) -> None:
    run, demo = recorded
    argv = run()
    assert value_of(argv, "--feature_num") == demo.DEMO_LATENTS
    assert "--max_latents" not in argv
    assert "--enable_visualization" in argv
    assert value_of(argv, "--name") == ["demo"]
    out = capsys.readouterr().out
    dashboard = [line for line in out.splitlines() if line.startswith("dashboard: ")]
    assert len(dashboard) == 1 and dashboard[0].split()[1].endswith("demo/report/index.html")
    assert demo.EXPLAINER_NOTE in out


@pytest.mark.parametrize("flag", ["--max_latents", "--feature_num"])
def test_a_selection_on_the_command_line_replaces_the_demos(recorded, flag: str) -> None:
    run, _ = recorded
    argv = run(flag, "3")
    assert argv.count("--feature_num") + argv.count("--max_latents") == 1
    assert value_of(argv, flag) == ["3"]


def test_the_chosen_latents_exist_in_the_demo_sae() -> None:
    import json

    demo = load_demo()
    cfg = json.loads((ROOT / "shared" / "demo_sae" / "layers.15" / "cfg.json").read_text())
    width = cfg.get("num_latents") or cfg["d_in"] * cfg["expansion_factor"]
    assert all(0 <= int(i) < width for i in demo.DEMO_LATENTS)
    assert len(set(demo.DEMO_LATENTS)) == len(demo.DEMO_LATENTS)
