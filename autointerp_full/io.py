"""Atomic file writes (a reader never sees a half-written file, so a partial one never counts),
and the sweep of the temporary files that killed writes leave behind."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("autointerp_full")

# The temporary name atomic_write gives a file: "." + name + "." + mkstemp's 8 characters + ".tmp".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; results are meant to be shared like any other file.
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """atomic_write for content already in memory, in as few system calls as it takes (the
    examples stage writes thousands of files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_temp_file(name: str) -> bool:
    """Whether a file name is one that atomic_write uses while writing."""
    return bool(_TEMP_NAME.match(name))


def sweep_temp(root: str | os.PathLike) -> int:
    """Remove the temporary files that killed atomic writes left anywhere under `root`.

    Only call it when no write is under way there (at the start of a run). Returns how many
    were removed, and logs each one.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    for path in sorted(root.rglob(".*.tmp")):
        if is_temp_file(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted write", path)
            removed += 1
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
