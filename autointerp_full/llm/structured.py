"""Structured output: how each provider is made to answer in a prompt's JSON schema.

--structured_output auto|on|off decides whether a client constrains answers when a caller passes
`schema=` to `generate`. The modes a stage can end up in (logged once per stage):

- "response_format": an OpenAI-compatible server honours `response_format` with the schema
  (OpenAI, vLLM, llama.cpp's C++ server, many OpenRouter models), in OpenAI's `json_schema`
  form or the older `json_object` + `schema` form (llama-cpp-python's server). Which one, if
  any, is found once per server and model by a probe request (see PROBE_SCHEMA).
- "grammar": the offline llama.cpp engine decodes under the schema's GBNF grammar.
- "guided": the offline vLLM engine decodes under vLLM's structured outputs (guided decoding).
- "prefill": the offline transformers engine is not constrained; it continues the answer's
  opening handed to it by the scorer.
- "prompt": nothing constrains the answer; the prompt states the schema and the parsers read it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from autointerp_full.errors import UserError

log = logging.getLogger("autointerp_full.llm")

SETTINGS = ("auto", "on", "off")

# The two request forms, tried in this order: OpenAI's, then llama-cpp-python's.
STYLES = ("json_schema", "json_object")

# A probe answer no unconstrained model gives to "Say hello.": only a server that really
# constrains decoding to the schema returns it.
PROBE_VALUE = "zq7"
PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"probe": {"type": "string", "enum": [PROBE_VALUE]}},
    "required": ["probe"],
    "additionalProperties": False,
}
PROBE_MESSAGES = [{"role": "user", "content": "Say hello."}]

MODE_TEXT = {
    "response_format": "constrained by the server (response_format, {style})",
    "grammar": "constrained by llama.cpp's JSON-schema grammar",
    "guided": "constrained by vLLM's guided decoding",
    "prefill": "not constrained (transformers engine): the answer opening is handed over",
    "prompt": "not constrained: the prompt states the schema and the parsers read the JSON",
}


def response_format(style: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The request's `response_format` field for `schema` in one of STYLES."""
    if style == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        }
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    raise ValueError(f"unknown response_format style {style!r}")


def is_probe_answer(text: str) -> bool:
    """True when a probe's answer is exactly the constrained one."""
    try:
        return json.loads(text.strip()) == {"probe": PROBE_VALUE}
    except ValueError:
        return False


def schema_key(schema: dict[str, Any] | None) -> str | None:
    """A canonical, hashable form of a schema (requests batch only with equal schemas)."""
    return None if schema is None else json.dumps(schema, sort_keys=True, separators=(",", ":"))


def unsupported(where: str) -> UserError:
    """The one-line error for --structured_output on where nothing can constrain the answer."""
    return UserError(
        f"--structured_output on: {where} cannot constrain answers to a JSON schema; "
        "use --structured_output auto (or off) to answer without the constraint"
    )


class ModeLog:
    """Logs, once per stage, which structured-output mode that stage's answers run in."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def note(self, stage: str, mode: str, style: str = "") -> None:
        if stage in self._seen:
            return
        self._seen.add(stage)
        log.info("structured output for %s: answers %s", stage, describe(mode, style))


def describe(mode: str, style: str = "") -> str:
    return MODE_TEXT[mode].format(style=style)
