"""An existing store from an earlier version is brought up to date at open, additively."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import FakeClock
from watcher.errors import StoreError
from watcher.migrate import upgrade
from watcher.store import Store, sources


def _v01_sources(md: MetaData) -> Table:
    """`sources` as the first release created it: no moved_url, no active flag."""
    return Table(
        "sources",
        md,
        Column("id", String(64), primary_key=True),
        Column("url", Text, nullable=False),
        Column("etag", Text),
        Column("last_modified", Text),
        Column("body_hash", String(64)),
        Column("last_polled_at", Text),
        Column("last_success_at", Text),
        Column("last_error", Text),
        Column("last_error_reason", String(32)),
        Column("error_count", Integer, nullable=False, server_default="0"),
        Column("items_seen", Integer, nullable=False, server_default="0"),
        Column("next_poll_at", Text),
    )


async def test_an_old_store_gains_the_new_columns_and_keeps_its_rows(
    store_url: str, clock: FakeClock
) -> None:
    old = MetaData()
    table = _v01_sources(old)
    engine = create_async_engine(store_url)
    async with engine.begin() as conn:
        await conn.run_sync(old.create_all)
        await conn.execute(table.insert().values(id="bis", url="http://x/feed", error_count=2))
    await engine.dispose()

    store = Store(store_url, clock=clock)
    await store.open()
    try:
        [state] = await store.list_sources()
        assert (state.id, state.url, state.error_count) == ("bis", "http://x/feed", 2)
        async with store.engine.connect() as conn:
            row = (await conn.execute(select(sources.c.active, sources.c.moved_url))).one()
        assert (bool(row.active), row.moved_url) == (True, None)
        # the other tables were created whole, and a second open has nothing left to do
        async with store.engine.begin() as conn:
            assert await conn.run_sync(upgrade, sources.metadata) == []
    finally:
        await store.close()


async def test_a_not_null_column_without_default_is_refused_by_name(store_url: str) -> None:
    current = MetaData()
    Table("sources", current, Column("id", String(64), primary_key=True))
    newer = MetaData()
    Table(
        "sources",
        newer,
        Column("id", String(64), primary_key=True),
        Column("owner", String(64), nullable=False),
    )
    engine = create_async_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(current.create_all)
        with pytest.raises(StoreError, match="'sources' lacks column 'owner'"):
            async with engine.begin() as conn:
                await conn.run_sync(upgrade, newer)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(current.drop_all)
        await engine.dispose()


async def test_the_legacy_one_delivery_per_alert_and_receiver_constraint_is_dropped(
    store_url: str, clock: FakeClock
) -> None:
    """Digests and updates may carry an alert to a receiver again: the old constraint goes,
    the rows stay."""
    from datetime import UTC, datetime

    from sqlalchemy import ForeignKey, Index, UniqueConstraint, inspect

    from watcher.store import UTCDateTime, metadata

    old = MetaData()
    for t in metadata.sorted_tables:
        if t.name not in ("deliveries", "notices"):
            t.to_metadata(old)
    v0 = Table(
        "deliveries",
        old,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("alert_id", Integer, ForeignKey("alerts.id"), nullable=False),
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
        UniqueConstraint("alert_id", "receiver", name="uq_deliveries_alert_receiver"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )
    now = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
    engine = create_async_engine(store_url)
    async with engine.begin() as conn:
        await conn.run_sync(old.create_all)
        await conn.execute(
            old.tables["items"].insert().values(
                id=1, source_id="s", dedup_key="k", guid="g", url="", title="t", text="x",
                language="en", content_hash="h", fetched_at=now,
            )
        )  # fmt: skip
        await conn.execute(
            old.tables["alerts"].insert().values(
                id=1, rule_id="r", rule_title="R", event_type="export_restriction",
                severity="high", story_key="k", item_id=1, created_at=now,
            )
        )  # fmt: skip
        await conn.execute(
            v0.insert().values(
                alert_id=1, receiver="hook", state="sent", attempts=1,
                idempotency_key="wd_1_hook", next_attempt_at=now, created_at=now, sent_at=now,
            )
        )  # fmt: skip
    await engine.dispose()

    store = Store(store_url, clock=clock)
    await store.open()
    try:
        [kept] = await store.list_deliveries()
        assert (kept.delivery.idempotency_key, kept.delivery.state) == ("wd_1_hook", "sent")
        async with store.engine.begin() as conn:
            names = await conn.run_sync(
                lambda c: {u["name"] for u in inspect(c).get_unique_constraints("deliveries")}
            )
            assert "uq_deliveries_alert_receiver" not in names
            await conn.execute(
                metadata.tables["deliveries"].insert().values(
                    alert_id=1, receiver="hook", state="pending", attempts=0,
                    idempotency_key="wg_1_hook", next_attempt_at=now, created_at=now,
                    kind="group",
                )
            )  # fmt: skip
            assert await conn.run_sync(upgrade, metadata) == []
        assert len(await store.list_deliveries()) == 2
    finally:
        await store.close()


async def test_an_old_websub_table_gains_its_version_and_keeps_its_subscriptions(
    store_url: str, clock: FakeClock
) -> None:
    """`websub_subscriptions` as the first WebSub release made it (no attempts, retry_at,
    version or callback_base): a stored subscription is kept, and processes can claim it
    from version 0; its callback_base is NULL, as its callback had no token."""
    from dataclasses import replace

    from watcher.store import UTCDateTime

    old = MetaData()
    v0 = Table(
        "websub_subscriptions",
        old,
        Column("source_id", String(64), primary_key=True),
        Column("hub", Text, nullable=False),
        Column("topic", Text, nullable=False),
        Column("secret_ref", String(128), nullable=False),
        Column("state", String(16), nullable=False),
        Column("lease_until", UTCDateTime),
    )
    engine = create_async_engine(store_url)
    async with engine.begin() as conn:
        await conn.run_sync(old.create_all)
        await conn.execute(
            v0.insert().values(
                source_id="gov", hub="http://hub/", topic="http://t/", secret_ref="websub:gov:1",
                state="active", lease_until=clock(),
            )
        )  # fmt: skip
    await engine.dispose()

    store = Store(store_url, clock=clock)
    await store.open()
    try:
        [row] = await store.websub_subscriptions()
        assert (row.state, row.attempts, row.retry_at, row.version) == ("active", 0, None, 0)
        assert row.callback_base is None
        renewing = replace(row, state="renewing", attempts=1)
        assert await store.write_websub(renewing, seen=0) == 1
        assert await store.write_websub(renewing, seen=0) is None  # another process was first
        assert await store.websub_subscription("gov") == replace(renewing, version=1)
        asked = replace(renewing, version=1, callback_base="https://watcher.example/api")
        assert await store.write_websub(asked, seen=1) == 2
        assert await store.websub_subscription("gov") == replace(asked, version=2)
    finally:
        await store.close()
