"""The fetch stage through the real pipeline, a real store and the service's poll job:
what a hostile or odd source leaves in the logs and on the source's row."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tests.conftest import FakeClock
from tests.servers import FeedServer, RawServer, Route
from watcher.config import Config
from watcher.errors import FetchReason
from watcher.metrics import Metrics
from watcher.pipeline import Pipeline, build_pipeline
from watcher.rules import Matcher
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


MakeService = Callable[[dict[str, str]], Awaitable[Service]]


@pytest.fixture
async def make_service(store: Store, clock: FakeClock) -> AsyncIterator[MakeService]:
    """Builds the service's poll job for some sources, on a real store and session."""
    async with aiohttp.ClientSession() as session:

        async def make(sources: dict[str, str]) -> Service:
            config = Config.model_validate(
                {
                    "polling": {"timeout_s": 2, "allow_networks": ["127.0.0.0/8"]},
                    "sources": [{"id": k, "url": v} for k, v in sources.items()],
                }
            )
            await store.sync_sources((s.id, str(s.url)) for s in config.sources)
            matcher = Matcher([])
            pipeline = build_pipeline(
                config,
                store=store,
                session=session,
                matcher=lambda: matcher,
                metrics=Metrics(),
                clock=clock,
            )
            scheduler = AsyncIOScheduler(timezone="UTC")
            poller = Poller(pipeline=pipeline, scheduler=scheduler, config=config, clock=clock)
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
