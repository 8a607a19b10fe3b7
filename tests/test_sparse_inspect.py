"""Sparse-model files read without weights: shapes, layouts, corrupt files, fingerprints."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_HIDDEN, TINY_LATENTS, write_sparsify_sae
from safetensors.torch import save_file

from autointerp_full import sparse_inspect
from autointerp_full.errors import UserError
from autointerp_full.sparse import load_sparse_models
from autointerp_full.sparse_inspect import inspect_sparse_model, sparse_fingerprint

D, L = 16, 40


def write_saelens(folder: Path, d_out: int = D) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "W_enc": torch.randn(D, L, generator=g),
            "b_enc": torch.zeros(L),
            "W_dec": torch.randn(L, d_out, generator=g),
            "b_dec": torch.zeros(d_out),
        },
        str(folder / "sae_weights.safetensors"),
    )
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D}))
    return folder


def write_gemma_scope(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(
        folder / "params.npz",
        W_enc=rng.standard_normal((D, L)).astype(np.float32),
        W_dec=rng.standard_normal((L, D)).astype(np.float32),
        b_enc=np.zeros(L, np.float32),
        b_dec=np.zeros(D, np.float32),
        threshold=np.full(L, 0.1, np.float32),
    )
    return folder


def test_sparsify_shapes_match_the_loader(tiny_sae_dir: Path) -> None:
    info = inspect_sparse_model(str(tiny_sae_dir), ["layers.1"])["layers.1"]
    coder = load_sparse_models(str(tiny_sae_dir), ["layers.1"])["layers.1"]
    assert (info.d_in, info.num_latents, info.d_out) == (TINY_HIDDEN, TINY_LATENTS, TINY_HIDDEN)
    assert (coder.d_in, coder.num_latents, coder.transcoder) == (
        info.d_in,
        info.num_latents,
        info.transcoder,
    )
    assert info.layout == "sparsify" and info.kind == "sae" and info.activation == "topk"
    assert info.cfg_file == str(tiny_sae_dir / "layers.1" / "cfg.json")
    assert info.weights_file == str(tiny_sae_dir / "layers.1" / "sae.safetensors")


@pytest.mark.parametrize("layout", ["saelens", "gemma_scope"])
def test_other_layouts_match_the_loader(tmp_path: Path, layout: str) -> None:
    writer = write_saelens if layout == "saelens" else write_gemma_scope
    writer(tmp_path / "blocks.3")
    info = inspect_sparse_model(str(tmp_path), ["blocks.3"])["blocks.3"]
    coder = load_sparse_models(str(tmp_path), ["blocks.3"])["blocks.3"]
    assert info.layout == layout
    assert (info.d_in, info.num_latents, info.d_out) == (coder.d_in, coder.num_latents, D)


def test_saelens_transcoder_and_single_model_folder(tmp_path: Path) -> None:
    write_saelens(tmp_path, d_out=D + 4)  # the root holds one model: it serves one hookpoint
    info = inspect_sparse_model(str(tmp_path), ["layers.5.mlp"])["layers.5.mlp"]
    assert info.transcoder and info.d_out == D + 4 and info.folder == str(tmp_path)
    with pytest.raises(UserError, match="^--hookpoints: .* holds a single sparse model"):
        inspect_sparse_model(str(tmp_path), ["a", "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="^--sparse_model: .* no sparse model in a known layout"):
        inspect_sparse_model(str(tmp_path / "empty"), ["a"])


def test_missing_hookpoint_lists_what_is_there(tiny_sae_dir: Path) -> None:
    with pytest.raises(UserError, match=r"^--hookpoints: .*'layers\.7'.*available: layers\.1$"):
        inspect_sparse_model(str(tiny_sae_dir), ["layers.1", "layers.7"])
    with pytest.raises(UserError, match="^--hookpoints: give at least one"):
        inspect_sparse_model(str(tiny_sae_dir), [])
    with pytest.raises(UserError, match="^--sparse_model: no such directory"):
        inspect_sparse_model(str(tiny_sae_dir / "absent"), ["layers.1"])


@pytest.fixture
def sae(tmp_path: Path) -> Path:
    return write_sparsify_sae(tmp_path / "sae", "layers.1") / "layers.1"


def header_of(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n])


def rewrite_header(path: Path, header: dict) -> None:
    n, _ = header_of(path)
    data = path.read_bytes()
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "describes .* the file holds"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8), "describes .* the file holds"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "claims .* bytes but the file has 100"),
        (lambda p: p.write_bytes(b"\1\0"), "shorter than a safetensors header"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "not valid JSON"),
        (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "not a JSON object"),
    ],
)
def test_corrupt_safetensors_is_one_line(sae: Path, damage, message: str) -> None:
    damage(sae / "sae.safetensors")
    with pytest.raises(UserError, match=f"^--sparse_model: .*sae.safetensors .*{message}"):
        inspect_sparse_model(str(sae.parent), ["layers.1"])


def test_offsets_that_do_not_fit_the_shape(sae: Path) -> None:
    path = sae / "sae.safetensors"
    _, header = header_of(path)
    header["b_dec"]["shape"] = [TINY_HIDDEN + 1]
    rewrite_header(path, header)
    with pytest.raises(UserError, match="tensor 'b_dec' has offsets that do not fit"):
        inspect_sparse_model(str(sae.parent), ["layers.1"])


@pytest.mark.parametrize(
    "cfg, message",
    [
        ("{oops", "cfg.json is not valid JSON"),
        ("3", "cfg.json should hold a JSON object"),
        (json.dumps({"num_latents": 7, "k": 2}), "says num_latents=7 but the weights have 128"),
        (json.dumps({"activation": "gelu", "k": 2}), "activation 'gelu' .* is not supported"),
        (json.dumps({"k": 0}), "needs 0 < k <= num_latents"),
    ],
)
def test_bad_cfg_json_is_one_line(sae: Path, cfg: str, message: str) -> None:
    (sae / "cfg.json").write_text(cfg)
    with pytest.raises(UserError, match=f"^--sparse_model: .*{message}"):
        inspect_sparse_model(str(sae.parent), ["layers.1"])


def test_truncated_npz_is_one_line(tmp_path: Path) -> None:
    folder = write_gemma_scope(tmp_path / "gs")
    data = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="^--sparse_model: .*params.npz is corrupt or truncated"):
        inspect_sparse_model(str(tmp_path), ["gs"])


def test_fingerprint_follows_content_not_path(tmp_path: Path, sae: Path) -> None:
    first = sparse_fingerprint(str(sae.parent), "layers.1")
    assert first == sparse_fingerprint(str(sae.parent), "layers.1")
    copy = tmp_path / "copy"
    shutil.copytree(sae.parent, copy)
    assert sparse_fingerprint(str(copy), "layers.1") == first
    # Retrained: same shapes and cfg, other weights -> same header, other fingerprint.
    before = header_of(sae / "sae.safetensors")
    write_sparsify_sae(sae.parent, "layers.1", seed=1)
    assert header_of(sae / "sae.safetensors") == before
    retrained = sparse_fingerprint(str(sae.parent), "layers.1")
    assert retrained != first
    cfg = json.loads((sae / "cfg.json").read_text())
    (sae / "cfg.json").write_text(json.dumps({**cfg, "k": 4}))
    assert sparse_fingerprint(str(sae.parent), "layers.1") not in (first, retrained)


def test_npz_fingerprint_changes_with_the_weights(tmp_path: Path) -> None:
    folder = write_gemma_scope(tmp_path / "gs")
    first = sparse_fingerprint(str(tmp_path), "gs")
    with np.load(folder / "params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["W_enc"] = arrays["W_enc"] + 1
    np.savez(folder / "params.npz", **arrays)
    assert sparse_fingerprint(str(tmp_path), "gs") != first


def test_no_torch_needed(tiny_sae_dir: Path) -> None:
    code = (
        "import sys; from autointerp_full.sparse_inspect import inspect_sparse_model as i; "
        f"print(i({str(tiny_sae_dir)!r}, ['layers.1'])['layers.1'].num_latents); "
        "assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(TINY_LATENTS)


def test_hub_repo_is_read_through_the_api(monkeypatch: pytest.MonkeyPatch, sae: Path) -> None:
    """A hub repo: the listing, cfg.json and the tensor header come from huggingface_hub
    (a stand-in here: the hub is unreachable in tests); no weights are downloaded."""
    import huggingface_hub

    tensors = {
        name: SimpleNamespace(dtype=e["dtype"], shape=e["shape"])
        for name, e in header_of(sae / "sae.safetensors")[1].items()
        if name != "__metadata__"
    }
    asked: list[str] = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def list_repo_files(self, repo, token=None):
            return ["README.md", "layers.1/cfg.json", "layers.1/sae.safetensors"]

        def parse_safetensors_file_metadata(self, repo, filename, token=None):
            asked.append(filename)
            return SimpleNamespace(tensors=tensors)

        def get_paths_info(self, repo, paths, token=None):
            return [SimpleNamespace(lfs=SimpleNamespace(sha256="ab" * 32), blob_id="x")]

    def fake_download(repo, filename, token=None):
        assert filename == "layers.1/cfg.json", "only cfg.json may be downloaded"
        return str(sae / "cfg.json")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(sparse_inspect, "_HUB_MEMO", {})
    info = inspect_sparse_model("someone/some-sae", ["layers.1"])["layers.1"]
    assert sparse_fingerprint("someone/some-sae", "layers.1") == info.fingerprint
    assert (info.d_in, info.num_latents, info.layout) == (TINY_HIDDEN, TINY_LATENTS, "sparsify")
    assert info.weights_file == "someone/some-sae/layers.1/sae.safetensors"
    assert asked == ["layers.1/sae.safetensors"]
    with pytest.raises(UserError, match=r"^--hookpoints: .*'layers\.2'.*available: layers\.1"):
        inspect_sparse_model("someone/some-sae", ["layers.1", "layers.2"])


def test_unreachable_hub_names_the_flag() -> None:
    assert not sparse_inspect.is_local("nobody/no-sae")
    with pytest.raises(UserError, match="^--sparse_model: cannot fetch 'nobody/no-sae'"):
        inspect_sparse_model("nobody/no-sae", ["layers.1"])


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"architecture": "gated"}, "SAELens architecture 'gated'"),
        ({"normalize_activations": "sometimes"}, "normalize_activations='sometimes'"),
        ({"architecture": "jumprelu"}, "jumprelu model .* has no threshold"),
        ({"architecture": "skip_transcoder"}, "skip transcoder .* has no W_skip"),
        ({"normalize_activations": True}, "no scaling factor was found"),
    ],
)
def test_loader_config_checks_run_without_the_weights(tmp_path: Path, cfg, message) -> None:
    """sparse.check_config: what the loader would refuse, refused from cfg.json and shapes."""
    from autointerp_full.sparse import check_config, load_sparse_models

    folder = write_saelens(tmp_path / "blocks.3")
    (folder / "cfg.json").write_text(json.dumps({"d_in": D, **cfg}))
    info = inspect_sparse_model(str(tmp_path), ["blocks.3"])["blocks.3"]
    with pytest.raises(UserError, match=f"^--sparse_model: .*{message}"):
        check_config(info)
    with pytest.raises(UserError, match=f"^--sparse_model: .*{message}"):
        load_sparse_models(str(tmp_path), ["blocks.3"])  # the loader agrees


def test_config_check_passes_good_models_and_names_the_mlp_for_transcoders(
    tmp_path: Path, tiny_sae_dir: Path
) -> None:
    from autointerp_full.sparse import check_config

    check_config(inspect_sparse_model(str(tiny_sae_dir), ["layers.1"])["layers.1"])
    write_saelens(tmp_path / "a" / "blocks.3")
    check_config(inspect_sparse_model(str(tmp_path / "a"), ["blocks.3"])["blocks.3"])
    write_gemma_scope(tmp_path / "transcoders" / "layers.3")  # "transcoder" in the path
    info = inspect_sparse_model(str(tmp_path / "transcoders"), ["layers.3"])["layers.3"]
    with pytest.raises(UserError, match="^--hookpoints: .* give the MLP module"):
        check_config(info)
