"""Plain-text tables for the terminal (the run's final table, `compare`). Torch-free."""

from __future__ import annotations

from collections.abc import Collection


def aligned(rows: list[list[str]], left: Collection[int]) -> list[str]:
    """Rows as aligned text with a rule under the header; columns in `left` are left-aligned,
    the others (numbers) right-aligned."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            cell.ljust(w) if c in left else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines
