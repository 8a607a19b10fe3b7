"""A known-answer bench: latents whose meaning is known, an LLM that follows a known rule, and
the real cache, example builder, HTTP client and scorers in between.

The sparse model reads the tiny model's token embeddings (hookpoint `embed_tokens`); each latent's
encoder row is one chosen token's embedding scaled so that the latent is 0.5 on that token and
negative (so 0 after the ReLU) on every other token of the vocabulary. The test server explains
by naming the marked word and answers detection, fuzz, simulation and intruder by that rule. So a
right explanation must score 1.0, a wrong one about chance, and server faults must change
nothing in the answered examples.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_HIDDEN, WORDS, make_corpus_texts
from llm_test_server import (
    ScriptedLLMServer,
    known_answer_explanation,
    known_answer_responder,
)

from autointerp_full.config import RunConfig
from autointerp_full.examples.types import LatentRecord

N_LATENTS = 6
BIAS = -0.5  # a latent fires (0.5) on its token only; others' pre-activations stay below 0
MAX_OTHER_RATIO = 0.4  # how close another token may come to a chosen one (must stay < 0.5)
SCORERS = ("detection", "fuzz", "simulation", "intruder")


def build_word_model(path: Path) -> Path:
    """A 2-layer Llama like conftest's tiny model, whose byte-level BPE vocabulary is large
    enough that every corpus word with its leading space (" cat") is one token."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(make_corpus_texts(200), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=TINY_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def choose_tokens(model_dir: Path) -> tuple[list[tuple[str, int]], Any]:
    """(word, token id) pairs for single-token words whose embedding no other token's embedding
    comes close to along its own direction, and the encoder weights that pick them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    emb = AutoModelForCausalLM.from_pretrained(model_dir).get_input_embeddings().weight.detach()
    chosen, rows = [], []
    for word in sorted({w for w in WORDS if w.isalpha() and len(w) >= 3}):
        ids = tok(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            continue
        e = emb[ids[0]].float()
        row = e / (e @ e)  # row . e == 1 on the chosen token
        ratio = emb.float() @ row
        ratio[ids[0]] = float("-inf")
        if float(ratio.max()) < MAX_OTHER_RATIO:
            chosen.append((word, ids[0]))
            rows.append(row)
        if len(chosen) == N_LATENTS:
            break
    assert len(chosen) == N_LATENTS, f"only {len(chosen)} usable single-token words"
    return chosen, torch.stack(rows)


def write_token_sae(root: Path, w_enc: Any) -> Path:
    """A ReLU SAE in sparsify layout at hookpoint embed_tokens."""
    import torch
    from safetensors.torch import save_file

    folder = root / "embed_tokens"
    folder.mkdir(parents=True)
    n, d = w_enc.shape
    save_file(
        {
            "encoder.weight": w_enc.contiguous(),
            "encoder.bias": torch.full((n,), BIAS),
            "W_dec": w_enc.clone().contiguous(),
            "b_dec": torch.zeros(d),
        },
        str(folder / "sae.safetensors"),
    )
    cfg = {"activation": "relu", "num_latents": n, "d_in": d, "normalize_decoder": False}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return root


def bench_cfg(model: Path, sae: Path, corpus: Path, url: str, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        model=str(model),
        sparse_model=str(sae),
        hookpoints=["embed_tokens"],
        dataset_repo=str(corpus),
        dataset_split="train",
        n_tokens=16384,
        cache_ctx_len=64,
        batch_size=16,
        min_examples=20,
        n_examples_train=10,
        n_examples_test=20,
        n_non_activating=20,
        example_ctx_len=16,
        num_examples_per_scorer_prompt=5,
        explainer_provider="vllm",
        explainer_model="test-model",
        explainer_api_base_url=url,
        structured_output="off",
        device="cpu",
        verbose=False,
    )
    base.update(changes)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_corpus) -> dict[str, Any]:
    """The cache and examples of the token latents, built by the product's own code."""
    from autointerp_full.cache import CacheReader, build_cache
    from autointerp_full.examples import ExampleBuilder

    root = tmp_path_factory.mktemp("known")
    model = build_word_model(root / "model")
    words, w_enc = choose_tokens(model)
    sae = write_token_sae(root / "sae", w_enc)
    cfg = bench_cfg(model, sae, tiny_corpus, "http://127.0.0.1:9/v1")
    build_cache(cfg, root / "latents")
    reader = CacheReader(root / "latents" / "embed_tokens")
    builder = ExampleBuilder(cfg, reader, None, latents=list(range(N_LATENTS)))
    records = [builder.build(i) for i in range(N_LATENTS)]
    assert all(r is not None for r in records), "a token latent had too few windows"
    return {"words": [w for w, _ in words], "records": records, "sae": sae, "model": model}


def config(bench: dict, corpus: Path, url: str, **changes: Any) -> RunConfig:
    return bench_cfg(bench["model"], bench["sae"], corpus, url, **changes)


async def explain_all(cfg: RunConfig, records: list[LatentRecord]) -> list[Any]:
    from autointerp_full.explainers import explain
    from autointerp_full.llm import make_client
    from autointerp_full.prompts import load_prompts

    client = make_client(cfg, "explain")
    try:
        prompts = load_prompts(cfg)
        return await asyncio.gather(*(explain(r, client, prompts, cfg) for r in records))
    finally:
        await client.aclose()


async def score_all(
    cfg: RunConfig,
    records: list[LatentRecord],
    explanations: list[str],
    scorers: tuple[str, ...] = SCORERS,
    previous: dict[tuple[str, int], dict] | None = None,
) -> dict[tuple[str, int], dict]:
    """{(scorer, latent): score file JSON}, every scorer through one real HTTP client."""
    from autointerp_full.llm import make_client
    from autointerp_full.prompts import load_prompts
    from autointerp_full.scorers import SCORERS as REGISTRY

    client = make_client(cfg, "score")
    try:
        prompts = load_prompts(cfg)
        jobs = {}
        for name in scorers:
            scorer = REGISTRY[name](client, prompts, cfg)
            for record, text in zip(records, explanations, strict=True):
                old = (previous or {}).get((name, record.latent))
                jobs[(name, record.latent)] = scorer.score(record, text, previous=old)
        results = await asyncio.gather(*jobs.values())
        return dict(zip(jobs, results, strict=True))
    finally:
        await client.aclose()


def headline(result: dict) -> float:
    m = result["metrics"]
    return m["correlation"] if result["scorer"] == "simulation" else m["accuracy"]


def right(bench: dict) -> list[str]:
    return [known_answer_explanation(w) for w in bench["words"]]


# --------------------------------------------------------------------------------- tests


def test_token_latents_fire_on_their_token_only(bench: dict) -> None:
    for word, record in zip(bench["words"], bench["records"], strict=True):
        for example in record.test + record.train:
            pairs = zip(example.str_tokens, example.activations, strict=True)
            hot = {t.strip() for t, a in pairs if a > 0}
            assert hot == {word}
        for example in record.non_activating:
            assert " " + word not in [t for t in example.str_tokens]


def test_explainer_names_the_token_and_right_explanations_score_one(
    bench: dict, tiny_corpus
) -> None:
    with ScriptedLLMServer(known_answer_responder) as server:
        cfg = config(bench, tiny_corpus, server.url)
        explained = asyncio.run(explain_all(cfg, bench["records"]))
        assert [e.explanation for e in explained] == right(bench)
        results = asyncio.run(score_all(cfg, bench["records"], right(bench)))
    for (name, latent), result in results.items():
        assert result["error"] is None and result["incomplete"] is False, (name, latent)
        assert headline(result) == pytest.approx(1.0), (name, latent, result["metrics"])
        if name in ("detection", "fuzz"):
            m = result["metrics"]
            assert m["balanced_accuracy"] == m["f1"] == 1.0 and m["n"] == 40
            assert m["n_failed"] == 0


def test_wrong_explanations_score_about_chance(bench: dict, tiny_corpus) -> None:
    # Each latent gets its neighbour's explanation: a real word, just not this latent's.
    wrong = right(bench)[1:] + right(bench)[:1]
    with ScriptedLLMServer(known_answer_responder) as server:
        cfg = config(bench, tiny_corpus, server.url)
        results = asyncio.run(score_all(cfg, bench["records"], wrong, ("detection", "fuzz")))
    for name in ("detection", "fuzz"):
        scores = [results[(name, i)]["metrics"]["balanced_accuracy"] for i in range(N_LATENTS)]
        assert abs(sum(scores) / len(scores) - 0.5) <= 0.1, (name, scores)
        assert max(scores) < 0.75, (name, scores)


def test_faults_leave_answered_examples_right_and_a_rerun_completes_them(
    bench: dict, tiny_corpus
) -> None:
    """30% of requests fail in one of five ways. The client retries once and the scorers re-ask
    an unreadable answer once, so some batches still fail: they must be left out and counted,
    and a rerun given the first results must ask exactly those batches."""
    records, explanations = bench["records"], right(bench)
    flaky = ScriptedLLMServer(known_answer_responder, fault_rate=0.3, hang_s=1.0, fault_seed=1)
    with flaky:
        cfg = config(
            bench,
            tiny_corpus,
            flaky.url,
            max_retries=1,
            answer_retries=1,
            request_timeout=0.3,
        )
        first = asyncio.run(score_all(cfg, records, explanations))
    assert set(flaky.faults_injected) == {"429", "500", "hang", "truncated", "garbage"}
    failed_batches = 0
    for key, result in first.items():
        m = result["metrics"]
        failed_batches += m["n_failed_batches"]
        assert result["incomplete"] is (m["n_failed_batches"] > 0), key
        if m["n"]:
            assert headline(result) == pytest.approx(1.0), (key, m)
        failed = [e for e in result["examples"] if e["prediction"] is None]
        assert m["n_failed"] == len(failed)
    assert failed_batches > 0, "30% faults should have failed some batches"
    assert sum(r["metrics"]["n_retries"] for r in first.values()) > 0

    with ScriptedLLMServer(known_answer_responder) as server:
        cfg = config(bench, tiny_corpus, server.url)
        second = asyncio.run(score_all(cfg, records, explanations, previous=first))
        assert server.chat_requests == failed_batches  # only what had failed is asked again
    with ScriptedLLMServer(known_answer_responder) as server:
        cfg = config(bench, tiny_corpus, server.url)
        clean = asyncio.run(score_all(cfg, records, explanations))
    for key, result in second.items():
        assert result["incomplete"] is False and result["error"] is None, key
        assert headline(result) == pytest.approx(1.0), key
        assert result["examples"] == clean[key]["examples"], key


def test_cut_off_and_garbage_explanations_are_asked_again_over_http(
    bench: dict, tiny_corpus
) -> None:
    """Through the real client: an answer cut off at the token limit and a garbage one are not
    explanations; the explainer asks again and keeps the first well-formed answer."""
    seen: dict[str, int] = {}

    def flaky(request: dict) -> Any:
        user = request["messages"][-1]["content"]
        seen[user] = seen.get(user, 0) + 1
        good = known_answer_responder(request)
        if seen[user] == 1:
            return {"text": good.rsplit('"', 2)[0], "finish_reason": "length"}
        if seen[user] == 2:
            return "lorem ipsum dolor sit amet"
        return good

    with ScriptedLLMServer(flaky) as server:
        cfg = config(bench, tiny_corpus, server.url, answer_retries=2)
        explained = asyncio.run(explain_all(cfg, bench["records"]))
    assert [e.explanation for e in explained] == right(bench)
    assert all(e.retries == 2 for e in explained)
    seen.clear()
    with ScriptedLLMServer(flaky) as server:
        cfg = config(bench, tiny_corpus, server.url, answer_retries=1)
        explained = asyncio.run(explain_all(cfg, bench["records"]))
    assert all(e.explanation is None and "no [EXPLANATION]" in e.error for e in explained)


# ------------------------------------------------------------------------- through the CLI


def cli_args(bench: dict, corpus: Path, results: Path, url: str, name: str) -> list[str]:
    return [
        str(bench["model"]), str(bench["sae"]),
        "--hookpoints", "embed_tokens", "--max_latents", str(N_LATENTS),
        "--dataset_repo", str(corpus), "--dataset_split", "train",
        "--n_tokens", "16384", "--cache_ctx_len", "64", "--batch_size", "16",
        "--min_examples", "20", "--n_examples_train", "10", "--n_examples_test", "20",
        "--n_non_activating", "20", "--example_ctx_len", "16",
        "--num_examples_per_scorer_prompt", "5", "--scorers", "detection", "fuzz",
        "--explainer_provider", "vllm", "--explainer_model", "test-model",
        "--explainer_api_base_url", url, "--structured_output", "off",
        "--max_retries", "1", "--answer_retries", "1", "--request_timeout", "0.3",
        "--results_dir", str(results), "--name", name, "--device", "cpu", "--no-verbose",
        "--null_baseline", "none",  # real scores only; tests/test_null_baseline.py runs the null
    ]  # fmt: skip


def score_files(run: Path) -> dict[tuple[str, str], dict]:
    return {
        (p.parent.name, p.stem): json.loads(p.read_text())
        for p in sorted((run / "scores").glob("*/*_latent_*.txt"))
    }


def score_path(run: Path, key: tuple[str, str]) -> Path:
    return run / "scores" / key[0] / f"{key[1]}.txt"


def scorer_requests(server: ScriptedLLMServer) -> int:
    users = [r["messages"][-1]["content"] for r in server.requests]
    return sum(1 for text in users if text.startswith("Explanation:"))


def test_cli_run_with_faults_then_rerun_completes_only_the_failed_batches(
    bench: dict, tiny_corpus, tmp_path: Path
) -> None:
    from autointerp_full.cli import main

    with ScriptedLLMServer(known_answer_responder) as server:
        assert main(cli_args(bench, tiny_corpus, tmp_path, server.url, "clean")) == 0
    clean = score_files(tmp_path / "clean")
    assert len(clean) == 2 * N_LATENTS
    assert all(f["metrics"]["accuracy"] == 1.0 and not f["incomplete"] for f in clean.values())

    flaky = ScriptedLLMServer(known_answer_responder, fault_rate=0.3, hang_s=1.0, fault_seed=2)
    with flaky:
        # No re-asks here, so that failed batches are all but certain (~13% of them).
        args = cli_args(bench, tiny_corpus, tmp_path, flaky.url, "f")
        assert main([*args, "--answer_retries", "0"]) == 0
    first = score_files(tmp_path / "f")
    for key, result in first.items():
        if result["metrics"].get("n"):
            assert result["metrics"]["accuracy"] == 1.0, key  # failures never count as wrong
    incomplete = [k for k, f in first.items() if f["incomplete"] or f["error"]]
    assert incomplete, "30% faults should leave some latent incomplete"
    # What the rerun must ask: the failed batches of incomplete files, every batch of a
    # latent that has no score file yet (its explanation failed).
    owed = sum(f["metrics"]["n_failed_batches"] for f in first.values() if f["incomplete"])
    owed += sum(clean[k]["metrics"]["n_batches"] for k in clean if k not in first)
    done = {k for k, f in first.items() if not f["incomplete"] and not f["error"]}
    stamps = {k: score_path(tmp_path / "f", k).stat().st_mtime_ns for k in done}

    with ScriptedLLMServer(known_answer_responder) as server:
        assert main(cli_args(bench, tiny_corpus, tmp_path, server.url, "f")) == 0
        assert scorer_requests(server) == owed
    second = score_files(tmp_path / "f")
    assert set(second) == set(clean)
    for key, result in second.items():
        assert not result["incomplete"] and result["error"] is None, key
        assert result["examples"] == clean[key]["examples"], key
    for key in done:
        assert score_path(tmp_path / "f", key).stat().st_mtime_ns == stamps[key], f"{key} redone"
