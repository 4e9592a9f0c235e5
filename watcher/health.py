"""Source health alerts: a silent source must never look like a quiet world.

A source is *broken* when its consecutive errors reach `[health]
broken_after_errors` (or a 410 deactivated it), and *quiet* when it has
brought no new item for longer than its `quiet_after_s` (per source, off by
default). Either raises one operational notice to `[health]
operator_receiver`, and one recovery notice when the source is healthy again.
What was raised is kept in the store (table `source_health`), so a restart
neither repeats nor forgets a notice.

Operational notices are not rule alerts: they bypass rules, stories and the
outbox and go straight to the operator's receiver (a signed webhook with
`"type": "source_health"`, or a short email); a failed send is retried at the
next check, because the notice is only marked raised once it is delivered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage

import aiohttp
import aiosmtplib
from sqlalchemy import Column, String, Table, Text, delete, func, select

from watcher.config import Config, EmailReceiverConfig, WebhookReceiverConfig
from watcher.models import Clock
from watcher.notify.webhook import sign
from watcher.polite import PollPolicy
from watcher.store import SourceState, Store, UTCDateTime, _insert, items, metadata

logger = logging.getLogger(__name__)

# On the store's metadata, so it is created and dropped with the store's tables
# (and created on first use by a store opened before this module was imported).
source_health = Table(
    "source_health",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("problem", String(16), nullable=False),  # "broken" or "quiet"
    Column("detail", Text, nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class Notice:
    source_id: str
    state: str  # "broken", "quiet" or "recovered"
    detail: str

    @property
    def subject(self) -> str:
        if self.state == "recovered":
            return f"[watcher] source {self.source_id} recovered"
        return f"[watcher] source {self.source_id} is {self.state}"


def diagnose(
    source_id: str,
    state: SourceState | None,
    last_new_item_at: datetime | None,
    *,
    quiet_after_s: int | None,
    broken_after_errors: int,
    now: datetime,
) -> tuple[str, str] | None:
    """(problem, detail) for an unhealthy source, None for a healthy one."""
    if state is None or state.last_polled_at is None:
        return None  # not polled yet: nothing to judge
    if not state.active:
        return "broken", f"deactivated: {state.last_error or 'HTTP 410'}"
    if PollPolicy(error_limit=broken_after_errors).is_broken(state.error_count):
        return "broken", (
            f"{state.error_count} errors in a row; last: {state.last_error_reason}: "
            f"{state.last_error}"
        )
    if quiet_after_s:
        since = last_new_item_at or state.last_success_at
        if since is not None and now - since > timedelta(seconds=quiet_after_s):
            hours = (now - since).total_seconds() / 3600
            return "quiet", (
                f"no new item for {hours:.1f} h (expected at least one every "
                f"{quiet_after_s / 3600:.1f} h)"
            )
    return None


class HealthMonitor:
    def __init__(
        self,
        *,
        store: Store,
        config: Config,
        session: aiohttp.ClientSession,
        clock: Clock,
    ) -> None:
        self.store = store
        self.config = config
        self.session = session
        self.clock = clock
        self._ready = False

    async def _ensure_table(self) -> None:
        if not self._ready:
            async with self.store.engine.begin() as conn:
                await conn.run_sync(source_health.create, checkfirst=True)
            self._ready = True

    async def check(self) -> list[Notice]:
        """Judge every enabled source; send and record what changed. Returns what was sent."""
        await self._ensure_table()
        receiver = self.config.receiver(self.config.health.operator_receiver or "")
        if not isinstance(receiver, EmailReceiverConfig | WebhookReceiverConfig):
            return []  # none configured, or a receiver type without source-health support
        now = self.clock()
        states = {s.id: s for s in await self.store.list_sources()}
        async with self.store.engine.connect() as conn:
            last_new = dict(
                (
                    await conn.execute(
                        select(items.c.source_id, func.max(items.c.fetched_at)).group_by(
                            items.c.source_id
                        )
                    )
                ).all()
            )
            raised = {r.source_id: r.problem for r in await conn.execute(select(source_health))}
        sent: list[Notice] = []
        for source in self.config.sources:
            if not source.enabled:
                continue
            problem = diagnose(
                source.id,
                states.get(source.id),
                last_new.get(source.id),
                quiet_after_s=source.quiet_after_s,
                broken_after_errors=self.config.health.broken_after_errors,
                now=now,
            )
            before = raised.get(source.id)
            if problem is not None and before != problem[0]:
                notice = Notice(source.id, problem[0], problem[1])
            elif problem is None and before is not None:
                notice = Notice(source.id, "recovered", f"was {before}; healthy again")
            else:
                continue
            try:
                await self._send(receiver, notice)
            except (aiohttp.ClientError, aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                logger.warning(
                    "receiver '%s': source health notice for %s not sent (retried at the "
                    "next check): %s",
                    receiver.id,
                    source.id,
                    type(exc).__name__,
                )
                continue
            await self._record(notice, now)
            sent.append(notice)
        return sent

    async def _record(self, notice: Notice, now: datetime) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(
                delete(source_health).where(source_health.c.source_id == notice.source_id)
            )
            if notice.state != "recovered":
                ins = _insert(conn, source_health)
                await conn.execute(
                    ins.values(
                        source_id=notice.source_id,
                        problem=notice.state,
                        detail=notice.detail[:2000],
                        raised_at=now,
                    )
                )

    async def _send(
        self, receiver: EmailReceiverConfig | WebhookReceiverConfig, notice: Notice
    ) -> None:
        if isinstance(receiver, WebhookReceiverConfig):
            timestamp = int(self.clock().timestamp())
            msg_id = f"wh_{notice.source_id}_{notice.state}_{timestamp}"
            body = json.dumps(
                {
                    "version": "1",
                    "type": "source_health",
                    "id": msg_id,
                    "source": notice.source_id,
                    "state": notice.state,
                    "detail": notice.detail,
                    "at": self.clock().isoformat(),
                }
            ).encode()
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
            }
            if receiver.secret is not None:
                headers["webhook-signature"] = sign(
                    receiver.secret.get_secret_value(), msg_id, timestamp, body
                )
            async with self.session.post(
                str(receiver.url),
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=receiver.timeout_s),
            ) as resp:
                resp.raise_for_status()
            return
        message = EmailMessage()
        message["From"] = receiver.sender
        message["To"] = ", ".join(receiver.to)
        message["Subject"] = notice.subject
        message.set_content(
            f"Source: {notice.source_id}\nState: {notice.state}\n{notice.detail}\n\n"
            "A silent source must never look like a quiet world: until it recovers, "
            "no alert from it does not mean nothing happened.\n"
        )
        await aiosmtplib.send(
            message,
            hostname=receiver.host,
            port=receiver.port,
            username=receiver.username or None,
            password=receiver.password.get_secret_value() if receiver.password else None,
            use_tls=receiver.tls == "implicit",
            start_tls=receiver.tls == "starttls",
            timeout=receiver.timeout_s,
        )
