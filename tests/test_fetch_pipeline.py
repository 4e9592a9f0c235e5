"""The fetch stage through the real pipeline, a real store and the service's poll job:
what a hostile or odd source leaves in the logs and on the source's row."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.conftest import FakeClock
from tests.pipelines import loopback_pipeline
from tests.servers import FeedServer, RawServer, Route, raw_response
from watcher.errors import FetchReason
from watcher.pipeline import Pipeline
from watcher.service import Poller
from watcher.store import Store

FEED = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
    b"<item><title>one</title><link>http://example.org/1</link></item></channel></rss>"
)
SECRETS = ("Hunter2Pass", "TOPSECRET123")


@dataclass
class Service:
    store: Store
    pipeline: Pipeline
    poller: Poller


MakeService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def make_service(store: Store, clock: FakeClock) -> AsyncIterator[MakeService]:
    """Builds the service's poll job for some sources, on a real store and session."""
    async with aiohttp.ClientSession() as session:

        async def make(sources: dict[str, str], **settings: Any) -> Service:
            config, pipeline = await loopback_pipeline(
                store, session, clock, [{"id": k, "url": v} for k, v in sources.items()],
                **settings,
            )  # fmt: skip
            poller = Poller(pipeline=pipeline, config=config, clock=clock)
            return Service(store, pipeline, poller)

        yield make


async def test_a_malformed_answer_leaks_no_url_secret(
    make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp quotes the request URL in its error; the token must not reach the error,
    the log or the store (and from there /healthz and health notices)."""
    async with RawServer(lambda _: b"HTTP/1.1 abc OK\r\n\r\n") as raw:
        url = raw.url("/feed?token=TOPSECRET123").replace("//", "//alice:Hunter2Pass@", 1)
        service = await make_service({"private": url})
        with caplog.at_level(logging.INFO):
            await service.poller.poll("private")
    state = await service.store.source_state("private")
    assert state is not None and state.last_error_reason == FetchReason.PROTOCOL.value
    assert state.last_error and "token=…" in state.last_error
    logged = caplog.text
    assert "protocol" in logged
    for secret in SECRETS:
        assert secret not in state.last_error
        assert secret not in logged


async def test_a_move_is_logged_without_the_url_secret(
    make_service: MakeService, feed_server: FeedServer, caplog: pytest.LogCaptureFixture
) -> None:
    feed_server.routes["/old"] = Route(status=301, headers={"Location": "/new?token=TOPSECRET123"})
    feed_server.routes["/new"] = Route(body=FEED)
    url = feed_server.url("/old").replace("//", "//alice:Hunter2Pass@", 1)
    service = await make_service({"moved": url})
    with caplog.at_level(logging.INFO):
        await service.poller.poll("moved")
    state = await service.store.source_state("moved")
    assert state is not None and state.moved_url is not None  # kept whole: it is polled
    assert "moved permanently to http://127.0.0.1:" in caplog.text
    assert "/new?token=…" in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text


async def test_a_redirect_to_a_bad_url_is_reported_without_its_secrets(
    make_service: MakeService, feed_server: FeedServer, caplog: pytest.LogCaptureFixture
) -> None:
    where = "ftp://alice:Hunter2Pass@files.example/feed?token=TOPSECRET123"
    feed_server.routes["/f"] = Route(status=302, headers={"Location": where})
    service = await make_service({"ftp": feed_server.url("/f")})
    with caplog.at_level(logging.INFO):
        await service.poller.poll("ftp")
    state = await service.store.source_state("ftp")
    assert state is not None and state.last_error_reason == FetchReason.BAD_URL.value
    assert state.last_error == (
        "source 'ftp': bad_url: not an http(s) URL: ftp://files.example/feed?token=…"
    )
    for secret in SECRETS:
        assert secret not in caplog.text


async def test_validators_with_bytes_that_are_not_text_are_dropped(
    make_service: MakeService,
) -> None:
    """obs-text (a Latin-1 0xE9) in ETag and Last-Modified: the poll still stores its items
    (the store cannot hold such a string), and the next poll is a plain GET."""
    headers = b'ETag: "v\xe9"\r\nLast-Modified: Thu, 05 Feb 2026 10:00:00 GMT\xff\r\n'
    async with RawServer(lambda _: raw_response(b"200 OK", headers, FEED)) as raw:
        service = await make_service({"odd": raw.url("/feed")})
        source = service.poller.sources["odd"]
        first = await service.pipeline.poll(source)
        second = await service.pipeline.poll(source)
    assert first.outcome == "new" and first.new_items == 1
    assert second.outcome == "unchanged"
    state = await service.store.source_state("odd")
    assert state is not None and state.items_seen == 1 and state.error_count == 0
    assert state.etag is None and state.last_modified is None
    assert b"If-None-Match" not in raw.requests[1] and b"If-Modified-Since" not in raw.requests[1]


async def test_a_location_with_bytes_that_are_not_text_is_percent_encoded(
    make_service: MakeService,
) -> None:
    def respond(request: bytes) -> bytes:
        if request.startswith(b"GET /moved "):
            return raw_response(b"301 Moved", b"Location: /new?q=\xe9\r\n")
        return raw_response(b"200 OK", b"", FEED)

    async with RawServer(respond) as raw:
        service = await make_service({"moved": raw.url("/moved")})
        outcome = await service.pipeline.poll(service.poller.sources["moved"])
    assert outcome.outcome == "new" and outcome.new_items == 1
    assert raw.requests[1].startswith(b"GET /new?q=%E9 ")
    state = await service.store.source_state("moved")
    assert state is not None and state.moved_url == raw.url("/new?q=%E9")


async def test_the_pipeline_sends_the_user_agent_with_the_public_url(
    make_service: MakeService, feed_server: FeedServer
) -> None:
    feed_server.routes["/f"] = Route(body=FEED)
    service = await make_service(
        {"s": feed_server.url("/f")}, api={"public_url": "https://alerts.example.org"}
    )
    await service.pipeline.poll(service.poller.sources["s"])
    user_agent = feed_server.requests_to("/f")[0]["User-Agent"]
    assert user_agent.startswith("watcher/0.1 (+https://alerts.example.org; ")


async def test_the_log_says_when_a_failing_source_is_polled_rarely_and_calls_it_no_name(
    make_service: MakeService, feed_server: FeedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Past polling.error_limit a source is tried once a broken_interval_s, and the log line
    says that. Whether it is broken is [health] broken_after_errors' call (notices,
    `sources list`), so the log line does not call it broken at another count."""
    feed_server.routes["/down"] = Route(status=500)
    service = await make_service(
        {"down": feed_server.url("/down")}, polling={"error_limit": 2, "broken_interval_s": 7200}
    )
    with caplog.at_level(logging.WARNING):
        await service.poller.poll("down")
        first = caplog.text
        caplog.clear()
        await service.poller.poll("down")
    assert "error 1 in a row)" in first and "broken_interval_s" not in first
    assert "next poll in 7200s (error 2 in a row, past polling.error_limit" in caplog.text
    assert "broken" not in caplog.text.replace("broken_interval_s", "")
