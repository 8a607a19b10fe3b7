"""Reading and writing the cache's safetensors files (layout: format.py).

Every file is written with `format.encode_header` and raw little-endian arrays, not with
safetensors' save_file (whose metadata order varies and which knows no uint16 on older torch),
and read with plain positioned reads.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..io import atomic_write
from .format import NUMPY_DTYPES, encode_header, read_header, shard_layout, shard_metadata
from .runs import Run

if TYPE_CHECKING:
    import numpy as np
    import torch


def index_array(flat: torch.Tensor, code: str) -> np.ndarray:
    """Flat token indices (int64) as the on-disk index dtype `code`."""
    return flat.numpy().astype(NUMPY_DTYPES[code], copy=False)


def save_run(
    path: Path, run: Run, offsets: torch.Tensor, n_tokens: int, start: int, end: int
) -> None:
    """Write a run as a shard file of a cache of `n_tokens` tokens (chunks are small enough to
    be written in one go).

    The bytes are exactly what merge_chunks writes for the same entries, so a shard made from
    a lone chunk (renamed) equals one merged from many.
    """
    layout = shard_layout(len(run.flat), end - start, n_tokens)
    head = encode_header(layout, shard_metadata(start, end))
    if str(offsets.dtype) != "torch.int64" or str(run.values.dtype) != "torch.float16":
        raise ValueError(f"offsets {offsets.dtype}, values {run.values.dtype}: not the header's")
    arrays = [offsets.numpy(), index_array(run.flat, layout[1][1]), run.values.numpy()]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(head)
            for array in arrays:
                fh.write(array.data if array.flags.c_contiguous else array.tobytes())

    atomic_write(path, write)


def save_tokens(path: Path, tokens: torch.Tensor, code: str) -> None:
    """Write the token rows as dtype `code` (format.token_code of the vocabulary size)."""
    import numpy as np

    array = np.ascontiguousarray(tokens.numpy())
    if array.size and (array.min() < 0 or array.max() >= np.iinfo(NUMPY_DTYPES[code]).max + 1):
        raise ValueError(f"token ids outside {code}")
    array = array.astype(NUMPY_DTYPES[code])
    entry = ("tokens", code, list(array.shape), array.nbytes)
    head = encode_header([entry], {})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(head)
            fh.write(array.data)

    atomic_write(path, write)


def load_tokens(path: Path) -> torch.Tensor:
    """The token rows as int32 [n_seqs, ctx_len], whatever their dtype on disk."""
    import numpy as np
    import torch

    tokens = TensorFile(path)
    try:
        return torch.from_numpy(tokens.array("tokens").astype(np.int32))
    finally:
        tokens.close()


class TensorFile:
    """Reads slices of a safetensors file with plain positioned reads, not a memory map.

    Mapped pages that were read stay counted in the process's resident memory until unmapped;
    reading many chunks or latents through mmap would make the footprint grow with the cache.
    """

    def __init__(self, path: Path) -> None:
        self.header, self.data_start = read_header(path)
        self.fd = os.open(path, os.O_RDONLY)

    def array(self, name: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of tensor `name` (all rows by default) as a numpy array."""
        import numpy as np

        info = self.header[name]
        dtype = np.dtype(NUMPY_DTYPES[info["dtype"]])
        shape = info["shape"]
        row = dtype.itemsize * math.prod(shape[1:])
        lo = 0 if lo is None else lo
        hi = shape[0] if hi is None else hi
        begin = self.data_start + info["data_offsets"][0] + lo * row
        out = np.empty((max(0, hi - lo), *shape[1:]), dtype=dtype)
        view = memoryview(out.reshape(-1)).cast("B")  # read straight into the array
        done = 0
        while done < len(view):  # preadv may return less than asked
            got = os.preadv(self.fd, [view[done:]], begin + done)
            if not got:
                raise OSError(f"unexpected end of file reading {name}")
            done += got
        return out

    def read(self, name: str, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
        """Rows [lo, hi) of tensor `name` as a torch tensor (the index widened to int64)."""
        import numpy as np
        import torch

        array = self.array(name, lo, hi)
        if array.dtype.kind == "u":
            array = array.astype(np.int64)
        return torch.from_numpy(array)

    def load_slice(self, lo: int, hi: int, latents: torch.Tensor) -> Run:
        """Entries [lo, hi) as a run; `latents` are their latent ids (implied by offsets)."""
        return Run(
            latents=latents,
            flat=self.read("index", lo, hi).long(),
            values=self.read("activations", lo, hi),
        )

    def close(self) -> None:
        os.close(self.fd)
