"""Turning examples into prompt text: marked excerpts, strengths, token summaries.

The highlighting rule lives here, once, for the explainers and the scorers (fuzz, intruder):
a token is marked when its activation is positive and reaches `threshold` (the run's
--highlight_threshold, 0.3 by default, as in delphi) times the strongest activation in its own
example. Measuring against the example's own peak means every activating example has at least
one mark, whatever its quantile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from autointerp_full.examples.types import Example

MARK_OPEN, MARK_CLOSE = "<<", ">>"
DEFAULT_HIGHLIGHT_THRESHOLD = 0.3  # RunConfig.highlight_threshold's default


def strength(activation: float, max_activation: float) -> int:
    """Activation on a 0-10 scale relative to the latent's maximum (1 at least when it fires)."""
    if activation <= 0 or max_activation <= 0:
        return 0
    return max(1, min(10, round(10 * activation / max_activation)))


def highlighted(
    activations: Sequence[float], threshold: float = DEFAULT_HIGHLIGHT_THRESHOLD
) -> set[int]:
    """The positions the highlighting rule marks (see the module docstring)."""
    peak = max(activations, default=0.0)
    if peak <= 0:
        return set()
    return {i for i, a in enumerate(activations) if a > 0 and a >= threshold * peak}


def marked_positions(
    example: Example, only_peak: bool = False, threshold: float = DEFAULT_HIGHLIGHT_THRESHOLD
) -> set[int]:
    acts = example.activations
    if only_peak:
        peak = max(acts, default=0.0)
        return {acts.index(peak)} if peak > 0 else set()
    return highlighted(acts, threshold)


def highlight(str_tokens: Sequence[str], positions: set[int]) -> str:
    """The text, verbatim, with the marked tokens wrapped in <<...>>; neighbouring marks merge
    into one run, and a token's leading whitespace stays outside: " <<cat>>", not "<< cat>>"."""
    parts: list[str] = []
    inside = False
    for i, piece in enumerate(str_tokens):
        if i in positions and not inside:
            stripped = piece.lstrip()
            parts.append(piece[: len(piece) - len(stripped)] + MARK_OPEN)
            piece, inside = stripped, True
        elif i not in positions and inside:
            parts.append(MARK_CLOSE)
            inside = False
        parts.append(piece)
    if inside:
        parts.append(MARK_CLOSE)
    return "".join(parts)


def mark(
    example: Example,
    positions: set[int] | None = None,
    threshold: float = DEFAULT_HIGHLIGHT_THRESHOLD,
) -> str:
    """The excerpt on one line with its marked tokens wrapped in <<...>> (explainer prompts)."""
    positions = marked_positions(example, threshold=threshold) if positions is None else positions
    return " ".join(highlight(example.str_tokens, positions).split())


def token_strengths(
    example: Example, max_activation: float, threshold: float = DEFAULT_HIGHLIGHT_THRESHOLD
) -> str:
    """'"cat" (9), "dog" (4)' for the excerpt's marked tokens, in text order."""
    items = [
        f'"{example.str_tokens[i].strip()}" ({strength(example.activations[i], max_activation)})'
        for i in sorted(marked_positions(example, threshold=threshold))
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
