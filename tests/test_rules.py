from __future__ import annotations

from pathlib import Path

import pytest

from watcher.cli import main
from watcher.models import EventType, Severity
from watcher.parse import make_item
from watcher.rules import Matcher, check_examples, load_rules

DATA = Path(__file__).parent / "testdata" / "rules"


def errors_of(name: str) -> list[str]:
    _, errors = load_rules([DATA / name])
    return [str(e) for e in errors]


def test_good_rule_file_loads_and_matches() -> None:
    rules, errors = load_rules([DATA / "good.yaml"])
    assert errors == []
    [hit] = Matcher(rules).match(
        make_item(source_id="s", title="Beijing imposes gallium export ban", text="")
    )
    assert (hit.rule_id, hit.event_type, hit.severity) == (
        "gallium-curb",
        EventType.EXPORT_RESTRICTION,
        Severity.HIGH,
    )
    assert hit.tags == ("gallium",)


def test_query_error_in_folded_block_names_file_line_column_and_rule() -> None:
    rules, errors = load_rules([DATA / "bad_query_folded.yaml"])
    assert [r.rule.id for r in rules] == ["ok-rule"]  # the good rule still loads
    assert [str(e) for e in errors] == [
        f"{DATA / 'bad_query_folded.yaml'}:13:27: rule 'ree-export-curb': "
        "expected ')' after 'quota'"
    ]


def test_query_error_inline_names_column() -> None:
    assert errors_of("bad_query_inline.yaml") == [
        f"{DATA / 'bad_query_inline.yaml'}:6:24: rule 'inline-bad': expected a term, found 'AND'"
    ]


def test_field_errors_name_the_field_and_rule() -> None:
    errs = errors_of("bad_fields.yaml")
    prefix = f"{DATA / 'bad_fields.yaml'}:2: rule 'typo-rule':"
    assert all(e.startswith(prefix) for e in errs)
    joined = "\n".join(errs)
    assert "event_type: Input should be" in joined
    assert "qeury: Extra inputs are not permitted" in joined
    assert "query: Field required" in joined


def test_invalid_yaml_names_the_line() -> None:
    [err] = errors_of("bad_yaml.yaml")
    assert err.startswith(f"{DATA / 'bad_yaml.yaml'}:4: invalid YAML")


def test_a_key_given_twice_is_an_error_not_a_silently_lost_rule(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys: a second `rules:` block would drop the first
    block's rules, a second `query:` replace the first, with no error anywhere."""
    good = (DATA / "good.yaml").read_text()
    two_blocks = tmp_path / "two_blocks.yaml"
    two_blocks.write_text(good + good.replace("gallium-curb", "other-curb"))
    rules, errors = load_rules([two_blocks])
    assert rules == []
    assert [str(e) for e in errors] == [
        f"{two_blocks}:11: invalid YAML: found the key 'rules' twice (first on line 1); "
        "YAML would keep only the last"
    ]
    two_queries = tmp_path / "two_queries.yaml"
    two_queries.write_text(good.replace("    tags:", "    query: gallium\n    tags:"))
    _, errors = load_rules([two_queries])
    assert [str(e) for e in errors] == [
        f"{two_queries}:7: invalid YAML: found the key 'query' twice (first on line 6); "
        "YAML would keep only the last"
    ]
    merged = tmp_path / "merged.yaml"  # a merge key's override is no duplicate
    merged.write_text(
        "rules:\n  - &base\n    id: a\n    title: A\n    event_type: export_restriction\n"
        "    severity: high\n    query: gallium\n  - <<: *base\n    id: b\n"
    )
    rules, errors = load_rules([merged])
    assert errors == [] and [r.rule.id for r in rules] == ["a", "b"]


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text((DATA / "good.yaml").read_text())
    (tmp_path / "b.yaml").write_text((DATA / "good.yaml").read_text())
    rules, errors = load_rules([tmp_path])
    assert len(rules) == 1
    assert "duplicate rule id (first defined at" in str(errors[0])
    assert str(tmp_path / "b.yaml") in str(errors[0])


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    _, errors = load_rules([tmp_path / "nope.yaml"])
    assert "no such file" in str(errors[0])


def test_rules_check_command_reports_failing_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(DATA / "failing_example.yaml")]) == 1
    out = capsys.readouterr().out
    assert "rule 'cobalt-tariff': should match but does not: 'New duties on cobalt imports'" in out
    assert "should not match but does: 'Cobalt tariffs rise'" in out
    assert "1 rule(s) loaded, 0 error(s); 2 example(s) run, 2 failed" in out


def test_rules_check_command_passes_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(DATA / "good.yaml")]) == 0
    assert "1 rule(s) loaded, 0 error(s); 2 example(s) run, 0 failed" in capsys.readouterr().out


def test_rules_check_command_fails_on_bad_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(DATA / "bad_query_inline.yaml")]) == 1
    assert "inline-bad" in capsys.readouterr().out


def test_new_syntax_errors_in_a_rule_file_name_file_line_column_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "near.yaml"
    path.write_text(
        "rules:\n"
        "  - id: near-bad\n"
        "    title: t\n"
        "    event_type: export_restriction\n"
        "    severity: high\n"
        '    query: "gallium NEAR export"\n'
    )
    _, errors = load_rules([path])
    assert [str(e) for e in errors] == [
        f"{path}:6:21: rule 'near-bad': NEAR needs a number, e.g. NEAR/5"
    ]


def test_item_examples_exercise_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "title.yaml"
    path.write_text(
        "rules:\n"
        "  - id: title-rule\n"
        "    title: t\n"
        "    event_type: export_restriction\n"
        "    severity: high\n"
        "    query: title:gallium lang:en\n"
        "    examples:\n"
        "      match:\n"
        "        - {title: Gallium curbs, text: x, lang: en}\n"
        "        - {title: Curbs, text: gallium, lang: en}\n"
        "      no_match:\n"
        "        - Gallium curbs\n"
    )
    assert main(["rules", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "should match but does not: {'title': 'Curbs', 'text': 'gallium', 'lang': 'en'}" in out
    assert "1 rule(s) loaded, 0 error(s); 3 example(s) run, 1 failed" in out


LISTS_FILE = """\
lists:
  minerals: gallium OR germanium OR "rare earth*"
  bad-list: (gallium OR
  Bad Name: x
rules:
  - id: uses-list
    title: t
    event_type: export_restriction
    severity: high
    query: "@minerals NEAR/3 export*"
    examples:
      match: ["rare earth exports banned"]
      no_match: ["rare earth prices rose sharply this week, export data show"]
  - id: unknown-list
    title: t
    event_type: export_restriction
    severity: high
    query: "gallium AND @metals"
"""


def test_named_lists(tmp_path: Path) -> None:
    path = tmp_path / "lists.yaml"
    path.write_text(LISTS_FILE)
    rules, errors = load_rules([path])
    assert [r.rule.id for r in rules] == ["uses-list"]
    assert check_examples(rules[0]) == []
    assert [str(e) for e in errors] == [
        f"{path}:3:24: list 'bad-list': expected a term after 'OR'",
        f"{path}:4: list name 'Bad Name' must be lower-case letters, digits, '_' or '-'",
        f"{path}:18:25: rule 'unknown-list': unknown list '@metals' "
        "(lists known to this file: @minerals)",
    ]


SHARED = """\
lists:
  minerals: gallium OR germanium
  background: bill OR draft
"""
USES_SHARED = """\
rules:
  - id: {id}
    title: t
    event_type: export_restriction
    severity: high
    query: "@minerals NEAR/3 export* NOT @background"
"""


def test_shared_list_files_serve_every_rule_file_loaded_with_them(tmp_path: Path) -> None:
    (tmp_path / "common.lists.yaml").write_text(SHARED)
    (tmp_path / "a.yaml").write_text(USES_SHARED.format(id="a"))
    (tmp_path / "b.yaml").write_text(USES_SHARED.format(id="b"))
    rules, errors = load_rules([tmp_path])
    assert errors == [] and [r.rule.id for r in rules] == ["a", "b"]
    matcher = Matcher(rules)
    hit = make_item(source_id="s", text="China curbs gallium exports")
    assert [h.rule_id for h in matcher.match(hit)] == ["a", "b"]
    assert matcher.match(make_item(source_id="s", text="A bill would curb gallium exports")) == []

    # without the list file, the rule files name what they miss
    _, errors = load_rules([tmp_path / "a.yaml"])
    assert [str(e) for e in errors] == [
        f"{tmp_path / 'a.yaml'}:6:13: rule 'a': unknown list '@minerals' "
        "(lists known to this file: none)"
    ]


def test_shared_list_files_refuse_rules_clashes_and_bad_lists(tmp_path: Path) -> None:
    (tmp_path / "a.lists.yaml").write_text(SHARED)
    (tmp_path / "b.lists.yaml").write_text("lists:\n  other: x\n  minerals: cobalt\n")
    (tmp_path / "c.lists.yaml").write_text(SHARED + USES_SHARED.format(id="c").lstrip())
    (tmp_path / "d.lists.yaml").write_text("lists:\n  broken: (x OR\n")
    (tmp_path / "e.yaml").write_text("lists:\n  background: opinion\n" + USES_SHARED.format(id="e"))
    rules, errors = load_rules([tmp_path])
    assert [str(e) for e in errors] == [
        f"{tmp_path / 'b.lists.yaml'}:3: list 'minerals' is already defined in "
        f"{tmp_path / 'a.lists.yaml'}",
        f"{tmp_path / 'c.lists.yaml'}:1: a shared list file (.lists.yaml) holds 'lists' "
        "and nothing else",
        f"{tmp_path / 'd.lists.yaml'}:2:16: list 'broken': expected a term after 'OR'",
        f"{tmp_path / 'e.yaml'}:2: list 'background' is already defined in "
        f"{tmp_path / 'a.lists.yaml'}",
    ]
    # the rule itself still loads, with the file's own list
    assert [r.rule.id for r in rules] == ["e"]
