"""No lost update when a story grows while its alert's notification is being sent.

An ingest that grows a story while the outbox claims and sends the alert's
notification may see it as not yet sent and stage no update, while the message
goes out with the old sources. The outbox notes what each message listed and,
marking it sent, stages the update itself (watcher/group.py). Real stores (a
SQLite file, PostgreSQL), real feed and webhook servers; the interleaving is
made with a real row lock, not a mock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.conftest import FakeClock
from tests.feeds import CURB
from tests.servers import FeedServer, WebhookServer
from tests.test_noise import STORIES, Service, feed, hook, make_config, running, start, valid
from watcher.group import notices
from watcher.pipeline import PollOutcome
from watcher.store import Outcome, deliveries, sources

COPY = ("copy-1", CURB[1], CURB[2])  # the same story from another source


@pytest.fixture
def quiet(webhook_server2: WebhookServer) -> WebhookServer:
    """The receiver whose subscription does not ask for updates."""
    return webhook_server2


def receivers(server: WebhookServer, quiet: WebhookServer, **extra: Any) -> list[dict[str, Any]]:
    """`hook` (its subscription asks for updates) and `quiet` (its does not)."""
    return [hook(server, **extra), hook(quiet, "quiet", **extra)]


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait on the real clock (up to 10 s) for something another task does."""
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def update_notices(s: Service) -> list[tuple[str, str | None]]:
    """(key, reply_to) of every update notice staged."""
    n = notices
    async with s.store.engine.connect() as conn:
        rows = await conn.execute(
            select(n.c.key, n.c.reply_to).where(n.c.kind == "update").order_by(n.c.id)
        )
        return [(str(r.key), r.reply_to) for r in rows]


async def carried(s: Service, delivery_id: int) -> int | None:
    async with s.store.engine.connect() as conn:
        value = await conn.scalar(
            select(deliveries.c.carried_sources).where(deliveries.c.id == delivery_id)
        )
        return None if value is None else int(value)


def bodies(server: WebhookServer) -> list[dict[str, Any]]:
    return [valid(json.loads(b)) for _, b in server.received]


def alerts_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The alert objects of a webhook body of any type."""
    return list(body["alerts"]) if "alerts" in body else [body["alert"]]


def fast_config(store_url: str, feed_server: FeedServer, server: WebhookServer,
                quiet: WebhookServer) -> Any:  # fmt: skip
    return make_config(
        store_url,
        {"wire": feed_server.url("/wire.rss"), "blog": feed_server.url("/blog.rss")},
        receivers(server, quiet, group_wait_s=0),
        [{"receivers": ["hook"], "notify_updates": True}, {"receivers": ["quiet"]}],
    )


# ------------------------------------------------------------------ both stores


async def test_the_outbox_stages_the_update_a_racing_ingest_did_not_once(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    quiet: WebhookServer,
) -> None:
    """The state a racing ingest leaves (the story grown, no update staged) is made by the
    ingest's own step with no subscription asking; the post-send check, run twice,
    stages one update, and only for the route that asked."""
    feed(feed_server, "/wire.rss", CURB)
    async with running(
        fast_config(store_url, feed_server, webhook_server, quiet), clock, session
    ) as s:
        [raised] = (await s.poll("wire")).alerts
        claimed = await s.store.claim_deliveries(limit=10, lease_s=60)
        assert sorted(c.delivery.receiver for c in claimed) == ["hook", "quiet"]
        assert [await carried(s, c.delivery.id) for c in claimed] == [1, 1]
        [story] = {c.alert.story_key for c in claimed}
        async with s.store.transaction() as tx:  # what the racing ingest did
            grown = await s.pipeline.dispatcher.stories_grown(tx, {story: 2}, updates=False)
        assert (grown.alert_ids, grown.staged) == ([raised.alert_id], 0)
        for c in claimed:
            await s.worker.notifiers[c.delivery.receiver].send(c)
        sent = [Outcome(c.delivery.id, "sent") for c in claimed]
        await s.store.record_outcomes(sent)
        await s.store.record_outcomes(sent)  # recorded again (a retried write): no second one
        first_key = f"wd_{raised.alert_id}_hook"
        assert await update_notices(s) == [(f"u::hook:{raised.alert_id}:2", first_key)]

        await s.deliver()
        await s.deliver()
        first, update = bodies(webhook_server)
        assert first["id"] == first_key and "update" not in first["alert"]
        assert update["alert"]["update"] is True and update["alert"]["in_reply_to"] == first_key
        assert len(quiet.received) == 1  # its subscription did not ask for updates


async def test_when_both_sides_stage_the_update_one_is_sent(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    quiet: WebhookServer,
) -> None:
    """Claimed, then the copy is ingested (it sees the notification attempted and stages the
    update), then the send finishes: the check after the send finds the same key."""
    feed(feed_server, "/wire.rss", CURB)
    feed(feed_server, "/blog.rss", COPY)
    async with running(
        fast_config(store_url, feed_server, webhook_server, quiet), clock, session
    ) as s:
        [raised] = (await s.poll("wire")).alerts
        [claimed] = [
            c
            for c in await s.store.claim_deliveries(limit=10, lease_s=60)
            if c.delivery.receiver == "hook"
        ]
        grown = await s.poll("blog")
        assert grown.staged == 1
        await s.worker.notifiers["hook"].send(claimed)
        await s.store.record_outcomes([Outcome(claimed.delivery.id, "sent")])
        await s.store.record_outcomes([Outcome(claimed.delivery.id, "sent")])
        assert len(await update_notices(s)) == 1
        clock.advance(61)  # the quiet receiver's lease lapses: it is sent too
        await s.deliver()
        await s.deliver()
        first, update = bodies(webhook_server)
        assert first["alert"]["sources"] == ["wire"]
        assert update["alert"]["sources"] == ["wire", "blog"]
        assert update["alert"]["in_reply_to"] == first["id"] == f"wd_{raised.alert_id}_hook"
        assert len(quiet.received) == 1


async def test_no_update_when_the_story_did_not_grow_after_the_claim(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    quiet: WebhookServer,
) -> None:
    """Sent with the sources the story has: no update, however often the send is recorded;
    a copy ingested before the claim is in the first message, not in an update."""
    feed(feed_server, "/wire.rss", CURB, STORIES[1])
    feed(feed_server, "/blog.rss", COPY)
    async with running(
        fast_config(store_url, feed_server, webhook_server, quiet), clock, session
    ) as s:
        await s.poll("wire")
        await s.poll("blog")  # before the claim: the story's first message lists both
        claimed = await s.store.claim_deliveries(limit=10, lease_s=60)
        assert sorted([await carried(s, c.delivery.id) or 0 for c in claimed]) == [1, 1, 2, 2]
        sent = [Outcome(c.delivery.id, "sent") for c in claimed]
        for c in claimed:
            await s.worker.notifiers[c.delivery.receiver].send(c)
        await s.store.record_outcomes(sent)
        await s.store.record_outcomes(sent)
        await s.deliver()
        assert await update_notices(s) == []
        assert len(webhook_server.received) == len(quiet.received) == 2
        sources = sorted(b["alert"]["sources"] for b in bodies(webhook_server))
        assert sources == [["wire"], ["wire", "blog"]]


async def test_without_subscriptions_asking_for_updates_the_outbox_does_no_update_work(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    quiet: WebhookServer,
) -> None:
    """`updates=False` (what `watcher run` passes when no subscription sets
    notify_updates): claims note nothing, and a send checks for no update."""
    feed(feed_server, "/wire.rss", CURB)
    async with running(
        fast_config(store_url, feed_server, webhook_server, quiet), clock, session
    ) as s:
        await s.poll("wire")
        claimed = await s.store.claim_deliveries(limit=10, lease_s=60, updates=False)
        assert [await carried(s, c.delivery.id) for c in claimed] == [None, None]
        [story] = {c.alert.story_key for c in claimed}
        async with s.store.transaction() as tx:
            await s.pipeline.dispatcher.stories_grown(tx, {story: 2}, updates=False)
        sent = [Outcome(c.delivery.id, "sent") for c in claimed]
        await s.store.record_outcomes(sent, updates=False)
        assert await update_notices(s) == []


# ------------------------------------------------------------------ PostgreSQL replicas


async def _blocked_on_lock(engine: AsyncEngine) -> None:
    """Until a session waits for a row lock to update `sources` (the ingest recording its poll)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE sources%'"
    )
    for _ in range(400):
        async with engine.connect() as conn:  # a new transaction each time: a fresh view
            if await conn.scalar(query):
                return
        await asyncio.sleep(0.025)
    raise AssertionError("the ingest never reached its last statement")


async def race(s: Service, store_url: str, server: WebhookServer, sent: int) -> PollOutcome:
    """The interleaving replicas can produce: the copy's ingest grows the story and finds
    the alert's notification not yet sent, and stays uncommitted (held by a lock on its
    source's row, which it updates last) while the outbox claims and sends that
    notification with the old sources; then the ingest commits."""
    blocker = create_async_engine(store_url)
    try:
        async with blocker.connect() as conn:
            tx = await conn.begin()
            await conn.execute(select(sources.c.id).where(sources.c.id == "blog").with_for_update())
            ingest = asyncio.create_task(s.poll("blog"))
            await _blocked_on_lock(blocker)
            sending = asyncio.create_task(s.worker.drain())
            await eventually(lambda: len(server.received) == sent, "the notification")
            await tx.commit()
        grown: PollOutcome = await ingest
        await sending
    finally:
        await blocker.dispose()
    return grown


async def _fast(s: Service, clock: FakeClock) -> None:
    pass


async def _group(s: Service, clock: FakeClock) -> None:
    clock.advance(30)
    assert await s.grouper.flush() == 2  # one notification per receiver


async def _digest(s: Service, clock: FakeClock) -> None:
    clock.now = datetime(2026, 2, 6, 7, 0, tzinfo=UTC)  # 08:00 in Paris
    assert len(await s.digester.fire_due()) == 2  # both subscriptions' digests


async def _next_digest(s: Service, clock: FakeClock) -> None:
    clock.now = datetime(2026, 2, 7, 7, 0, tzinfo=UTC)


async def _group_wait(s: Service, clock: FakeClock) -> None:
    await s.deliver()  # the update waits as long as the alert did
    assert await s.grouper.next_due() == clock() + timedelta(seconds=30)
    clock.advance(30)


PATHS = {
    # receivers' settings, subscriptions' settings, stories on the wire, seal, then
    "fast": ({"group_wait_s": 0}, {}, 1, _fast, _fast),
    "group": ({}, {}, 2, _group, _group_wait),
    "digest": ({"group_wait_s": 0}, {"id": "daily", "mode": "digest", "schedule": "0 8 * * *",
                "timezone": "Europe/Paris"}, 1, _digest, _next_digest),
}  # fmt: skip


@pytest.mark.parametrize("path", list(PATHS))
async def test_a_story_grown_while_its_alert_is_sent_gets_one_update(
    path: str,
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    quiet: WebhookServer,
) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: an ingest and a claim cannot interleave there")
    receiver, sub, n, seal, then = PATHS[path]
    feed(feed_server, "/wire.rss", *STORIES[:n])
    feed(feed_server, "/blog.rss", COPY)
    config = make_config(
        store_url,
        {"wire": feed_server.url("/wire.rss"), "blog": feed_server.url("/blog.rss")},
        receivers(webhook_server, quiet, **receiver),
        [{"receivers": ["hook"], "notify_updates": True, **sub},
         {"receivers": ["quiet"], **sub, **({"id": "q"} if sub else {})}],
    )  # fmt: skip
    async with running(config, clock, session) as s:
        await s.digester.fire_due()  # first sight: the digests' first period starts now
        alert_id = (await s.poll("wire")).alerts[0].alert_id
        await seal(s, clock)
        grown = await race(s, store_url, webhook_server, 1)
        assert grown.alerts_updated == [alert_id] and grown.staged == 0  # "not yet sent"
        [first] = bodies(webhook_server)
        [sent] = [a for a in alerts_of(first) if a["id"] == alert_id]
        assert sent["sources"] == ["wire"]  # the old sources went out

        await then(s, clock)
        await s.deliver()
        await s.deliver()
        first, update = bodies(webhook_server)
        [a] = alerts_of(update)
        assert (a["id"], a["update"], a["in_reply_to"]) == (alert_id, True, first["id"])
        assert a["sources"] == ["wire", "blog"]
        assert len(await update_notices(s)) == 1
        assert len(quiet.received) == 1  # no update asked, none sent


# ------------------------------------------------------------------ upgrade


async def test_a_store_from_before_gains_carried_sources_and_old_claims_send_no_update(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    quiet: WebhookServer,
) -> None:
    """A store from before this change gets the columns at open. A delivery an earlier
    version claimed (nothing recorded) is marked sent without an update check."""
    feed(feed_server, "/wire.rss", CURB)
    config = fast_config(store_url, feed_server, webhook_server, quiet)
    s = await start(config, clock, session)
    [raised] = (await s.poll("wire")).alerts
    claimed = await s.store.claim_deliveries(limit=10, lease_s=60)
    await s.store.close()
    engine = create_async_engine(store_url)
    async with engine.begin() as conn:  # the store as the earlier version left it
        for table in ("deliveries", "notices"):
            await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN carried_sources"))
    await engine.dispose()

    async with running(config, clock, session) as s:  # the upgrade
        assert [await carried(s, c.delivery.id) for c in claimed] == [None, None]
        [story] = {c.alert.story_key for c in claimed}
        async with s.store.transaction() as tx:
            await s.pipeline.dispatcher.stories_grown(tx, {story: 2}, updates=False)
        await s.store.record_outcomes([Outcome(c.delivery.id, "sent") for c in claimed])
        assert await update_notices(s) == []
        assert {d.delivery.state for d in await s.store.list_deliveries()} == {"sent"}
        assert raised.alert_id == claimed[0].alert.id
