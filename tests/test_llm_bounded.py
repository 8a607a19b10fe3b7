"""run_bounded: a fixed number of workers draw items from the source only as they free up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from autointerp_full.llm.bounded import run_bounded


class Count:
    def __init__(self) -> None:
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n


def test_run_bounded_draws_items_only_as_workers_free_up() -> None:
    drawn: list[int] = []
    in_flight, peak = 0, 0
    drawn_at_start: list[int] = []  # items drawn when each work began

    def source() -> Iterator[int]:
        for i in range(20):
            drawn.append(i)
            yield i

    async def work(item: int) -> None:
        nonlocal in_flight, peak
        drawn_at_start.append(len(drawn))
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1

    progress = Count()
    asyncio.run(run_bounded(source(), work, 3, progress))
    assert progress.done == 20 and drawn == list(range(20))
    assert peak == 3
    # Each item is drawn when a worker starts it, never ahead.
    assert drawn_at_start == list(range(1, 21))
