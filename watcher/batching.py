"""Group commit: concurrent callers share one store round trip, and each still waits for it.

With 10,000 sources, polls that find nothing new (304) are mostly store round
trips: read the source's validators, then save "polled, healthy". Each caller
of `Batcher.run` joins the batch that is forming while the previous one is
being written; one of them runs the whole batch in one query or transaction,
and every caller returns (or raises) only when its own row is done. Nothing is
written behind the caller's back, so a poll that returned is saved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")


class Batcher(Generic[K, R]):
    def __init__(
        self, run_batch: Callable[[Sequence[K]], Awaitable[Sequence[R]]], *, max_batch: int = 500
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: list[tuple[K, asyncio.Future[R]]] = []
        self._lock = asyncio.Lock()

    async def run(self, key: K) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((key, fut))
        while not fut.done():
            async with self._lock:
                if fut.done():
                    break
                # let callers that are ready in this turn of the loop join: a store that
                # answers without a round trip (SQLite on the loop) would otherwise run
                # batches of one
                await asyncio.sleep(0)
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._run_batch([k for k, _ in batch])
                except Exception as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                else:
                    for (_, f), result in zip(batch, results, strict=True):
                        if not f.done():
                            f.set_result(result)
        return fut.result()
