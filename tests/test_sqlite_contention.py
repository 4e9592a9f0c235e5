"""SQLite: another connection committing between the store's statements costs no poll,
alert or delivery, and never counts as a source error.

SQLite lets a transaction that has read write only if no other connection committed
since its read began: otherwise the write fails at once with SQLITE_BUSY_SNAPSHOT
("database is locked"), whatever the busy timeout. Here a second connection commits
a write just before each statement the store runs (skipped while the store holds the
write lock), so any store transaction that reads before it takes the lock and then
writes would fail. The service's paths run under it and must end as they end without
it: polls (new, grown story, unchanged, failing), immediate, grouped and digest
deliveries, update notices, and the start-up move of a removed digest's notices.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.conftest import FakeClock
from tests.feeds import CURB
from tests.servers import FeedServer, Route, WebhookServer
from tests.test_noise import STORIES, feed, hook, make_config, running


class Interleaver:
    """Commits a row from its own connection before each statement run on `db`."""

    def __init__(self, db: Path) -> None:
        self.db = str(db)
        self.committed = 0
        self._lock = threading.Lock()  # the store's statements run on its threads too
        self._conn = sqlite3.connect(db, timeout=0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS interleaved (n INTEGER)")

    def before_execute(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if conn.engine.url.database != self.db:
            return
        with self._lock:
            try:
                self._conn.execute("INSERT INTO interleaved VALUES (?)", (self.committed,))
            except sqlite3.OperationalError as exc:  # the store holds the write lock
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
            else:
                self.committed += 1

    def close(self) -> None:
        self._conn.close()


@contextmanager
def interleaving(db: Path) -> Iterator[Interleaver]:
    writer = Interleaver(db)
    event.listen(Engine, "before_cursor_execute", writer.before_execute)
    try:
        yield writer
    finally:
        event.remove(Engine, "before_cursor_execute", writer.before_execute)
        writer.close()


@asynccontextmanager
async def maybe_interleaving(db: Path, on: bool) -> AsyncIterator[Interleaver | None]:
    if not on:
        yield None
        return
    with interleaving(db) as writer:
        yield writer


async def _polls_and_deliveries(
    db: Path,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    *,
    interleave: bool,
) -> dict[str, Any]:
    """Polls and deliveries of every kind; what was sent and what the sources show."""
    clock = FakeClock()
    feed(feed_server, "/wire.rss", CURB)
    feed(feed_server, "/blog.rss")
    feed(feed_server, "/other.rss", STORIES[1])
    feed_server.routes["/down.rss"] = Route(status=500)
    feeds = {k: feed_server.url(f"/{k}.rss") for k in ("wire", "blog", "other", "down")}
    receivers = [hook(webhook_server, "now", group_wait_s=0), hook(webhook_server, "grouped")]
    subscriptions: list[dict[str, Any]] = [
        {"receivers": ["now"], "notify_updates": True},
        {"receivers": ["grouped"]},
        {"id": "daily", "receivers": ["now"], "mode": "digest", "schedule": "0 13 * * *"},
    ]
    config = make_config(f"sqlite+aiosqlite:///{db}", feeds, receivers, subscriptions)
    webhook_server.received.clear()
    async with running(config, clock, session) as s, maybe_interleaving(db, interleave) as w:
        await s.digester.fire_due()  # the digest's first period starts
        outcomes = [(await s.poll(src)).outcome for src in ("wire", "other", "down")]
        await s.deliver()
        clock.advance(600)
        feed(feed_server, "/blog.rss", ("copy-1", CURB[1], CURB[2]))  # the story grows
        outcomes += [(await s.poll(src)).outcome for src in ("blog", "wire", "down")]
        await s.deliver()
        clock.advance(3600)  # the group's wait and the digest's 13:00 are past
        await s.deliver()
        sent = sorted(
            json.dumps({k: v for k, v in json.loads(body).items() if k not in ("id", "timestamp")})
            for _, body in webhook_server.received
        )
        states = {d.delivery.state.value for d in await s.store.list_deliveries()}
        health = {
            st.id: (st.error_count, st.last_error_reason) for st in await s.store.list_sources()
        }
        return {
            "outcomes": outcomes,
            "sent": sent,
            "states": states,
            "health": health,
            "interleaved": w.committed if w else 0,
        }


async def test_polls_and_deliveries_end_the_same_when_another_connection_commits_between(
    tmp_path: Path,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    servers = (session, feed_server, webhook_server)
    alone = await _polls_and_deliveries(tmp_path / "alone.db", *servers, interleave=False)
    raced = await _polls_and_deliveries(tmp_path / "raced.db", *servers, interleave=True)
    assert raced["interleaved"] > 0
    assert alone["outcomes"] == ["new", "new", "error", "new", "unchanged", "error"]
    assert alone["health"] == {
        "wire": (0, None),
        "blog": (0, None),
        "other": (0, None),
        "down": (2, "http_status"),
    }
    assert alone["states"] == {"sent"}
    # immediate x2, the update, one group of two, one digest of two
    assert len(alone["sent"]) == 5
    raced.pop("interleaved")
    alone.pop("interleaved")
    assert raced == alone


async def test_a_removed_digests_notices_move_when_another_connection_commits_between(
    tmp_path: Path,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    """The start-up move reads the notices left waiting, then moves them: one transaction."""
    db = tmp_path / "w.db"
    url = f"sqlite+aiosqlite:///{db}"
    feed(feed_server, "/a.rss", STORIES[0])
    feeds = {"a": feed_server.url("/a.rss")}
    daily = {"id": "daily", "receivers": ["hook"], "mode": "digest", "schedule": "0 8 * * *"}
    receivers = [hook(webhook_server, group_wait_s=0)]
    async with running(make_config(url, feeds, receivers, [daily]), clock, session) as s:
        await s.digester.fire_due()
        await s.poll("a")
    clock.advance(3600)
    async with running(make_config(url, feeds, receivers, []), clock, session) as s:
        with interleaving(db) as writer:
            assert await s.digester.adopt_orphans() == 1
            await s.deliver()
        assert writer.committed > 0
        [(_, body)] = webhook_server.received
        assert json.loads(body)["alert"]["item"]["title"] == STORIES[0][1]


async def test_concurrent_polls_and_sends_lose_and_repeat_nothing(
    tmp_path: Path,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    """Polls ingest while the outbox claims and records, with commits from outside between."""
    db = tmp_path / "w.db"
    feeds = {}
    for n, story in enumerate(STORIES):
        feed(feed_server, f"/{n}.rss", story)
        feeds[f"s{n}"] = feed_server.url(f"/{n}.rss")
    receivers = [hook(webhook_server, group_wait_s=0)]
    config = make_config(f"sqlite+aiosqlite:///{db}", feeds, receivers, [{"receivers": ["hook"]}])
    async with running(config, clock, session) as s:
        with interleaving(db) as writer:
            for _ in range(3):  # polls of new stories, then of unchanged feeds
                polls = [s.poll(source) for source in feeds]
                *outcomes, _ = await asyncio.gather(*polls, s.worker.drain())
                assert {o.error for o in outcomes} == {None}
            await s.worker.drain()
        assert writer.committed > 0
        titles = sorted(
            json.loads(body)["alert"]["item"]["title"] for _, body in webhook_server.received
        )
        assert titles == sorted(title for _, title, _ in STORIES)
        assert {d.delivery.state.value for d in await s.store.list_deliveries()} == {"sent"}
        assert {st.error_count for st in await s.store.list_sources()} == {0}
