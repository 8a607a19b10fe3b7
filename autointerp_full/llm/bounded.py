"""Bounded concurrency for the LLM stages: a fixed number of workers pull items as they free up.

Items are taken from the iterable one at a time, when a worker is free, never all at once: a
stage can hand over a lazy source (file references it reads only when their turn comes), so
its first request goes out while the rest are still unread and memory holds only the items in
flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Counter(Protocol):
    """What run_bounded reports finished items to (logs.Progress)."""

    def update(self, n: int = 1) -> None: ...


async def run_bounded(
    items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int, progress: Counter
) -> None:
    """Run `work` over items with at most `limit` in flight; progress counts finished items.

    Every worker draws from one shared iterator; that is safe on one event loop, as no worker
    can be suspended inside next()."""
    source = iter(items)

    async def worker() -> None:
        for item in source:
            await work(item)
            progress.update()

    await asyncio.gather(*(worker() for _ in range(max(1, limit))))
