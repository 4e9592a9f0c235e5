"""`watcher deliveries list|retry` and `watcher send-test`, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.conftest import FakeClock
from tests.delivery import add_alerts
from tests.servers import WebhookServer
from watcher.demo import free_port
from watcher.store import Store


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


def write_config(tmp_path: Path, hook_url: str, smtp_port: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/w.db"\n'
        f'[[receivers]]\ntype = "webhook"\nid = "hook"\nurl = "{hook_url}"\n'
        f'[[receivers]]\ntype = "email"\nid = "mail"\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        'to = ["a@example.org"]\ntimeout_s = 2\n'
    )
    return path


async def test_deliveries_list_and_retry(tmp_path: Path, clock: FakeClock) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9/hook", free_port())
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/w.db", clock=clock)
    await store.open()
    await add_alerts(store, 2, ["hook", "mail"])
    [first, *_] = await store.claim_deliveries(limit=1, lease_s=60)
    await store.mark_failed(
        first.delivery.id, reason="client_error", error="receiver 'hook': HTTP 400", retry_at=None
    )
    await store.close()

    code, out, _ = await run_cli("deliveries", "list", "-c", str(cfg))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "RECEIVER", "TRIES"]
    assert lines[-1] == "4 deliveries"
    code, out, _ = await run_cli("deliveries", "list", "-c", str(cfg), "--state", "dead")
    [_, row, total] = out.splitlines()
    assert row.split()[:4] == [str(first.delivery.id), "dead", "hook", "1"]
    assert "HTTP 400" in row and total == "1 delivery"
    code, out, _ = await run_cli("deliveries", "list", "-c", str(cfg), "--receiver", "mail")
    assert out.splitlines()[-1] == "2 deliveries"

    code, out, err = await run_cli("deliveries", "retry", "-c", str(cfg))
    assert code == 2 and "--all-dead" in err
    code, out, _ = await run_cli("deliveries", "retry", "-c", str(cfg), "--all-dead")
    assert (code, out.strip()) == (0, "1 dead delivery queued again")
    code, out, _ = await run_cli("deliveries", "list", "-c", str(cfg), "--state", "dead")
    assert out.splitlines()[-1] == "0 deliveries"
    # named ids that are not dead, or not there: said, and exit 2 (not "0 queued", 0)
    code, out, err = await run_cli(
        "deliveries", "retry", "-c", str(cfg), str(first.delivery.id), "99999"
    )
    assert code == 2 and out.strip() == "0 dead deliveries queued again"
    assert err.splitlines() == [
        f"error: delivery {first.delivery.id}: not dead (pending): nothing to retry",
        "error: delivery 99999: no such delivery",
    ]


async def test_send_test(tmp_path: Path, webhook_server: WebhookServer) -> None:
    cfg = write_config(tmp_path, webhook_server.url, free_port())
    code, out, err = await run_cli("send-test", "hook", "-c", str(cfg))
    assert code == 0, err
    assert out.startswith("sent a test alert to receiver 'hook'")
    [(headers, body)] = webhook_server.received
    assert json.loads(body)["alert"]["item"]["title"].startswith("[watcher test]")
    assert headers["webhook-id"].startswith("wd_test_hook_")

    code, _, err = await run_cli("send-test", "mail", "-c", str(cfg))  # nothing listens there
    assert code == 2 and "receiver 'mail': connect: SMTP server 127.0.0.1" in err
    port = free_port()  # a webhook nobody listens for: where, and why, never the path
    (tmp_path / "down").mkdir()
    down = write_config(tmp_path / "down", f"http://127.0.0.1:{port}/hook?token=s3cret", 1)
    code, _, err = await run_cli("send-test", "hook", "-c", str(down))
    assert code == 2, err
    assert f"receiver 'hook': connect: cannot connect to 127.0.0.1:{port}: " in err, err
    assert "s3cret" not in err
    code, _, err = await run_cli("send-test", "pager", "-c", str(cfg))
    assert code == 2 and "unknown receiver 'pager' (receivers: hook, mail)" in err
