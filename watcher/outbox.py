"""The outbox worker: claim due deliveries, send them, record the outcome.

Every delivery is a row before it is attempted. A worker leases a batch of due
rows (a crashed worker's rows become due again when their lease expires),
sends each through its receiver's notifier, then records every outcome of the
batch in one transaction: sent; due again after exponential backoff with full
jitter (or exactly when the receiver's Retry-After says); or dead after
`max_attempts` or a permanent failure. Delivery is at-least-once: a crash
between send and record sends again, with the same idempotency key.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from watcher.config import OutboxConfig
from watcher.errors import DeliveryError, DeliveryReason
from watcher.metrics import Metrics
from watcher.models import Clock
from watcher.notify.base import Notifier
from watcher.store import ClaimedDelivery, Outcome, Store

logger = logging.getLogger(__name__)

RECORD_EVERY = 20


@dataclass(frozen=True)
class DeliveryOutcome:
    claimed: ClaimedDelivery
    outcome: str  # "sent", "retry", "dead", "deferred"
    error: DeliveryError | None = None
    retry_in_s: float | None = None


def backoff_s(attempts: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2^(attempts-1)))."""
    ceiling = min(max_s, base_s * (2 ** max(0, min(attempts - 1, 30))))
    return rng.uniform(0, ceiling)


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
    semaphore: asyncio.Semaphore
    breaker: CircuitBreaker


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
    ) -> None:
        self.store = store
        self.notifiers = notifiers
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_outcome = on_outcome
        self._wake = asyncio.Event()
        self._stopping = False
        concurrency = receiver_concurrency or {}
        self._receivers = {
            name: _Receiver(
                asyncio.Semaphore(concurrency.get(name, config.concurrency)),
                CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s),
            )
            for name in notifiers
        }

    def kick(self) -> None:
        """Ask the worker to look for due deliveries now."""
        self._wake.set()

    def breaker_state(self, receiver: str) -> str:
        r = self._receivers.get(receiver)
        return r.breaker.state(self.clock()) if r else "closed"

    async def run_once(self) -> int:
        """Claim one batch of due deliveries, attempt each, record the outcomes together.

        Returns how many were claimed.
        """
        now = self.clock()
        paused = sorted(n for n, r in self._receivers.items() if r.breaker.state(now) == "open")
        batch = await self.store.claim_deliveries(
            limit=self.config.concurrency * 2, lease_s=self.config.lease_s, exclude_receivers=paused
        )
        if not batch:
            return 0
        # Record outcomes in small groups as they complete: few writes, and little
        # sent-but-unrecorded work (which a crash would send again).
        pending: list[DeliveryOutcome] = []
        for next_done in asyncio.as_completed([self._attempt(c) for c in batch]):
            pending.append(await next_done)
            if len(pending) >= RECORD_EVERY:
                await self._record(pending)
                pending = []
        await self._record(pending)
        return len(batch)

    async def _record(self, outcomes: list[DeliveryOutcome]) -> None:
        if outcomes:
            await self.store.record_outcomes([self._row(o) for o in outcomes])
            for o in outcomes:
                self._report(o)

    async def drain(self) -> None:
        """Attempt deliveries until none is due now (open breakers' rows stay for later)."""
        while await self.run_once():
            pass

    async def run_forever(self) -> None:
        """Sweep until stop(): a stop waits for the batch in flight to be sent and recorded."""
        while not self._stopping:
            try:
                while not self._stopping and await self.run_once():
                    pass
            except Exception:  # the worker must survive a store hiccup
                logger.exception("outbox sweep failed")
            self._wake.clear()
            if not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.config.sweep_interval_s)

    def stop(self) -> None:
        """Finish the batch in flight, then leave run_forever()."""
        self._stopping = True
        self._wake.set()

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
            d.id, o.outcome, reason=o.error.reason.value, error=str(o.error), retry_at=retry_at
        )

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
