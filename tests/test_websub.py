"""WebSub: hub discovery, subscription, verification challenge, signed pushes, renewal."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import random
import re
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import FakeClock
from tests.servers import FeedServer, Route
from tests.test_backoff import Highest, Lowest
from tests.test_pipeline import RULES
from watcher import constants
from watcher.config import Config
from watcher.metrics import Metrics
from watcher.pipeline import build_pipeline
from watcher.rules import Matcher, load_rules
from watcher.store import Store
from watcher.websub import WEBSUB, WebSub, add_routes


def atom(hub: str, topic: str, *entries: tuple[str, str]) -> bytes:
    body = "".join(
        f"<entry><id>{i}</id><title>{t}</title><updated>2026-02-05T10:00:00Z</updated>"
        f'<link rel="alternate" href="https://example.org/{i}"/></entry>'
        for i, t in entries
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f'<title>t</title><id>urn:t</id><link rel="hub" href="{hub}"/>'
        f'<link rel="self" href="{topic}"/><updated>2026-02-05T10:00:00Z</updated>{body}</feed>'
    ).encode()


class Runner:
    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None

    async def start(self, app: web.Application) -> str:
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


async def test_subscribe_verify_push_and_renew(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    hub_requests: list[dict[str, str]] = []

    async def hub(request: web.Request) -> web.Response:
        hub_requests.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.Response(status=202)

    hub_app = web.Application()
    hub_app.router.add_post("/hub", hub)
    holder: dict[str, WebSub] = {}

    async def verify(request: web.Request) -> web.Response:
        return await holder["w"].verify(request)

    async def push(request: web.Request) -> web.Response:
        return await holder["w"].push(request)

    callback_app = web.Application()
    callback_app.router.add_get("/websub/{source_id}/{token}", verify)
    callback_app.router.add_post("/websub/{source_id}/{token}", push)
    hub_runner, callback_runner = Runner(), Runner()
    hub_base = await hub_runner.start(hub_app)
    callback_base = await callback_runner.start(callback_app)
    try:
        topic = feed_server.url("/feed.atom")
        feed_server.routes["/feed.atom"] = Route(
            body=atom(f"{hub_base}/hub", topic, ("a1", "Local news")),
            content_type="application/atom+xml",
        )
        config = Config.model_validate(
            {
                "polling": {"allow_networks": ["127.0.0.0/8"]},
                "websub": {"callback_base_url": callback_base, "lease_s": 7200,
                           "renew_before_s": 600},
                "sources": [{"id": "gov", "url": topic}],
            }
        )  # fmt: skip
        await store.sync_sources((s.id, str(s.url)) for s in config.sources)
        rules, _ = load_rules([RULES])
        matcher = Matcher(rules)

        def start(seed: int) -> WebSub:
            """The pipeline and WebSub as `watcher run` wires them; a restart makes new ones."""
            pipeline = build_pipeline(
                config, store=store, session=session, matcher=lambda: matcher,
                metrics=Metrics(), clock=clock,
            )  # fmt: skip
            holder["w"] = WebSub(
                config=config, pipeline=pipeline, session=session, clock=clock,
                rng=random.Random(seed),
            )  # fmt: skip
            return holder["w"]

        def signed(body: bytes) -> dict[str, str]:
            sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            return {"X-Hub-Signature": sig, "Content-Type": "application/atom+xml"}

        websub = start(6)
        assert await websub.renew() == 0  # nothing discovered yet
        await websub.pipeline.poll(config.sources[0])  # the feed advertises its hub
        assert await websub.renew() == 1
        [req] = hub_requests
        assert req["hub.mode"] == "subscribe" and req["hub.topic"] == topic
        assert re.fullmatch(f"{callback_base}/websub/gov/[0-9a-f]{{32}}", req["hub.callback"])
        assert req["hub.lease_seconds"] == "7200" and len(req["hub.secret"]) >= 32
        secret = req["hub.secret"]
        callback = req["hub.callback"]

        # the hub verifies the intent: a wrong topic is refused, the right one echoed
        wrong = {"hub.mode": "subscribe", "hub.topic": "http://other/", "hub.challenge": "x"}
        async with session.get(callback, params=wrong) as r:
            assert r.status == 404
        params = {"hub.mode": "subscribe", "hub.topic": topic, "hub.challenge": "c-123",
                  "hub.lease_seconds": "7200"}  # fmt: skip
        async with session.get(callback, params=params) as r:
            assert r.status == 200 and await r.text() == "c-123"

        # a signed push goes through the pipeline at once and alerts
        pushed = atom(
            f"{hub_base}/hub", topic, ("a2", "China tightens export controls on rare earth magnets")
        )
        async with session.post(callback, data=pushed, headers=signed(pushed)) as r:
            assert r.status == 200 and (await r.json()) == {"items": 1, "new": 1}
        alerts = await store.list_alerts()
        assert [a.rule_id for a in alerts] == ["ree-export-curb"]

        # a push with a bad signature is acknowledged and ignored
        forged = atom(f"{hub_base}/hub", topic, ("a3", "Rare earth export ban, forged"))
        bad = {"X-Hub-Signature": "sha256=" + "0" * 64}
        async with session.post(callback, data=forged, headers=bad) as r:
            assert r.status == 202
        assert await store.count_items() == 2

        # the subscription is stored without its secret, which no repr shows
        [row] = await store.websub_subscriptions()
        assert (row.hub, row.topic, row.state) == (f"{hub_base}/hub", topic, "active")
        assert secret not in repr(row) and secret not in repr(websub.subs["gov"])

        # a restart: a new WebSub, before any poll, accepts pushes signed for the subscription
        websub = start(7)
        pushed = atom(f"{hub_base}/hub", topic, ("a4", "Rare earth export licence rules"))
        async with session.post(callback, data=pushed, headers=signed(pushed)) as r:
            assert r.status == 200 and (await r.json()) == {"items": 1, "new": 1}

        # lease renewal: nothing due yet, then due within renew_before_s of the end
        assert await websub.renew() == 0
        clock.advance(7200 - 300)
        assert await websub.renew() == 1 and len(hub_requests) == 2
        assert hub_requests[1]["hub.secret"] == secret  # the same subscription, renewed
    finally:
        await hub_runner.stop()
        await callback_runner.stop()


async def test_push_to_an_unknown_subscription_is_404(
    session: aiohttp.ClientSession,
) -> None:
    from watcher.websub import add_routes

    app = web.Application()
    add_routes(app)
    runner = Runner()
    base = await runner.start(app)
    try:
        for path in ("/websub/x", f"/websub/x/{'0' * 32}"):
            async with session.post(base + path, data=b"<feed/>") as r:
                assert r.status == 404
    finally:
        await runner.stop()


# ---------------------------------------------------------------- one harness, many defects


def sign(secret: str, body: bytes, algo: str = "sha256") -> str:
    return f"{algo}=" + hmac.new(secret.encode(), body, getattr(hashlib, algo)).hexdigest()


@dataclasses.dataclass
class Replica:
    """One service process: its pipeline and WebSub, its callback routes on loopback."""

    websub: WebSub
    address: str  # where its callback routes listen: http://127.0.0.1:<port>
    runner: Runner


class Harness:
    """A feed advertising a hub, a hub that records requests (and verifies only when told),
    and the service's own callback routes (websub.add_routes) on loopback, on a real store.

    `start()` is a (re)start of the service: a new pipeline and WebSub, on a new
    callback server, the store kept. `replica()` is one more process on a store
    (another Store object on the same database: its own connections). All have one
    callback_base_url (`public_base`: the first one's address, as if behind one proxy)
    unless a test changes it; the hub's calls are sent to a replica's own address.
    """

    def __init__(
        self, store: Store, clock: FakeClock, session: aiohttp.ClientSession, feeds: FeedServer
    ) -> None:
        self.store, self.clock, self.session, self.feeds = store, clock, session, feeds
        self.hub_requests: list[dict[str, str]] = []
        self.hub_status = 202
        self.redirect_to = ""
        self.hub = Runner()
        self.current: Replica | None = None
        self.replicas: list[Replica] = []
        self.topic = feeds.url("/feed.atom")
        self.extra: dict[str, Any] = {}  # [polling] settings
        self.websub_extra: dict[str, Any] = {}  # [websub] settings
        self.public_base = ""  # [websub] callback_base_url; "": the first replica's address

    async def open(self) -> None:
        async def hub(request: web.Request) -> web.Response:
            self.hub_requests.append(dict(await request.post()))  # type: ignore[arg-type]
            if self.hub_status == 307:  # to itself, query and all, or where told
                raise web.HTTPTemporaryRedirect(self.redirect_to or str(request.url))
            return web.Response(status=self.hub_status)

        app = web.Application()
        app.router.add_post("/hub", hub)
        self.hub_base = await self.hub.start(app)
        self.advertise(self.hub_base + "/hub")

    def advertise(self, hub_url: str) -> None:
        """The feed names `hub_url` as its hub (from its next poll)."""
        self.hub_url = hub_url
        self.feeds.routes["/feed.atom"] = Route(
            body=atom(self.hub_url, self.topic, ("a1", "Local news")),
            content_type="application/atom+xml",
        )

    async def replica(
        self, store: Store | None = None, seed: int = 1, rng: random.Random | None = None
    ) -> Replica:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.public_base = self.public_base or address
        config = Config.model_validate(
            {
                "polling": {"allow_networks": ["127.0.0.0/8"], **self.extra},
                "websub": {"callback_base_url": self.public_base,
                           "lease_s": 7200, "renew_before_s": 600, **self.websub_extra},
                "sources": [{"id": "gov", "url": self.topic}],
            }
        )  # fmt: skip
        self.source = config.sources[0]
        store = store or self.store
        await store.sync_sources((s.id, str(s.url)) for s in config.sources)
        rules, _ = load_rules([RULES])
        matcher = Matcher(rules)
        pipeline = build_pipeline(
            config, store=store, session=self.session, matcher=lambda: matcher,
            metrics=Metrics(), clock=self.clock,
        )  # fmt: skip
        websub = WebSub(
            config=config, pipeline=pipeline, session=self.session, clock=self.clock,
            rng=rng or random.Random(seed),
        )  # fmt: skip
        app = web.Application()
        add_routes(app)
        app[WEBSUB] = websub
        runner = Runner()
        runner.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.runner.setup()
        await web.SockSite(runner.runner, sock).start()
        replica = Replica(websub, address, runner)
        self.replicas.append(replica)
        return replica

    async def start(self, seed: int = 1) -> WebSub:
        if self.current is not None:
            await self.current.runner.stop()
        self.current = await self.replica(seed=seed)
        self.websub = self.current.websub
        return self.websub

    @property
    def callback(self) -> str:
        """The callback the hub was last told, on the running service."""
        assert self.current is not None
        return self.callback_on(self.current)

    @property
    def tokenless(self) -> str:
        """The callback earlier watchers told hubs (no token), on the running service."""
        assert self.current is not None
        return f"{self.current.address}/websub/gov"

    def callback_on(self, replica: Replica) -> str:
        """The callback the hub was last told (its path), on `replica`'s address."""
        told = self.hub_requests[-1]["hub.callback"] if self.hub_requests else "/websub/gov"
        return replica.address + urlsplit(told).path

    async def close(self) -> None:
        await self.hub.stop()
        for replica in self.replicas:
            await replica.runner.stop()

    @property
    def secret(self) -> str:
        return self.hub_requests[-1]["hub.secret"]

    async def verify(self, **params: str) -> tuple[int, str]:
        return await self.verify_on(self.callback, **params)

    async def verify_on(self, callback: str, **params: str) -> tuple[int, str]:
        """The hub's verification, sent to `callback` (a replica's)."""
        query = {"hub.mode": "subscribe", "hub.topic": self.topic, "hub.challenge": "c-1",
                 "hub.lease_seconds": "7200", **params}  # fmt: skip
        async with self.session.get(callback, params=query) as r:
            return r.status, await r.text()

    async def push(
        self, body: bytes, *, secret: str | None = None, **headers: str
    ) -> tuple[int, str]:
        return await self.push_to(self.callback, body, secret=secret, **headers)

    async def push_to(
        self, callback: str, body: bytes, *, secret: str | None = None, **headers: str
    ) -> tuple[int, str]:
        """A push signed (with the secret the hub was sent last), sent to `callback`."""
        sig = sign(self.secret if secret is None else secret, body)
        headers = {"X-Hub-Signature": sig, "Content-Type": "application/atom+xml", **headers}
        # a BytesIO: aiohttp warns that large raw bytes would hold the loop
        async with self.session.post(callback, data=io.BytesIO(body), headers=headers) as r:
            return r.status, await r.text()

    async def subscribed(self) -> WebSub:
        """Started, polled (the hub discovered), subscribed and verified."""
        websub = await self.start()
        await websub.pipeline.poll(self.source)
        assert await websub.renew() == 1
        assert await self.verify() == (200, "c-1")
        return websub


@pytest.fixture
async def harness(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> AsyncIterator[Harness]:
    h = Harness(store, clock, session, feed_server)
    await h.open()
    try:
        yield h
    finally:
        await h.close()


def story(n: int, size: int = 0) -> tuple[str, str]:
    return (f"p{n}-{size}", f"China tightens export controls on rare earth magnets {n}")


async def test_large_signed_pushes_are_read_whole_and_over_the_cap_refused(
    harness: Harness,
) -> None:
    harness.extra = {"max_body_bytes": 3_000_000}
    await harness.subscribed()
    for n, size in enumerate((200_000, 2_000_000)):
        entry = (f"big{n}", f"Rare earth export licence rules {'x' * size}")
        body = atom(harness.hub_url, harness.topic, entry)
        assert len(body) > size  # more than one network read
        status, text = await harness.push(body)
        assert (status, json.loads(text)) == (200, {"items": 1, "new": 1})
    big = atom(harness.hub_url, harness.topic, ("huge", "x" * 3_100_000))
    assert (await harness.push(big))[0] == 413  # said so by its Content-Length

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for i in range(0, len(big), 100_000):
            yield big[i : i + 100_000]

    headers = {"X-Hub-Signature": sign(harness.secret, big)}
    async with harness.session.post(harness.callback, data=chunks(), headers=headers) as r:
        assert r.status == 413
    assert await harness.store.count_items() == 3  # the polled one and the two pushed


async def test_a_verification_nobody_asked_for_is_not_answered(harness: Harness) -> None:
    websub = await harness.start()
    await websub.pipeline.poll(harness.source)  # the hub is discovered; nothing asked of it
    assert harness.hub_requests == []
    # a third party answers for the hub: no subscription is activated
    assert (await harness.verify(**{"hub.challenge": "evil"}))[0] == 404
    assert websub.subs["gov"].state == "wanted"
    forged = atom(harness.hub_url, harness.topic, story(1))
    assert (await harness.push(forged, secret=""))[0] == 404  # no subscription: no push
    assert await harness.store.list_alerts() == []
    # the real subscription goes on as usual
    assert await websub.renew() == 1
    assert await harness.verify() == (200, "c-1")
    assert (await harness.push(forged, secret=""))[0] == 202  # acknowledged, ignored
    assert await harness.store.list_alerts() == []
    # never an HMAC with an empty key, whatever the header says
    keyless = dataclasses.replace(websub.subs["gov"], secret="")
    empty_key_mac = hmac.new(b"", forged, hashlib.sha256).hexdigest()
    assert not websub._signed(keyless, f"sha256={empty_key_mac}", forged)
    assert (await harness.push(forged))[0] == 200


async def test_a_denial_counts_only_for_a_request_and_is_retried_later(
    harness: Harness,
) -> None:
    websub = await harness.subscribed()
    denied = {"hub.mode": "denied", "hub.reason": "forged"}
    # a denial of an active subscription nobody asked about: not honoured
    assert (await harness.verify(**denied))[0] == 404
    assert websub.subs["gov"].state == "active"
    assert (await harness.push(atom(harness.hub_url, harness.topic, story(1))))[0] == 200
    # the hub denies the renewal we asked for: honoured, and asked again later, not never
    harness.clock.advance(7200 - 300)
    assert await websub.renew() == 1
    assert (await harness.verify(**denied))[0] == 200
    [row] = await harness.store.websub_subscriptions()
    assert row.state == "denied" and row.retry_at is not None
    assert await websub.renew() == 0
    harness.clock.advance(constants.WEBSUB_DENIED_RETRY_S * 0.5)
    assert await websub.renew() == 0
    harness.clock.advance(constants.WEBSUB_DENIED_RETRY_S * 0.75)
    assert await websub.renew() == 1 and len(harness.hub_requests) == 3
    assert harness.hub_requests[-1]["hub.secret"] == harness.hub_requests[0]["hub.secret"]
    assert await harness.verify() == (200, "c-1")
    assert websub.subs["gov"].state == "active"


async def test_a_restart_keeps_the_stored_subscription_when_a_poll_comes_first(
    harness: Harness, store_url: str, clock: FakeClock
) -> None:
    await harness.subscribed()
    secret = harness.secret
    [before] = await harness.store.websub_subscriptions()
    # a restart on the same database: the scheduler's first poll runs before anything
    # reads the stored subscriptions, and rediscovers the same hub and topic in a feed
    # that moved on meanwhile
    harness.feeds.routes["/feed.atom"] = Route(
        body=atom(harness.hub_url, harness.topic, ("a1", "Local news"), ("a2", "Weather")),
        content_type="application/atom+xml",
    )
    harness.store = Store(store_url, clock=clock)
    await harness.store.open()
    try:
        websub = await harness.start(seed=2)
        assert (await websub.pipeline.poll(harness.source)).new_items == 1
        status, _ = await harness.push(
            atom(harness.hub_url, harness.topic, story(1)), secret=secret
        )
        assert status == 200  # signed with the stored secret, as the hub signs
        assert await websub.renew() == 0 and len(harness.hub_requests) == 1
        assert await harness.store.websub_subscriptions() == [before]
    finally:
        await harness.store.close()


async def test_an_unverified_request_is_asked_again_with_backoff(harness: Harness) -> None:
    base = constants.WEBSUB_RETRY_BASE_S

    async def due_within(websub: WebSub, ceiling_s: float) -> float:
        """The stored time to ask again is after now, within the backoff's ceiling (full
        jitter: anywhere up to it), and nothing is asked before it: advances the clock to
        a second before it and returns that second."""
        [row] = await harness.store.websub_subscriptions()
        now = harness.clock()
        assert row.retry_at is not None
        wait_s = (row.retry_at - now).total_seconds()
        assert 0 < wait_s <= ceiling_s
        assert await websub.renew() == 0  # not at once
        harness.clock.advance(wait_s - 1)
        assert await websub.renew() == 0  # nor before then
        return 1

    websub = await harness.start()
    await websub.pipeline.poll(harness.source)
    assert await websub.renew() == 1  # the hub accepts (202) and never verifies
    harness.clock.advance(await due_within(websub, base))
    assert await websub.renew() == 1  # ...but after a while
    harness.clock.advance(await due_within(websub, base * 2))  # backing off: up to twice as long
    assert await websub.renew() == 1
    # across a restart too, and a hub that refuses is asked again backing off as well
    harness.hub_status = 503
    websub = await harness.start(seed=2)
    assert websub.subs == {}
    harness.clock.advance(await due_within(websub, base * 4))  # loaded: not due before then
    assert websub.subs["gov"].state == "requested"
    assert await websub.renew() == 0  # sent, refused
    assert len(harness.hub_requests) == 4 and websub.subs["gov"].state == "wanted"
    wait_s = await due_within(websub, base * 8)
    assert len(harness.hub_requests) == 4
    harness.hub_status = 202
    harness.clock.advance(wait_s)
    assert await websub.renew() == 1
    assert await harness.verify() == (200, "c-1")  # verified at last
    assert websub.subs["gov"].state == "active" and websub.subs["gov"].attempts == 0


@pytest.mark.parametrize(
    ("lease", "held_to_s"),
    [
        ("99999999999999", constants.WEBSUB_LEASE_MAX_S),
        ("86400", 86400),  # longer than we asked for: the hub's, renewed on our schedule
        ("9" * 5000, 7200),  # more digits than int() reads: invalid, ours
        ("60", constants.WEBSUB_LEASE_MIN_S),
        ("0", 7200),
        ("-3600", 7200),
        ("soon", 7200),
        (None, 7200),
    ],
)
async def test_lease_seconds_is_held_to_a_sane_range(
    harness: Harness, lease: str | None, held_to_s: int
) -> None:
    websub = await harness.start()
    await websub.pipeline.poll(harness.source)
    assert await websub.renew() == 1
    now = harness.clock()
    params = {"hub.lease_seconds": lease} if lease is not None else {}
    query = {"hub.mode": "subscribe", "hub.topic": harness.topic, "hub.challenge": "c", **params}
    async with harness.session.get(harness.callback, params=query) as r:
        assert r.status == 200
    sub = websub.subs["gov"]
    assert sub.lease_until == now + timedelta(seconds=held_to_s)
    assert await websub.renew() == 0  # a short lease is not renewed in a loop
    # renewed by the lease we asked for (7200 s) at the latest, whatever the hub claims
    harness.clock.advance(min(held_to_s, 7200) - 600 - 1)  # renew_before_s = 600
    assert await websub.renew() == 0
    harness.clock.advance(2)
    assert await websub.renew() == 1


async def test_a_non_ascii_signature_is_a_bad_signature_not_a_500(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await harness.subscribed()
    body = atom(harness.hub_url, harness.topic, story(1))
    callback = urlsplit(harness.callback)
    reader, writer = await asyncio.open_connection("127.0.0.1", callback.port)
    writer.write(
        f"POST {callback.path} HTTP/1.1\r\n".encode()
        + b"Host: x\r\nContent-Type: application/atom+xml\r\n"
        b"X-Hub-Signature: sha256=\xe9\xe9\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    status_line = (await reader.read()).split(b"\r\n")[0]
    writer.close()
    await writer.wait_closed()
    assert status_line == b"HTTP/1.1 202 Accepted"
    assert "source gov: WebSub push with a bad signature ignored" in caplog.messages
    assert await harness.store.list_alerts() == []


async def test_a_pushed_federal_register_answer_with_wrong_types_is_read(
    harness: Harness,
) -> None:
    await harness.subscribed()
    answer = {"count": 1, "results": [{"document_number": "2026-1", "title": "t", "agencies": 5}]}
    body = json.dumps(answer).encode()
    status, text = await harness.push(body, **{"Content-Type": "application/json"})
    assert (status, json.loads(text)) == (200, {"items": 1, "new": 1})


async def test_a_push_for_another_topic_is_ignored(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await harness.subscribed()
    other = "http://127.0.0.1:1/other.atom"
    named = atom(harness.hub_url, other, story(1))
    link = f'<{harness.hub_url}>; rel="hub", <{other}>; rel="self"'
    assert (await harness.push(named, Link=link))[0] == 202  # the hub's Link header
    assert (await harness.push(named))[0] == 202  # no Link header: the feed's self link
    assert sum("another" in m and "source gov" in m for m in caplog.messages) == 2
    assert await harness.store.count_items() == 1  # only the polled one
    ours = atom(harness.hub_url, harness.topic, story(2))
    link = f'<{harness.hub_url}>; rel="hub", <{harness.topic}>; rel="self"'
    assert (await harness.push(ours, Link=link))[0] == 200
    assert await harness.store.count_items() == 2


# ---------------------------------------------------------------- retry and renewal times


@pytest.mark.parametrize("rng", [Lowest(), Highest()], ids=["lowest", "highest"])
async def test_a_request_is_asked_again_after_the_outbox_s_full_jitter_backoff(
    harness: Harness, rng: random.Random
) -> None:
    """One backoff (watcher.backoff) for deliveries and subscription requests: full jitter,
    so a draw may be anything from nothing to the ceiling (not the ceiling +-20%)."""
    replica = await harness.replica(rng=rng)
    await replica.websub.pipeline.poll(harness.source)
    assert await replica.websub.renew() == 1
    [row] = await harness.store.websub_subscriptions()
    ceiling_s = constants.WEBSUB_RETRY_BASE_S
    assert row.retry_at == harness.clock() + timedelta(seconds=rng.uniform(0, ceiling_s))


async def test_a_row_from_before_retry_at_is_renewed_when_a_verification_would_have_set(
    harness: Harness,
) -> None:
    harness.websub_extra = {"renew_before_s": 5000}  # more than half the 7200 s lease
    websub = await harness.subscribed()
    [row] = await harness.store.websub_subscriptions()
    assert row.retry_at == harness.clock() + timedelta(seconds=7200 - 3600)  # half-way
    # the same row as an earlier watcher stored it: no retry_at
    stale = dataclasses.replace(row, retry_at=None)
    assert await harness.store.write_websub(stale, seen=row.version) is not None
    harness.clock.advance(7200 - 5000)
    assert await websub.renew() == 0  # not at renew_before_s: at half the lease, as verified
    harness.clock.advance(3600 - 2200)
    assert await websub.renew() == 1


# ---------------------------------------------------------------- several processes, one store


@pytest.fixture
async def second_store(store_url: str, clock: FakeClock) -> AsyncIterator[Store]:
    """The same database as `store`, opened again: another process's connections."""
    s = Store(store_url, clock=clock)
    await s.open()
    yield s
    await s.close()


async def test_a_request_from_one_replica_is_verified_and_pushed_on_another(
    harness: Harness, second_store: Store
) -> None:
    a = await harness.replica(seed=1)
    b = await harness.replica(second_store, seed=2)
    assert await b.websub.renew() == 0  # b's renewal job runs first: nothing to do yet
    await a.websub.pipeline.poll(harness.source)
    assert await a.websub.renew() == 1
    # the hub's verification and pushes reach b (behind one callback URL, say)
    assert await harness.verify_on(harness.callback_on(b)) == (200, "c-1")
    status, text = await harness.push_to(
        harness.callback_on(b), atom(harness.hub_url, harness.topic, story(1))
    )
    assert (status, json.loads(text)) == (200, {"items": 1, "new": 1})
    status, text = await harness.push_to(
        harness.callback_on(a), atom(harness.hub_url, harness.topic, story(2))
    )
    assert (status, json.loads(text)) == (200, {"items": 1, "new": 1})
    assert [a.rule_id for a in await harness.store.list_alerts()] == ["ree-export-curb"] * 2
    # the lease nearly over: the first replica to look renews, the other leaves it be;
    # the hub's verification of that renewal reaches the other one
    harness.clock.advance(7200 - 300)
    assert await b.websub.renew() == 1
    assert await a.websub.renew() == 0
    assert [r["hub.secret"] for r in harness.hub_requests] == [harness.secret] * 2
    assert await harness.verify_on(harness.callback_on(a), **{"hub.challenge": "c-2"}) == (
        200,
        "c-2",
    )
    [row] = await harness.store.websub_subscriptions()
    assert row.state == "active" and row.lease_until == harness.clock() + timedelta(hours=2)


async def test_replicas_that_discover_a_hub_at_once_make_one_subscription(
    harness: Harness, second_store: Store
) -> None:
    a = await harness.replica(seed=1)
    b = await harness.replica(second_store, seed=2)

    async def discover_and_renew() -> None:
        # at once: each reads the feed before the other stored its validators
        await asyncio.gather(*(r.websub.pipeline.poll(harness.source) for r in (a, b)))
        found = [r.websub.subs["gov"] for r in (a, b)]
        assert [(s.hub, s.version) for s in found] == [(harness.hub_url, None)] * 2
        assert found[0].secret_ref != found[1].secret_ref  # each would make its own secret
        assert sorted(await asyncio.gather(a.websub.renew(), b.websub.renew())) == [0, 1]
        assert await harness.verify_on(harness.callback_on(b)) == (200, "c-1")

    async def pushes_verify_on_both(n: int) -> None:
        for replica in (a, b):
            n += 1
            body = atom(harness.hub_url, harness.topic, story(n))
            status, text = await harness.push_to(
                harness.callback_on(replica), body
            )  # signed as the hub was told
            assert (status, json.loads(text)) == (200, {"items": 1, "new": 1})

    await discover_and_renew()
    assert len(harness.hub_requests) == 1  # one request, one secret
    [row] = await harness.store.websub_subscriptions()
    assert a.websub.subs["gov"].secret_ref == b.websub.subs["gov"].secret_ref == row.secret_ref
    await pushes_verify_on_both(0)
    # the feed moves to another hub: both find it, one subscribes (a new secret) for both
    harness.advertise(harness.hub_base + "/hub?moved=1")
    await discover_and_renew()
    assert len(harness.hub_requests) == 2
    assert harness.hub_requests[1]["hub.secret"] != harness.hub_requests[0]["hub.secret"]
    [row] = await harness.store.websub_subscriptions()
    assert row.hub == harness.hub_url and row.state == "active"
    await pushes_verify_on_both(2)


async def test_a_verification_that_keeps_losing_the_row_is_503_and_answered_when_asked_again(
    harness: Harness, second_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process changes the row between each read and write of the verification:
    after three lost writes the hub gets a 503 (it asks again), nothing half-written."""
    a = await harness.replica(seed=1)
    b = await harness.replica(second_store, seed=2)
    await a.websub.pipeline.poll(harness.source)
    assert await a.websub.renew() == 1
    [asked] = await harness.store.websub_subscriptions()
    write = second_store.write_websub
    lost = 0

    async def another_process_first(row: Any, *, seen: int | None) -> int | None:
        nonlocal lost
        # a's process rewrites the row (same content, a new version) just before b writes
        current = await harness.store.websub_subscription(row.source_id)
        assert current is not None
        assert await harness.store.write_websub(current, seen=current.version) is not None
        lost += 1
        return await write(row, seen=seen)

    monkeypatch.setattr(second_store, "write_websub", another_process_first)
    assert (await harness.verify_on(harness.callback_on(b)))[0] == 503
    assert lost == 3
    [row] = await harness.store.websub_subscriptions()
    assert (row.state, row.lease_until) == (asked.state, asked.lease_until)  # still asked
    assert row.version == asked.version + 3
    monkeypatch.setattr(second_store, "write_websub", write)
    assert await harness.verify_on(harness.callback_on(b)) == (200, "c-1")  # the hub's retry
    [row] = await harness.store.websub_subscriptions()
    assert row.state == "active" and row.lease_until == harness.clock() + timedelta(hours=2)


# ---------------------------------------------------------------- hubs re-confirming


async def test_a_hub_re_confirming_an_active_subscription_is_answered(
    harness: Harness,
) -> None:
    websub = await harness.subscribed()  # lease 7200 s: renewed at 6600 s
    start = harness.clock()
    harness.clock.advance(3000)
    now = harness.clock()
    # the hub re-confirms on its own (a PubSubHubbub 0.3 hub refreshing the lease), shorter
    reconfirm = {"hub.challenge": "again", "hub.lease_seconds": "3600"}
    assert await harness.verify(**reconfirm) == (200, "again")
    [row] = await harness.store.websub_subscriptions()
    assert row.state == "active" and row.lease_until == now + timedelta(seconds=3600)
    assert row.retry_at == now + timedelta(seconds=3600 - 600)  # brought forward
    # one claiming a long lease (anyone can send it) answers, but never puts renewal off
    long_lease = {"hub.challenge": "long", "hub.lease_seconds": str(365 * 86400)}
    assert await harness.verify(**long_lease) == (200, "long")
    [after] = await harness.store.websub_subscriptions()
    assert after.state == "active" and after.retry_at == row.retry_at < start + timedelta(
        seconds=6600
    )
    assert (await harness.push(atom(harness.hub_url, harness.topic, story(1))))[0] == 200
    assert len(harness.hub_requests) == 1  # nothing asked of the hub meanwhile
    harness.clock.advance(3000 - 1)
    assert await websub.renew() == 0
    harness.clock.advance(1)
    assert await websub.renew() == 1


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "unsubscribe"},
        {"hub.mode": "denied", "hub.reason": "forged"},
        {"hub.topic": "http://127.0.0.1:1/other.atom"},
        {"hub.mode": "unsubscribe", "hub.topic": "http://127.0.0.1:1/other.atom"},
        {"hub.challenge": ""},
        {"hub.mode": "resubscribe"},
    ],
    ids=["unsubscribe", "denied", "other-topic", "unsubscribe-other-topic", "no-challenge",
         "unknown-mode"],
)  # fmt: skip
async def test_an_active_subscription_cannot_be_downgraded_or_hijacked(
    harness: Harness, params: dict[str, str]
) -> None:
    websub = await harness.subscribed()
    [before] = await harness.store.websub_subscriptions()
    assert (await harness.verify(**params))[0] == 404
    assert await harness.store.websub_subscriptions() == [before]
    assert websub.subs["gov"].state == "active"
    assert (await harness.push(atom(harness.hub_url, harness.topic, story(1))))[0] == 200


async def test_nothing_is_verified_while_no_subscription_is_asked_for(harness: Harness) -> None:
    modes = [{"hub.mode": m} for m in ("subscribe", "unsubscribe", "denied")]

    async def all_refused() -> None:
        for params in modes:
            assert (await harness.verify(**params))[0] == 404
            assert (await harness.verify(**params, **{"hub.topic": "http://x/"}))[0] == 404

    websub = await harness.start()
    await all_refused()  # nothing known at all
    await websub.pipeline.poll(harness.source)
    await all_refused()  # a hub discovered, nothing asked of it
    harness.hub_status = 503
    assert await websub.renew() == 0  # asked, refused: nothing outstanding
    await all_refused()
    [row] = await harness.store.websub_subscriptions()
    assert row.state == "wanted"
    # asked, accepted: an unsubscribe (never asked for) or another topic is still refused
    harness.hub_status = 202
    harness.clock.advance(constants.WEBSUB_RETRY_BASE_S)
    assert await websub.renew() == 1
    assert (await harness.verify(**{"hub.mode": "unsubscribe"}))[0] == 404
    assert (await harness.verify(**{"hub.topic": "http://x/"}))[0] == 404
    assert await harness.verify() == (200, "c-1")
    # a denial honoured: no subscription until asked again
    harness.clock.advance(7200 - 300)
    assert await websub.renew() == 1
    assert (await harness.verify(**{"hub.mode": "denied"}))[0] == 200
    await all_refused()


# ---------------------------------------------------------------- keys in URLs


async def test_no_key_in_a_hub_or_topic_url_reaches_a_log_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="watcher")  # every line of ours, debug too
    harness.topic = harness.feeds.url("/feed.atom?token=s3cret")
    harness.advertise(harness.hub_base + "/hub?token=s3cret")
    websub = await harness.start()
    await websub.pipeline.poll(harness.source)
    harness.hub_status = 503  # refused
    assert await websub.renew() == 0
    harness.hub_status = 307  # a redirect, to the URL itself: not followed
    harness.clock.advance(constants.WEBSUB_RETRY_MAX_S)
    assert await websub.renew() == 0
    harness.advertise("http://127.0.0.1:1/hub?token=s3cret")  # nobody listens there
    await websub.pipeline.poll(harness.source)
    harness.clock.advance(constants.WEBSUB_RETRY_MAX_S)
    assert await websub.renew() == 0
    harness.advertise(harness.hub_base + "/hub?token=s3cret")
    await websub.pipeline.poll(harness.source)
    harness.hub_status = 202
    harness.clock.advance(constants.WEBSUB_RETRY_MAX_S)
    assert await websub.renew() == 1
    assert await harness.verify() == (200, "c-1")
    # pushes naming another topic, by Link header and by the feed's self link
    other = "http://127.0.0.1:1/other.atom?token=s3cret"
    named = atom(harness.hub_url, other, story(1))
    assert (await harness.push(named, Link=f'<{other}>; rel="self"'))[0] == 202
    assert (await harness.push(named))[0] == 202
    # a renewal the hub denies, its reason quoting the URL; a verification not asked for
    harness.clock.advance(7200 - 300)
    assert await websub.renew() == 1
    reason = f"no such hub {harness.hub_url}"
    assert (await harness.verify(**{"hub.mode": "denied", "hub.reason": reason}))[0] == 200
    assert (await harness.verify(**{"hub.mode": other}))[0] == 404

    messages = [logging.Formatter().format(r) for r in caplog.records]  # tracebacks too
    assert sum("refused the subscription" in m for m in messages) == 1
    assert sum("redirected the subscription" in m for m in messages) == 1
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("another" in m for m in messages) == 2
    assert sum("hub denied" in m for m in messages) == 1
    assert sum("not asked for" in m for m in messages) == 1
    assert [m for m in messages if "s3cret" in m] == []


async def test_a_hub_s_redirect_is_not_followed(harness: Harness) -> None:
    """A redirect would take the subscription (our secret in it) anywhere, an IP literal
    too, which aiohttp connects to without the resolver's address check: a refusal."""
    elsewhere: list[str] = []

    async def record(request: web.Request) -> web.Response:
        elsewhere.append(request.path)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/metadata", record)
    other = Runner()
    base = await other.start(app)
    try:
        harness.hub_status = 307
        harness.redirect_to = base + "/metadata"
        websub = await harness.start()
        await websub.pipeline.poll(harness.source)
        assert await websub.renew() == 0  # refused
        assert len(harness.hub_requests) == 1 and elsewhere == []
        assert websub.subs["gov"].state == "wanted"
    finally:
        await other.stop()


# ---------------------------------------------------------------- what anyone may send, logged


async def test_what_a_verification_says_is_logged_on_one_line_bounded(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone may send a verification: a line break in hub.mode or hub.reason must not
    write a genuine-looking line of theirs into our log, nor a bidi override reorder ours."""
    websub = await harness.subscribed()
    forged = "x\n2026-02-05 12:00:00,000 CRITICAL watcher.health: all sources healthy"
    assert (await harness.verify(**{"hub.mode": forged + "\u202e" + "y" * 5000}))[0] == 404
    harness.clock.advance(7200 - 300)
    assert await websub.renew() == 1
    denied = {"hub.mode": "denied", "hub.reason": "no\r\n2026-02-05 12:00:01,000 INFO ok\x1b[2J"}
    assert (await harness.verify(**denied))[0] == 200
    logged = [r.getMessage() for r in caplog.records if r.name == "watcher.websub"]
    assert len(logged) == 2
    for message in logged:
        assert message.isprintable() and "\u202e" not in message
        assert len(message) < constants.WEBSUB_LOGGED_MAX_CHARS + 100
    assert "x 2026-02-05 12:00:00,000 CRITICAL watcher.health" in logged[0]
    assert logged[1].endswith("no 2026-02-05 12:00:01,000 INFO ok[2J")


async def test_pushed_items_count_in_items_seen_and_leave_the_poll_state_alone(
    harness: Harness,
) -> None:
    await harness.subscribed()  # polled once: one item
    [before] = await harness.store.list_sources()
    assert before.items_seen == 1
    for n in (1, 2):
        status, text = await harness.push(atom(harness.hub_url, harness.topic, story(n)))
        assert (status, json.loads(text)) == (200, {"items": 1, "new": 1})
    assert (await harness.push(atom(harness.hub_url, harness.topic, story(2))))[0] == 200  # again
    [after] = await harness.store.list_sources()
    assert after == dataclasses.replace(before, items_seen=3)  # validators, errors, next poll kept
    # the poll that later carries them finds nothing new: nothing counted twice
    harness.feeds.routes["/feed.atom"] = Route(
        body=atom(harness.hub_url, harness.topic, ("a1", "Local news"), story(1), story(2)),
        content_type="application/atom+xml",
    )
    assert (await harness.websub.pipeline.poll(harness.source)).new_items == 0
    [polled] = await harness.store.list_sources()
    assert polled.items_seen == 3 == await harness.store.count_items()


# ---------------------------------------------------------------- discovery by Link headers


@pytest.mark.parametrize("in_body", [False, True], ids=["headers-only", "headers-win"])
async def test_a_hub_advertised_in_link_headers_is_subscribed_to(
    harness: Harness, in_body: bool
) -> None:
    """WebSub 4: the hub and topic in the feed response's Link headers (relative ones
    resolved against its URL) are preferred to those in its body."""
    body = atom("http://127.0.0.1:1/body-hub", harness.feeds.url("/body-self"), ("a1", "News"))
    if not in_body:
        body = body.replace(b'<link rel="hub" href="http://127.0.0.1:1/body-hub"/>', b"")
        body = body.replace(
            f'<link rel="self" href="{harness.feeds.url("/body-self")}"/>'.encode(), b""
        )
        assert b'rel="hub"' not in body and b'rel="self"' not in body
    harness.feeds.routes["/feed.atom"] = Route(
        body=body,
        content_type="application/atom+xml",
        links=(f'<{harness.hub_url}>; rel="hub"', '</feed.atom>; rel="self"'),
    )
    websub = await harness.start()
    await websub.pipeline.poll(harness.source)
    assert await websub.renew() == 1
    [req] = harness.hub_requests
    assert req["hub.topic"] == harness.topic  # /feed.atom, resolved against the feed's URL
    [row] = await harness.store.websub_subscriptions()
    assert (row.hub, row.topic) == (harness.hub_url, harness.topic)
    assert await harness.verify() == (200, "c-1")


# ---------------------------------------------------------------- the callback's token


async def test_a_verification_or_push_without_the_callback_s_token_is_not_answered(
    harness: Harness,
) -> None:
    """The topic is public (it is in the feed): a third party who forges the hub's
    verification while a request of ours is outstanding must not activate it (and have
    the hub's real denial refused), as it could when the callback was /websub/<source>."""
    websub = await harness.subscribed()
    bare = harness.tokenless
    harness.clock.advance(7200 - 300)
    assert await websub.renew() == 1  # the renewal is outstanding
    forged = {"hub.challenge": "evil", "hub.lease_seconds": str(365 * 86400)}
    for url in (
        bare,
        f"{bare}/{'0' * 32}",
        f"{bare}/{harness.callback[-32:].upper()}",
        f"{bare}/é",
    ):
        assert (await harness.verify_on(url, **forged))[0] == 404
        # a push there is refused too, signed or not
        assert (await harness.push_to(url, atom(harness.hub_url, harness.topic, story(1))))[
            0
        ] == 404
    [row] = await harness.store.websub_subscriptions()
    assert row.state == "renewing"
    assert await harness.store.count_items() == 1  # the polled one only
    # the hub, on the callback it was told, is answered: its denial honoured
    assert (await harness.verify(**{"hub.mode": "denied"}))[0] == 200
    [row] = await harness.store.websub_subscriptions()
    assert row.state == "denied"
    told = harness.hub_requests[-1]["hub.callback"]
    assert re.fullmatch(f"{harness.public_base}/websub/gov/[0-9a-f]{{32}}", told)


async def test_a_subscription_asked_for_without_a_token_is_served_until_asked_again_at_once(
    harness: Harness,
) -> None:
    """A subscription an earlier watcher made has the hub call /websub/<source>: that
    callback still serves it after the upgrade, and it is asked for again at start-up,
    with a token, after which the callback without one serves nothing."""
    await harness.subscribed()
    secret = harness.secret
    [row] = await harness.store.websub_subscriptions()
    legacy = dataclasses.replace(row, callback_base=None)  # as the earlier watcher stored it
    assert await harness.store.write_websub(legacy, seen=row.version) is not None
    websub = await harness.start(seed=2)  # the upgraded watcher starts
    bare = harness.tokenless
    status, text = await harness.push_to(bare, atom(harness.hub_url, harness.topic, story(1)))
    assert (status, json.loads(text)) == (200, {"items": 1, "new": 1})
    assert await harness.verify_on(bare, **{"hub.challenge": "again"}) == (200, "again")
    assert await websub.renew() == 1  # at once, lease or not
    [req] = harness.hub_requests[1:]
    assert req["hub.callback"].startswith(f"{harness.public_base}/websub/gov/")
    assert req["hub.secret"] == secret  # the same subscription, on its new callback
    assert await websub.renew() == 0  # once
    assert await harness.verify() == (200, "c-1")
    assert (await harness.verify_on(bare, **{"hub.challenge": "again"}))[0] == 404
    assert (await harness.push_to(bare, atom(harness.hub_url, harness.topic, story(2))))[0] == 404
    assert (await harness.push(atom(harness.hub_url, harness.topic, story(2))))[0] == 200
    [row] = await harness.store.websub_subscriptions()
    assert (row.state, row.callback_base) == ("active", harness.public_base)


async def test_a_changed_callback_base_url_is_given_to_the_hub_at_once(harness: Harness) -> None:
    await harness.subscribed()
    secret = harness.secret
    [before] = await harness.store.websub_subscriptions()
    harness.public_base = "http://localhost:9"  # the service moved: a new public URL
    harness.hub_status = 503  # ...and the hub refuses at first
    websub = await harness.start(seed=2)
    assert await websub.renew() == 0  # asked at once: refused
    assert harness.hub_requests[-1]["hub.callback"].startswith("http://localhost:9/websub/gov/")
    [row] = await harness.store.websub_subscriptions()
    assert (row.state, row.callback_base) == ("active", before.callback_base)  # as it was
    assert await websub.renew() == 0 and len(harness.hub_requests) == 2  # then backing off
    harness.hub_status = 202
    harness.clock.advance(constants.WEBSUB_RETRY_BASE_S)
    assert await websub.renew() == 1
    assert [r["hub.secret"] for r in harness.hub_requests] == [secret] * 3
    assert await harness.verify() == (200, "c-1")
    [row] = await harness.store.websub_subscriptions()
    assert (row.state, row.callback_base) == ("active", "http://localhost:9")
    assert await websub.renew() == 0
