"""Source health alerts: a silent source must never look like a quiet world.

A source is *broken* when its consecutive errors reach `[health]
broken_after_errors` (or a 410 deactivated it), and *quiet* when it has
brought no new item for longer than its `quiet_after_s` (per source, off by
default; a source that never brought an item counts from its first successful
poll). Either raises one operational notice to `[health] operator_receiver`,
and one recovery notice when the source is healthy again, which needs a
successful poll after the problem was raised (a source whose configured URL
changed has not recovered until the new URL answered). A broken source that
polls fine again but still brings nothing is told as "no longer failing, but
still quiet", not as a recovery.

What the operator was told is kept in the store (table `source_health`, one row
per source), so a restart neither repeats nor forgets a notice. Several
processes may share the store (replicas on PostgreSQL, or an old and a new
process overlapping in a restart): before sending, a process *claims* the
transition with one conditional UPDATE that only one of them can win, and holds
it for a lease. A delivered notice becomes what the operator was told; a failed
send releases the claim, so the next check (here or elsewhere) retries it under
the same id: an episode's notice has one id however often it is tried.

Operational notices are not rule alerts: they bypass rules, stories and the
outbox and go straight to the operator's receiver (a signed webhook with
`"type": "source_health"`, a short Slack message, or a short email).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib
from sqlalchemy import (
    Column,
    ColumnElement,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from watcher import constants
from watcher.config import (
    Config,
    EmailReceiverConfig,
    SlackReceiverConfig,
    WebhookReceiverConfig,
)
from watcher.errors import DeliveryError
from watcher.migrate import upgrade
from watcher.models import Clock
from watcher.notify.slack import SlackNotifier, text_message
from watcher.notify.webhook import WebhookNotifier
from watcher.store import (
    SourceHealth,
    SourceState,
    Store,
    UTCDateTime,
    _insert,
    items,
    metadata,
)

logger = logging.getLogger(__name__)

OperatorReceiver = EmailReceiverConfig | WebhookReceiverConfig | SlackReceiverConfig

OK = "ok"  # what the operator was told last: nothing yet, or a recovery

# On the store's metadata, so it is created and upgraded with the store's tables
# (and on first use by a store opened before this module was imported).
source_health = Table(
    "source_health",
    metadata,
    Column("source_id", String(64), primary_key=True),
    # what the operator was told last: "broken", "quiet", or "ok" (nothing, or recovered)
    Column("problem", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
    # The columns below came later, so they are nullable.
    # the source's last success when `problem` was raised: getting better needs a later one
    Column("success_before", UTCDateTime),
    # the source's first successful poll the monitor saw: a source that never brought an
    # item is quiet counted from here
    Column("first_success_at", UTCDateTime),
    # a notice claimed or tried and not delivered yet: its state and the start of its
    # episode (in its id, the same on every try; its detail is worked out afresh each try)
    Column("pending", String(16)),
    Column("pending_since", UTCDateTime),
    # the process sending it, until when
    Column("claimed_by", String(32)),
    Column("claimed_until", UTCDateTime),
)
# for `_ensure_table`: upgrade this table alone, whatever else the store's metadata holds
_OWN_METADATA = MetaData()
source_health.to_metadata(_OWN_METADATA)


@dataclass(frozen=True)
class Notice:
    source_id: str
    state: str  # "broken", "quiet" or "recovered"
    detail: str
    since: datetime  # the start of this notice's episode (in its id)
    previous: str | None = None  # the problem the operator was told before, if any

    @property
    def subject(self) -> str:
        if self.state == "recovered":
            return f"[watcher] source {self.source_id} recovered"
        if self.state == "quiet" and self.previous == "broken":
            return f"[watcher] source {self.source_id} is no longer failing, but still quiet"
        return f"[watcher] source {self.source_id} is {self.state}"

    @property
    def msg_id(self) -> str:
        """The same for every try of one notice, different for the next episode."""
        return f"wh_{self.source_id}_{self.state}_{int(self.since.timestamp())}"


def error_text(source_id: str, reason: str | None, error: str | None) -> str:
    """A source's last error as "reason: message", said once.

    The stored message is the error's own text, which already names the source and
    the reason ("source 'x': http_status: HTTP 500"); neither is repeated.
    """
    text = (error or "").removeprefix(f"source '{source_id}': ")
    if not reason:
        return text or "error"
    for said in (f"{reason}: ", f"{reason.replace('_', ' ')}: "):
        if text.startswith(said):
            return f"{reason}: {text.removeprefix(said)}"
    return f"{reason}: {text}" if text else reason


def is_broken(state: SourceState | SourceHealth, broken_after_errors: int) -> bool:
    """The one rule for "broken", shared by the notices and `watcher sources list`."""
    return not state.active or state.error_count >= broken_after_errors


def diagnose(
    source_id: str,
    state: SourceState | SourceHealth | None,
    last_new_item_at: datetime | None,
    *,
    quiet_after_s: int | None,
    broken_after_errors: int,
    now: datetime,
    first_success_at: datetime | None,
) -> tuple[str, str] | None:
    """(problem, detail) for an unhealthy source, None for a healthy one.

    Quiet is counted from the last new item, or, for a source that never brought
    one, from its first successful poll (`first_success_at`): never from its last
    poll, which every healthy poll moves on.
    """
    if state is None or state.last_polled_at is None:
        return None  # not polled yet: nothing to judge
    if not state.active:
        return "broken", "deactivated: " + error_text(
            source_id, state.last_error_reason, state.last_error or "HTTP 410"
        )
    if is_broken(state, broken_after_errors):
        return "broken", (
            f"{state.error_count} errors in a row; last: "
            + error_text(source_id, state.last_error_reason, state.last_error)
        )
    if quiet_after_s:
        since = last_new_item_at or first_success_at
        if since is not None and now - since > timedelta(seconds=quiet_after_s):
            hours = (now - since).total_seconds() / 3600
            what = "no new item" if last_new_item_at else "no item at all"
            return "quiet", (
                f"{what} for {hours:.1f} h, since {since:%Y-%m-%d %H:%M} UTC (expected at "
                f"least one every {quiet_after_s / 3600:.1f} h)"
            )
    return None


async def last_new_items(conn: AsyncConnection) -> dict[str, datetime]:
    """When each source last brought a new item (its newest item's fetch time)."""
    query = select(items.c.source_id, func.max(items.c.fetched_at)).group_by(items.c.source_id)
    return dict((await conn.execute(query)).all())


async def quiet_since(store: Store) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Per source, what `diagnose` counts quiet from: (last new item, first success the
    monitor noted). Read only, for `watcher sources list`."""
    await _upgraded(store)
    async with store.engine.connect() as conn:
        last_new = await last_new_items(conn)
        h = source_health.c
        first = dict((await conn.execute(select(h.source_id, h.first_success_at))).all())
    return {s: (last_new.get(s), first.get(s)) for s in last_new.keys() | first.keys()}


async def _upgraded(store: Store) -> None:
    """The health table there and current, whatever else the store's metadata holds."""
    async with store.engine.begin() as conn:
        await conn.run_sync(upgrade, _OWN_METADATA)


def _polled_fine_since(state: SourceHealth | None, row: Any) -> bool:
    """Whether the source was polled successfully after `row`'s problem was raised."""
    if state is None or state.last_success_at is None:
        return False
    if row.success_before is not None:
        return bool(state.last_success_at > row.success_before)
    # it had never succeeded when the problem was raised (or the row predates the column)
    return bool(state.last_success_at >= row.raised_at)


def _unclaimed(source_id: str, told: str, now: datetime) -> ColumnElement[bool]:
    """The source's row, still saying `told`, with no live claim: what a claim may take."""
    h = source_health.c
    return and_(
        h.source_id == source_id,
        h.problem == told,
        or_(h.claimed_until.is_(None), h.claimed_until <= now),
    )


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
        self._owner = secrets.token_hex(8)  # names this process's claims
        self._ready = False

    async def _ensure_table(self) -> None:
        if not self._ready:
            await _upgraded(self.store)
            self._ready = True

    async def check(self) -> list[Notice]:
        """Judge every enabled source; send and record what changed. Returns what was sent."""
        await self._ensure_table()
        receiver = self.config.receiver(self.config.health.operator_receiver or "")
        if not isinstance(receiver, OperatorReceiver):
            return []  # none configured
        now = self.clock()
        states = await self.store.health_states()
        async with self.store.engine.connect() as conn:
            last_new = await last_new_items(conn)
            rows = {r.source_id: r for r in await conn.execute(select(source_health))}
        first_success = await self._note_first_success(states, rows)
        sent: list[Notice] = []
        for source in self.config.sources:
            if not source.enabled:
                continue
            state = states.get(source.id)
            row = rows.get(source.id)
            problem = diagnose(
                source.id,
                state,
                last_new.get(source.id),
                quiet_after_s=source.quiet_after_s,
                broken_after_errors=self.config.health.broken_after_errors,
                now=now,
                first_success_at=first_success.get(source.id),
            )
            want, detail = problem or (OK, "")
            told = row.problem if row is not None else OK
            if want == told:
                if row is not None and row.pending is not None:
                    await self._drop_pending(source.id, told, now)  # it went away unsent
                continue
            if told == "broken" and want != "broken" and not _polled_fine_since(state, row):
                continue  # not fixed until it was polled fine again (e.g. a new URL, unpolled)
            if want == OK:
                detail = f"was {told}; healthy again"
            elif want == "quiet" and told == "broken":
                detail = f"no longer failing, but still quiet: {detail}"
            elif told != OK:
                detail = f"was {told}; now {detail}"
            since = await self._claim(
                source.id, told=told, want=want, detail=detail, now=now, receiver=receiver
            )
            if since is None:
                continue  # another process has it, or told the operator already
            notice = Notice(
                source.id,
                "recovered" if want == OK else want,
                detail,
                previous=None if told == OK else told,
                since=since,
            )
            try:
                await self._send(receiver, notice)
            except (DeliveryError, aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                logger.warning(
                    "receiver '%s': source health notice for %s not sent (retried at the "
                    "next check): %s",
                    receiver.id,
                    source.id,
                    exc if isinstance(exc, DeliveryError) else type(exc).__name__,
                )
                await self._release(source.id)
                continue
            await self._delivered(notice, want, state)
            sent.append(notice)
        return sent

    async def _note_first_success(
        self, states: Mapping[str, SourceHealth], rows: Mapping[str, Any]
    ) -> dict[str, datetime]:
        """Each source's first successful poll the monitor saw, noting the new ones."""
        first: dict[str, datetime] = {}
        new_rows: list[dict[str, Any]] = []
        later: list[tuple[str, datetime]] = []
        for source in self.config.sources:
            state, row = states.get(source.id), rows.get(source.id)
            if row is not None and row.first_success_at is not None:
                first[source.id] = row.first_success_at
            elif state is not None and state.last_success_at is not None:
                # the row's own first success (kept by every poll since it was added),
                # else the latest one: what a store from before that column knows
                at = state.first_success_at or state.last_success_at
                first[source.id] = at
                if row is None:
                    new_rows.append(
                        {
                            "source_id": source.id,
                            "problem": OK,
                            "detail": "",
                            "raised_at": at,
                            "first_success_at": at,
                        }
                    )
                else:
                    later.append((source.id, at))
        if new_rows or later:
            async with self.store.engine.begin() as conn:
                if new_rows:
                    await conn.execute(
                        _insert(conn, source_health).on_conflict_do_nothing(), new_rows
                    )
                for source_id, at in later:
                    await conn.execute(
                        update(source_health)
                        .where(
                            source_health.c.source_id == source_id,
                            source_health.c.first_success_at.is_(None),
                        )
                        .values(first_success_at=at)
                    )
        return first

    def _lease(self, receiver: OperatorReceiver) -> timedelta:
        return timedelta(seconds=max(constants.HEALTH_CLAIM_LEASE_S, 4 * receiver.timeout_s))

    async def _claim(
        self,
        source_id: str,
        *,
        told: str,
        want: str,
        detail: str,
        now: datetime,
        receiver: OperatorReceiver,
    ) -> datetime | None:
        """Claim the notice of `source_id` going from `told` to `want`; None if not ours.

        One conditional UPDATE, so of several processes one wins: the row must still say
        `told`, and no live claim may hold it. Returns the episode's start: the first
        try's time when this very notice was tried before, else now.
        """
        h = source_health.c
        async with self.store.engine.begin() as conn:
            if told == OK:  # a row to claim (nothing happens if one exists)
                await conn.execute(
                    _insert(conn, source_health)
                    .values(source_id=source_id, problem=OK, detail="", raised_at=now)
                    .on_conflict_do_nothing()
                )
            since: datetime | None = (
                await conn.execute(
                    update(source_health)
                    .where(_unclaimed(source_id, told, now))
                    .values(
                        pending=want,
                        pending_since=case(
                            (
                                (h.pending == want) & h.pending_since.is_not(None),
                                h.pending_since,
                            ),
                            else_=now,
                        ),
                        claimed_by=self._owner,
                        claimed_until=now + self._lease(receiver),
                    )
                    .returning(h.pending_since)
                )
            ).scalar_one_or_none()
        return since

    async def _release(self, source_id: str) -> None:
        """A failed send: free the claim, keep the pending notice (and its id) for a retry."""
        h = source_health.c
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(source_health)
                .where(h.source_id == source_id, h.claimed_by == self._owner)
                .values(claimed_by=None, claimed_until=None)
            )

    async def _drop_pending(self, source_id: str, told: str, now: datetime) -> None:
        """Forget a notice never delivered whose problem went away: the next is a new episode."""
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(source_health)
                .where(_unclaimed(source_id, told, now))
                .values(pending=None, pending_since=None, claimed_by=None, claimed_until=None)
            )

    async def _delivered(self, notice: Notice, want: str, state: SourceHealth | None) -> None:
        """What the operator was told is now `want`; the claim is done."""
        h = source_health.c
        async with self.store.engine.begin() as conn:
            done = await conn.execute(
                update(source_health)
                .where(h.source_id == notice.source_id, h.claimed_by == self._owner)
                .values(
                    problem=want,
                    detail=notice.detail[:2000],
                    raised_at=notice.since,
                    success_before=state.last_success_at if state is not None else None,
                    pending=None,
                    pending_since=None,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
        if done.rowcount == 0:
            logger.warning(
                "source health notice for %s was sent after its claim lapsed: another "
                "process may send it again",
                notice.source_id,
            )

    async def _send(self, receiver: OperatorReceiver, notice: Notice) -> None:
        if isinstance(receiver, WebhookReceiverConfig):
            document = {
                "version": "1",
                "type": "source_health",
                "id": notice.msg_id,
                "source": notice.source_id,
                "state": notice.state,
                "previous": notice.previous,
                "detail": notice.detail,
                "since": notice.since.isoformat(),
                "at": self.clock().isoformat(),
            }
            hook = WebhookNotifier(receiver, session=self.session, clock=self.clock)
            await hook.post(document, notice.msg_id)
            return
        if isinstance(receiver, SlackReceiverConfig):
            slack = SlackNotifier(receiver, session=self.session, clock=self.clock)
            await slack.post(text_message(notice.subject.removeprefix("[watcher] "), notice.detail))
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
