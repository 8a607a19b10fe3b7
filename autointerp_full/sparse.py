"""Sparse models (SAEs and transcoders): one encoder class, and loaders for three file layouts.

Layouts:
- sparsify (EleutherAI): `<root>/<hookpoint>/cfg.json` + `sae.safetensors`
  (`encoder.weight` [L, d_in], `encoder.bias` [L], `W_dec` [L, d_out], `b_dec` [d_out]).
  The encoder sees `x - b_dec` unless the model is a transcoder; ReLU, then top-k.
- SAELens: `cfg.json` + `sae_weights.safetensors` (`W_enc` [d_in, L], `W_dec` [L, d_out]);
  `apply_b_dec_to_input` decides the input centring; standard (ReLU), jumprelu and topk.
- Gemma Scope: `params.npz` (`W_enc` [d_in, L], `W_dec`, `b_enc`, `b_dec`, `threshold`); JumpReLU.
SAELens and Gemma Scope files are looked for in `<root>/<hookpoint>/`, then in `<root>` itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .errors import UserError, one_line

ACTIVATIONS = ("topk", "relu", "jumprelu")
SPARSIFY_FILES = ("cfg.json", "sae.safetensors")
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
GEMMA_SCOPE_FILES = ("params.npz",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class SparseCoder(torch.nn.Module):
    """An SAE (d_out == d_in, reconstructs its input) or a transcoder (maps a module's input to
    its output). Latent activations are:

    - topk:     top-k of relu(pre_acts), all other latents 0
    - relu:     relu(pre_acts)
    - jumprelu: relu(pre_acts) where pre_acts > threshold, else 0

    with pre_acts = (x - b_pre) @ W_enc.T + b_enc, b_pre being 0 unless the format centres inputs.
    """

    def __init__(
        self,
        d_in: int,
        num_latents: int,
        *,
        d_out: int | None = None,
        activation: str = "topk",
        k: int | None = None,
        transcoder: bool = False,
        center_input: bool = False,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        if activation == "topk" and not (k and 0 < k <= num_latents):
            raise ValueError(f"topk needs 0 < k <= num_latents (k={k}, num_latents={num_latents})")
        self.d_in, self.num_latents = d_in, num_latents
        self.d_out = d_out or d_in
        self.activation, self.k, self.transcoder = activation, k, transcoder
        opts = {"device": device, "dtype": dtype}
        self.W_enc = torch.nn.Parameter(torch.zeros(num_latents, d_in, **opts))
        self.b_enc = torch.nn.Parameter(torch.zeros(num_latents, **opts))
        self.W_dec = torch.nn.Parameter(torch.zeros(num_latents, self.d_out, **opts))
        self.b_dec = torch.nn.Parameter(torch.zeros(self.d_out, **opts))
        self.threshold = (
            torch.nn.Parameter(torch.zeros(num_latents, **opts))
            if activation == "jumprelu"
            else None
        )
        # Input centring: sparsify and SAELens subtract b_dec itself, so no separate tensor.
        self.center_input = center_input
        if center_input and self.d_out != d_in:
            raise ValueError("input centring with b_dec needs d_out == d_in")

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.activation == "topk" else ""
        return (
            f"d_in={self.d_in}, d_out={self.d_out}, num_latents={self.num_latents}, "
            f"activation={self.activation}{k}, transcoder={self.transcoder}"
        )

    # ------------------------------------------------------------------------------ encoding
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [N, L] for inputs [N, d_in]."""
        x = x.to(self.W_enc.dtype)
        if self.center_input:
            x = x - self.b_dec
        return (
            torch.addmm(self.b_enc, x, self.W_enc.T)
            if x.dim() == 2
            else (x @ self.W_enc.T + self.b_enc)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latent activations [N, L]."""
        pre = self.pre_acts(x)
        if self.activation == "topk":
            values, indices = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        acts = pre.relu()
        if self.activation == "jumprelu":
            acts = acts * (pre > self.threshold)
        return acts

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The non-zero activations of inputs [N, d_in] as (rows, latents, values).

        Order is unspecified (row-major for relu/jumprelu; by strength within a row for topk).
        """
        pre = self.pre_acts(x)
        if self.activation == "topk":
            values, latents = pre.topk(self.k, dim=-1, sorted=False)
            keep = values > 0
            rows = torch.arange(pre.shape[0], device=pre.device).unsqueeze(1).expand_as(latents)
            return rows[keep], latents[keep], values[keep]
        keep = pre > 0
        if self.activation == "jumprelu":
            keep &= pre > self.threshold
        rows, latents = keep.nonzero(as_tuple=True)
        return rows, latents, pre[rows, latents]

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction [N, d_out] from dense activations [N, L]."""
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# ------------------------------------------------------------------------------------- loaders
def _fill(coder: SparseCoder, tensors: dict[str, torch.Tensor]) -> SparseCoder:
    """Copy tensors into the coder's parameters, checking shapes."""
    with torch.no_grad():
        for name, value in tensors.items():
            param = getattr(coder, name)
            if param is None:
                continue
            if tuple(param.shape) != tuple(value.shape):
                raise UserError(
                    f"--sparse_model: tensor {name} has shape {tuple(value.shape)}, "
                    f"expected {tuple(param.shape)}"
                )
            param.copy_(value.to(param.dtype))
    coder.eval()
    coder.requires_grad_(False)
    return coder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--sparse_model: cannot read {path}: {exc}") from None


def load_sparsify(
    folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> SparseCoder:
    """A sparsify (EleutherAI) SAE or transcoder from `folder/{cfg.json, sae.safetensors}`."""
    from safetensors.torch import load_file

    cfg = _read_json(folder / "cfg.json")
    t = load_file(str(folder / "sae.safetensors"), device="cpu")
    num_latents, d_in = t["encoder.weight"].shape
    activation = cfg.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise UserError(
            f"--sparse_model: activation {activation!r} in {folder / 'cfg.json'} is "
            f"not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    if activation == "jumprelu" and "threshold" not in t:
        raise UserError(f"--sparse_model: jumprelu model in {folder} has no 'threshold' tensor")
    for key, value in (("d_in", d_in), ("num_latents", num_latents)):
        if cfg.get(key) not in (None, 0, value):
            raise UserError(
                f"--sparse_model: {folder / 'cfg.json'} says {key}={cfg[key]} but the "
                f"weights have {value}"
            )
    transcoder = bool(cfg.get("transcode", False))
    coder = SparseCoder(
        d_in,
        num_latents,
        d_out=t["W_dec"].shape[1],
        activation=activation,
        k=cfg.get("k"),
        transcoder=transcoder,
        center_input=not transcoder,
        device=device,
        dtype=dtype,
    )
    names = {
        "encoder.weight": "W_enc",
        "encoder.bias": "b_enc",
        "W_dec": "W_dec",
        "b_dec": "b_dec",
        "threshold": "threshold",
    }
    return _fill(coder, {ours: t[theirs] for theirs, ours in names.items() if theirs in t})


def load_saelens(
    folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> SparseCoder:
    """A SAELens SAE from `folder/{cfg.json, sae_weights.safetensors}`."""
    from safetensors.torch import load_file

    cfg = _read_json(folder / "cfg.json")
    t = load_file(str(folder / "sae_weights.safetensors"), device="cpu")
    d_in, num_latents = t["W_enc"].shape
    arch = str(cfg.get("architecture", "standard")).lower()
    fn = str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu")) or "relu").lower()
    fn_kwargs = cfg.get("activation_fn_kwargs") or {}
    if "jumprelu" in arch:
        activation = "jumprelu"
    elif "topk" in arch or fn == "topk":
        activation = "topk"
    elif arch in ("standard", "relu", "transcoder") and fn == "relu":
        activation = "relu"
    else:
        raise UserError(
            f"--sparse_model: SAELens architecture {arch!r} with activation {fn!r} "
            "is not supported (supported: standard/relu, jumprelu, topk)"
        )
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none"):
        raise UserError(f"--sparse_model: SAELens normalize_activations={norm!r} is not supported")
    tensors = {"W_enc": t["W_enc"].T, "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if activation == "jumprelu":
        if "threshold" in t:
            tensors["threshold"] = t["threshold"]
        elif "log_threshold" in t:
            tensors["threshold"] = t["log_threshold"].exp()
        else:
            raise UserError(f"--sparse_model: jumprelu model in {folder} has no threshold tensor")
    d_out = t["W_dec"].shape[1]
    coder = SparseCoder(
        d_in,
        num_latents,
        d_out=d_out,
        activation=activation,
        k=cfg.get("k") or fn_kwargs.get("k"),
        transcoder="transcoder" in arch or d_out != d_in or bool(cfg.get("transcode", False)),
        center_input=bool(cfg.get("apply_b_dec_to_input", False)),
        device=device,
        dtype=dtype,
    )
    return _fill(coder, tensors)


def load_gemma_scope(
    folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> SparseCoder:
    """A Gemma Scope JumpReLU SAE from `folder/params.npz`."""
    import numpy as np

    with np.load(folder / "params.npz") as npz:
        t = {key: torch.from_numpy(np.asarray(npz[key], dtype=np.float32)) for key in npz.files}
    missing = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"} - set(t)
    if missing:
        raise UserError(
            f"--sparse_model: {folder / 'params.npz'} lacks {', '.join(sorted(missing))}"
        )
    d_in, num_latents = t["W_enc"].shape
    coder = SparseCoder(
        d_in,
        num_latents,
        d_out=t["W_dec"].shape[1],
        activation="jumprelu",
        device=device,
        dtype=dtype,
    )
    return _fill(
        coder,
        {
            "W_enc": t["W_enc"].T,
            "b_enc": t["b_enc"],
            "W_dec": t["W_dec"],
            "b_dec": t["b_dec"],
            "threshold": t["threshold"],
        },
    )


_LOADERS = (
    (SPARSIFY_FILES, load_sparsify),
    (SAELENS_FILES, load_saelens),
    (GEMMA_SCOPE_FILES, load_gemma_scope),
)


def _loader_for(folder: Path) -> Any:
    for files, loader in _LOADERS:
        if all((folder / name).is_file() for name in files):
            return loader
    return None


def available_hookpoints(root: Path) -> list[str]:
    """Sub-folders of `root` (at any depth) that hold a sparse model in a known layout."""
    found = {
        str(p.parent.relative_to(root))
        for name in ("cfg.json", "params.npz")
        for p in root.rglob(name)
        if p.parent != root and _loader_for(p.parent)
    }
    return sorted(found)


def _download(repo: str, hookpoints: list[str], token: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = [f"{hp}/*" for hp in hookpoints]
        patterns += [name for files, _ in _LOADERS for name in files]  # a one-model repo
        return Path(snapshot_download(repo, allow_patterns=patterns, token=token))
    except Exception as exc:  # network, auth and not-found errors all mean the same to the user
        text = one_line(exc, token, limit=200)
        raise UserError(
            f"--sparse_model: cannot fetch {repo!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {text})"
        ) from None


def load_sparse_models(
    path: str,
    hookpoints: list[str],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    token: str | None = None,
) -> dict[str, SparseCoder]:
    """One SparseCoder per hookpoint from a local folder or a hub repo."""
    if not hookpoints:
        raise UserError("--hookpoints: give at least one hookpoint")
    root = Path(path).expanduser()
    if not root.exists():
        if not _HUB_ID.match(path):
            raise UserError(f"--sparse_model: no such directory: {path!r}")
        root = _download(path, hookpoints, token)
    if not root.is_dir():
        raise UserError(f"--sparse_model: {path!r} is not a directory")
    coders = {}
    for hp in hookpoints:
        folder = root / hp
        loader = _loader_for(folder) if folder.is_dir() else None
        if loader is None and len(hookpoints) == 1:
            # A folder holding a single model serves the one hookpoint asked for.
            folder, loader = root, _loader_for(root)
        if loader is None:
            have = available_hookpoints(root)
            listed = ", ".join(have) if have else "none in a known layout"
            raise UserError(
                f"--hookpoints: no sparse model for {hp!r} in {path}; available: {listed}"
            )
        coders[hp] = loader(folder, device=device, dtype=dtype)
    return coders


def check_dimensions(coder: SparseCoder, hidden_size: int, hookpoint: str) -> None:
    """Fail clearly when a sparse model does not fit the subject model's hidden size."""
    if coder.d_in != hidden_size:
        raise UserError(
            f"--sparse_model: the sparse model for {hookpoint!r} takes inputs of size "
            f"{coder.d_in}, but the subject model's hidden size there is {hidden_size}"
        )
