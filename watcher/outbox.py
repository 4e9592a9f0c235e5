"""The outbox worker: claim due deliveries, send them, record the outcome.

Every delivery is a row before it is attempted. A worker leases rows (so a
crashed worker's rows become due again when the lease expires), sends each
through its receiver's notifier, then marks it sent, or due again after a
backoff with full jitter (Retry-After honoured), or dead after
`max_attempts` or a permanent failure. Delivery is at-least-once; the
idempotency key makes a repeat harmless to the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from watcher.config import OutboxConfig
from watcher.errors import DeliveryError, DeliveryReason
from watcher.metrics import Metrics
from watcher.models import Clock
from watcher.notify.base import Notifier
from watcher.store import ClaimedDelivery, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryOutcome:
    claimed: ClaimedDelivery
    outcome: str  # "sent", "retry", "dead"
    error: DeliveryError | None = None
    retry_in_s: float | None = None


def backoff_s(attempts: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2^(attempts-1)))."""
    ceiling = min(max_s, base_s * (2 ** max(0, min(attempts - 1, 30))))
    return rng.uniform(0, ceiling)


class OutboxWorker:
    def __init__(
        self,
        *,
        store: Store,
        notifiers: Mapping[str, Notifier],
        config: OutboxConfig,
        metrics: Metrics,
        clock: Clock,
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
        self._sem = asyncio.Semaphore(config.concurrency)

    def kick(self) -> None:
        """Ask the worker to look for due deliveries now."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim one batch of due deliveries and attempt each. Returns how many were attempted."""
        batch = await self.store.claim_deliveries(
            limit=max(self.config.concurrency, 1) * 5, lease_s=self.config.lease_s
        )
        if batch:
            await asyncio.gather(*(self._attempt(c) for c in batch))
        return len(batch)

    async def drain(self) -> None:
        """Attempt deliveries until none is due now."""
        while await self.run_once():
            pass

    async def run_forever(self) -> None:
        while True:
            try:
                await self.drain()
            except Exception:  # the worker must survive a store hiccup
                logger.exception("outbox sweep failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.sweep_interval_s)

    async def _attempt(self, claimed: ClaimedDelivery) -> None:
        async with self._sem:
            d = claimed.delivery
            notifier = self.notifiers.get(d.receiver)
            try:
                if notifier is None:
                    raise DeliveryError(
                        DeliveryReason.UNKNOWN_RECEIVER,
                        "receiver is not configured",
                        receiver=d.receiver,
                        retryable=False,
                    )
                await notifier.send(claimed)
            except DeliveryError as exc:
                outcome = await self._failed(claimed, exc)
            else:
                await self.store.mark_sent(d.id)
                self.metrics.deliveries.labels(d.receiver, "sent", "").inc()
                outcome = DeliveryOutcome(claimed, "sent")
            self.on_outcome(outcome)

    async def _failed(self, claimed: ClaimedDelivery, exc: DeliveryError) -> DeliveryOutcome:
        d = claimed.delivery
        if exc.retryable and d.attempts < self.config.max_attempts:
            delay = backoff_s(
                d.attempts,
                base_s=self.config.backoff_base_s,
                max_s=self.config.backoff_max_s,
                rng=self.rng,
            )
            if exc.retry_after_s is not None:  # the receiver said when: not before that
                delay = exc.retry_after_s
            await self.store.mark_failed(
                d.id,
                reason=exc.reason.value,
                error=str(exc),
                retry_at=self.clock() + timedelta(seconds=delay),
            )
            self.metrics.deliveries.labels(d.receiver, "retry", exc.reason.value).inc()
            logger.warning(
                "delivery %d to receiver %s failed (attempt %d): %s; retry in %.0fs",
                d.id,
                d.receiver,
                d.attempts,
                exc,
                delay,
            )
            return DeliveryOutcome(claimed, "retry", exc, delay)
        await self.store.mark_failed(d.id, reason=exc.reason.value, error=str(exc), retry_at=None)
        self.metrics.deliveries.labels(d.receiver, "dead", exc.reason.value).inc()
        logger.error(
            "delivery %d to receiver %s dead-lettered after %d attempt(s): %s",
            d.id,
            d.receiver,
            d.attempts,
            exc,
        )
        return DeliveryOutcome(claimed, "dead", exc)
