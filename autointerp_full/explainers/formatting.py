"""Turning examples into explainer prompt text: marked excerpts, strengths, token summaries."""

from __future__ import annotations

from collections import defaultdict

from autointerp_full.examples.types import Example

MARK_OPEN, MARK_CLOSE = "<<", ">>"
MARK_FRACTION = 0.2  # mark tokens at >= this fraction of the excerpt's strongest activation


def strength(activation: float, max_activation: float) -> int:
    """Activation on a 0-10 scale relative to the latent's maximum (1 at least when it fires)."""
    if activation <= 0 or max_activation <= 0:
        return 0
    return max(1, min(10, round(10 * activation / max_activation)))


def marked_positions(example: Example, only_peak: bool = False) -> set[int]:
    acts = example.activations
    peak = max(acts, default=0.0)
    if peak <= 0:
        return set()
    if only_peak:
        return {acts.index(peak)}
    return {i for i, a in enumerate(acts) if a > 0 and a >= MARK_FRACTION * peak}


def mark(example: Example, positions: set[int] | None = None) -> str:
    """The excerpt's text with marked tokens wrapped in <<...>>; neighbouring marks merge."""
    positions = marked_positions(example) if positions is None else positions
    parts: list[str] = []
    inside = False
    for i, piece in enumerate(example.str_tokens):
        if i in positions and not inside:
            # Keep a leading space outside the marks: " <<cat>>" reads better than "<< cat>>".
            stripped = piece.lstrip()
            parts.append(piece[: len(piece) - len(stripped)] + MARK_OPEN)
            piece, inside = stripped, True
        elif i not in positions and inside:
            parts.append(MARK_CLOSE)
            inside = False
        parts.append(piece)
    if inside:
        parts.append(MARK_CLOSE)
    return " ".join("".join(parts).split())


def token_strengths(example: Example, max_activation: float) -> str:
    """'"cat" (9), "dog" (4)' for the excerpt's marked tokens, in text order."""
    items = [
        f'"{example.str_tokens[i].strip()}" ({strength(example.activations[i], max_activation)})'
        for i in sorted(marked_positions(example))
    ]
    return ", ".join(items)


def top_tokens(examples: list[Example], max_activation: float, n: int = 10) -> str:
    """The tokens with the strongest activations across excerpts, with their count."""
    best: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for example in examples:
        for piece, a in zip(example.str_tokens, example.activations, strict=True):
            key = piece.strip()
            if a > 0 and key:
                best[key] = max(best[key], a)
                count[key] += 1
    ranked = sorted(best, key=lambda t: (-best[t], -count[t], t))[:n]
    return ", ".join(
        f'"{t}" (strength {strength(best[t], max_activation)}, {count[t]}x)' for t in ranked
    )


def estimate_tokens(text: str) -> int:
    """A deliberately generous token count (about 3 characters per token) for prompt budgeting."""
    return len(text) // 3 + 1


def ranked(examples: list[Example]) -> list[Example]:
    """Strongest first, so trimming from the end drops the weakest."""
    return sorted(examples, key=lambda e: -e.max_activation)
