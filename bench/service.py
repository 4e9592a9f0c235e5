"""Service benchmark: `watcher run` itself with 10,000 sources on a local server.

`bench/poll.py` measures the poll path in-process (pipeline and store, no
scheduler, no API). This runs the whole service as a user starts it, from a
config of 10,000 sources (each a one-item RSS feed served with an ETag on
127.0.0.1), with the shipped rule pack, and reads its memory from
/proc/<pid>/status until every source has been polled twice (the second poll
a conditional GET answered 304). Prints one JSON object:

- `peak_rss_mb`: the service process's peak resident set (VmHWM), against the
  100 MB target of issue 6; `rss_mb` at the end, `rss_at_start_mb` once the API
  answers (imports, config, store, scheduler jobs);
- `first_round_s`, `second_round_s`: how long the two rounds took;
- `polls`: the service's own `watcher_polls_total` counts, by outcome.

`BENCH_SOURCES` sets the number of sources (10,000). Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from bench.poll import _free_port, _wait_for, feed_server  # noqa: E402

SOURCES = int(os.environ.get("BENCH_SOURCES", "10000"))
INTERVAL_S = 120  # each source's interval: the second round starts 120-132 s after the first
TARGET_MB = 100
_POLLS = re.compile(r'^watcher_polls_total\{outcome="([^"]+)"\} ([0-9.e+]+)$', re.M)


def _config(port: int, api_port: int, tmp: Path) -> str:
    head = f"""
[store]
url = "sqlite+aiosqlite:///{tmp}/bench.db"

[api]
host = "127.0.0.1"
port = {api_port}

[rules]
paths = ["{REPO / "rules"}"]

[polling]
allow_networks = ["127.0.0.0/8"]
per_host_concurrency = 100   # every bench source is on one host
"""
    sources = "".join(
        f'\n[[sources]]\nid = "s{i}"\nurl = "http://127.0.0.1:{port}/feed/{i}"\n'
        f"interval_s = {INTERVAL_S}\n"
        for i in range(SOURCES)
    )
    return head + sources


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def _polls(session: aiohttp.ClientSession, api: str) -> dict[str, float]:
    try:
        async with session.get(f"{api}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return {}
    return {outcome: float(n) for outcome, n in _POLLS.findall(text)}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def _watch(pid: int, api_port: int) -> dict[str, object]:
    api = f"http://127.0.0.1:{api_port}"
    # it listens once the config, store and scheduler jobs are ready
    await _wait_for(api_port, timeout_s=120, what="the service", alive=lambda: _alive(pid))
    start = time.perf_counter()
    at_start, _ = _memory_mb(pid)
    first_done = None
    polls: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        deadline = start + 600
        while time.perf_counter() < deadline:
            await asyncio.sleep(1)
            polls = await _polls(session, api)
            if first_done is None and polls.get("new", 0) >= SOURCES:
                first_done = time.perf_counter()
            if polls.get("unchanged", 0) >= SOURCES:
                break
        else:
            raise RuntimeError(f"the service did not poll every source twice: {polls}")
    rss, peak = _memory_mb(pid)
    assert first_done is not None
    return {
        "rss_at_start_mb": round(at_start, 1),
        "first_round_s": round(first_done - start, 1),
        "second_round_s": round(time.perf_counter() - first_done, 1),
        "polls": polls,
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
    }


def main() -> None:
    api_port = _free_port()
    with feed_server() as port, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(_config(port, api_port, Path(tmp)))
        watcher = Path(sys.executable).parent / "watcher"
        with (
            open(Path(tmp) / "service.log", "wb") as log,
            subprocess.Popen(
                [str(watcher), "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=log
            ) as service,
        ):
            try:
                result = asyncio.run(_watch(service.pid, api_port))
            finally:
                service.terminate()
                service.wait(30)
    result = {"bench": "service", "sources": SOURCES, **result, "target_peak_rss_mb": TARGET_MB}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
