"""`watcher demo`: the whole pipeline offline, on bundled sample feeds.

Serves the bundled feeds from a local aiohttp server, receives email on a
local aiosmtpd server and webhooks on a local aiohttp receiver, polls each
feed once, delivers every alert, prints what happened, and exits.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import json
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiosmtpd.controller import Controller

from watcher.config import Config
from watcher.metrics import Metrics
from watcher.models import utc_now
from watcher.notify import build_notifiers
from watcher.outbox import DeliveryOutcome, OutboxWorker
from watcher.pipeline import build_pipeline
from watcher.rules import Matcher, load_rules
from watcher.store import Store

FEED_TYPES = {
    ".atom": "application/atom+xml",
    ".rss": "application/rss+xml",
    ".json": "application/feed+json",
}


def bundled_feeds() -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type) of the sample feeds shipped with watcher."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in sorted(resources.files("watcher").joinpath("demo_feeds").iterdir(), key=str):
        suffix = Path(entry.name).suffix
        if suffix in FEED_TYPES:
            out[entry.name] = (entry.read_bytes(), FEED_TYPES[suffix])
    return out


def feed_app(feeds: dict[str, tuple[bytes, str]]) -> web.Application:
    """A tiny feed server with ETag support (answers 304 to a matching If-None-Match)."""

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in feeds:
            raise web.HTTPNotFound()
        body, ctype = feeds[name]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type=ctype, headers={"ETag": etag})

    app = web.Application()
    app.router.add_get("/feeds/{name}", serve)
    return app


@dataclass
class WebhookSink:
    """Collects webhook posts (headers and JSON body)."""

    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    on_receive: Callable[[dict[str, str], dict[str, Any]], None] = lambda _h, _b: None

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.received.append((headers, body))
            self.on_receive(headers, body)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app


class SmtpSink:
    """An aiosmtpd handler that keeps every message it receives, parsed."""

    def __init__(self, on_receive: Callable[[EmailMessage], None] = lambda _m: None) -> None:
        self.messages: list[EmailMessage] = []
        self.on_receive = on_receive

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.on_receive(msg)
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_site(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _say(line: str) -> None:
    # one write per line: the SMTP sink speaks from its own thread
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_demo(*, rules: Path = Path("rules")) -> int:
    compiled, errors = load_rules([rules])
    if errors:
        for err in errors:
            _say(f"error: {err}")
        return 2
    matcher = Matcher(compiled)
    feeds = bundled_feeds()
    smtp = SmtpSink(lambda m: _say(f"  smtp sink  <- email  {m['Subject']}"))
    hooks = WebhookSink(
        on_receive=lambda h, b: _say(
            f"  webhook sink <- POST  {b['alert']['rule']['id']} (webhook-id {h.get('webhook-id')})"
        )
    )
    smtp_port = free_port()
    controller = Controller(smtp, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    feed_runner, feed_port = await start_site(feed_app(feeds))
    hook_runner, hook_port = await start_site(hooks.app())
    try:
        with tempfile.TemporaryDirectory(prefix="watcher-demo-") as tmp:
            config = Config.model_validate(
                {
                    "store": {"url": f"sqlite+aiosqlite:///{tmp}/demo.db"},
                    "polling": {"allow_networks": ["127.0.0.0/8"]},  # the local feed server
                    "sources": [
                        {"id": Path(name).stem, "url": f"http://127.0.0.1:{feed_port}/feeds/{name}"}
                        for name in feeds
                    ],
                    "receivers": [
                        # group_wait_s 0: one notification per alert, sent at once
                        {"type": "email", "id": "analyst-email", "host": "127.0.0.1",
                         "port": smtp_port, "to": ["analyst@example.org"],
                         "from": "watcher@example.org", "group_wait_s": 0},
                        {"type": "webhook", "id": "ops-webhook", "group_wait_s": 0,
                         "url": f"http://127.0.0.1:{hook_port}/hook"},
                    ],
                    "subscriptions": [{"receivers": ["analyst-email", "ops-webhook"]}],
                }
            )  # fmt: skip
            await _demo_pipeline(config, matcher, smtp, hooks)
    finally:
        await feed_runner.cleanup()
        await hook_runner.cleanup()
        controller.stop()
    return 0


async def _demo_pipeline(
    config: Config, matcher: Matcher, smtp: SmtpSink, hooks: WebhookSink
) -> None:
    store = Store(config.store.url, clock=utc_now)
    await store.open()
    metrics = Metrics()
    try:
        await store.sync_sources((s.id, str(s.url)) for s in config.sources)
        async with aiohttp.ClientSession() as session:

            def report(o: DeliveryOutcome) -> None:
                d = o.claimed.delivery
                tail = f": {o.error}" if o.error else ""
                _say(f"  delivery #{d.id} {d.receiver:<14} {o.outcome}{tail}")

            worker = OutboxWorker(
                store=store,
                notifiers=build_notifiers(config, session=session, clock=utc_now),
                config=config.outbox,
                metrics=metrics,
                clock=utc_now,
                on_outcome=report,
            )
            pipeline = build_pipeline(
                config, store=store, session=session, matcher=lambda: matcher,
                metrics=metrics, clock=utc_now,
            )  # fmt: skip
            _say(f"watcher demo: {len(matcher)} rules, {len(config.sources)} bundled feeds\n")
            for source in config.sources:
                outcome = await pipeline.poll(source)
                if outcome.error:
                    _say(f"[{source.id}] error: {outcome.error}")
                    continue
                _say(f"[{source.id}] {outcome.new_items} new items, {len(outcome.alerts)} alerts")
                for a in outcome.alerts:
                    _say(
                        f"  ALERT {a.hit.severity.value.upper():<8} {a.hit.event_type.value:<24} "
                        f"{a.hit.rule_id}: {a.item.title[:70]}"
                    )
            again = [await pipeline.poll(s) for s in config.sources]
            _say(
                "\nsecond poll of every feed: "
                + ", ".join(f"{o.source_id} {o.outcome}" for o in again)
                + " (conditional GET, nothing re-alerted)\n"
            )
            _say("delivering:")
            await worker.drain()
        alerts = await store.list_alerts()
        # aiosmtpd hands messages over on its own thread: give it a moment.
        for _ in range(50):
            if len(smtp.messages) >= len(alerts):
                break
            await asyncio.sleep(0.05)
        _say(
            f"\ndone: {len(alerts)} alerts, {len(smtp.messages)} emails and "
            f"{len(hooks.received)} webhooks received by the local sinks."
        )
        if hooks.received:
            _say("\none webhook payload, as received:")
            _say(json.dumps(hooks.received[0][1], indent=2, ensure_ascii=False))
    finally:
        await store.close()
