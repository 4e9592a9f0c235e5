"""Polite, adaptive polling: server hints, backoff, broken sources, moves and 410s."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import timedelta

import aiohttp
import pytest

from tests.conftest import FakeClock
from tests.feeds import CURB, NOISE, rss
from tests.pipelines import loopback_pipeline
from tests.servers import FeedServer, Route
from watcher.config import Config
from watcher.errors import FetchReason
from watcher.pipeline import Pipeline
from watcher.polite import PollPolicy
from watcher.rules import Matcher
from watcher.service import Poller
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
    # a broken source's Retry-After counts within bounds, however large
    assert p.after_error_s(60, 5, 10.0**12) == max(86_400, p.max_s)
    assert p.after_error_s(60, 1, None) <= 3600


def test_backoff_never_polls_more_often_than_a_healthy_source() -> None:
    """Backing off means polling less often: a daily feed that fails is not tried every
    backoff_max_s, nor a broken one every broken_interval_s, nor sooner than its ttl."""
    p = PollPolicy(max_s=86_400, backoff_max_s=21_600, error_limit=5, broken_interval_s=3600)
    assert [p.after_error_s(43_200, n, None) for n in (1, 2, 3)] == [43_200] * 3
    assert p.after_error_s(7200, 5, None) == 7200  # broken, and still not sooner
    assert p.after_error_s(600, 1, None, ttl_s=7200) == 7200  # the feed's <ttl>
    assert p.after_error_s(600, 2, None, ttl_s=60) == 2400  # a small ttl changes nothing
    q = PollPolicy(backoff_max_s=600)
    assert q.after_error_s(900, 1, None) == 900


async def make(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, url: str, **polling: object
) -> tuple[Config, Pipeline]:
    return await loopback_pipeline(
        store, session, clock, [{"id": "s", "url": url, "interval_s": 300}], polling=polling
    )


async def clock_poller(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer,
    route: Route,
) -> tuple[Poller, Pipeline]:  # fmt: skip
    """A poll clock (not started) for one source "s" whose feed /f answers with route."""
    feed_server.routes["/f"] = route
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    poller = Poller(pipeline=pipeline, config=config, clock=clock)
    poller.schedule_all(random.Random(0))
    return poller, pipeline


async def eventually(condition: Callable[[], object], seconds: float = 5.0) -> bool:
    """Whether condition() holds within `seconds` (looked at every 10 ms)."""
    for _ in range(int(seconds * 100)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return bool(condition())


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
    # a 304: max-age counts, and so does the ttl of the body it did not send again
    assert second.outcome == "unchanged" and second.next_poll_in_s == 1800
    feed_server.routes["/f"] = Route(body=body)  # no validators: the same body again
    third = await pipeline.poll(config.sources[0])
    assert third.outcome == "unchanged" and third.next_poll_in_s == 1800


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


async def test_permanent_redirect_to_a_page_that_is_no_feed_moves_nothing(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    """An expired domain's 301 to a parking page, or a login page: the poll fails, and the
    source stays at its URL, polled there again once the feed is back."""
    feed_server.routes["/f"] = Route(status=301, headers={"Location": "/parked"})
    feed_server.routes["/parked"] = Route(
        body=b"<!doctype html><html><body>This domain is for sale</body></html>",
        content_type="text/html",
    )
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    failed = await pipeline.poll(config.sources[0])
    assert failed.outcome == "error" and "HTML page" in str(failed.error)
    state = await store.source_state("s")
    assert state is not None and state.poll_url == feed_server.url("/f")
    feed_server.routes["/f"] = Route(body=rss(CURB))
    back = await pipeline.poll(config.sources[0])
    assert back.outcome == "new" and back.new_items == 1
    assert len(feed_server.requests_to("/parked")) == 1


async def test_permanent_redirect_answered_304_moves_the_source(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/f"] = Route(body=rss(CURB))
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    assert (await pipeline.poll(config.sources[0])).outcome == "new"
    # the same feed moves: the new URL answers the conditional GET with 304
    feed_server.routes["/new"] = feed_server.routes["/f"]
    feed_server.routes["/f"] = Route(status=301, headers={"Location": "/new"})
    moved = await pipeline.poll(config.sources[0])
    assert moved.outcome == "unchanged" and moved.moved_to == feed_server.url("/new")
    state = await store.source_state("s")
    assert state is not None and state.poll_url == feed_server.url("/new")


async def test_the_same_body_again_keeps_its_new_validators(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    """A server that starts sending an ETag, or rotates it (several backends), with the
    body of the last poll: the validators are kept, and the next poll is answered 304."""
    body = rss(CURB)
    feed_server.routes["/f"] = Route(body=body, etag=False)
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    assert (await pipeline.poll(config.sources[0])).outcome == "new"
    feed_server.routes["/f"] = Route(body=body)  # an ETag from now on
    assert (await pipeline.poll(config.sources[0])).outcome == "unchanged"
    state = await store.source_state("s")
    assert state is not None and state.etag is not None
    etag = state.etag
    assert (await pipeline.poll(config.sources[0])).outcome == "unchanged"
    assert feed_server.requests_to("/f")[-1].get("If-None-Match") == etag
    served = [h.get("If-None-Match") for h in feed_server.requests_to("/f")]
    assert served == [None, None, etag]
    # rotated: a 200 with the same body and another ETag, Last-Modified added
    feed_server.routes["/f"] = Route(
        body=body,
        etag=False,
        headers={"ETag": '"b2"', "Last-Modified": "Tue, 03 Feb 2026 10:00:00 GMT"},
    )
    assert (await pipeline.poll(config.sources[0])).outcome == "unchanged"
    state = await store.source_state("s")
    assert state is not None
    assert (state.etag, state.last_modified) == ('"b2"', "Tue, 03 Feb 2026 10:00:00 GMT")


async def test_a_304_may_update_the_validators(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/f"] = Route(body=rss(CURB), etag=False, headers={"ETag": '"a"'})
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    assert (await pipeline.poll(config.sources[0])).outcome == "new"
    feed_server.routes["/f"] = Route(status=304, etag=False, headers={"ETag": '"a2"'})
    assert (await pipeline.poll(config.sources[0])).outcome == "unchanged"
    state = await store.source_state("s")
    assert state is not None and state.etag == '"a2"'
    feed_server.routes["/f"] = Route(status=304, etag=False)  # none given: the stored one kept
    assert (await pipeline.poll(config.sources[0])).outcome == "unchanged"
    state = await store.source_state("s")
    assert state is not None and state.etag == '"a2"'
    assert [h.get("If-None-Match") for h in feed_server.requests_to("/f")] == [None, '"a"', '"a2"']


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
    # re-configured with a new URL: active again, nothing of the old URL's state kept
    await store.sync_sources([("s", feed_server.url("/g"))])
    state = await store.source_state("s")
    assert state is not None and state.active
    assert state.error_count == 0 and state.next_poll_at is None and state.etag is None


async def test_a_restart_keeps_each_sources_stored_next_check(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/broken"] = Route(status=500)
    feed_server.routes["/gone"] = Route(status=410)
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": i, "url": feed_server.url(f"/{i}"), "interval_s": 300}
         for i in ("broken", "gone", "new")],
        polling={"error_limit": 1, "broken_interval_s": 7200},
    )  # fmt: skip
    for source in config.sources[:2]:
        await pipeline.poll(source)
    # the service restarts: a new scheduler, the store as the last run left it
    poller = Poller(pipeline=pipeline, config=config, clock=clock)
    poller.schedule_all(random.Random(0), await store.poll_schedules())
    assert poller.next_poll_at("broken") == clock() + timedelta(seconds=7200)
    new = poller.next_poll_at("new")  # never polled: at once, staggered
    assert new is not None and new <= clock() + timedelta(seconds=2)
    assert poller.next_poll_at("gone") is None  # a 410 stopped it


async def test_an_unexpected_failure_is_recorded_on_the_source(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    feed_server.routes["/f"] = Route(body=rss(CURB))
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))

    def broken_matcher() -> Matcher:
        raise RuntimeError("a bug with a secret=hunter2 in its message")

    pipeline.matcher = broken_matcher
    poller = Poller(pipeline=pipeline, config=config, clock=clock)
    poller.schedule_all(random.Random(0))
    await poller.poll("s")  # raises inside; the job survives and the source shows it
    state = await store.source_state("s")
    assert state is not None and state.error_count == 1 and state.last_error_reason == "internal"
    assert "RuntimeError" in (state.last_error or "") and "hunter2" not in (state.last_error or "")
    assert state.next_poll_at == clock() + timedelta(seconds=600)  # backed off like any error


async def test_a_poll_slower_than_its_interval_keeps_the_interval(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    """A poll whose transaction waits on a busy store longer than the interval: the next
    poll is still an interval after it, never "-100 s" (an interval of no time or less
    made APScheduler's catch-up loop run backwards forever: service blocked, memory gone)."""
    feed_server.routes["/f"] = Route(body=rss(CURB))
    config, pipeline = await make(store, clock, session, feed_server.url("/f"))
    start = clock()
    matcher = pipeline.matcher

    def slow_matcher() -> Matcher:
        clock.advance(400)  # inside the poll's transaction: more than the 300 s interval
        return matcher()

    pipeline.matcher = slow_matcher
    poller = Poller(pipeline=pipeline, config=config, clock=clock)
    poller.schedule_all(random.Random(0))
    outcome = await pipeline.poll(config.sources[0])
    assert outcome.outcome == "new" and outcome.next_poll_in_s == 300
    state = await store.source_state("s")
    assert state is not None and state.next_poll_at == start + timedelta(seconds=300)
    feed_server.routes["/f"] = Route(body=rss(CURB, NOISE))  # a new item: a slow poll again
    await poller.poll("s")
    assert poller.interval_s("s") == 300
    assert (await store.count_items()) == 2
    # whatever asks, the clock is given no interval of no time or less
    for seconds in (-0.5, 0.0, float("nan")):
        poller._set_interval("s", seconds)
        assert poller.interval_s("s") == 300
    poller._set_interval("s", 0.5)  # below polling.min_interval_s: that minimum
    assert poller.interval_s("s") == 10
    next_at = poller.next_poll_at("s")  # the new interval counts from now, jitter added
    assert next_at is not None and 10 <= (next_at - clock()).total_seconds() <= 11


async def test_first_polls_of_many_sources_are_spread_at_start_up(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """1,000 sources never polled start over 10 s (100 a second), not all at once; one
    whose interval is shorter than that starts within its interval."""
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": f"s{i}", "url": f"http://127.0.0.1:9/{i}", "interval_s": 900 if i else 10}
         for i in range(1000)],
    )  # fmt: skip
    poller = Poller(pipeline=pipeline, config=config, clock=clock)
    poller.schedule_all(random.Random(0))
    firsts = [poller.next_poll_at(f"s{i}") for i in range(1000)]
    starts = [(first - clock()).total_seconds() for first in firsts if first is not None]
    assert len(starts) == 1000 and min(starts) >= 0 and 9 < max(starts) <= 10
    per_second = [sum(1 for s in starts if n <= s < n + 1) for n in range(10)]
    assert max(per_second) < 150  # ~100 each
    first = poller.next_poll_at("s0")
    assert first is not None and first <= clock() + timedelta(seconds=10)


async def test_polls_skipped_while_the_last_still_runs_are_counted_and_summed_up(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Polling falling behind: each poll due while its source's last one still runs is
    skipped, counted, and said in one line a minute (not a line per poll)."""
    slow = Route(body=rss(CURB), delay_s=1.5)
    poller, pipeline = await clock_poller(store, clock, session, feed_server, slow)
    caplog.set_level(logging.WARNING)

    async def due_now() -> None:
        poller._schedule("s", clock().timestamp())  # as when its interval has passed
        await asyncio.sleep(0.05)  # the clock wakes up and starts (or skips) it

    poller.start()
    try:
        await due_now()
        assert await eventually(lambda: feed_server.requests_to("/f"))  # the first poll
        assert poller.active == 1  # the slow poll: the source's one poll at a time
        await due_now()
        await due_now()
        clock.advance(61)
        await due_now()
        skipped = pipeline.metrics.registry.get_sample_value(
            "watcher_polls_total", {"outcome": "skipped"}
        )
        assert skipped == 3 and len(feed_server.requests_to("/f")) == 1
        lines = [r.getMessage() for r in caplog.records if "falling behind" in r.getMessage()]
        assert len(lines) == 2
        assert lines[0].startswith("polling is falling behind: 1 poll(s) skipped, each")
        assert lines[1].startswith("polling is falling behind: 2 poll(s) skipped in the last 61s")
    finally:
        await poller.stop(grace_s=10)  # the slow poll ends as usual
    assert poller.active == 0 and await store.count_items() == 1


async def test_the_poll_clock_polls_each_source_an_interval_on_and_stops_a_gone_one(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    """The clock starts each source's polls as they fall due on the service's clock: the
    first within the start-up spread, the next an interval (and its jitter) on; a source
    a 410 stopped is not polled again."""
    feed_server.routes["/f"] = Route(body=rss(CURB))
    feed_server.routes["/g"] = Route(status=410)
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": i, "url": feed_server.url(f"/{i}"), "interval_s": 300} for i in ("f", "g")],
    )  # fmt: skip
    poller = Poller(pipeline=pipeline, config=config, clock=clock)
    poller.schedule_all(random.Random(0))

    async def polled(path: str, times: int) -> bool:
        return await eventually(
            lambda: len(feed_server.requests_to(path)) >= times and not poller.active
        )

    poller.start()
    try:
        await asyncio.sleep(0.05)
        assert not feed_server.requests_to("/f")  # not due yet: the clock has not moved
        clock.advance(2)  # past the start-up spread
        assert await polled("/f", 1) and await polled("/g", 1)
        assert poller.next_poll_at("g") is None  # gone
        next_f = poller.next_poll_at("f")
        assert next_f is not None and 300 <= (next_f - clock()).total_seconds() <= 331
        clock.advance(299)
        await asyncio.sleep(1.2)  # more than a tick of the clock
        assert len(feed_server.requests_to("/f")) == 1
        clock.advance(32)
        assert await polled("/f", 2)
        assert len(feed_server.requests_to("/g")) == 1
    finally:
        await poller.stop(grace_s=10)
    assert await store.count_items() == 1


async def test_a_poll_still_running_at_shutdown_is_cancelled_after_the_grace(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shutdown waits for polls in flight, up to a grace; one still running then is
    cancelled before the store closes, and its source is left to poll again: its
    validators and items were not saved."""
    hanging = Route(body=rss(CURB), delay_s=30)
    poller, _ = await clock_poller(store, clock, session, feed_server, hanging)
    poller.start()
    poller._schedule("s", clock().timestamp())
    assert await eventually(lambda: feed_server.requests_to("/f"))
    assert poller.active == 1
    with caplog.at_level(logging.WARNING):
        await poller.stop(grace_s=0.1)
    assert poller.active == 0
    assert "1 poll(s) still running at shutdown were cancelled" in caplog.text
    state = await store.source_state("s")
    assert state is not None and state.last_polled_at is None and state.etag is None
    assert await store.count_items() == 0


async def test_a_failure_of_the_poll_clock_is_logged_and_polling_goes_on(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    route = Route(body=rss(CURB))
    poller, _ = await clock_poller(store, clock, session, feed_server, route)
    start_due = poller._start_due
    failures: list[float] = []

    def failing_once(now: float) -> None:
        if not failures:
            failures.append(now)
            raise RuntimeError("a bug")
        start_due(now)

    poller._start_due = failing_once  # type: ignore[method-assign]
    clock.advance(2)  # the first poll is due
    with caplog.at_level(logging.ERROR):
        poller.start()
        try:  # a tick later, the clock tries again
            await eventually(lambda: feed_server.requests_to("/f") and not poller.active)
        finally:
            await poller.stop(grace_s=10)
    assert failures and len(feed_server.requests_to("/f")) == 1
    assert "the poll clock failed to start the polls due" in caplog.text
    assert await store.count_items() == 1


async def test_polls_beyond_polling_concurrency_wait_for_a_slot(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    """At most polling.concurrency polls are in flight: the others due wait (not skipped,
    at no cost) and start as slots free up, so a backlog cannot pile up polls in memory."""
    for i in range(5):
        feed_server.routes[f"/{i}"] = Route(body=rss(CURB), delay_s=0.2)
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": f"s{i}", "url": feed_server.url(f"/{i}"), "interval_s": 300} for i in range(5)],
        polling={"concurrency": 2, "per_host_concurrency": 5},
    )  # fmt: skip
    poller = Poller(pipeline=pipeline, config=config, clock=clock)
    poller.schedule_all(random.Random(0))
    clock.advance(2)  # all five are due
    most, lag, in_flight = 0, 0.0, 0.0
    sample = pipeline.metrics.registry.get_sample_value
    poller.start()
    try:
        for _ in range(500):
            if poller.active == 2 and not in_flight:  # two in flight, three waiting
                in_flight = sample("watcher_polls_in_flight", {}) or 0.0
                lag = sample("watcher_poll_lag_seconds", {}) or 0.0
            most = max(most, poller.active)
            if all(feed_server.requests_to(f"/{i}") for i in range(5)) and not poller.active:
                break
            await asyncio.sleep(0.01)
    finally:
        await poller.stop(grace_s=10)
    assert (
        most == in_flight == 2 and 0 < lag <= 2
    )  # the overdue ones were due within the start-up spread
    assert (
        sample("watcher_polls_in_flight", {}) == 0 and sample("watcher_poll_lag_seconds", {}) == 0
    )
    assert all(len(feed_server.requests_to(f"/{i}")) == 1 for i in range(5))
    skipped = pipeline.metrics.registry.get_sample_value(
        "watcher_polls_total", {"outcome": "skipped"}
    )
    assert not skipped


async def test_the_narrow_reads_of_source_rows_agree_with_the_whole_rows(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    """poll_schedules (start-up) and health_states (the health monitor, /healthz) read a
    few columns of every source row: the same values list_sources gives, on either
    store."""
    feed_server.routes["/ok"] = Route(body=rss(CURB))
    feed_server.routes["/bad"] = Route(status=500)
    feed_server.routes["/gone"] = Route(status=410)
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": i, "url": feed_server.url(f"/{i}"), "interval_s": 300}
         for i in ("ok", "bad", "gone")],
    )  # fmt: skip
    for source in config.sources:
        await pipeline.poll(source)
    rows = await store.list_sources()
    assert [s.id for s in rows] == ["bad", "gone", "ok"] and rows[0].error_count == 1
    schedules = await store.poll_schedules()
    assert schedules == {s.id: (s.id, s.active, s.next_poll_at) for s in rows}
    assert not schedules["gone"].active and schedules["ok"].next_poll_at is not None
    health = await store.health_states()
    assert health == {
        s.id: (s.id, s.active, s.error_count, s.last_error, s.last_error_reason,
               s.last_polled_at, s.last_success_at, s.first_success_at)
        for s in rows
    }  # fmt: skip
    assert health["bad"].last_error_reason and health["ok"].last_success_at is not None
    assert health["ok"].first_success_at == health["ok"].last_success_at
    assert health["bad"].first_success_at is None
