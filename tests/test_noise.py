"""Routing and noise control: grouping, throttling, digests, updates and silences.

Feeds come from a real feed server; notifications go to a real SMTP server
(aiosmtpd) and real aiohttp webhook receivers; the store is a real SQLite file
or the real PostgreSQL. Time is an injected clock that the tests move: no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from importlib import resources
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tests.conftest import FakeClock
from tests.feeds import CURB, rss
from tests.servers import FeedServer, Route, WebhookServer
from tests.test_pipeline import matcher
from watcher.config import Config, load_config
from watcher.demo import SmtpSink
from watcher.digest import Digester
from watcher.errors import ConfigError
from watcher.group import Dispatcher, Grouper, receiver_policies
from watcher.metrics import Metrics
from watcher.models import DeliveryState
from watcher.notify import build_notifiers
from watcher.outbox import OutboxWorker
from watcher.pipeline import Pipeline, build_pipeline
from watcher.service import schedule_digests
from watcher.silence import add_silence
from watcher.store import Store

# Five different rare-earth export stories (each matches ree-export-curb; none clusters
# with another: different countries, actors and numbers).
STORIES = [
    CURB,
    ("vn-1", "Vietnam bans rare earth ore exports",
     "<p>Hanoi will ban exports of rare earth ore from 2026 and require a licence for oxides"
     " processed by Vinacomin.</p>"),
    ("mm-1", "Myanmar suspends rare earth export licences in Kachin",
     "<p>Myanmar's junta suspended export licences for rare earth concentrate trucked from"
     " Kachin State to Yunnan.</p>"),
    ("in-1", "India curbs rare earth exports to protect IREL supply",
     "<p>New Delhi asked IREL to halt rare earth exports to Japan under its 2012 quota deal"
     " with Toyota Tsusho.</p>"),
    ("br-1", "Brazil drafts rare earth export licence rules for Goias",
     "<p>Brasilia is drafting export licence rules for rare earth projects run by Serra Verde"
     " in Goias.</p>"),
]  # fmt: skip

SCHEMA = json.loads(
    resources.files("watcher").joinpath("schemas/webhook-v1.schema.json").read_text()
)


def valid(body: dict[str, Any]) -> dict[str, Any]:
    jsonschema.Draft202012Validator(SCHEMA).validate(body)
    return body


def make_config(
    store_url: str,
    feeds: dict[str, str],
    receivers: list[dict[str, Any]],
    subscriptions: list[dict[str, Any]],
) -> Config:
    return Config.model_validate(
        {
            "store": {"url": store_url},
            "polling": {"timeout_s": 2, "allow_networks": ["127.0.0.0/8"]},
            "outbox": {"backoff_base_s": 10, "max_attempts": 5},
            "sources": [{"id": k, "url": v} for k, v in feeds.items()],
            "receivers": receivers,
            "subscriptions": subscriptions,
        }
    )


def mail(port: int, rid: str = "mail", **extra: Any) -> dict[str, Any]:
    return {"type": "email", "id": rid, "host": "127.0.0.1", "port": port, "timeout_s": 2,
            "to": ["analyst@example.org"], "from": "watcher@example.org", **extra}  # fmt: skip


def hook(server: WebhookServer, rid: str = "hook", **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "id": rid, "url": server.url, **extra}


@dataclass
class Service:
    """The stages `watcher run` wires, driven by hand."""

    config: Config
    store: Store
    pipeline: Pipeline
    worker: OutboxWorker
    grouper: Grouper
    digester: Digester

    async def poll(self, source: str) -> Any:
        [s] = [s for s in self.config.sources if s.id == source]
        return await self.pipeline.poll(s)

    async def deliver(self) -> None:
        """What the service's loops do when the clock says so: seal due groups and
        digests, then send."""
        await self.grouper.flush()
        await self.digester.fire_due()
        await self.worker.drain()


async def start(config: Config, clock: FakeClock, session: aiohttp.ClientSession) -> Service:
    store = Store(config.store.url, clock=clock)
    await store.open()
    await store.sync_sources((s.id, str(s.url)) for s in config.sources)
    metrics = Metrics()
    m = matcher()
    worker = OutboxWorker(
        store=store,
        notifiers=build_notifiers(config, session=session, clock=clock),
        config=config.outbox,
        metrics=metrics,
        clock=clock,
    )
    pipeline = build_pipeline(
        config, store=store, session=session, matcher=lambda: m, metrics=metrics, clock=clock
    )
    grouper = Grouper(store=store, dispatcher=Dispatcher(receiver_policies(config)), clock=clock)
    digester = Digester(store=store, subscriptions=config.subscriptions, clock=clock)
    return Service(config, store, pipeline, worker, grouper, digester)


@contextlib.asynccontextmanager
async def running(
    config: Config, clock: FakeClock, session: aiohttp.ClientSession
) -> AsyncIterator[Service]:
    """`start`, and the store closed at the end."""
    s = await start(config, clock, session)
    try:
        yield s
    finally:
        await s.store.close()


async def messages(sink: SmtpSink, n: int) -> list[EmailMessage]:
    """aiosmtpd hands messages over on its own thread, right after replying 250."""
    for _ in range(200):
        if len(sink.messages) >= n:
            break
        await asyncio.sleep(0.01)
    return sink.messages


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def feed(feed_server: FeedServer, path: str, *items: tuple[str, str, str]) -> None:
    feed_server.routes[path] = Route(body=rss(*items), etag=False)


def service_config(
    tmp_path: Any, feed_url: str, server: WebhookServer, interval_s: int, **receiver: Any
) -> Config:
    """`watcher run`'s config for the service tests: one source, one webhook receiver
    that gets every alert at once and a daily digest."""
    return Config.model_validate(
        {
            "store": {"url": f"sqlite+aiosqlite:///{tmp_path}/w.db"},
            "polling": {"allow_networks": ["127.0.0.0/8"]},
            "outbox": {"sweep_interval_s": 0.2},
            "sources": [{"id": "a", "url": feed_url, "interval_s": interval_s}],
            "receivers": [hook(server, **receiver)],
            "subscriptions": [
                {"receivers": ["hook"]},
                {"id": "daily", "receivers": ["hook"], "mode": "digest",
                 "schedule": "0 8 * * *", "timezone": "Europe/Paris"},
            ],
        }
    )  # fmt: skip


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """The service's app started (its loops run) and served on a free loopback port."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def first_webhook(server: WebhookServer) -> None:
    """Wait (on the real clock, up to 10 s) for the receiver's first request."""
    for _ in range(400):
        if server.received:
            return
        await asyncio.sleep(0.025)


# ------------------------------------------------------------------ routing


async def test_subscriptions_route_by_source_and_severity(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    webhook_server2: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, port = smtp_server
    feed(feed_server, "/a.rss", STORIES[0])
    feed(feed_server, "/b.rss", STORIES[1])
    config = make_config(
        store_url,
        {"a": feed_server.url("/a.rss"), "b": feed_server.url("/b.rss")},
        [mail(port, group_wait_s=0), hook(webhook_server, group_wait_s=0),
         hook(webhook_server2, "critical-only", group_wait_s=0)],
        [{"receivers": ["mail"], "sources": ["a"]},
         {"receivers": ["hook"], "rules": ["ree-*"], "sources": ["b"]},
         {"receivers": ["critical-only"], "min_severity": "critical"}],
    )  # fmt: skip
    async with running(config, clock, session) as s:
        a, b = await s.poll("a"), await s.poll("b")
        assert [x.receivers for x in a.alerts] == [("mail",)]
        assert [x.receivers for x in b.alerts] == [("hook",)]
        await s.deliver()
        [msg] = await messages(sink, 1)
        assert STORIES[0][1] in msg["Subject"]
        [(_, body)] = webhook_server.received
        assert valid(json.loads(body))["alert"]["item"]["title"] == STORIES[1][1]
        assert webhook_server2.received == []


# ------------------------------------------------------------------ grouping


async def test_alerts_within_group_wait_go_out_as_one_notification(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    webhook_server2: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink, port = smtp_server
    monkeypatch.setenv("WATCHER_TEST_SLACK_URL", webhook_server2.url)
    config = make_config(
        store_url,
        {"a": feed_server.url("/a.rss")},
        [mail(port), hook(webhook_server),  # group_wait_s: the default, 30 s
         {"type": "slack", "id": "slack", "url_env": "WATCHER_TEST_SLACK_URL"}],
        [{"receivers": ["mail", "hook", "slack"]}],
    )  # fmt: skip
    assert config.receivers[0].group_wait_s == 30
    async with running(config, clock, session) as s:
        t0 = clock()
        for i in range(3):  # three alerts, 10 s apart
            feed(feed_server, "/a.rss", *STORIES[: i + 1])
            outcome = await s.poll("a")
            assert (len(outcome.alerts), outcome.deliveries, outcome.staged) == (1, 0, 3)
            clock.advance(10)
        clock.now = t0 + timedelta(seconds=29)
        await s.deliver()
        assert (
            sink.messages == [] and webhook_server.received == [] and webhook_server2.received == []
        )
        assert await s.grouper.next_due() == t0 + timedelta(seconds=30)

        webhook_server.responses = [(500, {})]  # the group's first attempt fails
        clock.now = t0 + timedelta(seconds=30)
        await s.deliver()
        [msg] = await messages(sink, 1)
        assert msg["Subject"] == f"[HIGH] 3 alerts: {STORIES[0][1]} and 2 more"
        assert msg["X-Watcher-Kind"] == "group"
        assert all(title in text_of(msg) for _, title, _ in STORIES[:3])
        [(_, slack_body)] = webhook_server2.received
        slack = json.loads(slack_body)
        assert slack["text"] == "watcher alerts: 3 alerts"
        assert sum(1 for b in slack["blocks"] if b["type"] == "section") == 3

        clock.advance(config.outbox.backoff_base_s)  # the retry: the same group, the same key
        await s.deliver()
        (h1, first), (h2, second) = webhook_server.received
        assert first == second and h1["webhook-id"] == h2["webhook-id"]
        group = valid(json.loads(second))
        assert group["type"] == "alert_group" and group["id"] == h2["webhook-id"]
        assert [a["item"]["title"] for a in group["alerts"]] == [t for _, t, _ in STORIES[:3]]

        # A fourth alert after the window: a notification of its own, a plain alert.
        feed(feed_server, "/a.rss", *STORIES[:4])
        fourth = (await s.poll("a")).alerts[0]
        clock.advance(config.receivers[0].group_wait_s - 1)
        await s.deliver()
        assert len(webhook_server.received) == 2
        clock.advance(1)
        await s.deliver()
        _, last = webhook_server.received[-1]
        single = valid(json.loads(last))
        assert single["type"] == "alert" and single["id"] == f"wd_{fourth.alert_id}_hook"
        second_msg = (await messages(sink, 2))[1]
        assert second_msg["Subject"] == f"[HIGH] Rare-earth export curb: {STORIES[3][1]}"
        assert second_msg["Message-ID"] == f"<wd_{fourth.alert_id}_mail@watcher.invalid>"
        assert len(sink.messages) == 2 and len(webhook_server2.received) == 2
        states = {d.delivery.state for d in await s.store.list_deliveries()}
        assert states == {DeliveryState.SENT}


async def test_replicas_seal_a_group_once(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    feed(feed_server, "/a.rss", *STORIES[:3])
    config = make_config(
        store_url,
        {"a": feed_server.url("/a.rss")},
        [hook(webhook_server)],
        [{"receivers": ["hook"]}],
    )
    s = await start(config, clock, session)
    other = Grouper(store=s.store, dispatcher=Dispatcher(receiver_policies(config)), clock=clock)
    try:
        await s.poll("a")
        clock.advance(30)
        sealed = await asyncio.gather(s.grouper.flush(), other.flush(), s.grouper.flush())
        assert sum(sealed) == 1
        await s.worker.drain()
        [(_, body)] = webhook_server.received
        assert len(json.loads(body)["alerts"]) == 3
    finally:
        await s.store.close()


# ------------------------------------------------------------------ throttle


async def test_throttle_folds_alerts_into_the_next_notification_allowed(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, port = smtp_server
    config = make_config(
        store_url,
        {"a": feed_server.url("/a.rss")},
        [mail(port, group_wait_s=0, max_per_hour=2),
         hook(webhook_server, group_wait_s=0, max_per_hour=2)],
        [{"receivers": ["mail", "hook"]}],
    )  # fmt: skip
    s = await start(config, clock, session)
    t0 = clock()

    async def arrive(n: int, at_s: float) -> None:
        clock.now = t0 + timedelta(seconds=at_s)
        feed(feed_server, "/a.rss", *STORIES[:n])
        assert len((await s.poll("a")).alerts) == 1
        await s.deliver()

    try:
        await arrive(1, 0)
        await arrive(2, 60)
        assert len(webhook_server.received) == 2  # the cap: 2 an hour
        await arrive(3, 600)
        await arrive(4, 1200)
        assert len(webhook_server.received) == 2  # not sent, not dropped: waiting
        assert await s.grouper.next_due() == t0 + timedelta(hours=1)
        clock.now = t0 + timedelta(seconds=3599)
        await s.deliver()
        assert len(webhook_server.received) == 2
        clock.now = t0 + timedelta(hours=1)  # the first notification leaves the window
        await s.deliver()
        assert len(webhook_server.received) == 3
        folded = valid(json.loads(webhook_server.received[2][1]))
        assert folded["type"] == "alert_group"
        assert [a["item"]["title"] for a in folded["alerts"]] == [STORIES[2][1], STORIES[3][1]]
        msgs = await messages(sink, 3)
        assert msgs[2]["Subject"] == f"[HIGH] 2 alerts: {STORIES[2][1]} and 1 more"

        # A sliding window: the next slot opens when the second notification (t0+60) leaves it.
        await arrive(5, 3610)
        assert len(webhook_server.received) == 3
        assert await s.grouper.next_due() == t0 + timedelta(seconds=3660)
        clock.now = t0 + timedelta(seconds=3660)
        await s.deliver()
        assert len(webhook_server.received) == 4
        assert valid(json.loads(webhook_server.received[3][1]))["type"] == "alert"
    finally:
        await s.store.close()


# ------------------------------------------------------------------ digests


def digest_config(
    store_url: str, feed_url: str, port: int, server: WebhookServer, **sub: Any
) -> Config:
    return make_config(
        store_url,
        {"a": feed_url},
        [mail(port, group_wait_s=0), hook(server, group_wait_s=0)],
        [{"id": "daily", "receivers": ["mail", "hook"], "mode": "digest",
          "schedule": "0 8 * * *", "timezone": "Europe/Paris", **sub}],
    )  # fmt: skip


async def test_digest_fires_at_0800_paris_lists_the_period_and_survives_a_restart(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, port = smtp_server
    config = digest_config(store_url, feed_server.url("/a.rss"), port, webhook_server)
    s = await start(config, clock, session)  # 2026-02-05 12:00 UTC, a Thursday
    assert await s.digester.fire_due() == []  # first sight: the first period starts now
    period_start = clock()
    feed(feed_server, "/a.rss", *STORIES[:2])
    outcome = await s.poll("a")
    assert (len(outcome.alerts), outcome.deliveries, outcome.staged) == (2, 0, 4)
    await s.deliver()
    assert sink.messages == [] and webhook_server.received == []  # stored, waiting

    # 08:00 in Paris is 07:00 UTC in February.
    clock.now = datetime(2026, 2, 6, 6, 59, 59, tzinfo=UTC)
    await s.deliver()
    assert webhook_server.received == []
    clock.now = datetime(2026, 2, 6, 7, 0, tzinfo=UTC)
    [run] = await s.digester.fire_due()
    assert (run.period_start, run.period_end) == (period_start, clock())
    assert run.receivers == ("hook", "mail")
    # An alert after the fire time waits for the next digest.
    clock.advance(1)
    feed(feed_server, "/a.rss", *STORIES[:3])
    assert len((await s.poll("a")).alerts) == 1
    await s.store.close()  # a crash: the digests are sealed, not sent

    async with running(config, clock, session) as s:  # the restart
        assert await s.digester.fire_due() == []  # sealed once: not again
        await s.deliver()
        await s.deliver()
        [msg] = await messages(sink, 1)
        assert msg["Message-ID"] == "<wdg_daily_mail_20260206T070000Z@watcher.invalid>"
        assert msg["Subject"] == (
            "[watcher] Digest: 2 alerts, 5 Feb 2026 13:00 – 6 Feb 2026 08:00 (Europe/Paris)"
        )
        body = text_of(msg)
        assert STORIES[0][1] in body and STORIES[1][1] in body and STORIES[2][1] not in body
        [(headers, raw)] = webhook_server.received
        digest = valid(json.loads(raw))
        assert digest["type"] == "digest" and headers["webhook-id"] == digest["id"]
        assert digest["id"] == "wdg_daily_hook_20260206T070000Z"
        assert digest["digest"] == {
            "subscription": "daily",
            "period_start": "2026-02-05T12:00:00+00:00",
            "period_end": "2026-02-06T07:00:00+00:00",
            "timezone": "Europe/Paris",
        }
        assert [a["item"]["title"] for a in digest["alerts"]] == [STORIES[0][1], STORIES[1][1]]

        # The next day lists only the third story.
        clock.now = datetime(2026, 2, 7, 7, 0, tzinfo=UTC)
        await s.deliver()
        assert len(webhook_server.received) == 2
        nxt = json.loads(webhook_server.received[1][1])
        assert [a["item"]["title"] for a in nxt["alerts"]] == [STORIES[2][1]]
        assert nxt["digest"]["period_start"] == "2026-02-06T07:00:00+00:00"
        # A day with no alerts sends nothing.
        clock.now = datetime(2026, 2, 8, 7, 0, tzinfo=UTC)
        await s.deliver()
        assert len(webhook_server.received) == 2 and len(await messages(sink, 2)) == 2


async def test_a_digest_missed_while_down_is_sent_once_when_back(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, port = smtp_server
    config = digest_config(store_url, feed_server.url("/a.rss"), port, webhook_server)
    s = await start(config, clock, session)
    await s.digester.fire_due()
    feed(feed_server, "/a.rss", STORIES[0])
    await s.poll("a")
    await s.store.close()  # down from Thursday 12:00 to Saturday 09:30 UTC
    clock.now = datetime(2026, 2, 7, 9, 30, tzinfo=UTC)
    async with running(config, clock, session) as s:
        replica = Digester(store=s.store, subscriptions=config.subscriptions, clock=clock)
        runs = await asyncio.gather(s.digester.fire_due(), replica.fire_due())
        [run] = [r for rs in runs for r in rs]  # two replicas catching up: one digest
        assert run.period_end == datetime(2026, 2, 7, 7, 0, tzinfo=UTC)  # the latest missed
        await s.deliver()
        await s.deliver()
        [(_, raw)] = webhook_server.received
        assert json.loads(raw)["id"] == "wdg_daily_hook_20260207T070000Z"
        assert len(await messages(sink, 1)) == 1


async def test_alerts_waiting_for_a_removed_digest_are_sent_not_kept(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A digest subscription taken out of the config leaves no alert behind, none twice."""
    feed(feed_server, "/a.rss", STORIES[0])
    feed(feed_server, "/b.rss", STORIES[1])
    feeds = {"a": feed_server.url("/a.rss"), "b": feed_server.url("/b.rss")}
    immediate_b = {"receivers": ["hook"], "sources": ["b"]}
    daily = {"id": "daily", "receivers": ["hook"], "mode": "digest", "schedule": "0 8 * * *"}
    receivers = [hook(webhook_server, group_wait_s=0)]
    async with running(
        make_config(store_url, feeds, receivers, [daily, immediate_b]), clock, session
    ) as s:
        await s.digester.fire_due()
        await s.poll("a")  # story 0: for the digest only
        await s.poll("b")  # story 1: for the digest, and sent at once
        await s.deliver()
        [(_, first)] = webhook_server.received
        assert json.loads(first)["alert"]["item"]["title"] == STORIES[1][1]

    # The restart, with the digest removed.
    clock.advance(3600)
    async with running(
        make_config(store_url, feeds, receivers, [immediate_b]), clock, session
    ) as s:
        assert await s.digester.adopt_orphans() == 1
        assert "digest subscription 'daily' is no longer configured" in caplog.text
        assert (
            "1 waiting alert notice(s) are sent to their receivers now instead (1 already sent)"
            in caplog.text
        )
        await s.deliver()
        assert len(webhook_server.received) == 2
        sent = json.loads(webhook_server.received[1][1])
        assert sent["type"] == "alert" and sent["alert"]["item"]["title"] == STORIES[0][1]
        assert await s.digester.adopt_orphans() == 0  # nothing left waiting
        await s.deliver()
        assert len(webhook_server.received) == 2


async def test_metrics_show_waiting_notices_and_throttled_receivers(
    tmp_path: Any, feed_server: FeedServer, webhook_server: WebhookServer
) -> None:
    from watcher.service import PIPELINE, create_app

    feed(feed_server, "/a.rss", *STORIES[:3])
    config = service_config(
        tmp_path, feed_server.url("/a.rss"), webhook_server, 3600, group_wait_s=0, max_per_hour=1
    )
    app = create_app(config, matcher())
    async with serving(app) as port:
        await first_webhook(webhook_server)  # the first poll: 3 alerts in 1, the cap reached
        assert len(json.loads(webhook_server.received[0][1])["alerts"]) == 3
        feed(feed_server, "/a.rss", *STORIES[:5])
        assert len((await app[PIPELINE].poll(config.sources[0])).alerts) == 2  # they wait
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
        lines = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines()
                 if line and not line.startswith("#")}  # fmt: skip
        assert float(lines['watcher_notices_waiting{receiver="hook",stream="immediate"}']) == 2
        assert float(lines['watcher_notices_waiting{receiver="hook",stream="daily"}']) == 5
        age = float(lines['watcher_notices_oldest_age_seconds{receiver="hook",stream="daily"}'])
        assert 0 <= age < 60
        assert float(lines['watcher_receiver_throttled{receiver="hook"}']) == 1


async def test_digest_schedule_follows_the_time_zone_and_the_scheduler_job(
    tmp_path: Any, clock: FakeClock, webhook_server: WebhookServer
) -> None:
    config = digest_config(
        f"sqlite+aiosqlite:///{tmp_path}/w.db", "http://127.0.0.1/a", 25, webhook_server
    )
    store = Store(config.store.url, clock=clock)
    digester = Digester(store=store, subscriptions=config.subscriptions, clock=clock)
    winter = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
    assert digester.next_fire_at("daily", winter) == datetime(2026, 2, 6, 7, 0, tzinfo=UTC)
    # Summer time starts on 29 March 2026: 08:00 in Paris is then 06:00 UTC.
    spring = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    assert digester.next_fire_at("daily", spring) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule_digests(scheduler, digester)
    job = scheduler.get_job("digest:daily")
    assert job is not None and job.coalesce and job.max_instances == 1
    nxt = job.trigger.get_next_fire_time(None, winter)
    assert nxt == datetime(2026, 2, 6, 7, 0, tzinfo=UTC)
    assert scheduler.get_job("digest-catch-up") is not None


# ------------------------------------------------------------------ updates


async def test_update_notifications_only_for_subscriptions_that_ask(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    webhook_server2: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, port = smtp_server
    feed(feed_server, "/wire.rss", CURB)
    feed(feed_server, "/blog.rss", ("copy-1", CURB[1], CURB[2]))
    config = make_config(
        store_url,
        {"wire": feed_server.url("/wire.rss"), "blog": feed_server.url("/blog.rss")},
        [hook(webhook_server, "quiet", group_wait_s=0),
         hook(webhook_server2, "loud", group_wait_s=0), mail(port, group_wait_s=0)],
        [{"receivers": ["quiet"]}, {"receivers": ["loud", "mail"], "notify_updates": True}],
    )  # fmt: skip
    async with running(config, clock, session) as s:
        [raised] = (await s.poll("wire")).alerts
        await s.deliver()
        assert len(webhook_server.received) == len(webhook_server2.received) == 1
        [original] = await messages(sink, 1)

        clock.advance(600)
        grown = await s.poll("blog")  # a copy: the story now has two sources
        assert grown.alerts == [] and grown.alerts_updated == [raised.alert_id]
        assert grown.staged == 2  # loud and mail asked for updates; quiet did not
        [alert] = await s.store.list_alerts()
        assert (alert.source_count, alert.updated_at) == (2, clock())
        await s.deliver()
        assert len(webhook_server.received) == 1  # quiet: the row changed, nothing was sent
        first, update = (valid(json.loads(b)) for _, b in webhook_server2.received)
        assert "update" not in first["alert"]
        assert update["type"] == "alert" and update["alert"]["update"] is True
        assert update["alert"]["in_reply_to"] == first["id"] != update["id"]
        assert update["alert"]["sources"] == ["wire", "blog"]
        _, reply = await messages(sink, 2)
        assert reply["Subject"] == f"Re: {original['Subject']}"
        assert reply["In-Reply-To"] == original["Message-ID"]
        assert original["Message-ID"] in reply["References"]
        assert original["References"] in reply["References"]  # the story's thread
        assert "Update: now reported by 2 sources." in text_of(reply)

        # Another copy from a source already counted: no update.
        feed(feed_server, "/blog.rss", ("copy-1", CURB[1], CURB[2]), ("copy-2", CURB[1], CURB[2]))
        again = await s.poll("blog")
        assert (again.alerts_updated, again.staged) == ([], 0)


async def test_an_alert_not_yet_sent_needs_no_update(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    feed(feed_server, "/wire.rss", CURB)
    feed(feed_server, "/blog.rss", ("copy-1", CURB[1], CURB[2]))
    config = make_config(
        store_url,
        {"wire": feed_server.url("/wire.rss"), "blog": feed_server.url("/blog.rss")},
        [hook(webhook_server)],  # grouped: the alert waits 30 s
        [{"receivers": ["hook"], "notify_updates": True}],
    )
    async with running(config, clock, session) as s:
        await s.poll("wire")
        grown = await s.poll("blog")
        assert len(grown.alerts_updated) == 1 and grown.staged == 0
        clock.advance(30)
        await s.deliver()
        [(_, body)] = webhook_server.received
        alert = valid(json.loads(body))["alert"]
        assert alert["sources"] == ["wire", "blog"] and "update" not in alert


# ------------------------------------------------------------------ silences


async def test_silences_still_suppress_groups_digests_and_updates(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    webhook_server2: WebhookServer,
) -> None:
    feed(feed_server, "/wire.rss", CURB)
    feed(feed_server, "/blog.rss", ("copy-1", CURB[1], CURB[2]))
    config = make_config(
        store_url,
        {"wire": feed_server.url("/wire.rss"), "blog": feed_server.url("/blog.rss")},
        [hook(webhook_server, group_wait_s=0), hook(webhook_server2, "digest-hook")],
        [{"receivers": ["hook"], "notify_updates": True},
         {"id": "daily", "receivers": ["digest-hook"], "mode": "digest",
          "schedule": "0 8 * * *", "timezone": "Europe/Paris"}],
    )  # fmt: skip
    async with running(config, clock, session) as s:
        await s.deliver()
        async with s.store.engine.begin() as conn:
            await add_silence(conn, rule="ree-*", until=clock() + timedelta(days=3),
                              comment="summit week", now=clock())  # fmt: skip
        wire = await s.poll("wire")
        assert (len(wire.alerts), wire.deliveries, wire.staged) == (1, 0, 0)
        blog = await s.poll("blog")
        assert len(blog.alerts_updated) == 1 and blog.staged == 0
        clock.now = datetime(2026, 2, 6, 7, 0, tzinfo=UTC)
        await s.deliver()
        assert webhook_server.received == [] and webhook_server2.received == []
        assert len(await s.store.list_alerts()) == 1  # stored, not sent


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("sub", "problem"),
    [
        ({"mode": "digest", "id": "d"}, "a digest needs a schedule"),
        ({"mode": "digest", "schedule": "0 8 * * *"}, "a digest needs an id"),
        ({"mode": "digest", "id": "d", "schedule": "0 25 * * *"}, "subscriptions[0].schedule"),
        ({"mode": "digest", "id": "d", "schedule": "0 8 * *"}, "not a crontab line"),
        ({"timezone": "Europe/Atlantis"}, "subscriptions[0].timezone: unknown time zone"),
        ({"schedule": "0 8 * * *"}, 'schedule is only used with mode = "digest"'),
        ({"mode": "weekly"}, "subscriptions[0].mode"),
    ],
)
def test_bad_subscription_settings_are_config_errors(
    tmp_path: Any, sub: dict[str, Any], problem: str
) -> None:
    lines = ['[[receivers]]\ntype = "webhook"\nid = "h"\nurl = "http://127.0.0.1/h"\n',
             '[[subscriptions]]\nreceivers = ["h"]']  # fmt: skip
    lines += [f"{k} = {json.dumps(v)}" for k, v in sub.items()]
    path = tmp_path / "c.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert problem in str(err.value)


def test_group_wait_and_max_per_hour_are_checked(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[receivers]]\ntype = "webhook"\nid = "h"\nurl = "http://127.0.0.1/h"\n'
        "group_wait_s = -1\nmax_per_hour = 0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "receivers[0].group_wait_s" in str(err.value)
    assert "receivers[0].max_per_hour" in str(err.value)


def test_duplicate_subscription_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate subscription id 'd'"):
        Config.model_validate(
            {
                "receivers": [{"type": "webhook", "id": "h", "url": "http://127.0.0.1/h"}],
                "subscriptions": [{"id": "d", "receivers": ["h"]}] * 2,
            }
        )


# ------------------------------------------------------------------ the service


async def test_the_service_runs_the_grouper_and_schedules_digests(
    tmp_path: Any, feed_server: FeedServer, webhook_server: WebhookServer
) -> None:
    """`watcher run` wiring, on the real clock: a short group_wait, then one notification."""
    from watcher.service import SCHEDULER, WORKER, create_app

    feed(feed_server, "/a.rss", *STORIES[:2])
    config = service_config(
        tmp_path, feed_server.url("/a.rss"), webhook_server, 10, group_wait_s=0.3
    )
    app = create_app(config, matcher())
    async with serving(app):
        await first_webhook(webhook_server)
        [(_, body)] = webhook_server.received
        assert [a["item"]["title"] for a in json.loads(body)["alerts"]] == [
            STORIES[0][1],
            STORIES[1][1],
        ]
        job = app[SCHEDULER].get_job("digest:daily")
        assert job is not None and str(job.trigger.timezone) == "Europe/Paris"
        assert app[WORKER].updates is False  # no subscription asks for update notifications
