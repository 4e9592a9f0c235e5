"""Notifiers: each integration is one module with one notifier type.

Notifiers only send, and say (through DeliveryError.retryable) whether a failure
is worth retrying. Retries, backoff and "mark sent" belong to the outbox.
"""

from __future__ import annotations

from aiohttp import ClientSession

from watcher.config import Config, EmailReceiverConfig, SlackReceiverConfig
from watcher.models import Clock
from watcher.notify.base import Notifier, render
from watcher.notify.email import EmailNotifier, Suppressed, nobody_unsubscribed
from watcher.notify.slack import SlackNotifier
from watcher.notify.webhook import WebhookNotifier

__all__ = [
    "EmailNotifier",
    "Notifier",
    "SlackNotifier",
    "WebhookNotifier",
    "build_notifiers",
    "render",
]


def build_notifiers(
    config: Config,
    *,
    session: ClientSession,
    clock: Clock,
    unsubscribe_key: bytes = b"",
    suppressed: Suppressed | None = None,
) -> dict[str, Notifier]:
    """One notifier per configured receiver.

    Email receivers get one-click unsubscribe links when an `unsubscribe_key`
    is given, and skip the addresses `suppressed` returns.
    """
    out: dict[str, Notifier] = {}
    for receiver in config.receivers:
        if isinstance(receiver, EmailReceiverConfig):
            out[receiver.id] = EmailNotifier(
                receiver,
                clock=clock,
                base_url=config.api.base_url(),
                unsubscribe_key=unsubscribe_key,
                suppressed=suppressed or nobody_unsubscribed,
            )
        elif isinstance(receiver, SlackReceiverConfig):
            out[receiver.id] = SlackNotifier(receiver, session=session, clock=clock)
        else:
            out[receiver.id] = WebhookNotifier(receiver, session=session, clock=clock)
    return out
