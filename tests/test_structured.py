"""Structured answers: the schemas declared beside the prompts, the JSON readers, the clients that
constrain decoding to a schema (response_format probe, llama.cpp, vLLM stand-in), and
log-probabilities read from inside the answers."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_test_server import ScriptedLLMServer  # noqa: E402

from autointerp_full.config import RunConfig  # noqa: E402
from autointerp_full.errors import UserError  # noqa: E402
from autointerp_full.examples.types import Example, LatentRecord  # noqa: E402
from autointerp_full.llm import openai_compat  # noqa: E402
from autointerp_full.llm.base import Completion, TokenLogprob  # noqa: E402
from autointerp_full.llm.openai_compat import OpenAICompatClient, parse_completion  # noqa: E402
from autointerp_full.prompts import apply_override, default_prompts, render_schema  # noqa: E402
from autointerp_full.scorers import answers  # noqa: E402
from autointerp_full.scorers.classifier import (  # noqa: E402
    answer_probabilities,
    parse_binary_answers,
)
from autointerp_full.scorers.intruder import parse_choice  # noqa: E402
from autointerp_full.scorers.simulation import expected_levels, parse_predictions  # noqa: E402

SCORER_KEYS = [
    "scorers.detection.system",
    "scorers.fuzz.system",
    "scorers.intruder.system",
    "scorers.simulation.system",
]


def validates(instance: Any, schema: dict[str, Any]) -> bool:
    import jsonschema

    try:
        jsonschema.validate(instance, schema)
    except jsonschema.ValidationError:
        return False
    return True


# ------------------------------------------------------------------ schemas beside the prompts


def test_every_scorer_prompt_declares_its_answer() -> None:
    prompts = default_prompts()
    for key in SCORER_KEYS:
        schema = prompts.schema(key, 4)
        assert schema is not None and schema["type"] == "object", key
        assert schema["additionalProperties"] is False  # what OpenAI's strict mode needs
    assert "schema" not in " ".join(prompts.keys())  # schemas are not prompt texts


def test_schemas_are_exactly_as_long_as_the_request() -> None:
    prompts = default_prompts()
    for key in ("scorers.detection.system", "scorers.fuzz.system"):
        schema = prompts.schema(key, 3)
        assert validates({"answers": [1, 0, 1]}, schema)
        assert not validates({"answers": [1, 0]}, schema)
        assert not validates({"answers": [1, 0, 1, 1]}, schema)
        assert not validates({"answers": [1, 2, 0]}, schema)
    intruder = prompts.schema("scorers.intruder.system", 5)
    assert intruder["properties"]["intruder"]["enum"] == [1, 2, 3, 4, 5]
    assert validates({"intruder": 5}, intruder) and not validates({"intruder": 6}, intruder)
    simulation = prompts.schema("scorers.simulation.system", 3)
    assert simulation["required"] == ["1", "2", "3"]
    assert validates({"1": 0, "2": 10, "3": 4}, simulation)
    assert not validates({"1": 0, "2": 11, "3": 4}, simulation)
    assert not validates({"1": 0, "2": 1}, simulation)


def test_render_schema_placeholders() -> None:
    template = {
        "type": "object",
        "properties": {"{i}": {"type": "integer", "minimum": 2, "maximum": "{n}"}},
        "required": ["{i}"],
        "x": ["{n}", "keep"],
    }
    out = render_schema(template, 3)
    assert list(out["properties"]) == ["1", "2", "3"]
    assert out["properties"]["1"] == {"type": "integer", "enum": [2, 3]}
    assert out["required"] == ["1", "2", "3"] and out["x"] == [3, "keep"]
    assert template["properties"]["{i}"]["maximum"] == "{n}"  # the template is not changed


def test_the_prompts_state_the_json_they_declare() -> None:
    """Unconstrained servers are helped too: each prompt's example reply fits its schema."""
    prompts = default_prompts()
    for key in SCORER_KEYS:
        text = prompts.get(key)
        found = answers.find_json_object(text)
        assert found is not None, f"{key} shows no JSON reply"
        example = found[0]
        n = len(example.get("answers", example)) if key != "scorers.intruder.system" else 5
        assert validates(example, prompts.schema(key, n)), key


def test_an_override_changes_text_and_keeps_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text("scorers:\n  detection:\n    system: Say 1 or 0 for each.\n")
    prompts = apply_override(default_prompts(), path, "--prompt_config_file")
    assert prompts.get("scorers.detection.system") == "Say 1 or 0 for each."
    assert prompts.schema("scorers.detection.system", 2) == default_prompts().schema(
        "scorers.detection.system", 2
    )


def test_an_override_cannot_replace_a_schema(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text("scorers:\n  detection:\n    schema:\n      type: object\n")
    with pytest.raises(UserError) as info:
        apply_override(default_prompts(), path, "--prompt_config_file")
    message = str(info.value)
    assert "scorers.detection.schema" in message and str(path) in message
    assert "\n" not in message


# ------------------------------------------------------------------ reading JSON answers


def test_parsers_read_json_first_and_keep_the_free_text_fallback() -> None:
    assert parse_binary_answers('{"answers": [1, 0, 1]}', 3) == [True, False, True]
    # A scorer puts its handed-over opening in front of a constrained completion.
    assert parse_binary_answers('[{"answers": [0, 0, 1]}', 3) == [False, False, True]
    assert parse_binary_answers('Sure! ```json\n{"answers": ["yes", "no"]}\n```', 2) == [
        True,
        False,
    ]
    assert parse_binary_answers("[1, 0, 1]", 3) == [True, False, True]  # free text still works
    assert parse_binary_answers('{"answers": [1, 0]}', 3) is None  # wrong length: not a guess
    assert parse_choice('The intruder is example {"intruder": 4}', 5) == 4
    assert parse_choice('{"intruder": 9}', 5) is None
    assert parse_choice("The intruder is example 2.", 5) == 2
    assert parse_predictions('1:{"1": 0, "2": 12, "3": 3}', 3) == ([0.0, 10.0, 3.0], 3)
    assert parse_predictions('{"1": 4}', 3) == ([4.0, 0.0, 0.0], 1)
    assert parse_predictions("1: 0\n2: 7", 2) == ([0.0, 7.0], 2)


def lp(token: str, top: dict[str, float] | None = None) -> TokenLogprob:
    top = top if top is not None else {token: 0.0}
    return TokenLogprob(token, max(top.values()) if top else 0.0, top)


def json_answer_tokens(values: list[int], p1: float) -> list[TokenLogprob]:
    """'{"answers": [v, v, ...]}' as a tokenizer would split it, each value with P(1) = p1."""
    tokens = [lp('{"'), lp("answers"), lp('":'), lp(" [")]
    for i, v in enumerate(values):
        if i:
            tokens += [lp(","), lp(" ")]
        top = {"1": math.log(p1), "0": math.log(1 - p1), "2": math.log(1e-3)}
        tokens.append(TokenLogprob(str(v), top[str(v)], top))
    return [*tokens, lp("]"), lp("}")]


def test_probabilities_come_from_the_values_inside_the_json() -> None:
    tokens = json_answer_tokens([1, 0, 1], 0.8)
    assert answer_probabilities(tokens, 3) == pytest.approx([0.8, 0.8, 0.8])
    assert answer_probabilities(tokens, 4) is None
    # The key's characters are never taken for values, even when they are digits.
    keyed = [lp('{"'), lp("1"), lp('":'), lp(" "), lp("7", {"7": 0.0, "6": math.log(0.5)})]
    keyed += [lp(',"'), lp("2"), lp('":'), lp("0"), lp("}")]
    assert answers.value_tokens(keyed) == [keyed[4], keyed[8]]


def test_a_value_split_over_tokens_is_not_read_from_one_of_them() -> None:
    split = [lp('{"'), lp("1"), lp('":'), lp(" 1"), lp("0"), lp("}")]  # "10" as "1", "0"
    assert answers.value_tokens(split) is None
    assert expected_levels(split, 1) is None  # the caller falls back to the text


def test_a_constrained_choice_outside_the_top_alternatives_still_counts() -> None:
    item = TokenLogprob("0", math.log(0.01), {"The": math.log(0.9), "I": math.log(0.05)})
    assert answers.value_distribution(item, {"0", "1"}) == pytest.approx({"0": 0.01})


def test_offline_opening_in_the_logprobs_is_read() -> None:
    """Offline clients put the handed-over opening in front of the logprobs (logprob 0)."""
    tokens = [TokenLogprob("[", 0.0, {"[": 0.0})]
    tokens += [lp("1", {"1": math.log(0.7), "0": math.log(0.3)}), lp(","), lp(" 0")]
    tokens[-1] = TokenLogprob(" 0", math.log(0.6), {" 0": math.log(0.6), " 1": math.log(0.4)})
    tokens.append(lp("]"))
    assert answer_probabilities(tokens, 2) == pytest.approx([0.7, 0.4])
    lines = [TokenLogprob("1:", 0.0, {"1:": 0.0})]
    lines += [lp(" 3", {" 3": math.log(0.5), " 5": math.log(0.5)}), lp("\n"), lp("2"), lp(":")]
    lines += [lp(" 0")]
    assert expected_levels(lines, 2) == pytest.approx([4.0, 0.0])


# ------------------------------------------------------------------ the OpenAI-compatible client

DETECTION_SCHEMA = default_prompts().schema("scorers.detection.system", 2)


def honouring_responder(styles: tuple[str, ...]):
    """A scripted server that constrains answers when response_format uses one of `styles`."""

    def respond(request: dict[str, Any]) -> str:
        fmt = request.get("response_format")
        if not fmt or fmt.get("type") not in styles:
            return "Hello! How can I help?"
        schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else fmt["schema"]
        if "probe" in schema["properties"]:
            return '{"probe": "zq7"}'
        return json.dumps({"answers": [1] * schema["properties"]["answers"]["minItems"]})

    return respond


def client_for(server: ScriptedLLMServer, setting: str = "auto", **kw: Any) -> OpenAICompatClient:
    openai_compat._STRUCTURED_SUPPORT.clear()
    return OpenAICompatClient(
        server.url,
        "test-model",
        stage="detection",
        max_retries=1,
        backoff_base=0.01,
        backoff_max=0.02,
        structured_output=setting,
        **kw,
    )


async def ask_twice(client: OpenAICompatClient, schema: dict[str, Any] | None) -> list[Completion]:
    messages = [{"role": "user", "content": "Which excerpts?"}]
    try:
        first = await client.generate(messages, schema=schema)
        second = await client.with_stage("fuzz").generate(messages, schema=schema)
        return [first, second]
    finally:
        await client.aclose()


@pytest.mark.parametrize("style", ["json_schema", "json_object"])
def test_server_that_honours_response_format_gets_the_schema(style: str, caplog) -> None:
    caplog.set_level(logging.INFO, logger="autointerp_full")
    with ScriptedLLMServer(honouring_responder((style,))) as server:
        outs = asyncio.run(ask_twice(client_for(server), DETECTION_SCHEMA))
        requests = server.requests
    probes = [r for r in requests if r["messages"][0]["content"] == "Say hello."]
    real = [r for r in requests if r not in probes]
    assert len(probes) == (1 if style == "json_schema" else 2)  # probed once, styles in order
    assert len(real) == 2
    for r in real:
        fmt = r["response_format"]
        assert fmt["type"] == style
        sent = fmt["json_schema"]["schema"] if style == "json_schema" else fmt["schema"]
        assert sent == DETECTION_SCHEMA
    assert [o.text for o in outs] == ['{"answers": [1, 1]}'] * 2
    assert "structured output for detection: answers constrained by the server" in caplog.text
    assert "structured output for fuzz: answers constrained by the server" in caplog.text


def test_server_that_ignores_response_format_runs_on_the_prompt(caplog) -> None:
    caplog.set_level(logging.INFO, logger="autointerp_full")
    with ScriptedLLMServer(honouring_responder(())) as server:
        asyncio.run(ask_twice(client_for(server), DETECTION_SCHEMA))
        requests = server.requests
    real = [r for r in requests if r["messages"][0]["content"] != "Say hello."]
    assert len(requests) == 4 and len(real) == 2  # two probe styles, tried once each
    assert all("response_format" not in r for r in real)
    assert "structured output for detection: answers not constrained" in caplog.text


def test_structured_output_on_without_support_is_a_one_line_error() -> None:
    with ScriptedLLMServer(honouring_responder(())) as server:
        with pytest.raises(UserError) as info:
            asyncio.run(ask_twice(client_for(server, "on"), DETECTION_SCHEMA))
    message = str(info.value)
    assert message.startswith("--structured_output on:") and "\n" not in message


def test_make_client_with_on_stops_before_any_work() -> None:
    from autointerp_full.llm import make_client

    with ScriptedLLMServer(honouring_responder(())) as server:
        openai_compat._STRUCTURED_SUPPORT.clear()
        cfg = RunConfig(
            explainer_provider="vllm",
            explainer_api_base_url=server.url,
            explainer_model="test-model",
            structured_output="on",
        )
        with pytest.raises(UserError, match="^--structured_output on: the server at"):
            make_client(cfg, "score")
        assert server.chat_requests == 2  # the two probe styles, nothing else
    with ScriptedLLMServer(honouring_responder(("json_schema",))) as server:
        openai_compat._STRUCTURED_SUPPORT.clear()
        cfg = RunConfig(**{**cfg.public_dict(), "explainer_api_base_url": server.url})
        assert make_client(cfg, "score").check_structured_output() == "json_schema"


def test_structured_output_off_never_probes_or_constrains() -> None:
    with ScriptedLLMServer(honouring_responder(("json_schema",))) as server:
        asyncio.run(ask_twice(client_for(server, "off"), DETECTION_SCHEMA))
        requests = server.requests
    assert len(requests) == 2 and all("response_format" not in r for r in requests)


def test_requests_without_a_schema_never_probe() -> None:
    with ScriptedLLMServer(honouring_responder(("json_schema",))) as server:
        asyncio.run(ask_twice(client_for(server), None))
        assert server.chat_requests == 2


def test_the_setting_comes_from_the_config() -> None:
    cfg = RunConfig(
        explainer_provider="vllm",
        explainer_api_base_url="http://127.0.0.1:1/v1",
        explainer_model="m",
        structured_output="off",
    )
    assert OpenAICompatClient.from_config(cfg, "detection").structured_output == "off"


def test_finish_reason_is_read() -> None:
    body = {
        "choices": [{"message": {"content": "[1, 0"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    assert parse_completion(json.dumps(body).encode()).finish_reason == "length"
    del body["choices"][0]["finish_reason"]
    assert parse_completion(json.dumps(body).encode()).finish_reason is None


# ------------------------------------------------------------------ offline engines


def offline_cfg(model_dir: Path, **kw: Any) -> RunConfig:
    opts = {"explainer_model_max_len": 256, **kw}
    return RunConfig(explainer_provider="offline", explainer_model=str(model_dir), **opts)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class StandInLLM:
    """Stands in for vllm.LLM: records the prompts and sampling parameters it receives and
    answers every prompt with `reply`."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[list[int]] = []
        self.params: list[Any] = []

    def generate(self, prompts: list[Any], params: Any, use_tqdm: bool = False) -> list[Any]:
        self.prompts += [p["prompt_token_ids"] for p in prompts]
        self.params.append(params)
        gen = types.SimpleNamespace(
            text=self.reply, token_ids=[1, 2, 3], logprobs=None, finish_reason="stop"
        )
        return [types.SimpleNamespace(outputs=[gen]) for _ in prompts]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in `vllm` module whose parameter classes record their arguments."""

    class Params:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    module = types.ModuleType("vllm")
    module.SamplingParams = type("SamplingParams", (Params,), {})
    module.TokensPrompt = dict
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.StructuredOutputsParams = type("StructuredOutputsParams", (Params,), {})
    module.sampling_params = sampling
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    return module


def stand_in_vllm_engine(tiny_model_dir: Path, reply: str):
    from transformers import AutoTokenizer

    from autointerp_full.llm.offline import VLLMEngine

    engine = object.__new__(VLLMEngine)
    engine.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine.tokenizer.chat_template = CHAT_TEMPLATE
    engine.llm = StandInLLM(reply)
    engine.max_len = 256
    engine.generate_calls = 0
    engine.lock = __import__("threading").Lock()
    return engine


def offline_client_with(engine: Any, cfg: RunConfig, kind: str, monkeypatch) -> Any:
    from autointerp_full.llm import offline

    monkeypatch.setattr(offline, "engine_kind", lambda _cfg: kind)
    client = offline.OfflineClient(cfg, "simulation")
    client._shared["engine"] = engine
    return client


def test_vllm_engine_continues_the_answer_opening(tiny_model_dir, fake_vllm) -> None:
    engine = stand_in_vllm_engine(tiny_model_dir, "")
    user = [{"role": "system", "content": "Predict."}, {"role": "user", "content": "the cat"}]
    ids = engine.encode([*user, {"role": "assistant", "content": "1:"}], 8)
    text = engine.tokenizer.decode(ids)
    assert text.endswith("<|assistant|>1:")  # the turn stays open; no new assistant turn
    assert text.count("<|assistant|>") == 1


def test_simulation_through_the_vllm_engine_reads_the_first_token_right(
    tiny_model_dir, fake_vllm, monkeypatch
) -> None:
    """The issue's bug: a closed turn made "1:" + "1: 0\\n2: 7" read token 1 as 1.0. The engine
    continues "1:", answers " 0\\n2: 7", and the scorer reads [0, 7]."""
    from autointerp_full.scorers.simulation import SimulationScorer

    engine = stand_in_vllm_engine(tiny_model_dir, " 0\n2: 7")
    cfg = offline_cfg(tiny_model_dir, structured_output="off")
    client = offline_client_with(engine, cfg, "vllm", monkeypatch)
    example = Example([5, 6], ["the", " cat"], [0.0, 4.0], 0)
    record = LatentRecord("layers.1", 3, 1, 0.1, 4.0, train=[], test=[example], non_activating=[])

    async def run() -> dict[str, Any]:
        try:
            return await SimulationScorer(client, default_prompts(), cfg).score(record, "cats")
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert result["examples"][0]["prediction"] == [0.0, 7.0]
    assert engine.tokenizer.decode(engine.llm.prompts[0]).endswith("<|assistant|>1:")
    assert "structured_outputs" not in engine.llm.params[0].kwargs  # off: no constraint


def test_vllm_engine_decodes_under_the_schema(tiny_model_dir, fake_vllm, monkeypatch) -> None:
    engine = stand_in_vllm_engine(tiny_model_dir, '{"1": 0, "2": 7}')
    cfg = offline_cfg(tiny_model_dir)
    client = offline_client_with(engine, cfg, "vllm", monkeypatch)
    schema = default_prompts().schema("scorers.simulation.system", 2)
    messages = [
        {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "1:"},
    ]

    async def run() -> Completion:
        try:
            return await client.generate(messages, max_tokens=20, schema=schema)
        finally:
            await client.aclose()

    out = asyncio.run(run())
    assert out.text == '{"1": 0, "2": 7}' and out.finish_reason == "stop"
    params = engine.llm.params[0].kwargs
    assert params["structured_outputs"].kwargs == {"json": schema}
    # Under a schema the constraint starts the answer: the opening is not handed over.
    assert engine.tokenizer.decode(engine.llm.prompts[0]).endswith("<|assistant|>")


def test_vllm_engine_falls_back_to_guided_decoding_params(tiny_model_dir, fake_vllm) -> None:
    from autointerp_full.llm.offline import SamplingKey

    del fake_vllm.sampling_params.StructuredOutputsParams
    fake_vllm.sampling_params.GuidedDecodingParams = type(
        "GuidedDecodingParams", (), {"__init__": lambda self, **kw: setattr(self, "kw", kw)}
    )
    engine = stand_in_vllm_engine(tiny_model_dir, "")
    params = engine.sampling_params(SamplingKey(8, 0.0, False, 0, '{"type": "object"}'))
    assert params.kwargs["guided_decoding"].kw == {"json": {"type": "object"}}


def test_transformers_engine_keeps_the_prefill_and_refuses_on(tiny_model_dir) -> None:
    from autointerp_full.llm import offline

    assert offline.OfflineClient(offline_cfg(tiny_model_dir)).structured_mode() == "prefill"
    client = offline.OfflineClient(offline_cfg(tiny_model_dir, structured_output="on"))
    with pytest.raises(UserError, match="^--structured_output on: the offline transformers"):
        client.structured_mode()
    off = offline.OfflineClient(offline_cfg(tiny_model_dir, structured_output="off"))
    assert off.structured_mode() == "prompt"


def test_transformers_logprobs_include_the_opening_and_finish_reason(tiny_model_dir) -> None:
    from autointerp_full.llm import offline

    client = offline.OfflineClient(offline_cfg(tiny_model_dir), "detection")
    messages = [
        {"role": "user", "content": "one two three"},
        {"role": "assistant", "content": "["},
    ]

    async def run() -> Completion:
        try:
            return await client.generate(messages, max_tokens=4, logprobs=True, top_logprobs=2)
        finally:
            await client.aclose()

    try:
        out = asyncio.run(run())
    finally:
        offline.release_engines()
    assert out.logprobs is not None and out.logprobs[0] == TokenLogprob("[", 0.0, {"[": 0.0})
    assert len(out.logprobs) == out.completion_tokens + 1
    assert out.finish_reason == ("length" if out.completion_tokens == 4 else "stop")


# ------------------------------------------------------------------ the explainer's answer


def test_explainer_answers_have_a_schema_except_cot() -> None:
    prompts = default_prompts()
    for explainer in ("default", "single_token", "contrastive", "np_max_act"):
        schema = answers.explanation_schema(prompts, explainer)
        assert schema is not None and validates({"explanation": "plural nouns"}, schema)
        assert not validates({"explanation": ""}, schema)
    assert answers.explanation_schema(prompts, "cot") is None  # it must reason first


def test_parse_explanation_reads_the_json_answer() -> None:
    from autointerp_full.explainers import parse_explanation

    assert parse_explanation('{"explanation": "the word \\"cat\\"\\nin prose"}') == (
        'the word "cat" in prose'
    )
    # An offline opening in front of a constrained answer does not hide it.
    assert parse_explanation('[EXPLANATION]: {"explanation": "closing brackets"}') == (
        "closing brackets"
    )
    assert parse_explanation("Reasoning.\n[EXPLANATION]: dates in 1990s") == "dates in 1990s"
    assert parse_explanation('{"explanation": "  "}') is None
    # llama.cpp's JSON grammar lets a model put raw newlines inside a string.
    assert parse_explanation('{ "explanation": "dates\n\nand times" }') == "dates and times"


def test_explain_sends_the_schema(monkeypatch) -> None:
    from autointerp_full.explainers import explain

    class Recorder:
        def __init__(self) -> None:
            self.schemas: list[Any] = []

        async def generate(self, messages: Any, **kwargs: Any) -> Completion:
            self.schemas.append(kwargs.get("schema"))
            return Completion('{"explanation": "the word cat"}', 10, 8, None, "stop")

    example = Example([1, 2], ["the", " cat"], [0.0, 3.0], 2)
    record = LatentRecord("layers.1", 0, 5, 0.1, 3.0, train=[example], test=[], non_activating=[])
    prompts = default_prompts()
    client = Recorder()
    cfg = RunConfig(explainer_provider="vllm", explainer_api_base_url="http://x:1/v1")
    result = asyncio.run(explain(record, client, prompts, cfg))
    assert result.explanation == "the word cat" and result.error is None
    assert client.schemas == [prompts.schema("explainers.default.system", 1)]
    cot = RunConfig(**{**cfg.public_dict(), "explainer": "cot"})
    asyncio.run(explain(record, client, prompts, cot))
    assert client.schemas[-1] is None
