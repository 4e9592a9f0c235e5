"""Source health notices: broken or quiet sources, once, and a recovery notice."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from sqlalchemy import Column, MetaData, String, Table, Text, text

from tests.conftest import FakeClock
from tests.feeds import CURB, NOISE, rss
from tests.servers import FeedServer, Route, WebhookServer
from watcher.config import Config
from watcher.demo import SmtpSink
from watcher.health import HealthMonitor, source_health
from watcher.metrics import Metrics
from watcher.notify.webhook import sign
from watcher.pipeline import Pipeline, build_pipeline
from watcher.rules import Matcher
from watcher.store import Store, UTCDateTime

SECRET = "whsec_" + base64.b64encode(b"operator-secret-for-tests-32byte").decode()


def make_config(feed_url: str, receiver: dict[str, object]) -> Config:
    return Config.model_validate(
        {
            "polling": {"allow_networks": ["127.0.0.0/8"], "timeout_s": 2},
            "health": {"operator_receiver": "ops", "broken_after_errors": 2},
            "sources": [{"id": "bis", "url": feed_url, "quiet_after_s": 7200}],
            "receivers": [{"id": "ops", **receiver}],
        }
    )


async def setup(
    config: Config, store: Store, clock: FakeClock, session: aiohttp.ClientSession
) -> tuple[Pipeline, HealthMonitor]:
    await store.sync_sources((s.id, str(s.url)) for s in config.sources)
    pipeline = build_pipeline(
        config, store=store, session=session, matcher=lambda: Matcher([]), metrics=Metrics(),
        clock=clock,
    )  # fmt: skip
    monitor = HealthMonitor(store=store, config=config, session=session, clock=clock)
    return pipeline, monitor


@asynccontextmanager
async def two_processes(
    config: Config, store_url: str, clock: FakeClock, session: aiohttp.ClientSession
) -> AsyncIterator[tuple[Pipeline, HealthMonitor, HealthMonitor]]:
    """Two processes' monitors on one store, its source polled into "broken" (two errors)."""
    first, second = Store(store_url, clock=clock), Store(store_url, clock=clock)
    await first.open()
    await second.open()
    try:
        pipeline, monitor1 = await setup(config, first, clock, session)
        monitor2 = HealthMonitor(store=second, config=config, session=session, clock=clock)
        await pipeline.poll(config.sources[0])
        await pipeline.poll(config.sources[0])
        yield pipeline, monitor1, monitor2
    finally:
        await first.close()
        await second.close()


async def test_broken_source_notifies_once_then_recovers(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    feed_server.routes["/f"] = Route(status=500)
    config = make_config(feed_server.url("/f"), {"type": "webhook", "url": webhook_server.url})
    pipeline, monitor = await setup(config, store, clock, session)
    source = config.sources[0]
    assert await monitor.check() == []  # never polled: nothing to judge
    await pipeline.poll(source)
    assert await monitor.check() == []  # one error is below the threshold
    await pipeline.poll(source)
    [notice] = await monitor.check()
    assert notice.state == "broken" and "2 errors in a row" in notice.detail
    assert await monitor.check() == []  # once
    await pipeline.poll(source)
    assert await monitor.check() == []  # still broken: still once
    feed_server.routes["/f"] = Route(body=rss(CURB, NOISE))
    await pipeline.poll(source)
    [recovered] = await monitor.check()
    assert recovered.state == "recovered"
    assert await monitor.check() == []
    bodies = [json.loads(b) for _, b in webhook_server.received]
    assert [(b["type"], b["source"], b["state"]) for b in bodies] == [
        ("source_health", "bis", "broken"),
        ("source_health", "bis", "recovered"),
    ]
    assert bodies[0]["detail"] == "2 errors in a row; last: http_status: HTTP 500"


async def test_quiet_source_notifies_by_email(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, port = smtp_server
    feed_server.routes["/f"] = Route(body=rss(CURB))
    config = make_config(
        feed_server.url("/f"),
        {"type": "email", "host": "127.0.0.1", "port": port, "to": ["ops@example.org"],
         "from": "watcher@example.org", "timeout_s": 5},
    )  # fmt: skip
    pipeline, monitor = await setup(config, store, clock, session)
    source = config.sources[0]
    await pipeline.poll(source)
    clock.advance(3600)
    await pipeline.poll(source)  # healthy (304), but nothing new
    assert await monitor.check() == []
    clock.advance(3601 + 1)  # more than quiet_after_s since the last new item
    await pipeline.poll(source)
    [notice] = await monitor.check()
    assert notice.state == "quiet" and "no new item for 2.0 h" in notice.detail
    assert await monitor.check() == []
    feed_server.routes["/f"] = Route(body=rss(CURB, NOISE))  # a new item arrives
    await pipeline.poll(source)
    [recovered] = await monitor.check()
    assert recovered.state == "recovered"
    for _ in range(50):
        if len(sink.messages) >= 2:
            break
        await asyncio.sleep(0.05)  # aiosmtpd hands messages over on its own thread
    subjects = [m["Subject"] for m in sink.messages]
    assert subjects == ["[watcher] source bis is quiet", "[watcher] source bis recovered"]


async def test_undeliverable_notice_is_retried_at_the_next_check(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:  # fmt: skip
    feed_server.routes["/f"] = Route(status=410)
    config = make_config(feed_server.url("/f"), {"type": "webhook", "url": webhook_server.url})
    pipeline, monitor = await setup(config, store, clock, session)
    await pipeline.poll(config.sources[0])
    webhook_server.responses.append((503, {}))
    assert await monitor.check() == []  # the receiver failed: not marked as raised
    [notice] = await monitor.check()
    assert notice.state == "broken" and "deactivated" in notice.detail


def test_operator_receiver_must_exist() -> None:
    with pytest.raises(ValueError, match=r"health\.operator_receiver: unknown receiver 'ops'"):
        Config.model_validate({"health": {"operator_receiver": "ops"}})


# -- several processes on one store ------------------------------------------------------


async def test_two_processes_on_one_store_send_one_notice(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    """Replicas on PostgreSQL, or an old and a new process overlapping in a restart."""
    feed_server.routes["/f"] = Route(status=500)
    webhook_server.delay_s = 0.2  # both checks are judging while the first send is in flight
    config = make_config(feed_server.url("/f"), {"type": "webhook", "url": webhook_server.url})
    async with two_processes(config, store_url, clock, session) as (pipeline, monitor1, monitor2):
        results = await asyncio.gather(monitor1.check(), monitor2.check())
        assert sorted(len(r) for r in results) == [0, 1]
        assert [b["state"] for b in webhook_server.json_bodies()] == ["broken"]
        assert await monitor1.check() == [] and await monitor2.check() == []
        feed_server.routes["/f"] = Route(body=rss(CURB))
        clock.advance(60)
        await pipeline.poll(config.sources[0])
        results = await asyncio.gather(monitor2.check(), monitor1.check())
        assert sorted(len(r) for r in results) == [0, 1]
        assert [b["state"] for b in webhook_server.json_bodies()] == ["broken", "recovered"]


async def test_a_failed_send_is_retried_by_the_other_process_under_the_same_id(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPS_SECRET", SECRET)
    feed_server.routes["/f"] = Route(status=500)
    config = make_config(
        feed_server.url("/f"),
        {"type": "webhook", "url": webhook_server.url, "secret_env": "OPS_SECRET"},
    )
    async with two_processes(config, store_url, clock, session) as (pipeline, monitor1, monitor2):
        webhook_server.responses.append((503, {}))
        assert await monitor1.check() == []  # the claim is released, not lost
        clock.advance(300)
        [notice] = await monitor2.check()
        assert notice.state == "broken"
        (h1, b1), (h2, b2) = webhook_server.received
        assert h1["webhook-id"] == h2["webhook-id"] == notice.msg_id  # receivers can dedup
        assert h1["webhook-timestamp"] != h2["webhook-timestamp"]  # each try signed anew
        for headers, body in webhook_server.received:
            assert headers["webhook-signature"] == sign(
                SECRET, headers["webhook-id"], int(headers["webhook-timestamp"]), body
            )
        assert json.loads(b1)["id"] == json.loads(b2)["id"] == notice.msg_id
        # the next episode of the same problem has an id of its own
        feed_server.routes["/f"] = Route(body=rss(CURB))
        await pipeline.poll(config.sources[0])
        assert [n.state for n in await monitor1.check()] == ["recovered"]
        clock.advance(600)
        feed_server.routes["/f"] = Route(status=500)
        await pipeline.poll(config.sources[0])
        await pipeline.poll(config.sources[0])
        [again] = await monitor2.check()
        assert again.state == "broken" and again.msg_id != notice.msg_id
        ids = [h["webhook-id"] for h, _ in webhook_server.received]
        assert len(ids) == 4 and len(set(ids)) == 3


async def test_a_claim_left_by_a_process_that_died_is_taken_over_after_its_lease(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    feed_server.routes["/f"] = Route(status=500)
    webhook_server.delay_s = 30  # the first process dies while its send is in flight
    config = make_config(feed_server.url("/f"), {"type": "webhook", "url": webhook_server.url})
    async with two_processes(config, store_url, clock, session) as (_, monitor1, monitor2):
        dying = asyncio.create_task(monitor1.check())
        for _ in range(1000):  # until the claim is in the store
            async with monitor2.store.engine.connect() as conn:
                row = (await conn.execute(source_health.select())).first()
            if row is not None and getattr(row, "claimed_by", None) is not None:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the first process never claimed the notice")
        dying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dying
        webhook_server.delay_s = 0
        assert await monitor2.check() == []  # claimed by the other: not sent twice
        clock.advance(601)  # the dead process's lease lapses
        [notice] = await monitor2.check()
        assert notice.state == "broken"


# -- quiet, recovery, and what changed -----------------------------------------------


async def test_a_source_that_never_brought_an_item_goes_quiet(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    feed_server.routes["/f"] = Route(body=rss())  # a valid feed, empty
    config = make_config(feed_server.url("/f"), {"type": "webhook", "url": webhook_server.url})
    pipeline, monitor = await setup(config, store, clock, session)
    source = config.sources[0]
    await pipeline.poll(source)
    assert await monitor.check() == []
    clock.advance(3600)
    await pipeline.poll(source)  # every poll succeeds: last_success_at moves on
    assert await monitor.check() == []
    clock.advance(3700)
    await pipeline.poll(source)
    [notice] = await monitor.check()
    assert notice.state == "quiet"
    assert notice.detail.startswith("no item at all for 2.0 h, since 2026-02-05 12:00 UTC")
    clock.advance(3600)
    await pipeline.poll(source)
    assert await monitor.check() == []  # once


async def test_a_gone_source_recovers_only_once_its_new_url_answered(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    feed_server.routes["/old"] = Route(status=410)
    feed_server.routes["/new"] = Route(status=500)
    receiver: dict[str, object] = {"type": "webhook", "url": webhook_server.url}
    config = make_config(feed_server.url("/old"), receiver)
    pipeline, monitor = await setup(config, store, clock, session)
    await pipeline.poll(config.sources[0])
    [broken] = await monitor.check()
    assert broken.state == "broken"
    clock.advance(600)
    moved = make_config(feed_server.url("/new"), receiver)  # a restart with a new URL
    pipeline, monitor = await setup(moved, store, clock, session)
    assert await monitor.check() == []  # the new URL was not polled yet
    await pipeline.poll(moved.sources[0])
    assert await monitor.check() == []  # and it fails
    feed_server.routes["/new"] = Route(body=rss(CURB))
    clock.advance(600)
    await pipeline.poll(moved.sources[0])
    [recovered] = await monitor.check()
    assert recovered.state == "recovered" and recovered.detail == "was broken; healthy again"
    assert [b["state"] for b in webhook_server.json_bodies()] == ["broken", "recovered"]
    # the reason is said once (the stored error text names the source and reason already)
    assert broken.detail == "deactivated: gone: HTTP 410: the feed is gone"


async def test_quiet_then_broken_then_fixed_but_still_quiet_says_what_changed(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    feed_server.routes["/f"] = Route(body=rss(CURB))
    config = make_config(feed_server.url("/f"), {"type": "webhook", "url": webhook_server.url})
    pipeline, monitor = await setup(config, store, clock, session)
    source = config.sources[0]
    await pipeline.poll(source)  # one item, then nothing new
    clock.advance(7300)
    await pipeline.poll(source)
    [quiet] = await monitor.check()
    assert quiet.state == "quiet" and quiet.previous is None
    feed_server.routes["/f"] = Route(status=500)
    clock.advance(600)
    await pipeline.poll(source)
    await pipeline.poll(source)
    [broken] = await monitor.check()
    assert broken.state == "broken" and broken.previous == "quiet"
    assert broken.detail == "was quiet; now 2 errors in a row; last: http_status: HTTP 500"
    feed_server.routes["/f"] = Route(body=rss(CURB))  # fixed, and still nothing new
    clock.advance(600)
    await pipeline.poll(source)
    [still] = await monitor.check()
    assert still.state == "quiet" and still.previous == "broken"
    assert still.subject == "[watcher] source bis is no longer failing, but still quiet"
    assert still.detail.startswith("no longer failing, but still quiet: no new item for 2.4 h")
    feed_server.routes["/f"] = Route(body=rss(CURB, NOISE))
    clock.advance(600)
    await pipeline.poll(source)
    [recovered] = await monitor.check()
    assert recovered.state == "recovered" and recovered.previous == "quiet"
    assert [(b["state"], b["previous"]) for b in webhook_server.json_bodies()] == [
        ("quiet", None),
        ("broken", "quiet"),
        ("quiet", "broken"),
        ("recovered", "quiet"),
    ]


async def test_slack_operator_receiver_gets_a_short_message(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPS_SLACK_URL", webhook_server.url)  # a real incoming-webhook stand-in
    feed_server.routes["/f"] = Route(status=500)
    config = make_config(feed_server.url("/f"), {"type": "slack", "url_env": "OPS_SLACK_URL"})
    pipeline, monitor = await setup(config, store, clock, session)
    await pipeline.poll(config.sources[0])
    await pipeline.poll(config.sources[0])
    webhook_server.responses.append((500, {}))  # Slack down: retried at the next check
    assert await monitor.check() == []
    [notice] = await monitor.check()
    assert notice.state == "broken"
    feed_server.routes["/f"] = Route(body=rss(CURB))
    await pipeline.poll(config.sources[0])
    [recovered] = await monitor.check()
    assert recovered.state == "recovered"
    messages = webhook_server.json_bodies()
    assert messages[1:] == [
        {"text": "*source bis is broken*\n2 errors in a row; last: http_status: HTTP 500"},
        {"text": "*source bis recovered*\nwas broken; healthy again"},
    ]
    assert webhook_server.received[0][0]["content-type"] == "application/json; charset=utf-8"


async def test_a_store_from_before_claims_is_upgraded_and_not_told_again(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    """A source_health table of the first version: four columns, one row per raised problem."""
    old = MetaData()
    Table(
        "source_health",
        old,
        Column("source_id", String(64), primary_key=True),
        Column("problem", String(16), nullable=False),
        Column("detail", Text, nullable=False),
        Column("raised_at", UTCDateTime, nullable=False),
    )
    store = Store(store_url, clock=clock)
    await store.open()
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("DROP TABLE source_health"))
            await conn.run_sync(old.create_all)
            await conn.execute(
                old.tables["source_health"]
                .insert()
                .values(source_id="bis", problem="broken", detail="old", raised_at=clock())
            )
        feed_server.routes["/f"] = Route(status=500)
        config = make_config(feed_server.url("/f"), {"type": "webhook", "url": webhook_server.url})
        pipeline, monitor = await setup(config, store, clock, session)
        clock.advance(60)
        await pipeline.poll(config.sources[0])
        await pipeline.poll(config.sources[0])
        assert await monitor.check() == []  # told before the upgrade: not again
        feed_server.routes["/f"] = Route(body=rss(CURB))
        clock.advance(60)
        await pipeline.poll(config.sources[0])
        assert [n.state for n in await monitor.check()] == ["recovered"]
    finally:
        await store.close()
