"""The garbage collector pauses while rules load and their Matcher is built (watcher.gcpause)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from watcher.gcpause import gc_paused
from watcher.rulecache import RuleCache
from watcher.rules import Matcher, load_rules


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every automatic collection that starts while the test runs."""
    started: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(record)
    try:
        yield started
    finally:
        gc.callbacks.remove(record)
        gc.enable()


def test_pauses_nest_and_restore_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause is still on
    assert gc.isenabled()


def test_an_exception_ends_the_pause() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_pauses_in_two_threads() -> None:
    """The first pause to end leaves the collector off while the other goes on."""
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with gc_paused():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with gc_paused():
            second_in.set()
            first_out.wait(5)
            seen["after the first ended"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after the first ended": False}
    assert gc.isenabled()


def _rule_file(path: Path, n: int) -> None:
    rules = [
        {
            "id": f"r{i}",
            "title": f"rule {i}",
            "event_type": "export_restriction",
            "severity": "high",
            "query": f'(word{i} OR "phrase {i}" OR pre{i}*) AND (other{i} OR more{i}) NOT no{i}',
        }
        for i in range(n)
    ]
    path.write_text(yaml.safe_dump({"rules": rules}))


def test_at_most_one_collection_while_rules_load_and_compile(
    tmp_path: Path, collections: list[int]
) -> None:
    """2,000 rules make enough long-lived objects to set the collector off dozens of
    times in each step; paused, each step starts at most the one collection that the
    pause put off to its end."""
    path = tmp_path / "rules.yaml"
    _rule_file(path, 2000)
    cache = RuleCache(tmp_path / "cache")
    gc.collect()
    collections.clear()
    parsed, errors = load_rules([path], cache=cache)  # parsed, then stored in the cache
    assert errors == [] and len(parsed) == 2000
    assert len(collections) <= 1, collections
    collections.clear()
    cached, errors = load_rules([path], cache=cache)  # unpickled from the cache
    assert errors == [] and cache.hits == 1 and len(cached) == 2000
    assert len(collections) <= 1, collections
    collections.clear()
    matcher = Matcher(cached)
    assert len(collections) <= 1, collections
    assert len(matcher) == 2000 and gc.isenabled()
