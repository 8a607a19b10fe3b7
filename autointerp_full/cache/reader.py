"""Read a finished activation cache one latent, or one block of latents, at a time.

Each latent's entries are one contiguous slice of one shard, located through that shard's
offsets; the slice is read with positioned reads (no memory map, so the footprint stays that
of the slice). `iter_latents` reads many latents in one pass over each shard, a bounded block
of consecutive latents per read. Each file is checked against config.json (header and size)
before its first use, so a damaged one is a one-line error, never a traceback or wrong data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .format import (
    CONFIG_FILE,
    TOKENS_FILE,
    check_shard_file,
    check_tokens_file,
    config_index_tokens,
    config_token_code,
    read_cache_config,
)
from .tensorio import TensorFile, load_tokens

if TYPE_CHECKING:
    import numpy as np
    import torch

# Entries read at once by iter_latents: about 60 MB of index and activations in memory.
BLOCK_ENTRIES = 4_000_000


class CacheReader:
    """A finished cache folder (`latents/<hookpoint>/`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        config_path = self.path / CONFIG_FILE
        if not config_path.is_file():
            raise UserError(
                f"incomplete activation cache at {self.path} (no {CONFIG_FILE}): rerun the "
                "cache stage to finish it"
            )
        self.config: dict[str, Any] = read_cache_config(self.path)
        self.num_latents: int = int(self.config["num_latents"])
        self.hookpoint: str = str(self.config["hookpoint"])
        self.shards: list[dict[str, Any]] = list(self.config["shards"])
        self.ctx_len: int = int(self.config["ctx_len"])
        self.n_tokens: int = config_index_tokens(self.config)
        self._handles: dict[int, TensorFile] = {}
        self._offsets: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"CacheReader({str(self.path)!r}, hookpoint={self.hookpoint!r})"

    # ----------------------------------------------------------------------------- shards
    def _shard_of(self, latent: int) -> int:
        if not 0 <= latent < self.num_latents:
            raise IndexError(f"latent {latent} out of range [0, {self.num_latents})")
        for i, shard in enumerate(self.shards):
            if shard["start"] <= latent < shard["end"]:
                return i
        raise IndexError(f"no shard holds latent {latent}")

    def _handle(self, i: int) -> TensorFile:
        if i not in self._handles:
            shard = self.shards[i]
            path = self.path / shard["file"]
            start, end = int(shard["start"]), int(shard["end"])
            check_shard_file(path, start, end, self.n_tokens, shard.get("n"))
            self._handles[i] = TensorFile(path)
        return self._handles[i]

    def _shard_offsets(self, i: int) -> np.ndarray:
        if i not in self._offsets:
            self._offsets[i] = self._handle(i).array("offsets")
        return self._offsets[i]

    # ----------------------------------------------------------------------------- reading
    def tokens(self) -> torch.Tensor:
        """int32 [n_seqs, ctx_len] (stored in the smallest type that holds the vocabulary)."""
        path = self.path / TOKENS_FILE
        n_seqs = int(self.config["n_seqs"])
        check_tokens_file(path, n_seqs, self.ctx_len, config_token_code(self.config))
        return load_tokens(path)

    def tokens_array(self) -> np.ndarray:
        """The token rows [n_seqs, ctx_len] as numpy, in their stored dtype (uint16 for most
        vocabularies: half the memory of tokens())."""
        path = self.path / TOKENS_FILE
        n_seqs = int(self.config["n_seqs"])
        check_tokens_file(path, n_seqs, self.ctx_len, config_token_code(self.config))
        handle = TensorFile(path)
        try:
            return handle.array("tokens")
        finally:
            handle.close()

    def latent_flat(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat token indices int64 [n], ascending; activations float32 [n]) of latent i."""
        import numpy as np

        shard = self._shard_of(i)
        offsets = self._shard_offsets(shard)
        j = i - int(self.shards[shard]["start"])
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        if hi == lo:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        handle = self._handle(shard)
        flat = handle.array("index", lo, hi).astype(np.int64)
        return flat, handle.array("activations", lo, hi).astype(np.float32)

    def latent(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(locations LongTensor [n, 2] of (row, position), activations FloatTensor [n])."""
        import numpy as np
        import torch

        flat, values = self.latent_flat(i)
        locations = np.stack(np.divmod(flat, self.ctx_len), 1)
        return torch.from_numpy(locations), torch.from_numpy(values)

    def iter_latents(
        self, latents: Iterable[int], block: int = BLOCK_ENTRIES
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(latent, flat, activations) as latent_flat gives them, for `latents` in ascending
        order, reading each shard once: consecutive wanted latents are read together, in
        blocks of about `block` entries (a latent with more is read alone)."""
        import numpy as np

        wanted = sorted(set(int(x) for x in latents))
        for latent in wanted:
            self._shard_of(latent)  # range check before anything is read
        for s, shard in enumerate(self.shards):
            start, end = int(shard["start"]), int(shard["end"])
            mine = [x for x in wanted if start <= x < end]
            if not mine:
                continue
            offsets = self._shard_offsets(s)
            handle = self._handle(s)
            for group in _blocks(mine, offsets, start, block):
                lo, hi = int(offsets[group[0] - start]), int(offsets[group[-1] - start + 1])
                flat = handle.array("index", lo, hi).astype(np.int64)
                values = handle.array("activations", lo, hi).astype(np.float32)
                for latent in group:
                    a = int(offsets[latent - start]) - lo
                    b = int(offsets[latent - start + 1]) - lo
                    yield latent, flat[a:b], values[a:b]

    def entry_count(self, i: int) -> int:
        """How many entries latent i has (reads only its shard's offsets)."""
        shard = self._shard_of(i)
        offsets = self._shard_offsets(shard)
        j = i - int(self.shards[shard]["start"])
        return int(offsets[j + 1] - offsets[j])

    def firing_counts(self) -> torch.Tensor:
        """LongTensor [num_latents]: how many cached positions each latent fires on."""
        import torch

        counts = torch.zeros(self.num_latents, dtype=torch.long)
        for i, shard in enumerate(self.shards):
            offsets = torch.from_numpy(self._shard_offsets(i))
            counts[shard["start"] : shard["end"]] = offsets[1:] - offsets[:-1]
        return counts

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._offsets.clear()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blocks(latents: list[int], offsets: np.ndarray, start: int, block: int) -> list[list[int]]:
    """Sorted latents of one shard cut into groups read together: a group is a run of
    consecutive latents whose entries stay within `block` (skipped latents break a group,
    so nothing unwanted is read)."""
    groups: list[list[int]] = []
    size = 0
    for latent in latents:
        n = int(offsets[latent - start + 1] - offsets[latent - start])
        if groups and latent == groups[-1][-1] + 1 and size + n <= block:
            groups[-1].append(latent)
            size += n
        else:
            groups.append([latent])
            size = n
    return groups
