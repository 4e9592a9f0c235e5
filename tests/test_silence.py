"""Silences: stored in the store, alerts of silenced rules are stored but never sent."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FakeClock
from tests.feeds import CURB, rss
from tests.servers import FeedServer, Route, WebhookServer
from tests.test_pipeline import harness, make_config
from watcher.cli import main
from watcher.silence import SilenceError, add_silence, expire_silence, parse_until
from watcher.store import Store

OTHER = (
    "curb-9",
    "Vietnam bans rare earth ore exports",
    "<p>Hanoi will ban exports of rare earth ore from 2026 and require a licence for oxides.</p>",
)


async def test_silenced_alert_is_stored_but_not_sent(
    store_url: str,
    clock: FakeClock,
    feed_server: FeedServer,
    webhook_server: WebhookServer,
    smtp_server: tuple[object, int],
) -> None:
    _, smtp_port = smtp_server
    feed_server.routes["/a.rss"] = Route(body=rss(CURB), etag=False)
    config = make_config(store_url, {"a": feed_server.url("/a.rss")}, smtp_port, webhook_server.url)
    async with aiohttp.ClientSession() as session:
        h = await harness(config, clock, session)
        try:
            async with h.store.engine.begin() as conn:
                s = await add_silence(
                    conn, rule="ree-*", until=clock() + timedelta(hours=2),
                    comment="known story, under review", now=clock(),
                )  # fmt: skip
            outcome = await h.pipeline.poll(config.sources[0])
            assert len(outcome.alerts) == 1 and outcome.deliveries == 0
            assert outcome.alerts[0].receivers == ()
            await h.worker.drain()
            assert webhook_server.received == []
            assert [a.rule_id for a in await h.store.list_alerts()] == ["ree-export-curb"]

            # When the silence ends (the clock moves past it), a new story is sent again.
            clock.advance(3 * 3600)
            feed_server.routes["/a.rss"] = Route(body=rss(CURB, OTHER), etag=False)
            outcome = await h.pipeline.poll(config.sources[0])
            assert len(outcome.alerts) == 1 and outcome.deliveries == 2
            await h.worker.drain()
            [(_, body)] = webhook_server.received
            assert json.loads(body)["alert"]["item"]["title"] == OTHER[1]

            # Expired by hand: still not active.
            async with h.store.engine.begin() as conn:
                with pytest.raises(SilenceError, match=f"silence {s.id}"):
                    await expire_silence(conn, s.id + 100, now=clock())
        finally:
            await h.store.close()


def test_parse_until(clock: FakeClock) -> None:
    assert parse_until("2h", clock()) == clock() + timedelta(hours=2)
    assert parse_until("1w", clock()) == clock() + timedelta(days=7)
    assert parse_until("2026-12-01T08:00Z", clock()).isoformat() == "2026-12-01T08:00:00+00:00"
    with pytest.raises(SilenceError, match="time zone"):
        parse_until("2026-12-01T08:00", clock())
    with pytest.raises(SilenceError, match="duration"):
        parse_until("tomorrow", clock())


async def test_add_refuses_past_and_empty_comment(store: Store, clock: FakeClock) -> None:
    async with store.engine.begin() as conn:
        with pytest.raises(SilenceError, match="already past"):
            await add_silence(conn, rule="x", until=clock(), comment="c", now=clock())
        with pytest.raises(SilenceError, match="comment"):
            await add_silence(
                conn, rule="x", until=clock() + timedelta(hours=1), comment=" ", now=clock()
            )


def test_silence_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/w.db"\n')
    monkeypatch.delenv("WATCHER_STORE__URL", raising=False)
    c = ["-c", str(config)]
    assert main(["silence", "add", *c, "--rule", "ree-*", "--until", "3d",
                 "--comment", "noisy during the summit"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("silence 1: rule 'ree-*' until ")
    assert main(["silence", "list", *c]) == 0
    [listed] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert listed["rule"] == "ree-*" and listed["state"] == "active"
    assert listed["comment"] == "noisy during the summit"
    assert main(["silence", "expire", *c, "1"]) == 0
    assert "expired" in capsys.readouterr().out
    assert main(["silence", "list", *c]) == 0
    assert capsys.readouterr().out == ""
    assert main(["silence", "list", *c, "--all"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "expired"
    assert main(["silence", "expire", *c, "1"]) == 2
    assert "no such active silence" in capsys.readouterr().err
    assert main(["silence", "add", *c, "--rule", "x", "--until", "soon", "--comment", "c"]) == 2
