"""Shared fixtures: real servers on loopback, real stores, an injected clock."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.servers import FeedServer, WebhookServer
from watcher.demo import SmtpSink, free_port
from watcher.store import Store

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


class FakeClock:
    """A settable clock: tests move time explicitly instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 2, 5, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def postgres_url() -> str | None:
    dsn = os.environ.get("WATCHER_TEST_POSTGRES_DSN")
    if not dsn:
        return None
    return str(make_url(dsn).set(drivername="postgresql+asyncpg"))


async def _reset_postgres(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        # everything, not only today's tables: a database last used by an older version
        # holds tables this one no longer declares (and their foreign keys)
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/watcher.db"
    url = postgres_url()
    if url is None:
        pytest.skip("WATCHER_TEST_POSTGRES_DSN is not set: PostgreSQL store tests skipped")
    await _reset_postgres(url)
    return url


@pytest.fixture
async def store(store_url: str, clock: FakeClock) -> AsyncIterator[Store]:
    s = Store(store_url, clock=clock)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def feed_server() -> AsyncIterator[FeedServer]:
    server = FeedServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _webhook_server() -> AsyncIterator[WebhookServer]:
    server = WebhookServer()
    await server.start()
    yield server
    await server.stop()


webhook_server = pytest.fixture(_webhook_server, name="webhook_server")
webhook_server2 = pytest.fixture(_webhook_server, name="webhook_server2")  # a second receiver


@pytest.fixture
def smtp_server() -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()
