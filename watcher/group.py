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
- **Updates after a send.** An ingest can grow a story while its alert's
  notification is being claimed and sent: the ingest sees the notification as
  not yet sent, the message goes out with the old sources (replicas on one
  PostgreSQL store, or the outbox beside an ingest). So the outbox records on
  each claimed notification how many sources it listed (`carried_sources`: on
  the delivery row, or for a group's or digest's alerts on their notices), and
  the transaction that marks it sent compares that with the story's count now:
  grown, and a route asked for updates, it stages the update notice under the
  key the ingest would have used, so exactly one results when both stage it.

Digest subscriptions stage notices here too (stream = the subscription id,
no due time); watcher/digest.py seals them when the schedule fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection

from watcher import constants
from watcher.asyncdb import AsyncConnection
from watcher.config import Config
from watcher.errors import StoreError
from watcher.models import Clock, DeliveryState
from watcher.route import IMMEDIATE, Route
from watcher.silence import active_silences, list_silences, silenced
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
    # sources the notification listed for this alert, set when the outbox claims it
    Column("carried_sources", Integer),
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
        due = None
        if stream == IMMEDIATE:
            due = now + timedelta(seconds=self.policy(receiver).group_wait_s)
        return _notice(alert_id, receiver, stream, kind, source_count, now, due, reply_to)

    async def stories_grown(self, tx: Tx, grown: Mapping[str, int], *, updates: bool) -> Grown:
        """Stories now reported by more sources (story key -> source count).

        Their alerts' rows are updated; routes that asked for updates get an
        update notice (`updates`: does any subscription ask?). Returns the
        alerts updated and the notices staged.
        """
        conn, now = tx.conn, tx.now
        updated: list[tuple[int, str, int]] = []
        for key, count in sorted(grown.items()):
            # Row locks in (story key, id) order, as the outbox's update check takes them
            # (stage_updates_after_send): neither can hold one the other waits for.
            g = alerts.alias("growing")
            growing = (
                select(g.c.id)
                .where(g.c.story_key == key, g.c.source_count < count)
                .order_by(g.c.id)
                .with_for_update(key_share=True)  # NO KEY UPDATE: foreign-key checks pass
            )
            rows = await conn.execute(
                update(alerts)
                .where(alerts.c.id.in_(growing.scalar_subquery()), alerts.c.source_count < count)
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


def _notice(
    alert_id: int,
    receiver: str,
    stream: str,
    kind: str,
    source_count: int,
    now: datetime,
    due: datetime | None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """A row of `notices`; its key makes it staged once (an update: once per count)."""
    key = f"{kind[0]}:{stream}:{receiver}:{alert_id}"
    if kind == "update":
        key += f":{source_count}"
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


def _staging(conn: AsyncConnection | Connection) -> Any:
    """The insert of notice rows: a key already staged (by either side) is skipped."""
    return _insert(conn, notices).on_conflict_do_nothing().returning(notices.c.id)


async def _stage(conn: AsyncConnection, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    return len((await conn.execute(_staging(conn), rows)).all())


_CARRIED_PLAIN = (
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(carried_sources=bindparam("b_count"))
)
_CARRIED_MEMBERS = (
    update(notices)
    .where(notices.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(carried_sources=bindparam("b_count"))
)


def record_carried(conn: Connection, claimed: Sequence[ClaimedDelivery]) -> None:
    """Note on each claimed notification how many sources it lists for its alerts
    (in the claim's transaction; a retry's claim notes them again)."""
    plain: defaultdict[int, list[int]] = defaultdict(list)
    members: defaultdict[int, list[int]] = defaultdict(list)
    for c in claimed:
        if c.batch is None:
            plain[len(c.alert.all_sources)].append(c.delivery.id)
            continue
        for m in c.batch.members:
            if m.notice_id is not None:
                members[len(m.alert.all_sources)].append(m.notice_id)
    # one statement per count, not per row: nearly every story has the same few counts
    for count, ids in plain.items():
        conn.execute(_CARRIED_PLAIN, {"b_ids": ids, "b_count": count})
    for count, ids in members.items():
        conn.execute(_CARRIED_MEMBERS, {"b_ids": ids, "b_count": count})


def _sent_alerts() -> Any:
    """The alerts the given sent deliveries carried to routes that asked for updates:
    a plain delivery's alert, and the new alerts of a group or digest."""
    d, n, u = deliveries, notices, update_routes
    ids: Any = bindparam("b_ids", expanding=True)
    cols = (d.c.idempotency_key, n.c.created_at, n.c.due_at)
    stream = literal(IMMEDIATE).label("stream")
    routed = and_(
        u.c.alert_id == d.c.alert_id, u.c.receiver == d.c.receiver, u.c.stream == IMMEDIATE
    )
    plain = (
        select(d.c.alert_id, d.c.receiver, stream, d.c.carried_sources, *cols)
        .join(u, routed)
        # a lone alert sealed after its group wait has its notice: the update waits as long
        .outerjoin(n, n.c.delivery_id == d.c.id)
        .where(d.c.id.in_(ids), d.c.kind.is_(None))
    )
    member = and_(u.c.alert_id == n.c.alert_id, u.c.receiver == n.c.receiver,
                  u.c.stream == n.c.stream)  # fmt: skip
    batched = (
        select(n.c.alert_id, n.c.receiver, n.c.stream, n.c.carried_sources, *cols)
        .join(d, d.c.id == n.c.delivery_id)
        .join(u, member)
        .where(n.c.delivery_id.in_(ids), d.c.kind.is_not(None), n.c.kind == "new")
    )
    return union_all(plain, batched)


_SENT_ALERTS = _sent_alerts()  # built once: it runs whenever deliveries are marked sent
# The alerts' rows, locked (PostgreSQL; SQLite has one writer anyway) in the order an
# ingest growing their stories locks them: by story key, then id.
_LOCK_ALERTS = (
    select(alerts.c.id, alerts.c.rule_id, alerts.c.source_count)
    .where(alerts.c.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(alerts.c.story_key, alerts.c.id)
    .with_for_update(read=True)
)


def stage_updates_after_send(conn: Connection, delivery_ids: Sequence[int], now: datetime) -> int:
    """Update notices for stories grown since these deliveries were claimed; how many
    were staged. Runs in the transaction that marks them sent.

    For each alert a delivery carried to a route that asked for updates: when its
    story now counts more sources than the message listed, the update notice the
    ingest stages is staged here too, under the same key (one per count), so it
    exists once whichever side stages it, however often this runs. The alerts' rows
    are read under a share lock: an ingest growing a story meanwhile has either
    committed (its count is read here) or waits, and then sees the notification
    sent and stages the update itself. An update waits as long as its alert's
    notice did (none for the fast path; a digest's until the digest fires).
    """
    rows = [
        r for r in conn.execute(_SENT_ALERTS, {"b_ids": list(delivery_ids)})
        if r.carried_sources is not None  # claimed before the store recorded it
    ]  # fmt: skip
    if not rows:
        return 0
    current = {
        int(a.id): (str(a.rule_id), int(a.source_count))
        for a in conn.execute(_LOCK_ALERTS, {"b_ids": sorted({int(r.alert_id) for r in rows})})
    }
    grown = [r for r in rows if current[int(r.alert_id)][1] > r.carried_sources]
    if not grown:
        return 0
    active = active_silences(conn, now)
    staged: dict[str, dict[str, Any]] = {}
    for r in grown:
        rule, count = current[int(r.alert_id)]
        if silenced(rule, active, now):
            continue  # silenced alerts are stored, not sent: their updates neither
        due = None
        if r.stream == IMMEDIATE:
            waited = r.due_at - r.created_at if r.due_at is not None else timedelta(0)
            due = now + waited
        row = _notice(int(r.alert_id), r.receiver, r.stream, "update", count, now, due,
                      str(r.idempotency_key))  # fmt: skip
        staged[row["key"]] = row
    if not staged:
        return 0
    added = len(conn.execute(_staging(conn), list(staged.values())).all())
    if added:
        logger.info("%d update notice(s) for stories grown while being sent", added)
    return added


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
        .add_columns(
            n.c.delivery_id, n.c.kind.label("n_kind"), n.c.reply_to, n.c.id.label("notice_id")
        )
        .join(n, n.c.alert_id == alerts.c.id)
        .where(n.c.delivery_id.in_(ids))
        .order_by(n.c.delivery_id, n.c.id)
    )
    members: dict[int, list[BatchMember]] = {}
    for r in rows:
        m = r._mapping
        members.setdefault(int(m["delivery_id"]), []).append(
            BatchMember(
                _alert(m),
                update=m["n_kind"] == "update",
                reply_to=m["reply_to"],
                notice_id=int(m["notice_id"]),
            )
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
