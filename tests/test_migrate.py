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
