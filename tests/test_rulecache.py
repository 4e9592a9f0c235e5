from __future__ import annotations

from pathlib import Path

from watcher.parse import make_item
from watcher.rulecache import RuleCache
from watcher.rules import Matcher, load_rules

PACK = Path(__file__).resolve().parent.parent / "rules"


def test_unchanged_files_come_from_the_cache(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for f in PACK.glob("*.yaml"):
        (rules_dir / f.name).write_bytes(f.read_bytes())
    cache = RuleCache(tmp_path / "cache")
    cold, errors = load_rules([rules_dir], cache=cache)
    assert errors == [] and (cache.hits, cache.misses) == (0, 6)
    assert len(list((tmp_path / "cache").glob("*.pickle"))) == 6

    warm, errors = load_rules([rules_dir], cache=cache)
    assert errors == [] and cache.hits == 6
    assert [(r.rule, r.node, r.path, r.line) for r in warm] == [
        (r.rule, r.node, r.path, r.line) for r in cold
    ]
    item = make_item(source_id="s", title="China bans export of gallium", text="")
    assert Matcher(warm).match(item) == Matcher(cold).match(item)

    # A changed file is parsed again; the others still come from the cache.
    target = rules_dir / "export_restriction.yaml"
    target.write_text(target.read_text().replace("severity: high", "severity: critical", 1))
    again, _ = load_rules([rules_dir], cache=cache)
    assert cache.hits == 11 and cache.misses == 7
    assert {r.rule.severity.value for r in again if r.rule.id == "minerals-export-curb"} == {
        "critical"
    }


def test_broken_files_are_not_cached_and_a_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n")
    cache = RuleCache(tmp_path / "cache")
    _, errors = load_rules([bad], cache=cache)
    assert errors and not (tmp_path / "cache").exists()

    good = tmp_path / "good.yaml"
    good.write_bytes((PACK / "tariff_or_price_measure.yaml").read_bytes())
    load_rules([good], cache=cache)
    [pickle_file] = (tmp_path / "cache").glob("*.pickle")
    pickle_file.write_bytes(b"not a pickle")
    rules, errors = load_rules([good], cache=cache)
    assert errors == [] and len(rules) == len(load_rules([good])[0]) and cache.hits == 0
