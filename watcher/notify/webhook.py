"""Generic JSON webhook, signed per the Standard Webhooks spec when a secret is set."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from watcher.config import WebhookReceiverConfig, webhook_signing_key
from watcher.errors import DeliveryError, DeliveryReason
from watcher.fetch import parse_retry_after
from watcher.models import Clock
from watcher.notify.base import excerpt
from watcher.notify.batch import batch_payload
from watcher.redact import origin
from watcher.store import ClaimedDelivery

PAYLOAD_VERSION = "1"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RESPONSE_MAX_BYTES = 64 * 1024  # of a receiver's answer, read and dropped; the rest unread


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
    return _sign(Webhook(webhook_signing_key(secret)), msg_id, timestamp, body)


def _sign(signer: Webhook, msg_id: str, timestamp: int, body: bytes) -> str:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return signer.sign(msg_id=msg_id, timestamp=when, data=body.decode())


def classify_status(receiver: str, status: int, headers: Mapping[str, str], clock: Clock) -> None:
    """2xx ok; 429 and 5xx retry (honouring Retry-After, a date counted from the answer's
    Date); other statuses are permanent, redirects too: following one would send the
    alert to an address nobody configured."""
    if 200 <= status < 300:
        return
    if status in REDIRECT_STATUSES:
        raise DeliveryError(
            DeliveryReason.CLIENT_ERROR,
            f"HTTP {status}: redirect to {origin(headers.get('Location'))} not followed",
            receiver=receiver,
            retryable=False,
        )
    if status == 429 or status >= 500:
        raise DeliveryError(
            DeliveryReason.RATE_LIMITED if status == 429 else DeliveryReason.SERVER_ERROR,
            f"HTTP {status}",
            receiver=receiver,
            retryable=True,
            retry_after_s=parse_retry_after(
                headers.get("Retry-After"), clock(), headers.get("Date")
            ),
        )
    raise DeliveryError(
        DeliveryReason.CLIENT_ERROR, f"HTTP {status}", receiver=receiver, retryable=False
    )


async def _discard_body(resp: aiohttp.ClientResponse) -> None:
    """Read at most RESPONSE_MAX_BYTES of the body, and keep none of it: a small body
    read to its end leaves the connection reusable; a larger one is not read further
    (the connection is closed instead), so no receiver can make us hold its answer."""
    left = RESPONSE_MAX_BYTES
    while left > 0 and (chunk := await resp.content.read(min(left, 16 * 1024))):
        left -= len(chunk)


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
            await _discard_body(resp)
            classify_status(receiver, resp.status, resp.headers, clock)
    except DeliveryError:
        raise
    except TimeoutError:
        raise DeliveryError(
            DeliveryReason.TIMEOUT, f"no answer within {timeout_s:g}s", receiver=receiver,
            retryable=True,
        ) from None  # fmt: skip
    except aiohttp.ClientConnectorError as exc:
        # where and why (the host and port, never the path or query: they may be secrets)
        why = exc.os_error.strerror or type(exc.os_error).__name__
        raise DeliveryError(
            DeliveryReason.CONNECT,
            f"cannot connect to {exc.host}:{exc.port}: {why}",
            receiver=receiver,
            retryable=True,
        ) from None
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
        # from the key bytes: given a string, the library would base64-decode a plain one
        key = config.signing_key
        self._signer = Webhook(key) if key is not None else None

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
