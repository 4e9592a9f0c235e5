"""Silences: alerts of matching rules are stored but not sent until the silence ends.

A silence names a rule (an fnmatch pattern, like subscriptions do), an end
time and a comment saying why. It lives in the store, so every replica and
every restart sees it. The pipeline asks `silenced()` before routing an alert:
a silenced alert gets no receivers, so no delivery is ever enqueued for it.
`watcher silence add|list|expire` manage them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Select, String, Table, Text, or_, select, update
from sqlalchemy.engine import Connection

from watcher.asyncdb import AsyncConnection
from watcher.errors import WatcherError
from watcher.store import UTCDateTime, _Id, metadata

silences = Table(
    "silences",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("rule", String(100), nullable=False),
    Column("until", UTCDateTime, nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expired_at", UTCDateTime),
)


class SilenceError(WatcherError):
    """A silence cannot be added or expired (bad time, unknown id)."""


@dataclass(frozen=True)
class Silence:
    id: int
    rule: str
    until: datetime
    comment: str
    created_at: datetime
    expired_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.expired_at is None and self.until > now

    def covers(self, rule_id: str, now: datetime) -> bool:
        return self.active(now) and fnmatch.fnmatchcase(rule_id, self.rule)


_DURATION = re.compile(r"^\+?(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_until(text: str, now: datetime) -> datetime:
    """An end time: ISO 8601 with a time zone (2026-12-01T08:00Z) or a duration (2h, 3d, 1w)."""
    m = _DURATION.match(text.strip())
    if m:
        return now + timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SilenceError(
            f"--until {text!r}: not an ISO 8601 time or a duration like 2h, 3d, 1w"
        ) from None
    if when.tzinfo is None:
        raise SilenceError(f"--until {text!r}: give a time zone (e.g. Z or +01:00)")
    return when


def _silence(row: object) -> Silence:
    m = row._mapping  # type: ignore[attr-defined]
    return Silence(
        id=int(m["id"]),
        rule=m["rule"],
        until=m["until"],
        comment=m["comment"],
        created_at=m["created_at"],
        expired_at=m["expired_at"],
    )


async def add_silence(
    conn: AsyncConnection, *, rule: str, until: datetime, comment: str, now: datetime
) -> Silence:
    if not rule.strip():
        raise SilenceError("--rule: give a rule id or pattern")
    if until <= now:
        raise SilenceError(f"--until {until.isoformat()}: already past")
    if not comment.strip():
        raise SilenceError("--comment: say why the rule is silenced")
    row = (
        await conn.execute(
            silences.insert()
            .values(rule=rule.strip()[:100], until=until, comment=comment, created_at=now)
            .returning(*silences.c)
        )
    ).one()
    return _silence(row)


def _listed(now: datetime, include_inactive: bool) -> Select[Any]:
    q = select(silences).order_by(silences.c.id)
    if not include_inactive:
        q = q.where(silences.c.expired_at.is_(None), silences.c.until > now)
    return q


async def list_silences(
    conn: AsyncConnection, *, now: datetime, include_inactive: bool = False
) -> list[Silence]:
    return [_silence(r) for r in await conn.execute(_listed(now, include_inactive))]


def active_silences(conn: Connection, now: datetime) -> list[Silence]:
    """The silences in force, read on a synchronous connection (the outbox's transactions)."""
    return [_silence(r) for r in conn.execute(_listed(now, False))]


async def expire_silence(conn: AsyncConnection, silence_id: int, *, now: datetime) -> Silence:
    row = (
        await conn.execute(
            update(silences)
            .where(
                silences.c.id == silence_id,
                or_(silences.c.expired_at.is_(None), silences.c.expired_at > now),
            )
            .values(expired_at=now)
            .returning(*silences.c)
        )
    ).first()
    if row is None:
        raise SilenceError(f"silence {silence_id}: no such active silence")
    return _silence(row)


def silenced(rule_id: str, active: Sequence[Silence], now: datetime) -> bool:
    return any(s.covers(rule_id, now) for s in active)
