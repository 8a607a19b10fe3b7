"""Reading scorer answers given as JSON (the schemas declared beside the prompts in
prompts/default_prompts.yaml), and finding the log-probabilities of the values inside them.

The scorers' parsers try these first and fall back to their free-text readers, so an answer in
the declared JSON reads the same whether a server constrained it or the model just followed the
prompt. Everything here is pure (no LLM, no I/O).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autointerp_full.llm.base import TokenLogprob
    from autointerp_full.prompts import Prompts

TRUE_VALUES = {"1", "yes", "true", "y"}
FALSE_VALUES = {"0", "no", "false", "n"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def answer_schema(prompts: Prompts | None, key: str, n: int) -> dict[str, Any] | None:
    """The JSON Schema of the answer to prompt `key` about `n` items, or None when the prompts
    (or a stand-in without schemas) declare none."""
    schema = getattr(prompts, "schema", None)
    return schema(key, n) if callable(schema) else None


def explanation_schema(prompts: Prompts | None, explainer: str) -> dict[str, Any] | None:
    """The schema of an explainer's answer ({"explanation": "..."}), or None for `cot`, which
    must reason before it answers."""
    if explainer == "cot":
        return None
    key = (
        "explainers.np_max_act.system_concise"
        if explainer == "np_max_act"
        else ("explainers.default.system")
    )
    return answer_schema(prompts, key, 1)


def json_explanation(text: str) -> str | None:
    """The explanation of a JSON answer ({"explanation": "..."}) on one line, or None."""
    found = find_json_object(text or "")
    if found is None:
        return None
    value = found[0].get("explanation")
    return " ".join(value.split()) if isinstance(value, str) and value.strip() else None


# --------------------------------------------------------------------------- the JSON itself


def find_json_object(text: str) -> tuple[dict[str, Any], int, int] | None:
    """The first JSON object in `text` that decodes, with its start and end offsets.

    Text around it is ignored: a preamble, a code fence, or an answer opening a scorer put in
    front of a constrained completion."""
    # Raw newlines inside strings are allowed: llama.cpp's JSON grammar lets a model write them.
    decoder = json.JSONDecoder(strict=False)
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value, start, end
        start = text.find("{", end)
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_VALUES:
            return True
        if word in FALSE_VALUES:
            return False
    return None


def _only_list(obj: dict[str, Any], key: str) -> list[Any] | None:
    """obj[key], or the object's single list value under another name."""
    value = obj.get(key)
    if isinstance(value, list):
        return value
    lists = [v for v in obj.values() if isinstance(v, list)]
    return lists[0] if len(lists) == 1 and len(obj) == 1 else None


def json_binary_answers(text: str, n: int) -> list[bool] | None:
    """{"answers": [1, 0, ...]} with exactly n yes/no values, else None."""
    found = find_json_object(text)
    if found is None:
        return None
    values = _only_list(found[0], "answers")
    if values is None or len(values) != n:
        return None
    answers = [_as_bool(v) for v in values]
    if any(a is None for a in answers):
        return None
    return [bool(a) for a in answers]


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def json_choice(text: str, n: int) -> int | None:
    """{"intruder": k} with 1 <= k <= n (or an object with one integer value), else None."""
    found = find_json_object(text)
    if found is None:
        return None
    obj = found[0]
    value = obj.get("intruder") if "intruder" in obj else None
    if value is None and len(obj) == 1:
        value = next(iter(obj.values()))
    choice = _as_int(value)
    return choice if choice is not None and 1 <= choice <= n else None


def json_predictions(text: str, n: int, scale: int) -> tuple[list[float], int] | None:
    """Per-token predictions from {"1": 0, "2": 8, ...} (or a list of numbers under a single
    key), clipped to 0..scale, missing tokens 0, extra ones dropped.

    Returns (n values, how many predictions the answer held), or None for no predictions."""
    found = find_json_object(text)
    if found is None:
        return None
    obj = found[0]
    by_index: dict[int, float] = {}
    for key, value in obj.items():
        index = _as_int(key)
        if index is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            by_index[index] = float(value)
    if by_index:
        raw = [by_index.get(i, 0.0) for i in range(1, n + 1)]
        count = len(by_index)
    else:
        values = _only_list(obj, "activations")
        if not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            return None
        raw = [float(v) for v in values[:n]] + [0.0] * (n - len(values))
        count = len(values)
    return [min(float(scale), max(0.0, v)) for v in raw], count


# --------------------------------------------------------------------------- log-probabilities


def _number_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Character spans of the number literals in text[start:end] outside JSON strings (in a
    scorer's answer object these are exactly the answer's values, in order)."""
    spans: list[tuple[int, int]] = []
    i, in_string = start, False
    while i < end:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            in_string = ch != '"'
            i += 1
            continue
        if ch == '"':
            in_string = True
            i += 1
            continue
        match = _NUMBER.match(text, i, end)
        if match and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == ".")):
            spans.append((match.start(), match.end()))
            i = match.end()
            continue
        i += 1
    return spans


def spells_json(logprobs: Sequence[TokenLogprob] | None) -> bool:
    """Whether the answer tokens spell a JSON object (then only its values are read)."""
    return bool(logprobs) and find_json_object("".join(i.token for i in logprobs)) is not None


def value_tokens(logprobs: Sequence[TokenLogprob] | None) -> list[TokenLogprob] | None:
    """The answer tokens holding the values of the first JSON object the tokens spell, one
    per value in order; None when they spell no JSON object, or a value is spread over
    several tokens (say "10" as "1", "0"), where one token's distribution is not the value's."""
    if not logprobs:
        return None
    text = "".join(item.token for item in logprobs)
    found = find_json_object(text)
    if found is None:
        return None
    _, start, end = found
    bounds: list[int] = []  # end offset of each token
    offset = 0
    for item in logprobs:
        offset += len(item.token)
        bounds.append(offset)
    out: list[TokenLogprob] = []
    k = 0
    for lo, hi in _number_spans(text, start, end):
        while bounds[k] <= lo:
            k += 1
        token_start = bounds[k] - len(logprobs[k].token)
        if bounds[k] < hi or token_start > lo:
            return None  # the value does not sit inside one token
        if not re.fullmatch(r"[\s\[\]{},:\"]*", text[token_start:lo] + text[hi : bounds[k]]):
            return None  # the token also holds other characters ("10" split oddly, "1a")
        out.append(logprobs[k])
    return out


def value_distribution(item: TokenLogprob, accept: set[str]) -> dict[str, float]:
    """Probabilities of the accepted values at one answer position, from its top alternatives
    and the chosen token itself (a constrained decoder may choose outside the raw top-k), keyed
    by the token text without spaces and JSON punctuation."""
    candidates = dict(item.top)
    candidates.setdefault(item.token, item.logprob)
    probs: dict[str, float] = {}
    for token, logprob in candidates.items():
        key = token.strip().strip("[]{},:\"'").strip()
        if key in accept and logprob > -math.inf:
            probs[key] = probs.get(key, 0.0) + math.exp(logprob)
    return probs


def binary_probabilities(logprobs: Sequence[TokenLogprob] | None, n: int) -> list[float] | None:
    """P(value is 1) for each of n values of a JSON answer, or None when the tokens do not
    hold exactly n single-token values."""
    positions = value_tokens(logprobs)
    if positions is None or len(positions) != n:
        return None
    probs = []
    for item in positions:
        dist = value_distribution(item, {"0", "1"})
        p1, p0 = dist.get("1", 0.0), dist.get("0", 0.0)
        probs.append(p1 / (p1 + p0) if p1 + p0 > 0 else 0.5)
    return probs


def expected_values(
    logprobs: Sequence[TokenLogprob] | None, n: int, scale: int
) -> list[float] | None:
    """The expected value over 0..scale at each of n values of a JSON answer, or None."""
    positions = value_tokens(logprobs)
    if positions is None or len(positions) != n:
        return None
    levels = {str(v) for v in range(scale + 1)}
    values = []
    for item in positions:
        dist = value_distribution(item, levels)
        total = sum(dist.values())
        if total <= 0:
            return None
        values.append(sum(int(k) * p for k, p in dist.items()) / total)
    return values
