"""WebSub (W3C): subscribe to the hubs feeds advertise, verify, accept signed pushes, renew.

    poll finds <link rel="hub"> ──> renew() subscribes (hub.secret per subscription)
    hub ──GET  /websub/{source}?hub.challenge=…──> answered for a request of ours, topic matching
    hub ──POST /websub/{source} (X-Hub-Signature)──> parse ──> Pipeline.ingest, at once

Polling goes on as before (a hub can fail silently); a pushed item and a polled
one dedup as usual. Subscriptions are kept in the store (hub, topic, state, lease
end, when to ask the hub next, and the name of their secret, which the store keeps
with its other secrets), so after a restart leases are still renewed and signed
pushes still accepted. At start-up the first poll may run before they are read:
a subscription it rediscovers (the same hub and topic) gives way to the stored
one, whose secret the hub signs with.
The secret goes to the hub and into HMACs, never into a log line or an error; a
URL we log is redacted (`watcher.redact`), as a hub or topic may carry a key.

A subscription's states:

    wanted ──request──> requested ──hub verifies──> active ──lease nearly over──> renewing
    renewing ──hub verifies──> active
    requested, renewing ──not verified in time──> asked again, backing off
    requested, renewing ──hub denies──> denied ──a day or more later──> requested
    a request the hub refuses or cannot take: back as before, asked again backing off

Only a request of ours (requested, renewing) is verified or denied: a challenge or
a denial nobody asked for is not answered (404), so a third party can neither
activate a subscription nor turn push off. Pushes are accepted while active (or
renewing), signed with the subscription's secret, for its topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
from aiohttp import web

from watcher import constants
from watcher.backoff import backoff_s
from watcher.config import Config
from watcher.errors import FetchError, ParseError
from watcher.models import Clock
from watcher.parse import canonical_url, parse_off_loop
from watcher.pipeline import Pipeline
from watcher.redact import redact_url, scrub_urls
from watcher.store import WebSubRow

logger = logging.getLogger(__name__)

_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384,
            "sha512": hashlib.sha512}  # fmt: skip
_PENDING = frozenset({"requested", "renewing"})  # a request is out: its verification is answered
_PUSHING = frozenset({"active", "renewing"})  # pushes are accepted


@dataclass
class Subscription:
    source_id: str
    hub: str
    topic: str
    secret_ref: str  # its name in the store
    secret: str = field(default="", repr=False)  # "" until read from (or made by) the store
    state: str = "wanted"  # wanted, requested, active, renewing, denied (see the module doc)
    lease_until: datetime | None = None
    attempts: int = 0  # requests in a row refused, never verified or denied
    retry_at: datetime | None = None  # when to ask the hub (again); None: at once

    def row(self) -> WebSubRow:
        return WebSubRow(
            self.source_id, self.hub, self.topic, self.secret_ref, self.state, self.lease_until,
            self.attempts, self.retry_at,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: WebSubRow) -> Subscription:
        return cls(
            row.source_id, row.hub, row.topic, row.secret_ref, state=row.state,
            lease_until=row.lease_until, attempts=row.attempts, retry_at=row.retry_at,
        )  # fmt: skip


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
        self._loading = asyncio.Lock()
        self.sources = {s.id: s for s in config.sources if s.enabled}
        pipeline.on_hub = self.discovered

    async def load(self) -> None:
        """Read the stored subscriptions, once (before any renewal, verification or push).

        A subscription a poll discovered before they were read, of the same hub and
        topic, gives way to the stored one: the hub signs its pushes with that one's
        secret. One discovered for another hub or topic wins: the feed moved.
        """
        async with self._loading:  # a push and a verification may both come first
            if self._loaded:
                return
            for row in await self.store.websub_subscriptions():
                if row.source_id not in self.sources:
                    continue
                found = self.subs.get(row.source_id)
                if found is not None and (found.hub, found.topic) != (row.hub, row.topic):
                    continue
                sub = Subscription.from_row(row)
                sub.secret = (await self.store.secret(row.secret_ref)).decode()
                self.subs[row.source_id] = sub
            self._loaded = True

    def callback(self, source_id: str) -> str:
        return f"{self.base}/websub/{source_id}"

    def discovered(self, source_id: str, hub: str, topic: str) -> None:
        sub = self.subs.get(source_id)
        if sub is None or sub.hub != hub or sub.topic != topic:
            # a new subscription gets a new secret: its name is new
            ref = f"websub:{source_id}:{self.rng.getrandbits(64):016x}"
            self.subs[source_id] = Subscription(source_id, hub, topic, ref)

    def _renew_at(self, lease_until: datetime, lease_s: float) -> datetime:
        """When to renew a lease of `lease_s` that ends at `lease_until`: renew_before_s
        before its end, but not before half of it has passed."""
        return lease_until - timedelta(seconds=min(self.config.websub.renew_before_s, lease_s / 2))

    def _due_at(self, sub: Subscription, now: datetime) -> datetime:
        if sub.retry_at is not None:
            return sub.retry_at
        if sub.state == "active" and sub.lease_until is not None:  # a row from before retry_at
            return self._renew_at(sub.lease_until, self._lease_s(None))  # the lease we ask for
        return now

    def _backoff(self, attempts: int) -> timedelta:
        """How long to wait before asking again, after `attempts` requests in a row failed."""
        return timedelta(
            seconds=backoff_s(
                attempts,
                base_s=constants.WEBSUB_RETRY_BASE_S,
                max_s=constants.WEBSUB_RETRY_MAX_S,
                rng=self.rng,
            )
        )

    def _lease_s(self, value: str | None) -> int:
        """The hub's hub.lease_seconds, held to a sane range; ours when absent or invalid."""
        default = self.config.websub.lease_s
        try:
            lease = int(value) if value is not None else default
        except ValueError:
            lease = default
        if lease <= 0:
            lease = default
        return min(max(lease, constants.WEBSUB_LEASE_MIN_S), constants.WEBSUB_LEASE_MAX_S)

    async def renew(self) -> int:
        """Subscribe where wanted, again where a lease is about to end, a request went
        unverified or a denial is old enough; returns requests sent."""
        await self.load()
        now = self.clock()
        sent = 0
        for sub in list(self.subs.values()):
            if self._due_at(sub, now) <= now and await self._subscribe(sub):
                sent += 1
        return sent

    async def _subscribe(self, sub: Subscription) -> bool:
        if not sub.secret:
            sub.secret = (await self.store.secret(sub.secret_ref)).decode()
        before = sub.state
        sub.state = "renewing" if before in _PUSHING else "requested"
        sub.attempts += 1
        # asked again if the hub has not verified by then
        sub.retry_at = self.clock() + self._backoff(sub.attempts)
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
                refused = resp.status // 100 != 2
                if refused:
                    logger.warning(
                        "source %s: WebSub hub %s refused the subscription: HTTP %d",
                        sub.source_id, redact_url(sub.hub), resp.status,
                    )  # fmt: skip
        except (FetchError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning(
                "source %s: WebSub hub %s unreachable: %s",
                sub.source_id, redact_url(sub.hub), scrub_urls(str(exc)) or type(exc).__name__,
            )  # fmt: skip
            refused = True
        if refused and sub.state in _PENDING:  # no verification is coming: back as we were
            sub.state = "active" if before in _PUSHING else "wanted"
            await self.store.save_websub(sub.row())
        return not refused

    # ------------------------------------------------------------ HTTP side

    async def verify(self, request: web.Request) -> web.Response:
        await self.load()
        source_id = request.match_info["source_id"]
        sub = self.subs.get(source_id)
        q = request.query
        mode = q.get("hub.mode")
        if sub is None or q.get("hub.topic") != sub.topic:
            raise web.HTTPNotFound()
        if sub.state not in _PENDING:
            logger.warning(
                "source %s: WebSub %s not asked for (subscription %s): not answered",
                source_id, scrub_urls(str(mode)), sub.state,
            )  # fmt: skip
            raise web.HTTPNotFound()
        now = self.clock()
        if mode == "denied":
            sub.state = "denied"
            sub.retry_at = now + max(
                self._backoff(sub.attempts),
                timedelta(seconds=constants.WEBSUB_DENIED_RETRY_S),
            )
            await self.store.save_websub(sub.row())
            logger.warning(
                "source %s: WebSub hub denied: %s", source_id, scrub_urls(q.get("hub.reason", ""))
            )
            return web.Response(text="")
        challenge = q.get("hub.challenge")
        if mode != "subscribe" or not challenge:
            raise web.HTTPNotFound()
        lease_s = self._lease_s(q.get("hub.lease_seconds"))
        sub.state = "active"
        sub.attempts = 0
        sub.lease_until = now + timedelta(seconds=lease_s)
        sub.retry_at = self._renew_at(sub.lease_until, lease_s)
        await self.store.save_websub(sub.row())
        return web.Response(text=challenge, content_type="text/plain")

    async def push(self, request: web.Request) -> web.Response:
        await self.load()
        source_id = request.match_info["source_id"]
        sub = self.subs.get(source_id)
        source = self.sources.get(source_id)
        if sub is None or source is None or sub.state not in _PUSHING:
            raise web.HTTPNotFound()
        body = await _read_body(request, self.config.polling.max_body_bytes)
        if not self._signed(sub, request.headers.get("X-Hub-Signature", ""), body):
            # The spec: acknowledge, but ignore content whose signature does not match.
            logger.warning("source %s: WebSub push with a bad signature ignored", source_id)
            return web.Response(status=202)
        declared = _link_self(request.headers.getall("Link", ()))
        if declared is not None and not _same_topic(declared, sub.topic):
            logger.warning(
                "source %s: WebSub push for another topic (%s) ignored",
                source_id, redact_url(declared),
            )  # fmt: skip
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
            logger.warning("%s (WebSub push)", scrub_urls(str(exc)))
            return web.Response(status=202)
        except Exception as exc:  # hostile input must not make a 500 the hub retries
            # with its traceback, whose text may quote the topic: scrubbed
            logger.error(
                "source %s: WebSub push could not be parsed\n%s",
                source_id, scrub_urls("".join(traceback.format_exception(exc))).rstrip(),
            )  # fmt: skip
            return web.Response(status=202)
        if declared is None and parsed.self_url and not _same_topic(parsed.self_url, sub.topic):
            logger.warning(
                "source %s: WebSub push of another feed (%s) ignored",
                source_id, redact_url(parsed.self_url),
            )  # fmt: skip
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
    async for chunk in request.content.iter_chunked(constants.FETCH_CHUNK_BYTES):
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
