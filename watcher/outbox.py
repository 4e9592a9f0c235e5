"""The outbox worker: claim due deliveries, send them, record the outcome.

Every delivery is a row before it is attempted. A worker leases batches of due
rows ahead of its sends (a crashed worker's rows become due again when their
lease expires), sends each through its receiver's notifier, and records the
outcomes in groups as the sends complete, each group in one transaction: sent;
due again after exponential backoff with full jitter (or exactly when the
receiver's Retry-After says); or dead after `max_attempts` or a permanent
failure. Delivery is at-least-once: a crash between send and record sends
again, with the same idempotency key.

A receiver that keeps failing does not hold up the others: each receiver has
its own concurrency limit and a circuit breaker. After `breaker_failures`
consecutive retryable failures (or a 429 with Retry-After) the breaker opens:
the receiver's rows are not claimed until the cooldown ends; then one trial
delivery is let through (half-open), and its outcome closes or reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping, Set, Sized
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from watcher.backoff import backoff_s
from watcher.config import OutboxConfig
from watcher.constants import OUTBOX_READY_PER_SLOT, SEND_LEASE_SHARE
from watcher.errors import DeliveryError, DeliveryReason
from watcher.metrics import Metrics
from watcher.models import Clock
from watcher.notify.base import Notifier, within_lease
from watcher.store import ClaimedDelivery, Outcome, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryOutcome:
    claimed: ClaimedDelivery
    outcome: str  # "sent", "retry", "dead", "deferred"
    error: DeliveryError | None = None
    retry_in_s: float | None = None


@dataclass
class CircuitBreaker:
    """Per-receiver breaker: closed -> open (after failures) -> half-open (one trial)."""

    failures_to_open: int
    cooldown_s: float
    failures: int = 0
    open_until: datetime | None = None
    trial_in_flight: bool = False

    def state(self, now: datetime) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def allow(self, now: datetime) -> bool:
        """May a delivery be attempted now? In half-open state only one at a time."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "open" or self.trial_in_flight:
            return False
        self.trial_in_flight = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.open_until = None
        self.trial_in_flight = False

    def failure(self, now: datetime, *, pause_s: float | None = None) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if pause_s is not None or self.failures >= self.failures_to_open:
            cooldown = max(self.cooldown_s if self.failures >= self.failures_to_open else 0.0,
                           pause_s or 0.0)  # fmt: skip
            self.open_until = now + timedelta(seconds=cooldown)


@dataclass
class _Receiver:
    limit: int  # sends in flight
    semaphore: asyncio.Semaphore
    breaker: CircuitBreaker

    @property
    def buffer(self) -> int:
        """Claimed rows kept ready behind the sends."""
        return self.limit * OUTBOX_READY_PER_SLOT


class _Sends:
    """The sends in flight: how many per receiver, and those finished since last collected."""

    def __init__(self, wake: asyncio.Event) -> None:
        self.busy: Counter[str] = Counter()
        self._tasks: dict[asyncio.Task[DeliveryOutcome], str] = {}
        self._finished: list[asyncio.Task[DeliveryOutcome]] = []
        self._wake = wake

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, receiver: str, send: Coroutine[Any, Any, DeliveryOutcome]) -> None:
        task = asyncio.create_task(send)
        task.add_done_callback(self._done)
        self._tasks[task] = receiver
        self.busy[receiver] += 1

    def _done(self, task: asyncio.Task[DeliveryOutcome]) -> None:
        self._finished.append(task)
        self._wake.set()

    def collect(self) -> list[DeliveryOutcome]:
        """The outcomes of the sends finished since the last call."""
        finished, self._finished = self._finished, []
        for t in finished:
            self.busy[self._tasks.pop(t)] -= 1
        return [t.result() for t in finished]


class OutboxWorker:
    def __init__(
        self,
        *,
        store: Store,
        notifiers: Mapping[str, Notifier],
        config: OutboxConfig,
        metrics: Metrics,
        clock: Clock,
        receiver_concurrency: Mapping[str, int] | None = None,
        rng: random.Random | None = None,
        on_outcome: Callable[[DeliveryOutcome], None] = lambda _: None,
        updates: bool = True,
    ) -> None:
        """`updates`: does a subscription ask for update notifications
        (`notify_updates`)? Then claims note how many sources each message lists,
        and a send that went out while its story grew is followed by an update;
        without, the outbox skips that work (the ingest stages no updates either)."""
        self.store = store
        self.notifiers = notifiers
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_outcome = on_outcome
        self.updates = updates
        self._wake = asyncio.Event()  # a send or store operation finished, a kick, a stop
        self._kicked = False  # new work may be due: look at every receiver again
        self._stopping = False
        concurrency = receiver_concurrency or {}
        self._receivers = {
            name: _Receiver(
                concurrency.get(name, config.concurrency),
                asyncio.Semaphore(concurrency.get(name, config.concurrency)),
                CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s),
            )
            for name in notifiers
        }

    def kick(self) -> None:
        """Ask the worker to look for due deliveries now."""
        self._kicked = True
        self._wake.set()

    def breaker_state(self, receiver: str) -> str:
        r = self._receivers.get(receiver)
        return r.breaker.state(self.clock()) if r else "closed"

    async def drain(self) -> None:
        """Deliver until nothing is due and nothing is in flight (open breakers' rows wait)."""
        await self._pump(until_idle=True)

    async def run_forever(self) -> None:
        """Deliver until stop(); a stop lets the sends in flight finish and be recorded."""
        await self._pump(until_idle=False)

    def stop(self) -> None:
        """Claim nothing more; finish what is in flight, then leave run_forever()."""
        self._stopping = True
        self._wake.set()

    def _store_op(
        self,
        ready: Mapping[str, Sized],
        record: list[DeliveryOutcome],
        *,
        claim: bool,
        skip: Set[str] = frozenset(),
    ) -> asyncio.Task[list[ClaimedDelivery]]:
        """Start the store operation: record `record`, then (if `claim`) lease rows
        for each receiver's free buffer slots; one transaction. Paused receivers
        get none, nor those in `skip` (found with nothing due a moment ago)."""
        if not claim:
            rows = [self._row(o) for o in record]
            return asyncio.create_task(self._record_only(rows))
        now = self.clock()
        room = self.config.concurrency * OUTBOX_READY_PER_SLOT
        quotas = {
            name: min(room, r.buffer - len(ready.get(name, ())))
            for name, r in self._receivers.items()
            if r.breaker.state(now) != "open" and name not in skip
        }
        return asyncio.create_task(
            self.store.claim_deliveries(
                limit=room,
                lease_s=self.config.lease_s,
                exclude_receivers=sorted(self._receivers),
                record=[self._row(o) for o in record],
                quotas=quotas,
                updates=self.updates,
            )
        )

    async def _record_only(self, rows: list[Outcome]) -> list[ClaimedDelivery]:
        await self.store.record_outcomes(rows, updates=self.updates)
        return []

    async def _pump(self, *, until_idle: bool) -> None:
        """The delivery loop: sends in flight, claimed rows ready behind them, and
        at most one store operation running beside them.

        Each receiver has at most `limit` sends in flight and a buffer of up to
        `limit * OUTBOX_READY_PER_SLOT` claimed rows, so a slow receiver occupies
        only its own slots and never holds up the others. The store operation
        (record the outcomes finished so far, then lease rows for the buffers
        down to half) runs as a task: sending never waits for the database, and
        outcomes are written in one transaction per wave of completions, so
        little sent-but-unrecorded work is left for a crash to send again.
        """
        sends = _Sends(self._wake)
        ready: dict[str, deque[ClaimedDelivery]] = {}
        done: list[DeliveryOutcome] = []  # finished or released, not yet recorded
        op: asyncio.Task[list[ClaimedDelivery]] | None = None  # the store operation
        recording: list[DeliveryOutcome] = []  # what `op` records
        op_claims = op_sees_all = False  # does `op` lease rows; for every receiver?
        idle: set[str] = set()  # receivers whose last claim found nothing more due
        settled = False  # a claim with nothing in flight found nothing: rest until woken
        idle_since = self.clock()
        while True:
            now = self.clock()
            if (now - idle_since).total_seconds() >= self.config.sweep_interval_s:
                idle, idle_since = set(), now  # look at every receiver again now and then
            self._dispatch(ready, sends, done, now)
            if op is None:
                claim = not self._stopping and not settled
                claim = claim and (not sends or self._hungry(ready, idle, now))
                # outcomes alone are written once there are as many as sends in flight
                if claim or (done and len(done) >= len(sends)):
                    op_claims, op_sees_all = claim, not sends
                    op = self._store_op(ready, done, claim=claim, skip=idle if sends else set())
                    op.add_done_callback(lambda _: self._wake.set())
                    recording, done = done, []
            if op is None and not sends and (until_idle or self._stopping):
                return
            # Wait for a send or the store operation to finish, a kick, or a sweep.
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.sweep_interval_s):
                        await self._wake.wait()
                if not self._wake.is_set():
                    self._kicked = True  # a sweep: look again as if kicked
            self._wake.clear()
            if self._kicked:
                idle, settled, self._kicked = set(), False, False
            done += sends.collect()
            if op is None or not op.done():
                continue
            try:
                batch = op.result()
            except Exception:  # the worker must survive a store hiccup
                logger.exception("outbox: recording or claiming deliveries failed")
                batch = []  # unrecorded rows are sent again when their leases expire
                idle = set(self._receivers)  # no claim again until a sweep or a kick
            else:
                self._reported(recording)
            op, recording = None, []
            if op_claims:
                got = Counter(c.delivery.receiver for c in batch)
                idle = (idle | {name for name in self._receivers if not got[name]}) - set(got)
                settled = op_sees_all and not batch and not sends
            for c in batch:
                rows = ready.setdefault(c.delivery.receiver, deque())
                if len(rows) >= self._buffer(c.delivery.receiver):
                    done.append(DeliveryOutcome(c, "deferred"))  # no room: back, uncharged
                else:
                    rows.append(c)

    def _dispatch(
        self,
        ready: Mapping[str, deque[ClaimedDelivery]],
        sends: _Sends,
        done: list[DeliveryOutcome],
        now: datetime,
    ) -> None:
        """Start sends from the buffers into free slots; release rows that must not go now."""
        # a row claimed so long ago that its lease could lapse mid-send goes back
        stale_at = now + timedelta(seconds=self.config.lease_s / 2)
        for name, rows in ready.items():
            r = self._receivers.get(name)
            if self._stopping or (r is not None and r.breaker.state(now) == "open"):
                # back, uncharged: a paused receiver's rows, or everything on stop
                done += [DeliveryOutcome(c, "deferred") for c in rows]
                rows.clear()
            limit = r.limit if r is not None else 1
            while rows and sends.busy[name] < limit and len(sends) < self.config.concurrency:
                c = rows.popleft()
                if c.lease_until is not None and c.lease_until < stale_at:
                    done.append(DeliveryOutcome(c, "deferred"))
                else:
                    sends.start(name, self._attempt(c))

    def _hungry(self, ready: Mapping[str, Sized], idle: set[str], now: datetime) -> bool:
        """Does a receiver that has work have half its buffer free or more?"""
        return any(
            name not in idle
            and r.breaker.state(now) != "open"
            and len(ready.get(name, ())) <= r.buffer // 2
            for name, r in self._receivers.items()
        )

    def _buffer(self, receiver: str) -> int:
        r = self._receivers.get(receiver)
        return r.buffer if r is not None else 1

    def _reported(self, outcomes: list[DeliveryOutcome]) -> None:
        for o in outcomes:
            self._report(o)

    async def _attempt(self, claimed: ClaimedDelivery) -> DeliveryOutcome:
        d = claimed.delivery
        notifier = self.notifiers.get(d.receiver)
        receiver = self._receivers.get(d.receiver)
        if notifier is None or receiver is None:
            err = DeliveryError(
                DeliveryReason.UNKNOWN_RECEIVER,
                "receiver is not configured",
                receiver=d.receiver,
                retryable=False,
            )
            return DeliveryOutcome(claimed, "dead", err)
        async with receiver.semaphore:
            # Checked once a slot is free: failures while this row waited count.
            if not receiver.breaker.allow(self.clock()):
                return DeliveryOutcome(claimed, "deferred")
            try:
                # cut short before the row's lease ends (a retryable TIMEOUT)
                async with within_lease(claimed, self.clock(), SEND_LEASE_SHARE):
                    await notifier.send(claimed)
            except DeliveryError as exc:
                pause = exc.retry_after_s if exc.reason is DeliveryReason.RATE_LIMITED else None
                if exc.retryable:
                    receiver.breaker.failure(self.clock(), pause_s=pause)
                else:
                    receiver.breaker.trial_in_flight = False
                return self._failed(claimed, exc)
            except Exception as exc:  # a notifier bug must not lose the row
                logger.exception("receiver %s: notifier failed unexpectedly", d.receiver)
                receiver.breaker.failure(self.clock())
                err = DeliveryError(
                    DeliveryReason.UNKNOWN,
                    f"internal error: {type(exc).__name__}",
                    receiver=d.receiver,
                    retryable=True,
                )
                return self._failed(claimed, err)
        receiver.breaker.success()
        return DeliveryOutcome(claimed, "sent")

    def _failed(self, claimed: ClaimedDelivery, exc: DeliveryError) -> DeliveryOutcome:
        attempts = claimed.delivery.attempts
        if not exc.retryable or attempts >= self.config.max_attempts:
            return DeliveryOutcome(claimed, "dead", exc)
        if exc.retry_after_s is not None:  # the receiver said when: not before that
            delay = exc.retry_after_s
        else:
            delay = backoff_s(
                attempts,
                base_s=self.config.backoff_base_s,
                max_s=self.config.backoff_max_s,
                rng=self.rng,
            )
        return DeliveryOutcome(claimed, "retry", exc, delay)

    def _row(self, o: DeliveryOutcome) -> Outcome:
        d = o.claimed.delivery
        if o.outcome == "sent":
            return Outcome(d.id, "sent")
        if o.outcome == "deferred":
            return Outcome(d.id, "deferred")
        assert o.error is not None
        retry_at = None
        if o.outcome == "retry":
            retry_at = self.clock() + timedelta(seconds=o.retry_in_s or 0.0)
        return Outcome(
            d.id, o.outcome, reason=o.error.reason.value, error=str(o.error), retry_at=retry_at,
            delivered_to=o.error.delivered,
        )  # fmt: skip

    def _report(self, o: DeliveryOutcome) -> None:
        d = o.claimed.delivery
        if o.outcome == "deferred":
            return
        reason = o.error.reason.value if o.error else ""
        self.metrics.deliveries.labels(d.receiver, o.outcome, reason).inc()
        if o.outcome == "retry":
            logger.warning(
                "delivery %d to receiver %s failed (attempt %d): %s; retry in %.0fs",
                d.id, d.receiver, d.attempts, o.error, o.retry_in_s or 0.0,
            )  # fmt: skip
        elif o.outcome == "dead":
            logger.error(
                "delivery %d to receiver %s dead-lettered after %d attempt(s): %s",
                d.id, d.receiver, d.attempts, o.error,
            )  # fmt: skip
        self.on_outcome(o)
