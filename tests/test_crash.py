"""Kill -9 `watcher run` with 1,000 deliveries in flight, restart it: nothing is lost."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from tests.delivery import add_alerts
from watcher.demo import free_port
from watcher.models import DeliveryState, utc_now
from watcher.store import Store

N = 1000
REPO = Path(__file__).resolve().parent.parent


class SlowReceiver:
    """A webhook receiver that takes a little while per request, so sends overlap."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, object]]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(0.01)
        self.received.append((request.headers["webhook-id"], body))
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


async def start_service(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher.cli", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=None,
    )  # fmt: skip


async def wait_until(predicate, timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.timeout(180)
async def test_kill_9_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    receiver = SlowReceiver()
    await receiver.start()
    db = f"sqlite+aiosqlite:///{tmp_path}/w.db"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nurl = "{db}"\n[api]\nport = {free_port()}\n'
        f'[rules]\npaths = ["{REPO / "rules"}"]\n'
        "[outbox]\nlease_s = 2\nsweep_interval_s = 0.2\n"
        f'[[receivers]]\ntype = "webhook"\nid = "hook"\n'
        f'url = "http://127.0.0.1:{receiver.port}/hook"\n'
        'timeout_s = 0.9\nconcurrency = 10\n[[subscriptions]]\nreceivers = ["hook"]\n'
    )
    store = Store(db, clock=utc_now)
    await store.open()
    await add_alerts(store, N, ["hook"])
    await store.close()
    try:
        proc = await start_service(config)
        await wait_until(lambda: len(receiver.received) >= 300, 60)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        at_kill = len(receiver.received)
        assert at_kill < N, "everything was delivered before the kill: nothing was tested"

        proc = await start_service(config)
        expected = {f"wd_{i}_hook" for i in range(1, N + 1)}
        await wait_until(lambda: {k for k, _ in receiver.received} >= expected, 90)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        assert receiver.runner is not None
        await receiver.runner.cleanup()

    counts = Counter(k for k, _ in receiver.received)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"killed after {at_kill} deliveries; {len(receiver.received)} received, "
          f"{len(counts)} distinct, {duplicates} duplicates")  # fmt: skip
    assert set(counts) == expected  # nothing lost, nothing unexpected
    # a repeated key carries the same alert: the key makes the repeat harmless
    bodies: dict[str, str] = {}
    for key, body in receiver.received:
        canonical = json.dumps(body, sort_keys=True)
        assert bodies.setdefault(key, canonical) == canonical
    store = Store(db, clock=utc_now)
    await store.open()
    try:
        states = Counter(d.delivery.state for d in await store.list_deliveries(limit=N + 1))
    finally:
        await store.close()
    assert states == {DeliveryState.SENT: N}
