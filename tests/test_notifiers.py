"""Notifier payloads: golden files, escaping, limits, signatures; sent to real receivers."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.conftest import FakeClock
from tests.delivery import sample_claimed
from tests.golden import check_golden
from tests.servers import WebhookServer, serve
from watcher.config import SlackReceiverConfig, WebhookReceiverConfig
from watcher.errors import DeliveryError, DeliveryReason
from watcher.notify.slack import SlackNotifier, blocks, escape
from watcher.notify.slack import message as slack_message
from watcher.notify.webhook import WebhookNotifier, payload
from watcher.store import Batch, BatchMember

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def schema() -> dict[str, object]:
    text = resources.files("watcher").joinpath("schemas/webhook-v1.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def test_webhook_payload_golden_and_schema() -> None:
    body = payload(sample_claimed())
    jsonschema.Draft202012Validator(schema()).validate(body)
    check_golden("webhook-v1.json", json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    untitled = payload(sample_claimed(published=None, url="", sources=[], facets={}))
    jsonschema.Draft202012Validator(schema()).validate(untitled)
    assert untitled["alert"]["sources"] == ["mofcom-en"]


async def test_signed_webhook_verifies_with_the_reference_library(
    session: aiohttp.ClientSession, webhook_server: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHER_TEST_HOOK_SECRET", SECRET)
    cfg = WebhookReceiverConfig.model_validate(
        {"type": "webhook", "id": "hook", "url": webhook_server.url,
         "secret_env": "WATCHER_TEST_HOOK_SECRET"}
    )  # fmt: skip
    # the reference verifier checks the timestamp against the real time
    clock = FakeClock(datetime.now(UTC))
    await WebhookNotifier(cfg, session=session, clock=clock).send(sample_claimed())
    [(headers, body)] = webhook_server.received
    assert headers["webhook-id"] == "wd_42_hook"
    assert headers["webhook-timestamp"] == str(int(clock().timestamp()))
    verified = Webhook(SECRET).verify(body, headers)
    assert verified["alert"]["rule"]["id"] == "ree-export-curb"
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(body.replace(b"rare", b"RARE"), headers)


@pytest.mark.parametrize("secret", ["whsec_not base64 !!", "whsec_", ""])
def test_a_bad_signing_secret_is_a_config_error(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHER_TEST_HOOK_SECRET", secret)
    with pytest.raises(ValueError, match="must be 'whsec_' followed by base64") as err:
        WebhookReceiverConfig.model_validate(
            {"type": "webhook", "id": "h", "url": "http://127.0.0.1/h",
             "secret_env": "WATCHER_TEST_HOOK_SECRET"}
        )  # fmt: skip
    assert "not base64" not in str(err.value)


def _readme_verify() -> Any:
    """README's verify(), run as a receiver would copy it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "def verify(" in b]
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["verify"]


@pytest.mark.parametrize(
    "secret",
    [
        SECRET,
        "correcthorsebatterystaple",  # not base64
        "supersecretvalue",  # base64 too, but a plain string: its own bytes are the key
        "hunter22",
    ],
)
async def test_readme_verify_accepts_what_any_accepted_secret_signs(
    secret: str,
    session: aiohttp.ClientSession,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHER_TEST_HOOK_SECRET", secret)
    cfg = _hook(webhook_server.url, secret_env="WATCHER_TEST_HOOK_SECRET")
    await WebhookNotifier(cfg, session=session, clock=FakeClock()).send(sample_claimed())
    [(headers, body)] = webhook_server.received
    verify = _readme_verify()
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body.replace(b"rare", b"RARE"))
    assert not verify("whsec_" + base64.b64encode(b"another key").decode(), headers, body)
    assert not verify("another key", headers, body)


def test_slack_blocks_golden() -> None:
    check_golden(
        "slack-blocks.json",
        json.dumps(blocks(sample_claimed().alert), indent=2, ensure_ascii=False) + "\n",
    )


def test_slack_escapes_feed_text_so_it_cannot_mention_or_link() -> None:
    hostile = "<!channel> Rare earth & <https://evil.example|click here>"
    message = blocks(sample_claimed(title=hostile, text=hostile, sources=["<!here>"]).alert)
    flat = json.dumps(message)
    assert "<!channel>" not in flat and "<!here>" not in flat
    assert "<https://evil.example" not in flat
    assert escape(hostile) in message["blocks"][1]["text"]["text"]
    assert "&amp;" in message["text"]


def test_slack_respects_limits_and_cuts_cleanly() -> None:
    long_title = "Rare earth " * 100
    long_text = "word " * 5000 + "&&&&"
    message = blocks(
        sample_claimed(
            rule_title="R" * 400,
            title=long_title,
            text=long_text,
            sources=[f"source-{i}" for i in range(500)],
        ).alert
    )
    header, section, fields, context, actions = message["blocks"]
    assert len(header["text"]["text"]) <= 150 and header["text"]["text"].endswith("…")
    assert len(section["text"]["text"]) <= 3000
    assert all(len(f["text"]) <= 2000 for f in fields["fields"]) and len(fields["fields"]) <= 10
    assert len(context["elements"][0]["text"]) <= 2000
    assert "also reported by 499" in context["elements"][0]["text"]
    assert len(message["blocks"]) <= 50
    assert actions["elements"][0]["url"] == "https://example.org/news/curb-1"
    # a cut never leaves half an escape sequence behind
    for text in (section["text"]["text"], context["elements"][0]["text"]):
        tail = text[-8:]
        assert "&" not in tail or ";" in tail.split("&")[-1]


async def test_slack_posts_to_its_webhook_and_hides_the_url_in_errors(
    session: aiohttp.ClientSession, webhook_server: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHER_TEST_SLACK_URL", webhook_server.url + "?token=T0P-SECRET")
    cfg = SlackReceiverConfig.model_validate(
        {"type": "slack", "id": "slack", "url_env": "WATCHER_TEST_SLACK_URL"}
    )
    notifier = SlackNotifier(cfg, session=session, clock=FakeClock())
    await notifier.send(sample_claimed("slack"))
    [(_, body)] = webhook_server.received
    assert json.loads(body)["blocks"][0]["type"] == "header"
    webhook_server.responses = [(404, {})]
    with pytest.raises(DeliveryError) as err:
        await notifier.send(sample_claimed("slack"))
    assert err.value.reason is DeliveryReason.CLIENT_ERROR and not err.value.retryable
    await webhook_server.stop()
    with pytest.raises(DeliveryError) as err:
        await notifier.send(sample_claimed("slack"))
    assert err.value.retryable and "T0P-SECRET" not in str(err.value)
    assert "127.0.0.1" not in str(err.value)


def _mrkdwn(message: dict[str, Any]) -> list[str]:
    """Every mrkdwn text of a Slack message, the fallback text first."""
    out = [message["text"]]
    for block in message["blocks"]:
        texts = [block.get("text"), *block.get("fields", []), *block.get("elements", [])]
        out += [t["text"] for t in texts if isinstance(t, dict) and t.get("type") == "mrkdwn"]
    return out


async def test_slack_links_carry_no_spoofed_label_and_survive_any_url(
    session: aiohttp.ClientSession, webhook_server: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHER_TEST_SLACK_URL", webhook_server.url)
    cfg = SlackReceiverConfig.model_validate(
        {"type": "slack", "id": "slack", "url_env": "WATCHER_TEST_SLACK_URL"}
    )
    notifier = SlackNotifier(cfg, session=session, clock=FakeClock())
    urls = {  # as the parse stage lets them through: absolute http(s), anything in the path
        "https://evil.example/a b|Open the BIS notice>?q=1&r=2": (
            "https://evil.example/a%20b%7COpen%20the%20BIS%20notice%3E?q=1&r=2"
        ),
        "https://evil.example/x\u2028*<!channel>": "https://evil.example/x%E2%80%A8*%3C!channel%3E",
        "https://evil.example/" + "a" * 3000: "",  # longer than a section: no link, no button
    }
    title = "Gallium\r\ncurb \x1b[2J\u202eexe.gnp"
    for i, url in enumerate(urls):
        claimed = sample_claimed("slack", id=i, title=title, url=url)
        await notifier.send(claimed)
        batch = Batch("group", (BatchMember(claimed.alert), BatchMember(claimed.alert)))
        await notifier.send(replace(claimed, batch=batch))
    bodies = webhook_server.json_bodies()
    for n, want in enumerate(urls.values()):
        single, group = bodies[2 * n], bodies[2 * n + 1]
        buttons = [b for b in single["blocks"] if b["type"] == "actions"]
        assert [b["elements"][0]["url"] for b in buttons] == ([want] if want else [])
        label = "Gallium curb [2Jexe.gnp"
        link = f"<{want.replace('&', '&amp;')}|{label}>" if want else label
        assert single["blocks"][1]["text"]["text"].startswith(f"*{link}*\n")
        assert link in group["blocks"][2]["text"]["text"]
        for text in _mrkdwn(single) + _mrkdwn(group):
            assert not {"\r", "\x1b", "\u202e", "\u2028"} & set(text)
            # every <...> is one whole link: its "|" the one between URL and label
            assert text.count("<") == text.count(">")
            assert all(part.count("|") == 1 for part in re.findall(r"<([^>]*)>", text))


def _hook(url: str, **extra: Any) -> WebhookReceiverConfig:
    return WebhookReceiverConfig.model_validate({"type": "webhook", "id": "hook", "url": url,
                                                 **extra})  # fmt: skip


async def test_a_receiver_answering_without_end_is_not_read_into_memory(
    session: aiohttp.ClientSession,
) -> None:
    hung_up = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        try:
            while True:  # until the client hangs up
                await resp.write(b"x" * 65536)
                await asyncio.sleep(0.001)
        except ConnectionError:
            hung_up.set()
        return resp

    app = web.Application()
    app.router.add_post("/hook", endless)
    async with serve(app) as port:
        url = f"http://127.0.0.1:{port}/hook"
        # read whole, the body would take every byte of memory, or time the send out
        await WebhookNotifier(_hook(url, timeout_s=5), session=session, clock=FakeClock()).send(
            sample_claimed()
        )
        await asyncio.wait_for(hung_up.wait(), 10)


async def test_a_redirect_is_not_followed_and_says_where_without_the_secret(
    session: aiohttp.ClientSession, webhook_server: WebhookServer
) -> None:
    notifier = WebhookNotifier(_hook(webhook_server.url), session=session, clock=FakeClock())
    for status in (301, 307, 308):
        location = "https://10.0.0.7:8443/services/T0P-SECRET?token=abc"
        webhook_server.responses = [(status, {"Location": location})]
        with pytest.raises(DeliveryError) as err:
            await notifier.send(sample_claimed())
        assert err.value.reason is DeliveryReason.CLIENT_ERROR and not err.value.retryable
        assert f"HTTP {status}: redirect to https://10.0.0.7 not followed" in str(err.value)
        assert "T0P-SECRET" not in str(err.value) and "abc" not in str(err.value)
    assert len(webhook_server.received) == 3  # each once, never to the new address


@pytest.mark.parametrize("pairs", [150, 490])  # escaped, the link fits; or would not
def test_a_link_full_of_ampersands_is_never_cut(pairs: int) -> None:
    url = "https://news.example/a?" + "x=1&" * pairs  # within base.link's 2,000 characters
    claimed = sample_claimed("slack", url=url, title="Gallium export ban", text="word " * 2000)
    single = blocks(claimed.alert)
    group = slack_message(replace(claimed, batch=Batch("group", (BatchMember(claimed.alert),) * 2)))
    for section in (single["blocks"][1], group["blocks"][2]):
        text = section["text"]["text"]
        assert len(text) <= 3000
        assert text.count("<") == text.count(">")  # no link is cut open
        linked = f"<{url.replace('&', '&amp;')}|Gallium export ban>"
        fits = 4 * pairs + len(url) <= 2000
        assert (linked in text) is fits and ("<https" in text) is fits
        assert "Gallium export ban" in text  # linked, or as plain text
    assert "word word" in single["blocks"][1]["text"]["text"]  # and the excerpt is there
    assert "reuters-world" in group["blocks"][2]["text"]["text"]  # and the sources
