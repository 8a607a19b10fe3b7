"""The examples file of one latent (examples/<hookpoint>_latent_<id>.json): JSON with the
provenance stamp first, written and read with orjson (a rerun or a stage reads thousands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from autointerp_full.examples.types import LatentWindows
from autointerp_full.io import atomic_write_bytes


def windows_bytes(windows: LatentWindows, stamp: dict[str, Any]) -> bytes:
    """The file's content: `stamp` (provenance.stamp({}, inputs): the fingerprint and inputs)
    first, as provenance.peek_fingerprint reads only the head, then the record's fields, the
    same JSON as LatentRecord.to_dict() gives; numbers go to orjson as numpy rows."""
    data: dict[str, Any] = {
        **stamp,
        "hookpoint": windows.hookpoint,
        "latent": int(windows.latent),
        "n_activating": int(windows.n_activating),
        "firing_rate": float(windows.firing_rate),
        "max_activation": float(windows.max_activation),
    }
    texts = windows.str_tokens.tolist()
    for name, start, end in windows.spans():
        if name == "contrast" and start == end:
            continue
        data[name] = [
            {
                "tokens": windows.tokens[i],
                "str_tokens": texts[i],
                "activations": windows.activations[i],
                "quantile": windows.quantiles[i],
            }
            for i in range(start, end)
        ]
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def write_windows(path: Path, windows: LatentWindows, stamp: dict[str, Any]) -> None:
    atomic_write_bytes(path, windows_bytes(windows, stamp))


def read_examples_file(path: Path) -> dict[str, Any]:
    """The file's JSON object (ValueError when it is not JSON; OSError when unreadable)."""
    return orjson.loads(Path(path).read_bytes())
