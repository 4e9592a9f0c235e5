"""WebSub (W3C): subscribe to the hubs feeds advertise, verify, accept signed pushes, renew.

    poll finds <link rel="hub"> ──> renew() subscribes (hub.secret per subscription)
    hub ──GET  /websub/{source}?hub.challenge=…──> answered when topic matches
    hub ──POST /websub/{source} (X-Hub-Signature)──> parse ──> Pipeline.ingest, at once

Polling goes on as before (a hub can fail silently); a pushed item and a polled
one dedup as usual. Subscriptions live in memory: after a restart the next poll
rediscovers the hub and subscribes again (with a new secret).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from aiohttp import web

from watcher.config import Config
from watcher.errors import FetchError, ParseError
from watcher.models import Clock
from watcher.parse import parse_document
from watcher.pipeline import Pipeline

logger = logging.getLogger(__name__)

_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384,
            "sha512": hashlib.sha512}  # fmt: skip


@dataclass
class Subscription:
    source_id: str
    hub: str
    topic: str
    secret: str
    state: str = "wanted"  # wanted -> requested -> active (or denied)
    lease_until: datetime | None = None


class WebSub:
    def __init__(
        self,
        *,
        config: Config,
        pipeline: Pipeline,
        session: aiohttp.ClientSession,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        if config.websub.callback_base_url is None:
            raise ValueError("WebSub needs [websub] callback_base_url")
        self.config = config
        self.base = str(config.websub.callback_base_url).rstrip("/")
        self.pipeline = pipeline
        self.session = session
        self.clock = clock
        self.rng = rng
        self.subs: dict[str, Subscription] = {}
        self.sources = {s.id: s for s in config.sources if s.enabled}
        pipeline.on_hub = self.discovered

    def callback(self, source_id: str) -> str:
        return f"{self.base}/websub/{source_id}"

    def discovered(self, source_id: str, hub: str, topic: str) -> None:
        sub = self.subs.get(source_id)
        if sub is None or sub.hub != hub or sub.topic != topic:
            self.subs[source_id] = Subscription(
                source_id, hub, topic, secret=f"{self.rng.getrandbits(192):048x}"
            )

    async def renew(self) -> int:
        """Subscribe where wanted, and again where a lease is about to end; returns requests."""
        now = self.clock()
        soon = now + timedelta(seconds=self.config.websub.renew_before_s)
        sent = 0
        for sub in list(self.subs.values()):
            due = sub.state == "wanted" or (
                sub.state == "active" and sub.lease_until is not None and sub.lease_until <= soon
            )
            if due and await self._subscribe(sub):
                sent += 1
        return sent

    async def _subscribe(self, sub: Subscription) -> bool:
        try:
            await self.pipeline.fetcher.check_url(sub.source_id, sub.hub)
            async with self.session.post(
                sub.hub,
                data={
                    "hub.mode": "subscribe",
                    "hub.topic": sub.topic,
                    "hub.callback": self.callback(sub.source_id),
                    "hub.secret": sub.secret,
                    "hub.lease_seconds": str(self.config.websub.lease_s),
                },
                timeout=aiohttp.ClientTimeout(total=self.config.polling.timeout_s),
            ) as resp:
                if resp.status // 100 != 2:
                    logger.warning(
                        "source %s: WebSub hub %s refused the subscription: HTTP %d",
                        sub.source_id, sub.hub, resp.status,
                    )  # fmt: skip
                    return False
        except (FetchError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("source %s: WebSub hub unreachable: %s", sub.source_id, exc)
            return False
        sub.state = "requested" if sub.state == "wanted" else sub.state
        return True

    # ------------------------------------------------------------ HTTP side

    async def verify(self, request: web.Request) -> web.Response:
        sub = self.subs.get(request.match_info["source_id"])
        q = request.query
        if sub is None or q.get("hub.topic") != sub.topic:
            raise web.HTTPNotFound()
        mode = q.get("hub.mode")
        if mode == "denied":
            sub.state = "denied"
            logger.warning("source %s: WebSub hub denied: %s", sub.source_id, q.get("hub.reason"))
            return web.Response(text="")
        challenge = q.get("hub.challenge")
        if mode != "subscribe" or not challenge:
            raise web.HTTPNotFound()
        try:
            lease = int(q.get("hub.lease_seconds", str(self.config.websub.lease_s)))
        except ValueError:
            lease = self.config.websub.lease_s
        sub.state = "active"
        sub.lease_until = self.clock() + timedelta(seconds=lease)
        return web.Response(text=challenge, content_type="text/plain")

    async def push(self, request: web.Request) -> web.Response:
        source_id = request.match_info["source_id"]
        sub = self.subs.get(source_id)
        source = self.sources.get(source_id)
        if sub is None or source is None or sub.state != "active":
            raise web.HTTPNotFound()
        cap = self.config.polling.max_body_bytes
        body = await request.content.read(cap + 1)
        if len(body) > cap:
            raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=len(body))
        if not self._signed(sub, request.headers.get("X-Hub-Signature", ""), body):
            # The spec: acknowledge, but ignore content whose signature does not match.
            logger.warning("source %s: WebSub push with a bad signature ignored", source_id)
            return web.Response(status=202)
        try:
            parsed = parse_document(
                body,
                source_id=source_id,
                content_type=request.headers.get("Content-Type", ""),
                base_url=sub.topic,
                language=source.language,
                tags=source.tags,
            )
        except ParseError as exc:
            logger.warning("%s (WebSub push)", exc)
            return web.Response(status=202)
        outcome = await self.pipeline.ingest(source_id, parsed.items, record_source=False)
        return web.json_response({"items": len(parsed.items), "new": outcome.new_items})

    @staticmethod
    def _signed(sub: Subscription, header: str, body: bytes) -> bool:
        method, _, signature = header.partition("=")
        digest = _DIGESTS.get(method.strip().lower())
        if digest is None or not signature:
            return False
        expected = hmac.new(sub.secret.encode(), body, digest).hexdigest()
        return hmac.compare_digest(expected, signature.strip().lower())


def add_routes(app: web.Application) -> None:
    """Mount the callback routes; the handlers find the WebSub object under WEBSUB."""
    app.router.add_get("/websub/{source_id}", _verify)
    app.router.add_post("/websub/{source_id}", _push)


WEBSUB = web.AppKey("websub", WebSub)


def _get(request: web.Request) -> WebSub:
    websub = request.app.get(WEBSUB)
    if websub is None:
        raise web.HTTPNotFound()
    return websub


async def _verify(request: web.Request) -> web.Response:
    return await _get(request).verify(request)


async def _push(request: web.Request) -> web.Response:
    return await _get(request).push(request)
