"""Subject-model loading, hookpoint resolution and the truncated forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_HIDDEN, TINY_LAYERS

from autointerp_full.errors import UserError
from autointerp_full.models import (
    forward_to_hooks,
    fuse_rms_norms,
    hidden_size,
    hookpoint_path,
    load_subject_model,
    resolve_hookpoint,
    smollm2_gguf_path,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO_SAE = ROOT / "shared" / "demo_sae"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_subject_model(str(tiny_model_dir), device="cpu")


def ids(tokenizer, n_rows: int = 3, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, len(tokenizer), (n_rows, length), generator=g)


# ------------------------------------------------------------------------------------ loading
def test_load_local_dir_eval_no_grad_float32(tiny) -> None:
    model, tokenizer = tiny
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32  # auto on CPU
    assert tokenizer.pad_token is not None
    assert hidden_size(model) == TINY_HIDDEN


def test_explicit_dtype(tiny_model_dir: Path) -> None:
    model, _ = load_subject_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_local_path_names_param(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^--model: no such file or directory"):
        load_subject_model(str(tmp_path / "absent"))
    with pytest.raises(UserError, match="^--explainer_model: no such file"):
        load_subject_model(str(tmp_path / "absent.gguf"), param="explainer_model")


def test_unreachable_hub_id_names_param_and_hides_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        UserError, match="^--model: cannot load 'no-such-org/no-such-model'"
    ) as info:
        load_subject_model("no-such-org/no-such-model", device="cpu", token="hf_topsecret42")
    assert "hf_topsecret42" not in str(info.value)


def test_8bit_needs_cuda(tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="^--load_in_8bit: needs a CUDA GPU"):
        load_subject_model(str(tiny_model_dir), device="cpu", load_in_8bit=True)


def test_bad_dtype() -> None:
    with pytest.raises(UserError, match="--dtype"):
        load_subject_model("whatever/model", device="cpu", dtype="int4")


# --------------------------------------------------------------------------------- hookpoints
def test_resolve_hookpoint_under_wrappers(tiny) -> None:
    model, _ = tiny
    assert resolve_hookpoint(model, "layers.2") is model.model.layers[2]
    assert resolve_hookpoint(model, "layers.2.mlp") is model.model.layers[2].mlp
    assert resolve_hookpoint(model, "model.layers.0") is model.model.layers[0]
    assert hookpoint_path(model, "layers.3") == "model.layers.3"
    # GPT-2 spelling maps onto the same block list.
    assert resolve_hookpoint(model, "h.1") is model.model.layers[1]


def test_resolve_gpt2_style_block_names() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    assert resolve_hookpoint(model, "h.1") is model.transformer.h[1]
    assert resolve_hookpoint(model, "layers.0.mlp") is model.transformer.h[0].mlp


def test_unknown_hookpoint_lists_closest(tiny) -> None:
    model, _ = tiny
    with pytest.raises(UserError) as info:
        resolve_hookpoint(model, "layers.99")
    message = str(info.value)
    assert message.startswith("--hookpoints: unknown module 'layers.99'; closest: ")
    assert "layers.3" in message and "model." not in message
    with pytest.raises(UserError, match=r"closest: .*layers\.1\.mlp"):
        resolve_hookpoint(model, "layers.1.mpl")


# -------------------------------------------------------------------------- truncated forward
def test_fused_rms_norms_match_transformers(tiny, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    loaded, tokenizer = tiny  # the loader switches them
    assert sum("forward" in vars(m) for m in loaded.modules()) == 2 * TINY_LAYERS + 1
    model, plain = (AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)) for _ in "ab")
    with torch.no_grad():  # weights away from 1, so that a norm that ignored them would show
        for p in (*model.parameters(), *plain.parameters()):
            if p.dim() == 1:
                p.copy_(torch.linspace(0.5, 1.5, p.numel()))
    assert fuse_rms_norms(model) == 2 * TINY_LAYERS + 1  # two per layer and the final norm
    assert fuse_rms_norms(model) == 0  # already switched
    x = ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).logits, plain.eval()(x).logits)


def test_other_norm_formulas_are_left_alone() -> None:
    class GemmaStyleRMSNorm(torch.nn.Module):  # scales by 1 + weight
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(8))
            self.eps = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return x * (1.0 + self.weight)

    assert fuse_rms_norms(torch.nn.Sequential(GemmaStyleRMSNorm())) == 0


def test_forward_to_hooks_matches_full_forward(tiny) -> None:
    model, tokenizer = tiny
    x = ids(tokenizer)
    with torch.no_grad():
        full = model(input_ids=x, output_hidden_states=True).hidden_states
    got = forward_to_hooks(model, ["layers.0", "layers.2"], x)
    assert list(got) == ["layers.0", "layers.2"]
    # hidden_states[i + 1] is the output of decoder layer i (the last one is also normed).
    torch.testing.assert_close(got["layers.0"], full[1])
    torch.testing.assert_close(got["layers.2"], full[3])
    assert got["layers.2"].shape == (3, 12, TINY_HIDDEN)


def test_later_layers_and_head_never_run(tiny) -> None:
    model, tokenizer = tiny
    calls: dict[str, int] = {}
    watched = {f"layers.{i}": model.model.layers[i] for i in range(TINY_LAYERS)}
    watched["norm"] = model.model.norm
    watched["lm_head"] = model.lm_head
    handles = [
        module.register_forward_hook(
            lambda *_a, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
        for name, module in watched.items()
    ]
    try:
        forward_to_hooks(model, ["layers.1"], ids(tokenizer))
    finally:
        for h in handles:
            h.remove()
    assert calls == {"layers.0": 1, "layers.1": 1}
    # The hooks are removed afterwards: a normal forward still runs to the end.
    out = model(input_ids=ids(tokenizer))
    assert out.logits.shape[-1] == len(tokenizer)


def test_transcoder_input_capture(tiny) -> None:
    model, tokenizer = tiny
    x = ids(tokenizer)
    seen: dict[str, torch.Tensor] = {}
    mlp = model.model.layers[1].mlp
    handle = mlp.register_forward_hook(
        lambda _m, args, out: seen.update(inp=args[0].clone(), out=out.clone())
    )
    try:
        with torch.no_grad():
            model(input_ids=x)
    finally:
        handle.remove()
    got = forward_to_hooks(model, ["layers.1.mlp", "layers.0"], x, inputs={"layers.1.mlp"})
    torch.testing.assert_close(got["layers.1.mlp"], seen["inp"])
    assert not torch.allclose(got["layers.1.mlp"], seen["out"])
    out_only = forward_to_hooks(model, ["layers.1.mlp"], x)
    torch.testing.assert_close(out_only["layers.1.mlp"], seen["out"])


def test_attention_mask_is_used(tiny) -> None:
    model, tokenizer = tiny
    x = ids(tokenizer, n_rows=1)
    mask = torch.ones_like(x)
    mask[0, :4] = 0  # left padding
    masked = forward_to_hooks(model, ["layers.1"], x, mask)["layers.1"]
    plain = forward_to_hooks(model, ["layers.1"], x)["layers.1"]
    assert not torch.allclose(masked[0, -1], plain[0, -1])


# ------------------------------------------------------------------------ real SmolLM2 + demo SAE
@pytest.mark.slow
def test_smollm2_gguf_with_demo_sae() -> None:
    """The committed demo SAE reconstructs SmolLM2's layer-15 residual stream well."""
    from autointerp_full.sparse import check_dimensions, load_sparse_models

    model, tokenizer = load_subject_model(str(smollm2_gguf_path()), device="cpu")
    coder = load_sparse_models(str(DEMO_SAE), ["layers.15"])["layers.15"]
    check_dimensions(coder, hidden_size(model), "layers.15")
    text = (
        "The river Thames flows through London and into the North Sea. It has been an "
        "important trade route for centuries, and many bridges cross it in the city. The "
        "Python programming language was created by Guido van Rossum and first released in "
        "1991. In 1969 the Apollo 11 mission landed the first humans on the Moon; Neil "
        "Armstrong and Buzz Aldrin walked on the surface while Michael Collins orbited above. "
        "Photosynthesis is the process by which green plants use sunlight, water and carbon "
        "dioxide to make glucose and oxygen. The French Revolution began in 1789 with the "
        "storming of the Bastille, and it changed the politics of Europe for decades. "
        "Mount Everest, on the border between Nepal and China, is the highest mountain above "
        "sea level, at 8,849 metres. Johann Sebastian Bach wrote hundreds of cantatas, the "
        "Brandenburg Concertos and the Mass in B minor. The human heart has four chambers and "
        "pumps blood through the arteries, capillaries and veins of the body. In football, "
        "a team of eleven players tries to move the ball into the other team's goal without "
        "using their hands or arms. The Great Wall of China was built over many centuries to "
        "protect against raids from the north, and parts of it are more than 2,000 years old."
    )
    x = tokenizer(text, return_tensors="pt").input_ids
    hidden = forward_to_hooks(model, ["layers.15"], x)["layers.15"][0, 1:]  # drop position 0
    acts = coder.encode(hidden)
    fvu = (hidden - coder.decode(acts)).pow(2).sum() / (hidden - hidden.mean(0)).pow(2).sum()
    assert x.shape[1] > 250
    assert ((acts > 0).sum(dim=1) <= coder.k).all()
    metrics = json.loads((DEMO_SAE / "layers.15" / "metrics.json").read_text())
    assert fvu.item() < FVU_BOUND, (fvu.item(), metrics["fvu"])


# Measured 0.184 on this text (0.167 on 50k held-out Wikipedia tokens, see docs/DEMO_SAE.md);
# an untrained or wrongly loaded SAE gives about 1 or more.
FVU_BOUND = 0.3


# ----------------------------------------------------------- checks without loading weights
def write_tiny_gguf(path: Path, layers: int = 3, width: int = 32) -> Path:
    """A GGUF file with llama metadata, a 100-token vocabulary and one tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(layers)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(2 * width)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_context_length(128)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(100)])
    writer.add_tensor("token_embd.weight", np.zeros((100, width), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_inspect_model_builds_on_meta_and_maps_hookpoints(tiny_model_dir: Path) -> None:
    from autointerp_full.models import inspect_model

    info = inspect_model(str(tiny_model_dir), ["layers.1", "layers.2.mlp", "layers.1"])
    assert info == {
        "hidden_size": TINY_HIDDEN,
        "modules": {"layers.1": "model.layers.1", "layers.2.mlp": "model.layers.2.mlp"},
    }
    with pytest.raises(UserError, match=r"^--hookpoints: unknown module 'layers\.9'"):
        inspect_model(str(tiny_model_dir), [f"layers.{TINY_LAYERS + 5}"])


def test_inspect_model_names_the_param_for_unloadable_models(tmp_path: Path) -> None:
    from autointerp_full.models import inspect_model

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="^--model: cannot load"):
        inspect_model(str(tmp_path / "empty"), ["layers.0"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="^--model: .* is a file but not a .gguf"):
        inspect_model(str(tmp_path / "config.json"), ["layers.0"])
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="^--model: cannot read .*junk.gguf.*bad magic"):
        inspect_model(str(tmp_path / "junk.gguf"), ["layers.0"])


def test_gguf_metadata_and_config_match_transformers(tmp_path: Path) -> None:
    from transformers import AutoConfig

    from autointerp_full.models import _gguf_config, gguf_metadata, inspect_model

    path = write_tiny_gguf(tmp_path / "tiny.gguf", layers=3, width=32)
    meta = gguf_metadata(path)
    assert meta["llama.block_count"] == 3 and meta["llama.embedding_length"] == 32
    assert meta["tokenizer.ggml.tokens"] == 100  # a long array comes back as its length
    ours = _gguf_config(path, "model").to_dict()
    theirs = AutoConfig.from_pretrained(str(tmp_path), gguf_file="tiny.gguf").to_dict()
    keys = "hidden_size num_hidden_layers intermediate_size num_attention_heads"
    keys += " num_key_value_heads vocab_size max_position_embeddings model_type"
    for key in keys.split():
        assert ours[key] == theirs[key], key
    info = inspect_model(str(path), ["layers.2"])
    assert info["hidden_size"] == 32
    with pytest.raises(UserError, match="^--hookpoints: unknown module 'layers.3'"):
        inspect_model(str(path), ["layers.3"])


def test_check_device_on_a_cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from autointerp_full.models import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert check_device("cpu") == "cpu"
    assert check_device("auto") == "cpu"
    for device in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match="^--device: .*no CUDA GPU"):
            check_device(device)
    with pytest.raises(UserError, match="^--device: 'gpu' is not a device"):
        check_device("gpu")
    with pytest.raises(UserError, match="^--load_in_8bit: needs a CUDA GPU"):
        check_device("auto", load_in_8bit=True)


def test_check_device_counts_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from autointerp_full.models import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(UserError, match="^--device: 'cuda:2' does not exist; 2 CUDA GPU"):
        check_device("cuda:2")


def test_check_model_source(tmp_path: Path, tiny_model_dir: Path) -> None:
    from autointerp_full.models import check_model_source

    check_model_source(str(tiny_model_dir), param="explainer_model")
    check_model_source(str(write_tiny_gguf(tmp_path / "e.gguf")), param="explainer_model")
    with pytest.raises(UserError, match="^--explainer_model: no such file"):
        check_model_source(str(tmp_path / "absent.gguf"), param="explainer_model")
    with pytest.raises(UserError, match="^--explainer_model: cannot load 'nobody/none'"):
        check_model_source("nobody/none", param="explainer_model")  # the hub is offline in tests
