"""WebSub: hub discovery, subscription, verification challenge, signed pushes, renewal."""

from __future__ import annotations

import hashlib
import hmac
import random

import aiohttp
from aiohttp import web

from tests.conftest import FakeClock
from tests.servers import FeedServer, Route
from tests.test_pipeline import RULES
from watcher.config import Config
from watcher.metrics import Metrics
from watcher.pipeline import build_pipeline
from watcher.rules import Matcher, load_rules
from watcher.store import Store
from watcher.websub import WebSub


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
    callback_app.router.add_get("/websub/{source_id}", verify)
    callback_app.router.add_post("/websub/{source_id}", push)
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
        assert req["hub.callback"] == f"{callback_base}/websub/gov"
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
        async with session.post(f"{base}/websub/x", data=b"<feed/>") as r:
            assert r.status == 404
    finally:
        await runner.stop()
