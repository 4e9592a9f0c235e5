"""Email through aiosmtplib: a text and an HTML part rendered from Jinja2 templates."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from watcher.config import EmailReceiverConfig
from watcher.errors import DeliveryError, DeliveryReason
from watcher.models import Clock
from watcher.notify.base import excerpt, render
from watcher.store import ClaimedDelivery

MESSAGE_ID_DOMAIN = "watcher.invalid"


def build_message(
    claimed: ClaimedDelivery, *, sender: str, to: list[str], clock: Clock
) -> EmailMessage:
    a, d = claimed.alert, claimed.delivery
    context = {
        "alert": a,
        "excerpt": excerpt(a.text),
        "published": a.published.strftime("%Y-%m-%d %H:%M UTC") if a.published else "unknown",
    }
    msg = EmailMessage()
    title = " ".join(a.title.split())[:150] or "(untitled)"
    msg["Subject"] = f"[{a.severity.value.upper()}] {a.rule_title}: {title}"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(clock())
    msg["Message-ID"] = f"<{d.idempotency_key}@{MESSAGE_ID_DOMAIN}>"
    msg["X-Watcher-Rule"] = a.rule_id
    msg["X-Watcher-Event-Type"] = a.event_type.value
    msg.set_content(render("alert.txt.j2", **context))
    msg.add_alternative(render("alert.html.j2", **context), subtype="html")
    return msg


class EmailNotifier:
    def __init__(self, config: EmailReceiverConfig, *, clock: Clock) -> None:
        self.config = config
        self.receiver_id = config.id
        self.clock = clock

    async def send(self, claimed: ClaimedDelivery) -> None:
        c = self.config
        msg = build_message(claimed, sender=c.sender, to=c.to, clock=self.clock)
        try:
            await aiosmtplib.send(
                msg,
                hostname=c.host,
                port=c.port,
                username=c.username or None,
                password=c.password.get_secret_value() if c.password else None,
                use_tls=c.tls == "implicit",
                start_tls=c.tls == "starttls",
                timeout=c.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({r.code for r in exc.recipients})
            permanent = all(code >= 500 for code in codes)
            raise DeliveryError(
                DeliveryReason.SMTP_PERMANENT if permanent else DeliveryReason.SMTP_TRANSIENT,
                f"recipients refused ({', '.join(map(str, codes))})",
                receiver=self.receiver_id,
                retryable=not permanent,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            permanent = exc.code >= 500
            raise DeliveryError(
                DeliveryReason.SMTP_PERMANENT if permanent else DeliveryReason.SMTP_TRANSIENT,
                f"SMTP {exc.code} {exc.message[:200]}",
                receiver=self.receiver_id,
                retryable=not permanent,
            ) from None
        except aiosmtplib.SMTPTimeoutError:
            raise DeliveryError(
                DeliveryReason.TIMEOUT,
                f"SMTP server {c.host}:{c.port} did not answer within {c.timeout_s:g}s",
                receiver=self.receiver_id,
                retryable=True,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(
                DeliveryReason.CONNECT,
                f"SMTP server {c.host}:{c.port}: {type(exc).__name__}",
                receiver=self.receiver_id,
                retryable=True,
            ) from None
