"""Source health notices: broken or quiet sources, once, and a recovery notice."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import FakeClock
from tests.feeds import CURB, NOISE, rss
from tests.servers import FeedServer, Route, WebhookServer
from watcher.config import Config
from watcher.demo import SmtpSink
from watcher.health import HealthMonitor
from watcher.metrics import Metrics
from watcher.pipeline import Pipeline, build_pipeline
from watcher.rules import Matcher
from watcher.store import Store


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
    assert "http_status: source 'bis': http_status: HTTP 500" in bodies[0]["detail"]


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
