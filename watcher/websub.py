"""WebSub (W3C): subscribe to the hubs feeds advertise, verify, accept signed pushes, renew.

    poll finds <link rel="hub"> ──> renew() subscribes (hub.secret per subscription)
    hub ──GET  /websub/{source}?hub.challenge=…──> answered when topic matches
    hub ──POST /websub/{source} (X-Hub-Signature)──> parse ──> Pipeline.ingest, at once

Polling goes on as before (a hub can fail silently); a pushed item and a polled
one dedup as usual. Subscriptions are kept in the store (hub, topic, state, lease
end, and the name of their secret, which the store keeps with its other secrets),
so after a restart leases are still renewed and signed pushes still accepted.
The secret goes to the hub and into HMACs, never into a log line or an error.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
from aiohttp import web

from watcher.config import Config
from watcher.errors import FetchError, ParseError
from watcher.models import Clock
from watcher.parse import canonical_url, parse_off_loop
from watcher.pipeline import Pipeline
from watcher.store import WebSubRow

logger = logging.getLogger(__name__)

_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384,
            "sha512": hashlib.sha512}  # fmt: skip
_READ_CHUNK_BYTES = 64 * 1024


@dataclass
class Subscription:
    source_id: str
    hub: str
    topic: str
    secret_ref: str  # its name in the store
    secret: str = field(default="", repr=False)  # "" until read from (or made by) the store
    state: str = "wanted"  # wanted -> requested -> active (or denied)
    lease_until: datetime | None = None

    def row(self) -> WebSubRow:
        return WebSubRow(
            self.source_id, self.hub, self.topic, self.secret_ref, self.state, self.lease_until
        )


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
        self.store = pipeline.store
        self.subs: dict[str, Subscription] = {}
        self._loaded = False
        self.sources = {s.id: s for s in config.sources if s.enabled}
        pipeline.on_hub = self.discovered

    async def load(self) -> None:
        """Read the stored subscriptions (once; a later discovery wins over a stored one)."""
        if self._loaded:
            return
        for row in await self.store.websub_subscriptions():
            if row.source_id in self.sources and row.source_id not in self.subs:
                sub = Subscription(
                    row.source_id, row.hub, row.topic, row.secret_ref,
                    state=row.state, lease_until=row.lease_until,
                )  # fmt: skip
                sub.secret = (await self.store.secret(row.secret_ref)).decode()
                self.subs.setdefault(row.source_id, sub)
        self._loaded = True

    def callback(self, source_id: str) -> str:
        return f"{self.base}/websub/{source_id}"

    def discovered(self, source_id: str, hub: str, topic: str) -> None:
        sub = self.subs.get(source_id)
        if sub is None or sub.hub != hub or sub.topic != topic:
            # a new subscription gets a new secret: its name is new
            ref = f"websub:{source_id}:{self.rng.getrandbits(64):016x}"
            self.subs[source_id] = Subscription(source_id, hub, topic, ref)

    async def renew(self) -> int:
        """Subscribe where wanted, and again where a lease is about to end; returns requests."""
        await self.load()
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
        if not sub.secret:
            sub.secret = (await self.store.secret(sub.secret_ref)).decode()
            # stored before the hub is asked: it may verify and push before it answers
            await self.store.save_websub(sub.row())
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
        if sub.state == "wanted":
            sub.state = "requested"
            await self.store.save_websub(sub.row())
        return True

    # ------------------------------------------------------------ HTTP side

    async def verify(self, request: web.Request) -> web.Response:
        await self.load()
        sub = self.subs.get(request.match_info["source_id"])
        q = request.query
        if sub is None or q.get("hub.topic") != sub.topic:
            raise web.HTTPNotFound()
        mode = q.get("hub.mode")
        if mode == "denied":
            sub.state = "denied"
            await self.store.save_websub(sub.row())
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
        await self.store.save_websub(sub.row())
        return web.Response(text=challenge, content_type="text/plain")

    async def push(self, request: web.Request) -> web.Response:
        await self.load()
        source_id = request.match_info["source_id"]
        sub = self.subs.get(source_id)
        source = self.sources.get(source_id)
        if sub is None or source is None or sub.state != "active" or not sub.secret:
            raise web.HTTPNotFound()
        body = await _read_body(request, self.config.polling.max_body_bytes)
        if not self._signed(sub, request.headers.get("X-Hub-Signature", ""), body):
            # The spec: acknowledge, but ignore content whose signature does not match.
            logger.warning("source %s: WebSub push with a bad signature ignored", source_id)
            return web.Response(status=202)
        declared = _link_self(request.headers.getall("Link", ()))
        if declared is not None and not _same_topic(declared, sub.topic):
            logger.warning(
                "source %s: WebSub push for another topic (%s) ignored", source_id, declared
            )
            return web.Response(status=202)
        try:
            parsed = await parse_off_loop(
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
        except Exception:  # hostile input must not make a 500 the hub retries
            logger.exception("source %s: WebSub push could not be parsed", source_id)
            return web.Response(status=202)
        if declared is None and parsed.self_url and not _same_topic(parsed.self_url, sub.topic):
            logger.warning(
                "source %s: WebSub push of another feed (%s) ignored", source_id, parsed.self_url
            )
            return web.Response(status=202)
        outcome = await self.pipeline.ingest(source_id, parsed.items, record_source=False)
        return web.json_response({"items": len(parsed.items), "new": outcome.new_items})

    @staticmethod
    def _signed(sub: Subscription, header: str, body: bytes) -> bool:
        if not sub.secret:  # never an HMAC with an empty key
            return False
        method, _, signature = header.partition("=")
        signature = signature.strip().lower()
        digest = _DIGESTS.get(method.strip().lower())
        if digest is None or not signature or not signature.isascii():
            return False
        expected = hmac.new(sub.secret.encode(), body, digest).hexdigest()
        return hmac.compare_digest(expected, signature)


async def _read_body(request: web.Request, cap: int) -> bytes:
    """The whole request body, or 413 when it is over `cap` bytes."""
    length = request.content_length
    if length is not None and length > cap:
        raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=length)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK_BYTES):
        size += len(chunk)
        if size > cap:
            raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


_LINK = re.compile(r"<([^>]*)>([^<]*)")
_REL = re.compile(r";\s*rel\s*=\s*(?:\"([^\"]*)\"|([^\s;,]+))", re.IGNORECASE)


def _link_self(values: Iterable[str]) -> str | None:
    """The URL a Link header declares rel="self" (a hub's push names its topic so)."""
    for value in values:
        for m in _LINK.finditer(value):
            rel = _REL.search(m[2])
            if rel and "self" in (rel[1] or rel[2] or "").lower().split():
                return m[1].strip()
    return None


def _same_topic(declared: str, topic: str) -> bool:
    return canonical_url(declared, topic) == canonical_url(topic)


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
