"""Sparse models (SAEs and transcoders): one encoder class, and loaders for three file layouts.

Layouts, and how each is read so that latents match their reference library:
- sparsify (EleutherAI): `<root>/<hookpoint>/cfg.json` + `sae.safetensors`
  (`encoder.weight` [L, d_in], `encoder.bias` [L], `W_dec` [L, d_out], `b_dec` [d_out],
  optional `W_skip` [d_out, d_in]). As sparsify does, the encoder sees `x - b_dec` unless
  `transcode` is set; ReLU, then top-k. A model with `transcode` or `skip_connection` is a
  transcoder: it reads the hooked module's input.
- SAELens: `cfg.json` + `sae_weights.safetensors` (`W_enc` [d_in, L], `W_dec` [L, d_out]);
  standard (ReLU), jumprelu, topk and the (skip/jumprelu) transcoder architectures. As in
  SAELens, `apply_b_dec_to_input` is True when the key is missing (transcoders never centre);
  `rescale_acts_by_decoder_norm` (TopK) multiplies pre-activations by each latent's decoder
  norm before the top-k; `normalize_activations` is honoured: "expected_average_only_in"
  multiplies inputs by the stored scaling factor (`activation_scaler.json` next to the
  weights, or `norm_scaling_factor`/`scaling_factor` in cfg.json), "constant_norm_rescale"
  rescales each input to norm sqrt(d_in), "layer_norm" standardises each input.
- Gemma Scope: `params.npz` (`W_enc` [d_in, L], `W_dec`, `b_enc`, `b_dec`, `threshold`); JumpReLU.
  A Gemma Scope model whose folder or repo names "transcoder" is a transcoder that reads the
  MLP input (the input of `layers.N.mlp`, after the pre-MLP norm: SAELens's
  `blocks.N.ln2.hook_normalized`).
SAELens and Gemma Scope files are looked for in `<root>/<hookpoint>/`, then in `<root>` itself.

`randomize_weights` replaces a loaded model's weights by random ones of the same architecture
and shapes, and `make_random_controls` calibrates their biases on the first tokens of the
cache so that each random latent fires as often as its real one (the `--random_sparse_model`
control).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import UserError, one_line
from .nulls import stream_seed
from .sparse_inspect import ACTIVATIONS, LAYOUTS, is_local, locate_local, sparsify_activation

if TYPE_CHECKING:
    from .config import RunConfig

# Per-input normalisations applied before encoding (SAELens `normalize_activations`).
INPUT_NORMS = ("none", "constant_norm_rescale", "layer_norm")
# Where a model's inputs come from, when the format says so; "mlp_input" needs an MLP hookpoint.
INPUT_SITES = ("", "mlp_input")
SAELENS_SCALER_FILE = "activation_scaler.json"
LAYER_NORM_EPS = 1e-5  # SAELens's runtime layer norm: (x - mean) / (std + eps)


class SparseCoder(torch.nn.Module):
    """An SAE (d_out == d_in, reconstructs its input) or a transcoder (maps a module's input to
    its output). Latent activations are:

    - topk:     top-k of pre_acts, then relu, all other latents 0
    - relu:     relu(pre_acts)
    - jumprelu: relu(pre_acts) where pre_acts > threshold, else 0

    with pre_acts = (norm(x) - b_pre) @ W_enc.T + b_enc, where norm is the identity unless
    `input_norm` says otherwise and b_pre is b_dec when `center_input`, else 0. Per-latent and
    per-model scalings of the formats (a stored input scaling factor, TopK's decoder-norm
    rescaling) are folded into W_enc, b_enc and W_dec when loading, so they cost nothing here.
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
        input_norm: str = "none",
        skip_connection: bool = False,
        input_site: str = "",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        if activation == "topk" and not (k and 0 < k <= num_latents):
            raise ValueError(f"topk needs 0 < k <= num_latents (k={k}, num_latents={num_latents})")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, not {input_norm!r}")
        if input_site not in INPUT_SITES:
            raise ValueError(f"input_site must be one of {INPUT_SITES}, not {input_site!r}")
        self.d_in, self.num_latents = d_in, num_latents
        self.d_out = d_out or d_in
        self.activation, self.k, self.transcoder = activation, k, transcoder
        self.input_norm, self.input_site = input_norm, input_site
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
        # A skip transcoder adds x @ W_skip.T to its output; encoding never uses it.
        self.W_skip = (
            torch.nn.Parameter(torch.zeros(self.d_out, d_in, **opts)) if skip_connection else None
        )
        # Input centring: sparsify and SAELens subtract b_dec itself, so no separate tensor.
        self.center_input = center_input
        if center_input and self.d_out != d_in:
            raise ValueError("input centring with b_dec needs d_out == d_in")

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.activation == "topk" else ""
        norm = f", input_norm={self.input_norm}" if self.input_norm != "none" else ""
        skip = ", skip_connection=True" if self.W_skip is not None else ""
        return (
            f"d_in={self.d_in}, d_out={self.d_out}, num_latents={self.num_latents}, "
            f"activation={self.activation}{k}, transcoder={self.transcoder}{norm}{skip}"
        )

    # ------------------------------------------------------------------------------ encoding
    def _input_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalised x, the per-row (scale, shift) needed to undo it, or None)."""
        if self.input_norm == "constant_norm_rescale":
            coeff = self.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, torch.stack((1 / coeff, torch.zeros_like(coeff)))
        if self.input_norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return (x - mu) / (std + LAYER_NORM_EPS), torch.stack((std, mu))
        return x, None

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder matrix sees: x in the weights' dtype, normalised, centred."""
        x = x.to(self.W_enc.dtype)
        if self.input_norm != "none":
            x = self._input_scale(x)[0]
        if self.center_input:
            x = x - self.b_dec
        return x

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [N, L] for inputs [N, d_in]."""
        x = self.prepare_input(x)
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
        """Reconstruction [N, d_out] from dense activations [N, L], in the normalised space of
        `input_norm` (forward undoes the normalisation) and without the skip connection."""
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        out = self.decode(self.encode(x))
        undo = self._input_scale(x)[1] if self.input_norm != "none" else None
        if undo is not None:
            out = out * undo[0] + undo[1]
        if self.W_skip is not None:
            out = out + x @ self.W_skip.T
        return out


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
    activation = sparsify_activation(cfg, set(t), d_in, num_latents, folder / "cfg.json")
    transcode = bool(cfg.get("transcode", False))
    skip = bool(cfg.get("skip_connection", False)) or "W_skip" in t
    coder = SparseCoder(
        d_in,
        num_latents,
        d_out=t["W_dec"].shape[1],
        activation=activation,
        k=cfg.get("k"),
        # The skip connection maps the module's input, so such a model reads the input too.
        transcoder=transcode or skip,
        # sparsify centres on b_dec exactly when it is not transcoding.
        center_input=not transcode,
        skip_connection="W_skip" in t,
        device=device,
        dtype=dtype,
    )
    names = {
        "encoder.weight": "W_enc",
        "encoder.bias": "b_enc",
        "W_dec": "W_dec",
        "b_dec": "b_dec",
        "threshold": "threshold",
        "W_skip": "W_skip",
    }
    return _fill(coder, {ours: t[theirs] for theirs, ours in names.items() if theirs in t})


def _saelens_activation(arch: str, fn: str) -> str:
    """Our activation for a SAELens architecture name and activation function."""
    if arch in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        return "jumprelu"
    if arch == "topk" or (arch == "standard" and fn == "topk"):
        return "topk"
    if arch in ("standard", "relu", "transcoder", "skip_transcoder") and fn == "relu":
        return "relu"
    raise UserError(
        f"--sparse_model: SAELens architecture {arch!r} with activation {fn!r} is not "
        "supported (supported: standard, jumprelu, topk, transcoder, skip_transcoder, "
        "jumprelu_transcoder, jumprelu_skip_transcoder)"
    )


def _saelens_input_norm(cfg: dict[str, Any]) -> str:
    """SAELens's `normalize_activations`, with its pre-6.0 spellings (a bool, or null)."""
    norm = cfg.get("normalize_activations")
    if norm in (None, False, "none"):
        return "none"
    if norm is True:
        return "expected_average_only_in"
    if norm in ("expected_average_only_in", "constant_norm_rescale", "layer_norm"):
        return str(norm)
    raise UserError(
        f"--sparse_model: SAELens normalize_activations={norm!r} is not supported (supported: "
        "none, expected_average_only_in, constant_norm_rescale, layer_norm)"
    )


def _saelens_scaling_factor(folder: Path, cfg: dict[str, Any]) -> float:
    """The input scaling factor of an "expected_average_only_in" model that was not folded."""
    scaler = folder / SAELENS_SCALER_FILE
    candidates = [_read_json(scaler).get("scaling_factor")] if scaler.is_file() else []
    candidates += [cfg.get("norm_scaling_factor"), cfg.get("scaling_factor")]
    value = next((v for v in candidates if v is not None), None)
    if value is None:
        raise UserError(
            f"--sparse_model: {folder / 'cfg.json'} has normalize_activations="
            "'expected_average_only_in' but no scaling factor was found (looked for "
            f"{SAELENS_SCALER_FILE} with 'scaling_factor', and 'norm_scaling_factor' in cfg.json)"
        )
    try:
        factor = float(value)
    except (TypeError, ValueError):
        factor = float("nan")
    if not factor > 0 or factor == float("inf"):
        raise UserError(f"--sparse_model: the input scaling factor in {folder} is {value!r}")
    return factor


def fold_input_scaling(tensors: dict[str, torch.Tensor], factor: float) -> None:
    """Make the model encode `factor * x` when given x, as SAELens's
    fold_activation_norm_scaling_factor does: W_enc * factor; b_dec and W_dec / factor."""
    tensors["W_enc"] = tensors["W_enc"] * factor
    tensors["W_dec"] = tensors["W_dec"] / factor
    tensors["b_dec"] = tensors["b_dec"] / factor


def fold_decoder_norm(tensors: dict[str, torch.Tensor]) -> None:
    """TopK with `rescale_acts_by_decoder_norm`: pre-activations are multiplied by each latent's
    decoder norm before the top-k, and decoding divides by it again. Folding the norm into the
    encoder rows (and out of the decoder rows) gives the same activations and reconstruction."""
    norms = tensors["W_dec"].float().norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))  # a zero row stays zero
    tensors["W_enc"] = tensors["W_enc"] * norms[:, None]
    tensors["b_enc"] = tensors["b_enc"] * norms
    tensors["W_dec"] = tensors["W_dec"] / safe[:, None]


def _saelens_site(cfg: dict[str, Any]) -> str:
    """'mlp_input' when SAELens's hook name is the normalised MLP input (ln2.hook_normalized,
    the input of a Hugging Face model's `mlp` module). TransformerLens's hook_mlp_in comes
    before the norm, so it does not name that input and is left unchecked."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = str(cfg.get("hook_name") or cfg.get("hook_point") or meta.get("hook_name") or "")
    return "mlp_input" if hook.endswith("ln2.hook_normalized") else ""


@dataclass(frozen=True)
class _SaelensPlan:
    """How a SAELens cfg.json (and its tensor names and shapes) is to be encoded."""

    activation: str
    transcoder: bool
    center: bool
    norm: str
    skip: bool
    site: str


def _saelens_plan(
    cfg: dict[str, Any], names: set[str], d_in: int, d_out: int, folder: Path
) -> _SaelensPlan:
    """Read a SAELens config as SAELens does, or raise UserError for what it does not support.
    Needs no tensor data, so preflight runs the same rules before any work (check_config)."""
    where = folder / "cfg.json"
    arch = str(cfg.get("architecture", "standard")).lower().replace("jump_relu", "jumprelu")
    fn = str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu")) or "relu").lower()
    activation = _saelens_activation(arch, fn)
    transcoder = "transcoder" in arch or d_out != d_in or bool(cfg.get("transcode", False))
    # SAELens defaults apply_b_dec_to_input to True; its transcoders refuse it (b_dec is d_out).
    center = cfg.get("apply_b_dec_to_input")
    if transcoder and center:
        raise UserError(
            f"--sparse_model: {where} is a transcoder with apply_b_dec_to_input="
            "true, which SAELens does not support"
        )
    if activation == "jumprelu" and not names & {"threshold", "log_threshold"}:
        raise UserError(f"--sparse_model: jumprelu model in {folder} has no threshold tensor")
    skip = "skip" in arch or "W_skip" in names
    if skip and "W_skip" not in names:
        raise UserError(f"--sparse_model: skip transcoder in {folder} has no W_skip tensor")
    norm = _saelens_input_norm(cfg)
    if norm == "expected_average_only_in" and transcoder:
        raise UserError(
            f"--sparse_model: {where}: normalize_activations="
            "'expected_average_only_in' is not supported for transcoders"
        )
    return _SaelensPlan(
        activation=activation,
        transcoder=transcoder,
        center=False if transcoder else (True if center is None else bool(center)),
        norm=norm,
        skip=skip,
        site=_saelens_site(cfg) if transcoder else "",
    )


def load_saelens(
    folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> SparseCoder:
    """A SAELens SAE or transcoder from `folder/{cfg.json, sae_weights.safetensors}`."""
    from safetensors.torch import load_file

    cfg = _read_json(folder / "cfg.json")
    t = load_file(str(folder / "sae_weights.safetensors"), device="cpu")
    missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(t)
    if missing:
        raise UserError(
            f"--sparse_model: {folder / 'sae_weights.safetensors'} lacks "
            f"{', '.join(sorted(missing))}"
        )
    d_in, num_latents = t["W_enc"].shape
    d_out = t["W_dec"].shape[1]
    plan = _saelens_plan(cfg, set(t), d_in, d_out, folder)
    fn_kwargs = cfg.get("activation_fn_kwargs") or {}

    tensors = {"W_enc": t["W_enc"].T, "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    tensors = {key: value.float() for key, value in tensors.items()}  # fold in full precision
    if plan.activation == "jumprelu":
        if "threshold" in t:
            tensors["threshold"] = t["threshold"]
        else:
            tensors["threshold"] = t["log_threshold"].float().exp()
    if plan.skip:
        tensors["W_skip"] = t["W_skip"]
    norm = plan.norm
    if norm == "expected_average_only_in":
        fold_input_scaling(tensors, _saelens_scaling_factor(folder, cfg))
        norm = "none"
    if plan.activation == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        fold_decoder_norm(tensors)
    coder = SparseCoder(
        d_in,
        num_latents,
        d_out=d_out,
        activation=plan.activation,
        k=cfg.get("k") or fn_kwargs.get("k"),
        transcoder=plan.transcoder,
        center_input=plan.center,
        input_norm=norm,
        skip_connection=plan.skip,
        input_site=plan.site,
        device=device,
        dtype=dtype,
    )
    return _fill(coder, tensors)


def _names_transcoder(folder: Path) -> bool:
    """Gemma Scope marks transcoders only in the repo and folder names
    (google/gemma-scope-2b-pt-transcoders/layer_N/width_16k/average_l0_M). Only the folder and
    the few above it that such a layout spans are read (a hub snapshot keeps the repo name as
    `models--google--gemma-scope-2b-pt-transcoders/snapshots/<hash>/`), so an unrelated
    folder higher up whose name says "transcoder" does not count."""
    return any("transcoder" in part.lower() for part in folder.resolve().parts[-6:])


def load_gemma_scope(
    folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> SparseCoder:
    """A Gemma Scope JumpReLU SAE or transcoder from `folder/params.npz`."""
    import numpy as np

    with np.load(folder / "params.npz") as npz:
        t = {key: torch.from_numpy(np.asarray(npz[key], dtype=np.float32)) for key in npz.files}
    missing = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"} - set(t)
    if missing:
        raise UserError(
            f"--sparse_model: {folder / 'params.npz'} lacks {', '.join(sorted(missing))}"
        )
    d_in, num_latents = t["W_enc"].shape
    d_out = t["W_dec"].shape[1]
    transcoder = d_out != d_in or _names_transcoder(folder)
    coder = SparseCoder(
        d_in,
        num_latents,
        d_out=d_out,
        activation="jumprelu",
        # Gemma Scope transcoders read the MLP input (after the pre-MLP RMSNorm).
        transcoder=transcoder,
        input_site="mlp_input" if transcoder else "",
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


def check_input_site(coder: SparseCoder, hookpoint: str) -> None:
    """A transcoder trained on the MLP input needs the MLP module as its hookpoint: the input of
    a whole decoder layer is the residual stream before attention, not the MLP input."""
    last = hookpoint.rsplit(".", 1)[-1]
    if coder.input_site == "mlp_input" and last.isdigit():
        raise UserError(
            f"--hookpoints: the sparse model for {hookpoint!r} is a transcoder that reads the "
            f"MLP input; give the MLP module instead, e.g. {hookpoint + '.mlp'!r}"
        )


_LOADERS = {
    "sparsify": load_sparsify,
    "saelens": load_saelens,
    "gemma_scope": load_gemma_scope,
}


def _download(repo: str, hookpoints: list[str], token: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = [f"{hp}/*" for hp in hookpoints]
        patterns += [name for files in LAYOUTS.values() for name in files]  # a one-model repo
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
    random_seed: int | None = None,
) -> dict[str, SparseCoder]:
    """One SparseCoder per hookpoint from a local folder or a hub repo. With `random_seed`, each
    gets random weights of the same architecture and shapes (see `randomize_weights`).
    Finding each hookpoint's files follows `sparse_inspect.locate_local`, which preflight uses."""
    if not hookpoints:
        raise UserError("--hookpoints: give at least one hookpoint")
    root = path if is_local(path) else str(_download(path, hookpoints, token))
    coders = {}
    for hp, (folder, layout) in locate_local(root, hookpoints).items():
        coders[hp] = _LOADERS[layout](folder, device=device, dtype=dtype)
        check_input_site(coders[hp], hp)
        if random_seed is not None:
            randomize_weights(coders[hp], random_seed, stream=hp)
    return coders


def load_run_coder(cfg: RunConfig, hookpoint: str, device: str = "cpu") -> SparseCoder:
    """The run's sparse model at `hookpoint` in float32 (with --random_sparse_model, its random
    weights), for the work after the cache that reads its weights: neighbours, the dashboard,
    the output side."""
    coders = load_sparse_models(
        cfg.sparse_model,
        [hookpoint],
        device=device,
        token=cfg.token,
        random_seed=cfg.random_sparse_seed,
    )
    return coders[hookpoint]


def check_dimensions(coder: SparseCoder, hidden_size: int, hookpoint: str) -> None:
    """Fail clearly when a sparse model does not fit the subject model's hidden size."""
    if coder.d_in != hidden_size:
        raise UserError(
            f"--sparse_model: the sparse model for {hookpoint!r} takes inputs of size "
            f"{coder.d_in}, but the subject model's hidden size there is {hidden_size}"
        )


# ------------------------------------------------------------------------ random-weights control
RANDOM_CHUNK_ELEMENTS = 1 << 24  # rows are drawn in blocks of about 64 MB of float32


def _random_rows_like(param: torch.Tensor, generator: torch.Generator) -> None:
    """Replace each row of `param` by a uniformly random direction with the row's own norm.

    Drawn on the CPU in float32, so the weights for a seed are the same on every device."""
    rows, cols = param.shape
    step = max(1, RANDOM_CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        block = param[start : start + step]
        norms = block.float().norm(dim=1).cpu()
        draw = torch.randn(block.shape[0], cols, generator=generator)
        draw *= (norms / draw.norm(dim=1).clamp_min(1e-12))[:, None]
        block.copy_(draw.to(device=block.device, dtype=block.dtype))


def randomize_weights(coder: SparseCoder, seed: int, *, stream: str = "") -> SparseCoder:
    """Turn a loaded model into the random-weights control of the same architecture and shapes
    (in place; returns it).

    Every encoder row, decoder row and skip-connection row becomes a uniformly random direction
    of the same norm as before; biases, thresholds, b_dec, k and the input normalisation are
    kept, so activations stay on the real model's scale. Deterministic for (seed, stream).
    The cache stage then sets the encoder biases from data (`make_random_controls`); the
    directions, which the neighbour sources read, are these."""
    generator = torch.Generator().manual_seed(stream_seed(seed, stream))
    with torch.no_grad():
        _random_rows_like(coder.W_enc, generator)
        _random_rows_like(coder.W_dec, generator)
        if coder.W_skip is not None:
            _random_rows_like(coder.W_skip, generator)
    return coder


# Calibration of the random control: the first tokens of the cache, through the real model.
CALIBRATION_TOKENS = 8192
CALIBRATION_LATENTS = 4096  # latents per block when matching firing rates (bounded memory)


@torch.no_grad()
def firing_rates(coder: SparseCoder, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the fraction of the inputs [N, d_in] on which each latent fires [L], the level a
    pre-activation must exceed to fire). The level is 0 for ReLU; for TopK it is the median
    over inputs of the k-th largest activation; JumpReLU uses each latent's threshold."""
    n = max(1, x.shape[0])
    counts = torch.zeros(coder.num_latents, dtype=torch.long, device=x.device)
    smallest = torch.full((n,), float("inf"), device=x.device)
    step = max(1, RANDOM_CHUNK_ELEMENTS // max(1, coder.num_latents))  # bounded memory
    for start in range(0, x.shape[0], step):
        rows, latents, values = coder.encode_sparse(x[start : start + step])
        counts += torch.bincount(latents, minlength=coder.num_latents)
        if coder.activation == "topk" and len(values):
            smallest.scatter_reduce_(0, rows + start, values.float(), reduce="amin")
    level = 0.0
    if coder.activation == "topk" and torch.isfinite(smallest).any():
        level = float(smallest[torch.isfinite(smallest)].median())
    return (counts.float() / n).cpu(), level


def match_firing_rates(
    coder: SparseCoder, x: torch.Tensor, rates: torch.Tensor, level: float = 0.0
) -> None:
    """Set each latent's encoder bias so that it fires on `rates[i]` of the inputs [N, d_in]
    (in place): b_i = cutoff_i - the (1 - rate_i) quantile of w_i . x, where the cutoff is the
    threshold (JumpReLU) or `level` (ReLU: 0; TopK: where the real top k start, so that the
    rates add up to about k and the values keep their scale). A latent that never fired gets
    a bias that keeps it just below firing on these inputs. Latents are done in blocks."""
    with torch.no_grad():
        prepared = coder.prepare_input(x)
        n = prepared.shape[0]
        for start in range(0, coder.num_latents, CALIBRATION_LATENTS):
            stop = min(start + CALIBRATION_LATENTS, coder.num_latents)
            proj = (prepared @ coder.W_enc[start:stop].T).float()
            ordered = proj.sort(dim=0).values
            rate = rates[start:stop].to(ordered.device).float().clamp(0, 1)
            # the inputs above index `at` fire: n - 1 - at of them, about rate * n
            at = ((1 - rate) * n).floor().long().clamp(0, n - 1)
            quantile = ordered.gather(0, at[None]).squeeze(0)
            spread = (ordered[-1] - ordered[0]).clamp_min(1e-6)
            quantile = torch.where(rate <= 0, ordered[-1] + 1e-3 * spread, quantile)
            if coder.activation == "jumprelu":
                cutoff = coder.threshold[start:stop].float()
            else:
                cutoff = torch.full_like(quantile, level)
            coder.b_enc[start:stop] = (cutoff - quantile).to(coder.b_enc.dtype)


def make_random_controls(
    coders: dict[str, SparseCoder],
    seed: int,
    model: torch.nn.Module,
    tokens: torch.Tensor,
    forward: Any,
) -> None:
    """Turn the loaded real models into the --random_sparse_model control, in place.

    The directions come from `randomize_weights` (the same for a seed everywhere, so the
    neighbour weights agree with the cache). The encoder biases are then set from data: on the
    hidden states of the first CALIBRATION_TOKENS tokens of `tokens` (the same rows every time,
    so a resumed cache gets the same model), each random latent fires as often as the real
    latent did there. Without that, the inputs' large mean would switch random latents on
    everywhere or nowhere. `forward(model, hookpoints, ids, inputs=...)` gives hidden states."""
    n_rows = max(1, min(len(tokens), -(-CALIBRATION_TOKENS // max(1, tokens.shape[1]))))
    hookpoints = list(coders)
    inputs = frozenset(hp for hp in hookpoints if coders[hp].transcoder)
    device = next(model.parameters()).device
    ids = tokens[:n_rows].to(device=device, dtype=torch.long)
    with torch.inference_mode():
        hidden = forward(model, hookpoints, ids, inputs=inputs)
    for hp in hookpoints:
        coder = coders[hp]
        with torch.no_grad():
            x = hidden[hp].reshape(-1, hidden[hp].shape[-1]).to(coder.W_enc.dtype).clone()
            rates, level = firing_rates(coder, x)
            randomize_weights(coder, seed, stream=hp)
            match_firing_rates(coder, x, rates, level)


# ------------------------------------------------------------- preflight (added by H3, issue 9)
def check_config(info: Any) -> None:
    """The loaders' checks that need no tensor data, run on a `sparse_inspect.SparseInfo`
    (cfg.json plus tensor names and shapes) before the run folder is touched, so that an
    unsupported model stops the run before any work. Uses the loaders' own rules."""
    from types import SimpleNamespace

    cfg, folder = info.config, Path(info.folder)
    site = ""
    if info.layout == "saelens":
        plan = _saelens_plan(cfg, set(info.shapes), info.d_in, info.d_out, folder)
        if plan.norm == "expected_average_only_in" and folder.is_dir():
            _saelens_scaling_factor(folder, cfg)  # a hub model's scaler file is not fetched here
        site = plan.site
    elif info.layout == "gemma_scope":
        transcoder = info.d_out != info.d_in or _names_transcoder(folder)
        site = "mlp_input" if transcoder else ""
    check_input_site(SimpleNamespace(input_site=site), info.hookpoint)  # type: ignore[arg-type]
