"""`watcher run`: the scheduler, the outbox worker and the API in one aiohttp app.

No globals: every resource lives on the `web.Application` under a typed
`web.AppKey`, and starts and stops in pairs in `cleanup_ctx`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import hmac
import html
import logging
import random
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from watcher import constants
from watcher.config import Config, SourceConfig
from watcher.digest import Digester
from watcher.errors import ListenError
from watcher.fetch import fetch_session, limits_from_config
from watcher.group import (
    Dispatcher,
    Grouper,
    receiver_policies,
    throttled_receivers,
    waiting_notices,
)
from watcher.health import HealthMonitor, error_text
from watcher.metrics import Metrics
from watcher.models import Clock, utc_now
from watcher.notify import build_notifiers
from watcher.notify.email import unsubscribe_token
from watcher.outbox import OutboxWorker
from watcher.pipeline import Pipeline, build_pipeline
from watcher.reload import RuleSet
from watcher.rulecache import RuleCache
from watcher.rules import Matcher
from watcher.store import SourceSchedule, Store
from watcher.websub import WEBSUB, WebSub
from watcher.websub import add_routes as add_websub_routes

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
METRICS = web.AppKey("metrics", Metrics)
MATCHER = web.AppKey("matcher", RuleSet)  # the active rules; a reload swaps its Matcher
STORE = web.AppKey("store", Store)
SESSION = web.AppKey("session", aiohttp.ClientSession)
FETCH_SESSION = web.AppKey("fetch_session", aiohttp.ClientSession)
WORKER = web.AppKey("worker", OutboxWorker)
PIPELINE = web.AppKey("pipeline", Pipeline)
GROUPER = web.AppKey("grouper", Grouper)
DIGESTER = web.AppKey("digester", Digester)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
UNSUBSCRIBE_KEY = web.AppKey("unsubscribe_key", bytes)


class Poller:
    """Polls each enabled source on its own interval, all of them on one clock.

    A heap of (when, source id) and one task that starts the polls as they fall due,
    instead of an APScheduler job per source: a job with its trigger, name and job
    store entries held ~900 bytes, 9 MB of the service's memory at 10,000 sources
    (bench/service.py). The rules are those of APScheduler's interval trigger:

    - the next poll of a source is due an interval (plus up to `jitter_fraction` of it,
      never less) after the last one started; a poll slower than that does not overlap
      with the next: that one is skipped, counted (`watcher_polls_total{outcome=
      "skipped"}`) and said in one line a minute at most;
    - a new interval (backoff, a server's hint) counts from when it is set;
    - at most `polling.concurrency` polls are in flight; polls due beyond it wait for a
      slot, earliest due first, and start late, once (as do polls due while the event
      loop was busy). Waiting costs nothing; a poll in flight (a task holding its
      response and items) a few KB.

    The rest of the service's jobs (digests, health checks, rule reloads, WebSub
    renewals) stay on APScheduler.
    """

    def __init__(self, *, pipeline: Pipeline, config: Config, clock: Clock) -> None:
        self.pipeline = pipeline
        self.config = config
        self.clock = clock
        self.sources = {s.id: s for s in config.sources if s.enabled}
        # a source's interval where it is not its configured one (backoff, server hints)
        self._interval_s: dict[str, float] = {}
        self._next: dict[str, float] = {}  # source id -> when its next poll is due (POSIX s)
        self._due: list[tuple[float, str]] = []  # a heap of (when, source id); see _next
        self._running: dict[str, asyncio.Task[None]] = {}  # the polls the clock started
        self._rng = random.Random()
        self._wake: asyncio.Event | None = None  # set when a poll is due sooner than awaited
        self._wake_at = 0.0  # when the clock looks at the time next (POSIX s)
        self._clock_task: asyncio.Task[None] | None = None
        self._skipped = 0  # polls skipped since the last line that said so
        self._skipped_said_at: datetime | None = None
        self._skipped_metric = pipeline.metrics.polls.labels("skipped")
        pipeline.metrics.polls_in_flight.set_function(lambda: self.active)
        pipeline.metrics.poll_lag.set_function(self.lag_s)

    def schedule_all(
        self, rng: random.Random, stored: Mapping[str, SourceSchedule] | None = None
    ) -> None:
        """Every enabled source's first poll. It keeps the next check a previous run stored
        (backoff, a broken source's rare tries, the server's hints), within the policy's
        bounds; sources never polled, or due, start spread out so start-up is not a burst:
        over 2 s, or as long as it takes to start POLL_STARTUP_PER_S a second (100 s for
        10,000 sources), but within each source's interval. Sources a 410 stopped are not
        polled."""
        self._rng = rng
        now = self.clock()
        policy = self.pipeline.policy
        latest = now + timedelta(seconds=max(policy.max_s, policy.broken_interval_s))
        due = []
        for source in self.sources.values():
            state = stored.get(source.id) if stored else None
            if state is None or state.active:
                due.append((source, state))
        window_s = max(2.0, len(due) / constants.POLL_STARTUP_PER_S)
        for source, state in due:
            first = now + timedelta(seconds=rng.uniform(0, min(window_s, source.interval_s)))
            if state is not None and state.next_poll_at is not None:
                first = max(first, min(state.next_poll_at, latest))
            self._schedule(source.id, first.timestamp())

    @property
    def active(self) -> int:
        """Polls in flight."""
        return len(self._running)

    def next_poll_at(self, source_id: str) -> datetime | None:
        """When the source's next poll is due; None if it is not polled (a 410, disabled)."""
        when = self._next.get(source_id)
        return None if when is None else datetime.fromtimestamp(when, UTC)

    def interval_s(self, source_id: str) -> float:
        """The source's interval now: its configured one, or what the last poll set."""
        return self._interval_s.get(source_id, float(self.sources[source_id].interval_s))

    def lag_s(self) -> float:
        """How long the most overdue source has been due without its poll starting: 0 while
        polling keeps up; more while every slot is taken, or the event loop is busy."""
        due = self._due
        while due and self._next.get(due[0][1]) != due[0][0]:
            heapq.heappop(due)  # stale entries first: they are skipped anyway
        return max(0.0, self.clock().timestamp() - due[0][0]) if due else 0.0

    def start(self) -> None:
        """Start polling (on the running event loop)."""
        if self._clock_task is None:
            self._clock_task = asyncio.create_task(self._run(), name="watcher poll clock")

    async def stop(self, grace_s: float) -> None:
        """Start no more polls; let those in flight finish (their items reach the outbox)
        for up to `grace_s`, then cancel the rest: a cancelled poll's transaction is rolled
        back and its source polled again at the next start, so nothing is lost."""
        task, self._clock_task = self._clock_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = list(self._running.values())
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for poll in late:
                poll.cancel()
            if late:
                logger.warning("%d poll(s) still running at shutdown were cancelled", len(late))
                await asyncio.wait(late)

    async def _run(self) -> None:
        self._wake = wake = asyncio.Event()
        while True:
            now = self.clock().timestamp()
            # never longer than a tick, so a clock that jumps (a suspended machine) is noticed
            wait_s = constants.POLL_CLOCK_TICK_S
            try:
                self._start_due(now)
                if self._due and self._due[0][0] > now:  # (else all slots are taken)
                    wait_s = min(self._due[0][0] - now, wait_s)
            except Exception:  # a bug: the other sources' polls must go on (a tick later)
                logger.exception("the poll clock failed to start the polls due")
            self._wake_at = now + wait_s
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait_s)

    def _start_due(self, now: float) -> None:
        due = self._due
        slots = self.config.polling.concurrency
        while due and due[0][0] <= now:
            if self.active >= slots:
                return  # the rest wait: a poll that ends wakes the clock
            when, source_id = heapq.heappop(due)
            if self._next.get(source_id) != when:
                continue  # rescheduled or stopped since: a stale entry
            self._schedule(source_id, now + self._delay(source_id))
            if source_id in self._running:
                self._skipped_poll()
                continue
            task = asyncio.create_task(self._poll_job(source_id), name=f"poll {source_id}")
            self._running[source_id] = task

    async def _poll_job(self, source_id: str) -> None:
        try:
            await self.poll(source_id)
        except Exception:  # poll() records what it can; nothing may stop the clock's polls
            logger.exception("source %s: poll failed unexpectedly", source_id)
        finally:
            self._running.pop(source_id, None)
            if self._wake is not None and self._due and self._due[0][0] <= self.clock().timestamp():
                self._wake.set()  # a slot for a poll that waits for one

    def _delay(self, source_id: str) -> float:
        # up to `jitter_fraction` more, never less: never earlier than the polite interval
        seconds = self.interval_s(source_id)
        fraction = self.config.polling.jitter_fraction
        jitter = max(1, int(seconds * fraction)) if fraction > 0 else 0
        return seconds + self._rng.uniform(0, jitter)

    def _schedule(self, source_id: str, when: float) -> None:
        self._next[source_id] = when
        heapq.heappush(self._due, (when, source_id))
        if len(self._due) > 2 * len(self._next) + 64:  # mostly stale entries: rebuild
            self._due = [(w, s) for s, w in self._next.items()]
            heapq.heapify(self._due)
        if self._wake is not None and (when < self._wake_at or when <= self.clock().timestamp()):
            self._wake.set()  # due sooner than the clock looks next, or now

    def _unschedule(self, source_id: str) -> None:
        self._next.pop(source_id, None)  # its heap entry is skipped when it comes up

    def _skipped_poll(self) -> None:
        """A poll due while the source's previous one still runs is skipped (polling is
        falling behind): counted, and said in one line a minute at most, with how many."""
        self._skipped_metric.inc()
        self._skipped += 1
        now = self.clock()
        said = self._skipped_said_at
        if said is not None and now - said < timedelta(seconds=constants.POLL_SKIPPED_LOG_S):
            return
        logger.warning(
            "polling is falling behind: %d poll(s) skipped%s, each because its source's "
            "previous poll was still running (a busy store or network, or more sources than "
            "this process can poll at their intervals)",
            self._skipped,
            "" if said is None else f" in the last {(now - said).total_seconds():.0f}s",
        )
        self._skipped, self._skipped_said_at = 0, now

    async def poll(self, source_id: str) -> None:
        source = self.sources[source_id]
        try:
            outcome = await self.pipeline.poll(source)
        except Exception as exc:  # a bug or a store outage must not stop the source's polls
            logger.exception("source %s: poll failed unexpectedly", source_id)
            await self._record_unexpected(source, exc)
            return
        if outcome.outcome in ("gone", "inactive"):
            if outcome.error is not None:
                logger.warning("%s; polling stopped until the source's URL changes", outcome.error)
            self._unschedule(source_id)
            return
        if outcome.error is None:
            if outcome.new_items:
                logger.info(
                    "source %s: %d new item(s), %d alert(s)",
                    source_id,
                    outcome.new_items,
                    len(outcome.alerts),
                )
            self._set_interval(source_id, outcome.next_poll_in_s or float(source.interval_s))
            return
        delay = outcome.next_poll_in_s or float(source.interval_s)
        logger.warning(
            "%s; next poll in %.0fs (error %d in a row%s)",
            outcome.error,
            delay,
            outcome.error_count,
            ", past polling.error_limit: tried once a broken_interval_s" if outcome.broken else "",
        )
        self._set_interval(source_id, delay)

    async def _record_unexpected(self, source: SourceConfig, exc: Exception) -> None:
        try:
            delay = await self.pipeline.record_unexpected(source, exc)
        except Exception as again:  # the store itself may be what failed
            logger.warning("source %s: the failure could not be recorded (%s)", source.id,
                           type(again).__name__)  # fmt: skip
            return
        self._set_interval(source.id, delay)

    def _set_interval(self, source_id: str, seconds: float) -> None:
        # never below the policy's minimum, nor 0 or less: the clock would start the source's
        # poll again as soon as it started it, blocking the service
        if not seconds > 0:  # 0, negative or NaN: the source's own interval
            seconds = float(self.sources[source_id].interval_s)
        seconds = max(seconds, self.pipeline.policy.min_s)
        if self.interval_s(source_id) == seconds:
            return
        if seconds == self.sources[source_id].interval_s:
            self._interval_s.pop(source_id, None)
        else:
            self._interval_s[source_id] = seconds
        if source_id in self._next:  # a new interval counts from now
            self._schedule(source_id, self.clock().timestamp() + self._delay(source_id))


# ------------------------------------------------------------------ resources


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = Store(config.store.url, clock=app[CLOCK])
    await store.open()
    await store.sync_sources((s.id, str(s.url)) for s in config.sources)
    app[STORE] = store
    yield
    await store.close()


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        yield


async def _fetch_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sources get their own session: address guard at connect time, no cookies."""
    config = app[CONFIG]
    limits = limits_from_config(config.polling, public_url=config.api.public_url)
    async with fetch_session(limits) as session:
        app[FETCH_SESSION] = session
        yield


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    config, clock, metrics, store = app[CONFIG], app[CLOCK], app[METRICS], app[STORE]
    app[UNSUBSCRIBE_KEY] = await store.secret("unsubscribe")
    notifiers = build_notifiers(
        config,
        session=app[SESSION],
        clock=clock,
        unsubscribe_key=app[UNSUBSCRIBE_KEY],
        suppressed=store.suppressed,
    )
    worker = OutboxWorker(
        store=store,
        notifiers=notifiers,
        config=config.outbox,
        metrics=metrics,
        clock=clock,
        receiver_concurrency={r.id: r.concurrency for r in config.receivers},
        updates=any(s.notify_updates for s in config.subscriptions),
    )
    grouper = Grouper(
        store=store,
        dispatcher=Dispatcher(receiver_policies(config)),
        clock=clock,
        on_sealed=worker.kick,
        idle_check_s=config.outbox.sweep_interval_s,
    )
    digester = Digester(
        store=store, subscriptions=config.subscriptions, clock=clock, on_sealed=worker.kick
    )
    pipeline = build_pipeline(
        config,
        store=app[STORE],
        session=app[FETCH_SESSION],
        matcher=app[MATCHER],
        metrics=metrics,
        clock=clock,
        on_enqueued=worker.kick,
        on_staged=grouper.kick,
    )
    app[WORKER] = worker
    app[PIPELINE] = pipeline
    app[GROUPER] = grouper
    app[DIGESTER] = digester
    if config.websub.callback_base_url is not None:
        app[WEBSUB] = WebSub(
            config=config,
            pipeline=pipeline,
            session=app[FETCH_SESSION],
            clock=clock,
            rng=random.Random(),
        )
    try:
        await digester.adopt_orphans()  # before grouping starts: its first pass sends them
    except Exception:  # a store outage must not stop start-up; the next start retries
        logger.exception("digests: re-routing notices of removed subscriptions failed")
    task = asyncio.create_task(worker.run_forever(), name="outbox-worker")
    grouping = asyncio.create_task(grouper.run_forever(), name="grouper")
    yield
    grouper.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(grouping, timeout=5.0)
    worker.stop()  # let the batch in flight be sent and recorded
    try:
        await asyncio.wait_for(task, timeout=min(config.outbox.lease_s, 10.0))
    except TimeoutError:
        logger.warning("outbox worker did not finish in time; its leased rows will be retried")
    for notifier in notifiers.values():
        await notifier.close()


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    scheduler = AsyncIOScheduler(timezone="UTC")
    poller = Poller(pipeline=app[PIPELINE], config=config, clock=app[CLOCK])
    poller.schedule_all(random.Random(), await app[STORE].poll_schedules())
    if config.rules.reload_interval_s > 0:
        schedule_rule_reload(scheduler, app[MATCHER], config.rules.reload_interval_s)
    schedule_digests(scheduler, app[DIGESTER])
    websub = app.get(WEBSUB)
    if websub is not None:

        async def renew_websub() -> None:
            try:
                await websub.renew()
            except Exception:
                logger.exception("WebSub renewal failed")

        scheduler.add_job(
            renew_websub,
            IntervalTrigger(seconds=60, timezone="UTC"),
            id="websub-renew",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=61,
        )
    if config.health.operator_receiver:
        monitor = HealthMonitor(
            store=app[STORE], config=config, session=app[SESSION], clock=app[CLOCK]
        )

        async def check_health() -> None:
            try:
                for notice in await monitor.check():
                    logger.warning("source health: %s: %s", notice.subject, notice.detail)
            except Exception:  # a store outage must not kill the job
                logger.exception("source health check failed")

        scheduler.add_job(
            check_health,
            IntervalTrigger(seconds=config.health.check_interval_s, timezone="UTC"),
            id="source-health",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(config.health.check_interval_s) + 1,
        )
    scheduler.start()
    poller.start()
    app[SCHEDULER] = scheduler
    logger.info(
        "watcher running: %d source(s), %d rule(s), %d receiver(s), store %s",
        len(poller.sources),
        len(app[MATCHER]),
        len(config.receivers),
        app[STORE].dialect,
    )
    yield
    # Let polls in flight finish (their items reach the outbox) before the store goes.
    scheduler.pause()
    await poller.stop(grace_s=constants.POLL_SHUTDOWN_GRACE_S)
    scheduler.shutdown(wait=False)


def schedule_digests(scheduler: AsyncIOScheduler, digester: Digester) -> None:
    """A cron job per digest subscription, and one catch-up run at start-up.

    The jobs are only triggers: the digester reads from the store what is due,
    so a fire time missed while the service was down is sent now, once.
    """

    async def fire(only: str | None = None) -> None:
        try:
            await digester.fire_due(only)
        except Exception:  # a store outage must not kill the job; the next run catches up
            logger.exception("digest %s: sealing failed", only or "(catch-up)")

    for name, sub in sorted(digester.subscriptions.items()):
        scheduler.add_job(
            fire,
            sub.trigger(),
            args=[name],
            id=f"digest:{name}",
            name=f"digest {name}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=constants.DIGEST_MISFIRE_GRACE_S,
            replace_existing=True,
        )
    if digester.subscriptions:
        scheduler.add_job(fire, id="digest-catch-up", name="digests missed while down")


def schedule_rule_reload(scheduler: AsyncIOScheduler, rules: RuleSet, interval_s: float) -> None:
    async def reload_rules() -> None:
        try:
            await rules.check()
        except Exception:  # a bug must not kill the job
            logger.exception("rules: reload check failed unexpectedly")

    scheduler.add_job(
        reload_rules,
        IntervalTrigger(seconds=interval_s, timezone="UTC"),
        id="rules-reload",
        name="reload rule files",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(interval_s) + 1,
    )


# ------------------------------------------------------------------ HTTP API


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    body: dict[str, Any] = {
        "status": "ok",
        "rules": len(app[MATCHER]),
        "rule_files": app[MATCHER].status(),
    }
    try:
        await app[STORE].ping()
        body["store"] = "ok"
    except Exception as exc:
        body.update(status="error", store=f"error: {type(exc).__name__}")
    try:
        states = await app[STORE].health_states()
        # the error as `watcher sources list` says it: "reason: message", the source's
        # name not repeated (it is the key); "" when the last poll succeeded
        body["sources"] = {
            id_: {
                "error_count": state.error_count,
                "last_error": error_text(id_, state.last_error_reason, state.last_error)
                if state.last_error or state.last_error_reason
                else "",
                "active": state.active,
            }
            for id_, state in sorted(states.items())
        }
    except Exception:
        body["sources"] = {}
    return web.json_response(body, status=200 if body["status"] == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    m = app[METRICS]
    try:
        m.outbox.clear()
        for (receiver, state, reason), n in (await app[STORE].delivery_counts()).items():
            m.outbox.labels(receiver, state, reason).set(n)
        worker = app[WORKER]
        for rc in app[CONFIG].receivers:
            m.breaker_open.labels(rc.id).set(1 if worker.breaker_state(rc.id) == "open" else 0)
        now = app[CLOCK]()
        m.notices_waiting.clear()
        m.notices_oldest.clear()
        for w in await waiting_notices(app[STORE]):
            stream = w.stream or "immediate"
            m.notices_waiting.labels(w.receiver, stream).set(w.count)
            m.notices_oldest.labels(w.receiver, stream).set((now - w.oldest).total_seconds())
        throttled = await throttled_receivers(app[STORE], app[GROUPER].dispatcher.policies, now)
        for rc in app[CONFIG].receivers:
            m.throttled.labels(rc.id).set(1 if rc.id in throttled else 0)
    except Exception:  # a store outage: serve the in-process metrics anyway
        logger.exception("metrics: reading the store's gauges failed")
    return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")


_UNSUBSCRIBE_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Unsubscribe</title></head><body style="font-family: sans-serif">
<form method="post"><p>Stop watcher alerts from <b>{receiver}</b> to <b>{address}</b>?</p>
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form></body></html>"""


async def unsubscribe(request: web.Request) -> web.Response:
    """One-click unsubscribe (RFC 8058). GET only shows a form: link scanners must not act."""
    app = request.app
    receiver = request.query.get("r", "")
    address = request.query.get("a", "")
    token = request.query.get("t", "")
    expected = unsubscribe_token(app[UNSUBSCRIBE_KEY], receiver, address)
    if not (receiver and address and hmac.compare_digest(token, expected)):
        return web.Response(status=403, text="invalid or expired unsubscribe link")
    if request.method == "GET":
        page = _UNSUBSCRIBE_PAGE.format(
            receiver=html.escape(receiver), address=html.escape(address)
        )
        return web.Response(text=page, content_type="text/html")
    await app[STORE].suppress(receiver, address)
    logger.info("receiver %s: an address unsubscribed", receiver)
    return web.Response(text="You are unsubscribed.")


def create_app(
    config: Config, matcher: Matcher, *, clock: Clock = utc_now, rule_errors: Sequence[str] = ()
) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[CLOCK] = clock
    app[METRICS] = Metrics()
    cache = RuleCache(config.rules.cache_dir) if config.rules.cache_dir else None
    app[MATCHER] = RuleSet(
        config.rules.paths,
        matcher,
        clock=clock,
        metrics=app[METRICS],
        cache=cache,
        errors=rule_errors,
    )
    app.cleanup_ctx.extend(
        [_store_ctx, _session_ctx, _fetch_session_ctx, _workers_ctx, _scheduler_ctx]
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/unsubscribe", unsubscribe)
    app.router.add_post("/unsubscribe", unsubscribe)
    add_websub_routes(app)  # 404 unless [websub] callback_base_url is set
    return app


def run(config: Config, matcher: Matcher, rule_errors: Sequence[str] = ()) -> None:
    # bound before anything starts: a port already taken is one clear line, not a
    # traceback after the store was opened and the first polls went out
    socks = listening_sockets(config.api.host, config.api.port)
    app = create_app(config, matcher, rule_errors=rule_errors)
    web.run_app(app, sock=socks, print=None, access_log=None, shutdown_timeout=10)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on every address `host` names ("localhost": ::1 and 127.0.0.1,
    as aiohttp's own sites would), at `port`; ListenError saying why not."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, _, _, _, address in dict.fromkeys(infos):
            socks.append(socket.create_server(address, family=family))
    except OSError as exc:  # socket.gaierror too: a host that does not resolve
        for sock in socks:
            sock.close()
        raise ListenError(
            f"api: cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(set [api] host and port, or WATCHER_API__HOST / WATCHER_API__PORT)"
        ) from None
    return socks
