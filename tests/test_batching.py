from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from watcher.batching import Batcher


async def test_concurrent_callers_share_batches_and_each_gets_its_result() -> None:
    batches: list[list[int]] = []

    async def square(keys: Sequence[int]) -> list[int]:
        batches.append(list(keys))
        await asyncio.sleep(0)  # a store round trip
        return [k * k for k in keys]

    b: Batcher[int, int] = Batcher(square, max_batch=10)
    results = await asyncio.gather(*(b.run(i) for i in range(35)))
    assert results == [i * i for i in range(35)]
    assert sorted(k for batch in batches for k in batch) == list(range(35))
    assert all(len(batch) <= 10 for batch in batches)
    assert len(batches) < 35  # shared round trips
    assert await b.run(7) == 49  # a lone caller runs its own batch


async def test_a_failed_batch_fails_every_caller_in_it() -> None:
    async def broken(keys: Sequence[str]) -> list[None]:
        await asyncio.sleep(0)
        raise OSError("store down")

    b: Batcher[str, None] = Batcher(broken)
    results = await asyncio.gather(*(b.run(k) for k in "abc"), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    with pytest.raises(OSError, match="store down"):
        await b.run("d")
