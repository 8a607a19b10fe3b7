"""Sparse-model loaders and encoders, checked against plain reference formulas."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_HIDDEN, write_sparsify_sae
from safetensors.torch import save_file

from autointerp_full.errors import UserError
from autointerp_full.sparse import (
    SparseCoder,
    check_dimensions,
    firing_rates,
    load_sparse_models,
    make_random_controls,
    match_firing_rates,
    randomize_weights,
)

D, L = 16, 48


def random_weights(seed: int = 0, d_out: int = D) -> dict[str, torch.Tensor]:
    """Weights in our orientation: W_enc [L, d_in], W_dec [L, d_out]."""
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(L, D, generator=g) / D**0.5,
        "b_enc": torch.randn(L, generator=g) * 0.2,
        "W_dec": torch.randn(L, d_out, generator=g) / L**0.5,
        "b_dec": torch.randn(d_out, generator=g) * 0.5,
        "threshold": torch.rand(L, generator=g) * 0.3,
    }


def inputs(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


# Reference formulas, written out independently of SparseCoder.
def ref_topk(x, w, k, center):
    pre = (x - w["b_dec"] if center else x) @ w["W_enc"].T + w["b_enc"]
    pre = pre.relu()
    out = torch.zeros_like(pre)
    for i in range(len(pre)):
        order = sorted(range(pre.shape[1]), key=lambda j: -pre[i, j].item())[:k]
        out[i, order] = pre[i, order]
    return out


def ref_relu(x, w, center):
    return ((x - w["b_dec"] if center else x) @ w["W_enc"].T + w["b_enc"]).clamp(min=0)


def ref_jumprelu(x, w, center=False):
    pre = (x - w["b_dec"] if center else x) @ w["W_enc"].T + w["b_enc"]
    return torch.where(pre > w["threshold"], pre, torch.zeros_like(pre)).clamp(min=0)


# Writers for each layout.
def write_sparsify(folder: Path, w, activation="topk", k=6, transcode=False):
    folder.mkdir(parents=True, exist_ok=True)
    t = {
        "encoder.weight": w["W_enc"],
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    if activation == "jumprelu":
        t["threshold"] = w["threshold"]
    save_file({key: v.contiguous() for key, v in t.items()}, str(folder / "sae.safetensors"))
    cfg = {"activation": activation, "k": k, "num_latents": L, "d_in": D, "transcode": transcode}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def write_saelens(folder: Path, w, architecture="standard", k=6, apply_b_dec=True):
    folder.mkdir(parents=True, exist_ok=True)
    t = {"W_enc": w["W_enc"].T, "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if architecture == "jumprelu":
        t["threshold"] = w["threshold"]
    save_file(
        {key: v.contiguous() for key, v in t.items()}, str(folder / "sae_weights.safetensors")
    )
    cfg = {
        "architecture": architecture,
        "d_in": D,
        "d_sae": L,
        "apply_b_dec_to_input": apply_b_dec,
        "hook_name": "blocks.1.hook_resid_post",
        "normalize_activations": "none",
        "activation_fn_str": "topk" if architecture == "topk" else "relu",
    }
    if architecture == "topk":
        cfg["activation_fn_kwargs"] = {"k": k}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def write_gemma_scope(folder: Path, w):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "params.npz",
        W_enc=w["W_enc"].T.numpy(),
        b_enc=w["b_enc"].numpy(),
        W_dec=w["W_dec"].numpy(),
        b_dec=w["b_dec"].numpy(),
        threshold=w["threshold"].numpy(),
    )


CASES = {
    "sparsify-topk": (
        lambda f, w: write_sparsify(f, w, "topk"),
        lambda x, w: ref_topk(x, w, 6, center=True),
    ),
    "sparsify-relu": (
        lambda f, w: write_sparsify(f, w, "relu"),
        lambda x, w: ref_relu(x, w, center=True),
    ),
    "sparsify-jumprelu": (
        lambda f, w: write_sparsify(f, w, "jumprelu"),
        lambda x, w: ref_jumprelu(x, w, center=True),
    ),
    "sparsify-transcoder": (
        lambda f, w: write_sparsify(f, w, "topk", transcode=True),
        lambda x, w: ref_topk(x, w, 6, center=False),
    ),
    "saelens-standard": (
        lambda f, w: write_saelens(f, w, "standard"),
        lambda x, w: ref_relu(x, w, center=True),
    ),
    "saelens-standard-nocenter": (
        lambda f, w: write_saelens(f, w, "standard", apply_b_dec=False),
        lambda x, w: ref_relu(x, w, center=False),
    ),
    "saelens-jumprelu": (
        lambda f, w: write_saelens(f, w, "jumprelu", apply_b_dec=False),
        lambda x, w: ref_jumprelu(x, w),
    ),
    "saelens-topk": (
        lambda f, w: write_saelens(f, w, "topk"),
        lambda x, w: ref_topk(x, w, 6, center=True),
    ),
    "gemma-scope": (write_gemma_scope, lambda x, w: ref_jumprelu(x, w)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_format_encodes_like_its_reference(tmp_path: Path, case: str) -> None:
    write, reference = CASES[case]
    w = random_weights()
    write(tmp_path / "layers.3", w)
    coder = load_sparse_models(str(tmp_path), ["layers.3"])["layers.3"]
    x = inputs()
    expected = reference(x, w)
    assert (expected > 0).sum() > 0
    torch.testing.assert_close(coder.encode(x), expected, rtol=1e-5, atol=1e-5)
    # Decoding is the same for every format.
    torch.testing.assert_close(coder.decode(expected), expected @ w["W_dec"] + w["b_dec"])
    assert coder.transcoder == (case == "sparsify-transcoder")


@pytest.mark.parametrize("case", ["sparsify-topk", "sparsify-jumprelu", "saelens-standard"])
def test_encode_sparse_equals_nonzeros_of_encode(tmp_path: Path, case: str) -> None:
    CASES[case][0](tmp_path / "hp", random_weights(3))
    coder = load_sparse_models(str(tmp_path), ["hp"])["hp"]
    x = inputs(200, seed=5)
    dense = coder.encode(x)
    rows, latents, values = coder.encode_sparse(x)
    assert rows.dtype == latents.dtype == torch.long
    rebuilt = torch.zeros_like(dense)
    rebuilt[rows, latents] = values
    torch.testing.assert_close(rebuilt, dense)
    assert len(values) == int((dense != 0).sum())
    assert (values > 0).all()


def test_single_model_folder_serves_one_hookpoint(tmp_path: Path) -> None:
    w = random_weights()
    write_gemma_scope(tmp_path, w)  # params.npz directly in the given folder
    coder = load_sparse_models(str(tmp_path), ["layers.7"])["layers.7"]
    torch.testing.assert_close(coder.encode(inputs()), ref_jumprelu(inputs(), w))


def test_conftest_sae_loads(tiny_sae_dir: Path) -> None:
    coder = load_sparse_models(str(tiny_sae_dir), ["layers.1"])["layers.1"]
    assert (coder.d_in, coder.num_latents, coder.k, coder.activation) == (
        TINY_HIDDEN,
        128,
        8,
        "topk",
    )
    acts = coder.encode(torch.randn(10, TINY_HIDDEN))
    assert ((acts > 0).sum(dim=1) <= 8).all()


def test_missing_hookpoint_lists_available(tmp_path: Path) -> None:
    write_sparsify_sae(tmp_path, "layers.1")
    write_sparsify_sae(tmp_path, "layers.2")
    with pytest.raises(
        UserError, match=r"--hookpoints: .*'layers\.9'.*available: layers\.1, layers\.2"
    ):
        load_sparse_models(str(tmp_path), ["layers.1", "layers.9"])


def test_missing_local_path_names_sparse_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--sparse_model"):
        load_sparse_models(str(tmp_path / "nope"), ["layers.1"])


def test_unreachable_hub_names_sparse_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="--sparse_model: cannot fetch 'no-such-org/no-such-sae'"):
        load_sparse_models("no-such-org/no-such-sae", ["layers.1"], token="hf_secret123")


def test_token_never_in_hub_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_sparse_models("no-such-org/no-such-sae", ["layers.1"], token="hf_secret123")
    assert "hf_secret123" not in str(info.value)


def test_check_dimensions(tiny_sae_dir: Path) -> None:
    coder = load_sparse_models(str(tiny_sae_dir), ["layers.1"])["layers.1"]
    check_dimensions(coder, TINY_HIDDEN, "layers.1")
    with pytest.raises(UserError, match=r"--sparse_model: .*'layers\.1'.*64.*576"):
        check_dimensions(coder, 576, "layers.1")


def test_dtype_and_device_are_applied(tiny_sae_dir: Path) -> None:
    coder = load_sparse_models(str(tiny_sae_dir), ["layers.1"], dtype=torch.bfloat16)["layers.1"]
    assert coder.W_enc.dtype == torch.bfloat16
    acts = coder.encode(torch.randn(4, TINY_HIDDEN))  # float32 input is cast
    assert acts.dtype == torch.bfloat16


def test_topk_constructor_validates_k() -> None:
    with pytest.raises(ValueError, match="k"):
        SparseCoder(4, 8, activation="topk", k=None)


# ------------------------------------------------------------------ SAELens, against its formulas
# SAELens (sae_lens/saes/sae.py, topk_sae.py, transcoder.py; 6.x) documents and computes:
#   sae_in  = norm_in(x) - b_dec * apply_b_dec_to_input        (apply_b_dec_to_input defaults True)
#   hidden  = sae_in @ W_enc + b_enc
#   TopK:     hidden * ||W_dec[i]|| when rescale_acts_by_decoder_norm, then top-k, then relu
#   norm_in:  constant_norm_rescale -> x * sqrt(d_in) / ||x||
#             layer_norm            -> (x - mean) / (std + 1e-5)   (torch's std, over d_in)
#             expected_average_only_in -> folded: W_enc * s, b_dec / s, W_dec / s, i.e. the SAE
#                                         encodes s * x for the stored scaling factor s
#   transcoders never subtract b_dec (it has d_out entries).
def saelens_cfg(folder: Path) -> dict:
    return json.loads((folder / "cfg.json").read_text())


def edit_cfg(folder: Path, **changes) -> None:
    cfg = saelens_cfg(folder)
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))


def load_one(folder: Path, hookpoint: str = "layers.3") -> SparseCoder:
    return load_sparse_models(str(folder.parent), [hookpoint])[hookpoint]


def ref_saelens_topk(x, w, k, *, center=True, rescale=False):
    pre = (x - w["b_dec"] if center else x) @ w["W_enc"].T + w["b_enc"]
    if rescale:
        pre = pre * w["W_dec"].norm(dim=1)
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, values.relu())


def test_saelens_apply_b_dec_defaults_to_true_when_missing(tmp_path: Path) -> None:
    w = random_weights()
    folder = tmp_path / "layers.3"
    write_saelens(folder, w, "standard")
    edit_cfg(folder, apply_b_dec_to_input=...)
    coder = load_one(folder)
    assert coder.center_input
    torch.testing.assert_close(coder.encode(inputs()), ref_relu(inputs(), w, center=True))
    assert not torch.allclose(coder.encode(inputs()), ref_relu(inputs(), w, center=False))


@pytest.mark.parametrize("rescale", [True, False])
def test_saelens_topk_rescale_acts_by_decoder_norm(tmp_path: Path, rescale: bool) -> None:
    w = random_weights(2)
    w["W_dec"] = w["W_dec"] * torch.linspace(0.2, 3.0, L)[:, None]  # unequal decoder norms
    folder = tmp_path / "layers.3"
    write_saelens(folder, w, "topk", k=6)
    edit_cfg(folder, rescale_acts_by_decoder_norm=rescale)
    coder = load_one(folder)
    x = inputs()
    expected = ref_saelens_topk(x, w, 6, rescale=rescale)
    torch.testing.assert_close(coder.encode(x), expected, rtol=1e-5, atol=1e-5)
    other = ref_saelens_topk(x, w, 6, rescale=not rescale)
    assert not torch.allclose(coder.encode(x), other, atol=1e-3)
    # Decoding gives SAELens's reconstruction: (acts / ||W_dec||) @ W_dec + b_dec when rescaled.
    scale = w["W_dec"].norm(dim=1) if rescale else torch.ones(L)
    torch.testing.assert_close(
        coder.decode(coder.encode(x)), (expected / scale) @ w["W_dec"] + w["b_dec"]
    )


def test_saelens_constant_norm_rescale(tmp_path: Path) -> None:
    w = random_weights(4)
    folder = tmp_path / "layers.3"
    write_saelens(folder, w, "standard")
    edit_cfg(folder, normalize_activations="constant_norm_rescale")
    x = inputs() * 7.0
    normed = x * D**0.5 / x.norm(dim=-1, keepdim=True)
    coder = load_one(folder)
    torch.testing.assert_close(coder.encode(x), ref_relu(normed, w, center=True))
    # forward undoes the rescaling on the way out
    expected_out = (ref_relu(normed, w, center=True) @ w["W_dec"] + w["b_dec"]) / (
        D**0.5 / x.norm(dim=-1, keepdim=True)
    )
    torch.testing.assert_close(coder(x), expected_out)


def test_saelens_layer_norm(tmp_path: Path) -> None:
    w = random_weights(5)
    folder = tmp_path / "layers.3"
    write_saelens(folder, w, "standard", apply_b_dec=False)
    edit_cfg(folder, normalize_activations="layer_norm")
    x = inputs() * 3.0 + 2.0
    centred = x - x.mean(dim=-1, keepdim=True)
    normed = centred / (centred.std(dim=-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(load_one(folder).encode(x), ref_relu(normed, w, center=False))


@pytest.mark.parametrize("where", ["scaler_file", "cfg_key", "legacy_bool"])
def test_saelens_expected_average_only_in_uses_stored_factor(tmp_path: Path, where: str) -> None:
    w = random_weights(6)
    folder = tmp_path / "layers.3"
    write_saelens(folder, w, "standard")
    factor = 0.37
    if where == "scaler_file":
        edit_cfg(folder, normalize_activations="expected_average_only_in")
        (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": factor}))
    elif where == "cfg_key":
        edit_cfg(folder, normalize_activations="expected_average_only_in")
        edit_cfg(folder, norm_scaling_factor=factor)
    else:  # pre-6.0 SAELens wrote a bool
        edit_cfg(folder, normalize_activations=True, norm_scaling_factor=factor)
    coder = load_one(folder)
    x = inputs()
    torch.testing.assert_close(coder.encode(x), ref_relu(factor * x, w, center=True))
    # and the reconstruction comes back in the input's own scale
    torch.testing.assert_close(
        coder.decode(coder.encode(x)),
        (ref_relu(factor * x, w, center=True) @ w["W_dec"] + w["b_dec"]) / factor,
    )


def test_saelens_expected_average_without_factor_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "layers.3"
    write_saelens(folder, random_weights(), "standard")
    edit_cfg(folder, normalize_activations="expected_average_only_in")
    with pytest.raises(UserError, match=r"--sparse_model: .*scaling factor"):
        load_one(folder)


def test_saelens_unknown_normalisation_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "layers.3"
    write_saelens(folder, random_weights(), "standard")
    edit_cfg(folder, normalize_activations="covariance_whitening")
    with pytest.raises(UserError, match=r"--sparse_model: .*normalize_activations"):
        load_one(folder)


def write_saelens_transcoder(folder: Path, w, architecture: str, skip=None, hook=None):
    folder.mkdir(parents=True, exist_ok=True)
    t = {"W_enc": w["W_enc"].T, "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if "jumprelu" in architecture:
        t["threshold"] = w["threshold"]
    if skip is not None:
        t["W_skip"] = skip
    save_file(
        {key: v.contiguous() for key, v in t.items()}, str(folder / "sae_weights.safetensors")
    )
    cfg = {
        "architecture": architecture,
        "d_in": D,
        "d_sae": L,
        "d_out": w["W_dec"].shape[1],
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"hook_name": hook or "blocks.3.ln2.hook_normalized"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "architecture",
    ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"],
)
def test_saelens_transcoders(tmp_path: Path, architecture: str) -> None:
    w = random_weights(7)  # d_out == d_in: only the architecture says it is a transcoder
    skip = torch.randn(D, D) * 0.1 if "skip" in architecture else None
    folder = tmp_path / "layers.3.mlp"
    write_saelens_transcoder(folder, w, architecture, skip)
    coder = load_one(folder, "layers.3.mlp")
    assert coder.transcoder and not coder.center_input
    assert coder.input_site == "mlp_input"
    x = inputs()
    ref = ref_jumprelu(x, w) if "jumprelu" in architecture else ref_relu(x, w, center=False)
    torch.testing.assert_close(coder.encode(x), ref)
    out = ref @ w["W_dec"] + w["b_dec"] + (x @ skip.T if skip is not None else 0)
    torch.testing.assert_close(coder(x), out)


def test_saelens_transcoder_with_centring_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "layers.3.mlp"
    write_saelens_transcoder(folder, random_weights(), "transcoder")
    edit_cfg(folder, apply_b_dec_to_input=True)
    with pytest.raises(UserError, match="apply_b_dec_to_input"):
        load_one(folder, "layers.3.mlp")


def test_saelens_unsupported_architecture_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "layers.3"
    write_saelens(folder, random_weights(), "standard")
    edit_cfg(folder, architecture="gated")
    with pytest.raises(UserError, match=r"--sparse_model: SAELens architecture 'gated'"):
        load_one(folder)


# ------------------------------------------------------------------------ Gemma Scope transcoders
def test_gemma_scope_transcoder_reads_the_mlp_input(tmp_path: Path) -> None:
    w = random_weights(8)
    folder = tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_3" / "width_16k" / "average_l0_9"
    write_gemma_scope(folder, w)
    coder = load_sparse_models(str(folder), ["layers.3.mlp"])["layers.3.mlp"]
    assert coder.transcoder and coder.input_site == "mlp_input"
    torch.testing.assert_close(coder.encode(inputs()), ref_jumprelu(inputs(), w))
    # A whole decoder layer's input is the residual stream, not the MLP input.
    with pytest.raises(
        UserError, match=r"--hookpoints: .*'layers\.3'.*MLP input.*'layers\.3\.mlp'"
    ):
        load_sparse_models(str(folder), ["layers.3"])


def test_gemma_scope_sae_is_not_a_transcoder(tmp_path: Path) -> None:
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_9"
    write_gemma_scope(folder, random_weights())
    coder = load_sparse_models(str(folder), ["layers.3"])["layers.3"]
    assert not coder.transcoder and coder.input_site == ""
    # a folder far above the model's own layout that mentions transcoders does not count
    deep = tmp_path / "transcoder-study" / "runs" / "a" / "b" / "c" / "res" / "layer_3"
    write_gemma_scope(deep, random_weights())
    assert not load_sparse_models(str(deep), ["layers.3"])["layers.3"].transcoder


# --------------------------------------------------------------------- sparsify skip connections
@pytest.mark.parametrize("transcode", [True, False])
def test_sparsify_skip_connection_is_a_transcoder(tmp_path: Path, transcode: bool) -> None:
    w = random_weights(9)
    folder = tmp_path / "layers.3.mlp"
    write_sparsify(folder, w, "topk", transcode=transcode)
    skip = torch.randn(D, D) * 0.1
    t = {
        "encoder.weight": w["W_enc"],
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
        "W_skip": skip,
    }
    save_file({key: v.contiguous() for key, v in t.items()}, str(folder / "sae.safetensors"))
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["skip_connection"] = True
    (folder / "cfg.json").write_text(json.dumps(cfg))
    coder = load_one(folder, "layers.3.mlp")
    assert coder.transcoder
    # sparsify centres on b_dec exactly when it does not transcode
    assert coder.center_input == (not transcode)
    x = inputs()
    acts = ref_topk(x, w, 6, center=not transcode)
    torch.testing.assert_close(coder.encode(x), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder(x), acts @ w["W_dec"] + w["b_dec"] + x @ skip.T)


# ------------------------------------------------------------ against the sae-lens package itself
def _saelens_case(sl, name: str):
    """(SAE class, config) of one SAELens inference architecture, d_in=D, d_sae=L."""
    cases = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig, {}),
        "standard-nocenter": (
            sl.StandardSAE,
            sl.StandardSAEConfig,
            {"apply_b_dec_to_input": False},
        ),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig, {"k": 6}),
        "topk-rescaled": (
            sl.TopKSAE,
            sl.TopKSAEConfig,
            {"k": 6, "rescale_acts_by_decoder_norm": True},
        ),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig, {}),
        "constant-norm": (
            sl.StandardSAE,
            sl.StandardSAEConfig,
            {"normalize_activations": "constant_norm_rescale"},
        ),
        "layer-norm": (
            sl.StandardSAE,
            sl.StandardSAEConfig,
            {"normalize_activations": "layer_norm"},
        ),
        "transcoder": (
            sl.Transcoder,
            sl.TranscoderConfig,
            {"d_out": 24, "apply_b_dec_to_input": False},
        ),
        "skip-transcoder": (
            sl.SkipTranscoder,
            sl.SkipTranscoderConfig,
            {"d_out": D, "apply_b_dec_to_input": False},
        ),
        "jumprelu-transcoder": (
            sl.JumpReLUTranscoder,
            sl.JumpReLUTranscoderConfig,
            {"d_out": D, "apply_b_dec_to_input": False},
        ),
    }
    cls, cfg_cls, extra = cases[name]
    return cls, cfg_cls(d_in=D, d_sae=L, **extra)


def _randomise_saelens(sae, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            scale = 0.3 if name == "threshold" else 1.0 / param.shape[0] ** 0.5
            value = torch.randn(param.shape, generator=g) * scale
            param.copy_(value.abs() if name == "threshold" else value)
        # unequal decoder norms, so that decoder-norm rescaling changes the top-k
        sae.W_dec.mul_(torch.linspace(0.2, 3.0, L)[:, None])


SAELENS_CASES = [
    "standard",
    "standard-nocenter",
    "topk",
    "topk-rescaled",
    "jumprelu",
    "constant-norm",
    "layer-norm",
    "transcoder",
    "skip-transcoder",
    "jumprelu-transcoder",
]


@pytest.mark.parametrize("case", SAELENS_CASES)
def test_encoding_matches_the_saelens_package(tmp_path: Path, case: str) -> None:
    sl = pytest.importorskip("sae_lens")
    cls, cfg = _saelens_case(sl, case)
    sae = cls(cfg)
    _randomise_saelens(sae, seed=len(case))
    folder = tmp_path / "layers.3"
    sae.save_model(folder)
    x = inputs(128, seed=11) * 4.0 + 1.0
    with torch.no_grad():
        expected = sae.encode(x)
        expected_out = sae(x)
    coder = load_one(folder)
    torch.testing.assert_close(coder.encode(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder(x), expected_out, rtol=1e-4, atol=1e-4)
    assert (expected > 0).any()
    assert coder.transcoder == ("transcoder" in case)


def test_missing_apply_b_dec_matches_the_saelens_package(tmp_path: Path) -> None:
    sl = pytest.importorskip("sae_lens")
    cls, cfg = _saelens_case(sl, "standard-nocenter")
    sae = cls(cfg)
    _randomise_saelens(sae, seed=3)
    folder = tmp_path / "layers.3"
    sae.save_model(folder)
    edit_cfg(folder, apply_b_dec_to_input=...)
    reloaded = sl.SAE.load_from_disk(folder)  # SAELens's own default for the missing key
    assert reloaded.cfg.apply_b_dec_to_input is True
    x = inputs(64, seed=12)
    with torch.no_grad():
        expected = reloaded.encode(x)
    torch.testing.assert_close(load_one(folder).encode(x), expected, rtol=1e-5, atol=1e-5)


def test_expected_average_scaling_matches_the_saelens_package(tmp_path: Path) -> None:
    sl = pytest.importorskip("sae_lens")
    cls, cfg = _saelens_case(sl, "standard")
    cfg.normalize_activations = "expected_average_only_in"
    sae = cls(cfg)
    _randomise_saelens(sae, seed=4)
    folder = tmp_path / "layers.3"
    sae.save_model(folder)
    factor = 0.61
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": factor}))
    sae.fold_activation_norm_scaling_factor(factor)  # what SAELens does with a known factor
    x = inputs(64, seed=13) * 5.0
    with torch.no_grad():
        expected, expected_out = sae.encode(x), sae(x)
    coder = load_one(folder)
    torch.testing.assert_close(coder.encode(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder(x), expected_out, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------- random-weights control
def _load_random(root: Path, hookpoints: list[str], seed: int | None) -> dict[str, SparseCoder]:
    return load_sparse_models(str(root), hookpoints, random_seed=seed)


def test_random_weights_keep_architecture_shapes_norms_and_biases(tmp_path: Path) -> None:
    write_sparsify_sae(tmp_path, "layers.1", seed=3)
    real = _load_random(tmp_path, ["layers.1"], None)["layers.1"]
    rnd = _load_random(tmp_path, ["layers.1"], 22)["layers.1"]
    assert (rnd.activation, rnd.k, rnd.num_latents, rnd.d_in, rnd.d_out) == (
        real.activation,
        real.k,
        real.num_latents,
        real.d_in,
        real.d_out,
    )
    for name in ("W_enc", "W_dec"):
        a, b = getattr(real, name), getattr(rnd, name)
        assert a.shape == b.shape
        torch.testing.assert_close(b.norm(dim=1), a.norm(dim=1))
        # the directions are new: |cos| between a real row and its replacement is small
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1).abs().mean()
        assert cos < 0.25
    torch.testing.assert_close(rnd.b_enc, real.b_enc)
    torch.testing.assert_close(rnd.b_dec, real.b_dec)


def test_random_weights_are_seeded_and_differ_by_hookpoint(tmp_path: Path) -> None:
    write_sparsify_sae(tmp_path, "layers.1", seed=3)
    write_sparsify_sae(tmp_path, "layers.2", seed=3)  # the same real weights at both
    first = _load_random(tmp_path, ["layers.1", "layers.2"], 22)
    again = _load_random(tmp_path, ["layers.1"], 22)["layers.1"]
    other = _load_random(tmp_path, ["layers.1"], 23)["layers.1"]
    torch.testing.assert_close(first["layers.1"].W_enc, again.W_enc)
    assert not torch.allclose(first["layers.1"].W_enc, other.W_enc)
    assert not torch.allclose(first["layers.1"].W_enc, first["layers.2"].W_enc)


def test_random_topk_model_still_fires_k_latents_spread_over_many(tmp_path: Path) -> None:
    write_sparsify_sae(tmp_path, "layers.1", k=8, seed=3)
    rnd = _load_random(tmp_path, ["layers.1"], 5)["layers.1"]
    x = torch.randn(2000, TINY_HIDDEN, generator=torch.Generator().manual_seed(0))
    acts = rnd.encode(x)
    assert ((acts > 0).sum(dim=1) == 8).all()
    assert int(((acts > 0).sum(dim=0) > 0).sum()) > 0.8 * rnd.num_latents


def test_random_jumprelu_model_keeps_thresholds_and_fires(tmp_path: Path) -> None:
    w = random_weights(10)
    write_gemma_scope(tmp_path / "layers.3", w)
    rnd = _load_random(tmp_path, ["layers.3"], 1)["layers.3"]
    torch.testing.assert_close(rnd.threshold, w["threshold"])
    assert (rnd.encode(inputs(500)) > 0).any()


def test_random_weights_key_the_cache_apart(tmp_path: Path) -> None:
    from autointerp_full.cache.key import cache_key
    from autointerp_full.config import CACHE_KEY_FIELDS, RunConfig

    assert "sparse_weights" in CACHE_KEY_FIELDS
    write_sparsify_sae(tmp_path, "layers.1")
    base = {"model": "m", "sparse_model": str(tmp_path), "hookpoints": ["layers.1"]}
    real = RunConfig(**base)
    rnd = RunConfig(**base, random_sparse_model=True)
    rnd_other_seed = RunConfig(**base, random_sparse_model=True, seed=23)
    real_other_seed = RunConfig(**base, seed=23)
    keys = [cache_key(c, "layers.1") for c in (real, rnd, rnd_other_seed, real_other_seed)]
    assert keys[0] != keys[1] != keys[2]
    assert keys[0] == keys[3]  # the seed alone does not change a trained model's cache
    assert (real.random_sparse_seed, rnd.random_sparse_seed) == (None, 22)


def test_cache_of_the_random_control_is_full_and_differs(
    tiny_model_dir: Path, tiny_corpus: Path, tiny_sae_dir: Path, tmp_path: Path
) -> None:
    """The whole cache stage runs on the random weights: every token still fires k latents,
    the latents fire about as often as the real ones (the biases are calibrated on the first
    rows; the fixture's uncentred inputs and large biases would otherwise pick the same few
    latents everywhere), and the cache is not the real model's."""
    from autointerp_full.cache import build_cache
    from autointerp_full.cache.reader import CacheReader
    from autointerp_full.config import RunConfig

    def run(random: bool, out: Path) -> CacheReader:
        cfg = RunConfig(
            model=str(tiny_model_dir),
            sparse_model=str(tiny_sae_dir),
            hookpoints=["layers.1"],
            dataset_repo=str(tiny_corpus),
            dataset_split="train",
            n_tokens=1024,
            cache_ctx_len=32,
            batch_size=8,
            n_splits=2,
            device="cpu",
            pipeline_num_proc=1,
            random_sparse_model=random,
        )
        return CacheReader(build_cache(cfg, out)["layers.1"])

    real, rnd = run(False, tmp_path / "real"), run(True, tmp_path / "random")
    assert rnd.config["sparse_weights"] == "random (seed 22)"
    assert real.config["sparse_weights"] == "trained"
    counts_real, counts_rnd = real.firing_counts(), rnd.firing_counts()
    n_tokens = rnd.tokens().numel()
    assert int(counts_rnd.sum()) == 8 * n_tokens  # k = 8 on every token
    fired_real, fired_rnd = int((counts_real > 0).sum()), int((counts_rnd > 0).sum())
    assert fired_rnd >= 0.7 * fired_real
    rates = torch.stack([counts_real.float(), counts_rnd.float()])
    assert torch.corrcoef(rates)[0, 1] > 0.8
    assert not torch.equal(counts_real, counts_rnd)
    # where a latent fires is the random control's own, not the real model's
    middling = [
        i for i in range(rnd.num_latents) if 0.1 * n_tokens < counts_real[i] < 0.9 * n_tokens
    ]
    assert middling
    assert any(not torch.equal(real.latent(i)[0], rnd.latent(i)[0]) for i in middling)


def _offset_inputs(n: int, seed: int) -> torch.Tensor:
    """Inputs with a large common mean, as a language model's residual stream has."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(D, generator=g) * 3.0
    return mean + torch.randn(n, D, generator=torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_calibrated_random_control_fires_as_often_as_the_real_model(activation: str) -> None:
    g = torch.Generator().manual_seed(0)
    real = SparseCoder(D, L, activation=activation, k=6 if activation == "topk" else None)
    with torch.no_grad():
        real.W_enc.copy_(torch.randn(L, D, generator=g) / D**0.5)
        calib = _offset_inputs(4000, 1)
        pre = real.pre_acts(calib)
        wanted = torch.linspace(0.002, 0.3, L)  # firing rates from rare to common
        real.b_enc.sub_(pre.quantile(1 - wanted, dim=0).diagonal())
        if activation == "jumprelu":
            real.threshold.copy_(torch.rand(L, generator=g) * 0.5)
    held_out = _offset_inputs(4000, 1)[2000:]
    train = calib[:2000]
    rates, level = firing_rates(real, train)
    control = randomize_weights(copy.deepcopy(real), 3)
    uncalibrated = (control.encode(held_out) > 0).float().mean(0)
    match_firing_rates(control, train, rates, level)
    calibrated = (control.encode(held_out) > 0).float().mean(0)
    target = (real.encode(held_out) > 0).float().mean(0)
    err_cal = (calibrated - target).abs().mean()
    err_raw = (uncalibrated - target).abs().mean()
    assert err_cal < 0.02, err_cal
    assert err_cal < 0.5 * err_raw
    if activation == "topk":
        assert ((control.encode(held_out) > 0).sum(dim=1) <= 6).all()


def test_make_random_controls_is_deterministic(tiny_model_dir: Path, tiny_sae_dir: Path) -> None:
    from autointerp_full import models

    model, _ = models.load_subject_model(str(tiny_model_dir), device="cpu", dtype="float32")
    tokens = torch.randint(3, 200, (40, 32), generator=torch.Generator().manual_seed(0))
    made = []
    for _ in range(2):
        coders = load_sparse_models(str(tiny_sae_dir), ["layers.1"])
        make_random_controls(coders, 22, model, tokens, models.forward_to_hooks)
        made.append(coders["layers.1"])
    torch.testing.assert_close(made[0].b_enc, made[1].b_enc, rtol=0, atol=0)
    torch.testing.assert_close(made[0].W_enc, made[1].W_enc, rtol=0, atol=0)
    # the directions are those load_sparse_models(random_seed=...) gives (neighbours use them)
    plain = load_sparse_models(str(tiny_sae_dir), ["layers.1"], random_seed=22)["layers.1"]
    torch.testing.assert_close(plain.W_enc, made[0].W_enc, rtol=0, atol=0)
