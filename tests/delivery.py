"""Helpers for delivery tests: alerts straight into the store, a worker over a config."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp

from tests.conftest import FakeClock
from watcher.config import Config
from watcher.metrics import Metrics
from watcher.notify import build_notifiers
from watcher.notify.sample import sample_delivery
from watcher.outbox import OutboxWorker
from watcher.parse import make_item
from watcher.store import ClaimedDelivery, NewAlert, Store


async def add_alerts(
    store: Store, n: int, receivers: list[str], *, source: str = "s1"
) -> list[int]:
    """n alerts (one item each), each with a pending delivery per receiver."""
    await store.sync_sources([(source, "http://127.0.0.1/feed")])
    items = [
        make_item(source_id=source, guid=f"g{i}", title=f"Gallium export ban {i}", text="Ban.")
        for i in range(n)
    ]
    async with store.transaction() as tx:
        new = await tx.insert_new_items(items)
        alert_ids: list[int] = []
        for item_id, item in new:
            alert_ids += await tx.insert_alerts(
                [
                    NewAlert(
                        "r1", "Rule one", "export_restriction", "high", item.content_hash, item_id
                    )
                ]
            )
        await tx.enqueue([(a, r) for a in alert_ids for r in receivers])
    return alert_ids


def config(store_url: str, receivers: list[dict[str, Any]], **outbox: Any) -> Config:
    return Config.model_validate(
        {
            "store": {"url": store_url},
            "outbox": {"backoff_base_s": 10, "backoff_max_s": 100, **outbox},
            "receivers": receivers,
            "subscriptions": [{"receivers": [r["id"] for r in receivers]}] if receivers else [],
        }
    )


def worker(
    cfg: Config, store: Store, session: aiohttp.ClientSession, clock: FakeClock
) -> OutboxWorker:
    import random

    return OutboxWorker(
        store=store,
        notifiers=build_notifiers(cfg, session=session, clock=clock),
        config=cfg.outbox,
        metrics=Metrics(),
        clock=clock,
        receiver_concurrency={r.id: r.concurrency for r in cfg.receivers},
        rng=random.Random(7),
    )


def sample_claimed(receiver: str = "hook", **alert: Any) -> ClaimedDelivery:
    """A fixed alert and delivery, for golden files."""
    published = datetime(2026, 2, 5, 10, 0, tzinfo=UTC)
    alert.setdefault("created_at", datetime(2026, 2, 5, 12, 0, tzinfo=UTC))
    alert.setdefault("published", published)
    claimed = sample_delivery(receiver, now=published, **alert)
    claimed.delivery.id = 9
    return claimed
