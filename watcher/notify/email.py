"""Email through aiosmtplib: text and HTML parts rendered from Jinja2 templates.

Connections are kept and reused (up to the receiver's `concurrency`), so a
batch of alerts costs one SMTP handshake, not one per message. Each recipient
gets a personal copy carrying a signed one-click unsubscribe link (RFC 8058);
an unsubscribed address is skipped. Every alert about the same story carries
the same `References`, so mail clients thread follow-ups together; an update
replies to the notification it follows (In-Reply-To). A group or a digest is
one email listing its alerts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import quopri
from collections.abc import Awaitable, Callable
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiosmtplib

from watcher.config import EmailReceiverConfig
from watcher.constants import SEND_LEASE_SHARE_EMAIL, SMTP_IDLE_MAX_S
from watcher.errors import DeliveryError, DeliveryReason
from watcher.models import Alert, Clock
from watcher.notify.base import excerpt, render, within_lease
from watcher.store import Batch, BatchMember, ClaimedDelivery
from watcher.text import one_line

MESSAGE_ID_DOMAIN = "watcher.invalid"

Suppressed = Callable[[str], Awaitable[set[str]]]
"""receiver id -> addresses that unsubscribed."""


async def nobody_unsubscribed(_receiver: str) -> set[str]:
    return set()


def unsubscribe_token(key: bytes, receiver: str, address: str) -> str:
    digest = hmac.new(key, f"{receiver}\n{address.lower()}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def unsubscribe_url(base_url: str, key: bytes, receiver: str, address: str) -> str:
    query = urlencode({"r": receiver, "a": address, "t": unsubscribe_token(key, receiver, address)})
    return f"{base_url.rstrip('/')}/unsubscribe?{query}"


def story_thread_id(alert: Alert) -> str:
    return f"<story.{alert.story_key}@{MESSAGE_ID_DOMAIN}>"


def _context(alert: Alert) -> dict[str, Any]:
    return {
        "alert": alert,
        "excerpt": excerpt(alert.text),
        "published": alert.published.strftime("%Y-%m-%d %H:%M UTC")
        if alert.published
        else "unknown",
        "sources": alert.all_sources,
    }


def _header(name: str, value: str) -> str:
    """A header value: one line with no control (text.one_line), RFC 2047-encoded when it
    is not ASCII or holds "=?", which a mail client would decode as an encoded word (a
    feed's title "=?utf-8?b?...?=" would show as any text, line breaks included). Encoded,
    it is folded: encoded words of at most 75 characters (RFC 2047; email.header makes
    them one longer than its maxlinelen), one to a line, which a reader joins back into
    the same text."""
    value = one_line(value)
    if value.isascii() and "=?" not in value:
        return value
    return Header(value, "utf-8", maxlinelen=75, header_name=name).encode(linesep="\r\n")


def _address(value: str) -> str:
    """An address header; a non-ASCII display name is RFC 2047-encoded, the address is not."""
    return formataddr(parseaddr(" ".join(value.split())), charset="utf-8")


def _qp(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends (lines stay under 76 characters)."""
    return quopri.encodestring(text.encode("utf-8")).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def build_message(
    claimed: ClaimedDelivery,
    *,
    sender: str,
    to: str,
    clock: Clock,
    unsubscribe: str = "",
) -> bytes:
    """The notification email as wire bytes: multipart/alternative, text then HTML.

    One alert (or an update to one) reads as an alert; a group or a digest
    lists its alerts. Written directly rather than through the email package's
    generator, which costs as much as the SMTP send itself (measured in
    bench/deliver.py); every header here is ours and ASCII, short but the
    subject, which email.header encodes (RFC 2047) and folds. Tests parse the
    result back with the email package.
    """
    key = claimed.delivery.idempotency_key
    batch = claimed.batch
    if batch is None:
        return _alert_message(claimed.alert, key, sender, to, clock, unsubscribe, None)
    if batch.single:
        member = batch.members[0]
        return _alert_message(member.alert, key, sender, to, clock, unsubscribe, member)
    return _list_message(batch, key, sender, to, clock, unsubscribe)


def _alert_subject(a: Alert) -> str:
    title = one_line(a.title)[:150] or "(untitled)"
    return f"[{a.severity.value.upper()}] {a.rule_title}: {title}"


def _alert_message(
    a: Alert,
    key: str,
    sender: str,
    to: str,
    clock: Clock,
    unsubscribe: str,
    update: BatchMember | None,
) -> bytes:
    context = _context(a) | {"unsubscribe": unsubscribe, "update": update is not None}
    thread = story_thread_id(a)
    subject = _alert_subject(a)
    in_reply_to = references = thread
    if update is not None:
        subject = f"Re: {subject}"  # mail clients thread it with the alert it updates
        if update.reply_to:
            in_reply_to = _message_id(update.reply_to)
            references = f"{thread} {in_reply_to}"
    headers = [
        ("Subject", _header("Subject", subject)),
        ("From", _address(sender)),
        ("To", _address(to)),
        ("Date", format_datetime(clock())),
        ("Message-ID", _message_id(key)),
        ("In-Reply-To", in_reply_to),
        ("References", references),
        ("X-Watcher-Rule", a.rule_id),
        ("X-Watcher-Event-Type", a.event_type.value),
    ]
    if update is not None:
        headers.append(("X-Watcher-Update", "true"))
    return _wire(headers, key, unsubscribe, ("alert.txt.j2", "alert.html.j2"), context)


def _message_id(key: str) -> str:
    return f"<{key}@{MESSAGE_ID_DOMAIN}>"


def period_text(detail: dict[str, Any]) -> str:
    """A digest's period in its subscriber's time zone: '5 Feb 2026 08:00 – 6 Feb ... (tz)'."""
    zone = ZoneInfo(str(detail.get("timezone") or "UTC"))
    ends = [
        datetime.fromisoformat(str(detail[k])).astimezone(zone)
        for k in ("period_start", "period_end")
        if detail.get(k)
    ]
    if len(ends) != 2:
        return ""
    start, end = (f"{t.day} {t:%b %Y %H:%M}" for t in ends)
    return f"{start} – {end} ({zone.key})"


def _list_message(
    batch: Batch, key: str, sender: str, to: str, clock: Clock, unsubscribe: str
) -> bytes:
    alerts = [m.alert for m in batch.members]
    n = len(alerts)
    top = max((a.severity for a in alerts), key=lambda s: s.rank).value.upper()
    context = {
        "alerts": alerts,
        "updates": [m.alert.id for m in batch.members if m.update],
        "unsubscribe": unsubscribe,
        "period": "",
        "heading": "watcher",
        "excerpts": {a.id: excerpt(a.text, 300) for a in alerts},
    }
    first = (one_line(alerts[0].title)[:120] or "(untitled)") if alerts else ""
    if batch.kind == "digest":
        context |= {"period": period_text(batch.detail), "heading": "watcher digest",
                    "excerpts": {}}  # fmt: skip
        subject = f"[watcher] Digest: {n} alert{'' if n == 1 else 's'}"
        if context["period"]:
            subject += f", {context['period']}"
    else:
        more = f" and {n - 1} more" if n > 1 else ""
        subject = f"[{top}] {n} alert{'' if n == 1 else 's'}: {first}{more}"
    replies = [_message_id(m.reply_to) for m in batch.members if m.update and m.reply_to]
    threads = list(dict.fromkeys([*replies, *(story_thread_id(a) for a in alerts)]))
    headers = [
        ("Subject", _header("Subject", subject)),
        ("From", _address(sender)),
        ("To", _address(to)),
        ("Date", format_datetime(clock())),
        ("Message-ID", _message_id(key)),
    ]
    if batch.kind != "digest" and threads:
        headers.append(("In-Reply-To", threads[0]))
        headers.append(("References", " ".join(threads[:20])))
    headers.append(("X-Watcher-Kind", batch.kind))
    return _wire(headers, key, unsubscribe, ("digest.txt.j2", "digest.html.j2"), context)


def _wire(
    headers: list[tuple[str, str]],
    key: str,
    unsubscribe: str,
    templates: tuple[str, str],
    context: dict[str, Any],
) -> bytes:
    boundary = f"=_watcher_{key}"
    if unsubscribe:
        headers.append(("List-Unsubscribe", f"<{unsubscribe}>"))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    headers += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    out = [f"{k}: {v}".encode() for k, v in headers]
    out.append(b"")
    for subtype, template in zip(("plain", "html"), templates, strict=True):
        out += [
            f"--{boundary}".encode(),
            f'Content-Type: text/{subtype}; charset="utf-8"'.encode(),
            b"Content-Transfer-Encoding: quoted-printable",
            b"",
            _qp(render(template, **context)),
        ]
    out += [f"--{boundary}--".encode(), b""]
    return b"\r\n".join(out)


class EmailNotifier:
    def __init__(
        self,
        config: EmailReceiverConfig,
        *,
        clock: Clock,
        base_url: str = "",
        unsubscribe_key: bytes = b"",
        suppressed: Suppressed = nobody_unsubscribed,
    ) -> None:
        self.config = config
        self.receiver_id = config.id
        self.clock = clock
        self.base_url = base_url
        self.unsubscribe_key = unsubscribe_key
        self.suppressed = suppressed
        self._idle: list[tuple[aiosmtplib.SMTP, datetime]] = []  # with when it was last used
        self._lock = asyncio.Lock()

    async def send(self, claimed: ClaimedDelivery) -> None:
        """Send each recipient its copy; one refused recipient does not stop the others.

        A recipient that accepted the message on an earlier attempt is skipped; when some
        fail, the DeliveryError names them and carries those that have the message
        (`delivered`), so a retry goes to the others only. Everything ends before the
        row's lease does (SEND_LEASE_SHARE_EMAIL), or the row could be sent again beside
        this send."""
        had = claimed.delivery.delivered_to
        pending = await self._pending(had)
        sent: list[str] = []
        refused: list[tuple[str, aiosmtplib.SMTPResponseException]] = []
        c = self.config
        async with within_lease(
            claimed,
            self.clock(),
            SEND_LEASE_SHARE_EMAIL,
            where=f"SMTP server {c.host}:{c.port}: ",
            delivered=lambda: (*had, *sent),
        ):
            try:
                for addr in pending:
                    try:
                        await self._send_one(addr, self._message(claimed, addr))
                    except _RECIPIENT_ERRORS as exc:
                        if _closing(exc):
                            raise  # the server, not this recipient
                        refused.append((addr, exc))
                    else:
                        sent.append(addr)
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise self._error(exc, delivered=(*had, *sent)) from None
        if refused:
            raise self._refused(refused, len(pending), delivered=(*had, *sent))

    async def _pending(self, had: list[str]) -> list[str]:
        """The recipients still to send to: not unsubscribed, not sent to on an earlier try."""
        skip = await self.suppressed(self.receiver_id) | {a.lower() for a in had}
        return [addr for addr in self.config.to if addr.lower() not in skip]

    def _message(self, claimed: ClaimedDelivery, addr: str) -> bytes:
        c = self.config
        unsubscribe = ""
        if self.base_url and self.unsubscribe_key:
            unsubscribe = unsubscribe_url(self.base_url, self.unsubscribe_key, c.id, addr)
        return build_message(
            claimed, sender=c.sender, to=addr, clock=self.clock, unsubscribe=unsubscribe
        )

    async def close(self) -> None:
        async with self._lock:
            idle, self._idle = self._idle, []
        for smtp, _ in idle:
            await _quit(smtp)

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self.config
        smtp = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            username=c.username or None,
            password=c.password.get_secret_value() if c.password else None,
            use_tls=c.tls == "implicit",
            start_tls=c.tls == "starttls",
            cert_bundle=str(c.ca_file) if c.ca_file else None,
            timeout=c.timeout_s,
        )
        await smtp.connect()
        return smtp

    async def _pooled(self) -> aiosmtplib.SMTP | None:
        """An idle connection to reuse, or None. One idle for longer than SMTP_IDLE_MAX_S
        is closed instead (no QUIT, which could wait timeout_s on a server that has gone):
        the server has likely timed it out (Postfix after 300 s, some after 60 s), and a
        send on it would fail."""
        now = self.clock()
        async with self._lock:
            while self._idle:
                smtp, since = self._idle.pop()
                if smtp.is_connected and (now - since).total_seconds() <= SMTP_IDLE_MAX_S:
                    return smtp
                smtp.close()
        return None

    async def _send_one(self, to: str, msg: bytes) -> None:
        """Send one copy on an idle connection, or a new one."""
        smtp = await self._pooled()
        if smtp is not None:
            try:
                await self._send_on(smtp, to, msg)
                return
            except aiosmtplib.SMTPException as exc:
                if not _stale(exc):
                    raise
            # the server had let the idle connection go before this message: once more on
            # a new connection (another idle one may be as old)
        await self._send_on(await self._connect(), to, msg)

    async def _send_on(self, smtp: aiosmtplib.SMTP, to: str, msg: bytes) -> None:
        """Send one copy on `smtp`, kept for the next send unless it failed; a refused
        recipient is raised as its own reply (SMTPRecipientRefused)."""
        try:
            await _sendmail(smtp, self.config.sender, to, msg)
        except _RECIPIENT_ERRORS as exc:
            if _closing(exc):
                smtp.close()
            else:
                await self._keep(smtp)  # sendmail reset the envelope (RSET): still usable
            raise
        except BaseException:
            smtp.close()  # it may be mid-command (cancelled, timed out): never reused
            raise
        await self._keep(smtp)

    async def _keep(self, smtp: aiosmtplib.SMTP) -> None:
        """Keep a connection for the next send, up to `concurrency` of them; close the rest."""
        async with self._lock:
            if len(self._idle) < self.config.concurrency and smtp.is_connected:
                self._idle.append((smtp, self.clock()))
                return
        smtp.close()

    def _refused(
        self,
        refused: list[tuple[str, aiosmtplib.SMTPResponseException]],
        tried: int,
        *,
        delivered: tuple[str, ...],
    ) -> DeliveryError:
        """Some recipients refused their copy: retry (those only) unless every refusal is
        permanent. The error names each address: an address is no secret, and the
        operator needs it to act."""
        c = self.config
        permanent = all(exc.code >= 500 for _, exc in refused)
        each = "; ".join(f"{a}: {exc.code} {one_line(exc.message)[:100]}" for a, exc in refused)
        return DeliveryError(
            DeliveryReason.SMTP_PERMANENT if permanent else DeliveryReason.SMTP_TRANSIENT,
            f"SMTP server {c.host}:{c.port} refused {len(refused)} of {tried} recipient(s): "
            + each,
            receiver=self.receiver_id,
            retryable=not permanent,
            delivered=delivered,
        )

    def _error(self, exc: BaseException, *, delivered: tuple[str, ...] = ()) -> DeliveryError:
        """The connection or the server failed: every recipient not yet sent to is retried
        (or none, on a permanent reply)."""
        c = self.config
        where = f"SMTP server {c.host}:{c.port}"
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            permanent = exc.code >= 500
            return DeliveryError(
                DeliveryReason.SMTP_PERMANENT if permanent else DeliveryReason.SMTP_TRANSIENT,
                f"{where}: {exc.code} {exc.message[:200]}",
                receiver=self.receiver_id,
                retryable=not permanent,
                delivered=delivered,
            )
        if isinstance(exc, aiosmtplib.SMTPTimeoutError):
            return DeliveryError(
                DeliveryReason.TIMEOUT,
                f"{where} did not answer within {c.timeout_s:g}s",
                receiver=self.receiver_id,
                retryable=True,
                delivered=delivered,
            )
        return DeliveryError(
            DeliveryReason.CONNECT,
            f"{where}: {type(exc).__name__}",
            receiver=self.receiver_id,
            retryable=True,
            delivered=delivered,
        )


# Failures of one recipient's copy (RCPT, MAIL FROM or DATA refused); the others still
# get theirs. A 421 among them is not: the server is closing the connection.
_RECIPIENT_ERRORS = (
    aiosmtplib.SMTPRecipientRefused,
    aiosmtplib.SMTPSenderRefused,
    aiosmtplib.SMTPDataError,
)


async def _sendmail(smtp: aiosmtplib.SMTP, sender: str, to: str, msg: bytes) -> None:
    """smtp.sendmail to one recipient; its refusal is raised as the one reply it is (not
    as SMTPRecipientsRefused, a list of one)."""
    try:
        await smtp.sendmail(sender, [to], msg)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        [refusal] = exc.recipients
        raise refusal from None


def _closing(exc: BaseException) -> bool:
    """Is this reply 421: the server is closing the connection (any reply may be)?"""
    return (
        isinstance(exc, aiosmtplib.SMTPResponseException)
        and exc.code == aiosmtplib.SMTPStatus.domain_unavailable
    )


def _stale(exc: BaseException) -> bool:
    """Did a reused connection fail because the server had let it go (a disconnect, or
    421 "timeout exceeded" queued for the next command) before taking the message?"""
    return isinstance(exc, aiosmtplib.SMTPServerDisconnected) or _closing(exc)


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()
