"""Running a CLI subcommand in a fresh interpreter, as a user does, for the bad-input tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def assert_rejected(argv: list[str], needle: str, cwd: Path) -> None:
    """`python -m autointerp_full *argv` exits 2 with one line on stderr containing `needle`."""
    proc = subprocess.run(
        [sys.executable, "-m", "autointerp_full", *argv], capture_output=True, text=True, cwd=cwd
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def assert_torch_free(argv: list[str]) -> None:
    """The subcommand `argv` runs through cli.main, exits 0 and never imports torch."""
    code = (
        "import sys; from autointerp_full.cli import main; "
        f"rc = main({argv!r}); "
        "assert 'torch' not in sys.modules, 'torch imported'; raise SystemExit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
