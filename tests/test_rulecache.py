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
    files = [good, PACK / "common.lists.yaml"]  # the lists it uses
    load_rules(files, cache=cache)
    [pickle_file] = (tmp_path / "cache").glob("*.pickle")
    pickle_file.write_bytes(b"not a pickle")
    rules, errors = load_rules(files, cache=cache)
    assert errors == [] and len(rules) == len(load_rules(files)[0]) and cache.hits == 0


def test_a_changed_shared_list_file_recompiles_the_rule_files_that_use_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "common.lists.yaml").write_text("lists:\n  minerals: gallium\n")
    (tmp_path / "a.yaml").write_text(
        "rules:\n  - id: a\n    title: t\n    event_type: export_restriction\n"
        "    severity: high\n    query: '@minerals'\n"
    )
    cache = RuleCache(tmp_path / "cache")
    cobalt = make_item(source_id="s", text="cobalt")
    cold, _ = load_rules([tmp_path], cache=cache)
    assert Matcher(cold).match(cobalt) == [] and cache.misses == 1

    # the rule file's bytes are the same; what it compiles to is not
    (tmp_path / "common.lists.yaml").write_text("lists:\n  minerals: gallium OR cobalt\n")
    warm, _ = load_rules([tmp_path], cache=cache)
    assert [h.rule_id for h in Matcher(warm).match(cobalt)] == ["a"]
    assert (cache.hits, cache.misses) == (0, 2)
    load_rules([tmp_path], cache=cache)
    assert cache.hits == 1
