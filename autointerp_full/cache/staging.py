"""Building a cache beside the one it replaces, and swapping it in once it is complete.

A hookpoint's cache is built in `latents/.staging/<hookpoint>/`; `latents/<hookpoint>/` is not
touched until the staged cache is sealed (its config.json written). Then:
1. the old cache, if any, is renamed to `latents/.staging/<hookpoint>.old/`;
2. the staged folder is renamed to `latents/<hookpoint>/`;
3. the old cache is removed.
`recover` finishes a swap that a kill interrupted, so at every instant either the old or the
new complete cache is (or becomes, on the next start) `latents/<hookpoint>/`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..io import sweep_temp
from ..logs import log
from .format import STAGING_DIR, retired_folder, staging_folder
from .spill import is_sealed


def commit(latents_dir: Path, hookpoint: str) -> Path:
    """Swap the sealed staged cache of `hookpoint` into `latents_dir/<hookpoint>/`."""
    final = Path(latents_dir) / hookpoint
    staged, old = staging_folder(latents_dir, hookpoint), retired_folder(latents_dir, hookpoint)
    if _present(old):  # an earlier swap got as far as step 1 (see recover)
        if _present(final):
            _remove(old)
        else:
            _rename(old, final)
    if _present(final):
        _rename(final, old)  # step 1
    _rename(staged, final)  # step 2
    _fsync_dir(final.parent)
    _remove(old)  # step 3
    remove_empty_staging(latents_dir)
    return final


def recover(latents_dir: Path, hookpoint: str) -> None:
    """Finish what a killed build of `hookpoint` was committing, and sweep its temp files.

    A sealed staged cache is swapped in (the killed run had finished it); a half-done swap is
    completed. An unsealed staged build is left for the build to resume or discard.
    """
    latents_dir = Path(latents_dir)
    final = latents_dir / hookpoint
    staged, old = staging_folder(latents_dir, hookpoint), retired_folder(latents_dir, hookpoint)
    for folder in (final, staged, old):
        if folder.is_dir() and not folder.is_symlink():
            sweep_temp(folder)
    if is_sealed(staged):
        log.info("finishing the interrupted swap of the cache built in %s", staged)
        commit(latents_dir, hookpoint)
    elif _present(old):
        if _present(final):
            _remove(old)  # step 3 was under way
        else:  # cannot happen after step 1 unless the staged cache vanished: keep the old one
            _rename(old, final)
        remove_empty_staging(latents_dir)


def current_folder(latents_dir: Path, hookpoint: str) -> Path:
    """The folder that holds `hookpoint`'s complete cache once `recover` has run (read-only)."""
    latents_dir = Path(latents_dir)
    staged, old = staging_folder(latents_dir, hookpoint), retired_folder(latents_dir, hookpoint)
    final = latents_dir / hookpoint
    if is_sealed(staged):
        return staged
    if old.exists() and not final.exists():
        return old
    return final


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    """Remove a folder, or a link to one (a cache linked in from another artifact)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def remove_empty_staging(latents_dir: Path) -> None:
    folder = Path(latents_dir) / STAGING_DIR
    try:
        folder.rmdir()
    except OSError:  # absent, or another hookpoint's build is still staged
        pass


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
