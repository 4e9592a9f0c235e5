"""Delivery benchmark: the outbox sending webhooks and emails to loopback receivers.

Prints one JSON object: `webhooks_per_s` and `emails_per_s` (outbox claims and
outcome writes in the store included), `p99_alert_to_receiver_ms` (from the
delivery row's commit to the receiver's receipt, with alerts arriving in a
steady stream), and, measured in the same run, the floors: bare aiohttp posts
and bare aiosmtplib sends to the same receivers (no store, no templates). The
webhook floor is measured just before and just after the outbox's webhook run
(`floor_webhooks_per_s` is their mean, `webhooks_vs_floor` the ratio), so a
busy machine shows in both alike.
Targets (issue 5): >= 2,000 webhooks/s and >= 400 emails/s.
The receivers run in a child process so they do not share the worker's core.

    python bench/deliver.py                       # a throwaway SQLite file
    python bench/deliver.py postgresql://u@h/db   # PostgreSQL: its tables are DROPPED first
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import aiosmtplib  # noqa: E402

from watcher.config import Config  # noqa: E402
from watcher.metrics import Metrics  # noqa: E402
from watcher.models import utc_now  # noqa: E402
from watcher.notify import build_notifiers  # noqa: E402
from watcher.outbox import OutboxWorker  # noqa: E402
from watcher.parse import make_item  # noqa: E402
from watcher.store import NewAlert, Store  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receivers_main(http_port: int, smtp_port: int, times: Any, ready: Any) -> None:
    """Child process: a webhook receiver and an SMTP sink, reporting receipt times."""
    from aiohttp import web
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        times.put((request.headers.get("webhook-id", ""), time.time()))
        return web.Response(status=204)

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port, backlog=1024).start()
        controller = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
        controller.start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


async def fill(store: Store, n: int, receiver: str, offset: int) -> list[int]:
    items = [
        make_item(
            source_id="bench", guid=f"{receiver}-{offset + i}", title=f"{receiver} {offset + i}"
        )
        for i in range(n)
    ]
    async with store.transaction() as tx:
        new = await tx.insert_new_items(items)
        ids = await tx.insert_alerts(
            [NewAlert("r", "R", "export_restriction", "high", it.content_hash, item_id)
             for item_id, it in new]
        )  # fmt: skip
        await tx.enqueue([(a, receiver) for a in ids])
    return ids


async def throughput(store: Store, worker: OutboxWorker, n: int, receiver: str) -> float:
    await fill(store, n, receiver, 0)
    start = time.perf_counter()
    await worker.drain()
    elapsed = time.perf_counter() - start
    counts = await store.delivery_counts()
    assert counts.get((receiver, "sent", ""), 0) == n, counts
    return n / elapsed


async def latency(store: Store, worker: OutboxWorker, times: Any, n: int) -> dict[str, float]:
    """Alerts arrive in batches of 10 every 10 ms; the worker is kicked as a pipeline kicks it."""
    task = asyncio.create_task(worker.run_forever())
    enqueued: dict[str, float] = {}
    for b in range(n // 10):
        ids = await fill(store, 10, "hook-lat", 10_000 + b * 10)
        now = time.time()  # the rows are committed: the clock starts
        enqueued.update((f"wd_{a}_hook-lat", now) for a in ids)
        worker.kick()
        await asyncio.sleep(0.01)
    received: dict[str, float] = {}
    deadline = time.time() + 60
    while len(received) < n and time.time() < deadline:
        while not times.empty():
            key, at = times.get()
            if key in enqueued:
                received.setdefault(key, at)
        await asyncio.sleep(0.01)
    worker.stop()
    await task
    lat = sorted((received[k] - enqueued[k]) * 1000 for k in received)
    return {
        "p50_alert_to_receiver_ms": round(statistics.median(lat), 1),
        "p99_alert_to_receiver_ms": round(lat[int(len(lat) * 0.99) - 1], 1),
        "latency_samples": len(lat),
    }


async def floor_webhooks(url: str, n: int) -> float:
    body = json.dumps({"x": "y" * 600}).encode()
    sem = asyncio.Semaphore(10)
    async with aiohttp.ClientSession() as s:

        async def post() -> None:
            async with sem, s.post(url, data=body) as r:
                await r.read()

        start = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(n)))
        return n / (time.perf_counter() - start)


async def floor_emails(port: int, n: int) -> float:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "w@example.org", "a@example.org", "bench"
    msg.set_content("x" * 600)
    conns = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(10)]
    for c in conns:
        await c.connect()

    async def run(c: aiosmtplib.SMTP, k: int) -> None:
        for _ in range(k):
            await c.send_message(msg)

    start = time.perf_counter()
    await asyncio.gather(*(run(c, n // 10) for c in conns))
    rate = n / (time.perf_counter() - start)
    for c in conns:
        await c.quit()
    return rate


async def open_store(url: str) -> Store:
    """A store with nothing in it: a PostgreSQL database is emptied first."""
    if not url.startswith("sqlite"):
        from sqlalchemy import MetaData
        from sqlalchemy.ext.asyncio import create_async_engine

        def drop_all(conn: Any) -> None:  # every table there, whichever version made it
            found = MetaData()
            found.reflect(conn)
            found.drop_all(conn)

        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(drop_all)
        await engine.dispose()
    store = Store(url, clock=utc_now)
    await store.open()
    await store.sync_sources([("bench", "http://127.0.0.1/")])
    return store


def store_url(arg: str | None, tmp: str) -> str:
    if arg is None:
        return f"sqlite+aiosqlite:///{tmp}/b.db"
    from sqlalchemy.engine import make_url

    return str(make_url(arg).set(drivername="postgresql+asyncpg"))


async def main(dsn: str | None) -> None:
    http_port, smtp_port = free_port(), free_port()
    ctx = mp.get_context("fork")
    times, ready = ctx.Queue(), ctx.Event()
    child = ctx.Process(
        target=receivers_main, args=(http_port, smtp_port, times, ready), daemon=True
    )
    child.start()
    ready.wait(10)
    url = f"http://127.0.0.1:{http_port}/hook"
    result: dict[str, Any] = {"bench": "deliver"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db_url = store_url(dsn, tmp)
            result["store"] = db_url.split(":", 1)[0]
            config = Config.model_validate(
                {
                    "store": {"url": db_url},
                    "receivers": [
                        {"type": "webhook", "id": "hook", "url": url, "concurrency": 20},
                        {"type": "webhook", "id": "hook-lat", "url": url, "concurrency": 20},
                        {"type": "email", "id": "mail", "host": "127.0.0.1", "port": smtp_port,
                         "to": ["a@example.org"], "concurrency": 10},
                    ],
                }
            )  # fmt: skip
            store = await open_store(config.store.url)
            async with aiohttp.ClientSession() as session:
                worker = OutboxWorker(
                    store=store,
                    notifiers=build_notifiers(config, session=session, clock=utc_now),
                    config=config.outbox,
                    metrics=Metrics(),
                    clock=utc_now,
                    receiver_concurrency={r.id: r.concurrency for r in config.receivers},
                    rng=random.Random(1),
                    updates=any(s.notify_updates for s in config.subscriptions),  # as `run`
                )
                floor_before = await floor_webhooks(url, 5000)
                result["webhooks_per_s"] = round(await throughput(store, worker, 5000, "hook"))
                floor_after = await floor_webhooks(url, 5000)
                while not times.empty():
                    times.get()
                result["emails_per_s"] = round(await throughput(store, worker, 2000, "mail"))
                result.update(await latency(store, worker, times, 1000))
                for n in worker.notifiers.values():
                    await n.close()
            await store.close()
        floor = (floor_before + floor_after) / 2
        result["floor_webhooks_per_s"] = round(floor)
        result["floor_webhooks_before_after"] = [round(floor_before), round(floor_after)]
        result["webhooks_vs_floor"] = round(result["webhooks_per_s"] / floor, 2)
        result["floor_emails_per_s"] = round(await floor_emails(smtp_port, 2000))
    finally:
        child.terminate()
    result["target_webhooks_per_s"] = 2000
    result["target_emails_per_s"] = 400
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
