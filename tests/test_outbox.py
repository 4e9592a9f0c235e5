"""The outbox against real webhook receivers and real stores, with an injected clock."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import FakeClock
from tests.delivery import add_alerts, config, worker
from tests.servers import WebhookServer
from watcher.config import OutboxConfig
from watcher.metrics import Metrics
from watcher.models import DeliveryState
from watcher.outbox import OutboxWorker
from watcher.store import ClaimedDelivery, Store


def hook(webhook_server: WebhookServer, rid: str = "hook", **extra: object) -> dict[str, object]:
    return {"type": "webhook", "id": rid, "url": webhook_server.url, **extra}


async def test_500_then_429_retry_after_then_200_is_delivered_once_not_early(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, webhook_server: WebhookServer
) -> None:
    cfg = config(store.url, [hook(webhook_server)])
    w = worker(cfg, store, session, clock)
    await add_alerts(store, 1, ["hook"])
    webhook_server.responses = [(500, {}), (429, {"Retry-After": "2"})]

    await w.drain()  # 500: retry after a jittered backoff (at most backoff_base_s)
    assert len(webhook_server.received) == 1
    clock.advance(10)
    await w.drain()  # 429 with Retry-After: 2
    assert len(webhook_server.received) == 2
    clock.advance(1.9)
    await w.drain()
    assert len(webhook_server.received) == 2  # not before Retry-After has passed
    clock.advance(0.2)
    await w.drain()
    assert len(webhook_server.received) == 3
    clock.advance(3600)
    await w.drain()
    assert len(webhook_server.received) == 3  # delivered once: never again
    ids = {h["webhook-id"] for h, _ in webhook_server.received}
    assert len(ids) == 1  # the same idempotency key on every attempt
    [d] = await store.list_deliveries()
    assert d.delivery.state == DeliveryState.SENT and d.delivery.attempts == 3


async def test_permanent_failure_is_dead_at_once_and_can_be_retried(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, webhook_server: WebhookServer
) -> None:
    w = worker(config(store.url, [hook(webhook_server)]), store, session, clock)
    await add_alerts(store, 1, ["hook"])
    webhook_server.responses = [(400, {})]
    await w.drain()
    [d] = await store.list_deliveries(state=DeliveryState.DEAD)
    assert d.delivery.last_error == "receiver 'hook': client_error: HTTP 400"
    assert d.delivery.attempts == 1
    assert await store.retry_dead([d.delivery.id]) == 1
    await w.drain()
    assert [x.delivery.state for x in await store.list_deliveries()] == [DeliveryState.SENT]


async def test_dead_letter_after_max_attempts(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, webhook_server: WebhookServer
) -> None:
    cfg = config(store.url, [hook(webhook_server)], max_attempts=3, breaker_failures=100)
    w = worker(cfg, store, session, clock)
    await add_alerts(store, 1, ["hook"])
    webhook_server.responses = [(503, {})] * 10
    for _ in range(5):
        await w.drain()
        clock.advance(cfg.outbox.backoff_max_s)
    assert len(webhook_server.received) == 3
    [d] = await store.list_deliveries()
    assert d.delivery.state == DeliveryState.DEAD
    assert "server_error: HTTP 503" in d.delivery.last_error


async def test_a_failing_receiver_opens_its_breaker_and_does_not_hold_up_others(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    bad, good = WebhookServer(), WebhookServer()
    await bad.start()
    await good.start()
    try:
        cfg = config(
            store.url,
            [hook(bad, "bad", concurrency=1), hook(good, "good")],
            breaker_failures=3,
            breaker_cooldown_s=600,
        )
        w = worker(cfg, store, session, clock)
        await add_alerts(store, 10, ["bad", "good"])
        bad.responses = [(500, {})] * 3
        await w.drain()
        assert len(good.received) == 10  # all delivered
        assert len(bad.received) == 3  # three failures opened the breaker...
        assert w.breaker_state("bad") == "open"
        clock.advance(cfg.outbox.backoff_max_s)  # every row is due again
        await w.drain()
        assert len(bad.received) == 3  # ...so its rows are left alone while it is open
        clock.advance(600)
        assert w.breaker_state("bad") == "half_open"
        bad.responses = [(500, {})]
        await w.drain()
        assert len(bad.received) == 4  # one trial delivery only; it fails and reopens
        assert w.breaker_state("bad") == "open"
        clock.advance(600)
        await w.drain()  # the next trial succeeds, closes it, and the rest follow
        assert w.breaker_state("bad") == "closed"
        delivered = [json.loads(b)["id"] for _, b in bad.received]
        assert len(bad.received) == 14 and len(set(delivered)) == 10
        states = [d.delivery.state for d in await store.list_deliveries(receiver="bad")]
        assert states == [DeliveryState.SENT] * 10
        # deferred rows were not charged an attempt: attempts charged == requests made
        attempts = [d.delivery.attempts for d in await store.list_deliveries(receiver="bad")]
        assert sum(attempts) == 14
    finally:
        await bad.stop()
        await good.stop()


async def test_rate_limit_pauses_the_whole_receiver(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, webhook_server: WebhookServer
) -> None:
    w = worker(config(store.url, [hook(webhook_server, concurrency=1)]), store, session, clock)
    await add_alerts(store, 5, ["hook"])
    webhook_server.responses = [(200, {}), (429, {"Retry-After": "30"})]
    await w.drain()  # one sent, then the 429 pauses the receiver: its rows wait
    count = len(webhook_server.received)
    assert count == 2
    assert w.breaker_state("hook") == "open"
    clock.advance(10)
    await w.drain()
    assert len(webhook_server.received) == count  # nothing while paused
    clock.advance(21)
    await w.drain()
    await w.drain()
    states = [d.delivery.state for d in await store.list_deliveries()]
    assert states == [DeliveryState.SENT] * 5


async def test_rows_of_a_receiver_removed_from_config_are_dead_lettered_even_with_none_left(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    cfg = config(store.url, [])
    w = worker(cfg, store, session, clock)
    await add_alerts(store, 2, ["gone"])
    await w.drain()
    states = [d.delivery.state for d in await store.list_deliveries()]
    assert states == [DeliveryState.DEAD, DeliveryState.DEAD]


async def test_unknown_receiver_is_dead_lettered(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, webhook_server: WebhookServer
) -> None:
    w = worker(config(store.url, [hook(webhook_server)]), store, session, clock)
    await add_alerts(store, 1, ["removed-from-config"])
    await w.drain()
    [d] = await store.list_deliveries()
    assert d.delivery.state == DeliveryState.DEAD
    assert "unknown_receiver" in d.delivery.last_error


async def test_a_slow_receiver_does_not_hold_up_the_others(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    slow, fast = WebhookServer(), WebhookServer()
    await slow.start()
    await fast.start()
    slow.delay_s = 5.0  # far longer than the fast deliveries take, even on a loaded machine
    cfg = config(store.url, [hook(slow, "slow", concurrency=1), hook(fast, "fast")])
    w = worker(cfg, store, session, clock)
    await add_alerts(store, 5, ["slow", "fast"])
    task = asyncio.create_task(w.run_forever())
    try:
        sent: list[DeliveryState] = []
        for _ in range(200):
            sent = [d.delivery.state for d in await store.list_deliveries(receiver="fast")]
            if sent == [DeliveryState.SENT] * 5:
                break
            await asyncio.sleep(0.02)
        # every fast delivery went out, and was recorded, while the slow receiver
        # was still on its first
        assert sent == [DeliveryState.SENT] * 5
        assert len(fast.received) == 5
        assert len(slow.received) == 0
    finally:
        w.stop()
        await asyncio.wait_for(task, 15)  # stop() waits for the slow send in flight
        await slow.stop()
        await fast.stop()
    slow_states = [d.delivery.state for d in await store.list_deliveries(receiver="slow")]
    assert slow_states.count(DeliveryState.SENT) == 1  # the one in flight was finished and recorded


class NeverAnswers:
    """A notifier whose send never returns (a receiver with no timeout of its own)."""

    receiver_id = "stuck"

    async def send(self, claimed: ClaimedDelivery) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        """Nothing to release."""


async def test_a_send_is_cut_before_its_lease_ends_and_retried(
    store: Store, clock: FakeClock
) -> None:
    # past its lease the row would be claimed again and sent beside the first send
    w = OutboxWorker(
        store=store,
        notifiers={"stuck": NeverAnswers()},
        config=OutboxConfig(lease_s=0.2),
        metrics=Metrics(),
        clock=clock,
    )
    await add_alerts(store, 1, ["stuck"])
    await w.drain()
    [d] = await store.list_deliveries()
    assert d.delivery.state == DeliveryState.PENDING and d.delivery.attempts == 1
    assert "timeout: the send did not end within" in d.delivery.last_error
