"""Scorers against scripted LLM clients (known answers give known metrics), the tiny subject
model (surprisal) and the real MiniLM embedder (embedding)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from collections.abc import Callable
from typing import Any

import pytest

from autointerp_full.config import RunConfig
from autointerp_full.examples.types import Example, LatentRecord
from autointerp_full.llm.base import Completion, LLMError, TokenLogprob
from autointerp_full.scorers import SCORERS
from autointerp_full.scorers.base import auc, binary_metrics, pearson, seeded_rng
from autointerp_full.scorers.classifier import (
    DetectionScorer,
    FuzzScorer,
    answer_probabilities,
    highlight,
    parse_binary_answers,
)
from autointerp_full.scorers.intruder import IntruderScorer, parse_choice
from autointerp_full.scorers.simulation import SimulationScorer, parse_predictions

EXPLANATION = "the word cat"


# ------------------------------------------------------------------------- test doubles


def FakePrompts() -> Any:  # noqa: N802 - reads like the class it stands for
    """The real built-in prompts."""
    from autointerp_full.prompts import default_prompts

    return default_prompts()


class ScriptedClient:
    """An async LLM client whose answers come from `answer(user_message, kwargs)`.

    A returned str becomes the completion text; a Completion is passed through; an exception
    is raised. It records every request and the largest number of requests in flight."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], Any]) -> None:
        self.answer = answer
        self.requests: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> Completion:
        self.requests.append((messages, kwargs))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            user = [m["content"] for m in messages if m["role"] == "user"][-1]
            out = self.answer(user, kwargs)
        finally:
            self.in_flight -= 1
        if isinstance(out, BaseException):
            raise out
        if isinstance(out, Completion):
            return out
        return Completion(text=out, prompt_tokens=10, completion_tokens=5)


def example(words: list[str], hot: str | None, quantile: int) -> Example:
    str_tokens = [(" " if i else "") + w for i, w in enumerate(words)]
    acts = [4.0 if hot is not None and w == hot else 0.0 for w in words]
    return Example(list(range(len(words))), str_tokens, acts, quantile)


def make_record(n_test: int = 10, n_non: int = 10) -> LatentRecord:
    """Activating windows contain 'cat' (the only activating token); the others never do."""
    test = [example(["the", "cat", "sat", f"t{i}"], "cat", i % 3) for i in range(n_test)]
    non = [example(["a", "dog", "ran", f"n{i}"], None, -1) for i in range(n_non)]
    return LatentRecord("layers.1", 7, 100, 0.01, 4.0, [], test, non)


def cfg(**changes: Any) -> RunConfig:
    """A remote provider: the scripted clients answer whole, as a chat API does."""
    remote = {"explainer_provider": "vllm", "explainer_api_base_url": "http://127.0.0.1:9/v1"}
    return RunConfig(**{"num_examples_per_scorer_prompt": 5, **remote, **changes})


def numbered_examples(user: str) -> list[str]:
    return re.findall(r"^Example \d+: (.*)$", user, re.MULTILINE)


def run(scorer: Any, record: LatentRecord, explanation: str | None = EXPLANATION) -> dict:
    return asyncio.run(scorer.score(record, explanation))


def run_with(scorer: Any, record: LatentRecord, previous: dict | None = None) -> dict:
    return asyncio.run(scorer.score(record, EXPLANATION, previous=previous))


def perfect_detection(user: str, kwargs: dict) -> str:
    return json.dumps([1 if "cat" in text else 0 for text in numbered_examples(user)])


# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("[1, 0, 1]", 3, [True, False, True]),
        ("Sure! My answer: [0,0,1] final", 3, [False, False, True]),
        ("['yes', 'no']", 2, [True, False]),
        ("1. yes\n2. No\n3. YES", 3, [True, False, True]),
        ("Example 1: 1\nExample 2: 0", 2, [True, False]),
        ("1 0 1 1", 4, [True, False, True, True]),
        ("Yes", 1, [True]),
        ("[1, 0] wait, [0, 1, 1]", 3, [False, True, True]),
        ("[1, 0]", 3, None),
        ("I cannot decide.", 2, None),
        ("1. maybe\n2. no", 2, None),
    ],
)
def test_parse_binary_answers(text: str, n: int, expected: list[bool] | None) -> None:
    assert parse_binary_answers(text, n) == expected


def test_parse_predictions_pads_and_trims() -> None:
    assert parse_predictions("1: 1\n2: 2\n3: 30", 3) == ([1.0, 2.0, 10.0], 3)
    assert parse_predictions("1: 4\n3: 5", 3) == ([4.0, 0.0, 5.0], 2)
    assert parse_predictions("1: 1\n2: 2\n3: 3\n4: 4", 2) == ([1.0, 2.0], 4)
    assert parse_predictions("[4, 5]", 3) == ([4.0, 5.0, 0.0], 2)
    assert parse_predictions("no numbers", 2) is None


def test_parse_choice() -> None:
    assert parse_choice("Reasoning about 1 and 3... ANSWER: 3", 5) == 3
    assert parse_choice("Example 4", 5) == 4
    assert parse_choice("Either 1 or 2", 5) is None
    assert parse_choice("ANSWER: 9", 5) is None


def test_highlight_merges_runs() -> None:
    assert highlight(["a", " b", " c", " d"], {1, 2}) == "a <<b c>> d"
    assert highlight(["a", " b"], set()) == "a b"


# ------------------------------------------------------------------------------ metrics


def test_binary_metrics_known_pattern() -> None:
    labels = [True, True, True, True, False, False]
    predictions = [True, True, False, None, True, False]
    m = binary_metrics(labels, predictions)
    # The failed prediction is left out of every metric and counted.
    assert m["n"] == 5 and m["n_failed"] == 1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["f1"] == pytest.approx(2 / 3)


def test_binary_metrics_ignore_failures_entirely() -> None:
    # Perfect answers plus failures: the failures must not pull any metric down.
    labels = [True, False] * 5
    predictions = [True, False, None, None, True, False, None, False, True, None]
    m = binary_metrics(labels, predictions)
    assert (m["accuracy"], m["balanced_accuracy"], m["precision"], m["recall"], m["f1"]) == (
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert m["n"] == 6 and m["n_failed"] == 4
    nothing = binary_metrics([True, False], [None, None])
    assert nothing["n"] == 0 and nothing["accuracy"] is None and nothing["recall"] is None


def test_auc_and_pearson() -> None:
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 1], [1, 1]) == 0.5
    assert auc([], [1]) is None
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None


def test_seeded_rng_is_stable_and_distinct() -> None:
    a = seeded_rng(22, "layers.1", 7, "detection").random()
    assert a == seeded_rng(22, "layers.1", 7, "detection").random()
    assert a != seeded_rng(22, "layers.1", 8, "detection").random()


# ---------------------------------------------------------------------------- detection


def test_registry_names_every_scorer() -> None:
    assert set(SCORERS) == {"detection", "fuzz", "simulation", "surprisal", "embedding", "intruder",
                            "intervention", "output_detection"}  # fmt: skip
    assert SCORERS["intruder"].needs_explanation is False


def test_detection_perfect_client() -> None:
    client = ScriptedClient(perfect_detection)
    result = run(DetectionScorer(client, FakePrompts(), cfg()), make_record())
    m = result["metrics"]
    assert (m["accuracy"], m["recall"], m["precision"], m["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["n"] == 20 and m["n_failed"] == 0 and result["error"] is None
    assert (m["n_batches"], m["n_failed_batches"], m["n_retries"]) == (4, 0, 0)
    assert result["incomplete"] is False
    assert result["scorer"] == "detection" and result["latent"] == 7
    assert result["explanation"] == EXPLANATION
    assert len(client.requests) == 4  # 20 examples, 5 per prompt
    ex = result["examples"][0]
    assert set(ex) == {"text", "activating", "quantile", "batch", "prediction", "correct"}
    assert sorted({e["batch"] for e in result["examples"]}) == [0, 1, 2, 3]
    assert sum(e["activating"] for e in result["examples"]) == 10
    # Requests of one latent run concurrently, every one with the same system prompt first.
    assert client.max_in_flight > 1
    systems = {msgs[0]["content"] for msgs, _ in client.requests}
    assert len(systems) == 1 and client.requests[0][0][0]["role"] == "system"
    assert EXPLANATION in client.requests[0][0][-1]["content"]


def test_detection_shuffle_is_seeded_and_mixed() -> None:
    order = []
    for _ in range(2):
        client = ScriptedClient(perfect_detection)
        result = run(DetectionScorer(client, FakePrompts(), cfg()), make_record())
        order.append([e["text"] for e in result["examples"]])
    assert order[0] == order[1]
    assert [("cat" in t) for t in order[0]] != [True] * 10 + [False] * 10  # mixed
    other_seed = run(
        DetectionScorer(ScriptedClient(perfect_detection), FakePrompts(), cfg(seed=5)),
        make_record(),
    )
    assert [e["text"] for e in other_seed["examples"]] != order[0]


def test_detection_always_zero_has_zero_recall() -> None:
    client = ScriptedClient(lambda user, kw: str([0] * len(numbered_examples(user))))
    m = run(DetectionScorer(client, FakePrompts(), cfg()), make_record())["metrics"]
    assert m["recall"] == 0.0 and m["accuracy"] == 0.5 and m["balanced_accuracy"] == 0.5
    assert m["precision"] == 0.0 and m["f1"] == 0.0


def test_unreadable_answers_are_asked_again_then_counted_and_left_out() -> None:
    calls: dict[str, int] = {}

    def answer(user: str, kw: dict) -> Any:
        texts = numbered_examples(user)
        key = texts[0]
        calls[key] = calls.get(key, 0) + 1
        if len(calls) == 1 or calls.get("first") == key:
            calls["first"] = key  # the first batch asked never gets a readable answer
            return "I am not sure what you mean."
        if len(calls) == 3 and calls[key] == 1:
            return "Hmm."  # the second batch asked is readable on its second try
        if len(calls) == 4:
            return LLMError("server returned 500 after 5 retries")  # not re-asked
        return perfect_detection(user, kw)

    client = ScriptedClient(answer)
    result = run(DetectionScorer(client, FakePrompts(), cfg(answer_retries=2)), make_record())
    m = result["metrics"]
    # 4 batches of 5: one unreadable three times (1 + 2 retries), one failed request.
    assert m["n_failed_batches"] == 2 and m["n_failed"] == 10 and m["n"] == 10
    assert m["n_retries"] == 3
    assert len(client.requests) == 3 + 2 + 1 + 1
    # The answered examples were all right, so every metric is perfect.
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert result["error"] is None and result["incomplete"] is True
    failed = [e for e in result["examples"] if e["prediction"] is None]
    assert len(failed) == 10 and all(e["correct"] is None for e in failed)
    assert len({e["batch"] for e in failed}) == 2
    assert any("unreadable" in f for f in result["failures"])
    assert any("500" in f for f in result["failures"])
    # A retry samples instead of repeating the greedy answer.
    assert sorted({kw["temperature"] for _, kw in client.requests}) == [0.0, 0.7]


def test_rerun_with_previous_asks_only_the_failed_batches() -> None:
    first = {"n": 0}

    def flaky(user: str, kw: dict) -> Any:
        first["n"] += 1
        return LLMError("timeout") if first["n"] in (2, 3) else perfect_detection(user, kw)

    scorer = DetectionScorer(ScriptedClient(flaky), FakePrompts(), cfg())
    before = run_with(scorer, make_record())
    assert before["incomplete"] is True and before["metrics"]["n_failed_batches"] == 2
    failed_texts = {e["text"] for e in before["examples"] if e["prediction"] is None}

    client = ScriptedClient(perfect_detection)
    after = run_with(DetectionScorer(client, FakePrompts(), cfg()), make_record(), before)
    assert len(client.requests) == 2  # only the two failed batches
    asked = {t for msgs, _ in client.requests for t in numbered_examples(msgs[-1]["content"])}
    assert asked == failed_texts
    m = after["metrics"]
    assert after["incomplete"] is False and m["n"] == 20 and m["n_failed"] == 0
    assert m["accuracy"] == 1.0 and m["n_failed_batches"] == 0
    # Same examples, same order, same batches as a run that never failed.
    clean = run(
        DetectionScorer(ScriptedClient(perfect_detection), FakePrompts(), cfg()), make_record()
    )
    assert after["examples"] == clean["examples"]
    # A previous result of another scorer, or on other examples, is not reused.
    client = ScriptedClient(perfect_detection)
    run_with(
        DetectionScorer(client, FakePrompts(), cfg()), make_record(), {**before, "scorer": "fuzz"}
    )
    assert len(client.requests) == 4
    client = ScriptedClient(perfect_detection)
    run_with(DetectionScorer(client, FakePrompts(), cfg(seed=3)), make_record(), before)
    assert len(client.requests) == 4
    client = ScriptedClient(perfect_detection)
    other = DetectionScorer(client, FakePrompts(), cfg())
    asyncio.run(other.score(make_record(), "another explanation", previous=before))
    assert len(client.requests) == 4


def test_detection_every_request_failing_sets_error() -> None:
    client = ScriptedClient(lambda user, kw: LLMError("connection refused"))
    result = run(DetectionScorer(client, FakePrompts(), cfg()), make_record(4, 4))
    assert result["error"] and "connection refused" in result["error"]
    assert result["metrics"]["n_failed"] == 8


def test_detection_without_explanation_is_an_error_not_a_crash() -> None:
    client = ScriptedClient(perfect_detection)
    result = run(DetectionScorer(client, FakePrompts(), cfg()), make_record(), None)
    assert result["error"] and not client.requests


def lp(token: str, top: dict[str, float]) -> TokenLogprob:
    return TokenLogprob(token, max(top.values()), top)


def test_detection_logprob_probabilities() -> None:
    # Every answer is "1"; the model gives 0.8 to "1" and 0.2 to "0" at each position.
    def answer(user: str, kw: dict) -> Completion:
        assert kw["logprobs"] is True and kw["top_logprobs"] > 0
        n = len(numbered_examples(user))
        tokens = [lp("[", {"[": 0.0})]
        for i in range(n):
            tokens.append(lp("1" if i == 0 else " 1", {"1": math.log(0.8), "0": math.log(0.2)}))
            tokens.append(lp("," if i < n - 1 else "]", {",": 0.0}))
        return Completion("[" + ", ".join(["1"] * n) + "]", 10, 10, tokens)

    result = run(
        DetectionScorer(ScriptedClient(answer), FakePrompts(), cfg(log_probs=True)), make_record()
    )
    probs = [e["probability"] for e in result["examples"]]
    assert probs == pytest.approx([0.8] * 20)
    assert result["metrics"]["recall"] == 1.0


def test_answer_probabilities_mismatch_gives_none() -> None:
    tokens = [lp("[1", {"[1": math.log(0.9), "[0": math.log(0.1)}), lp("]", {"]": 0.0})]
    assert answer_probabilities(tokens, 1) == pytest.approx([0.9])
    assert answer_probabilities(tokens, 2) is None
    assert answer_probabilities(None, 1) is None


# --------------------------------------------------------------------------------- fuzz


def test_fuzz_highlights_and_perfect_client() -> None:
    def answer(user: str, kw: dict) -> str:
        return str([1 if " <<cat>>" in text else 0 for text in numbered_examples(user)])

    client = ScriptedClient(answer)
    result = run(FuzzScorer(client, FakePrompts(), cfg()), make_record())
    assert result["metrics"]["accuracy"] == 1.0
    for e in result["examples"]:
        assert e["text"].count("<<") == 1  # one activating token, so one mark on every example
        if e["activating"]:
            assert " <<cat>>" in e["text"]
    system = client.requests[0][0][0]["content"]
    assert system == FakePrompts().get("scorers.fuzz.system").strip()


# --------------------------------------------------------------------------- simulation


def shown_tokens(user: str) -> list[str]:
    return [json.loads(t) for t in re.findall(r'^\d+: (".*")$', user, re.MULTILINE)]


def lines(values: list[int]) -> str:
    return "\n".join(f"{i}: {v}" for i, v in enumerate(values, 1))


def test_simulation_perfect_predictions_correlate() -> None:
    def answer(user: str, kw: dict) -> str:
        return lines([10 if t.strip() == "cat" else 0 for t in shown_tokens(user)])

    client = ScriptedClient(answer)
    result = run(SimulationScorer(client, FakePrompts(), cfg()), make_record(8, 8))
    m = result["metrics"]
    assert m["correlation"] == pytest.approx(1.0)
    assert m["per_example_correlation"] == pytest.approx(1.0)
    assert m["n"] == 8 + 2 and m["n_failed"] == 0  # every test example + a quarter as many others
    first = next(e for e in result["examples"] if e["activating"])
    assert first["true"] == [0.0, 10.0, 0.0, 0.0]
    assert shown_tokens(client.requests[0][0][-1]["content"])[0] in ("the", "a")
    assert client.max_in_flight > 1


def test_simulation_anti_correlated_and_length_mismatch() -> None:
    def answer(user: str, kw: dict) -> str:
        if "dog" in user:
            return lines([0, 0])  # two values for four tokens: padded, counted
        return lines([5, 0, 5, 5])

    result = run(SimulationScorer(ScriptedClient(answer), FakePrompts(), cfg()), make_record(4, 4))
    m = result["metrics"]
    assert m["correlation"] < 0 and m["per_example_correlation"] == pytest.approx(-1.0)
    assert m["n_length_mismatch"] == 1
    non = next(e for e in result["examples"] if not e["activating"])
    assert non["prediction"] == [0.0, 0.0, 0.0, 0.0]
    assert non["length_mismatch"] == {"expected": 4, "found": 2}


def test_simulation_logprob_expected_values() -> None:
    def answer(user: str, kw: dict) -> Completion:
        assert kw["logprobs"] is True and kw["top_logprobs"] >= 11
        tokens = []
        for i in range(4):
            # Even split between 0 and 10 -> 5; the "cat" position (index 1) confidently 10.
            top = {" 10": 0.0} if i == 1 else {" 0": math.log(0.5), " 10": math.log(0.5)}
            tokens += [lp(str(i + 1), {str(i + 1): 0.0}), lp(":", {":": 0.0})]
            tokens += [lp(max(top, key=top.get), top), lp("\n", {"\n": 0.0})]
        return Completion(lines([0, 10, 0, 0]), 10, 10, tokens)

    result = run(
        SimulationScorer(ScriptedClient(answer), FakePrompts(), cfg(log_probs=True)),
        make_record(2, 0),
    )
    ex = result["examples"][0]
    assert ex["mode"] == "logprobs"
    assert ex["prediction"] == pytest.approx([5.0, 10.0, 5.0, 5.0])
    assert result["metrics"]["correlation"] == pytest.approx(1.0)


def test_simulation_failures_recorded() -> None:
    client = ScriptedClient(lambda user, kw: LLMError("timeout"))
    result = run(SimulationScorer(client, FakePrompts(), cfg()), make_record(2, 2))
    assert result["metrics"]["n_failed"] == 3 and result["error"]
    assert result["metrics"]["correlation"] is None


# ----------------------------------------------------------------------------- intruder


def test_intruder_perfect_and_malformed() -> None:
    def perfect(user: str, kw: dict) -> str:
        texts = numbered_examples(user)
        return str(next(i for i, t in enumerate(texts, 1) if " <<cat>>" not in t))

    client = ScriptedClient(perfect)
    result = run(IntruderScorer(client, FakePrompts(), cfg()), make_record(8, 5), None)
    m = result["metrics"]
    assert m == {
        "accuracy": 1.0,
        "n": 2,
        "n_failed": 0,
        "chance": 0.2,
        "n_batches": 2,
        "n_failed_batches": 0,
        "n_retries": 0,
    }
    assert all(len(e["shown"]) == 5 for e in result["examples"])
    # Every example, the intruder included, has one marked token.
    assert all(t.count("<<") == 1 for e in result["examples"] for t in e["shown"])
    positions = {e["intruder"] for e in result["examples"]}
    assert positions <= set(range(1, 6))
    assert client.max_in_flight == 2

    vague = ScriptedClient(lambda user, kw: "It could be 1 or 2.")
    result = run(IntruderScorer(vague, FakePrompts(), cfg()), make_record(8, 5), None)
    m = result["metrics"]
    # Unreadable every time (1 + 2 re-asks per prompt): nothing scored, nothing counted wrong.
    assert m["accuracy"] is None and m["n_failed"] == 2 and m["n"] == 0
    assert m["n_retries"] == 4 and len(vague.requests) == 6
    assert result["error"] and result["incomplete"] is True


def test_intruder_too_few_examples() -> None:
    client = ScriptedClient(lambda user, kw: "ANSWER: 1")
    result = run(IntruderScorer(client, FakePrompts(), cfg()), make_record(3, 5), None)
    assert result["error"] and not client.requests


# ---------------------------------------------------------------------------- surprisal


def test_surprisal_on_tiny_model(tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    from autointerp_full.scorers.surprisal import SurprisalScorer, load_model, text_losses

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def ex(text: str, active: bool) -> Example:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        strs = [tok.decode([i]) for i in ids]
        return Example(ids, strs, [1.0 if active else 0.0] * len(ids), 0 if active else -1)

    test = [ex("the cat sat on a mat", True), ex("one two three four", True)]
    non = [ex("python code function class", False), ex("red blue green", False)]
    record = LatentRecord("layers.1", 3, 10, 0.1, 1.0, [], test, non)
    config = cfg(model=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=3)
    result = run(SurprisalScorer(None, None, config), record)
    m = result["metrics"]
    assert result["error"] is None and m["n"] == 4
    assert 0.0 <= m["auc"] <= 1.0
    for e in result["examples"]:
        assert e["prediction"] == pytest.approx(
            e["loss_without_explanation"] - e["loss_with_explanation"]
        )
        assert 0 < e["loss_with_explanation"] < 20
    # Padding must not change the losses: batch of 1 == batch of 4.
    model, tokenizer = load_model(config)
    texts = [e.tokens for e in test + non]
    one = text_losses(model, tokenizer, "Text:", texts, 1)
    four = text_losses(model, tokenizer, "Text:", texts, 4)
    assert one == pytest.approx(four, abs=1e-4)
    assert load_model(config)[0] is model  # loaded once, then cached


# ---------------------------------------------------------------------------- embedding


def test_embedding_with_minilm() -> None:
    pytest.importorskip("sentence_transformers")
    from autointerp_full.scorers.embedding import EmbeddingScorer

    def ex(text: str, active: bool) -> Example:
        words = text.split(" ")
        strs = [(" " if i else "") + w for i, w in enumerate(words)]
        return Example(list(range(len(words))), strs, [1.0] * len(words), 0 if active else -1)

    test = [
        ex("The kitten purred on the sofa", True),
        ex("My cat chased a mouse", True),
        ex("Cats and kittens love to nap", True),
    ]
    non = [
        ex("The stock market fell sharply today", False),
        ex("Compile the code with gcc", False),
        ex("Rain is expected over the weekend", False),
    ]
    record = LatentRecord("layers.1", 1, 10, 0.1, 1.0, [], test, non)
    result = run(EmbeddingScorer(None, None, cfg(device="cpu")), record, "cats and kittens")
    m = result["metrics"]
    assert m["auc"] == 1.0 and m["similarity_difference"] > 0.1
    assert all(-1.0 <= e["prediction"] <= 1.0 for e in result["examples"])


def test_prefilled_list_takes_the_first_answers() -> None:
    from autointerp_full.scorers.classifier import parse_prefilled_list

    assert parse_prefilled_list("[1, 0, 1, 1, 1, 1, 1, 1", 3) == [True, False, True]
    assert parse_prefilled_list("[1, 0", 3) is None
    assert parse_prefilled_list("The answer is [1, 0, 1]", 3) is None


def test_offline_provider_prefills_the_list_and_reads_a_run_on_answer() -> None:
    from autointerp_full.config import RunConfig
    from autointerp_full.scorers import SCORERS

    record = make_record(n_test=5, n_non=5)
    client = ScriptedClient(lambda user, kw: "1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1")
    cfg = RunConfig(explainer_provider="offline", num_examples_per_scorer_prompt=5)
    result = asyncio.run(SCORERS["detection"](client, None, cfg).score(record, "cats"))
    assert result["error"] is None
    assert all(e["prediction"] is True for e in result["examples"])
    messages = client.requests[0][0]
    assert messages[-1] == {"role": "assistant", "content": "["}

    api = RunConfig(explainer_provider="vllm", explainer_api_base_url="http://x/v1")
    client = ScriptedClient(lambda user, kw: "1, 1, 1, 1, 1, 1, 1, 1")
    result = asyncio.run(SCORERS["detection"](client, None, api).score(record, "cats"))
    assert client.requests[0][0][-1]["role"] != "assistant"
    assert result["error"] is not None  # an unbracketed run-on is not read without a prefill


def test_local_models_get_an_answer_opening_for_every_format() -> None:
    from autointerp_full.config import RunConfig
    from autointerp_full.scorers import SCORERS

    record = make_record(n_test=4, n_non=4)
    cfg = RunConfig(explainer_provider="offline", num_examples_per_scorer_prompt=4)

    intruder = ScriptedClient(lambda user, kw: "2. Example 1 and example 3 share a theme.")
    result = asyncio.run(SCORERS["intruder"](intruder, None, cfg).score(record, None))
    assert intruder.requests[0][0][-1]["content"] == "The intruder is example "
    assert result["metrics"]["n_failed"] == 0

    simulation = ScriptedClient(lambda user, kw: " 0\n2: 3\n3: 0")
    result = asyncio.run(SCORERS["simulation"](simulation, None, cfg).score(record, "cats"))
    assert simulation.requests[0][0][-1]["content"] == "1:"
    assert result["metrics"]["n_failed"] == 0


# ------------------------------------------------------------------ side channels (fuzz)


def marked_words(text: str) -> frozenset[int]:
    """Which words carry marks, for texts whose tokens are one " word" each."""
    marked, inside = set(), False
    for i, word in enumerate(text.split()):
        inside = inside or word.startswith("<<")
        if inside:
            marked.add(i)
        inside = inside and not word.endswith(">>")
    return frozenset(marked)


def realistic_record(rng: random.Random, latent: int, length: int = 16) -> LatentRecord:
    """Windows centred on the peak (as the example builder makes them), a run of activations
    of random width around it and now and then a second, separate one; zeros elsewhere."""
    words = [f"w{j}" for j in range(40)]

    def window(active: bool) -> Example:
        toks = [" " + rng.choice(words) for _ in range(length)]
        acts = [0.0] * length
        if active:
            centre = length // 2
            acts[centre] = rng.uniform(1, 10)
            for side in (-1, 1):
                j = centre + side
                while 0 <= j < length and rng.random() < 0.4:
                    acts[j] = acts[centre] * rng.uniform(0.1, 1.0)
                    j += side
            if rng.random() < 0.3:
                acts[rng.randrange(length)] = acts[centre] * rng.uniform(0.2, 0.9)
        return Example(list(range(length)), toks, acts, 0 if active else -1)

    n_test, n_non = rng.randint(6, 14), rng.randint(6, 14)
    test = [window(True) for _ in range(n_test)]
    non = [window(False) for _ in range(n_non)]
    return LatentRecord("layers.1", latent, 100, 0.01, 10.0, [], test, non)


def balanced_accuracy(labels: list[bool], predictions: list[bool]) -> float:
    return binary_metrics(labels, predictions)["balanced_accuracy"]


def test_fuzz_marks_alone_tell_nothing() -> None:
    """A scorer that never reads the explanation and sees only where the marks fall must be at
    chance: decoy marks copy the count, runs and places of real ones."""
    rng = random.Random(0)
    records = [realistic_record(rng, i) for i in range(300)]
    centre = 8

    def by_position(user: str, kw: dict) -> str:
        marks = [marked_words(t) for t in numbered_examples(user)]
        # "One run through the centre" was the old giveaway: true marks are centred runs.
        run_at_centre = [
            int(centre in m and max(m) - min(m) + 1 == len(m)) if m else 0 for m in marks
        ]
        return str(run_at_centre)

    labels, predictions = [], []
    for record in records:
        result = run(FuzzScorer(ScriptedClient(by_position), FakePrompts(), cfg()), record)
        labels += [e["activating"] for e in result["examples"]]
        predictions += [e["prediction"] for e in result["examples"]]
    assert abs(balanced_accuracy(labels, predictions) - 0.5) <= 0.05

    # A classifier that learns mark patterns from half of the latents and predicts the other half.
    scorer = FuzzScorer(None, None, cfg())
    items = [scorer.items(r, scorer.rng(r)) for r in records]
    seen: dict[frozenset[int], list[int]] = {}
    for batch in items[:150]:
        for item in batch:
            seen.setdefault(marked_words(item.text), [0, 0])[item.activating] += 1
    labels, predictions = [], []
    for batch in items[150:]:
        for item in batch:
            neg, pos = seen.get(marked_words(item.text), [0, 0])
            labels.append(item.activating)
            predictions.append(pos > neg)
    assert abs(balanced_accuracy(labels, predictions) - 0.5) <= 0.05
    # Where a latent has as many decoys as real examples, their mark counts are the same.
    for batch in items:
        real = [len(marked_words(i.text)) for i in batch if i.activating]
        fake = [len(marked_words(i.text)) for i in batch if not i.activating]
        if len(fake) == len(real):
            assert sorted(real) == sorted(fake)


def test_fuzz_and_explainer_mark_by_one_rule() -> None:
    from autointerp_full.explainers.formatting import mark

    ex = Example([0, 1, 2, 3], [" a", " b", " c", " d"], [0.0, 10.0, 2.5, 3.5], 9)
    record = LatentRecord("layers.1", 1, 10, 0.1, 10.0, [], [ex], [])
    for threshold, expected in (
        (0.3, "a <<b>> c <<d>>"),
        (0.2, "a <<b c d>>"),
        (0.9, "a <<b>> c d"),
    ):
        items = FuzzScorer(None, None, cfg(highlight_threshold=threshold)).items(
            record, random.Random(0)
        )
        assert items[0].text.strip() == expected
        assert mark(ex, threshold=threshold) == expected


def test_simulation_constant_predictions_score_zero_and_are_counted() -> None:
    def half_flat(user: str, kw: dict) -> str:
        tokens = shown_tokens(user)
        if tokens[-1].strip() in ("t0", "t1"):
            return lines([3] * len(tokens))  # a flat guess on two activating examples
        return lines([10 if t.strip() == "cat" else 0 for t in tokens])

    result = run(
        SimulationScorer(ScriptedClient(half_flat), FakePrompts(), cfg()), make_record(4, 4)
    )
    m = result["metrics"]
    assert m["n_constant"] == 2
    # Two perfect examples (1.0) and two flat ones (0.0); non-activating ones have no correlation.
    assert m["per_example_correlation"] == pytest.approx(0.5)
    flat = [e for e in result["examples"] if e["text"].endswith(("t0", "t1"))]
    assert [e["correlation"] for e in flat] == [0.0, 0.0]

    always = ScriptedClient(lambda user, kw: lines([0] * len(shown_tokens(user))))
    m = run(SimulationScorer(always, FakePrompts(), cfg()), make_record(4, 4))["metrics"]
    assert m["correlation"] == 0.0 and m["per_example_correlation"] == 0.0
    assert m["n_constant"] == 4 and m["n"] == 5


def test_intruder_marks_alone_tell_nothing() -> None:
    """The intruder's marks copy an activating example's, so picking by mark pattern alone
    (the example whose marks look least like the others', or that misses the centre) is chance."""
    rng = random.Random(1)
    records = [realistic_record(rng, i) for i in range(300)]

    def odd_pattern(user: str, kw: dict) -> str:
        marks = [marked_words(t) for t in numbered_examples(user)]

        def oddness(m: frozenset[int]) -> tuple[int, int]:
            return (8 not in m, -sum(1 for other in marks if other == m))

        return str(max(range(len(marks)), key=lambda i: oddness(marks[i])) + 1)

    hits, total = 0, 0
    for record in records:
        result = run(
            IntruderScorer(ScriptedClient(odd_pattern), FakePrompts(), cfg()), record, None
        )
        hits += sum(1 for e in result["examples"] if e["correct"])
        total += len(result["examples"])
    assert total > 300 and abs(hits / total - 0.2) <= 0.05


def test_probability_auc_leaves_failed_batches_out() -> None:
    calls = {"n": 0}

    def answer(user: str, kw: dict) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return LLMError("gone")
        labels = [1 if "cat" in t else 0 for t in numbered_examples(user)]
        tokens = [lp("[", {"[": 0.0})]
        for v in labels:
            p = 0.9 if v else 0.1
            tokens.append(lp(str(v), {"1": math.log(p), "0": math.log(1 - p)}))
            tokens.append(lp(",", {",": 0.0}))
        return Completion(str(labels), 10, 10, tokens)

    result = run(
        DetectionScorer(ScriptedClient(answer), FakePrompts(), cfg(log_probs=True)), make_record()
    )
    m = result["metrics"]
    assert m["auc"] == 1.0 and m["n_probabilities"] == 15 and m["n_failed"] == 5
    failed = [e for e in result["examples"] if e["prediction"] is None]
    assert all(e["probability"] is None for e in failed)
