"""Grouping, throttling and update notices: how alerts become notifications.

Prometheus Alertmanager is the model. An alert reaches a receiver through a
*stream*: the receiver's immediate stream, or the digest of a subscription that
names it (watcher/digest.py).

- **Fast path.** A receiver with `group_wait_s = 0` and no `max_per_hour` gets
  one delivery row per alert, enqueued in the ingest transaction: the outbox
  sends it at once, exactly as without grouping.
- **Grouping.** Otherwise each alert for the receiver is stored as a *notice*
  (a row of `notices`) in the ingest transaction, due `group_wait_s` after it
  arrived. When a receiver's oldest open notice is due, the `Grouper` seals all
  its open notices into one delivery row (a notification listing them) and the
  notices name that row: group membership is persisted, so a retry sends the
  same alerts under the same idempotency key. A group of one new alert is a
  plain delivery, the same as the fast path sends.
- **Throttle.** With `max_per_hour`, a receiver gets at most that many
  notifications in any hour (a sliding window kept on its `receiver_throttle`
  row). Alerts beyond it are not dropped: their notices stay open, and the
  next notification allowed lists them all.
- **Updates.** When a later copy grows a story's sources, its alerts' rows say
  so (`source_count`, `updated_at`) and nothing is sent, unless a subscription
  that routed the alert asked for updates (`notify_updates`): then an update
  notice joins the receiver's stream, marked as an update and naming the
  notification it follows (email threads it with In-Reply-To/References). An
  alert not yet sent needs no update: it is sent with the story's current
  sources.

Digest subscriptions stage notices here too (stream = the subscription id,
no due time); watcher/digest.py seals them when the schedule fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text, func, select, update
from sqlalchemy.engine import Connection

from watcher import constants
from watcher.asyncdb import AsyncConnection
from watcher.config import Config
from watcher.errors import StoreError
from watcher.models import Clock, DeliveryState
from watcher.route import IMMEDIATE, Route
from watcher.silence import list_silences, silenced
from watcher.store import (
    Batch,
    BatchMember,
    ClaimedDelivery,
    Store,
    Tx,
    UTCDateTime,
    _alert,
    _alert_query,
    _Id,
    _insert,
    alerts,
    deliveries,
    metadata,
)

logger = logging.getLogger(__name__)

notices = Table(
    "notices",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    # n:<stream>:<receiver>:<alert>, u:<stream>:<receiver>:<alert>:<sources>: staged once
    Column("key", String(250), nullable=False, unique=True),
    Column("receiver", String(64), nullable=False),
    Column("stream", String(64), nullable=False),  # '' immediate, else a digest subscription id
    Column("alert_id", _Id, ForeignKey("alerts.id"), nullable=False),
    Column("kind", String(8), nullable=False),  # "new" or "update"
    Column("source_count", Integer, nullable=False),
    Column("reply_to", String(200)),  # updates: the key of the notification they follow
    Column("created_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime),  # immediate stream: arrival + group_wait; digests: none
    Column("delivery_id", _Id, ForeignKey("deliveries.id")),  # set when sealed
    Index("ix_notices_open", "delivery_id", "stream", "receiver", "due_at"),
    Index("ix_notices_alert", "alert_id", "receiver", "stream"),
)

receiver_throttle = Table(
    "receiver_throttle",
    metadata,
    Column("receiver", String(64), primary_key=True),
    Column("recent", Text, nullable=False),  # JSON: when its last notifications were sealed
    Column("sealed_at", UTCDateTime),
)

update_routes = Table(
    "update_routes",
    metadata,
    Column("alert_id", _Id, ForeignKey("alerts.id"), primary_key=True),
    Column("receiver", String(64), primary_key=True),
    Column("stream", String(64), primary_key=True),
)

THROTTLE_WINDOW = timedelta(seconds=constants.THROTTLE_WINDOW_S)


@dataclass(frozen=True)
class ReceiverPolicy:
    group_wait_s: float = 0.0
    max_per_hour: int | None = None

    @property
    def fast(self) -> bool:
        """Each alert is its own delivery, enqueued with the alert."""
        return self.group_wait_s <= 0 and self.max_per_hour is None


FAST = ReceiverPolicy()


def receiver_policies(config: Config) -> dict[str, ReceiverPolicy]:
    return {r.id: ReceiverPolicy(r.group_wait_s, r.max_per_hour) for r in config.receivers}


@dataclass(frozen=True)
class Routed:
    """An alert the route stage sent somewhere."""

    alert_id: int
    source_count: int
    route: Route


@dataclass(frozen=True)
class Dispatched:
    deliveries: int  # fast-path rows enqueued
    staged: int  # notices stored (grouped, throttled, digest or update)


class Dispatcher:
    """Stores what routing decided, in the ingest transaction: deliveries or notices."""

    def __init__(self, policies: Mapping[str, ReceiverPolicy] | None = None) -> None:
        self.policies = dict(policies or {})

    def policy(self, receiver: str) -> ReceiverPolicy:
        # An unknown receiver takes the fast path; the outbox dead-letters its rows.
        return self.policies.get(receiver, FAST)

    async def dispatch(self, tx: Tx, routed: Sequence[Routed]) -> Dispatched:
        fast: list[tuple[int, str]] = []
        staged: list[dict[str, Any]] = []
        wants_updates: list[dict[str, Any]] = []
        for r in routed:
            receiver, stream = r.route.receiver, r.route.stream
            if r.route.notify_updates:
                wants_updates.append({"alert_id": r.alert_id, "receiver": receiver,
                                      "stream": stream})  # fmt: skip
            if stream == IMMEDIATE and self.policy(receiver).fast:
                fast.append((r.alert_id, receiver))
                continue
            staged.append(self._notice(r.alert_id, receiver, stream, "new", r.source_count, tx.now))
        delivered = await tx.enqueue(fast)
        if wants_updates:
            await tx.conn.execute(
                _insert(tx.conn, update_routes).on_conflict_do_nothing(), wants_updates
            )
        return Dispatched(delivered, await _stage(tx.conn, staged))

    def _notice(
        self,
        alert_id: int,
        receiver: str,
        stream: str,
        kind: str,
        source_count: int,
        now: datetime,
        reply_to: str | None = None,
    ) -> dict[str, Any]:
        key = f"{kind[0]}:{stream}:{receiver}:{alert_id}"
        if kind == "update":
            key += f":{source_count}"
        due = None
        if stream == IMMEDIATE:
            due = now + timedelta(seconds=self.policy(receiver).group_wait_s)
        return {
            "key": key,
            "receiver": receiver,
            "stream": stream,
            "alert_id": alert_id,
            "kind": kind,
            "source_count": source_count,
            "reply_to": reply_to,
            "created_at": now,
            "due_at": due,
        }

    async def stories_grown(self, tx: Tx, grown: Mapping[str, int], *, updates: bool) -> Grown:
        """Stories now reported by more sources (story key -> source count).

        Their alerts' rows are updated; routes that asked for updates get an
        update notice (`updates`: does any subscription ask?). Returns the
        alerts updated and the notices staged.
        """
        conn, now = tx.conn, tx.now
        updated: list[tuple[int, str, int]] = []
        for key, count in sorted(grown.items()):
            rows = await conn.execute(
                update(alerts)
                .where(alerts.c.story_key == key, alerts.c.source_count < count)
                .values(source_count=count, updated_at=now)
                .returning(alerts.c.id, alerts.c.rule_id)
            )
            updated += [(int(r.id), str(r.rule_id), count) for r in rows]
        if not updated or not updates:
            return Grown([a for a, _, _ in updated], 0)
        by_id = {a: (rule, count) for a, rule, count in updated}
        wanted = (
            await conn.execute(
                select(update_routes).where(update_routes.c.alert_id.in_(sorted(by_id)))
            )
        ).all()
        staged: list[dict[str, Any]] = []
        active = await list_silences(conn, now=now) if wanted else []
        for w in wanted:
            rule, count = by_id[int(w.alert_id)]
            if silenced(rule, active, now):
                continue  # silenced alerts are stored, not sent: their updates neither
            reply_to = await _needs_update(conn, int(w.alert_id), w.receiver, w.stream)
            if reply_to is not None:
                staged.append(
                    self._notice(
                        int(w.alert_id), w.receiver, w.stream, "update", count, now, reply_to
                    )
                )
        return Grown(sorted(by_id), await _stage(conn, staged))


@dataclass(frozen=True)
class Grown:
    alert_ids: list[int]  # alerts whose rows now count more sources
    staged: int  # update notices stored


async def _stage(conn: AsyncConnection, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    stmt = _insert(conn, notices).on_conflict_do_nothing().returning(notices.c.id)
    return len((await conn.execute(stmt, rows)).all())


async def _needs_update(
    conn: AsyncConnection, alert_id: int, receiver: str, stream: str
) -> str | None:
    """The key of the notification an update would follow, or None when none is due.

    None when the alert still waits to be sent to the receiver on this stream
    (it will go with the story's current sources) or its notification was
    never sent (dead-lettered).
    """
    n, d = notices, deliveries
    waiting = await conn.scalar(
        select(n.c.id)
        .where(
            n.c.alert_id == alert_id,
            n.c.receiver == receiver,
            n.c.stream == stream,
            n.c.delivery_id.is_(None),
        )
        .limit(1)
    )
    if waiting is not None:
        return None
    cols = (d.c.idempotency_key, d.c.state, d.c.attempts)
    row = (
        await conn.execute(
            select(*cols)
            .join(n, n.c.delivery_id == d.c.id)
            .where(
                n.c.alert_id == alert_id,
                n.c.receiver == receiver,
                n.c.stream == stream,
                n.c.kind == "new",
            )
            .order_by(d.c.id)
            .limit(1)
        )
    ).first()
    if row is None and stream == IMMEDIATE:  # sent on the fast path
        row = (
            await conn.execute(
                select(*cols)
                .where(d.c.alert_id == alert_id, d.c.receiver == receiver, d.c.kind.is_(None))
                .order_by(d.c.id)
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    attempted = row.state == DeliveryState.SENT.value or (
        row.state == DeliveryState.PENDING.value and row.attempts > 0
    )
    return str(row.idempotency_key) if attempted else None


async def seal(
    conn: AsyncConnection,
    *,
    receiver: str,
    members: Sequence[Any],
    key: str,
    kind: str | None,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> int:
    """One delivery row for `members` (notice rows: id, alert_id, kind); they name it."""
    lead = min(int(m.alert_id) for m in members)
    row = (
        await conn.execute(
            _insert(conn, deliveries)
            .values(
                alert_id=lead,
                receiver=receiver,
                state=DeliveryState.PENDING.value,
                attempts=0,
                idempotency_key=key,
                next_attempt_at=now,
                last_error="",
                created_at=now,
                kind=kind,
                detail=json.dumps(detail, sort_keys=True) if detail else None,
            )
            .on_conflict_do_nothing()
            .returning(deliveries.c.id)
        )
    ).first()
    if row is not None:
        delivery_id = int(row.id)
    else:  # already there (sealed before under this key): the notices belong to it
        found = await conn.scalar(
            select(deliveries.c.id).where(deliveries.c.idempotency_key == key)
        )
        if found is None:  # a unique constraint other than the key's refused the row
            raise StoreError(f"delivery {key} could not be stored: a unique constraint refused it")
        delivery_id = int(found)
    await conn.execute(
        update(notices)
        .where(notices.c.id.in_([int(m.id) for m in members]))
        .values(delivery_id=delivery_id)
    )
    return delivery_id


def _times(recent: str) -> list[datetime]:
    return sorted(datetime.fromisoformat(t) for t in json.loads(recent or "[]"))


def throttled_until(
    recent: Sequence[datetime], max_per_hour: int | None, now: datetime
) -> datetime | None:
    """When the receiver may be sent the next notification; None: now."""
    if max_per_hour is None:
        return None
    window = [t for t in recent if t > now - THROTTLE_WINDOW]
    if len(window) < max_per_hour:
        return None
    return window[-max_per_hour] + THROTTLE_WINDOW


@dataclass(frozen=True)
class Waiting:
    """Open notices of one receiver's stream: how many, and when the oldest arrived."""

    receiver: str
    stream: str  # IMMEDIATE ('') or a digest subscription id
    count: int
    oldest: datetime


async def waiting_notices(store: Store) -> list[Waiting]:
    """Every stream's open notices (for /metrics: a digest that never fires shows here)."""
    n = notices
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(n.c.receiver, n.c.stream, func.count(), func.min(n.c.created_at))
            .where(n.c.delivery_id.is_(None))
            .group_by(n.c.receiver, n.c.stream)
            .order_by(n.c.receiver, n.c.stream)
        )
        return [Waiting(str(r[0]), str(r[1]), int(r[2]), r[3]) for r in rows]


async def _recent_sends(store: Store, receivers: Sequence[str]) -> dict[str, list[datetime]]:
    """When each receiver's last notifications were sealed (its throttle window)."""
    if not receivers:
        return {}
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(receiver_throttle.c.receiver, receiver_throttle.c.recent).where(
                receiver_throttle.c.receiver.in_(sorted(receivers))
            )
        )
        return {str(r.receiver): _times(r.recent) for r in rows}


async def throttled_receivers(
    store: Store, policies: Mapping[str, ReceiverPolicy], now: datetime
) -> dict[str, datetime]:
    """Receivers at their `max_per_hour` now, and when they may be sent to again."""
    capped = {r: p.max_per_hour for r, p in policies.items() if p.max_per_hour is not None}
    out = {}
    for receiver, recent in (await _recent_sends(store, list(capped))).items():
        until = throttled_until(recent, capped[receiver], now)
        if until is not None and until > now:
            out[receiver] = until
    return out


class Grouper:
    """Seals each receiver's due notices into one notification, within its throttle.

    `flush()` does one pass (tests call it after moving the clock);
    `run_forever()` calls it whenever something is due or `kick()` is called.
    """

    def __init__(
        self,
        *,
        store: Store,
        dispatcher: Dispatcher,
        clock: Clock,
        on_sealed: Callable[[], None] = lambda: None,
        idle_check_s: float = constants.OUTBOX_SWEEP_INTERVAL_S,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.on_sealed = on_sealed
        self.idle_check_s = idle_check_s
        self._wake = asyncio.Event()
        self._stopping = False

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _open(self) -> list[tuple[str, datetime]]:
        """Receivers with open notices on their immediate stream, and the first due time."""
        n = notices
        async with self.store.engine.connect() as conn:
            rows = await conn.execute(
                select(n.c.receiver, func.min(n.c.due_at))
                .where(n.c.delivery_id.is_(None), n.c.stream == IMMEDIATE)
                .group_by(n.c.receiver)
                .order_by(n.c.receiver)
            )
            return [(str(r[0]), r[1]) for r in rows]

    async def flush(self) -> int:
        """Seal every receiver's due group; returns how many notifications were enqueued."""
        return await self._flush(await self._open())

    async def _flush(self, open_: list[tuple[str, datetime]]) -> int:
        now = self.clock()
        sealed = 0
        for receiver, first_due in open_:
            if first_due <= now:
                sealed += await self._seal(receiver)
        if sealed:
            self.on_sealed()
        return sealed

    async def _seal(self, receiver: str) -> int:
        policy = self.dispatcher.policy(receiver)
        async with self.store.transaction() as tx:
            conn, now = tx.conn, tx.now
            # A write first: it takes the receiver's row lock (PostgreSQL) or the write
            # lock (SQLite), so replicas seal a receiver one at a time.
            recent_json = await conn.scalar(
                _insert(conn, receiver_throttle)
                .values(receiver=receiver, recent="[]")
                .on_conflict_do_update(index_elements=["receiver"], set_={"receiver": receiver})
                .returning(receiver_throttle.c.recent)
            )
            recent = [t for t in _times(str(recent_json)) if t > now - THROTTLE_WINDOW]
            if throttled_until(recent, policy.max_per_hour, now) is not None:
                return 0  # folded into the next notification allowed
            n = notices
            members = (
                await conn.execute(
                    select(n.c.id, n.c.alert_id, n.c.kind, n.c.due_at)
                    .where(
                        n.c.receiver == receiver,
                        n.c.stream == IMMEDIATE,
                        n.c.delivery_id.is_(None),
                        n.c.created_at <= now,
                    )
                    .order_by(n.c.id)
                )
            ).all()
            if not members or min(m.due_at for m in members) > now:
                return 0
            if len(members) == 1 and members[0].kind == "new":
                # A lone alert: the same plain delivery the fast path sends.
                key, kind = f"wd_{members[0].alert_id}_{receiver}", None
            else:
                key, kind = f"wg_{members[0].id}_{receiver}", "group"
            await seal(conn, receiver=receiver, members=members, key=key, kind=kind, now=now)
            if policy.max_per_hour is not None:
                recent.append(now)
            await conn.execute(
                update(receiver_throttle)
                .where(receiver_throttle.c.receiver == receiver)
                .values(recent=json.dumps([t.isoformat() for t in recent]), sealed_at=now)
            )
        logger.debug("receiver %s: %d alert(s) in one notification", receiver, len(members))
        return 1

    async def next_due(self, open_: list[tuple[str, datetime]] | None = None) -> datetime | None:
        """When the next group is due, throttles considered; None when nothing is open.

        `open_` is `_open()`'s answer when the caller has one that is still current.
        """
        if open_ is None:
            open_ = await self._open()
        if not open_:
            return None
        throttled = [r for r, _ in open_ if self.dispatcher.policy(r).max_per_hour is not None]
        recent = await _recent_sends(self.store, throttled)
        now = self.clock()
        due: list[datetime] = []
        for receiver, first_due in open_:
            release = throttled_until(
                recent.get(receiver, []), self.dispatcher.policy(receiver).max_per_hour, now
            )
            due.append(max(first_due, release) if release else first_due)
        return min(due)

    async def run_forever(self) -> None:
        """Seal groups as they come due until stop()."""
        while not self._stopping:
            self._wake.clear()
            wait_s = self.idle_check_s
            try:
                open_ = await self._open()
                # nothing sealed: the open groups read a moment ago are still the open groups
                due = await self.next_due(None if await self._flush(open_) else open_)
            except Exception:  # a store hiccup must not end grouping
                logger.exception("grouping: sealing notifications failed")
            else:
                if due is not None:
                    ahead_s = (due - self.clock()).total_seconds()
                    wait_s = min(wait_s, max(ahead_s, constants.GROUP_MIN_WAIT_S))
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait_s)


def attach_batches(conn: Connection, claimed: list[ClaimedDelivery]) -> list[ClaimedDelivery]:
    """Give each claimed group or digest its alerts, in the order they came."""
    ids = [c.delivery.id for c in claimed if c.delivery.kind]
    if not ids:
        return claimed
    from watcher.story_store import sources_by_key

    d, n = deliveries, notices
    details = {
        int(r.id): json.loads(r.detail) if r.detail else {}
        for r in conn.execute(select(d.c.id, d.c.detail).where(d.c.id.in_(ids)))
    }
    rows = conn.execute(
        _alert_query()
        .add_columns(n.c.delivery_id, n.c.kind.label("n_kind"), n.c.reply_to)
        .join(n, n.c.alert_id == alerts.c.id)
        .where(n.c.delivery_id.in_(ids))
        .order_by(n.c.delivery_id, n.c.id)
    )
    members: dict[int, list[BatchMember]] = {}
    for r in rows:
        m = r._mapping
        members.setdefault(int(m["delivery_id"]), []).append(
            BatchMember(_alert(m), update=m["n_kind"] == "update", reply_to=m["reply_to"])
        )
    every = [b.alert for ms in members.values() for b in ms]
    sources = sources_by_key(conn, [a.story_key for a in every])
    for a in every:
        a.sources = sources.get(a.story_key, [])
    out = []
    for c in claimed:
        if c.delivery.kind:
            batch = Batch(
                c.delivery.kind,
                tuple(members.get(c.delivery.id, ())),
                details.get(c.delivery.id, {}),
            )
            c = replace(c, batch=batch)
        out.append(c)
    return out
