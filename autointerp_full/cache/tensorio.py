"""Reading and writing the cache's safetensors files with torch (layout: format.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..io import atomic_write
from .format import encode_header, read_header, shard_layout, shard_metadata
from .runs import Run, locations

if TYPE_CHECKING:
    import torch


_TORCH_DTYPES = {"I32": "torch.int32", "I64": "torch.int64", "F16": "torch.float16"}


def save_run(
    path: Path, run: Run, offsets: torch.Tensor, ctx_len: int, start: int, end: int
) -> None:
    """Write a run as a shard file (chunks are small enough to be written in one go).

    The bytes are exactly what merge_chunks writes for the same entries, so a shard made from
    a lone chunk (renamed) equals one merged from many. safetensors' own save_file is not
    used: it orders the metadata differently from one call to the next.
    """
    layout = shard_layout(len(run.latents), end - start)
    head = encode_header(layout, shard_metadata(start, end))
    tensors = [offsets, locations(run, ctx_len), run.latents, run.values]
    for (name, code, _shape, _nbytes), tensor in zip(layout, tensors, strict=True):
        if str(tensor.dtype) != _TORCH_DTYPES[code]:  # the header would lie
            raise ValueError(f"{name}: {tensor.dtype}, expected {_TORCH_DTYPES[code]}")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(head)
            for tensor in tensors:
                fh.write(tensor.contiguous().numpy().data)

    atomic_write(path, write)


def save_tokens(path: Path, tokens: torch.Tensor) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file({"tokens": tokens.contiguous()}, str(p)))


def load_tokens(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["tokens"]


class TensorFile:
    """Reads slices of a safetensors file with plain positioned reads, not a memory map.

    Mapped pages that were read stay counted in the process's resident memory until unmapped;
    merging many chunks through mmap would make the writer's footprint grow with the cache.
    """

    _DTYPES = {"I32": "int32", "I64": "int64", "F16": "float16"}

    def __init__(self, path: Path) -> None:
        self.header, self.data_start = read_header(path)
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, name: str, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
        """Rows [lo, hi) of tensor `name` (all rows by default)."""
        import numpy as np
        import torch

        info = self.header[name]
        dtype = np.dtype(self._DTYPES[info["dtype"]])
        shape = info["shape"]
        row = dtype.itemsize * math.prod(shape[1:])
        lo = 0 if lo is None else lo
        hi = shape[0] if hi is None else hi
        begin = self.data_start + info["data_offsets"][0] + lo * row
        raw = bytearray(max(0, hi - lo) * row)
        if raw:
            view = memoryview(raw)
            done = 0
            while done < len(raw):  # pread may return less than asked
                chunk = os.pread(self.fd, len(raw) - done, begin + done)
                if not chunk:
                    raise OSError(f"unexpected end of file reading {name}")
                view[done : done + len(chunk)] = chunk
                done += len(chunk)
        array = np.frombuffer(raw, dtype=dtype).reshape(max(0, hi - lo), *shape[1:])
        return torch.from_numpy(array)

    def load_slice(self, lo: int, hi: int, ctx_len: int) -> Run:
        """Entries [lo, hi) as a run."""
        where = self.read("locations", lo, hi).long()
        return Run(
            latents=self.read("latents", lo, hi),
            flat=where[:, 0] * ctx_len + where[:, 1],
            values=self.read("activations", lo, hi),
        )

    def close(self) -> None:
        os.close(self.fd)
