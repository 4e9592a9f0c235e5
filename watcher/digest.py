"""Digests: a subscription's alerts of each period, in one notification per receiver.

A digest subscription (`mode = "digest"`, `schedule` a crontab line in
`timezone`) stages a notice per alert and receiver in the ingest transaction
(watcher/group.py), so nothing waits in memory. When the schedule fires, the
`Digester` seals, per receiver, every open notice of the subscription that
arrived by the fire time into one delivery row (kind "digest"), whose
idempotency key names the subscription, the receiver and the fire time:
`wdg_<subscription>_<receiver>_<YYYYmmddTHHMMSSZ>`. The outbox sends it like any
other row (Message-ID / webhook-id = that key).

The last fire time of each subscription is kept in the store
(`digest_schedules`) and advanced in the same transaction that seals the
digests, so a crash before the commit seals them again after the restart, and
a crash after it finds them sealed: never lost, never sealed twice. The
scheduler's job is only a trigger: `fire_due()` works out from the store what
is due, so fire times missed while the service was down are caught up at
start-up, once (one digest covering every missed period).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Column, String, Table, delete, select, tuple_, update

from watcher import constants
from watcher.config import SubscriptionConfig
from watcher.models import Clock
from watcher.store import Store, UTCDateTime, _insert, deliveries, metadata

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

logger = logging.getLogger(__name__)

digest_schedules = Table(
    "digest_schedules",
    metadata,
    Column("subscription", String(64), primary_key=True),
    Column("last_fire_at", UTCDateTime, nullable=False),  # the end of the last period sealed
)


@dataclass(frozen=True)
class DigestRun:
    subscription: str
    period_start: datetime
    period_end: datetime
    receivers: tuple[str, ...]  # those that had alerts: each got one digest


def digest_key(subscription: str, receiver: str, fire_at: datetime) -> str:
    return f"wdg_{subscription}_{receiver}_{fire_at.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def latest_fire(trigger: CronTrigger, after: datetime, now: datetime) -> datetime | None:
    """The last fire time in (after, now], in UTC; None when none has come."""
    fire: datetime | None = None
    nxt = trigger.get_next_fire_time(after, after)
    for _ in range(constants.DIGEST_MAX_FIRE_STEPS):
        if nxt is None or nxt > now:
            break
        fire = nxt
        nxt = trigger.get_next_fire_time(nxt, nxt)
    return fire.astimezone(UTC) if fire is not None else None


class Digester:
    """Seals the digests whose fire time has come. Keyword-only; the clock is injected."""

    def __init__(
        self,
        *,
        store: Store,
        subscriptions: Sequence[SubscriptionConfig],
        clock: Clock,
        on_sealed: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_sealed = on_sealed
        self.subscriptions = {s.id: s for s in subscriptions if s.mode == "digest" and s.id}
        self._triggers = {name: s.trigger() for name, s in self.subscriptions.items()}

    def next_fire_at(self, subscription: str, after: datetime) -> datetime | None:
        nxt = self._triggers[subscription].get_next_fire_time(after, after)
        return nxt.astimezone(UTC) if nxt is not None else None

    async def adopt_orphans(self) -> int:
        """Send now what waits for a digest subscription that is no longer configured.

        Its notices would otherwise stay open forever. Each joins its receiver's
        immediate stream, due now, unless the receiver already has the same alert
        there or was sent it (it was also routed there): then it is dropped, not
        sent twice.
        Returns how many notices were moved (the caller kicks the grouper).
        """
        from watcher.group import notices
        from watcher.route import IMMEDIATE

        n = notices
        async with self.store.transaction() as tx:
            conn, now = tx.conn, tx.now
            rows = (
                await conn.execute(
                    select(n.c.id, n.c.stream, n.c.receiver, n.c.alert_id, n.c.kind).where(
                        n.c.delivery_id.is_(None),
                        n.c.stream != IMMEDIATE,
                        n.c.stream.not_in(sorted(self.subscriptions)),
                    )
                )
            ).all()
            if not rows:
                return 0
            pairs = sorted({(r.alert_id, r.receiver) for r in rows})
            present = {
                (a, str(rc), str(k))
                for a, rc, k in await conn.execute(
                    select(n.c.alert_id, n.c.receiver, n.c.kind).where(
                        n.c.stream == IMMEDIATE, tuple_(n.c.alert_id, n.c.receiver).in_(pairs)
                    )
                )
            }
            # an alert delivered on the fast path has a plain delivery row, no notice
            present |= {
                (a, str(rc), "new")
                for a, rc in await conn.execute(
                    select(deliveries.c.alert_id, deliveries.c.receiver).where(
                        deliveries.c.kind.is_(None),
                        tuple_(deliveries.c.alert_id, deliveries.c.receiver).in_(pairs),
                    )
                )
            }
            moved: list[int] = []
            dropped: list[int] = []
            per_stream: dict[str, list[int]] = {}  # stream -> [moved, dropped]
            for r in rows:
                ident = (r.alert_id, str(r.receiver), str(r.kind))
                sent = ident in present
                (dropped if sent else moved).append(int(r.id))
                per_stream.setdefault(str(r.stream), [0, 0])[sent] += 1
                present.add(ident)
            if moved:
                await conn.execute(
                    update(n).where(n.c.id.in_(moved)).values(stream=IMMEDIATE, due_at=now)
                )
            if dropped:
                await conn.execute(delete(n).where(n.c.id.in_(dropped)))
        for stream, (n_moved, n_dropped) in sorted(per_stream.items()):
            logger.warning(
                "digest subscription %r is no longer configured: %d waiting alert "
                "notice(s) are sent to their receivers now instead (%d already sent)",
                stream, n_moved, n_dropped,
            )  # fmt: skip
        return len(moved)

    async def fire_due(self, only: str | None = None) -> list[DigestRun]:
        """Seal every due digest (of one subscription, given `only`)."""
        runs: list[DigestRun] = []
        for name in sorted(self.subscriptions):
            if only is None or name == only:
                run = await self._fire(self.subscriptions[name])
                if run is not None:
                    runs.append(run)
        if any(r.receivers for r in runs):
            self.on_sealed()
        return runs

    async def _fire(self, sub: SubscriptionConfig) -> DigestRun | None:
        from watcher.group import notices, seal

        assert sub.id is not None
        async with self.store.transaction() as tx:
            conn, now = tx.conn, tx.now
            # A write first: it locks the subscription's row (replicas take turns) and
            # creates it on first sight, when the first period starts.
            last = await conn.scalar(
                _insert(conn, digest_schedules)
                .values(subscription=sub.id, last_fire_at=now)
                .on_conflict_do_update(
                    index_elements=["subscription"], set_={"subscription": sub.id}
                )
                .returning(digest_schedules.c.last_fire_at)
            )
            assert last is not None
            fire = latest_fire(self._triggers[sub.id], last, now)
            if fire is None:
                return None
            n = notices
            rows = (
                await conn.execute(
                    select(n.c.id, n.c.alert_id, n.c.kind, n.c.receiver)
                    .where(
                        n.c.stream == sub.id,
                        n.c.delivery_id.is_(None),
                        n.c.created_at <= fire,
                    )
                    .order_by(n.c.receiver, n.c.id)
                )
            ).all()
            by_receiver: dict[str, list[object]] = {}
            for r in rows:
                by_receiver.setdefault(str(r.receiver), []).append(r)
            detail = {
                "subscription": sub.id,
                "period_start": last.isoformat(),
                "period_end": fire.isoformat(),
                "timezone": sub.timezone,
            }
            for receiver, members in by_receiver.items():
                await seal(
                    conn,
                    receiver=receiver,
                    members=members,
                    key=digest_key(sub.id, receiver, fire),
                    kind="digest",
                    now=now,
                    detail=detail,
                )
            await conn.execute(
                update(digest_schedules)
                .where(digest_schedules.c.subscription == sub.id)
                .values(last_fire_at=fire)
            )
        logger.info(
            "digest %s: period ending %s sealed for %d receiver(s)",
            sub.id, fire.isoformat(), len(by_receiver),
        )  # fmt: skip
        return DigestRun(sub.id, last, fire, tuple(sorted(by_receiver)))
