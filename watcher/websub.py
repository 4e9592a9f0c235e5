"""WebSub (W3C): subscribe to the hubs feeds advertise, verify, accept signed pushes, renew.

    poll finds a hub (Link: rel="hub", else <link rel="hub">)
        ──> renew() subscribes (hub.secret per subscription)
    hub ──GET  /websub/{source}/{token}?hub.challenge=…──> answered for a request of ours,
                          topic matching (or the hub re-confirming an active one)
    hub ──POST /websub/{source}/{token} (X-Hub-Signature)──> parse ──> Pipeline.ingest, at once

The callback (hub.callback) is `{callback_base_url}/websub/{source}/{token}`, the
token an HMAC of the subscription's secret (so no column of its own): only the hub
we asked learns it, so no one else can answer our request's verification (the
topic alone, public in the feed, is not enough), and a request without it is not
answered (404). Subscriptions an earlier watcher asked for, with the callback
`/websub/{source}` (their row has no callback_base), are still served there, and
asked for again at once, with a token; so is an active one asked for under another
callback_base_url (the service moved), as the hub calls where it was told.

Polling goes on as before (a hub can fail silently); a pushed item and a polled
one dedup as usual. Subscriptions are kept in the store (hub, topic, state, lease
end, when to ask the hub next, the callback_base_url it was asked with, and the name
of their secret, which the store keeps with its other secrets), so after a restart
leases are still renewed and signed pushes still accepted.

The store, not a process, is the arbiter: several processes may share it
(replicas behind one callback URL, or an old and a new process overlapping in a
restart), and the hub's verification or push may reach any of them. So a
verification and a push act on the stored row, read afresh (one primary-key read:
a push goes on to a whole pipeline transaction, and a verification comes once a
lease), and every change to a row is a conditional write from the version read
(`Store.write_websub`): of two processes only one asks the hub, the other takes
the stored row and its secret. A subscription a poll discovers (its hub and topic)
gives way to a stored one of the same hub and topic, whoever stored it: the hub
signs its pushes with that one's secret. One of another hub or topic replaces the
stored one: the feed moved.
The secret goes to the hub and into HMACs, never into a log line or an error; a
URL we log is redacted (`watcher.redact`), as a hub or topic may carry a key.

A subscription's states:

    wanted ──request──> requested ──hub verifies──> active ──lease nearly over──> renewing
    active ──asked under another callback_base_url (or none)──> renewing, at once
    renewing ──hub verifies──> active
    active ──hub re-confirms on its own──> active (renewal brought forward, never put off)
    requested, renewing ──not verified in time──> asked again, backing off
    requested, renewing ──hub denies──> denied ──a day or more later──> requested
    a request the hub refuses or cannot take: back as before, asked again backing off

A request of ours (requested, renewing) is verified or denied; an active
subscription may be re-confirmed (PubSubHubbub 0.3 hubs do, e.g. when they refresh
a lease). Anything else is not answered (404): a denial or an unsubscribe nobody
asked for, a topic not ours, a subscription never requested. So a third party can
neither activate a subscription nor turn push off, and a re-confirmation (which
whoever learns the callback could forge) brings our renewal forward but never puts
it off (else a forged one could hold our renewal back until the hub's lease has
ended). No verification puts renewal later than the lease we asked for (lease_s)
would. Pushes are
accepted while active (or renewing), on the callback with the token, signed with
the subscription's secret, for its topic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import random
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
from aiohttp import web

from watcher import constants
from watcher.backoff import backoff_s
from watcher.config import Config
from watcher.errors import FetchError, ParseError
from watcher.links import links
from watcher.models import Clock
from watcher.parse import canonical_url, parse_off_loop
from watcher.pipeline import Pipeline
from watcher.redact import redact_url, scrub_urls
from watcher.store import WebSubRow
from watcher.text import one_line

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
    version: int | None = None  # the stored row's, as read or written; None: not stored yet
    # the callback_base_url the hub was last asked with; None: never asked, or asked by a
    # watcher whose callback had no token (`/websub/{source}`)
    callback_base: str | None = None

    def row(self) -> WebSubRow:
        return WebSubRow(
            self.source_id, self.hub, self.topic, self.secret_ref, self.state, self.lease_until,
            self.attempts, self.retry_at, self.version or 0, callback_base=self.callback_base,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: WebSubRow, secret: str = "") -> Subscription:
        return cls(
            row.source_id, row.hub, row.topic, row.secret_ref, secret, state=row.state,
            lease_until=row.lease_until, attempts=row.attempts, retry_at=row.retry_at,
            version=row.version, callback_base=row.callback_base,
        )  # fmt: skip

    def reached(self, token: str | None) -> bool:
        """Whether a request to the callback with `token` (None: the one without) is for
        this subscription. The callback's token comes from the secret, so only the hub we
        asked knows it: a third party, who may know the topic (it is in the feed), cannot
        answer our request's verification for the hub. A subscription an earlier watcher
        asked for has a callback without a token: that one is still reached, until it is
        asked again (at once: see WebSub._moved)."""
        if token is None:
            return self.callback_base is None
        if not self.secret or not token.isascii():
            return False
        return hmac.compare_digest(token, _token(self.secret))


# a verification whose stored row changes under it (another process writes it) is decided
# again on the new row, this many times at most; then the hub is told to try again later
_VERIFY_TRIES = 3


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
        # each source's subscription as this process last read or wrote it in the store,
        # or as a poll discovered it (version None, until renew() stores it)
        self.subs: dict[str, Subscription] = {}
        self._secrets: dict[str, str] = {}  # secret_ref -> secret (a name's never changes)
        self.sources = {s.id: s for s in config.sources if s.enabled}
        pipeline.on_hub = self.discovered

    def callback(self, sub: Subscription) -> str:
        """Where the hub is to call: per subscription, with a token only the hub learns."""
        return f"{self.base}/websub/{sub.source_id}/{_token(sub.secret)}"

    def discovered(self, source_id: str, hub: str, topic: str) -> None:
        sub = self.subs.get(source_id)
        if sub is None or sub.hub != hub or sub.topic != topic:
            # a new subscription gets a new secret: its name is new
            ref = f"websub:{source_id}:{self.rng.getrandbits(64):016x}"
            self.subs[source_id] = Subscription(source_id, hub, topic, ref)

    def _remember(self, sub: Subscription) -> None:
        """Keep `sub` (as stored) as this process's copy, unless a poll discovered another
        hub or topic since, not stored yet: the feed moved, and renew() will store that."""
        mine = self.subs.get(sub.source_id)
        if (
            mine is None
            or mine.version is not None
            or (mine.hub, mine.topic) == (sub.hub, sub.topic)
        ):
            self.subs[sub.source_id] = sub

    async def _secret(self, ref: str) -> str:
        if ref not in self._secrets:
            self._secrets[ref] = (await self.store.secret(ref)).decode()
        return self._secrets[ref]

    async def _stored(self, source_id: str) -> Subscription | None:
        """The source's subscription as stored now, with its secret (and remembered)."""
        row = await self.store.websub_subscription(source_id)
        if row is None or source_id not in self.sources:
            return None
        sub = Subscription.from_row(row, await self._secret(row.secret_ref))
        self._remember(sub)
        return sub

    async def _write(self, sub: Subscription, *, seen: int | None) -> bool:
        """Store `sub` if the stored row is still the one it came from (`seen`: its version;
        None: not stored); False when another process changed it first (then re-read)."""
        version = await self.store.write_websub(sub.row(), seen=seen)
        if version is None:
            await self._stored(sub.source_id)
            return False
        sub.version = version
        self._remember(sub)
        return True

    def _renew_at(self, lease_until: datetime, lease_s: float) -> datetime:
        """When to renew a lease of `lease_s` that ends at `lease_until`: renew_before_s
        before its end, but not before half of it has passed."""
        return lease_until - timedelta(seconds=min(self.config.websub.renew_before_s, lease_s / 2))

    def _moved(self, sub: Subscription) -> bool:
        """Whether an active subscription has the hub call another callback than ours: the
        callback_base_url changed since it was asked for (the hub's calls may not reach us
        there), or an earlier watcher asked for it with a callback without a token."""
        return sub.state == "active" and sub.callback_base != self.base

    def _due_at(self, sub: Subscription, now: datetime) -> datetime:
        if self._moved(sub) and sub.attempts == 0:  # asked at once, but once: then backing off
            return now
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
        unverified or a denial is old enough; returns requests sent.

        The stored subscriptions are read afresh each time: another process may have
        made, renewed or moved one since.
        """
        for row in await self.store.websub_subscriptions():
            if row.source_id in self.sources:
                self._remember(Subscription.from_row(row, self._secrets.get(row.secret_ref, "")))
        now = self.clock()
        sent = 0
        for sub in list(self.subs.values()):
            if self._due_at(sub, now) <= now and await self._subscribe(sub, now):
                sent += 1
        return sent

    async def _subscribe(self, sub: Subscription, now: datetime) -> bool:
        before = sub.state
        asked = dataclasses.replace(
            sub,
            state="renewing" if before in _PUSHING else "requested",
            attempts=sub.attempts + 1,
            # asked again if the hub has not verified by then
            retry_at=now + self._backoff(sub.attempts + 1),
            callback_base=self.base,
        )
        # Claimed in the store before the hub is asked: a process that finds the row
        # changed asks nothing and takes the stored one (its secret is the hub's). Stored
        # before the hub is asked, too: it may verify and push (anywhere) before it answers.
        if not await self._write(asked, seen=sub.version):
            return False
        asked.secret = await self._secret(asked.secret_ref)
        hub = redact_url(asked.hub)
        try:
            await self.pipeline.fetcher.check_url(asked.source_id, asked.hub)
            async with self.session.post(
                asked.hub,
                data={
                    "hub.mode": "subscribe",
                    "hub.topic": asked.topic,
                    "hub.callback": self.callback(asked),
                    "hub.secret": asked.secret,
                    "hub.lease_seconds": str(self.config.websub.lease_s),
                },
                timeout=aiohttp.ClientTimeout(total=self.config.polling.timeout_s),
                # not followed: aiohttp connects to an IP literal without the resolver's
                # address check, so a hub's redirect could reach 169.254.169.254
                allow_redirects=False,
            ) as resp:
                refused = resp.status // 100 != 2
                if resp.status // 100 == 3:
                    logger.warning(
                        "source %s: WebSub hub %s redirected the subscription (HTTP %d, not "
                        "followed): refused", asked.source_id, hub, resp.status,
                    )  # fmt: skip
                elif refused:
                    logger.warning(
                        "source %s: WebSub hub %s refused the subscription: HTTP %d",
                        asked.source_id, hub, resp.status,
                    )  # fmt: skip
        except (FetchError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning(
                "source %s: WebSub hub %s unreachable: %s",
                asked.source_id, hub, scrub_urls(str(exc)) or type(exc).__name__,
            )  # fmt: skip
            refused = True
        if refused:  # no verification is coming: back as we were, unless one came anyway
            back = dataclasses.replace(
                asked,
                state="active" if before in _PUSHING else "wanted",
                callback_base=sub.callback_base,  # the hub still calls where it did
            )
            await self._write(back, seen=asked.version)
        return not refused

    # ------------------------------------------------------------ HTTP side

    async def verify(self, request: web.Request) -> web.Response:
        """Answer the hub's verification of intent, from the stored row (any process may
        have asked): see the module doc for what is answered."""
        source_id = request.match_info["source_id"]
        q = request.query
        mode = q.get("hub.mode")
        challenge = q.get("hub.challenge")
        token = request.match_info.get("token")
        for _ in range(_VERIFY_TRIES):
            sub = await self._stored(source_id)
            if sub is None or not sub.reached(token) or q.get("hub.topic") != sub.topic:
                raise web.HTTPNotFound()
            now = self.clock()
            if mode == "denied" and sub.state in _PENDING:
                retry_s = max(
                    self._backoff(sub.attempts), timedelta(seconds=constants.WEBSUB_DENIED_RETRY_S)
                )
                new = dataclasses.replace(sub, state="denied", retry_at=now + retry_s)
                if await self._write(new, seen=sub.version):
                    logger.warning(
                        "source %s: WebSub hub denied: %s",
                        source_id, _loggable(q.get("hub.reason", "")),
                    )  # fmt: skip
                    return web.Response(text="")
                continue
            if mode != "subscribe" or not challenge or sub.state not in {*_PENDING, "active"}:
                logger.warning(
                    "source %s: WebSub %s not asked for (subscription %s): not answered",
                    source_id, _loggable(str(mode)), sub.state,
                )  # fmt: skip
                raise web.HTTPNotFound()
            lease_s = self._lease_s(q.get("hub.lease_seconds"))
            lease_until = now + timedelta(seconds=lease_s)
            # renewed on our schedule, whatever lease the verification claims: a hub may
            # grant less than we asked (renewed sooner), but none can put it off beyond
            # the lease we asked for, nor can anyone who forges a verification
            ours_s = min(lease_s, self.config.websub.lease_s)
            renew_at = self._renew_at(now + timedelta(seconds=ours_s), ours_s)
            if sub.state == "active" and sub.retry_at is not None:
                # the hub re-confirms on its own: anyone can send this, so it may bring our
                # renewal forward (a shorter lease), never put it off (a forged long lease
                # would hold it back until the hub's real lease had ended: push off)
                renew_at = min(renew_at, sub.retry_at)
            new = dataclasses.replace(
                sub, state="active", attempts=0, lease_until=lease_until, retry_at=renew_at
            )
            if await self._write(new, seen=sub.version):
                return web.Response(text=challenge, content_type="text/plain")
        raise web.HTTPServiceUnavailable()  # the row kept changing: the hub asks again

    async def push(self, request: web.Request) -> web.Response:
        source_id = request.match_info["source_id"]
        source = self.sources.get(source_id)
        # the stored row, whichever process subscribed or renewed it
        sub = await self._stored(source_id) if source is not None else None
        if (
            sub is None
            or source is None
            or sub.state not in _PUSHING
            or not sub.reached(request.match_info.get("token"))
        ):
            raise web.HTTPNotFound()
        body = await _read_body(request, self.config.polling.max_body_bytes)
        if not self._signed(sub, request.headers.get("X-Hub-Signature", ""), body):
            # The spec: acknowledge, but ignore content whose signature does not match.
            logger.warning("source %s: WebSub push with a bad signature ignored", source_id)
            return web.Response(status=202)
        declared = links(request.headers.getall("Link", ()), sub.topic).get("self")
        if declared is not None and not _same_topic(declared, sub.topic):
            logger.warning(
                "source %s: WebSub push for another topic (%s) ignored",
                source_id, _loggable(redact_url(declared)),
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
                source_id, _loggable(redact_url(parsed.self_url)),
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


def _token(secret: str) -> str:
    """The callback's token: from the subscription's secret, so it needs no column of its
    own, and tells nothing of the secret."""
    return hmac.new(secret.encode(), b"websub callback", hashlib.sha256).hexdigest()[:32]


def _loggable(text: str) -> str:
    """What a request says, fit to quote in a log line: anyone may send a verification, so
    a line break in it would write a line of their own into our log (and a bidi override
    reorder ours), and a URL in it may carry a key: one line, no controls, URLs redacted,
    and bounded."""
    text = scrub_urls(one_line(text))
    limit = constants.WEBSUB_LOGGED_MAX_CHARS
    return text if len(text) <= limit else text[:limit] + "…"


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


def _same_topic(declared: str, topic: str) -> bool:
    return canonical_url(declared, topic) == canonical_url(topic)


def add_routes(app: web.Application) -> None:
    """Mount the callback routes; the handlers find the WebSub object under WEBSUB. The
    route without a token serves only subscriptions an earlier watcher asked for."""
    for path in ("/websub/{source_id}/{token}", "/websub/{source_id}"):
        app.router.add_get(path, _verify)
        app.router.add_post(path, _push)


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
