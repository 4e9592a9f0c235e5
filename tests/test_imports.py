"""What the service imports, and what it leaves for when it is needed (fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import asyncio, sys
import watcher.store
from sqlalchemy import text
from watcher.asyncdb import create_async_engine
assert "sqlalchemy.orm" not in sys.modules, "the ORM was imported"
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncResult, create_async_engine as same
assert same is create_async_engine
assert "sqlalchemy.orm" not in sys.modules, "the ORM was imported"

async def main():
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    async with engine.begin() as conn:
        assert isinstance(conn, AsyncConnection)
        assert (await conn.execute(text("select 41 + 1"))).scalar() == 42
    await engine.dispose()

asyncio.run(main())
assert "sqlalchemy.orm" not in sys.modules, "the ORM was imported"
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
assert "sqlalchemy.orm" in sys.modules
print("ok", AsyncSession.__name__, async_sessionmaker.__name__)
"""


def test_engine_without_orm_and_the_whole_package_on_demand() -> None:
    assert _run(SCRIPT).split() == ["ok", "AsyncSession", "async_sessionmaker"]


def _run(script: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_jinja2_is_imported_at_the_first_render() -> None:
    _run(
        "import sys\n"
        "import watcher.service\n"
        "assert 'jinja2' not in sys.modules, 'jinja2 imported with the service'\n"
        "from watcher.notify.base import _env\n"
        "_env()\n"
        "assert 'jinja2' in sys.modules\n"
    )
