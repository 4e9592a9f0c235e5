"""Hot reload of rule files: a change is picked up, a broken file keeps the last good rules."""

from __future__ import annotations

from pathlib import Path

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
