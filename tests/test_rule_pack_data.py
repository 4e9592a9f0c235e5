"""The shipped rule pack in rules/: it loads, its examples pass, and it fits real text.

Real text means the seed articles in shared/seeds/ (five versions of the February
2026 Critical Minerals Ministerial story) and hand-written hard negatives that
share the pack's vocabulary but report nothing it should alert on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.models import EventType
from watcher.parse import make_item
from watcher.rules import CompiledRule, Matcher, check_examples, load_rules

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
SEEDS_DIR = Path(__file__).resolve().parents[2] / "shared" / "seeds"

HARD_NEGATIVES = [
    # earnings
    "Lithium miner Albemarle reports higher quarterly earnings on strong EV demand",
    "Pilbara Minerals reported a net profit of A$250 million for the half year. The lithium "
    "miner said government approvals were on track and it would invest A$500 million in a "
    "new plant. Shares rose 4%.",
    # geology
    "Geologists find large rare earth deposit in Sweden's Kiruna mine",
    "Bolivia's lithium reserves are the largest in the world, survey says",
    # reserves that are not mineral stockpiles
    "China's foreign exchange reserves rose to $3.3 trillion at end of May",
    "US crude oil reserves fall as refiners ramp up output",
    "Strategic Petroleum Reserve refill slows as oil prices rise",
    "中国5月外汇储备规模升至3.3万亿美元，黄金储备连续增加。",
    # other goods' export bans and customs statistics
    "India extends ban on non-basmati rice exports",
    "Russia imposes temporary wheat export ban to curb domestic prices",
    "China's rare earth exports rose 12% in May, customs data show",
    "印度延长大米出口禁令，并对蒸谷米征收20%出口关税。",
    # price commentary
    "Nickel prices slip as traders weigh US tariff plans",
    "Cobalt prices fall as LME stockpiles climb to record",
    "Lithium price rally eases as new supply comes online",
    # unrelated memoranda, tariffs, blacklists, commercial deals
    "Mining company signs memorandum of understanding with software vendor",
    "US and UK sign memorandum on AI safety research",
    "US imposes new tariffs on steel and aluminium imports from Canada",
    "EU adds three countries to its tax haven blacklist",
    "Tesla signs lithium supply agreement with Piedmont Lithium",
    "Glencore sells stake in cobalt mine to trading house Mercuria",
    "Potato chip maker raises prices as potato costs soar",
]


@pytest.fixture(scope="module")
def rules() -> list[CompiledRule]:
    loaded, errors = load_rules([RULES_DIR])
    assert [str(e) for e in errors] == []
    return loaded


@pytest.fixture(scope="module")
def matcher(rules: list[CompiledRule]) -> Matcher:
    return Matcher(rules)


def test_pack_has_rules_for_every_event_type(rules: list[CompiledRule]) -> None:
    covered = {r.rule.event_type for r in rules}
    assert covered == set(EventType)


def test_every_rule_has_examples_and_they_pass(rules: list[CompiledRule]) -> None:
    failures: list[str] = []
    for rule in rules:
        examples = rule.rule.examples
        if len(examples.match) < 2 or len(examples.no_match) < 2:
            failures.append(f"{rule.rule.id}: needs 2 match and 2 no_match examples")
        failures.extend(f"{rule.rule.id}: {f}" for f in check_examples(rule))
    assert failures == []


def seed_files() -> list[Path]:
    if not SEEDS_DIR.is_dir():
        pytest.skip(f"seed articles not available: {SEEDS_DIR} does not exist")
    files = sorted(SEEDS_DIR.glob("0*.txt"))
    if not files:
        pytest.skip(f"no seed articles (0*.txt) in {SEEDS_DIR}")
    return files


def test_each_seed_is_an_agreement_and_a_stockpile_or_investment(matcher: Matcher) -> None:
    wanted = {EventType.AGREEMENT_SIGNED, EventType.STOCKPILE_OR_INVESTMENT}
    missing: dict[str, set[EventType]] = {}
    for path in seed_files():
        item = make_item(source_id="seed", title="", text=path.read_text(encoding="utf-8"))
        got = {hit.event_type for hit in matcher.match(item)}
        if wanted - got:
            missing[path.name] = wanted - got
    assert missing == {}


@pytest.mark.parametrize("text", HARD_NEGATIVES)
def test_hard_negative_matches_nothing(matcher: Matcher, text: str) -> None:
    hits = matcher.match(make_item(source_id="negative", title="", text=text))
    assert [h.rule_id for h in hits] == []
