from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import FakeClock
from tests.pipelines import loopback_pipeline
from tests.servers import FeedServer, Route
from watcher.config import Config
from watcher.errors import FetchError, FetchReason
from watcher.fetch import (
    Fetcher,
    FetchLimits,
    fetch_session,
    limits_from_config,
    parse_networks,
    parse_retry_after,
)
from watcher.store import Store

LOOPBACK = parse_networks(["127.0.0.0/8"])


@pytest.fixture
async def fetcher(clock: FakeClock) -> AsyncIterator[Fetcher]:
    async with aiohttp.ClientSession() as session:
        yield Fetcher(
            session=session,
            limits=FetchLimits(
                timeout_s=0.5, max_body_bytes=10_000, max_redirects=3, allow_networks=LOOPBACK
            ),
            clock=clock,
        )


async def test_conditional_get_uses_etag(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.routes["/f"] = Route(body=b"<rss/>")
    first = await fetcher.fetch("s", feed_server.url("/f"))
    assert first.status == 200 and first.body == b"<rss/>" and first.etag
    second = await fetcher.fetch("s", feed_server.url("/f"), etag=first.etag)
    assert second.not_modified
    headers = feed_server.requests_to("/f")
    assert "If-None-Match" not in headers[0]
    assert headers[1]["If-None-Match"] == first.etag
    assert headers[1]["User-Agent"].startswith("watcher/")


async def test_last_modified_is_sent(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.routes["/f"] = Route(body=b"x", etag=False)
    await fetcher.fetch("s", feed_server.url("/f"), last_modified="Wed, 04 Feb 2026 10:00:00 GMT")
    assert feed_server.requests_to("/f")[0]["If-Modified-Since"] == "Wed, 04 Feb 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("route", "reason", "text"),
    [
        (Route(status=500), FetchReason.HTTP_STATUS, "HTTP 500"),
        (Route(status=404), FetchReason.HTTP_STATUS, "HTTP 404"),
        (Route(body=b"x", delay_s=2.0), FetchReason.TIMEOUT, "no complete answer within 0.5s"),
        (Route(body=b"x" * 20_000), FetchReason.TOO_LARGE, "exceeds the 10000-byte cap"),
    ],
)
async def test_failures_have_a_reason_and_name_the_source(
    feed_server: FeedServer, fetcher: Fetcher, route: Route, reason: FetchReason, text: str
) -> None:
    feed_server.routes["/f"] = route
    with pytest.raises(FetchError) as err:
        await fetcher.fetch("bis-fr", feed_server.url("/f"))
    assert err.value.reason is reason
    assert str(err.value).startswith("source 'bis-fr':")
    assert text in str(err.value)


async def test_endless_redirects_are_cut(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.routes["/loop"] = Route(status=302, headers={"Location": "/loop"})
    with pytest.raises(FetchError) as err:
        await fetcher.fetch("s", feed_server.url("/loop"))
    assert err.value.reason is FetchReason.TOO_MANY_REDIRECTS
    assert len(feed_server.requests_to("/loop")) <= 4  # bounded: 1 request + at most 3 redirects


async def test_429_carries_retry_after(feed_server: FeedServer, fetcher: Fetcher) -> None:
    feed_server.routes["/f"] = Route(status=429, headers={"Retry-After": "120"})
    with pytest.raises(FetchError) as err:
        await fetcher.fetch("s", feed_server.url("/f"))
    assert err.value.status == 429 and err.value.retry_after_s == 120


async def test_connection_refused(fetcher: Fetcher) -> None:
    from watcher.demo import free_port

    with pytest.raises(FetchError) as err:
        await fetcher.fetch("offline", f"http://127.0.0.1:{free_port()}/feed")
    assert err.value.reason is FetchReason.CONNECT
    assert "cannot connect" in str(err.value)


def test_retry_after_parsing(clock: FakeClock) -> None:
    assert parse_retry_after("30", clock()) == 30
    assert parse_retry_after("Thu, 05 Feb 2026 12:01:00 GMT", clock()) == 60
    assert parse_retry_after("soon", clock()) is None
    assert parse_retry_after(None, clock()) is None
    # the obsolete forms a recipient must still accept (RFC 9110 5.6.7)
    assert parse_retry_after("Thursday, 05-Feb-26 13:00:00 GMT", clock()) == 3600
    assert parse_retry_after("Thu Feb  5 13:00:00 2026", clock()) == 3600  # asctime: no zone
    # a date from a server whose clock is an hour ahead: counted from its own Date
    ahead = "Thu, 05 Feb 2026 13:00:00 GMT"
    assert parse_retry_after("Thu, 05 Feb 2026 13:02:00 GMT", clock(), ahead) == 120
    assert parse_retry_after("Thu, 05 Feb 2026 13:02:00 GMT", clock(), "garbage") == 3720
    assert parse_retry_after("30", clock(), ahead) == 30


@pytest.mark.parametrize("value", ["999999999999", "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_an_absurd_retry_after_is_capped(clock: FakeClock, value: str) -> None:
    assert parse_retry_after(value, clock()) == 365 * 24 * 3600


async def test_an_absurd_retry_after_still_schedules_a_next_poll(
    feed_server: FeedServer, store: Store, clock: FakeClock
) -> None:
    """The pipeline adds Retry-After to the clock (unclamped once a source is flagged
    broken): an uncapped value overflowed it."""
    feed_server.routes["/f"] = Route(status=429, headers={"Retry-After": "999999999999"})
    async with aiohttp.ClientSession() as session:
        config, pipeline = await loopback_pipeline(
            store, session, clock, [{"id": "s", "url": feed_server.url("/f")}],
            polling={"error_limit": 1},
        )  # fmt: skip
        outcome = await pipeline.poll(config.sources[0])
    assert outcome.outcome == "error" and outcome.broken
    assert isinstance(outcome.error, FetchError)
    assert outcome.error.status == 429
    state = await store.source_state("s")
    assert state is not None and state.next_poll_at is not None


@pytest.mark.parametrize(
    ("settings", "user_agent"),
    [
        ({}, "watcher/0.1 (export-control and critical-minerals alerting; feed poller)"),
        (
            {"api": {"public_url": "https://alerts.example.org/"}},
            "watcher/0.1 (+https://alerts.example.org; "
            "export-control and critical-minerals alerting; feed poller)",
        ),
        (
            {
                "api": {"public_url": "https://alerts.example.org"},
                "polling": {"user_agent": "ExampleCorp-feeds/2 (+https://corp.example)"},
            },
            "ExampleCorp-feeds/2 (+https://corp.example)",
        ),
    ],
    ids=["default", "public-url", "override"],
)
async def test_the_user_agent_names_watcher_and_its_url(
    feed_server: FeedServer, clock: FakeClock, settings: dict[str, dict[str, str]], user_agent: str
) -> None:
    feed_server.routes["/f"] = Route(body=b"<rss/>")
    polling = {"allow_networks": ["127.0.0.0/8"], **settings.get("polling", {})}
    config = Config.model_validate({**settings, "polling": polling})
    limits = limits_from_config(config.polling, public_url=config.api.public_url)
    async with fetch_session(limits) as session:
        await Fetcher(session=session, limits=limits, clock=clock).fetch("s", feed_server.url("/f"))
    assert feed_server.requests_to("/f")[0]["User-Agent"] == user_agent


async def test_the_hub_and_self_links_of_the_response_are_kept(
    feed_server: FeedServer, fetcher: Fetcher
) -> None:
    """WebSub discovery by Link headers: several headers, resolved against the URL that
    answered (after a redirect), not the one asked."""
    feed_server.routes["/old"] = Route(status=301, headers={"Location": "/feeds/new.atom"})
    feed_server.routes["/feeds/new.atom"] = Route(
        body=b"<rss/>",
        links=('</hub>; rel="hub"', '<new.atom?v=1>; rel="self", <https://x/>; rel="alternate"'),
    )
    result = await fetcher.fetch("s", feed_server.url("/old"))
    assert result.hub == feed_server.url("/hub")
    assert result.self_url == feed_server.url("/feeds/new.atom?v=1")
    feed_server.routes["/plain"] = Route(body=b"<rss/>")
    result = await fetcher.fetch("s", feed_server.url("/plain"))
    assert (result.hub, result.self_url) == (None, None)
