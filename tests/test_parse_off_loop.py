"""A large feed is parsed in a worker thread: the event loop goes on meanwhile."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import watcher.parse
from tests.conftest import FakeClock
from tests.feeds import CURB, rss
from tests.servers import FeedServer, Route
from watcher import constants
from watcher.config import Config
from watcher.metrics import Metrics
from watcher.pipeline import build_pipeline
from watcher.rules import Matcher
from watcher.store import Store


def _broken_large_feed(items: int = 400) -> bytes:
    """~1 MB that the fast path leaves to feedparser (a DOCTYPE): ~0.4 s of parse."""
    paragraph = "<p>Export licences for gallium and germanium were curbed again.</p>" * 30
    feed = rss(*((f"g{i}", f"Notice {i}", paragraph) for i in range(items)))
    return feed.replace(b"<rss", b"<!DOCTYPE rss>\n<rss", 1)


PollWhileTicking = Callable[[bytes], Awaitable[tuple[int, list[tuple[str, int]]]]]


@pytest.fixture
def poll_while_ticking(
    tmp_path: Path,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> PollWhileTicking:
    """Polls a feed serving the given body while a coroutine counts its turns on the loop:
    the items polled, and for each parse its thread's name and the turns taken meanwhile."""

    async def poll(body: bytes) -> tuple[int, list[tuple[str, int]]]:
        feed_server.routes["/feed.xml"] = Route(body=body)
        config = Config.model_validate(
            {
                "store": {"url": f"sqlite+aiosqlite:///{tmp_path}/watcher.db"},
                "polling": {"allow_networks": ["127.0.0.0/8"], "timeout_s": 10},
                "sources": [{"id": "big", "url": feed_server.url("/feed.xml")}],
            }
        )
        store = Store(config.store.url, clock=clock)
        await store.open()
        await store.sync_sources((s.id, str(s.url)) for s in config.sources)
        pipeline = build_pipeline(
            config, store=store, session=session, matcher=lambda: Matcher([]), metrics=Metrics(),
            clock=clock,
        )  # fmt: skip
        turns = 0
        parses: list[tuple[str, int]] = []
        real_parse = watcher.parse.parse_document

        def parse_document(*args: Any, **kwargs: Any) -> watcher.parse.ParsedFeed:
            before = turns
            parsed = real_parse(*args, **kwargs)
            parses.append((threading.current_thread().name, turns - before))
            return parsed

        monkeypatch.setattr(watcher.parse, "parse_document", parse_document)
        polling = True

        async def ticker() -> None:
            nonlocal turns
            while polling:
                turns += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        try:
            outcome = await pipeline.poll(config.sources[0])
        finally:
            polling = False
            await ticking
            await store.close()
        assert outcome.outcome == "new", outcome.error
        return outcome.items, parses

    return poll


async def test_a_large_feed_is_parsed_while_the_loop_goes_on(
    poll_while_ticking: PollWhileTicking,
) -> None:
    body = _broken_large_feed()
    assert len(body) > constants.PARSE_IN_THREAD_BYTES
    items, [(thread, turns)] = await poll_while_ticking(body)
    assert items == 400
    assert thread.startswith("watcher-parse")
    # on the loop, the parse would have left the ticker no turn at all
    assert turns > 0


async def test_a_small_feed_is_parsed_on_the_loop(poll_while_ticking: PollWhileTicking) -> None:
    items, [(thread, turns)] = await poll_while_ticking(rss(CURB))
    assert (items, thread, turns) == (1, threading.main_thread().name, 0)
