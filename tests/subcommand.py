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
