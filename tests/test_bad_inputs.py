"""Validate first, then act: every bad input is refused before the run folder is touched.

One completed run is built per module; each case copies it, runs the CLI with one bad input
and checks: exit code 2, one line on stderr naming the parameter, no traceback, and every file
under the results folder byte-identical (run_config.json included; no file added or removed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import TINY_HIDDEN, TINY_LATENTS, write_sparsify_sae
from llm_test_server import ScriptedLLMServer, interp_responder

from autointerp_full import cache as cache_pkg
from autointerp_full.cli import main

HOOKPOINT = "layers.1"


def base_options(model: Path, sae: Path, corpus: Path, results: Path, url: str) -> dict:
    """Flag -> value (a list for several); "model"/"sparse_model" are the positionals."""
    return {
        "model": str(model),
        "sparse_model": str(sae),
        "--hookpoints": HOOKPOINT,
        "--dataset_repo": str(corpus),
        "--dataset_split": "train",
        "--n_tokens": "2048",
        "--cache_ctx_len": "64",
        "--batch_size": "16",
        "--max_latents": "3",
        "--min_examples": "3",
        "--n_examples_train": "3",
        "--n_examples_test": "3",
        "--n_non_activating": "3",
        "--example_ctx_len": "12",
        "--num_examples_per_scorer_prompt": "3",
        "--scorers": "detection",
        "--explainer_provider": "vllm",
        "--explainer_model": "test-model",
        "--explainer_api_base_url": url,
        "--results_dir": str(results),
        "--name": "run",
        "--device": "cpu",
    }


def to_argv(options: dict) -> list[str]:
    argv = [options["model"], options["sparse_model"], "--no-verbose"]
    for flag, value in options.items():
        if flag in ("model", "sparse_model") or value is None:
            continue
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, *(value if isinstance(value, list) else [value])]
    return argv


@pytest.fixture(scope="module")
def server():
    with ScriptedLLMServer(interp_responder) as srv:
        yield srv


@pytest.fixture(scope="module")
def completed(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus, server) -> Path:
    """A results folder holding one completed run: cache, examples, explanations, scores."""
    results = tmp_path_factory.mktemp("completed") / "results"
    options = base_options(tiny_model_dir, tiny_sae_dir, tiny_corpus, results, server.url)
    assert main(to_argv(options)) == 0
    run = results / "run"
    assert (run / "summary.json").is_file() and list((run / "scores").rglob("*.txt"))
    return results


@dataclass
class Ctx:
    """What a case can use: the copied results folder and a scratch folder outside it."""

    options: dict
    results: Path
    scratch: Path
    sae: Path
    corpus: Path
    env: dict[str, str | None] = field(default_factory=dict)

    @property
    def run(self) -> Path:
        return self.results / "run"

    def sae_copy(self) -> Path:
        """A private copy of the tiny SAE, for cases that damage it."""
        target = self.scratch / "sae"
        shutil.copytree(self.sae, target)
        return target

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path


def tree_state(root: Path) -> dict[str, str]:
    """Every file and folder under root: path -> sha256 of the bytes ("dir" for folders)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --------------------------------------------------------------------------------- the cases
def truncate(path: Path, keep: int) -> None:
    """Keep the first `keep` bytes (negative: drop that many from the end)."""
    path.write_bytes(path.read_bytes()[:keep])


def sae_with(ctx: Ctx, change: Callable[[Path], None]) -> None:
    sae = ctx.sae_copy()
    change(sae / HOOKPOINT)
    ctx.options["sparse_model"] = str(sae)


def edit_cfg(**fields) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.update(fields)
        (folder / "cfg.json").write_text(json.dumps(cfg))

    return change


def replace_header(folder: Path) -> None:
    """A safetensors file whose header claims far more bytes than the file has."""
    path = folder / "sae.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 10**9)
    path.write_bytes(bytes(data))


def drop_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "sae.safetensors"))
    del tensors["encoder.weight"]
    save_file(tensors, str(folder / "sae.safetensors"))


def prompts_file(ctx: Ctx, text: str) -> None:
    ctx.options["--prompt_override"] = True
    ctx.options["--prompt_config_file"] = str(ctx.write("prompts.yaml", text))


def corpus(ctx: Ctx, name: str, text: str) -> None:
    ctx.options["--dataset_repo"] = str(ctx.write(name, text))


def truncate_cache_shard(ctx: Ctx) -> None:
    shard = sorted((ctx.run / "latents" / HOOKPOINT).glob("shard_*.safetensors"))[0]
    truncate(shard, shard.stat().st_size // 2)


def set_opts(**options) -> Callable[[Ctx], None]:
    """A case that only changes flags (underscored names are flags, e.g. dataset_split)."""

    def apply(ctx: Ctx) -> None:
        for key, value in options.items():
            flag = key if key in ("model", "sparse_model") else f"--{key}"
            ctx.options[flag] = value

    return apply


def wider_sae(ctx: Ctx) -> None:
    root = write_sparsify_sae(ctx.scratch / "wide", HOOKPOINT, d_in=32)
    ctx.options["sparse_model"] = str(root)


def sae_for_missing_module(ctx: Ctx) -> None:
    root = write_sparsify_sae(ctx.scratch / "deep", "layers.9")
    ctx.options["sparse_model"] = str(root)
    ctx.options["--hookpoints"] = "layers.9"


def gemma_scope_truncated(ctx: Ctx) -> None:
    import numpy as np

    folder = ctx.scratch / "gemma" / HOOKPOINT
    folder.mkdir(parents=True)
    zeros = {n: np.zeros(s, np.float32) for n, s in (("W_enc", (64, 16)), ("W_dec", (16, 64)))}
    np.savez(folder / "params.npz", b_enc=np.zeros(16), b_dec=np.zeros(64), **zeros)
    truncate(folder / "params.npz", -40)
    ctx.options["sparse_model"] = str(ctx.scratch / "gemma")


def saelens_unsupported(ctx: Ctx) -> None:
    """A SAELens model of the right width whose architecture the loader does not support."""
    import torch
    from safetensors.torch import save_file

    folder = ctx.scratch / "saelens" / HOOKPOINT
    folder.mkdir(parents=True)
    d, n = TINY_HIDDEN, 32
    tensors = {"W_enc": torch.zeros(d, n), "b_enc": torch.zeros(n), "W_dec": torch.zeros(n, d)}
    save_file({**tensors, "b_dec": torch.zeros(d)}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": d}))
    ctx.options["sparse_model"] = str(ctx.scratch / "saelens")


def no_api_key(ctx: Ctx) -> None:
    ctx.options["--explainer_provider"] = "openrouter"
    ctx.env.update(OPENROUTER_API_KEY=None, OPENAI_API_KEY=None)


def results_dir_is_file(ctx: Ctx) -> None:
    ctx.options["--results_dir"] = str(ctx.write("results.txt", "not a folder"))


def results_dir_under_file(ctx: Ctx) -> None:
    ctx.options["--results_dir"] = str(ctx.write("plain_file", "x") / "results")


def name_is_file(ctx: Ctx) -> None:
    (ctx.results / "clash").write_text("a file where a run folder would go")
    ctx.options["--name"] = "clash"


def no_hookpoints(ctx: Ctx) -> None:
    ctx.options["--hookpoints"] = None


def model_folder_without_config(ctx: Ctx) -> None:
    (ctx.scratch / "empty_model").mkdir()
    ctx.options["model"] = str(ctx.scratch / "empty_model")


def model_not_a_gguf(ctx: Ctx) -> None:
    ctx.options["model"] = str(ctx.write("weights.bin", b"\0" * 64))


def sae_is_a_file(ctx: Ctx) -> None:
    ctx.options["sparse_model"] = str(ctx.write("sae.safetensors", b"\0" * 64))


def sae_without_layout(ctx: Ctx) -> None:
    (ctx.scratch / "nothing" / HOOKPOINT).mkdir(parents=True)
    ctx.options["sparse_model"] = str(ctx.scratch / "nothing")


def wrong_api_path(ctx: Ctx) -> None:
    ctx.options["--explainer_api_base_url"] = ctx.options["--explainer_api_base_url"][:-3] + "/v2"


def prompt_env_missing(ctx: Ctx) -> None:
    ctx.options["--prompt_override"] = True
    ctx.env["PROMPT_CONFIG_FILE"] = str(ctx.scratch / "absent.yaml")


DOCS = "".join(json.dumps({"text": f"the cat sat on mat {i}"}) + "\n" for i in range(50))

CASES: dict[str, tuple[str, Callable[[Ctx], None]]] = {
    # the subject model
    "model_missing": ("model", set_opts(model="/nonexistent/model")),
    "model_hub_unreachable": ("model", set_opts(model="nobody-here/no-such-model")),
    "model_folder_without_config": ("model", model_folder_without_config),
    "model_file_not_gguf": ("model", model_not_a_gguf),
    "hookpoint_not_in_model": ("hookpoints", sae_for_missing_module),
    "no_hookpoints": ("hookpoints", no_hookpoints),
    # the sparse model
    "sparse_model_missing": ("sparse_model", set_opts(sparse_model="/nonexistent/sae")),
    "sparse_model_hub_unreachable": ("sparse_model", set_opts(sparse_model="nobody/no-sae")),
    "sparse_model_is_a_file": ("sparse_model", sae_is_a_file),
    "sparse_model_without_layout": ("sparse_model", sae_without_layout),
    "hookpoint_not_in_sparse_model": ("hookpoints", set_opts(hookpoints="layers.2")),
    "one_of_two_hookpoints_missing": ("hookpoints", set_opts(hookpoints=[HOOKPOINT, "layers.2"])),
    "width_mismatch": ("sparse_model", wider_sae),
    "safetensors_truncated": (
        "sparse_model",
        lambda c: sae_with(c, lambda f: truncate(f / "sae.safetensors", -100)),
    ),
    "safetensors_header_too_long": ("sparse_model", lambda c: sae_with(c, replace_header)),
    "safetensors_tiny_file": (
        "sparse_model",
        lambda c: sae_with(c, lambda f: truncate(f / "sae.safetensors", 5)),
    ),
    "safetensors_missing_tensor": ("sparse_model", lambda c: sae_with(c, drop_tensor)),
    "cfg_json_malformed": (
        "sparse_model",
        lambda c: sae_with(c, lambda f: (f / "cfg.json").write_text('{"k": 8,')),
    ),
    "cfg_json_not_an_object": (
        "sparse_model",
        lambda c: sae_with(c, lambda f: (f / "cfg.json").write_text("[1, 2]")),
    ),
    "cfg_json_wrong_d_in": ("sparse_model", lambda c: sae_with(c, edit_cfg(d_in=99))),
    "cfg_json_unknown_activation": (
        "sparse_model",
        lambda c: sae_with(c, edit_cfg(activation="gelu")),
    ),
    "gemma_scope_npz_truncated": ("sparse_model", gemma_scope_truncated),
    "saelens_unsupported_architecture": ("sparse_model", saelens_unsupported),
    "feature_num_out_of_range": ("feature_num", set_opts(feature_num=["1", str(TINY_LATENTS)])),
    # the dataset
    "dataset_missing": ("dataset_repo", set_opts(dataset_repo="/nonexistent/corpus.jsonl")),
    "dataset_hub_unreachable": ("dataset_repo", set_opts(dataset_repo="nobody-here/no-data")),
    "dataset_unsupported_type": ("dataset_repo", lambda c: corpus(c, "c.csv", "text\nhello\n")),
    "dataset_empty_file": ("dataset_repo", lambda c: corpus(c, "empty.jsonl", "")),
    "dataset_only_empty_texts": (
        "dataset_repo",
        lambda c: corpus(c, "blank.jsonl", json.dumps({"text": ""}) + "\n"),
    ),
    "dataset_corrupt_json": ("dataset_repo", lambda c: corpus(c, "bad.jsonl", '{"text": "a"\n')),
    "dataset_column": ("dataset_column", set_opts(dataset_column="body")),
    "dataset_split_unknown": ("dataset_split", set_opts(dataset_split="validation")),
    "dataset_split_syntax": ("dataset_split", set_opts(dataset_split="train[abc]")),
    "dataset_split_past_the_end": (
        "dataset_repo",
        lambda c: (corpus(c, "small.jsonl", DOCS), set_opts(dataset_split="train[900:950]")(c)),
    ),
    # prompts
    "prompt_file_missing": ("prompt_config_file", set_opts(prompt_override=True,
                                                           prompt_config_file="/nonexistent.yaml")),
    "prompt_yaml_syntax": ("prompt_config_file", lambda c: prompts_file(c, "explainers: [oops\n")),
    "prompt_unknown_key": (
        "prompt_config_file",
        lambda c: prompts_file(c, "explainers:\n  defualt:\n    system: hi\n"),
    ),
    "prompt_missing_placeholder": (
        "prompt_config_file",
        lambda c: prompts_file(c, "explainers:\n  default:\n    system: no placeholder here\n"),
    ),
    "prompt_not_text": (
        "prompt_config_file",
        lambda c: prompts_file(c, "explainers:\n  default:\n    system: [1, 2]\n"),
    ),
    # the LLM
    "server_down": ("explainer_api_base_url", set_opts(explainer_api_base_url=closed_port_url())),
    "model_not_served": ("explainer_model", set_opts(explainer_model="not-served")),
    "server_not_openai": ("explainer_api_base_url", wrong_api_path),
    "server_url_malformed": ("explainer_api_base_url", set_opts(explainer_api_base_url="nope")),
    "offline_explainer_hub_unreachable": (
        "explainer_model",
        set_opts(explainer_provider="offline", explainer_model="nobody-here/no-explainer"),
    ),
    "prompt_env_file_missing": ("$PROMPT_CONFIG_FILE", prompt_env_missing),
    "missing_api_key": ("explainer_provider", no_api_key),
    "offline_explainer_missing": (
        "explainer_model",
        set_opts(explainer_provider="offline", explainer_model="/nonexistent/explainer.gguf"),
    ),
    # the machine and the run folder
    "device_cuda_on_cpu": ("device", set_opts(device="cuda")),
    "device_bad_string": ("device", set_opts(device="gpu0")),
    "device_index_missing": ("device", set_opts(device="cuda:7")),
    "load_in_8bit_on_cpu": ("load_in_8bit", set_opts(load_in_8bit=True)),
    "results_dir_is_file": ("results_dir", results_dir_is_file),
    "results_dir_under_a_file": ("results_dir", results_dir_under_file),
    "name_is_a_file": ("name", name_is_file),
    "cache_shard_truncated": ("", truncate_cache_shard),
}  # fmt: skip


def prepare(case: str, tmp_path: Path, completed: Path, opts: dict, sae: Path, data: Path) -> Ctx:
    results = tmp_path / "results"
    shutil.copytree(completed, results)
    options = dict(opts, **{"--results_dir": str(results)})
    ctx = Ctx(options, results, tmp_path / "scratch", sae, data)
    ctx.scratch.mkdir()
    CASES[case][1](ctx)
    return ctx


@pytest.fixture
def make_ctx(tmp_path, completed, tiny_model_dir, tiny_sae_dir, tiny_corpus, server, monkeypatch):
    def make(case: str) -> Ctx:
        opts = base_options(tiny_model_dir, tiny_sae_dir, tiny_corpus, completed, server.url)
        ctx = prepare(case, tmp_path, completed, opts, tiny_sae_dir, tiny_corpus)
        for name, value in ctx.env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        return ctx

    return make


def check_refusal(param: str, code: int, stderr: str, before: dict, after: dict) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, f"exit code {code}; stderr: {stderr}"
    assert "Traceback" not in stderr
    assert len(lines) == 1, f"stderr is not one line: {stderr!r}"
    assert lines[0].startswith("autointerp_full: error: ")
    if param:
        named = param if param.startswith("$") else f"--{param}"
        assert named in lines[0], lines[0]
    assert after == before, "the results folder changed"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_any_change(case: str, make_ctx, capfd) -> None:
    if case == "cache_shard_truncated" and not hasattr(cache_pkg, "verify_cache"):
        pytest.skip("autointerp_full.cache.verify_cache is not there yet")
    ctx = make_ctx(case)
    before = tree_state(ctx.results)
    capfd.readouterr()
    code = main(to_argv(ctx.options))
    stderr = capfd.readouterr().err
    print(stderr)  # shown by pytest -rA: the message a user would read
    param = CASES[case][0]
    check_refusal(param, code, stderr, before, tree_state(ctx.results))
    if case == "cache_shard_truncated":
        assert "shard_" in stderr


def test_the_cases_cover_the_issue_list() -> None:
    assert len(CASES) >= 30
    params = {param for param, _ in CASES.values()}
    for needed in ("model", "sparse_model", "hookpoints", "dataset_repo", "dataset_column",
                   "dataset_split", "prompt_config_file", "explainer_api_base_url",
                   "explainer_model", "explainer_provider", "device", "load_in_8bit",
                   "results_dir", "feature_num"):  # fmt: skip
        assert needed in params


def test_good_input_still_runs_and_reuses_everything(make_ctx, server) -> None:
    """The control: the same copy with nothing wrong passes the checks and changes nothing."""
    ctx = make_ctx("no_hookpoints")
    ctx.options["--hookpoints"] = HOOKPOINT
    requests = server.chat_requests
    assert main(to_argv(ctx.options)) == 0
    assert server.chat_requests == requests, "a finished run must not call the LLM again"


@pytest.mark.parametrize("case", ["safetensors_truncated", "server_down"])
def test_subprocess_gives_one_line_and_no_traceback(case: str, make_ctx) -> None:
    ctx = make_ctx(case)
    before = tree_state(ctx.results)
    env = {k: v for k, v in os.environ.items() if k not in ctx.env}
    proc = subprocess.run(
        [sys.executable, "-m", "autointerp_full", *to_argv(ctx.options)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    check_refusal(CASES[case][0], proc.returncode, proc.stderr, before, tree_state(ctx.results))


def test_a_multiline_message_still_prints_one_line(monkeypatch, capsys) -> None:
    import autointerp_full.run
    from autointerp_full.errors import UserError

    def fail(cfg) -> int:
        raise UserError("--model: cannot load 'x': first line\n  second line")

    monkeypatch.setattr(autointerp_full.run, "run_all", fail)
    assert main(["m", "s", "--hookpoints", "layers.0", "--no-verbose"]) == 2
    err = capsys.readouterr().err
    assert err == "autointerp_full: error: --model: cannot load 'x': first line second line\n"
