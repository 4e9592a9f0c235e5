"""The store on SQLite and on PostgreSQL (WATCHER_TEST_POSTGRES_DSN)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

from tests.conftest import FakeClock
from watcher.constants import SQLITE_CACHE_KIB, SQLITE_LOOP_CACHE_KIB
from watcher.models import DeliveryState
from watcher.parse import make_item
from watcher.store import NewAlert, Outcome, Store, UnchangedPoll


def item(key: str, source: str = "s1"):
    return make_item(source_id=source, guid=key, title=f"title {key}", text="gallium export ban")


async def _alert_with_delivery(store: Store, receivers: list[str]) -> int:
    await store.sync_sources([("s1", "http://127.0.0.1/feed")])
    async with store.transaction() as tx:
        [(item_id, it)] = await tx.insert_new_items([item("a")])
        [alert_id] = await tx.insert_alerts(
            [NewAlert("r1", "Rule 1", "export_restriction", "high", it.content_hash, item_id)]
        )
        await tx.enqueue([(alert_id, r) for r in receivers])
    return alert_id


async def test_items_are_deduplicated_across_batches(store: Store) -> None:
    await store.sync_sources([("s1", "http://x/feed")])
    async with store.transaction() as tx:
        new = await tx.insert_new_items([item("a"), item("b"), item("a")])
    assert sorted(i.guid for _, i in new) == ["a", "b"]
    async with store.transaction() as tx:
        new = await tx.insert_new_items([item("a"), item("c"), item("a", source="s2")])
    assert sorted((i.source_id, i.guid) for _, i in new) == [("s1", "c"), ("s2", "a")]
    assert await store.count_items() == 4


async def test_a_failed_transaction_keeps_nothing(store: Store) -> None:
    await store.sync_sources([("s1", "http://x/feed")])
    try:
        async with store.transaction() as tx:
            await tx.insert_new_items([item("a")])
            raise RuntimeError("crash mid-poll")
    except RuntimeError:
        pass
    assert await store.count_items() == 0


async def test_one_alert_per_rule_and_story(store: Store) -> None:
    await store.sync_sources([("s1", "http://x/feed")])
    async with store.transaction() as tx:
        [(i1, _)] = await tx.insert_new_items([item("a")])
        first = await tx.insert_alerts(
            [NewAlert("r1", "R", "export_restriction", "high", "story", i1)]
        )
        again = await tx.insert_alerts(
            [NewAlert("r1", "R", "export_restriction", "high", "story", i1)]
        )
        other = await tx.insert_alerts(
            [NewAlert("r2", "R", "export_restriction", "high", "story", i1)]
        )
    assert len(first) == 1 and again == [] and len(other) == 1


async def test_claim_send_and_lease_expiry(store: Store, clock: FakeClock) -> None:
    await _alert_with_delivery(store, ["mail", "hook"])
    claimed = await store.claim_deliveries(limit=10, lease_s=60)
    assert sorted(c.delivery.receiver for c in claimed) == ["hook", "mail"]
    assert all(c.delivery.attempts == 1 for c in claimed)
    assert claimed[0].alert.title == "title a"
    # leased rows are not claimed twice...
    assert await store.claim_deliveries(limit=10, lease_s=60) == []
    mail = next(c for c in claimed if c.delivery.receiver == "mail")
    await store.mark_sent(mail.delivery.id)
    # ...until the lease of a crashed worker expires
    clock.advance(61)
    [again] = await store.claim_deliveries(limit=10, lease_s=60)
    assert again.delivery.receiver == "hook" and again.delivery.attempts == 2
    assert again.delivery.idempotency_key == next(
        c.delivery.idempotency_key for c in claimed if c.delivery.receiver == "hook"
    )


async def test_sqlite_short_transactions_keep_a_small_page_cache(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The connections of the loop's short transactions (poll state, outbox) keep a small
    page cache: while sources answer 304 they are the only writer, nothing resets their
    cache, and a big one came to hold the whole sources table. Ingests keep the big one."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/w.db", clock=clock)
    await store.open()
    try:
        size, wait = "PRAGMA cache_size", "PRAGMA busy_timeout"
        async with store.engine.connect() as conn:
            pooled = (await conn.exec_driver_sql(size)).scalar()
            pooled_wait = (await conn.exec_driver_sql(wait)).scalar()
        on_loop, on_loop_wait = await store._loop_tx(
            lambda conn: (conn.exec_driver_sql(size).scalar(), conn.exec_driver_sql(wait).scalar())
        )
        assert store._sqlite_on_loop is not None
        with store._sqlite_on_loop._waiting.connect() as sync_conn:  # when the lock is held
            waiting = sync_conn.exec_driver_sql(size).scalar()
            waiting_wait = sync_conn.exec_driver_sql(wait).scalar()
    finally:
        await store.close()
    assert pooled == -SQLITE_CACHE_KIB
    assert on_loop == waiting == -SQLITE_LOOP_CACHE_KIB < -256
    # the loop's own connection never waits for the write lock; the others do
    assert (pooled_wait, on_loop_wait, waiting_wait) == (30_000, 0, 30_000)


async def test_sqlite_claims_wait_for_another_writer_without_blocking_the_loop(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The outbox's SQLite transactions run on the event loop but never wait there
    for the write lock: held by another connection, they wait in a thread."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/w.db", clock=clock)
    await store.open()
    try:
        await _alert_with_delivery(store, ["hook"])
        writer = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        claim = asyncio.create_task(store.claim_deliveries(limit=10, lease_s=60))
        ticks = 0
        while ticks < 20:  # the loop runs on while the claim waits for the lock
            await asyncio.sleep(0)
            ticks += 1
        assert not claim.done()
        writer.execute("COMMIT")
        writer.close()
        [c] = await asyncio.wait_for(claim, 30)
        assert c.delivery.receiver == "hook" and c.delivery.attempts == 1
        await store.record_outcomes([Outcome(c.delivery.id, "sent")])
        [d] = await store.list_deliveries()
        assert d.delivery.state == DeliveryState.SENT
    finally:
        await store.close()


async def test_retry_later_and_dead_letter(store: Store, clock: FakeClock) -> None:
    await _alert_with_delivery(store, ["hook"])
    [c] = await store.claim_deliveries(limit=10, lease_s=60)
    await store.mark_failed(
        c.delivery.id, reason="server_error", error="HTTP 500", retry_at=clock().replace(minute=5)
    )
    assert await store.claim_deliveries(limit=10, lease_s=60) == []
    clock.advance(300)
    [c] = await store.claim_deliveries(limit=10, lease_s=60)
    await store.mark_failed(c.delivery.id, reason="client_error", error="HTTP 400", retry_at=None)
    [dead] = await store.list_deliveries(state=DeliveryState.DEAD)
    assert dead.delivery.last_error == "HTTP 400"
    assert await store.delivery_counts() == {("hook", "dead", "client_error"): 1}
    assert await store.retry_dead() == 1
    [c] = await store.claim_deliveries(limit=10, lease_s=60)
    assert c.delivery.attempts == 1


async def test_state_survives_reopening(store_url: str, clock: FakeClock) -> None:
    s = Store(store_url, clock=clock)
    await s.open()
    await _alert_with_delivery(s, ["mail"])
    await s.close()
    s = Store(store_url, clock=clock)
    await s.open()
    try:
        [c] = await s.claim_deliveries(limit=10, lease_s=60)
        assert c.delivery.receiver == "mail"
        assert (await s.list_alerts())[0].rule_id == "r1"
    finally:
        await s.close()


async def test_poll_state_is_recorded(store: Store) -> None:
    await store.sync_sources([("s1", "http://x/feed")])
    assert (
        await store.record_poll_error("s1", reason="timeout", error="slow", next_poll_at=None) == 1
    )
    assert (
        await store.record_poll_error("s1", reason="timeout", error="slow", next_poll_at=None) == 2
    )
    async with store.transaction() as tx:
        await tx.record_poll(
            "s1", etag='"e"', last_modified=None, body_hash="h", new_items=3, next_poll_at=None
        )
    state = await store.source_state("s1")
    assert state is not None
    assert (state.etag, state.error_count, state.items_seen, state.last_error) == (
        '"e"',
        0,
        3,
        None,
    )
    await store.sync_sources([("s1", "http://x/moved")])
    state = await store.source_state("s1")
    assert state is not None and state.url == "http://x/moved" and state.items_seen == 3


async def test_batched_poll_statements_come_in_a_few_lengths(
    store: Store, clock: FakeClock
) -> None:
    """Batches of every size read and save exactly their sources, through IN lists of a
    few lengths (a statement per batch size filled SQLite's cache of prepared ones)."""
    ids = [f"s{i}" for i in range(40)]
    await store.sync_sources((i, f"http://x/{i}") for i in ids)
    loop = store._sqlite_on_loop
    engine = loop._now if loop is not None else store.engine.sync_engine
    statements: set[str] = set()

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.add(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        for n in range(1, len(ids) + 1):
            clock.now += timedelta(seconds=1)
            wanted = [*ids[:n], "nope"]
            states = await store.poll_states(wanted)
            assert [s.id if s else None for s in states] == [*ids[:n], None]
            await store.record_polls_unchanged([UnchangedPoll(i, 60.0) for i in ids[:n]])
            saved = {s.id for s in await store.list_sources() if s.last_polled_at == clock()}
            assert saved == set(ids[:n])
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    reads = {s for s in statements if s.lstrip().upper().startswith("SELECT")}
    saves = {s for s in statements if s.lstrip().upper().startswith("UPDATE")}
    assert len(reads) <= 7 and len(saves) <= 7  # lengths 1, 2, 4, ... 64, not 40 of each


async def test_poll_states_and_unchanged_polls_in_batches(store: Store, clock: FakeClock) -> None:
    await store.sync_sources([("s1", "http://x/a"), ("s2", "http://x/b"), ("s3", "http://x/c")])
    await store.record_moved("s2", "http://x/moved")
    await store.record_poll_error("s1", reason="timeout", error="slow", next_poll_at=None)
    async with store.transaction() as tx:
        await tx.record_poll(
            "s3", etag='"e"', last_modified="lm", body_hash="h", new_items=1, next_poll_at=None
        )
    s1, s2, missing, s3 = await store.poll_states(["s1", "s2", "nope", "s3"])
    assert missing is None and s1 is not None and s2 is not None and s3 is not None
    assert (s1.poll_url, s1.error_count, s1.active) == ("http://x/a", 1, True)
    assert s2.poll_url == "http://x/moved"
    assert (s3.etag, s3.last_modified, s3.body_hash) == ('"e"', "lm", "h")
    # one save for the batch: errors reset, next poll counted from the save
    await store.record_polls_unchanged(
        [UnchangedPoll("s1", 600.0), UnchangedPoll("s2", 600.0), UnchangedPoll("s3", 30.0)]
    )
    for source_id, delay_s in (("s1", 600), ("s2", 600), ("s3", 30)):
        state = await store.source_state(source_id)
        assert state is not None and state.last_polled_at == clock()
        assert state.last_success_at == clock() and state.error_count == 0
        assert state.last_error is None
        assert state.next_poll_at is not None
        assert (state.next_poll_at - clock()).total_seconds() == delay_s
