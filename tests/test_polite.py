"""Polite, adaptive polling: server hints, backoff, broken sources, moves and 410s."""

from __future__ import annotations

from datetime import timedelta

import aiohttp

from tests.conftest import FakeClock
from tests.feeds import CURB, NOISE, rss
from tests.servers import FeedServer, Route
from watcher.config import Config
from watcher.errors import FetchReason
from watcher.metrics import Metrics
from watcher.pipeline import Pipeline, build_pipeline
from watcher.polite import PollPolicy
from watcher.rules import Matcher
from watcher.store import Store


def test_next_check_takes_the_largest_hint_within_bounds() -> None:
    p = PollPolicy(min_s=60, max_s=3600)
    assert p.next_check_s(300) == 300
    assert p.next_check_s(300, ttl_s=900) == 900
    assert p.next_check_s(300, fresh_for_s=1200, ttl_s=900) == 1200
    assert p.next_check_s(300, fresh_for_s=10) == 300  # a hint never makes us poll more often
    assert p.next_check_s(300, fresh_for_s=86_400) == 3600  # ...nor less often than max
    assert p.next_check_s(20) == 60


def test_backoff_doubles_honours_retry_after_and_flags_broken_sources() -> None:
    p = PollPolicy(backoff_max_s=3600, error_limit=5, broken_interval_s=86_400)
    assert [p.after_error_s(60, n, None) for n in (1, 2, 3, 4)] == [120, 240, 480, 960]
    assert p.after_error_s(60, 1, 1800) == 1800
    assert p.after_error_s(60, 4, 30) == 960
    assert not p.is_broken(4) and p.is_broken(5)
    assert p.after_error_s(60, 5, None) == 86_400
    assert p.after_error_s(60, 1, None) <= 3600


async def make(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, url: str, **polling: object
) -> tuple[Config, Pipeline]:
    config = Config.model_validate(
        {
            "polling": {"allow_networks": ["127.0.0.0/8"], "timeout_s": 2, **polling},
            "sources": [{"id": "s", "url": url, "interval_s": 300}],
        }
    )
    await store.sync_sources((s.id, str(s.url)) for s in config.sources)
    pipeline = build_pipeline(
        config,
        store=store,
        session=session,
        matcher=lambda: Matcher([]),
        metrics=Metrics(),
        clock=clock,
    )
    return config, pipeline


async def test_server_hints_set_the_next_check(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    body = rss(CURB).replace(b"<language>", b"<ttl>30</ttl><language>")
    feed_server.routes["/f"] = Route(body=body, headers={"Cache-Control": "max-age=600"})
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    first = await pipeline.poll(config.sources[0])
    assert first.outcome == "new" and first.next_poll_in_s == 1800  # ttl 30 min > max-age > 300
    state = await store.source_state("s")
    assert state is not None and state.next_poll_at == clock() + timedelta(seconds=1800)
    second = await pipeline.poll(config.sources[0])  # 304: max-age still counts
    assert second.outcome == "unchanged" and second.next_poll_in_s == 600


async def test_errors_back_off_flag_the_source_and_reset_on_success(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/f"] = Route(status=500)
    config, pipeline = await make(
        store, clock, session, feed_server.url("/f"), error_limit=3, broken_interval_s=7200
    )
    source = config.sources[0]
    outcomes = [await pipeline.poll(source) for _ in range(3)]
    assert [o.next_poll_in_s for o in outcomes] == [600, 1200, 7200]
    assert [o.broken for o in outcomes] == [False, False, True]
    state = await store.source_state("s")
    assert state is not None and state.error_count == 3 and state.last_error_reason == "http_status"
    feed_server.routes["/f"] = Route(status=429, headers={"Retry-After": "9000"})
    assert (await pipeline.poll(source)).next_poll_in_s == 9000
    feed_server.routes["/f"] = Route(body=rss(CURB, NOISE))
    ok = await pipeline.poll(source)
    assert ok.outcome == "new" and ok.new_items == 2 and ok.next_poll_in_s == 300
    state = await store.source_state("s")
    assert state is not None and state.error_count == 0 and state.last_error is None


async def test_permanent_redirect_updates_the_stored_url(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/old"] = Route(status=301, headers={"Location": "/new"})
    feed_server.routes["/new"] = Route(body=rss(CURB))
    config, pipeline = await make(store, clock, session, feed_server.url("/old"))
    outcome = await pipeline.poll(config.sources[0])
    assert outcome.outcome == "new" and outcome.moved_to == feed_server.url("/new")
    state = await store.source_state("s")
    assert state is not None and state.poll_url == feed_server.url("/new")
    assert (await pipeline.poll(config.sources[0])).outcome == "unchanged"
    assert len(feed_server.requests_to("/old")) == 1  # the second poll went straight to /new
    assert len(feed_server.requests_to("/new")) == 2
    # a new URL in the config wins over the remembered move
    await store.sync_sources([("s", feed_server.url("/other"))])
    state = await store.source_state("s")
    assert state is not None and state.poll_url == feed_server.url("/other")


async def test_temporary_redirect_keeps_the_url(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/old"] = Route(status=307, headers={"Location": "/new"})
    feed_server.routes["/new"] = Route(body=rss(CURB))
    config, pipeline = await make(store, clock, session, feed_server.url("/old"))
    assert (await pipeline.poll(config.sources[0])).moved_to is None
    state = await store.source_state("s")
    assert state is not None and state.poll_url == feed_server.url("/old")


async def test_410_deactivates_the_source(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/f"] = Route(status=410)
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    gone = await pipeline.poll(config.sources[0])
    assert gone.outcome == "gone" and gone.error is not None
    assert gone.error.reason is FetchReason.GONE  # type: ignore[union-attr]
    state = await store.source_state("s")
    assert state is not None and not state.active and "410" in (state.last_error or "")
    assert (await pipeline.poll(config.sources[0])).outcome == "inactive"
    assert len(feed_server.requests_to("/f")) == 1
    # re-configured with a new URL: active again
    await store.sync_sources([("s", feed_server.url("/g"))])
    state = await store.source_state("s")
    assert state is not None and state.active
