"""Explainers: the prompt each strategy builds, and robust parsing of the answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from autointerp_full.config import RunConfig
from autointerp_full.examples.types import Example, LatentRecord
from autointerp_full.explainers import ExplainResult, build_messages, explain, parse_explanation
from autointerp_full.explainers.formatting import mark
from autointerp_full.prompts import default_prompts


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: None = None


class RequestFailed(Exception):
    pass


@dataclass
class ScriptedClient:
    """Answers each generate() with the next scripted reply (an exception is raised instead)."""

    replies: list[object]
    calls: list[dict] = field(default_factory=list)

    async def generate(
        self,
        messages,
        *,
        max_tokens=256,
        temperature=0.0,
        logprobs=False,
        top_logprobs=0,
        schema=None,
    ):  # type: ignore[no-untyped-def]
        self.calls.append({"messages": messages, "max_tokens": max_tokens})
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply if hasattr(reply, "finish_reason") else Reply(str(reply))


def example(words: list[str], acts: list[float], quantile: int = 0) -> Example:
    return Example(
        tokens=list(range(len(words))),
        str_tokens=[" " + w for w in words],
        activations=acts,
        quantile=quantile,
    )


def record() -> LatentRecord:
    train = [
        example(["the", "cat", "sat", "down"], [0, 2.0, 0, 0], 1),
        example(["a", "black", "cat", "ran"], [0, 0, 9.0, 4.0], 9),
        example(["my", "cat", "and", "dog"], [0, 5.0, 0, 0.5], 5),
    ]
    negatives = [
        example(["stock", "prices", "fell", "today"], [0, 0, 0, 0], -1),
        example(["the", "river", "bank", "flooded"], [0, 0, 0, 0], -1),
    ]
    return LatentRecord(
        "layers.1", 7, 300, 0.01, 10.0, train=train, test=[], non_activating=negatives
    )


def api(**changes: object) -> RunConfig:
    """A remote provider: no answer opening is handed over, the reply is read as it comes."""
    return RunConfig(
        explainer_provider="vllm", explainer_api_base_url="http://127.0.0.1:9/v1", **changes
    )


def run(
    rec: LatentRecord, cfg: RunConfig, replies: list[object], existing: str | None = None
) -> tuple[ExplainResult, ScriptedClient]:
    client = ScriptedClient(list(replies))
    result = asyncio.run(explain(rec, client, default_prompts(), cfg, existing=existing))
    return result, client


def test_mark_merges_neighbouring_tokens() -> None:
    assert mark(record().train[1]) == "a black <<cat ran>>"
    assert mark(record().train[2]) == "my <<cat>> and dog"  # 0.5 < 30% of the peak
    assert mark(record().train[2], threshold=0.1) == "my <<cat>> and <<dog>>"


def test_default_prompt_and_answer() -> None:
    result, client = run(record(), api(), ["Some thinking.\n[EXPLANATION]: The word cat."])
    assert result == ExplainResult(
        "The word cat.", "Some thinking.\n[EXPLANATION]: The word cat.", None
    )
    system, user = client.calls[0]["messages"]
    assert system["role"] == "system" and "[EXPLANATION]:" in system["content"]
    assert (
        system["content"]
        == default_prompts().messages("explainers.default.system", "")[0]["content"]
    )
    text = user["content"]
    # Strongest example first, activating tokens marked, strengths listed, top tokens summarised.
    assert (
        text.index("a black <<cat ran>>")
        < text.index("my <<cat>> and dog")
        < text.index("the <<cat>> sat down")
    )
    assert 'Activations: "cat" (9), "ran" (4)' in text
    assert 'Most strongly activating tokens: "cat" (strength 9, 3x), "ran" (strength 4, 1x)' in text
    assert "stock prices" not in text


def test_faiss_source_defaults_to_contrastive() -> None:
    cfg = api(non_activating_source="FAISS")
    result, client = run(record(), cfg, ["Explanation: cats"])
    assert result.explanation == "cats"
    system, user = client.calls[0]["messages"]
    assert "NON-ACTIVATING" in system["content"]
    text = user["content"]
    assert (
        text.index("ACTIVATING excerpts:")
        < text.index("<<cat ran>>")
        < text.index("NON-ACTIVATING excerpts:")
        < text.index("stock prices fell today")
    )


def test_single_token_marks_only_the_peak() -> None:
    result, client = run(record(), api(explainer="single_token"), ['[EXPLANATION]: "cat"'])
    assert result.explanation == "cat"
    text = client.calls[0]["messages"][1]["content"]
    assert '1. "cat" (9) in: a black <<cat>> ran' in text


def test_np_max_act_and_cot() -> None:
    result, client = run(
        record(), api(explainer="np_max_act"), ["**[EXPLANATION]:** **Cat mentions**"]
    )
    assert result.explanation == "Cat mentions"
    assert "concise label" in client.calls[0]["messages"][0]["content"]
    cot_answer = (
        "Step 1: tokens are cat.\n[EXPLANATION]: maybe animals\nStep 3: check.\n"
        "[EXPLANATION]: the noun 'cat'"
    )
    result, client = run(record(), api(explainer="cot"), [cot_answer])
    assert result.explanation == "the noun 'cat'"
    assert client.calls[0]["max_tokens"] > 256
    assert "step by step" in client.calls[0]["messages"][0]["content"]


def test_none_reads_existing() -> None:
    result, client = run(record(), api(explainer="none"), [], existing="cats\n")
    assert result.explanation == "cats" and client.calls == []
    result, _ = run(record(), api(explainer="none"), [], existing=None)
    assert result.explanation is None and "no explanation on disk" in result.error


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("[EXPLANATION]: Dates in the future", "Dates in the future"),
        ("**Explanation:** `dates`", "dates"),
        ("Here is my answer\n\n## Explanation:\nDates and times\n", "Dates and times"),
        ('I think it is\n"the word cat"\nHope this helps!', None),  # no marker: not guessed
        ("Reasoning...\n- Numbers in tables\n", None),
        ('Thinking.\n[EXPLANATION]: "the word cat"\nHope this helps!', "the word cat"),
        ("[EXPLANATION]: [EXPLANATION]: numbers", "numbers"),
        ("lorem ipsum dolor sit amet", None),
        ("[EXPLANATION]: 42 17", None),  # no letters
        ("<think>hmm [EXPLANATION]: no</think>[EXPLANATION]: yes", "yes"),
        ("", None),
        ("   \n\n", None),
        ("[EXPLANATION]:", None),
        ("[EXPLANATION]: <your explanation>", None),
        ("...\n!!!", None),
    ],
)
def test_parse_explanation(answer: str, expected: str | None) -> None:
    assert parse_explanation(answer) == expected


def test_malformed_answers_and_errors_become_failures() -> None:
    for reply in ["", "[EXPLANATION]: <label>", "Just some words", "[EXPLANATION]: 1234"]:
        result, client = run(record(), api(answer_retries=2), [reply] * 3)
        assert result.explanation is None and result.error
        assert result.retries == 2 and len(client.calls) == 3  # asked again, then given up
    # A failed request was already retried by the client: it is not asked again.
    result, client = run(record(), api(), [RequestFailed("boom")])
    assert result.error == "LLM request failed: RequestFailed: boom" and len(client.calls) == 1


@dataclass
class CutReply:
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: None = None


def test_answers_cut_off_at_the_token_limit_are_retried_never_stored() -> None:
    cut = CutReply("Step 1...\n[EXPLANATION]: maybe animals\nStep 3: che", "length")
    whole = CutReply("Step 1...\n[EXPLANATION]: the noun 'cat'", "stop")
    result, client = run(record(), api(explainer="cot", answer_retries=1), [cut, whole])
    assert result.explanation == "the noun 'cat'" and result.retries == 1
    assert len(client.calls) == 2
    result, _ = run(record(), api(explainer="cot", answer_retries=1), [cut, cut])
    assert result.explanation is None and "cut off at the token limit" in result.error


def test_unreadable_answer_then_good_one_counts_a_retry() -> None:
    result, client = run(record(), api(), ["lorem ipsum", "[EXPLANATION]: cats"])
    assert result == ExplainResult("cats", "[EXPLANATION]: cats", None, 1)
    assert "no [EXPLANATION]: line" not in (result.error or "")


def test_local_models_are_handed_the_explanation_marker() -> None:
    result, client = run(record(), RunConfig(), [" the word cat\nmore rambling"])
    assert client.calls[0]["messages"][-1] == {"role": "assistant", "content": "[EXPLANATION]: "}
    assert result.explanation == "the word cat"
    result, client = run(record(), RunConfig(explainer="cot"), ["[EXPLANATION]: cats"])
    assert client.calls[0]["messages"][-1]["role"] != "assistant"


def test_a_local_answer_is_its_first_line_so_rambling_after_it_is_no_cut() -> None:
    # The line was finished before the token limit: it is the answer.
    ramble = CutReply("\nthe word cat\nThe tokens with the symbol & are tokens that", "length")
    result, client = run(record(), RunConfig(), [ramble])
    assert result.explanation == "the word cat" and result.retries == 0
    assert client.calls[0]["max_tokens"] < 256  # one line is all that is left to write
    # Cut inside the line: asked again.
    cut = CutReply(" the word cat and the tokens aro", "length")
    result, client = run(record(), RunConfig(answer_retries=1), [cut, " cats"])
    assert result.explanation == "cats" and result.retries == 1


def test_llm_error_type_is_caught() -> None:
    base = pytest.importorskip("autointerp_full.llm.base")
    result, _ = run(record(), api(), [base.LLMError("timed out")])
    assert result.explanation is None and "timed out" in result.error


def test_prompt_trimmed_to_context_dropping_weakest() -> None:
    rec = record()
    rec.train = [example(["word"] * 30 + ["cat"], [0] * 30 + [float(i + 1)], 0) for i in range(40)]
    full, _ = build_messages(rec, default_prompts(), api())
    cfg = api(explainer_model_max_len=1200)
    messages, max_tokens = build_messages(rec, default_prompts(), cfg)
    text = messages[1]["content"]
    n_kept = text.count("Excerpt ")
    assert 1 <= n_kept < 40 and full[1]["content"].count("Excerpt ") == 40
    total = sum(len(m["content"]) // 3 + 5 for m in messages) + max_tokens
    assert total <= 1200
    assert '"cat" (10)' in text  # the strongest example survives
    assert '"cat" (1)' not in text  # the weakest went first
