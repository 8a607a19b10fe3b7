"""Reading an explainer's answer: the explanation after the "[EXPLANATION]:" marker (or in the
JSON answer), and why an answer gives none."""

from __future__ import annotations

import re

_MARKER = re.compile(r"\[?\s*explanation\s*\]?\s*[:：]\s*", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_QUOTED = re.compile(r'^\s*["“\'](.+)["”\']\s*[.]?\s*$')
_TEMPLATE = re.compile(r"^<[^<>]*>$")  # the model echoed "<your explanation>"


def _clean(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^(?:[#>*\-+]+\s*|\d+[.)]\s+)+", "", text)  # headings, quotes, bullets
    text = re.sub(r"(\*\*|__|`)", "", text).strip()
    pairs = {'"': '"', "“": "”", "'": "'"}
    if len(text) >= 2 and pairs.get(text[0]) == text[-1]:
        text = text[1:-1]  # only a matching pair: "the noun 'cat'" keeps its quote
    return " ".join(text.split())


def _usable(text: str) -> bool:
    """A real explanation has a letter in it and is not the prompt's placeholder echoed."""
    return bool(re.search(r"[^\W\d_]", text)) and not _TEMPLATE.match(text)


def parse_explanation(answer: str) -> str | None:
    """The explanation in an LLM answer, or None when there is none.

    It is the text after the last "[EXPLANATION]:" (or "Explanation:") marker, on its line or,
    when the marker stands alone, on the next one; markdown and matching quotes are stripped.
    An answer without the marker has no explanation: its last line may be anything (reasoning,
    an apology), so it is not guessed at.
    """
    from autointerp_full.scorers.answers import json_explanation  # the schema's answer (H5)

    from_json = json_explanation(_THINK.sub("", answer or ""))
    if from_json is not None:
        answer = f"[EXPLANATION]: {from_json}"
    text = _THINK.sub("", answer or "")
    lines = [line for line in text.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        plain = re.sub(r"(\*\*|__|`)", "", lines[index])
        found = list(_MARKER.finditer(plain))
        if not found:
            continue
        # The last marker on the line: a model handed the opening may write it once more.
        rest = _clean(plain[found[-1].end() :])
        if not rest and index + 1 < len(lines):
            rest = _clean(lines[index + 1])  # marker on its own line, answer below
        return rest if _usable(rest) else None
    return None


def answer_problem(raw: str, finish_reason: str | None) -> str | None:
    """Why an answer gives no explanation, or None when parse_explanation can be trusted."""
    if finish_reason == "length":
        return "answer cut off at the token limit"
    if parse_explanation(raw) is None:
        if _MARKER.search(re.sub(r"(\*\*|__|`)", "", _THINK.sub("", raw or ""))):
            return "the explanation after the marker is empty or has no letters"
        return "no [EXPLANATION]: line in the answer"
    return None


def first_line(raw: str, start: int, finish_reason: str | None) -> tuple[str, str | None]:
    """An answer that continues the handed-over opening is that one line: the text up to the
    first line break after some text from `start` on. What follows is not part of the answer,
    as if generation had stopped at the line break, so a token limit reached later did not cut
    the explanation. Without such a break the whole text and its finish reason stand."""
    match = re.compile(r"\S[^\n]*\n").search(raw, start)
    if match is None:
        return raw, finish_reason
    return raw[: match.end() - 1], "stop"
