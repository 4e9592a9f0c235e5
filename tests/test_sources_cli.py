"""`watcher sources list` and `watcher sources check`: real feed server, real store."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from tests.conftest import FakeClock
from tests.feeds import CURB, NOISE, rss
from tests.servers import FeedServer, Route
from watcher.config import Config, load_config
from watcher.demo import free_port
from watcher.health import diagnose
from watcher.metrics import Metrics
from watcher.pipeline import build_pipeline
from watcher.rules import Matcher
from watcher.sources_cli import sources_check, sources_list
from watcher.store import SourceState, Store


def write_config(
    tmp_path: Path, sources: dict[str, str], *, health: str = "", **polling: object
) -> Path:
    lines = [
        f'[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/w.db"\n',
        f"[health]\n{health}\n",
        "[polling]\ntimeout_s = 2\nallow_networks = ['127.0.0.0/8']\n",
        *(f"{k} = {v}\n" for k, v in polling.items()),
    ]
    for source_id, url in sources.items():
        lines.append(f'[[sources]]\nid = "{source_id}"\nurl = "{url}"\ninterval_s = 600\n')
    path = tmp_path / "config.toml"
    path.write_text("".join(lines))
    return path


async def poll_all(config: Config, clock: FakeClock, times: int = 1) -> None:
    store = Store(config.store.url, clock=clock)
    await store.open()
    await store.sync_sources((s.id, str(s.url)) for s in config.sources)
    try:
        async with aiohttp.ClientSession() as session:
            pipeline = build_pipeline(
                config,
                store=store,
                session=session,
                matcher=lambda: Matcher([]),
                metrics=Metrics(),
                clock=clock,
            )
            for _ in range(times):
                for source in config.sources:
                    await pipeline.poll(source)
    finally:
        await store.close()


async def test_sources_list_shows_health(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    feed_server.routes["/ok"] = Route(body=rss(CURB, NOISE))
    feed_server.routes["/gone"] = Route(status=410)
    path = write_config(
        tmp_path,
        {
            "good": feed_server.url("/ok"),
            "down": f"http://127.0.0.1:{free_port()}/feed",
            "gone": feed_server.url("/gone"),
            "later": feed_server.url("/never"),
        },
        health="broken_after_errors = 2",
    )
    config = load_config(path)
    # "later" is configured but has not been polled yet
    polled = config.model_copy(update={"sources": config.sources[:3]})
    await poll_all(polled, clock, times=2)
    clock.advance(120)
    text = await sources_list(config, clock=clock)
    rows = {line.split()[0]: line for line in text.splitlines()}
    assert rows["SOURCE"].split() == ["SOURCE", "STATUS", "LAST", "SUCCESS", "LAST", "ERROR",
                                      "NEXT", "CHECK", "ITEMS", "SEEN"]  # fmt: skip
    assert " ok " in rows["good"] and "2m ago" in rows["good"] and rows["good"].endswith(" 2")
    assert "in 8m" in rows["good"]  # interval 600 s, polled 2 min ago
    assert "BROKEN (2 errors)" in rows["down"] and "connect: cannot connect" in rows["down"]
    assert "gone (410)" in rows["gone"] and "HTTP 410" in rows["gone"]
    assert "never polled" in rows["later"]


async def test_sources_list_calls_broken_what_the_operator_is_told_is_broken(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    """[health] broken_after_errors, not [polling] error_limit (which only slows polling)."""
    feed_server.routes["/down"] = Route(status=500)
    path = write_config(
        tmp_path,
        {"down": feed_server.url("/down")},
        health="broken_after_errors = 3",
        error_limit=10,
    )
    config = load_config(path)
    await poll_all(config, clock, times=2)
    row = (await sources_list(config, clock=clock)).splitlines()[1]
    assert "failing (2)" in row and "BROKEN" not in row
    await poll_all(config, clock, times=1)
    row = (await sources_list(config, clock=clock)).splitlines()[1]
    assert "BROKEN (3 errors)" in row
    assert "  http_status: HTTP 500  " in row  # the reason said once
    store = Store(config.store.url, clock=clock)
    await store.open()
    try:
        [state] = await store.list_sources()
    finally:
        await store.close()
    # what the operator's notice says of the same row
    assert diagnose(
        "down", state, None, quiet_after_s=None, broken_after_errors=3, now=clock(),
        first_success_at=None,
    ) == ("broken", "3 errors in a row; last: http_status: HTTP 500")  # fmt: skip


async def test_sources_check_fetches_once_and_stores_nothing(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    feed_server.routes["/ok"] = Route(
        body=rss(CURB, NOISE), headers={"Cache-Control": "max-age=900"}
    )
    feed_server.routes["/html"] = Route(
        body=b"<!DOCTYPE html><html></html>", content_type="text/html"
    )
    path = write_config(
        tmp_path, {"good": feed_server.url("/ok"), "page": feed_server.url("/html")}
    )
    config = load_config(path)
    text, code = await sources_check(config, ["good"], clock=clock)
    assert code == 0, text
    assert text.splitlines()[0].startswith("good: ok: 2 item(s)")
    assert "fresh for 900" in text and "China tightens export controls" in text
    text, code = await sources_check(config, [], clock=clock)
    assert code == 1
    assert "page: FAILED: source 'page': not a feed: an HTML page" in text
    assert "2 source(s) checked, 1 failed (nothing was stored)" in text
    text, code = await sources_check(config, ["nope"], clock=clock)
    assert code == 2 and "unknown source(s): nope" in text
    store = Store(config.store.url, clock=clock)
    await store.open()
    try:
        assert await store.count_items() == 0
        assert await store.list_sources() == []
    finally:
        await store.close()


async def test_sources_commands_run_from_the_command_line(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.routes["/ok"] = Route(body=rss(CURB))
    path = write_config(tmp_path, {"good": feed_server.url("/ok")})
    for args in (["check", "good"], ["list"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watcher.cli", "sources", *args, "-c", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        assert "good" in out.decode()


async def test_sources_list_shows_a_quiet_source_as_the_operator_is_told(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    """A source polled fine that brought nothing new for longer than its quiet_after_s is
    QUIET in the list, as in the operator's notice: a silent source must not look ok."""
    feed_server.routes["/same"] = Route(body=rss(CURB))
    feed_server.routes["/busy"] = Route(body=rss(CURB))
    path = write_config(tmp_path, {"same": feed_server.url("/same")})
    with path.open("a") as f:
        f.write("quiet_after_s = 3600\n")  # on the last [[sources]] table: "same"
        f.write(f'[[sources]]\nid = "busy"\nurl = "{feed_server.url("/busy")}"\n'
                "quiet_after_s = 3600\n")  # fmt: skip
    config = load_config(path)
    await poll_all(config, clock)
    clock.advance(2 * 3600)
    feed_server.routes["/busy"] = Route(body=rss(NOISE))  # a new item
    await poll_all(config, clock)
    text = await sources_list(config, clock=clock)
    rows = {line.split()[0]: line for line in text.splitlines()}
    assert "QUIET (nothing new for 2h)" in rows["same"]
    assert " ok " in rows["busy"]


async def test_a_source_that_never_brought_an_item_is_quiet_from_its_first_success(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    """With no operator receiver, no health monitor notes first successes: the source
    row keeps its own, so every later healthy poll does not restart the quiet clock."""
    feed_server.routes["/empty"] = Route(body=rss())
    path = write_config(tmp_path, {"empty": feed_server.url("/empty")})
    with path.open("a") as f:
        f.write("quiet_after_s = 3600\n")
    config = load_config(path)
    await poll_all(config, clock)
    first = clock()
    for _ in range(4):  # polled fine every 30 minutes, never an item
        clock.advance(1800)
        await poll_all(config, clock)
    text = await sources_list(config, clock=clock)
    assert "QUIET (nothing new for 2h)" in text, text
    states = {s.id: s for s in await _states(config, clock)}
    assert states["empty"].first_success_at == first
    assert states["empty"].last_success_at == clock()


async def _states(config: Config, clock: FakeClock) -> list[SourceState]:
    store = Store(config.store.url, clock=clock)
    await store.open()
    try:
        return await store.list_sources()
    finally:
        await store.close()


async def test_sources_check_prints_a_feed_title_as_one_inert_line(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    # a JSON Feed title may hold any character: ESC, BEL, a line break, U+202E
    title = "Curb\x1b]0;pwned\x07\ngood: ok: 9 item(s)\u202efdp.exe"
    feed = {"version": "https://jsonfeed.org/version/1.1", "title": "t",
            "items": [{"id": "1", "title": title, "content_text": "Gallium."}]}  # fmt: skip
    body = json.dumps(feed).encode()
    feed_server.routes["/ok"] = Route(body=body, content_type="application/feed+json")
    config = load_config(write_config(tmp_path, {"good": feed_server.url("/ok")}))
    text, code = await sources_check(config, ["good"], clock=clock)
    assert code == 0, text
    assert "  - Curb]0;pwned good: ok: 9 item(s)fdp.exe" in text.splitlines()
    assert not {"\x1b", "\x07", "\u202e"} & set(text)


async def test_sources_check_of_a_gone_feed_says_so_without_claiming_a_deactivation(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    feed_server.routes["/gone"] = Route(status=410)
    config = load_config(write_config(tmp_path, {"gone": feed_server.url("/gone")}))
    checked, code = await sources_check(config, [], clock=clock)
    assert code == 1
    # the fetch says what happened; deactivating is what a poll does, not a check
    assert (
        checked.splitlines()[0] == "gone: FAILED: source 'gone': gone: HTTP 410: the feed is gone"
    )


async def test_sources_commands_say_a_moved_url_without_its_secrets(
    tmp_path: Path, clock: FakeClock, feed_server: FeedServer
) -> None:
    """The URL a 301 moved a source to keeps the configured credentials (a relative
    Location) and may carry a key of its own: both commands say it redacted, as the log
    does."""
    feed_server.routes["/old"] = Route(status=301, headers={"Location": "/new?apikey=SECRETKEY"})
    feed_server.routes["/new"] = Route(body=rss(CURB))
    url = feed_server.url("/old?apikey=SECRETKEY").replace("http://", "http://alice:hunter2@")
    config = load_config(write_config(tmp_path, {"private": url}))
    await poll_all(config, clock)
    listed = await sources_list(config, clock=clock)
    checked, code = await sources_check(config, [], clock=clock)
    assert code == 0, checked
    moved = f"moved permanently to http://127.0.0.1:{feed_server.port}/new?apikey=…"
    for out in (listed, checked):
        assert moved in out, out
        assert "hunter2" not in out and "SECRETKEY" not in out and "alice" not in out, out
