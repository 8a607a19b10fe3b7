"""Sparse-model loaders and encoders, checked against plain reference formulas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_HIDDEN, write_sparsify_sae
from safetensors.torch import save_file

from autointerp_full.errors import UserError
from autointerp_full.sparse import SparseCoder, check_dimensions, load_sparse_models

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
