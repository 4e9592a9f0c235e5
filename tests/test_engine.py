"""The prefilter never changes results: Matcher equals evaluating every rule.

The naive evaluator walks each rule's tree (`node.matches`) over every rule and
looks for facets with their own prefilter; the Matcher uses the shared word
memo, the candidate sets and the compiled closures (`compile_test`).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_query import queries
from watcher.engine import MEMO_EXTRA_WORDS, Prefilter, requirements
from watcher.facets import extract
from watcher.models import EventType, Item, Severity
from watcher.parse import make_item
from watcher.query import Document, compile_test, parse_query
from watcher.rules import CompiledRule, Matcher, Rule, item_document

_TEXT_WORDS = [
    "gallium", "rare", "earth", "rare-earths", "licence", "licensing", "稀土", "出口管制",
    "签署MoU", "ban", "bans", "export", "exports", "x", "mou", "稀土出口", "the", "of", "US",
    "us", "Rare", "Earth", "China", "Beijing", "U.S.", "EU", "nickel", "镓", "Japan",
]  # fmt: skip


def compile_rules(texts: list[str]) -> list[CompiledRule]:
    out = []
    for i, q in enumerate(texts):
        rule = Rule(
            id=f"r{i}", title=f"r{i}", event_type=EventType.EXPORT_RESTRICTION,
            severity=Severity.LOW, query=q,
        )  # fmt: skip
        out.append(CompiledRule(rule, parse_query(q), "t.yaml", i + 1))
    return out


def naive(
    rules: list[CompiledRule], item: Item
) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Rule ids with their facets (minerals, countries), by walking every rule's tree."""
    doc = item_document(item)
    ids = [r.rule.id for r in rules if r.applies_to(item) and r.node.matches(doc)]
    if not ids:
        return []
    facets = extract(item_document(item), f"{item.title}\n{item.text}")
    return [(i, facets.minerals, facets.countries) for i in ids]


def matched(matcher: Matcher, item: Item) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return [(h.rule_id, h.minerals, h.countries) for h in matcher.match(item)]


_item = st.builds(
    lambda title, text, lang: make_item(
        source_id="abc", title=" ".join(title), text=" ".join(text), language=lang
    ),
    st.lists(st.sampled_from(_TEXT_WORDS), max_size=5),
    st.lists(st.sampled_from(_TEXT_WORDS), max_size=15),
    st.sampled_from(["", "en", "zh-CN"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(queries, min_size=1, max_size=25), st.lists(_item, min_size=1, max_size=8))
def test_matcher_equals_evaluating_every_rule(texts: list[str], items: list[Item]) -> None:
    rules = compile_rules(texts)
    matcher = Matcher(rules)
    for item in items:
        assert matched(matcher, item) == naive(rules, item)
    for item in items:  # again, from the word memo
        assert matched(matcher, item) == naive(rules, item)


@settings(max_examples=100, deadline=None)
@given(queries, _item)
def test_compiled_test_equals_walking_the_tree(text: str, item: Item) -> None:
    node = parse_query(text)
    assert compile_test(node)(item_document(item)) == node.matches(item_document(item))


def test_the_memo_is_cleared_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("watcher.engine.MEMO_EXTRA_WORDS", 3)
    rules = compile_rules(["gallium AND ban*"])
    prefilter = Prefilter([r.node for r in rules])
    doc = Document.from_text("a b c d e gallium bans f g")
    assert prefilter.candidates(doc) == [0]
    assert len(prefilter._memo) <= 1 + 3  # the rules' one word, and 3 others
    assert len(prefilter._ascii_memo) <= 1 + 3
    assert prefilter.candidates(Document.from_text("gallium")) == []
    assert MEMO_EXTRA_WORDS > 3  # the module's own value is untouched


def test_rules_that_need_no_literal_are_always_evaluated() -> None:
    rules = compile_rules(["NOT rice", "lang:zh", "gallium", "title:(NOT gallium)"])
    prefilter = Prefilter([r.node for r in rules])
    assert prefilter.always == (0, 1, 3)
    item = make_item(source_id="s", title="wheat", text="", language="zh")
    assert [h.rule_id for h in Matcher(rules).match(item)] == ["r0", "r1", "r3"]


def test_only_rules_whose_literals_all_occur_are_candidates() -> None:
    rules = compile_rules(
        ["gallium AND ban*", "(gallium OR germanium) NEAR/3 export", "稀土 出口管制", "licen*"]
    )
    prefilter = Prefilter([r.node for r in rules])
    doc = item_document(make_item(source_id="s", title="", text="gallium bans and 稀土 licence"))
    assert prefilter.candidates(doc) == [0, 3]
    assert requirements(rules[1].node) == [
        frozenset({"gallium", "germanium"}),
        frozenset({"export"}),
    ]
