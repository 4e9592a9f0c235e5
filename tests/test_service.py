"""`watcher run` as a real process.

It polls, delivers, answers /healthz and /metrics, and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp

from tests.feeds import CURB, rss
from tests.servers import FeedServer, Route, WebhookServer
from watcher.demo import free_port

RULES = Path(__file__).parent / "testdata" / "rules" / "ree.yaml"


def write_config(tmp_path: Path, api_port: int, sources: dict[str, str], hook_url: str) -> Path:
    lines = [
        f'[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/w.db"\n',
        f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n',
        f'[rules]\npaths = ["{RULES}"]\n',
        "[outbox]\nsweep_interval_s = 0.5\n",
        "[polling]\ntimeout_s = 2\nallow_networks = ['127.0.0.0/8']\n",
    ]
    for source_id, url in sources.items():
        lines.append(f'[[sources]]\nid = "{source_id}"\nurl = "{url}"\ninterval_s = 10\n')
    lines.append(
        f'[[receivers]]\ntype = "webhook"\nid = "hook"\nurl = "{hook_url}"\ngroup_wait_s = 0\n'
    )
    lines.append('[[subscriptions]]\nreceivers = ["hook"]\n')
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines))
    return path


async def wait_until(predicate, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_run_polls_delivers_serves_health_and_stops_on_sigterm(
    tmp_path: Path, feed_server: FeedServer, webhook_server: WebhookServer
) -> None:
    feed_server.routes["/ok.rss"] = Route(body=rss(CURB))
    api_port = free_port()
    offline_port = free_port()  # nothing listens: an offline source
    config = write_config(
        tmp_path,
        api_port,
        {"good": feed_server.url("/ok.rss"), "offline": f"http://127.0.0.1:{offline_port}/feed"},
        webhook_server.url,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher.cli", "run", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until(lambda: len(webhook_server.received) >= 1)
        assert json.loads(webhook_server.received[0][1])["alert"]["rule"]["id"] == "ree-export-curb"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the offline source's first poll is staggered
                async with http.get(f"http://127.0.0.1:{api_port}/healthz") as resp:
                    assert resp.status == 200
                    health = await resp.json()
                if health["sources"]["offline"]["error_count"]:
                    break
                await asyncio.sleep(0.1)
            assert health["status"] == "ok" and health["store"] == "ok" and health["rules"] == 1
            assert health["sources"]["good"]["error_count"] == 0
            assert health["sources"]["offline"]["error_count"] >= 1
            # said once, as `watcher sources list` says it: the source is the key already
            offline_error = health["sources"]["offline"]["last_error"]
            assert offline_error.startswith("connect: cannot connect"), offline_error
            assert "offline" not in offline_error and str(offline_port) in offline_error
            assert health["sources"]["good"]["last_error"] == ""
            assert health["sources"]["offline"]["active"] is True
            async with http.get(f"http://127.0.0.1:{api_port}/metrics") as resp:
                metrics = await resp.text()
        assert 'watcher_polls_total{outcome="new"} 1.0' in metrics
        assert 'watcher_polls_total{outcome="error"} ' in metrics
        assert (
            'watcher_alerts_total{event_type="export_restriction",rule="ree-export-curb"} 1.0'
            in metrics
        )
        assert 'watcher_deliveries_total{outcome="sent",reason="",receiver="hook"} 1.0' in metrics
        assert 'watcher_outbox_deliveries{reason="",receiver="hook",state="sent"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr_bytes = await asyncio.wait_for(proc.communicate(), timeout=15)
    stderr = stderr_bytes.decode()
    assert proc.returncode == 0, stderr
    offline_lines = [line for line in stderr.splitlines() if "source 'offline'" in line]
    assert len(offline_lines) == 1, stderr  # one clear line per failure, no traceback
    assert "connect: cannot connect" in offline_lines[0]
    assert "next poll in 20s" in offline_lines[0]
    assert "Traceback" not in stderr
