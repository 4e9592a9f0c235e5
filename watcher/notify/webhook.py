"""Generic JSON webhook, signed per the Standard Webhooks spec when a secret is set."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from watcher.config import WebhookReceiverConfig
from watcher.errors import DeliveryError, DeliveryReason
from watcher.fetch import parse_retry_after
from watcher.models import Clock
from watcher.notify.base import excerpt
from watcher.notify.batch import batch_payload
from watcher.store import ClaimedDelivery

PAYLOAD_VERSION = "1"


def payload(claimed: ClaimedDelivery) -> dict[str, Any]:
    if claimed.batch is not None:  # a group, a digest or an update: watcher/notify/batch.py
        return batch_payload(claimed, payload)
    a, d = claimed.alert, claimed.delivery
    return {
        "version": PAYLOAD_VERSION,
        "type": "alert",
        "id": d.idempotency_key,
        "alert": {
            "id": a.id,
            "rule": {"id": a.rule_id, "title": a.rule_title},
            "event_type": a.event_type.value,
            "severity": a.severity.value,
            "story": a.story_key,
            "created_at": a.created_at.isoformat(),
            "sources": a.all_sources,
            "facets": a.facets,
            "item": {
                "title": a.title,
                "url": a.url,
                "source": a.source_id,
                "published": a.published.isoformat() if a.published else None,
                "excerpt": excerpt(a.text),
            },
        },
    }


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value ('v1,' + base64 HMAC-SHA256)."""
    return _sign(Webhook(secret), msg_id, timestamp, body)


def _sign(signer: Webhook, msg_id: str, timestamp: int, body: bytes) -> str:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return signer.sign(msg_id=msg_id, timestamp=when, data=body.decode())


def classify_status(
    receiver: str, status: int, retry_after: str | None, clock: Clock, date: str | None = None
) -> None:
    """2xx ok; 429 and 5xx retry (honouring Retry-After); other statuses are permanent."""
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        raise DeliveryError(
            DeliveryReason.RATE_LIMITED if status == 429 else DeliveryReason.SERVER_ERROR,
            f"HTTP {status}",
            receiver=receiver,
            retryable=True,
            retry_after_s=parse_retry_after(retry_after, clock(), date),
        )
    raise DeliveryError(
        DeliveryReason.CLIENT_ERROR, f"HTTP {status}", receiver=receiver, retryable=False
    )


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    receiver: str,
    clock: Clock,
) -> None:
    """POST a JSON body; any failure becomes a DeliveryError (retryable or not).

    Error text never includes the URL: a Slack URL, or a query token, is a secret.
    """
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            classify_status(
                receiver,
                resp.status,
                resp.headers.get("Retry-After"),
                clock,
                resp.headers.get("Date"),
            )
    except DeliveryError:
        raise
    except TimeoutError:
        raise DeliveryError(
            DeliveryReason.TIMEOUT, f"no answer within {timeout_s:g}s", receiver=receiver,
            retryable=True,
        ) from None  # fmt: skip
    except aiohttp.ClientError as exc:
        raise DeliveryError(
            DeliveryReason.CONNECT, type(exc).__name__, receiver=receiver, retryable=True
        ) from None


class WebhookNotifier:
    def __init__(
        self, config: WebhookReceiverConfig, *, session: aiohttp.ClientSession, clock: Clock
    ) -> None:
        self.config = config
        self.receiver_id = config.id
        self.session = session
        self.clock = clock
        # worked out once, not per delivery
        self._url = str(config.url)
        self._signer = Webhook(config.secret.get_secret_value()) if config.secret else None

    async def send(self, claimed: ClaimedDelivery) -> None:
        await self.post(payload(claimed), claimed.delivery.idempotency_key)

    async def post(self, document: Mapping[str, Any], msg_id: str) -> None:
        """POST one JSON document, signed with `msg_id` as its webhook-id (the same on
        every try of one message, so the receiver can de-duplicate)."""
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(self.clock().timestamp())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._signer is not None:
            headers["webhook-signature"] = _sign(self._signer, msg_id, timestamp, body)
        await post_json(
            self.session,
            self._url,
            body,
            headers,
            timeout_s=self.config.timeout_s,
            receiver=self.receiver_id,
            clock=self.clock,
        )

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the service."""
