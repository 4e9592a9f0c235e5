"""Notifiers: each integration is one module with one notifier type.

Notifiers only send, and say (through DeliveryError.retryable) whether a failure
is worth retrying. Retries, backoff and "mark sent" belong to the outbox.
"""

from __future__ import annotations

from aiohttp import ClientSession

from watcher.config import Config, EmailReceiverConfig, SlackReceiverConfig
from watcher.models import Clock
from watcher.notify.base import Notifier, render
from watcher.notify.email import EmailNotifier
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


def build_notifiers(config: Config, *, session: ClientSession, clock: Clock) -> dict[str, Notifier]:
    out: dict[str, Notifier] = {}
    for receiver in config.receivers:
        if isinstance(receiver, EmailReceiverConfig):
            out[receiver.id] = EmailNotifier(receiver, clock=clock)
        elif isinstance(receiver, SlackReceiverConfig):
            out[receiver.id] = SlackNotifier(receiver, session=session, clock=clock)
        else:
            out[receiver.id] = WebhookNotifier(receiver, session=session, clock=clock)
    return out
