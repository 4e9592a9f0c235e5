"""Hot reload of rule files: a change is picked up, a broken file keeps the last good rules."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import FakeClock
from watcher.config import load_config
from watcher.metrics import Metrics
from watcher.parse import make_item
from watcher.reload import RuleSet
from watcher.rules import load_matcher
from watcher.service import MATCHER, SCHEDULER, create_app

RULE = """\
  - id: {id}
    title: {id}
    event_type: export_restriction
    severity: high
    query: {query}
"""


def write_rules(path: Path, *rules: tuple[str, str]) -> None:
    path.write_text("rules:\n" + "".join(RULE.format(id=i, query=q) for i, q in rules))


def sample(rules: RuleSet, text: str) -> list[str]:
    return [h.rule_id for h in rules.match(make_item(source_id="s", text=text))]


async def test_reload_swaps_rules_and_keeps_the_last_good_ones(
    tmp_path: Path, clock: FakeClock
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    write_rules(rules_dir / "a.yaml", ("gallium-curb", "gallium"))
    metrics = Metrics()
    rules = RuleSet([rules_dir], load_matcher([rules_dir]), clock=clock, metrics=metrics)
    assert await rules.check() is False  # nothing changed
    assert sample(rules, "gallium and germanium") == ["gallium-curb"]

    write_rules(rules_dir / "b.yaml", ("germanium-curb", "germanium"))
    assert await rules.check() is True
    assert sample(rules, "gallium and germanium") == ["gallium-curb", "germanium-curb"]
    assert rules.status()["status"] == "ok"

    (rules_dir / "b.yaml").write_text("rules:\n  - id: [oops\n")
    assert await rules.check() is False
    assert sample(rules, "gallium and germanium") == ["gallium-curb", "germanium-curb"]
    status = rules.status()
    assert status["status"] == "error" and status["active"] == 2
    assert f"{rules_dir / 'b.yaml'}:" in status["errors"][0]
    assert "invalid YAML" in status["errors"][0]
    assert metrics.rules_broken._value.get() == 1
    assert await rules.check() is False  # still broken: reported once, not on every check

    write_rules(rules_dir / "b.yaml", ("antimony-curb", "antimony"))
    assert await rules.check() is True
    assert sample(rules, "gallium and antimony") == ["gallium-curb", "antimony-curb"]
    assert rules.status()["status"] == "ok"
    assert metrics.rules_broken._value.get() == 0
    assert metrics.rules_loaded._value.get() == 2
    rendered = metrics.render().decode()
    assert 'watcher_rule_reloads_total{outcome="ok"} 2.0' in rendered
    assert 'watcher_rule_reloads_total{outcome="error"} 1.0' in rendered


async def test_a_reload_that_fails_unexpectedly_is_reported_like_a_rule_error(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug the rule loader hits on some input (as a query nested too deep once did):
    /healthz says so, instead of keeping the previous errors (or none)."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    write_rules(rules_dir / "a.yaml", ("gallium-curb", "gallium"))
    rules = RuleSet([rules_dir], load_matcher([rules_dir]), clock=clock, metrics=Metrics())

    def broken(*args: object, **kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("watcher.reload.load_rules", broken)
    write_rules(rules_dir / "b.yaml", ("germanium-curb", "germanium"))
    assert await rules.check() is False
    status = rules.status()
    assert status["status"] == "error" and status["active"] == 1
    assert status["errors"] == [
        "unexpected error loading the rules: RecursionError: maximum recursion depth exceeded"
    ]
    assert sample(rules, "gallium and germanium") == ["gallium-curb"]


async def test_a_changed_shared_list_file_reloads_the_rules(
    tmp_path: Path, clock: FakeClock
) -> None:
    (tmp_path / "common.lists.yaml").write_text("lists:\n  minerals: gallium\n")
    write_rules(tmp_path / "a.yaml", ("curb", "'@minerals'"))
    rules = RuleSet([tmp_path], load_matcher([tmp_path]), clock=clock)
    assert sample(rules, "cobalt") == []
    (tmp_path / "common.lists.yaml").write_text("lists:\n  minerals: gallium OR cobalt\n")
    assert await rules.check() is True
    assert sample(rules, "cobalt") == ["curb"]


async def test_service_reports_a_broken_rule_file_in_healthz(
    tmp_path: Path, clock: FakeClock
) -> None:
    rules_file = tmp_path / "rules.yaml"
    write_rules(rules_file, ("gallium-curb", "gallium"))
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/w.db"\n'
        f'[rules]\npaths = ["{rules_file}"]\nreload_interval_s = 60\n'
    )
    config = load_config(config_path)
    app = create_app(config, load_matcher([rules_file]), clock=clock)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        assert app[SCHEDULER].get_job("rules-reload") is not None
        rules_file.write_text("rules:\n  - id: x\n    title: x\n")  # missing fields
        assert await app[MATCHER].check() is False
        async with http.get(server.make_url("/healthz")) as resp:
            assert resp.status == 200  # the last good rules are still serving
            health = await resp.json()
        assert health["rules"] == 1
        assert health["rule_files"]["status"] == "error"
        assert "rule 'x': event_type: Field required" in "\n".join(health["rule_files"]["errors"])
        async with http.get(server.make_url("/metrics")) as resp:
            body = await resp.text()
        assert "watcher_rules_broken 1.0" in body


async def test_run_starts_with_the_good_rules_when_a_rule_file_is_broken(tmp_path: Path) -> None:
    """A service restarted after a bad edit (a reboot, a container restart) must not stay
    down: the broken file is reported (log, /healthz), every good rule is in force, and
    fixing the file reloads it. With no rule loading at all it does not start."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    write_rules(rules_dir / "good.yaml", ("gallium-curb", "gallium"))
    (rules_dir / "bad.yaml").write_text("rules:\n  - id: bad-rule\n    title: x\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/w.db"\n[api]\nport = {port}\n'
        f'[rules]\npaths = ["{rules_dir}"]\nreload_interval_s = 1\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher.cli", "run", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            health = await _healthz(http, port, lambda h: True)
            assert health["rules"] == 1 and health["rule_files"]["status"] == "error"
            assert "rule 'bad-rule'" in "\n".join(health["rule_files"]["errors"])
            write_rules(rules_dir / "bad.yaml", ("germanium-curb", "germanium"))  # fixed
            health = await _healthz(http, port, lambda h: h["rules"] == 2)
            assert health["rule_files"]["status"] == "ok"
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == 0, err.decode()
    assert "rule 'bad-rule'" in err.decode() and "the other rules are in force" in err.decode()

    (rules_dir / "good.yaml").write_text("rules: [")  # now nothing loads at all
    (rules_dir / "bad.yaml").write_text("rules: [")
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher.cli", "run", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(done.communicate(), timeout=60)
    assert done.returncode == 2 and "no rule loads: not starting" in err.decode()


async def _healthz(http: aiohttp.ClientSession, port: int, ready: Any) -> Any:
    """/healthz once the service answers and `ready(health)` holds (within 30 s)."""
    for _ in range(300):
        try:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health = await resp.json()
            if ready(health):
                return health
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the service did not become ready")
