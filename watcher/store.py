"""The store: SQLAlchemy 2 async over SQLite (embedded default) or PostgreSQL.

Everything that must survive a restart lives here: source state (validators,
errors), seen items, alerts and the delivery outbox. Nothing here is
SQLite-only: inserts use ON CONFLICT DO NOTHING ... RETURNING (both dialects),
and outbox claims use leases with FOR UPDATE SKIP LOCKED where the database has it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    create_engine,
    event,
    func,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from watcher.asyncdb import AsyncConnection, AsyncEngine, create_async_engine
from watcher.constants import (
    SQLITE_CACHE_KIB,
    SQLITE_LOOP_CACHE_KIB,
    SQLITE_TRANSACTIONS_IN_FLIGHT,
)
from watcher.errors import StoreError
from watcher.migrate import upgrade
from watcher.models import Alert, Clock, Delivery, DeliveryState, Item

T = TypeVar("T")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Id = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()

sources = Table(
    "sources",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("body_hash", String(64)),
    Column("last_polled_at", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("last_error", Text),
    Column("last_error_reason", String(32)),
    Column("error_count", Integer, nullable=False, server_default="0"),
    Column("items_seen", BigInteger, nullable=False, server_default="0"),
    Column("next_poll_at", UTCDateTime),
    # issue 6: where a 301/308 moved the feed, and whether it is still polled (410 stops it)
    Column("moved_url", Text),
    Column("active", Boolean, nullable=False, server_default=true()),
    # the RSS <ttl> of the last body parsed, in seconds: a 304 or a byte-identical body is
    # not parsed again, and its next check still honours the feed's own ttl
    Column("ttl_s", Float),
    # the first successful poll (kept): a source that never brings an item is quiet from
    # then on, not from its last poll, which every healthy poll moves
    Column("first_success_at", UTCDateTime),
)

items = Table(
    "items",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("source_id", String(64), nullable=False),
    Column("dedup_key", String(600), nullable=False),
    Column("guid", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("published", UTCDateTime),
    Column("language", String(16), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("fetched_at", UTCDateTime, nullable=False),
    UniqueConstraint("source_id", "dedup_key", name="uq_items_source_key"),
    Index("ix_items_content_hash", "content_hash"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("rule_id", String(100), nullable=False),
    Column("rule_title", Text, nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("story_key", String(64), nullable=False),
    Column("item_id", _Id, ForeignKey("items.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("facets", Text, nullable=False, server_default="{}"),  # JSON: minerals, countries
    # issue 4 (noise control): the story's source count, kept current as the story grows
    Column("source_count", Integer, nullable=False, server_default="1"),
    Column("updated_at", UTCDateTime),
    UniqueConstraint("rule_id", "story_key", name="uq_alerts_rule_story"),
    Index("ix_alerts_story", "story_key"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("alert_id", _Id, ForeignKey("alerts.id"), nullable=False),
    Column("receiver", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("idempotency_key", String(64), nullable=False, unique=True),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("last_error", Text, nullable=False, server_default=""),
    Column("last_reason", String(32)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    # issue 4 (noise control): NULL for one alert; "group" or "digest" for a notification
    # that carries several alerts (or an update), its members in `notices` (watcher/group.py);
    # `detail` is JSON (a digest's period). Such a row's alert_id is its first alert's.
    Column("kind", String(16)),
    Column("detail", Text),
    # How many sources the notification listed, as the outbox last claimed and rendered
    # it (plain deliveries; the alerts of a group or digest keep theirs on `notices`).
    # After the send, a story grown since gets its update (watcher/group.py).
    Column("carried_sources", Integer),
    # Email: the recipients (a JSON list) that accepted the message on an attempt that
    # failed for others; a retry sends only to the rest, so nobody gets it twice. NULL: none.
    Column("delivered_to", Text),
    # One delivery per (alert, receiver) holds through the idempotency key (`wd_<alert>_
    # <receiver>`, unique); an alert may also be in a digest or an update for that receiver.
    Index("ix_deliveries_alert", "alert_id", "receiver"),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
)


settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# issue 6: WebSub subscriptions survive a restart. The secret itself is in `settings`
# (as every generated secret is); a row names it, so a row can be shown or logged.
websub_subscriptions = Table(
    "websub_subscriptions",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("hub", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("secret_ref", String(128), nullable=False),
    # wanted, requested, active, renewing (active, a renewal asked for), denied
    Column("state", String(16), nullable=False),
    Column("lease_until", UTCDateTime),
    # requests in a row the hub refused, never verified or denied; and when to ask next
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("retry_at", UTCDateTime),
    # one up on every write: processes sharing the store change a row only from the
    # version they read (`Store.write_websub`), so of two at once one wins
    Column("version", Integer, nullable=False, server_default="0"),
    # the [websub] callback_base_url the hub was last asked with (the callback's rest is
    # the source and a token from the secret, not kept here: the token lets a hub's
    # verification through); NULL: never asked, or asked by a watcher whose callbacks
    # had no token
    Column("callback_base", Text),
)

email_suppressions = Table(
    "email_suppressions",
    metadata,
    Column("receiver", String(64), primary_key=True),
    Column("address", String(320), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
)


# The polls' hot statements, built once (their IN lists expand at execution).
_POLL_STATES = select(
    sources.c.id,
    func.coalesce(sources.c.moved_url, sources.c.url),
    sources.c.etag,
    sources.c.last_modified,
    sources.c.body_hash,
    sources.c.error_count,
    sources.c.active,
    sources.c.ttl_s,
).where(sources.c.id.in_(bindparam("ids", expanding=True)))


def _kept_first(now: Any) -> Any:
    """first_success_at's value in an update of a successful poll (`now` a SQL value):
    the first one kept."""
    return func.coalesce(sources.c.first_success_at, now)


_POLLED_UNCHANGED = (
    update(sources)
    .where(sources.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        last_polled_at=bindparam("now", type_=UTCDateTime),
        last_success_at=bindparam("now", type_=UTCDateTime),
        first_success_at=_kept_first(bindparam("now", type_=UTCDateTime)),
        last_error=None,
        last_error_reason=None,
        error_count=0,
        next_poll_at=bindparam("next_at", type_=UTCDateTime),
    )
)


# What a source row keeps of the URL it was polled at: a new configured URL forgets an old
# move and a 410, and the old URL's validators, errors, next check and ttl (a stored next
# check would hold the new URL back by the old one's backoff).
_URL_STATE: dict[str, Any] = {
    "moved_url": None,
    "active": True,
    "etag": None,
    "last_modified": None,
    "body_hash": None,
    "error_count": 0,
    "next_poll_at": None,
    "ttl_s": None,
}


def _kept_unless_moved(url: str) -> dict[str, Any]:
    """sync_sources' upsert values for _URL_STATE: kept when the URL is the same."""
    return {k: case((sources.c.url == url, sources.c[k]), else_=v) for k, v in _URL_STATE.items()}


def _padded(ids: list[str]) -> list[str]:
    """`ids`, the last repeated up to a power of two: the batched statements' IN lists come
    in a few lengths, not one per batch size. SQLite keeps every length as a statement
    of its own in a connection's cache of prepared statements (~1 MB on the connection
    of the polls with 100 polls in flight, each length prepared again when evicted)."""
    if not ids:
        return ids
    return ids + ids[-1:] * ((1 << (len(ids) - 1).bit_length()) - len(ids))


class UnchangedPoll(NamedTuple):
    """A poll that brought nothing new (a 304, or the body of the last poll again)."""

    source_id: str
    delay_s: float  # until the next poll
    # (ETag, Last-Modified) to send from now on, when the answer brought others; else None
    validators: tuple[str | None, str | None] | None = None


@dataclass(frozen=True)
class SourceState:
    id: str
    url: str
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    last_polled_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_reason: str | None
    error_count: int
    items_seen: int
    next_poll_at: datetime | None
    moved_url: str | None = None
    active: bool = True
    ttl_s: float | None = None
    first_success_at: datetime | None = None

    @property
    def poll_url(self) -> str:
        """The URL to poll: where a permanent redirect moved the feed, else the configured one."""
        return self.moved_url or self.url


class SourceSchedule(NamedTuple):
    """What the poll clock reads of a source's row at start-up (see `Store.poll_schedules`)."""

    id: str
    active: bool  # False once a 410 stopped the source
    next_poll_at: datetime | None  # when the last run said to poll it next


class SourceHealth(NamedTuple):
    """What the source-health monitor reads of a source's row (`Store.health_states`)."""

    id: str
    active: bool
    error_count: int
    last_error: str | None
    last_error_reason: str | None
    last_polled_at: datetime | None
    last_success_at: datetime | None
    first_success_at: datetime | None


# the narrow reads of source rows (Store._source_columns)
_Row = TypeVar("_Row", SourceHealth, SourceSchedule)


@dataclass(frozen=True, slots=True)
class PollState:
    """What a poll reads of its source's row: where to fetch, the validators, the errors."""

    id: str
    poll_url: str  # where a 301/308 moved the feed, else the configured URL
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    error_count: int
    active: bool
    ttl_s: float | None  # the feed's RSS <ttl> when its body was last parsed


@dataclass(frozen=True)
class WebSubRow:
    """A stored WebSub subscription: `secret_ref` names its secret (`Store.secret`)."""

    source_id: str
    hub: str
    topic: str
    secret_ref: str
    state: str
    lease_until: datetime | None
    attempts: int = 0
    retry_at: datetime | None = None
    version: int = 0  # one up on every write (`Store.write_websub`)
    callback_base: str | None = None  # the callback_base_url the hub was last asked with


@dataclass(frozen=True)
class NewAlert:
    rule_id: str
    rule_title: str
    event_type: str
    severity: str
    story_key: str
    item_id: int
    facets: dict[str, list[str]] = field(default_factory=dict)
    source_count: int = 1  # the story's, when the alert is raised


@dataclass(frozen=True)
class Outcome:
    """What became of one attempted delivery, to be recorded."""

    delivery_id: int
    state: str  # "sent", "retry", "dead", "deferred" (not attempted: its breaker is open)
    reason: str | None = None
    error: str = ""
    retry_at: datetime | None = None
    delivered_to: tuple[str, ...] = ()  # email: recipients that have it (DeliveryError.delivered)


@dataclass(frozen=True)
class BatchMember:
    """One alert of a grouped notification or digest; an update repeats an alert already sent."""

    alert: Alert
    update: bool = False
    reply_to: str | None = None  # updates: idempotency key of the notification first sent
    notice_id: int | None = None  # its row of `notices`


@dataclass(frozen=True)
class Batch:
    """What a notification carrying several alerts (or an update) holds, in order."""

    kind: str  # "group" or "digest"
    members: tuple[BatchMember, ...]
    detail: dict[str, Any] = field(default_factory=dict)  # digests: subscription, period, zone

    @property
    def single(self) -> bool:
        return len(self.members) == 1 and self.kind == "group"


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery: Delivery
    alert: Alert
    batch: Batch | None = None  # None: the one alert above, as a plain alert notification
    lease_until: datetime | None = None  # set when claimed: send before it lapses


def _insert(conn: AsyncConnection | Connection, table: Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing().

    Imported here, not at the top: a service on SQLite never loads the PostgreSQL
    dialect (~2 MB), and the engine has loaded the one in use already.
    """
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


class Tx:
    """One store transaction: what a poll writes, all or nothing."""

    def __init__(self, conn: AsyncConnection, now: datetime) -> None:
        self.conn = conn
        self.now = now

    async def insert_new_items(self, batch: Sequence[Item]) -> list[tuple[int, Item]]:
        """Insert items not seen before; returns (row id, item) for the new ones only."""
        unique: dict[tuple[str, str], Item] = {}
        for item in batch:
            unique.setdefault((item.source_id, item.dedup_key), item)
        rows = [
            {
                "source_id": i.source_id,
                "dedup_key": i.dedup_key,
                "guid": i.guid,
                "url": i.url,
                "title": i.title,
                "text": i.text,
                "published": i.published,
                "language": i.language[:16],
                "content_hash": i.content_hash,
                "fetched_at": self.now,
            }
            for i in unique.values()
        ]
        if not rows:
            return []
        stmt = (
            _insert(self.conn, items)
            .on_conflict_do_nothing(index_elements=["source_id", "dedup_key"])
            .returning(items.c.id, items.c.source_id, items.c.dedup_key)
        )
        # executemany with RETURNING: SQLAlchemy batches it ("insertmanyvalues").
        result = await self.conn.execute(stmt, rows)
        return [(row.id, unique[(row.source_id, row.dedup_key)]) for row in result]

    async def insert_alerts(self, batch: Sequence[NewAlert]) -> list[int]:
        """Insert alerts; one per (rule, story): existing ones are skipped. Returns new ids."""
        if not batch:
            return []
        rows = [
            {
                "rule_id": a.rule_id,
                "rule_title": a.rule_title,
                "event_type": a.event_type,
                "severity": a.severity,
                "story_key": a.story_key,
                "item_id": a.item_id,
                "created_at": self.now,
                "facets": json.dumps(a.facets, ensure_ascii=False, sort_keys=True),
                "source_count": a.source_count,
            }
            for a in batch
        ]
        stmt = (
            _insert(self.conn, alerts)
            .on_conflict_do_nothing(index_elements=["rule_id", "story_key"])
            .returning(alerts.c.id)
        )
        return [row.id for row in await self.conn.execute(stmt, rows)]

    async def enqueue(self, pairs: Sequence[tuple[int, str]]) -> int:
        """Add one pending delivery per (alert id, receiver); returns how many were new."""
        rows = [
            {
                "alert_id": alert_id,
                "receiver": receiver,
                "state": DeliveryState.PENDING.value,
                "attempts": 0,
                "idempotency_key": f"wd_{alert_id}_{receiver}",
                "next_attempt_at": self.now,
                "last_error": "",
                "created_at": self.now,
            }
            for alert_id, receiver in pairs
        ]
        if not rows:
            return 0
        # No conflict target: the key is unique (and so is (alert, receiver) on stores
        # created before digests and updates), and any of them means "already there".
        stmt = _insert(self.conn, deliveries).on_conflict_do_nothing().returning(deliveries.c.id)
        return len((await self.conn.execute(stmt, rows)).all())

    async def record_poll(
        self,
        source_id: str,
        *,
        etag: str | None,
        last_modified: str | None,
        body_hash: str | None,
        new_items: int,
        next_poll_at: datetime | None,
        ttl_s: float | None = None,
    ) -> None:
        """A successful poll: save validators (only now), reset the error counter."""
        await self.conn.execute(
            update(sources)
            .where(sources.c.id == source_id)
            .values(
                etag=etag,
                last_modified=last_modified,
                body_hash=body_hash,
                last_polled_at=self.now,
                last_success_at=self.now,
                first_success_at=_kept_first(literal(self.now, type_=UTCDateTime)),
                last_error=None,
                last_error_reason=None,
                error_count=0,
                items_seen=sources.c.items_seen + new_items,
                next_poll_at=next_poll_at,
                ttl_s=ttl_s,
            )
        )

    async def count_new_items(self, source_id: str, new_items: int) -> None:
        """Items that came other than by a poll (a WebSub push): counted in the source's
        items seen, its poll state (validators, errors, next poll) left as the polls set it."""
        await self.conn.execute(
            update(sources)
            .where(sources.c.id == source_id)
            .values(items_seen=sources.c.items_seen + new_items)
        )


def _check_sqlite_file(url: str) -> None:
    """OSError, saying why, when a SQLite store's file cannot be opened for writing (its
    directory missing, or not ours to write: a Docker volume): told before the driver
    tries, whose failed connection leaves its thread calling back into a closed loop."""
    database = make_url(url).database
    if not _SQLiteOnLoop.usable(url) or database is None or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(f"{path}: not readable and writable by this user")
        return
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no directory {folder} for the database file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder}: cannot create the database file there")


def _why(exc: BaseException) -> str:
    """What went wrong opening a store, in one line: the driver's own words, without the
    SQL or the link to SQLAlchemy's docs its errors append."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(cause).split("\n")[0].strip() or type(cause).__name__
    return f"{type(cause).__name__}: {text}" if type(cause).__name__ not in text else text


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# SQLite transactions are begun by the sqlite3 driver ("legacy transaction control", the
# default on every Python watcher supports): BEGIN only before a transaction's first
# INSERT/UPDATE/DELETE, which then waits for the write lock (busy_timeout) with a fresh
# snapshot; a SELECT before it runs on its own. So no store transaction can fail with
# SQLITE_BUSY_SNAPSHOT: "database is locked" at once, whatever the timeout, for a
# transaction that read and then writes after another connection committed. Begin
# transactions at their first statement instead (SQLAlchemy's BEGIN recipe, or the
# driver's autocommit=False) and every transaction that reads before it writes needs
# BEGIN IMMEDIATE. tests/test_sqlite_contention.py runs the service's paths with a
# commit from another connection before each statement.
def _sqlite_pragmas(
    *, busy_timeout_ms: int = 30_000, cache_kib: int = SQLITE_CACHE_KIB
) -> Callable[[Any, Any], None]:
    """A "connect" listener setting a new SQLite connection's pragmas."""

    def connected(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # the page cache holds the hot B-tree pages of the indexes every insert walks; with
        # 512 KiB, inserts into a 100k-item store ran at half the 1k rate (bench/cluster.py)
        cur.execute(f"PRAGMA cache_size=-{cache_kib}")
        cur.close()

    return connected


class _SQLiteOnLoop:
    """SQLite: where short, hot transactions run, whole at a time: the outbox's claims
    and records, and the polls' batched source-state reads and saves.

    Through aiosqlite every statement is several hops to the driver's thread
    and back (cursor, execute, fetch, close), and a thread of our own still
    trades the GIL with the event loop on every row SQLite returns: both cost
    more than the transaction itself (measured: ~20% of the outbox's CPU, and
    claims too slow to keep the sends busy). So a transaction runs on the
    event loop, synchronously, on a connection of its own that never waits for
    the write lock: a claim of a few hundred rows blocks the loop for a few
    milliseconds of work. When another writer holds the lock it fails at its
    first statement, before changing anything, and runs again in a thread on a
    second connection that waits for the lock as every other connection does.
    """

    def __init__(self, url: str) -> None:
        u = make_url(url).set(drivername="sqlite+pysqlite")
        # Short transactions, a few pages each: a small page cache serves them. A big one
        # filled when nothing reset it (SQLite drops a connection's cache when another
        # connection has written since its last transaction): while sources answer 304,
        # these connections are the only writer, and every source's row stayed.
        self._now = create_engine(u, connect_args={"timeout": 0})
        event.listen(
            self._now,
            "connect",
            _sqlite_pragmas(busy_timeout_ms=0, cache_kib=SQLITE_LOOP_CACHE_KIB),  # never waits
        )
        self._waiting = create_engine(u, connect_args={"timeout": 30})
        event.listen(self._waiting, "connect", _sqlite_pragmas(cache_kib=SQLITE_LOOP_CACHE_KIB))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="watcher-outbox-db")

    @staticmethod
    def usable(url: str) -> bool:
        """A SQLite file (a second connection to an in-memory database sees another one)."""
        u = make_url(url)
        return u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:")

    async def run(self, fn: Callable[[Connection], T]) -> T:
        try:
            return _in_transaction(self._now, fn)
        except OperationalError as exc:
            if not _is_busy(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, _in_transaction, self._waiting, fn)

    async def close(self) -> None:
        self._now.dispose()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._waiting.dispose)
        self._thread.shutdown()


def _in_transaction(engine: Engine, fn: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return fn(conn)


def _is_busy(exc: OperationalError) -> bool:
    """Another connection holds the lock (SQLITE_BUSY and its extended codes)."""
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    return (
        isinstance(orig, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF == sqlite3.SQLITE_BUSY)
    )


class Store:
    """The database. Open it with ``await store.open()``; close with ``await store.close()``."""

    def __init__(self, url: str, *, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self._engine: AsyncEngine | None = None
        # SQLite has one writer at a time: more write transactions in flight would only
        # wait in its busy loop (unfairly), each holding a pooled connection and its buffers
        self._tx_slots = asyncio.Semaphore(
            SQLITE_TRANSACTIONS_IN_FLIGHT if _is_sqlite(url) else 1000
        )
        self._sqlite_on_loop: _SQLiteOnLoop | None = None  # SQLite: see _SQLiteOnLoop

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store is not open")
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def open(self) -> None:
        """Connect and bring the schema up to date; StoreError, naming the database (its
        password hidden) and why, when it cannot be opened."""
        try:
            _check_sqlite_file(self.url)
            await self._open()
        except StoreError:
            raise
        except (OSError, ImportError, SQLAlchemyError, TimeoutError) as exc:
            await self.close()
            where = make_url(self.url).render_as_string(hide_password=True)
            raise StoreError(f"store {where}: cannot open: {_why(exc)}") from exc

    async def _open(self) -> None:
        kwargs: dict[str, Any] = {}
        if _is_sqlite(self.url):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        engine = create_async_engine(self.url, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas())
        self._engine = engine
        async with engine.begin() as conn:
            await conn.run_sync(upgrade, metadata)
        if _SQLiteOnLoop.usable(self.url):
            self._sqlite_on_loop = _SQLiteOnLoop(self.url)

    async def close(self) -> None:
        if self._sqlite_on_loop is not None:
            await self._sqlite_on_loop.close()
            self._sqlite_on_loop = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def _loop_tx(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one short transaction (on SQLite: on the loop; see _SQLiteOnLoop)."""
        if self._sqlite_on_loop is not None:
            return await self._sqlite_on_loop.run(fn)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._tx_slots, self.engine.begin() as conn:
            yield Tx(conn, self.clock())

    # ------------------------------------------------------------ sources

    async def sync_sources(self, configured: Iterable[tuple[str, str]]) -> None:
        """Make sure every configured (id, url) has a row; a changed URL is updated."""
        async with self.engine.begin() as conn:
            for source_id, url in configured:
                stmt = (
                    _insert(conn, sources)
                    .values(id=source_id, url=url, error_count=0, items_seen=0)
                    .on_conflict_do_update(
                        index_elements=["id"],
                        set_={"url": url, **_kept_unless_moved(url)},
                    )
                )
                await conn.execute(stmt)

    async def source_state(self, source_id: str) -> SourceState | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(sources).where(sources.c.id == source_id))).first()
        return SourceState(**row._asdict()) if row else None

    async def list_sources(self) -> list[SourceState]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(sources).order_by(sources.c.id))
            return [SourceState(**r._asdict()) for r in rows]

    async def health_states(self) -> dict[str, SourceHealth]:
        """What the health monitor judges each source by and /healthz shows, by id."""
        return await self._source_columns(SourceHealth)

    async def poll_schedules(self) -> dict[str, SourceSchedule]:
        """Each source's activity and next check, by id: what the poll clock needs at
        start-up."""
        return await self._source_columns(SourceSchedule)

    async def _source_columns(self, row_type: type[_Row]) -> dict[str, _Row]:
        """The columns `row_type` names (its fields, `id` among them) of every source row,
        by id: not whole rows, which at 10,000 sources took 4 MB at every read."""
        query = select(*(sources.c[name] for name in row_type._fields))
        async with self.engine.connect() as conn:
            return {r.id: row_type._make(r) for r in await conn.execute(query)}

    async def record_poll_error(
        self, source_id: str, *, reason: str, error: str, next_poll_at: datetime | None
    ) -> int:
        """Record a failed poll; returns the consecutive error count."""
        now = self.clock()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(sources)
                .where(sources.c.id == source_id)
                .values(
                    last_polled_at=now,
                    last_error=error[:2000],
                    last_error_reason=reason,
                    error_count=sources.c.error_count + 1,
                    next_poll_at=next_poll_at,
                )
            )
            count = await conn.scalar(
                select(sources.c.error_count).where(sources.c.id == source_id)
            )
        return int(count or 0)

    # ------------------------------------------------------------ settings

    async def secret(self, name: str) -> bytes:
        """A random secret created on first use and kept in the store (shared by replicas)."""
        key = f"secret:{name}"
        async with self.engine.begin() as conn:
            await conn.execute(
                _insert(conn, settings)
                .values(key=key, value=secrets.token_urlsafe(32))
                .on_conflict_do_nothing(index_elements=["key"])
            )
            value = await conn.scalar(select(settings.c.value).where(settings.c.key == key))
        return str(value).encode()

    async def suppress(self, receiver: str, address: str) -> None:
        """Unsubscribe an address from an email receiver."""
        async with self.engine.begin() as conn:
            await conn.execute(
                _insert(conn, email_suppressions)
                .values(receiver=receiver, address=address.lower(), created_at=self.clock())
                .on_conflict_do_nothing(index_elements=["receiver", "address"])
            )

    async def suppressed(self, receiver: str) -> set[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(email_suppressions.c.address).where(
                    email_suppressions.c.receiver == receiver
                )
            )
            return {r[0] for r in rows}

    async def write_websub(self, sub: WebSubRow, *, seen: int | None) -> int | None:
        """Write the WebSub subscription of a source, unless another process changed it first.

        `seen` is the version of the stored row `sub` was worked out from: the row is
        written only while it still has that version (one conditional statement, so of
        several processes one wins). None for a subscription not stored yet (a poll's
        discovery): written when the source has no row, or one of another hub or topic
        (the feed moved); a row of the same hub and topic stays, whoever wrote it (its
        secret is the one the hub has, or will have). Returns the written row's version,
        or None when the stored row won: read it again.
        """
        t = websub_subscriptions
        values = {
            "hub": sub.hub,
            "topic": sub.topic,
            "secret_ref": sub.secret_ref,
            "state": sub.state,
            "lease_until": sub.lease_until,
            "attempts": sub.attempts,
            "retry_at": sub.retry_at,
            "callback_base": sub.callback_base,
        }
        async with self.engine.begin() as conn:
            if seen is None:
                stmt = (
                    _insert(conn, t)
                    .values(source_id=sub.source_id, version=0, **values)
                    .on_conflict_do_update(
                        index_elements=["source_id"],
                        set_={**values, "version": t.c.version + 1},
                        where=or_(t.c.hub != sub.hub, t.c.topic != sub.topic),
                    )
                )
            else:
                stmt = (
                    update(t)
                    .where(t.c.source_id == sub.source_id, t.c.version == seen)
                    .values(**values, version=seen + 1)
                )
            version = (await conn.execute(stmt.returning(t.c.version))).scalar_one_or_none()
        return None if version is None else int(version)

    async def websub_subscription(self, source_id: str) -> WebSubRow | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(websub_subscriptions).where(
                        websub_subscriptions.c.source_id == source_id
                    )
                )
            ).first()
        return WebSubRow(**row._asdict()) if row else None

    async def websub_subscriptions(self) -> list[WebSubRow]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(websub_subscriptions))
            return [WebSubRow(**r._asdict()) for r in rows]

    async def poll_states(self, source_ids: Sequence[str]) -> list[PollState | None]:
        """Many sources' poll state in one query, aligned with `source_ids`.

        Only what a poll reads, no timestamps: per row, that is a fraction of the
        cost of a whole `SourceState` (parsing its datetimes dominated).
        """
        ids = _padded(list(set(source_ids)))

        def read(conn: Connection) -> dict[str, PollState]:
            return {r[0]: PollState(*r) for r in conn.execute(_POLL_STATES, {"ids": ids})}

        by_id = await self._loop_tx(read)
        return [by_id.get(i) for i in source_ids]

    async def record_polls_unchanged(self, polls: Sequence[UnchangedPoll]) -> list[None]:
        """Polls that brought nothing new (a 304, or the last body again), in one transaction:
        the source is healthy, its errors reset; (source id, seconds to its next
        poll, and the validators to keep from now on when the answer changed them).

        Sources due again after the same delay, their validators unchanged (most), share
        one statement, so a batch is usually one UPDATE, not one per source; every next
        poll time is counted from the time saved as `last_polled_at`.
        """
        now = self.clock()
        by_delay: dict[float, list[str]] = {}
        new_validators: list[UnchangedPoll] = []
        for poll in polls:
            if poll.validators is None:
                by_delay.setdefault(poll.delay_s, []).append(poll.source_id)
            else:
                new_validators.append(poll)

        def save(conn: Connection) -> None:
            for delay_s, ids in by_delay.items():
                next_at = now + timedelta(seconds=delay_s)
                params = {"ids": _padded(ids), "now": now, "next_at": next_at}
                conn.execute(_POLLED_UNCHANGED, params)
            for poll in new_validators:
                assert poll.validators is not None
                etag, last_modified = poll.validators
                next_at = now + timedelta(seconds=poll.delay_s)
                conn.execute(
                    _POLLED_UNCHANGED.values(etag=etag, last_modified=last_modified),
                    {"ids": [poll.source_id], "now": now, "next_at": next_at},
                )

        await self._loop_tx(save)
        return [None] * len(polls)

    async def record_moved(self, source_id: str, url: str) -> None:
        """A 301/308 chain moved the feed: poll the new URL from now on."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(sources).where(sources.c.id == source_id).values(moved_url=url)
            )

    async def deactivate_source(self, source_id: str, reason: str) -> None:
        """Stop polling a source (HTTP 410) until its config changes."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(sources)
                .where(sources.c.id == source_id)
                .values(
                    active=False,
                    last_error=reason[:2000],
                    last_error_reason="gone",
                    last_polled_at=self.clock(),
                    next_poll_at=None,
                )
            )

    # ------------------------------------------------------------ outbox

    async def claim_deliveries(
        self,
        *,
        limit: int,
        lease_s: float,
        exclude_receivers: Sequence[str] = (),
        record: Sequence[Outcome] = (),
        quotas: Mapping[str, int] | None = None,
        updates: bool = True,
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries, after recording `record`, in one transaction.

        Up to `limit` rows of any receiver but `exclude_receivers`; or, given
        `quotas`, up to quotas[r] rows of each receiver r, and only when those
        find nothing, up to `limit` rows of receivers not named (rows left by a
        receiver since removed from the config). A lease that expires (its
        worker crashed) makes the row due again. `updates`: may a subscription ask
        for update notifications? Then each claimed row notes how many sources its
        message lists, and each sent one is checked for a story grown meanwhile.
        """
        now = self.clock()

        def claim(conn: Connection) -> list[ClaimedDelivery]:
            if record:
                _record(conn, record, now, updates=updates)
            claimed: list[int] = []
            if quotas is None:
                claimed = _lease(conn, now, lease_s, limit, exclude=exclude_receivers)
            else:
                for receiver, n in quotas.items():
                    if n > 0:
                        claimed += _lease(conn, now, lease_s, n, only=receiver)
                if not claimed:
                    others = [*quotas, *exclude_receivers]
                    claimed = _lease(conn, now, lease_s, limit, exclude=others)
            if not claimed:
                return []
            d = deliveries
            rows = conn.execute(_DELIVERY_QUERY.where(d.c.id.in_(claimed)).order_by(d.c.id))
            lease_until = now + timedelta(seconds=lease_s)
            out = [_claimed(r._mapping, lease_until) for r in rows]
            # "also reported by": every source of each alert's story, for the notifiers
            sources = _story_store.sources_by_key(conn, [c.alert.story_key for c in out])
            for c in out:
                c.alert.sources = sources.get(c.alert.story_key, [])
            if any(c.delivery.kind for c in out):  # groups and digests: their alerts too
                out = _group.attach_batches(conn, out)
            if updates:  # what each message will say, for the check after the send
                _group.record_carried(conn, out)
            return out

        return await self._loop_tx(claim)

    async def record_outcomes(self, outcomes: Sequence[Outcome], *, updates: bool = True) -> None:
        """Record a batch of attempts in one transaction, releasing their leases
        (`updates`: as for `claim_deliveries`)."""
        if outcomes:
            now = self.clock()
            await self._loop_tx(lambda conn: _record(conn, outcomes, now, updates=updates))

    async def mark_sent(self, delivery_id: int) -> None:
        await self.record_outcomes([Outcome(delivery_id, "sent")])

    async def mark_failed(
        self, delivery_id: int, *, reason: str, error: str, retry_at: datetime | None
    ) -> None:
        """Record a failed attempt: due again at `retry_at`, or dead-lettered when None."""
        state = "retry" if retry_at is not None else "dead"
        await self.record_outcomes([Outcome(delivery_id, state, reason, error, retry_at)])

    async def delivery_states(self, delivery_ids: Sequence[int]) -> dict[int, str]:
        """The state of each of these deliveries that exists, by id."""
        query = select(deliveries.c.id, deliveries.c.state).where(
            deliveries.c.id.in_(list(delivery_ids))
        )
        async with self.engine.connect() as conn:
            return {int(i): str(state) for i, state in await conn.execute(query)}

    async def retry_dead(self, delivery_ids: Sequence[int] | None = None) -> int:
        """Make dead deliveries pending again (all of them when ids is None)."""
        now = self.clock()
        stmt = update(deliveries).where(deliveries.c.state == DeliveryState.DEAD.value)
        if delivery_ids is not None:
            stmt = stmt.where(deliveries.c.id.in_(list(delivery_ids)))
        async with self.engine.begin() as conn:
            result = await conn.execute(
                stmt.values(state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now)
            )
        return int(result.rowcount or 0)

    async def list_deliveries(
        self, *, state: DeliveryState | None = None, receiver: str | None = None, limit: int = 1000
    ) -> list[ClaimedDelivery]:
        q = _delivery_query()
        if state is not None:
            q = q.where(deliveries.c.state == state.value)
        if receiver is not None:
            q = q.where(deliveries.c.receiver == receiver)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q.order_by(deliveries.c.id).limit(limit))
            out = [_claimed(r._mapping) for r in rows]
            return await conn.run_sync(_group.attach_batches, out)

    async def delivery_counts(self) -> dict[tuple[str, str, str], int]:
        """(receiver, state, last failure reason or '') -> count."""
        d = deliveries
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(d.c.receiver, d.c.state, d.c.last_reason, func.count()).group_by(
                    d.c.receiver, d.c.state, d.c.last_reason
                )
            )
            return {(r[0], r[1], r[2] or ""): int(r[3]) for r in rows}

    async def list_alerts(self, *, limit: int = 1000) -> list[Alert]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(_alert_query().order_by(alerts.c.id).limit(limit))
            return [_alert(r._mapping) for r in rows]

    async def count_items(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(items)) or 0)


def _lease(
    conn: Connection,
    now: datetime,
    lease_s: float,
    limit: int,
    *,
    only: str | None = None,
    exclude: Sequence[str] = (),
) -> list[int]:
    """Lease up to `limit` due rows (of one receiver, or of all but some); their ids."""
    stmt = _lease_statement(conn.dialect.name, by_receiver=only is not None)
    params = {"b_now": now, "b_lease_until": now + timedelta(seconds=lease_s), "b_limit": limit}
    params |= {"b_receiver": only} if only is not None else {"b_exclude": list(exclude)}
    return list(conn.execute(stmt, params).scalars().all())


@functools.cache
def _lease_statement(dialect: str, *, by_receiver: bool) -> Any:
    """The lease statement, built once per dialect and kind (it runs on every claim)."""
    d = deliveries
    now = bindparam("b_now", type_=UTCDateTime())
    due = (
        select(d.c.id)
        .where(
            d.c.state == DeliveryState.PENDING.value,
            d.c.next_attempt_at <= now,
            or_(d.c.lease_until.is_(None), d.c.lease_until < now),
        )
        .order_by(d.c.next_attempt_at, d.c.id)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )
    if by_receiver:
        due = due.where(d.c.receiver == bindparam("b_receiver"))
    else:
        due = due.where(d.c.receiver.not_in(bindparam("b_exclude", expanding=True)))
    claim = update(d).where(d.c.id.in_(due.scalar_subquery()))
    if dialect != "sqlite":
        # PostgreSQL re-checks these on rows another replica changed meanwhile.
        # (SQLite runs the statement under its one write lock, and given them
        # its planner scans every pending row instead of looking the ids up.)
        claim = claim.where(
            d.c.state == DeliveryState.PENDING.value,
            or_(d.c.lease_until.is_(None), d.c.lease_until < now),
        )
    return claim.values(
        lease_until=bindparam("b_lease_until", type_=UTCDateTime()), attempts=d.c.attempts + 1
    ).returning(d.c.id)


_MARK_SENT = (
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(
        state=DeliveryState.SENT.value,
        sent_at=bindparam("b_now", type_=UTCDateTime()),
        lease_until=None,
        last_reason=None,
    )
)
_RELEASE = (  # back, uncharged: the attempt was not made
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(lease_until=None, attempts=deliveries.c.attempts - 1)
)


def _record(
    conn: Connection, outcomes: Sequence[Outcome], now: datetime, *, updates: bool = True
) -> None:
    d = deliveries
    sent = [o.delivery_id for o in outcomes if o.state == "sent"]
    deferred = [o.delivery_id for o in outcomes if o.state == "deferred"]
    if sent:  # the common case: one statement for the whole group
        conn.execute(_MARK_SENT, {"b_ids": sent, "b_now": now})
        if updates:  # stories grown while these were sent: their update notices (a
            # racing ingest may have seen them as not yet sent)
            _group.stage_updates_after_send(conn, sent, now)
    if deferred:
        conn.execute(_RELEASE, {"b_ids": deferred})
    for o in outcomes:
        values: dict[str, Any] = {"lease_until": None, "last_error": o.error[:2000],
                                  "last_reason": o.reason}  # fmt: skip
        if o.state == "retry":
            assert o.retry_at is not None
            values["next_attempt_at"] = o.retry_at
        elif o.state == "dead":
            values["state"] = DeliveryState.DEAD.value
        else:
            continue
        if o.delivered_to:
            values["delivered_to"] = json.dumps(list(o.delivered_to))
        conn.execute(update(d).where(d.c.id == o.delivery_id).values(**values))


def _alert_query() -> Any:
    return select(
        alerts.c.id.label("a_id"),
        alerts.c.rule_id,
        alerts.c.rule_title,
        alerts.c.event_type,
        alerts.c.severity,
        alerts.c.story_key,
        alerts.c.item_id,
        alerts.c.created_at.label("a_created_at"),
        alerts.c.facets,
        alerts.c.source_count,
        alerts.c.updated_at,
        items.c.source_id,
        items.c.title,
        items.c.url,
        items.c.text,
        items.c.published,
    ).join(items, items.c.id == alerts.c.item_id)


def _delivery_query() -> Any:
    d = deliveries
    return (
        _alert_query()
        .add_columns(
            d.c.id.label("d_id"),
            d.c.alert_id,
            d.c.receiver,
            d.c.state,
            d.c.attempts,
            d.c.idempotency_key,
            d.c.next_attempt_at,
            d.c.last_error,
            d.c.created_at.label("d_created_at"),
            d.c.sent_at,
            d.c.kind,
            d.c.delivered_to,
        )
        .join(d, d.c.alert_id == alerts.c.id)
    )


_DELIVERY_QUERY = _delivery_query()  # built once: a select is immutable


def _alert(m: Any) -> Alert:
    return Alert(
        id=m["a_id"],
        rule_id=m["rule_id"],
        rule_title=m["rule_title"],
        event_type=m["event_type"],
        severity=m["severity"],
        story_key=m["story_key"],
        item_id=m["item_id"],
        source_id=m["source_id"],
        title=m["title"],
        url=m["url"],
        text=m["text"],
        published=m["published"],
        created_at=m["a_created_at"],
        facets=json.loads(m["facets"] or "{}"),
        source_count=m["source_count"],
        updated_at=m["updated_at"],
    )


def _claimed(m: Any, lease_until: datetime | None = None) -> ClaimedDelivery:
    delivery = Delivery(
        id=m["d_id"],
        alert_id=m["alert_id"],
        receiver=m["receiver"],
        state=m["state"],
        attempts=m["attempts"],
        idempotency_key=m["idempotency_key"],
        next_attempt_at=m["next_attempt_at"],
        last_error=m["last_error"],
        created_at=m["d_created_at"],
        sent_at=m["sent_at"],
        kind=m["kind"],
        delivered_to=json.loads(m["delivered_to"] or "[]"),
    )
    return ClaimedDelivery(delivery, _alert(m), lease_until=lease_until)


# The story, silence and grouping tables live with their stages; importing registers them
# on `metadata`.
from watcher import digest as _digest  # noqa: E402, F401
from watcher import group as _group  # noqa: E402
from watcher import silence as _silence  # noqa: E402, F401
from watcher import story_store as _story_store  # noqa: E402
