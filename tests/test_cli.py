"""The CLI's interface: every parameter of the specification, its defaults, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autointerp_full.cli import build_parser, parse_config
from autointerp_full.config import RunConfig

# (flag, default) pairs from the specification's parameter tables.
SPEC_DEFAULTS = {
    "model": "meta-llama/Meta-Llama-3-8B",
    "sparse_model": "EleutherAI/sae-llama-3-8b-32x",
    "hookpoints": [],
    "max_latents": None,
    "feature_num": None,
    "explainer_model": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    "explainer_model_max_len": 5120,
    "explainer_provider": "offline",
    "explainer_api_base_url": None,
    "explainer": "default",
    "prompt_override": False,
    "prompt_config_file": None,
    "scorers": ["fuzz", "detection"],
    "num_examples_per_scorer_prompt": 5,
    "dataset_repo": "EleutherAI/SmolLM2-135M-10B",
    "dataset_split": "train[:1%]",
    "dataset_column": "text",
    "n_tokens": 10_000_000,
    "batch_size": 32,
    "cache_ctx_len": 256,
    "n_splits": 5,
    "min_examples": 200,
    "n_examples_train": 40,
    "n_examples_test": 50,
    "n_non_activating": 50,
    "example_ctx_len": 32,
    "center_examples": True,
    "non_activating_source": "random",
    "neighbours_type": "co-occurrence",
    "seed": 22,
    "verbose": True,
    "filter_bos": False,
    "log_probs": False,
    "load_in_8bit": False,
    "hf_token": None,
    "overwrite": [],
    "enable_visualization": False,
}


def test_every_spec_parameter_has_its_default() -> None:
    cfg = parse_config([])
    for name, default in SPEC_DEFAULTS.items():
        assert getattr(cfg, name) == default, name
    assert cfg.pipeline_num_proc >= 1
    assert cfg.num_gpus is None  # resolved to every visible GPU when needed


def test_help_lists_every_flag_without_importing_torch() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from autointerp_full.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'faiss', 'sentence_transformers')"
        " if m in sys.modules]\n"
        "print(repr(heavy)); print(buf.getvalue())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, _, help_text = out.stdout.partition("\n")
    assert first == "[]"
    for name in SPEC_DEFAULTS:
        if name not in ("model", "sparse_model"):
            assert f"--{name}" in help_text, name
    assert "(default: 10000000)" in help_text
    assert "train[:1%]" in help_text


def test_positional_and_flag_forms() -> None:
    cfg = parse_config(
        ["m", "s", "--hookpoints", "layers.1", "layers.2", "--feature_num", "3", "4"]
    )
    assert (cfg.model, cfg.sparse_model) == ("m", "s")
    assert cfg.hookpoints == ["layers.1", "layers.2"] and cfg.feature_num == [3, 4]
    cfg = parse_config(["--model", "m2", "--no-center_examples", "--filter_bos"])
    assert cfg.model == "m2" and cfg.center_examples is False and cfg.filter_bos is True


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--n_tokens", "-5"], "--n_tokens"),
        (["--n_tokens", "abc"], "--n_tokens"),
        (["--scorers", "detection", "bogus"], "--scorers"),
        (["--explainer_provider", "cloud"], "--explainer_provider"),
        (["--overwrite", "everything"], "--overwrite"),
        (["--example_ctx_len", "64", "--cache_ctx_len", "32"], "--example_ctx_len"),
        (["--explainer_provider", "vllm"], "--explainer_api_base_url"),
        (["--name", "a/b"], "--name"),
        (["--unknown_flag", "1"], "--unknown_flag"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(argv: list[str], flag: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "autointerp_full", *argv], capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert flag in lines[0]


def test_secrets_never_in_public_config(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(["--hf_token", "hf_secret_value"])
    assert cfg.token == "hf_secret_value"
    assert "hf_secret_value" not in cfg.to_json()
    monkeypatch.setenv("HF_TOKEN", "hf_env_secret")
    cfg = RunConfig()
    assert cfg.token == "hf_env_secret"
    assert "hf_env_secret" not in json.dumps(cfg.public_dict())


def test_faiss_defaults_to_contrastive_explainer() -> None:
    assert parse_config(["--non_activating_source", "FAISS"]).effective_explainer == "contrastive"
    cfg = parse_config(["--non_activating_source", "FAISS", "--explainer", "np_max_act"])
    assert cfg.effective_explainer == "np_max_act"


def test_parser_builds_from_config_only() -> None:
    """No flag exists that is not a RunConfig field (one source of names and defaults)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert dests == fields
