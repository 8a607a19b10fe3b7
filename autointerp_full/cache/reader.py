"""Read a finished activation cache one latent at a time.

Each latent's entries are one contiguous slice of one shard, located through that shard's
offsets; `safe_open(...).get_slice` memory-maps the file, so only that slice is read. Each file
is checked against config.json (header and size) before its first use, so a damaged one is a
one-line error, never a traceback or wrong data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .format import CONFIG_FILE, TOKENS_FILE, check_shard_file, check_tokens_file, read_cache_config

if TYPE_CHECKING:
    import torch


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
        self._handles: dict[int, Any] = {}
        self._offsets: dict[int, torch.Tensor] = {}

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

    def _handle(self, i: int) -> Any:
        if i not in self._handles:
            from safetensors import safe_open

            shard = self.shards[i]
            path = self.path / shard["file"]
            check_shard_file(path, int(shard["start"]), int(shard["end"]), shard.get("n"))
            self._handles[i] = safe_open(str(path), framework="pt")
        return self._handles[i]

    def _shard_offsets(self, i: int) -> torch.Tensor:
        if i not in self._offsets:
            self._offsets[i] = self._handle(i).get_tensor("offsets")
        return self._offsets[i]

    # ----------------------------------------------------------------------------- reading
    def tokens(self) -> torch.Tensor:
        """int32 [n_seqs, ctx_len]."""
        from safetensors.torch import load_file

        path = self.path / TOKENS_FILE
        check_tokens_file(path, int(self.config["n_seqs"]), int(self.config["ctx_len"]))
        return load_file(str(path))["tokens"]

    def latent(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(locations LongTensor [n, 2] of (row, position), activations FloatTensor [n])."""
        shard = self._shard_of(i)
        offsets = self._shard_offsets(shard)
        j = i - int(self.shards[shard]["start"])
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        handle = self._handle(shard)
        if hi == lo:
            import torch

            return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float32)
        locations = handle.get_slice("locations")[lo:hi].long()
        activations = handle.get_slice("activations")[lo:hi].float()
        return locations, activations

    def firing_counts(self) -> torch.Tensor:
        """LongTensor [num_latents]: how many cached positions each latent fires on."""
        import torch

        counts = torch.zeros(self.num_latents, dtype=torch.long)
        for i, shard in enumerate(self.shards):
            offsets = self._shard_offsets(i)
            counts[shard["start"] : shard["end"]] = offsets[1:] - offsets[:-1]
        return counts

    def close(self) -> None:
        self._handles.clear()
        self._offsets.clear()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
