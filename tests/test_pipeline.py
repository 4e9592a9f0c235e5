"""Feeds in, alerts out: real feed server, real SMTP server, real webhook receiver, real stores."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FakeClock
from tests.feeds import CURB, NOISE, rss
from tests.pipelines import loopback_pipeline
from tests.servers import FeedServer, Route, WebhookServer
from watcher.config import Config
from watcher.demo import SmtpSink, free_port
from watcher.errors import FetchReason
from watcher.metrics import Metrics
from watcher.notify import build_notifiers
from watcher.outbox import OutboxWorker
from watcher.parse import parse_document
from watcher.pipeline import Pipeline, build_pipeline
from watcher.rules import Matcher, load_rules
from watcher.store import Store

RULES = Path(__file__).parent / "testdata" / "rules" / "ree.yaml"


def matcher() -> Matcher:
    rules, errors = load_rules([RULES])
    assert errors == []
    return Matcher(rules)


def make_config(store_url: str, sources: dict[str, str], smtp_port: int, hook_url: str) -> Config:
    return Config.model_validate(
        {
            "store": {"url": store_url},
            "polling": {"timeout_s": 0.5, "allow_networks": ["127.0.0.0/8"]},
            "outbox": {"backoff_base_s": 10, "max_attempts": 5},
            "sources": [{"id": k, "url": v, "tags": ["test"]} for k, v in sources.items()],
            "receivers": [
                {"type": "email", "id": "mail", "host": "127.0.0.1", "port": smtp_port,
                 "to": ["analyst@example.org"], "from": "watcher@example.org", "timeout_s": 2,
                 "group_wait_s": 0},
                {"type": "webhook", "id": "hook", "url": hook_url, "group_wait_s": 0},
            ],
            "subscriptions": [{"receivers": ["mail", "hook"]}],
        }
    )  # fmt: skip


@dataclass
class Harness:
    config: Config
    store: Store
    pipeline: Pipeline
    worker: OutboxWorker


async def harness(config: Config, clock: FakeClock, session: aiohttp.ClientSession) -> Harness:
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
    return Harness(config, store, pipeline, worker)


async def test_feed_to_email_and_webhook(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, smtp_port = smtp_server
    feed_server.routes["/cn.rss"] = Route(body=rss(CURB, NOISE))
    config = make_config(
        store_url, {"cn": feed_server.url("/cn.rss")}, smtp_port, webhook_server.url
    )
    h = await harness(config, clock, session)
    try:
        outcome = await h.pipeline.poll(config.sources[0])
        assert (outcome.outcome, outcome.new_items, outcome.deliveries) == ("new", 2, 2)
        [alert] = outcome.alerts
        assert alert.hit.rule_id == "ree-export-curb" and alert.receivers == ("hook", "mail")

        await h.worker.drain()
        sink_messages = await wait_for_messages(sink, 1)
        msg = sink_messages[0]
        assert msg["Subject"] == (
            "[HIGH] Rare-earth export curb: China tightens export controls on rare earth magnets"
        )
        assert msg["To"] == "analyst@example.org"
        assert msg["Message-ID"].startswith("<wd_")
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert text is not None and html is not None
        assert "https://example.org/news/curb-1" in text.get_content()
        assert "Beijing will require an export licence" in text.get_content()
        assert 'href="https://example.org/news/curb-1"' in html.get_content()

        [(headers, body)] = webhook_server.received
        payload = json.loads(body)
        assert payload["version"] == "1"
        assert payload["alert"]["rule"]["id"] == "ree-export-curb"
        assert payload["alert"]["event_type"] == "export_restriction"
        assert payload["alert"]["item"]["url"] == "https://example.org/news/curb-1"
        assert payload["alert"]["item"]["source"] == "cn"
        assert headers["webhook-id"] == payload["id"]
        assert "webhook-signature" not in headers  # no secret configured

        # The second poll is conditional and processes nothing.
        again = await h.pipeline.poll(config.sources[0])
        assert again.outcome == "unchanged"
        first_req, second_req = feed_server.requests_to("/cn.rss")
        assert "If-None-Match" not in first_req
        etag = '"' + hashlib.sha256(rss(CURB, NOISE)).hexdigest()[:16] + '"'
        assert second_req["If-None-Match"] == etag
        await h.worker.drain()
        assert len(webhook_server.received) == 1
    finally:
        await h.store.close()


async def wait_for_messages(sink: SmtpSink, n: int) -> list[EmailMessage]:
    # aiosmtpd hands messages over on its own thread, right after replying 250.
    import asyncio

    for _ in range(100):
        if len(sink.messages) >= n:
            break
        await asyncio.sleep(0.01)
    return sink.messages


async def test_restart_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    sink, smtp_port = smtp_server
    store_url = f"sqlite+aiosqlite:///{tmp_path}/w.db"
    feed_server.routes["/a.rss"] = Route(body=rss(CURB), etag=False)
    second = ("curb-2", "Rare earth export licence rules widened", "New quotas on rare earths.")
    config = make_config(store_url, {"a": feed_server.url("/a.rss")}, smtp_port, webhook_server.url)

    # Run 1: the first alert is delivered; a second item is alerted but not yet delivered.
    h = await harness(config, clock, session)
    await h.pipeline.poll(config.sources[0])
    await h.worker.drain()
    assert len(await wait_for_messages(sink, 1)) == 1 and len(webhook_server.received) == 1
    feed_server.routes["/a.rss"] = Route(body=rss(CURB, second), etag=False)
    outcome = await h.pipeline.poll(config.sources[0])
    assert outcome.new_items == 1 and len(outcome.alerts) == 1
    await h.store.close()  # "crash" before the worker ran: two deliveries are pending

    # Run 2, over the same file: nothing is re-alerted, the pending rows go out once.
    h = await harness(config, clock, session)
    try:
        outcome = await h.pipeline.poll(config.sources[0])
        assert outcome.outcome == "unchanged"  # byte-identical body: not even parsed
        feed_server.routes["/a.rss"] = Route(body=rss(second, CURB), etag=False)  # reordered
        outcome = await h.pipeline.poll(config.sources[0])
        assert (outcome.new_items, outcome.alerts) == (0, [])
        await h.worker.drain()
        await h.worker.drain()
        messages = await wait_for_messages(sink, 2)
        assert [m["Subject"].split(": ", 1)[1] for m in messages] == [
            CURB[1],
            second[1],
        ]
        assert len(webhook_server.received) == 2
        ids = [json.loads(b)["id"] for _, b in webhook_server.received]
        assert len(set(ids)) == 2
    finally:
        await h.store.close()


async def test_smtp_down_then_up_delivers_once(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
) -> None:
    from aiosmtpd.controller import Controller

    smtp_port = free_port()  # nothing listens here yet
    feed_server.routes["/a.rss"] = Route(body=rss(CURB))
    config = make_config(store_url, {"a": feed_server.url("/a.rss")}, smtp_port, webhook_server.url)
    h = await harness(config, clock, session)
    try:
        await h.pipeline.poll(config.sources[0])
        await h.worker.drain()
        [pending] = [d for d in await h.store.list_deliveries() if d.delivery.receiver == "mail"]
        assert pending.delivery.state == "pending"
        assert f"SMTP server 127.0.0.1:{smtp_port}" in pending.delivery.last_error
        assert len(webhook_server.received) == 1  # the other receiver was not held up

        sink = SmtpSink()
        controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
        controller.start()
        try:
            await h.worker.drain()
            assert sink.messages == []  # not due yet: backoff
            clock.advance(config.outbox.backoff_max_s)
            await h.worker.drain()
            clock.advance(config.outbox.backoff_max_s)
            await h.worker.drain()
            assert len(await wait_for_messages(sink, 1)) == 1
        finally:
            controller.stop()
        assert len(webhook_server.received) == 1
    finally:
        await h.store.close()


async def test_failing_sources_are_recorded_and_others_still_alert(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    _, smtp_port = smtp_server
    feed_server.routes["/500"] = Route(status=500)
    feed_server.routes["/slow"] = Route(body=rss(CURB), delay_s=3)
    feed_server.routes["/html"] = Route(
        body=b"<html><body>Maintenance</body></html>", content_type="text/html"
    )
    feed_server.routes["/good"] = Route(body=rss(CURB))
    sources = {name: feed_server.url(f"/{name}") for name in ("500", "slow", "html", "good")}
    config = make_config(store_url, sources, smtp_port, webhook_server.url)
    h = await harness(config, clock, session)
    try:
        outcomes = {s.id: await h.pipeline.poll(s) for s in config.sources}
        assert outcomes["good"].outcome == "new" and len(outcomes["good"].alerts) == 1
        states = {s.id: s for s in await h.store.list_sources()}
        assert states["500"].last_error_reason == FetchReason.HTTP_STATUS
        assert "HTTP 500" in (states["500"].last_error or "")
        assert states["slow"].last_error_reason == FetchReason.TIMEOUT
        assert states["html"].last_error_reason == "not_a_feed"
        assert "an HTML page" in (states["html"].last_error or "")
        assert states["good"].error_count == 0 and states["good"].last_success_at is not None
        # consecutive errors back off exponentially
        assert outcomes["500"].next_poll_in_s == 2 * config.sources[0].interval_s
        again = await h.pipeline.poll(config.sources[0])
        assert again.error_count == 2 and again.next_poll_in_s == 4 * config.sources[0].interval_s
    finally:
        await h.store.close()


async def test_deliveries_carry_the_storys_sources_and_facets(
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[SmtpSink, int],
) -> None:
    _, smtp_port = smtp_server
    feed_server.routes["/wire.rss"] = Route(body=rss(CURB))
    feed_server.routes["/blog.rss"] = Route(body=rss(("copy-1", CURB[1], CURB[2])))
    config = make_config(
        store_url,
        {"wire": feed_server.url("/wire.rss"), "blog": feed_server.url("/blog.rss")},
        smtp_port,
        webhook_server.url,
    )
    h = await harness(config, clock, session)
    try:
        first = await h.pipeline.poll(config.sources[0])
        second = await h.pipeline.poll(config.sources[1])
        assert len(first.alerts) == 1 and second.alerts == []  # one story, one alert
        await h.worker.drain()
        [(_, body)] = webhook_server.received
        alert = json.loads(body)["alert"]
        assert alert["sources"] == ["wire", "blog"]  # also reported by the blog
        assert alert["facets"] == {
            "countries": ["CN"],
            "minerals": ["rare earths", "rare-earth magnets"],
        }
    finally:
        await h.store.close()


# The first and last instants a datetime holds, as a feed may give them
_FIRST = datetime(1, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_DATED = (("first", "Gallium output falls", _FIRST), ("last", "Lithium prices rise", _LAST))


def _w3c(d: datetime) -> str:
    return f"{d.year:04d}-{d:%m-%dT%H:%M:%S}Z"  # %Y gives "1" for year 1


def _ends_of_time(kind: str) -> bytes:
    """A feed of the two _DATED items, in RSS, Atom or JSON Feed."""
    if kind == "json":
        items = [{"id": i, "title": t, "date_published": _w3c(d)} for i, t, d in _DATED]
        feed = {"version": "https://jsonfeed.org/version/1.1", "title": "t", "items": items}
        return json.dumps(feed).encode()
    if kind == "atom":
        head, tail = '<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>', "</feed>"
        entry = "<entry><id>urn:{}</id><title>{}</title><updated>{}</updated></entry>"
        dates = [_w3c(d) for _, _, d in _DATED]
    else:
        head = '<rss version="2.0"><channel><title>t</title><link>https://example.org/</link>'
        tail, entry = (
            "</channel></rss>",
            "<item><guid>{}</guid><title>{}</title><pubDate>{}</pubDate></item>",
        )
        dates = [f"{d:%a, %d %b} {d.year:04d} {d:%H:%M:%S} GMT" for _, _, d in _DATED]
    body = "".join(entry.format(i, t, d) for (i, t, _), d in zip(_DATED, dates, strict=True))
    return (head + body + tail).encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (_ends_of_time("rss"), "application/rss+xml"),
        (_ends_of_time("atom"), "application/atom+xml"),
        (_ends_of_time("json"), "application/feed+json"),
    ],
)
async def test_feed_items_dated_in_year_1_or_9999_are_stored(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    body: bytes,
    content_type: str,
) -> None:
    """The feed parsers keep such dates (as feedparser reads them); the story store
    must take them without failing the poll."""
    parsed = parse_document(body, source_id="f", content_type=content_type)
    assert [i.published for i in parsed.items] == [_FIRST, _LAST]  # the dates reach the store
    feed_server.routes["/f"] = Route(body=body, content_type=content_type)
    config, pipeline = await loopback_pipeline(
        store, session, clock, [{"id": "f", "url": feed_server.url("/f")}]
    )
    outcome = await pipeline.poll(config.sources[0])
    assert outcome.error is None and outcome.new_items == 2
