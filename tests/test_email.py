"""Email against a real aiosmtpd server.

MIME, connection reuse, TLS, AUTH, one-click unsubscribe, threading.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
import ssl
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import FakeClock
from tests.delivery import add_alerts, config, sample_claimed, worker
from tests.golden import check_golden
from tests.servers import RawSMTPServer
from watcher.config import Config, EmailReceiverConfig
from watcher.constants import SMTP_IDLE_MAX_S
from watcher.demo import free_port
from watcher.errors import DeliveryError, DeliveryReason
from watcher.models import DeliveryState
from watcher.notify.email import EmailNotifier, build_message, unsubscribe_url
from watcher.rules import Matcher
from watcher.service import STORE, UNSUBSCRIBE_KEY, WORKER, create_app
from watcher.store import Batch, BatchMember, Store


class Sink:
    """Keeps each message with the id of the SMTP session (connection) it came on."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, EmailMessage, Any]] = []
        self.refuse: dict[str, str] = {}  # address -> the reply its RCPT gets

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((id(session), msg, session))
        return "250 OK"


def receiver(port: int, **extra: Any) -> EmailReceiverConfig:
    return EmailReceiverConfig.model_validate(
        {"type": "email", "id": "mail", "host": "127.0.0.1", "port": port,
         "to": ["analyst@example.org"], "from": "watcher@example.org", "timeout_s": 5, **extra}
    )  # fmt: skip


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s * 20)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_email_mime_golden(clock: FakeClock) -> None:
    raw = build_message(
        sample_claimed("mail"),
        sender="watcher@example.org",
        to="analyst@example.org",
        clock=clock,
        unsubscribe="https://watcher.example.org/unsubscribe?r=mail&a=analyst%40example.org&t=x",
    )
    check_golden("email-alert.eml", raw.decode("ascii").replace("\r\n", "\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["Subject"] == (
        "[HIGH] Rare-earth export curb: China tightens export controls on rare earth magnets"
    )
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    assert "Also reported by 2: reuters-world, nikkei-asia" in text.get_content()
    assert 'href="https://example.org/news/curb-1"' in html.get_content()
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["References"] == msg["In-Reply-To"] == "<story.3f2a9c@watcher.invalid>"


def test_non_ascii_subject_round_trips(clock: FakeClock) -> None:
    title = "中国加强稀土出口管制 — Ausfuhrkontrolle für Gallium"
    raw = build_message(sample_claimed("mail", title=title), sender="w@example.org",
                        to="a@example.org", clock=clock)  # fmt: skip
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == f"[HIGH] Rare-earth export curb: {title}"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    body = msg.get_body(("plain",))
    assert body is not None and title in body.get_content()


@pytest.mark.parametrize(
    "title",
    [
        "中国加强稀土出口管制" * 15,
        "Ausfuhrkontrolle für Gallium und Germanium — " * 4,
        "🪨⛏️🇨🇳" * 40,
        "=?utf-8?b?RmFrZQ==?= " * 8,  # ASCII, but it would read as encoded words
    ],
)
def test_a_long_subject_is_folded_and_round_trips(title: str, clock: FakeClock) -> None:
    for update in (False, True):
        claimed = sample_claimed("mail", title=title)
        if update:
            claimed = replace(claimed, batch=Batch("group", (BatchMember(claimed.alert, True),)))
        raw = build_message(claimed, sender="w@example.org", to="a@example.org", clock=clock)
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert all(len(line) <= 998 for line in head.split(b"\r\n"))  # RFC 5322
        assert all(len(w) <= 75 for w in re.findall(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=", head))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        want = f"[HIGH] Rare-earth export curb: {title[:150].strip()}"
        assert msg["Subject"] == ("Re: " if update else "") + want


def test_html_part_escapes_feed_text(clock: FakeClock) -> None:
    hostile = '<script>alert(1)</script><a href="javascript:x">x</a>'
    built = build_message(
        sample_claimed("mail", title=hostile, text=hostile),
        sender="w@example.org", to="a@example.org", clock=clock,
    )  # fmt: skip
    msg = email.message_from_bytes(built, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html = msg.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "<script>" not in content and 'href="javascript' not in content
    assert "&lt;script&gt;" in content


async def test_one_connection_is_reused_for_a_batch(
    sink: tuple[Sink, int], clock: FakeClock
) -> None:
    handler, port = sink
    notifier = EmailNotifier(receiver(port, concurrency=1), clock=clock)
    for i in range(10):
        await notifier.send(sample_claimed("mail", id=i, story_key=f"s{i}"))
    await notifier.close()
    assert len(handler.messages) == 10
    assert len({session_id for session_id, _, _ in handler.messages}) == 1


async def test_follow_ups_on_a_story_thread_together(
    sink: tuple[Sink, int], clock: FakeClock
) -> None:
    handler, port = sink
    notifier = EmailNotifier(receiver(port), clock=clock)
    await notifier.send(sample_claimed("mail", rule_id="a"))
    second = sample_claimed("mail", rule_id="b")
    second.delivery.idempotency_key = "wd_43_mail"
    await notifier.send(second)
    await notifier.close()
    first_msg, second_msg = (m for _, m, _ in handler.messages)
    assert first_msg["Message-ID"] != second_msg["Message-ID"]
    assert first_msg["References"] == second_msg["References"]


async def test_permanent_and_transient_smtp_failures(
    sink: tuple[Sink, int], clock: FakeClock
) -> None:
    _, port = sink
    notifier = EmailNotifier(receiver(port, to=["nobody@example.org"]), clock=clock)
    with pytest.raises(DeliveryError) as err:
        await notifier.send(sample_claimed("mail"))
    assert err.value.reason is DeliveryReason.SMTP_PERMANENT and not err.value.retryable
    await notifier.close()  # a refused recipient leaves the connection usable: kept
    down = EmailNotifier(receiver(free_port()), clock=clock)
    with pytest.raises(DeliveryError) as err:
        await down.send(sample_claimed("mail"))
    assert err.value.retryable and "SMTP server 127.0.0.1" in str(err.value)


ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"


@pytest.mark.parametrize("reply", ["550 5.1.1 no such user", "450 4.2.1 mailbox busy"])
async def test_a_refused_recipient_stops_no_other_and_a_retry_goes_to_it_alone(
    reply: str,
    sink: tuple[Sink, int],
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
) -> None:
    handler, port = sink
    handler.refuse[BOB] = reply
    cfg = config(store.url, [{"type": "email", "id": "mail", "host": "127.0.0.1", "port": port,
                              "to": [ALICE, BOB, CAROL], "from": "w@example.org"}])  # fmt: skip
    w = worker(cfg, store, session, clock)
    await add_alerts(store, 1, ["mail"])
    await w.drain()
    assert sorted(m["To"] for _, m, _ in handler.messages) == [ALICE, CAROL]
    # bob's refusal left the connection usable: carol's copy went on alice's session
    assert len({session_id for session_id, _, _ in handler.messages}) == 1
    [row] = await store.list_deliveries()
    assert f"refused 1 of 3 recipient(s): {BOB}: {reply}" in row.delivery.last_error
    assert row.delivery.delivered_to == [ALICE, CAROL]
    permanent = reply.startswith("5")
    want = DeliveryState.DEAD if permanent else DeliveryState.PENDING
    assert row.delivery.state == want
    handler.refuse.clear()  # bob's mailbox is fixed, or free again
    if permanent:
        assert await store.retry_dead() == 1
    clock.advance(200)
    await w.drain()
    for n in w.notifiers.values():
        await n.close()
    assert sorted(m["To"] for _, m, _ in handler.messages) == [ALICE, BOB, CAROL]
    [row] = await store.list_deliveries()
    assert row.delivery.state == DeliveryState.SENT


@pytest.mark.parametrize("goodbye", [b"421 4.4.2 Error: timeout exceeded", None])
async def test_a_connection_the_server_let_go_is_replaced_by_a_new_one(
    goodbye: bytes | None, clock: FakeClock
) -> None:
    async with RawSMTPServer() as server:
        notifier = EmailNotifier(receiver(server.port, concurrency=2), clock=clock)
        await asyncio.gather(
            *(notifier.send(sample_claimed("mail", id=i, story_key=f"s{i}")) for i in range(2))
        )
        assert server.connections == 2  # both kept for reuse
        await server.expire_idle(goodbye)  # as Postfix does after smtpd_timeout
        # not a failure, nor a retry on the other connection the server let go
        await notifier.send(sample_claimed("mail", id=3, story_key="s3"))
        await notifier.close()
    assert len(server.messages) == 3 and server.connections == 3


async def test_a_connection_idle_too_long_is_not_reused(
    sink: tuple[Sink, int], clock: FakeClock
) -> None:
    handler, port = sink
    notifier = EmailNotifier(receiver(port), clock=clock)
    await notifier.send(sample_claimed("mail"))
    clock.advance(SMTP_IDLE_MAX_S + 1)  # the server may have timed it out meanwhile
    await notifier.send(sample_claimed("mail", id=43, story_key="s43"))
    await notifier.close()
    first, second = (session_id for session_id, _, _ in handler.messages)
    assert first != second


async def test_a_send_that_would_outlive_its_lease_is_cut_and_retried(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    # a tarpit: each reply comes 0.4 s late, well within timeout_s, but the send takes
    # longer than the lease, past which the row would be claimed and sent again. Alice's
    # copy (six replies: greeting, EHLO, MAIL, RCPT, DATA, end of data) is done at 2.4 s,
    # bob's (four more on the same connection) would be at 4 s. The email notifier cuts
    # the send at 3.2 s (SEND_LEASE_SHARE_EMAIL of the 4 s lease), before the outbox does
    # (SEND_LEASE_SHARE, 3.6 s), so it can say that alice has her copy; the outbox cannot
    async with RawSMTPServer(delay_s=0.4) as server:
        cfg = config(
            store.url,
            [{"type": "email", "id": "mail", "host": "127.0.0.1", "port": server.port,
              "to": [ALICE, BOB], "from": "w@example.org", "timeout_s": 1.5}],
            lease_s=4.0,
        )  # fmt: skip
        w = worker(cfg, store, session, clock)
        await add_alerts(store, 1, ["mail"])
        await w.drain()
        for n in w.notifiers.values():
            await n.close()
    [row] = await store.list_deliveries()
    assert row.delivery.state == DeliveryState.PENDING and row.delivery.attempts == 1
    assert "timeout" in row.delivery.last_error and "before its lease" in row.delivery.last_error
    assert "SMTP server" in row.delivery.last_error  # cut by the notifier, not the outbox
    assert row.delivery.delivered_to == [ALICE]  # a retry goes to bob alone
    assert [rcpts for rcpts, _ in server.messages] == [[ALICE]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"watcher",
        b"s3cret-pw",
    )
    return AuthResult(success=ok)


# aiosmtpd cannot tell that an implicit-TLS connection is encrypted, hence its warning
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_and_auth(
    mode: str, ca: trustme.CA, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    handler = Sink()
    port = free_port()
    if mode == "starttls":
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, tls_context=server_ctx,
            require_starttls=True, authenticator=_authenticator, auth_required=True,
        )  # fmt: skip
    else:
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, ssl_context=server_ctx,
            server_hostname="127.0.0.1", authenticator=_authenticator, auth_required=True,
            auth_require_tls=False,
        )  # fmt: skip
    controller.start()
    try:
        monkeypatch.setenv("WATCHER_TEST_SMTP_PASSWORD", "s3cret-pw")
        cfg = receiver(
            port, tls=mode, ca_file=str(ca_file), username="watcher",
            password_env="WATCHER_TEST_SMTP_PASSWORD",
        )  # fmt: skip
        notifier = EmailNotifier(cfg, clock=clock)
        await notifier.send(sample_claimed("mail"))
        await notifier.close()
        [(_, msg, session)] = handler.messages
        assert msg["To"] == "analyst@example.org"
        assert session.authenticated
        # a wrong password is an error that does not show the password
        monkeypatch.setenv("WATCHER_TEST_SMTP_PASSWORD", "wrong-pw")
        bad = EmailNotifier(
            receiver(port, tls=mode, ca_file=str(ca_file), username="watcher",
                     password_env="WATCHER_TEST_SMTP_PASSWORD"),
            clock=clock,
        )  # fmt: skip
        with pytest.raises(DeliveryError) as err:
            await bad.send(sample_claimed("mail"))
        assert "wrong-pw" not in str(err.value)
    finally:
        controller.stop()


async def test_one_click_unsubscribe_through_the_api(
    sink: tuple[Sink, int], tmp_path: Path
) -> None:
    handler, smtp_port = sink
    api_port = free_port()
    config = Config.model_validate(
        {
            "store": {"url": f"sqlite+aiosqlite:///{tmp_path}/w.db"},
            "api": {"host": "127.0.0.1", "port": api_port},
            "outbox": {"sweep_interval_s": 0.2},
            "receivers": [
                {"type": "email", "id": "mail", "host": "127.0.0.1", "port": smtp_port,
                 "to": ["a@example.org", "b@example.org"], "from": "w@example.org"}
            ],
            "subscriptions": [{"receivers": ["mail"]}],
        }
    )  # fmt: skip
    app = create_app(config, Matcher([]))
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", api_port).start()
    try:
        await add_alerts(app[STORE], 1, ["mail"])
        app[WORKER].kick()
        await wait_for(lambda: len(handler.messages) == 2)
        to_a = next(m for _, m, _ in handler.messages if m["To"] == "a@example.org")
        link = to_a["List-Unsubscribe"].strip().strip("<>")
        assert link == unsubscribe_url(
            f"http://127.0.0.1:{api_port}", app[UNSUBSCRIBE_KEY], "mail", "a@example.org"
        )
        assert to_a["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        async with aiohttp.ClientSession() as http:
            async with http.get(link) as resp:  # GET shows a form and changes nothing
                assert resp.status == 200 and "<form" in await resp.text()
            assert await app[STORE].suppressed("mail") == set()
            forged = link.replace(parse_qs(urlsplit(link).query)["t"][0], "forged")
            async with http.post(forged, data={"List-Unsubscribe": "One-Click"}) as resp:
                assert resp.status == 403
            async with http.post(link, data={"List-Unsubscribe": "One-Click"}) as resp:
                assert resp.status == 200
        assert await app[STORE].suppressed("mail") == {"a@example.org"}
        handler.messages.clear()
        async with app[STORE].transaction() as tx:
            from watcher.parse import make_item
            from watcher.store import NewAlert

            [(item_id, it)] = await tx.insert_new_items(
                [make_item(source_id="s1", guid="later", title="Later alert", text="x")]
            )
            ids = await tx.insert_alerts(
                [NewAlert("r1", "Rule", "export_restriction", "high", it.content_hash, item_id)]
            )
            await tx.enqueue([(ids[0], "mail")])
        app[WORKER].kick()
        await wait_for(lambda: len(handler.messages) == 1)
        await asyncio.sleep(0.3)
        assert [m["To"] for _, m, _ in handler.messages] == ["b@example.org"]
    finally:
        await runner.cleanup()


def test_digest_templates_list_every_story_and_escape_html() -> None:
    from watcher.notify.base import render

    alerts = [
        sample_claimed("mail").alert,
        sample_claimed("mail", id=43, title="<b>Gallium</b> & germanium curbs", url="").alert,
    ]
    text = render("digest.txt.j2", alerts=alerts, period="5 Feb 2026", unsubscribe="")
    assert "watcher digest: 2 alerts (5 Feb 2026)" in text
    assert "1. [HIGH] Rare-earth export curb: China tightens" in text
    assert "mofcom-en, reuters-world, nikkei-asia" in text
    html = render("digest.html.j2", alerts=alerts, period="", unsubscribe="https://u.example/x")
    assert "&lt;b&gt;Gallium&lt;/b&gt; &amp; germanium" in html
    assert '<a href="https://u.example/x">Unsubscribe</a>' in html


def _hostile_item(title: str, url: str = "https://ok.example/a") -> dict[str, Any]:
    """An alert's item fields as the parse stage gives them for a hostile JSON Feed entry."""
    import json

    from watcher.parse import parse_feed

    entry = {"id": "1", "title": title, "url": url, "content_text": "Gallium."}
    feed = {"version": "https://jsonfeed.org/version/1.1", "title": "t", "items": [entry]}
    [item] = parse_feed(
        json.dumps(feed).encode(), source_id="s1", content_type="application/feed+json"
    )
    return {"title": item.title, "url": item.url, "text": item.text}


async def test_feed_text_cannot_forge_a_header_or_a_line_of_the_email(
    sink: tuple[Sink, int], clock: FakeClock
) -> None:
    handler, port = sink
    # an RFC 2047 look-alike, ASCII only: a mail client would decode it into a line break
    fake = "=?utf-8?b?" + base64.b64encode(b"Fake\r\nBcc: x@evil.example").decode() + "?="
    forged = "Curb\r\nLink:      https://evil.example/\r\nbell\x07 \x1b[2J \u202eexe.gnp"
    notifier = EmailNotifier(receiver(port), clock=clock)
    await notifier.send(sample_claimed("mail", **_hostile_item(fake)))
    await notifier.send(sample_claimed("mail", id=43, **_hostile_item(forged)))
    await notifier.close()
    (_, first, _), (_, second, _) = handler.messages
    one_line = "Curb Link: https://evil.example/ bell [2J exe.gnp"
    assert first["Subject"] == f"[HIGH] Rare-earth export curb: {fake}"
    assert second["Subject"] == f"[HIGH] Rare-earth export curb: {one_line}"
    for msg in (first, second):
        assert "Bcc" not in msg and "\r" not in msg["Subject"] and "\n" not in msg["Subject"]
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert text is not None and html is not None
        lines = text.get_content().splitlines()
        assert [line for line in lines if line.startswith("Link:")] == [
            "Link:      https://ok.example/a"
        ]
        for content in (text.get_content(), html.get_content()):
            assert not {"\x07", "\x1b", "\u202e"} & set(content)
    assert one_line in lines


async def test_an_item_link_is_a_plain_url_in_both_parts(
    sink: tuple[Sink, int], clock: FakeClock
) -> None:
    handler, port = sink
    notifier = EmailNotifier(receiver(port), clock=clock)
    urls = [
        'https://evil.example/a b"onclick="x|Click here>\u2028Source: bis\u202e',
        "https://bücher.example/straße",
        "https://evil.example/" + "a" * 3000,
    ]
    for i, url in enumerate(urls):
        await notifier.send(sample_claimed("mail", id=i, **_hostile_item("Gallium", url)))
    await notifier.close()
    expected = [
        "https://evil.example/a%20b%22onclick=%22x%7CClick%20here%3E%E2%80%A8Source:%20bis%E2%80%AE",
        "https://xn--bcher-kva.example/stra%C3%9Fe",
        "",  # too long to be a link a reader can trust or a client keeps whole
    ]
    for (_, msg, _), url in zip(handler.messages, expected, strict=True):
        text, html = msg.get_body(("plain",)), msg.get_body(("html",))
        assert text is not None and html is not None
        assert f"Link:      {url or '(no link)'}" in text.get_content().splitlines()
        hrefs = re.findall(r'href="([^"]*)"', html.get_content())
        assert hrefs == ([url] if url else [])
