"""The output side (issue 13): output profiles, the output explainer, and the intervention and
output_detection scorers, on the tiny model with a sparse model whose latent 0 writes the
unembedding row of one chosen token (so it promotes that token by construction)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_HIDDEN
from llm_test_server import ScriptedLLMServer

from autointerp_full.config import RunConfig
from autointerp_full.examples.types import Example, LatentRecord

HOOKPOINT = "layers.3"  # the tiny model's last layer: its output goes straight to the norm
N_LATENTS = 4
CHOSEN = 0  # the latent built to promote the chosen token
DECODER_NORM = 6.0  # its decoder row's norm (others are unit rows): a clear effect when steered


def chosen_token(model_dir: Path) -> tuple[int, str]:
    """A whole-word token (" word"), whose unembedding row latent 0 writes."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    for tid in range(len(tok) - 1, 0, -1):
        text = tok.decode([tid])
        if text.startswith(" ") and text.strip().isalpha() and len(text.strip()) >= 3:
            return tid, text
    raise AssertionError("no word-like token in the tiny vocabulary")


def write_output_sae(root: Path, model_dir: Path, token_id: int, transcode: bool = False) -> Path:
    """A ReLU SAE (or transcoder) in sparsify layout whose latent 0's decoder row is the
    unembedding row of `token_id` (norm DECODER_NORM); the others are random unit rows."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    head = AutoModelForCausalLM.from_pretrained(model_dir).get_output_embeddings().weight.detach()
    gen = torch.Generator().manual_seed(3)
    w_dec = torch.randn(N_LATENTS, TINY_HIDDEN, generator=gen)
    w_dec[CHOSEN] = head[token_id].float()
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    w_dec[CHOSEN] *= DECODER_NORM
    folder = root / HOOKPOINT
    folder.mkdir(parents=True)
    save_file(
        {
            "encoder.weight": torch.randn(N_LATENTS, TINY_HIDDEN, generator=gen).contiguous(),
            "encoder.bias": torch.zeros(N_LATENTS),
            "W_dec": w_dec.contiguous(),
            "b_dec": torch.zeros(TINY_HIDDEN),
        },
        str(folder / "sae.safetensors"),
    )
    cfg = {"activation": "relu", "num_latents": N_LATENTS, "d_in": TINY_HIDDEN,
           "transcode": transcode}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return root


def make_record(latent: int, vocab: int, seed: int = 0) -> LatentRecord:
    """A latent's examples: random windows, with the latent firing on a few tokens of each."""
    rng = random.Random(seed + latent)

    def window(quantile: int, active: bool) -> Example:
        tokens = [rng.randrange(3, vocab) for _ in range(12)]
        acts = [0.0] * 12
        if active:
            acts[6] = rng.uniform(1.0, 3.0)
        return Example(tokens, [f"t{t}" for t in tokens], acts, quantile if active else -1)

    return LatentRecord(
        hookpoint=HOOKPOINT,
        latent=latent,
        n_activating=40,
        firing_rate=0.01,
        max_activation=3.0,
        train=[window(3, True) for _ in range(6)],
        test=[window(2, True) for _ in range(6)],
        non_activating=[window(-1, False) for _ in range(4)],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("output_side")
    token_id, text = chosen_token(tiny_model_dir)
    sae = write_output_sae(root / "sae", tiny_model_dir, token_id)
    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    records = [make_record(i, vocab) for i in range(N_LATENTS)]
    return {"model": tiny_model_dir, "sae": sae, "token_id": token_id, "token": text,
            "records": records, "root": root}  # fmt: skip


def make_cfg(setup: dict, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        model=str(setup["model"]),
        sparse_model=str(setup["sae"]),
        hookpoints=[HOOKPOINT],
        device="cpu",
        dtype="float32",
        batch_size=16,
        explainer_provider="vllm",
        explainer_model="test-model",
        explainer_api_base_url="http://127.0.0.1:9/v1",
        structured_output="off",
        verbose=False,
    )
    base.update(changes)
    return RunConfig(**base)


def profiles(setup: dict, sae: Path | None = None) -> list[dict[str, Any]]:
    from autointerp_full.output import sparse_coder, subject_model
    from autointerp_full.output.profile import compute_profiles

    cfg = make_cfg(setup, **({"sparse_model": str(sae)} if sae else {}))
    model, tok = subject_model(cfg)
    coder = sparse_coder(cfg, HOOKPOINT, "cpu")
    return compute_profiles(model, tok, coder, HOOKPOINT, setup["records"], rows_per_batch=5)


# ------------------------------------------------------------------------------- profile


def test_logit_lens_ranks_the_chosen_token_first(setup: dict) -> None:
    out = profiles(setup)
    top = out[CHOSEN]["logit_lens"]["promoted"]
    assert top[0]["token_id"] == setup["token_id"], top[:3]
    assert top[0]["token"] == setup["token"]
    # The other latents' random directions do not rank it first.
    assert all(p["logit_lens"]["promoted"][0]["token_id"] != setup["token_id"] for p in out[1:])
    suppressed = out[CHOSEN]["logit_lens"]["suppressed"]
    assert suppressed[0]["value"] < 0 < top[0]["value"]


def test_steering_profile_puts_the_chosen_token_on_top(setup: dict) -> None:
    out = profiles(setup)
    steering = out[CHOSEN]["steering"]
    assert steering["n_contexts"] == 6 and steering["n_positions"] == 72
    first = steering["promoted"][0]
    assert first["token_id"] == setup["token_id"], steering["promoted"][:3]
    assert first["prob_after"] > first["prob_before"]


def test_steering_raises_the_token_and_the_random_control_does_not(setup: dict) -> None:
    from autointerp_full.scorers.intervention import steering_changes

    cfg = make_cfg(setup)
    record = setup["records"][CHOSEN]
    steered, control, _ = steering_changes(cfg, record, record.test, [setup["token_id"]])
    assert len(steered) == len(control) == len(record.test)
    assert min(steered) > 0.8, steered  # the token's log-probability rises on every window
    assert max(control) < 0.5 * min(steered), control
    assert abs(sum(control) / len(control)) < 0.2 * sum(steered) / len(steered)


# ---------------------------------------------------------------------------- the LLM side


def explanation_for(word: str) -> str:
    return f"Promotes the word '{word}' as the next token."


def output_responder(request: dict[str, Any]) -> Any:
    """The scorer LLM of these tests: predicts the word an explanation quotes; explains from
    the first promoted token of the output profile; tells steered texts by the quoted word."""
    system = " ".join(request["messages"][0]["content"].split())
    user = request["messages"][1]["content"]
    if "name up to five words" in system:
        quoted = re.findall(r"'([^']+)'", user)
        return json.dumps({"tokens": quoted[:1] or ["nothing"]})
    if "output direction promotes" in system:
        line = next(x for x in user.splitlines() if x.startswith("Tokens the latent's output"))
        first = re.findall(r"'([^']*)'", line.split(":", 1)[1])[0].strip()
        return f"[EXPLANATION]: {explanation_for(first)}"
    if "written with the latent amplified" in system:
        quoted = re.findall(r"Explanation: .*?'([^']+)'", user)
        word = quoted[0] if quoted else "\0"
        texts = re.findall(r"^Example \d+: (.*)$", user, flags=re.M)
        return json.dumps({"answers": [int(word in t) for t in texts]})
    return "unexpected request"


async def run_scorer(cfg: RunConfig, name: str, record: LatentRecord, text: str) -> dict:
    from autointerp_full.llm import make_client
    from autointerp_full.prompts import load_prompts
    from autointerp_full.scorers import SCORERS

    client = make_client(cfg, "score")
    try:
        return await SCORERS[name](client, load_prompts(cfg), cfg).score(record, text)
    finally:
        await client.aclose()


def test_intervention_scores_the_right_explanation_clearly_above_a_wrong_one(setup: dict) -> None:
    record = setup["records"][CHOSEN]
    right = explanation_for(setup["token"].strip())
    wrong = explanation_for("river")
    with ScriptedLLMServer(output_responder) as server:
        cfg = make_cfg(setup, explainer_api_base_url=server.url)
        good = asyncio.run(run_scorer(cfg, "intervention", record, right))
        bad = asyncio.run(run_scorer(cfg, "intervention", record, wrong))
    for result in (good, bad):
        m = result["metrics"]
        assert result["error"] is None and result["incomplete"] is False
        assert m["n"] == len(record.test) and m["n_failed"] == 0 and m["n_batches"] == 1
        assert m["effect_low"] <= m["effect"] <= m["effect_high"]
    assert setup["token_id"] in good["predicted_tokens"][0]["token_ids"]
    assert good["metrics"]["effect"] > 0.5, good["metrics"]
    assert good["metrics"]["effect_low"] > bad["metrics"]["effect_high"], (good, bad)
    assert bad["metrics"]["effect"] < 0.5 * good["metrics"]["effect"]


def test_intervention_counts_a_failed_prediction_and_never_guesses(setup: dict) -> None:
    record = setup["records"][CHOSEN]
    with ScriptedLLMServer(lambda _r: "I cannot say.") as server:
        cfg = make_cfg(setup, explainer_api_base_url=server.url, answer_retries=1)
        result = asyncio.run(run_scorer(cfg, "intervention", record, "anything"))
        assert server.chat_requests == 2  # asked once more, then counted as failed
    m = result["metrics"]
    assert result["incomplete"] is True and result["error"]
    assert m["n"] == 0 and m["n_failed"] == len(record.test) and m["n_failed_batches"] == 1
    assert all(e["prediction"] is None for e in result["examples"])


# ------------------------------------------------------------------------- through the CLI


def cli_args(setup: dict, corpus: Path, results: Path, url: str, *extra: str) -> list[str]:
    return [
        str(setup["model"]), str(setup["sae"]),
        "--hookpoints", HOOKPOINT, "--max_latents", "2",
        "--dataset_repo", str(corpus), "--dataset_split", "train",
        "--n_tokens", "4096", "--cache_ctx_len", "64", "--batch_size", "16",
        "--min_examples", "10", "--n_examples_train", "6", "--n_examples_test", "6",
        "--n_non_activating", "4", "--example_ctx_len", "12",
        "--explainer_provider", "vllm", "--explainer_model", "test-model",
        "--explainer_api_base_url", url, "--structured_output", "off",
        "--results_dir", str(results), "--device", "cpu", "--no-verbose", *extra,
    ]  # fmt: skip


def test_cli_output_explainer_and_scorers_then_a_rerun_reuses_everything(
    setup: dict, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from autointerp_full.cli import main

    extra = ("--name", "out", "--explainer", "output", "--null_baseline", "none",
             "--scorers", "intervention", "output_detection")  # fmt: skip
    with ScriptedLLMServer(output_responder) as server:
        assert main(cli_args(setup, tiny_corpus, tmp_path, server.url, *extra)) == 0
    run = tmp_path / "out"
    profile = json.loads((run / "output" / f"{HOOKPOINT}_latent_{CHOSEN}.json").read_text())
    assert profile["fingerprint"] and profile["inputs"]["examples"]["fingerprint"]
    assert profile["logit_lens"]["promoted"][0]["token_id"] == setup["token_id"]
    text = (run / "explanations" / f"{HOOKPOINT}_latent_{CHOSEN}.txt").read_text()
    assert text == explanation_for(setup["token"].strip())  # written from the profile
    side = json.loads(
        (run / "explanations" / "provenance" / f"{HOOKPOINT}_latent_0.json").read_text()
    )
    assert side["inputs"]["output"]["fingerprint"] == profile["fingerprint"]
    inter = json.loads((run / "scores" / "intervention" / f"{HOOKPOINT}_latent_0.txt").read_text())
    assert inter["metrics"]["effect_low"] > 0.3, inter["metrics"]
    detect = json.loads(
        (run / "scores" / "output_detection" / f"{HOOKPOINT}_latent_0.txt").read_text()
    )
    m = detect["metrics"]
    assert m["n"] == 12 and m["n_failed"] == 0 and m["balanced_accuracy"] > 0.7, m
    summary = json.loads((run / "summary.json").read_text())
    assert "intervention" in json.dumps(summary) and "output_detection" in json.dumps(summary)
    table = capsys.readouterr().out
    assert "no latents scored" not in table and "intervention" in table
    assert explanation_for(setup["token"].strip())[:20] in table

    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*_latent_*.*")}
    with ScriptedLLMServer(output_responder) as server:
        assert main(cli_args(setup, tiny_corpus, tmp_path, server.url, *extra)) == 0
        assert server.chat_requests == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*_latent_*.*")} == stamps

    # The pipeline's output and explain steps (component logic) give the same artifacts.
    from components.runtime import run_explain, run_output, run_score

    steps = tmp_path / "steps"
    examples = str(run / "examples")
    with ScriptedLLMServer(output_responder) as server:
        config = json.loads((run / "run_config.json").read_text())
        config = json.dumps({**config, "explainer_api_base_url": server.url})
        assert run_output(config, examples, examples, [0, 2], str(steps / "output")) == {
            "profiles": 2
        }
        run_explain(config, examples, examples, [0, 2], str(steps / "expl"), False,
                    str(steps / "output"), str(steps / "output"))  # fmt: skip
        # The score step checks the output explainer's explanations against the profiles.
        expl, outp = str(steps / "expl"), str(steps / "output")
        info = run_score(config, examples, examples, expl, expl, [0, 2], str(steps / "scores"),
                         False, outp, outp)  # fmt: skip
    assert info == {"score_files": 4}
    assert json.loads((steps / "scores" / "failures.json").read_text()) == {}
    for name in ("output", "expl"):
        folder = run / ("output" if name == "output" else "explanations")
        assert len(list(folder.glob("*_latent_*.*"))) == 2
        for path in sorted(folder.glob("*_latent_*.*")):
            mine = (steps / name / path.name).read_text()
            if name == "output":
                assert (
                    json.loads(mine)["fingerprint"] == json.loads(path.read_text())["fingerprint"]
                )
            else:
                assert mine == path.read_text()


def test_a_run_without_output_side_options_never_loads_the_model_after_the_cache(
    setup: dict, tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autointerp_full import models, stages
    from autointerp_full.cli import main

    real_cache_stage = stages.cache_stage
    loads: list[str] = []

    def cache_then_forbid(cfg: RunConfig, latents_dir: Path) -> Path:
        out = real_cache_stage(cfg, latents_dir)
        monkeypatch.setattr(models, "load_subject_model", lambda *a, **k: loads.append("x"))
        return out

    monkeypatch.setattr(stages, "cache_stage", cache_then_forbid)
    extra = ("--name", "plain", "--null_baseline", "none", "--scorers", "detection")
    with ScriptedLLMServer(output_responder) as server:
        assert main(cli_args(setup, tiny_corpus, tmp_path, server.url, *extra)) == 0
    assert loads == []
    assert not list((tmp_path / "plain").glob("output/*.json"))


def write_saelens_sae(root: Path, sparsify_root: Path, norm: str) -> Path:
    """The same latents in SAELens layout (W_enc [d_in, L]), with an input normalisation."""
    from safetensors.torch import load_file, save_file

    t = load_file(str(sparsify_root / HOOKPOINT / "sae.safetensors"))
    folder = root / HOOKPOINT
    folder.mkdir(parents=True)
    save_file(
        {"W_enc": t["encoder.weight"].T.contiguous(), "b_enc": t["encoder.bias"],
         "W_dec": t["W_dec"], "b_dec": t["b_dec"]},
        str(folder / "sae_weights.safetensors"),
    )  # fmt: skip
    cfg = {"architecture": "standard", "activation_fn_str": "relu", "d_in": TINY_HIDDEN,
           "d_sae": N_LATENTS, "normalize_activations": norm}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return root


@pytest.mark.parametrize("kind", ["sparsify transcoder", "saelens layer_norm"])
def test_other_formats_give_the_same_logit_lens_and_a_steering_profile(
    setup: dict, tiny_model_dir: Path, tmp_path: Path, kind: str
) -> None:
    if kind == "sparsify transcoder":
        sae = write_output_sae(tmp_path / "tc", tiny_model_dir, setup["token_id"], transcode=True)
    else:
        sae = write_saelens_sae(tmp_path / "sl", setup["sae"], "layer_norm")
    out = profiles(setup, sae)
    assert out[CHOSEN]["transcoder"] is (kind == "sparsify transcoder")
    assert out[CHOSEN]["logit_lens"]["promoted"][0]["token_id"] == setup["token_id"]
    steering = out[CHOSEN]["steering"]
    assert steering["n_contexts"] == 6
    ids = [t["token_id"] for t in steering["promoted"]]
    assert setup["token_id"] in ids, steering["promoted"][:3]


def test_null_cost_counts_the_output_scorers_requests() -> None:
    from autointerp_full.nulls import estimate_null_cost

    cfg = RunConfig(scorers=["intervention", "output_detection"], n_examples_test=10,
                    num_examples_per_scorer_prompt=5)  # fmt: skip
    assert estimate_null_cost(cfg, 3).per_latent == {"intervention": 1, "output_detection": 4}


def test_output_prompts_can_be_overridden_and_are_checked(tmp_path: Path) -> None:
    from autointerp_full.errors import UserError
    from autointerp_full.prompts import load_prompts

    good = tmp_path / "good.yaml"
    good.write_text("explainers:\n  output:\n    system: 'Say what it promotes. {prompt}'\n")
    prompts = load_prompts(RunConfig(prompt_override=True, prompt_config_file=str(good)))
    assert prompts.get("explainers.output.system").startswith("Say what it promotes.")
    assert prompts.schema("scorers.intervention.system", 5)["properties"]["tokens"]["maxItems"] == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("explainers:\n  output:\n    system: 'no placeholder'\n")
    with pytest.raises(UserError, match="explainers.output.system"):
        load_prompts(RunConfig(prompt_override=True, prompt_config_file=str(bad)))


def test_output_artifact_schema_rejects_a_damaged_profile(setup: dict, tmp_path: Path) -> None:
    from autointerp_full import layout
    from autointerp_full import provenance as prov
    from autointerp_full.errors import UserError
    from autointerp_full.schemas import validate_artifact

    profile = prov.stamp(profiles(setup)[CHOSEN], {"examples": prov.ref(None)})
    path = layout.output_file(tmp_path, HOOKPOINT, CHOSEN)
    path.write_text(json.dumps(profile))
    validate_artifact("output", tmp_path)
    del profile["logit_lens"]["promoted"][0]["token_id"]
    path.write_text(json.dumps(profile))
    with pytest.raises(UserError, match="output schema at logit_lens/promoted/0"):
        validate_artifact("output", tmp_path)
