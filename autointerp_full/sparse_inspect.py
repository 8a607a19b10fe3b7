"""A sparse model's files, shapes and fingerprint, read without loading any weights (no torch).

It finds the files of each hookpoint in a local folder or a hub repo, in the same layouts as
`sparse.py` (sparsify `<hookpoint>/cfg.json` + `sae.safetensors`, SAELens `cfg.json` +
`sae_weights.safetensors`, Gemma Scope `params.npz`; a folder holding one model serves a single
hookpoint), parses `cfg.json` and the tensor file's header only (a safetensors header is 8 bytes
of length + JSON; an npz member starts with a .npy header), and checks that the header agrees
with the file's size, so that a truncated or corrupt file is a one-line UserError here instead
of a traceback in the loader. Preflight uses it for the widths; the cache key for the content.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, one_line

SPARSIFY_FILES = ("cfg.json", "sae.safetensors")
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
GEMMA_SCOPE_FILES = ("params.npz",)
# Tried in this order, as sparse.py's loaders are.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "sparsify": SPARSIFY_FILES,
    "saelens": SAELENS_FILES,
    "gemma_scope": GEMMA_SCOPE_FILES,
}
ACTIVATIONS = ("topk", "relu", "jumprelu")
# Tensor names each layout needs, and the one whose shape gives (d_in, num_latents).
_REQUIRED = {
    "sparsify": ("encoder.weight", "encoder.bias", "W_dec", "b_dec"),
    "saelens": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "gemma_scope": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
}
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_SAMPLE = 4096  # tensor bytes hashed from each end of the data: a retrained SAE changes them
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_NPY_HEADERS = {(1, 0): "read_array_header_1_0", (2, 0): "read_array_header_2_0"}


@dataclass(frozen=True)
class SparseInfo:
    """What one hookpoint's sparse model is, from its cfg and tensor headers."""

    hookpoint: str
    layout: str  # "sparsify", "saelens" or "gemma_scope"
    folder: str  # local folder, or "<repo>/<subfolder>" on the hub
    cfg_file: str | None  # None for Gemma Scope
    weights_file: str
    d_in: int
    d_out: int
    num_latents: int
    transcoder: bool
    activation: str | None  # as far as the config tells; the loader decides the details
    fingerprint: str  # sha256 of the cfg bytes, the tensor header and a sample of the data
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    shapes: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return "transcoder" if self.transcoder else "sae"


# ------------------------------------------------------------------------------ locating
def layout_of(folder: Path) -> str | None:
    """The layout whose files are all in `folder`, or None."""
    for layout, files in LAYOUTS.items():
        if all((folder / name).is_file() for name in files):
            return layout
    return None


def _layout_in(listing: set[str], folder: str) -> str | None:
    prefix = f"{folder}/" if folder else ""
    for layout, files in LAYOUTS.items():
        if all(prefix + name in listing for name in files):
            return layout
    return None


def available_hookpoints(root: Path) -> list[str]:
    """Sub-folders of `root` (at any depth) that hold a sparse model in a known layout."""
    found = {
        str(p.parent.relative_to(root))
        for name in ("cfg.json", "params.npz")
        for p in root.rglob(name)
        if p.parent != root and layout_of(p.parent)
    }
    return sorted(found)


def _hub_hookpoints(listing: set[str]) -> list[str]:
    folders = {name.rpartition("/")[0] for name in listing if "/" in name}
    return sorted(f for f in folders if _layout_in(listing, f))


def _missing_hookpoint(hp: str, sparse_model: str, have: list[str], single: bool) -> UserError:
    """`single`: the folder itself holds one model (no per-hookpoint sub-folders)."""
    if not have and single:
        return UserError(
            f"--hookpoints: {sparse_model} holds a single sparse model, not one per hookpoint; "
            f"give one hookpoint (no sub-folder {hp!r})"
        )
    if not have:  # nothing there at all: the path, not the hookpoint, is wrong
        return UserError(
            f"--sparse_model: {sparse_model} holds no sparse model in a known layout "
            "(sparsify <hookpoint>/cfg.json + sae.safetensors, SAELens cfg.json + "
            "sae_weights.safetensors, Gemma Scope params.npz)"
        )
    return UserError(
        f"--hookpoints: no sparse model for {hp!r} in {sparse_model}; available: {', '.join(have)}"
    )


def is_local(sparse_model: str) -> bool:
    """A local folder (existing, or not shaped like a hub id)."""
    return Path(sparse_model).expanduser().exists() or not _HUB_ID.match(sparse_model)


def locate_local(sparse_model: str, hookpoints: list[str]) -> dict[str, tuple[Path, str]]:
    """(folder, layout) per hookpoint in a local sparse-model folder; same rules as sparse.py."""
    if not hookpoints:
        raise UserError("--hookpoints: give at least one hookpoint")
    root = Path(sparse_model).expanduser()
    if not root.exists():
        raise UserError(f"--sparse_model: no such directory: {sparse_model!r}")
    if not root.is_dir():
        raise UserError(f"--sparse_model: {sparse_model!r} is not a directory")
    found = {}
    for hp in hookpoints:
        folder = root / hp
        layout = layout_of(folder) if folder.is_dir() else None
        if layout is None and len(hookpoints) == 1:
            # A folder holding a single model serves the one hookpoint asked for.
            folder, layout = root, layout_of(root)
        if layout is None:
            have = available_hookpoints(root)
            raise _missing_hookpoint(hp, sparse_model, have, layout_of(root) is not None)
        found[hp] = (folder, layout)
    return found


# ----------------------------------------------------------------------- tensor headers
def _corrupt(path: Any, what: str) -> UserError:
    return UserError(f"--sparse_model: {path} is corrupt or truncated: {what}")


def parse_safetensors_header(raw: bytes, file_size: int, path: Any) -> dict[str, Any]:
    """The tensors of a safetensors file from its header (`raw` = the 8-byte length + JSON),
    checked against the file's size: {name: {"dtype", "shape", "data_offsets"}}."""
    if file_size < 8 or len(raw) < 8:
        raise _corrupt(path, f"{file_size} bytes, shorter than a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > file_size:
        raise _corrupt(path, f"the header claims {n} bytes but the file has {file_size}")
    if len(raw) < 8 + n:
        raise _corrupt(path, "the header is cut short")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(path, "the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    data_size = file_size - 8 - n
    tensors: dict[str, Any] = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = entry["dtype"], [int(d) for d in entry["shape"]]
            begin, stop = (int(x) for x in entry["data_offsets"])
            nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad header entry for tensor {name!r}") from None
        if stop - begin != nbytes or begin < 0:
            raise _corrupt(path, f"tensor {name!r} has offsets that do not fit its shape")
        tensors[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, stop]}
        end = max(end, stop)
    if end != data_size:
        raise _corrupt(
            path, f"the header describes {end} bytes of tensor data, the file holds {data_size}"
        )
    return tensors


def _read_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    """(tensors, bytes to fingerprint) of a local safetensors file, reading only its ends."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            raw = head + (fh.read(n) if n <= _MAX_HEADER and 8 + n <= size else b"")
            tensors = parse_safetensors_header(raw, size, path)
            start = len(raw)
            fh.seek(start)
            sample = fh.read(_SAMPLE)
            fh.seek(max(start, size - _SAMPLE))
            sample += fh.read(_SAMPLE)
    except OSError as exc:
        raise UserError(f"--sparse_model: cannot read {path}: {one_line(exc)}") from None
    return tensors, raw + sample


def _read_npz(path: Path) -> tuple[dict[str, Any], bytes]:
    """(tensors, bytes to fingerprint) of a local .npz, from its directory and .npy headers."""
    import numpy as np
    from numpy.lib import format as npy

    tensors: dict[str, Any] = {}
    digest = []
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as member:
                    version = npy.read_magic(member)
                    read = _NPY_HEADERS.get(version)
                    if read is None:
                        raise _corrupt(path, f"{info.filename} has .npy version {version}")
                    shape, _fortran, dtype = getattr(npy, read)(member)
                    header_len = member.tell()
                expected = header_len + math.prod(shape) * np.dtype(dtype).itemsize
                if info.file_size != expected:
                    raise _corrupt(path, f"member {info.filename} does not match its header")
                name = info.filename.removesuffix(".npy")
                tensors[name] = {"dtype": str(np.dtype(dtype)), "shape": list(shape)}
                # The CRC covers the member's data, so a retrained model changes it.
                digest.append(f"{info.filename}:{shape}:{dtype}:{info.CRC}")
    except UserError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise _corrupt(path, one_line(exc, limit=120)) from None
    return tensors, "\n".join(digest).encode()


# --------------------------------------------------------------------------- shapes
def _cfg_from(raw: bytes, path: Any) -> dict[str, Any]:
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(
            f"--sparse_model: {path} is not valid JSON ({one_line(exc, limit=120)})"
        ) from None
    if not isinstance(cfg, dict):
        raise UserError(f"--sparse_model: {path} should hold a JSON object")
    return cfg


def _shape(tensors: dict[str, Any], name: str, ndim: int, path: Any) -> list[int]:
    shape = tensors[name]["shape"]
    if len(shape) != ndim:
        raise UserError(f"--sparse_model: tensor {name} in {path} has shape {shape}")
    return shape


def sparsify_activation(
    cfg: dict[str, Any], names: set[str], d_in: int, num_latents: int, cfg_path: Any
) -> str:
    """A sparsify cfg.json's activation, checked against its tensors' names and shapes (the
    loader and the preflight apply the same rules)."""
    for key, value in (("d_in", d_in), ("num_latents", num_latents)):
        if cfg.get(key) not in (None, 0, value):
            raise UserError(
                f"--sparse_model: {cfg_path} says {key}={cfg[key]} but the weights have {value}"
            )
    activation = str(cfg.get("activation", "topk"))
    if activation not in ACTIVATIONS:
        raise UserError(
            f"--sparse_model: activation {activation!r} in {cfg_path} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    if activation == "jumprelu" and "threshold" not in names:
        raise UserError(f"--sparse_model: jumprelu model {cfg_path} has no threshold tensor")
    return activation


def describe(
    layout: str, cfg: dict[str, Any], tensors: dict[str, Any], cfg_path: Any, weights_path: Any
) -> dict[str, Any]:
    """d_in, d_out, num_latents, transcoder and activation from the cfg and tensor shapes,
    with the consistency checks the loaders would otherwise fail on later."""
    missing = [name for name in _REQUIRED[layout] if name not in tensors]
    if missing:
        raise UserError(f"--sparse_model: {weights_path} lacks tensor(s) {', '.join(missing)}")
    if layout == "sparsify":
        num_latents, d_in = _shape(tensors, "encoder.weight", 2, weights_path)
    else:
        d_in, num_latents = _shape(tensors, "W_enc", 2, weights_path)
    dec_latents, d_out = _shape(tensors, "W_dec", 2, weights_path)
    if dec_latents != num_latents:
        raise UserError(
            f"--sparse_model: {weights_path}: the encoder has {num_latents} latents, "
            f"W_dec has {dec_latents}"
        )
    activation: str | None = None
    transcoder = d_out != d_in
    if layout == "sparsify":
        activation = sparsify_activation(cfg, set(tensors), d_in, num_latents, cfg_path)
        # As in sparse.load_sparsify: a skip connection maps the module input, so it transcodes.
        skip = bool(cfg.get("skip_connection", False)) or "W_skip" in tensors
        transcoder = transcoder or bool(cfg.get("transcode", False)) or skip
    elif layout == "saelens":
        transcoder = transcoder or "transcoder" in str(cfg.get("architecture", "")).lower()
        activation = str(cfg.get("architecture", "standard")).lower()
    else:
        activation = "jumprelu"
    if layout == "sparsify" and activation == "topk":
        k = cfg.get("k")
        if not (isinstance(k, int) and 0 < k <= num_latents):
            raise UserError(
                f"--sparse_model: {cfg_path} needs 0 < k <= num_latents "
                f"(k={k}, num_latents={num_latents})"
            )
    return {
        "d_in": int(d_in),
        "d_out": int(d_out),
        "num_latents": int(num_latents),
        "transcoder": transcoder,
        "activation": activation,
    }


def _fingerprint(cfg_raw: bytes, weights_raw: bytes) -> str:
    h = hashlib.sha256()
    for part in (cfg_raw, weights_raw):
        h.update(struct.pack("<Q", len(part)))
        h.update(part)
    return h.hexdigest()


def _inspect_local(hp: str, folder: Path, layout: str) -> SparseInfo:
    files = LAYOUTS[layout]
    weights = folder / files[-1]
    if layout == "gemma_scope":
        cfg_path, cfg_raw, cfg = None, b"", {}
        tensors, weights_raw = _read_npz(weights)
    else:
        cfg_path = folder / "cfg.json"
        try:
            cfg_raw = cfg_path.read_bytes()
        except OSError as exc:
            raise UserError(f"--sparse_model: cannot read {cfg_path}: {one_line(exc)}") from None
        cfg = _cfg_from(cfg_raw, cfg_path)
        tensors, weights_raw = _read_safetensors(weights)
    shapes = describe(layout, cfg, tensors, cfg_path, weights)
    return SparseInfo(
        hookpoint=hp,
        layout=layout,
        folder=str(folder),
        cfg_file=None if cfg_path is None else str(cfg_path),
        weights_file=str(weights),
        fingerprint=_fingerprint(cfg_raw, weights_raw),
        config=cfg,
        shapes={name: list(t["shape"]) for name, t in tensors.items()},
        **shapes,
    )


# ------------------------------------------------------------------------------- the hub
def _hub_error(repo: str, exc: BaseException, token: str | None) -> UserError:
    return UserError(
        f"--sparse_model: cannot fetch {repo!r} from the Hugging Face hub "
        f"({type(exc).__name__}: {one_line(exc, token, limit=200)})"
    )


def _inspect_hub(repo: str, hookpoints: list[str], token: str | None) -> dict[str, SparseInfo]:
    """The same, for a hub repo: the file list and cfg.json come over the API, the safetensors
    header by a ranged read (huggingface_hub's own parser); only a Gemma Scope npz downloads."""
    try:
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi(token=token)
        listing = set(api.list_repo_files(repo, token=token))
    except Exception as exc:  # network, auth and not-found errors all mean the same to the user
        raise _hub_error(repo, exc, token) from None
    if not hookpoints:
        raise UserError("--hookpoints: give at least one hookpoint")
    out = {}
    for hp in hookpoints:
        sub, layout = hp, _layout_in(listing, hp)
        if layout is None and len(hookpoints) == 1:
            sub, layout = "", _layout_in(listing, "")
        if layout is None:
            single = _layout_in(listing, "") is not None
            raise _missing_hookpoint(hp, repo, _hub_hookpoints(listing), single)
        prefix = f"{sub}/" if sub else ""
        weights_name = prefix + LAYOUTS[layout][-1]
        where = f"{repo}/{weights_name}"
        try:
            if layout == "gemma_scope":
                cfg_raw, cfg, cfg_where = b"", {}, None
                local = Path(hf_hub_download(repo, weights_name, token=token))
                tensors, weights_raw = _read_npz(local)
            else:
                cfg_where = f"{repo}/{prefix}cfg.json"
                cfg_raw = Path(hf_hub_download(repo, prefix + "cfg.json", token=token)).read_bytes()
                cfg = _cfg_from(cfg_raw, cfg_where)
                meta = api.parse_safetensors_file_metadata(repo, weights_name, token=token)
                tensors = {
                    name: {"dtype": t.dtype, "shape": list(t.shape)}
                    for name, t in meta.tensors.items()
                }
                # The LFS sha256 is the whole file's content hash, free from the API.
                (info,) = api.get_paths_info(repo, [weights_name], token=token)
                lfs = getattr(info, "lfs", None)
                tag = getattr(lfs, "sha256", None) or getattr(info, "blob_id", "")
                weights_raw = json.dumps(tensors, sort_keys=True).encode() + str(tag).encode()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub and parser errors come in many types
            raise _hub_error(repo, exc, token) from None
        shapes = describe(layout, cfg, tensors, cfg_where, where)
        out[hp] = SparseInfo(
            hookpoint=hp,
            layout=layout,
            folder=f"{repo}/{sub}".rstrip("/"),
            cfg_file=cfg_where,
            weights_file=where,
            fingerprint=_fingerprint(cfg_raw, weights_raw),
            config=cfg,
            shapes={name: list(t["shape"]) for name, t in tensors.items()},
            **shapes,
        )
    return out


# --------------------------------------------------------------------------- entry points
_HUB_MEMO: dict[tuple[str, tuple[str, ...], str | None], dict[str, SparseInfo]] = {}


def inspect_sparse_model(
    sparse_model: str, hookpoints: list[str], token: str | None = None
) -> dict[str, SparseInfo]:
    """SparseInfo per hookpoint, without loading weights. Any problem is a one-line UserError
    naming --sparse_model or --hookpoints and the file."""
    if is_local(sparse_model):
        located = locate_local(sparse_model, hookpoints)
        return {hp: _inspect_local(hp, folder, layout) for hp, (folder, layout) in located.items()}
    # A hub answer is kept for the process: the cache key asks again for every hookpoint.
    memo_key = (sparse_model, tuple(hookpoints), token)
    if memo_key not in _HUB_MEMO:
        _HUB_MEMO[memo_key] = _inspect_hub(sparse_model, hookpoints, token)
    return dict(_HUB_MEMO[memo_key])


def sparse_fingerprint(sparse_model: str, hookpoint: str, token: str | None = None) -> str:
    """sha256 over the hookpoint's cfg.json bytes, its tensor file's header and a few KiB from
    each end of the tensor data (or, on the hub, the file's LFS hash): cheap, and it changes
    when a retrained model is saved to the same path."""
    return inspect_sparse_model(sparse_model, [hookpoint], token)[hookpoint].fingerprint
