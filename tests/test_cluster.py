"""Stories: rewrites of one event merge, look-alikes stay apart; real stores, real pipeline."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import delete, func, select

from bench.cluster_quality import HELDOUT, labelled_items, pair_scores
from tests.conftest import SHARED, FakeClock
from watcher import cluster, constants
from watcher.cli import main
from watcher.config import SubscriptionConfig
from watcher.fetch import Fetcher, FetchLimits
from watcher.metrics import Metrics
from watcher.models import Item
from watcher.parse import make_item
from watcher.pipeline import Pipeline
from watcher.replay import replay
from watcher.route import Router
from watcher.rules import Matcher, load_rules
from watcher.store import Store
from watcher.story_store import StoryIndex, story_info, story_keys

REPO = Path(__file__).resolve().parent.parent
WIDE_WINDOW_S = 400 * 24 * 3600


async def assign_all(store: Store, items: list[Item], index: StoryIndex) -> list[str]:
    async with store.transaction() as tx:
        new = await tx.insert_new_items(items)
        got = await index.assign(tx.conn, new, tx.now)
    return [got[item_id].story_key for item_id, _ in new]


needs_seeds = pytest.mark.skipif(
    not (SHARED / "seeds").is_dir(),
    reason="../shared/seeds is absent: these tests need the five seed articles",
)


async def test_labelled_set_partitions_exactly(store: Store) -> None:
    """Rewrites (boilerplate, title rewrites, truncation, the five seeds) merge; look-alikes
    (a curb and its easing, two countries, two Entity List rounds, two bilateral deals) don't.
    The window is wide so that only content separates them."""
    items = labelled_items()
    keys = await assign_all(store, [i for _, _, i in items], StoryIndex(window_s=WIDE_WINDOW_S))
    labels = {ident: label for ident, label, _ in items}
    got = {ident: key for (ident, _, _), key in zip(items, keys, strict=True)}
    scores = pair_scores(labels, got)
    assert scores["pairs_merged_wrongly"] == 0, scores
    assert scores["pairs_split_wrongly"] == 0, scores


async def test_heldout_set_partitions_exactly_with_the_default_window(store: Store) -> None:
    """Written after the threshold was chosen. Content alone merges Congo's cobalt ban
    extension with its replacement by quotas three months later; the window keeps them apart."""
    items = labelled_items(HELDOUT, seeds=False)
    keys = await assign_all(store, [i for _, _, i in items], StoryIndex())
    labels = {ident: label for ident, label, _ in items}
    got = {ident: key for (ident, _, _), key in zip(items, keys, strict=True)}
    scores = pair_scores(labels, got)
    assert (scores["pairs_merged_wrongly"], scores["pairs_split_wrongly"]) == (0, 0), scores


@needs_seeds
async def test_seeds_alone_are_one_story_with_five_sources(store: Store) -> None:
    seeds = [(i, it) for i, label, it in labelled_items() if label == "seeds"]
    assert len(seeds) == 5
    keys = await assign_all(store, [it for _, it in seeds], StoryIndex())
    assert len(set(keys)) == 1
    async with store.engine.connect() as conn:
        info = await story_info(conn, keys[0])
    assert info is not None and info.item_count == 5 and info.source_count == 5


def _item(source: str, guid: str, title: str, text: str, published: datetime) -> Item:
    return make_item(source_id=source, guid=guid, title=title, text=text, published=published)


CURB_TEXT = (
    "China's Ministry of Commerce said on Thursday that exports of gallium and germanium will"
    " need a licence from August 1, citing national security. Gallium is used in chips and"
    " Germanium in fibre optics; China produces 98% of the world's gallium."
)


async def test_time_window_separates_the_same_words_a_year_apart(store: Store) -> None:
    t0 = datetime(2025, 7, 3, tzinfo=UTC)
    a = _item("wire", "a", "China curbs gallium and germanium exports", CURB_TEXT, t0)
    b = _item("blog", "b", "China curbs gallium and germanium exports", CURB_TEXT, t0)
    c = _item(
        "wire",
        "c",
        "China curbs gallium and germanium exports",
        CURB_TEXT,
        t0 + timedelta(days=365),
    )
    keys = await assign_all(store, [a, b, c], StoryIndex())
    assert keys[0] == keys[1] and keys[2] != keys[0]


def _matcher() -> Matcher:
    rules, errors = load_rules([REPO / "rules"])
    assert errors == []
    return Matcher(rules)


def _seed_items() -> list[tuple[str, Item]]:
    out = []
    for n, path in enumerate(sorted((SHARED / "seeds").glob("0*.txt"))):
        item = make_item(
            source_id=f"site{n}",
            guid=path.stem,
            text=path.read_text(),
            published=datetime(2026, 2, 4, 10 + 2 * n, tzinfo=UTC),
        )
        out.append((path.stem, item))
    return out


@needs_seeds
async def test_replay_of_the_seeds_gives_one_alert_per_rule_with_five_items(
    clock: FakeClock,
) -> None:
    records = await replay(_seed_items(), matcher=_matcher(), clock=clock)
    rules = [r["rule"] for r in records]
    assert len(rules) >= 3 and len(set(rules)) == len(rules)  # one alert per matching rule
    assert len({r["story"] for r in records}) == 1
    for r in records:
        assert len(r["items"]) == 5 and len(r["sources"]) == 5
        assert set(r) == {"rule", "event_type", "story", "items", "sources"}


@needs_seeds
def test_replay_command_prints_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        json.dumps({"id": ident, "source": it.source_id, "text": it.text,
                    "published": it.published.isoformat() if it.published else ""})
        for ident, it in _seed_items()
    ]  # fmt: skip
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["replay", "--rules", str(REPO / "rules"), "--input", str(path)]) == 0
    out = capsys.readouterr()
    records = [json.loads(line) for line in out.out.splitlines()]
    assert records and all(len(r["items"]) == 5 for r in records)
    assert sorted(records[0]["items"]) == sorted(json.loads(line)["id"] for line in lines)


def _seed_pipeline(store: Store, clock: FakeClock, session: aiohttp.ClientSession) -> Pipeline:
    """A pipeline with the shipped rules, every alert routed to one receiver."""
    return Pipeline(
        store=store,
        fetcher=Fetcher(session=session, limits=FetchLimits(), clock=clock),
        matcher=_matcher,
        router=Router([SubscriptionConfig(receivers=["hook"])]),
        metrics=Metrics(),
        clock=clock,
    )


@needs_seeds
async def test_later_copies_join_the_story_and_raise_no_second_alert(
    store: Store, clock: FakeClock
) -> None:
    seeds = _seed_items()
    async with aiohttp.ClientSession() as session:
        pipeline = _seed_pipeline(store, clock, session)
        first = await pipeline.ingest("site0", [seeds[0][1]], record_source=False)
        assert first.alerts and first.deliveries == len(first.alerts)
        for n, (_, item) in enumerate(seeds[1:], 2):
            clock.advance(3600)
            later = await pipeline.ingest(item.source_id, [item], record_source=False)
            assert later.new_items == 1
            [grown] = later.stories_grown  # the alert now reads "reported by n sources"
            assert (grown.item_count, grown.source_count) == (n, n)
            # Rules that already alerted on the story stay silent; no second delivery.
            assert not {a.hit.rule_id for a in later.alerts} & {a.hit.rule_id for a in first.alerts}
    alerts = await store.list_alerts()
    assert len({a.rule_id for a in alerts}) == len(alerts)
    async with store.engine.connect() as conn:
        info = await story_info(conn, alerts[0].story_key)
    assert info is not None and info.source_count == 5  # "now reported by 5 sources"


@needs_seeds
@pytest.mark.parametrize(
    "polls",
    [[["001", "003", "000", "002", "004"]], [["001"], ["003", "000"]]],
    ids=["one-poll", "two-polls"],
)
async def test_an_item_that_bridges_stories_in_its_own_poll_raises_no_second_alert(
    store: Store, clock: FakeClock, polls: list[list[str]]
) -> None:
    """001 and 003 (heavy rewrites) each start a story; 000, in the same poll as 003,
    bridges them. 003's alerts go under the story that stayed, where each rule has one
    alert: under the key of the story 000 absorbed they were alerts of their own, sent
    twice."""
    seeds = {stem[:3]: item for stem, item in _seed_items()}
    async with aiohttp.ClientSession() as session:
        pipeline = _seed_pipeline(store, clock, session)
        raised: list[str] = []
        bridged = False
        for poll in polls:
            out = await pipeline.ingest("feed", [seeds[k] for k in poll], record_source=False)
            raised += [a.hit.rule_id for a in out.alerts]
            bridged = bridged or any(a.merged for a in out.stories_grown)
            clock.advance(600)
    assert bridged  # the case this test is for: an item of the batch merged two stories
    alerts = await store.list_alerts()
    assert sorted(raised) == sorted(a.rule_id for a in alerts)
    assert len(set(raised)) == len(raised), raised  # one alert (and delivery) per rule
    assert len({a.story_key for a in alerts}) == 1
    async with store.engine.connect() as conn:
        info = await story_info(conn, alerts[0].story_key)
    assert info is not None and len(info.item_ids) == sum(map(len, polls))


@needs_seeds
def test_boilerplate_lines_do_not_count() -> None:
    from watcher.cluster import clean_text, features

    text = (SHARED / "seeds" / "003_ceab15495458395c.txt").read_text()
    cleaned = clean_text(text)
    assert "Vice President JD Vance" in cleaned
    for gone in ("has covered the technology industry", "Leave a Comment", "Share This Article",
                 "All rights reserved", "Required fields are marked", "3 min read"):  # fmt: skip
        assert gone not in cleaned
    counts = features(make_item(source_id="s", text=text)).counts
    assert "e:vance" in counts and "e:turner" not in counts  # the author is not the story


async def test_unrelated_items_with_the_same_boilerplate_stay_apart(store: Store) -> None:
    footer = (
        "\nShare this article\nLeave a Comment\nJohn Smith is a senior markets reporter who has"
        " covered Reuters, Bloomberg and the Financial Times.\n© 2026 Daily Metals Ltd."
        " All rights reserved. Terms of Service Privacy Policy"
    )
    t = datetime(2026, 3, 2, tzinfo=UTC)
    a_text = "Codelco said on Monday it expects to produce 1.4 million tonnes of copper."
    b_text = "JOGMEC will invest A$200 million in Lynas Rare Earths in Malaysia."
    a = _item("site", "a", "Chile's Codelco raises 2026 copper output guidance", a_text + footer, t)
    b = _item("site", "b", "Japan's JOGMEC backs Lynas rare earths expansion", b_text + footer, t)
    empty = _item("site", "c", "", "", t)  # nothing to cluster on: its own story, no error
    keys = await assign_all(store, [a, b, empty], StoryIndex())
    assert len(set(keys)) == 3


ENTITY_LIST_RULES = (
    (
        "Additions to the Entity List",
        "In this final rule, the Bureau of Industry and Security (BIS) amends the Export"
        " Administration Regulations (EAR) by adding 23 entities under 26 entries to the Entity"
        " List. These entities have been determined by the U.S. Government to be acting contrary"
        " to the national security or foreign policy interests of the United States. These"
        " entities will be listed on the Entity List under the destinations of China, India,"
        " Iran, Singapore, Turkey, and the United Arab Emirates (UAE).",
    ),
    (
        "Additions to the Entity List",
        "In this rule, the Bureau of Industry and Security (BIS) amends the Export"
        " Administration Regulations (EAR) by adding 12 entities to the Entity List. These 12"
        " entities are located in China and Taiwan. These entities have been determined by the"
        " U.S. Government to be acting contrary to the national security or foreign policy"
        " interests of the United States.",
    ),
)


async def test_two_entity_list_rules_sharing_only_boilerplate_stay_apart(store: Store) -> None:
    """Agencies, their lists and regulations, and countries are in every such rule: one
    name each ("Entity List" is not "entity" and "list"), and none of them a specific."""
    t = datetime(2026, 3, 2, 14, tzinfo=UTC)
    a, b = (
        _item("bis", f"el-{n}", title, text, t + timedelta(days=5 * n))
        for n, (title, text) in enumerate(ENTITY_LIST_RULES)
    )
    keys = await assign_all(store, [a, b], StoryIndex())
    assert keys[0] != keys[1]
    counts = cluster.features(a).counts
    assert "o:entity_list" in counts and "e:entity" not in counts and "e:list" not in counts
    assert "o:bureau_industry" in counts and "o:china" in counts
    assert (
        cluster.shared_specifics(
            cluster.weigh(counts, {}, 0), cluster.weigh(cluster.features(b).counts, {}, 0)
        )
        == 0
    )


async def test_different_federal_register_documents_never_merge(store: Store) -> None:
    """Two documents with the same title and text ("New Postal Products", filed each day)
    are two documents: their numbers differ. A copy of one (its Public Inspection filing, a
    feed entry linking it) still joins it; the veto does not keep out a news item."""
    from watcher.federal_register import join_documents

    t = datetime(2026, 3, 2, 14, tzinfo=UTC)
    title = "New Postal Products"
    text = (
        "The Commission is noticing a recent Postal Service filing for the Commission's"
        " consideration concerning a negotiated service agreement, Priority Mail Express"
        " Contract 1,143, Docket No. MC2025-1234. Comments are due August 5, 2025; the"
        " Public Representative is Katalin K. Clendenin."
    )
    items = [
        make_item(source_id="fr", guid=f"g{n}", url=f"https://www.federalregister.gov/d/{num}",
                  title=title, text=text, published=t + timedelta(hours=n))
        for n, num in enumerate(("2026-04101", "2026-04455", "2026-04101"))
    ]  # fmt: skip
    join_documents(items)
    news = _item("wire", "news", title, text + " Reuters reported.", t + timedelta(hours=3))
    keys = await assign_all(store, items, StoryIndex())
    assert keys[0] != keys[1]
    assert keys[2] == keys[0]
    assert cluster.vetoed(cluster.features(items[0]), cluster.features(items[1]))
    assert not cluster.vetoed(cluster.features(items[0]), cluster.features(items[2]))
    assert not cluster.vetoed(cluster.features(items[0]), cluster.features(news))


@needs_seeds
async def test_an_item_that_bridges_two_stories_merges_them(store: Store, clock: FakeClock) -> None:
    """Seeds 001 and 003 (heavy rewrites) share too few names to merge with each other, so
    each starts a story; 000 matches both and folds the younger into the older: items,
    sources and alerts move, and the later seeds join the one story."""
    by_name = {ident[:3]: item for ident, item in _seed_items()}
    order = ["001", "003", "000", "002", "004"]
    async with aiohttp.ClientSession() as session:
        pipeline = Pipeline(
            store=store,
            fetcher=Fetcher(session=session, limits=FetchLimits(), clock=clock),
            matcher=_matcher,
            router=Router([]),
            metrics=Metrics(),
            clock=clock,
        )
        outcomes = []
        for k, name in enumerate(order):
            item = by_name[name]._replace(published=datetime(2026, 2, 4, 10 + k, tzinfo=UTC))
            outcomes.append(await pipeline.ingest(item.source_id, [item], record_source=False))
    assert all(o.stories_grown == [] for o in outcomes[:2])  # two new stories
    [bridge] = outcomes[2].stories_grown
    assert len(bridge.merged) == 1 and (bridge.item_count, bridge.source_count) == (3, 3)
    [last] = outcomes[-1].stories_grown
    assert last.story_key == bridge.story_key
    assert (last.item_count, last.source_count) == (5, 5)
    alerts = await store.list_alerts()
    async with store.engine.connect() as conn:
        infos = [await story_info(conn, a.story_key) for a in alerts]
    assert {i.key for i in infos if i} == {bridge.story_key}  # every alert reads the one story
    assert infos[0] is not None
    assert infos[0].first_at == datetime(2026, 2, 4, 10, tzinfo=UTC)
    assert infos[0].last_at == datetime(2026, 2, 4, 14, tzinfo=UTC)
    assert all(i is not None and len(i.item_ids) == 5 for i in infos)
    on_story = [a.rule_id for a in alerts if a.story_key == bridge.story_key]
    assert len(on_story) == len(set(on_story)) == len({a.rule_id for a in alerts})


async def test_two_replicas_ingesting_copies_at_once_make_one_story(
    store_url: str, clock: FakeClock
) -> None:
    """Two stores on one database (two replicas) assign two copies concurrently: the
    document-count row serialises them, so the second sees the first one's story."""
    import asyncio

    t = datetime(2026, 2, 4, 12, tzinfo=UTC)
    a = _item("wire", "a", "China curbs gallium and germanium exports", CURB_TEXT, t)
    b = _item("blog", "b", "Beijing restricts gallium, germanium exports", CURB_TEXT, t)
    stores = [Store(store_url, clock=clock), Store(store_url, clock=clock)]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(
            *(assign_all(s, [item], StoryIndex()) for s, item in zip(stores, (a, b), strict=True))
        )
        assert results[0] == results[1]
    finally:
        for s in stores:
            await s.close()


# The in-memory index: whatever a process remembers, it must agree with the store.

EASING_TEXT = (
    "China's Ministry of Commerce said on Tuesday it will suspend the licence requirement for"
    " gallium and germanium exports to the United States until November 27, after talks in"
    " Kuala Lumpur. Gallium and Germanium shipments had fallen 90% since the curbs."
)


def _copies(t: datetime) -> tuple[Item, Item, Item]:
    """Two copies of one curb, and its easing (a different story)."""
    a = _item("wire", "a", "China curbs gallium and germanium exports", CURB_TEXT, t)
    b = _item("blog", "b", "Beijing restricts gallium, germanium exports", CURB_TEXT, t)
    c = _item("news", "c", "China eases gallium and germanium export ban", EASING_TEXT, t)
    return a, b, c


async def test_a_restarted_process_finds_stories_stored_before_it(
    store: Store, clock: FakeClock
) -> None:
    a, b, c = _copies(clock.now - timedelta(hours=2))
    [first] = await assign_all(store, [a], StoryIndex())
    [second, other] = await assign_all(store, [b, c], StoryIndex())  # a new process
    assert second == first and other != first


async def test_replicas_taking_turns_see_each_others_stories_and_merges(
    store: Store, clock: FakeClock
) -> None:
    """Each replica remembers; each catches up on what the other stored meanwhile,
    including a bridge that folded two stories into one."""
    seeds = [item for _, item in _seed_items()] if (SHARED / "seeds").is_dir() else []
    one, two = StoryIndex(), StoryIndex()
    a, b, c = _copies(clock.now - timedelta(hours=2))
    [on_one] = await assign_all(store, [c], one)  # both replicas load their memory
    await assign_all(
        store, [_item("x", "x", "Unrelated", "Codelco output 1.4 million.", clock.now)], two
    )
    [first] = await assign_all(store, [a], one)
    [copy] = await assign_all(store, [b], two)  # `two` must catch up on `a`
    assert copy == first != on_one
    if len(seeds) == 5:  # 002, 004 and 001 start two stories; 003 bridges them
        by_name = {ident[:3]: item for ident, item in _seed_items()}
        keys = [await assign_all(store, [by_name[n]], r) for n, r in
                (("002", one), ("004", two), ("001", one), ("000", two), ("003", one))]  # fmt: skip
        [late] = await assign_all(
            store, [by_name["000"]._replace(guid="again", source_id="late")], two
        )
        async with store.engine.connect() as conn:
            info = await story_info(conn, keys[0][0])
        assert info is not None and late == info.key and info.item_count == 6


async def test_a_rolled_back_assignment_is_forgotten(store: Store, clock: FakeClock) -> None:
    index = StoryIndex()
    a, b, c = _copies(clock.now - timedelta(hours=2))
    await assign_all(store, [c], index)

    class Abort(Exception):
        pass

    async def assign_then_fail() -> None:
        async with store.transaction() as tx:
            new = await tx.insert_new_items([a])
            await index.assign(tx.conn, new, tx.now)
            raise Abort

    with pytest.raises(Abort):
        await assign_then_fail()
    [second] = await assign_all(store, [b], index)  # a's story never existed
    [third] = await assign_all(store, [a], index)
    async with store.engine.connect() as conn:
        info = await story_info(conn, second)
    assert third == second and info is not None and info.item_count == 2


async def test_an_item_older_than_the_memory_reaches_still_finds_its_story(
    store: Store, clock: FakeClock
) -> None:
    """A late copy, published a month ago, arrives after the process forgot that month:
    the window around its own time is read back from the store."""
    index = StoryIndex()
    month_ago = clock.now - timedelta(days=30)
    a, b, _ = _copies(month_ago)
    [first] = await assign_all(store, [a], index)
    for day in range(1, 30, 3):  # time passes; the memory moves on
        clock.advance(3 * 86400)
        await assign_all(
            store, [_item("x", f"x{day}", f"Note {day}", f"Filler {day}.", clock.now)], index
        )
    [late] = await assign_all(store, [b], index)
    [fresh_process] = await assign_all(
        store, [b._replace(guid="b2", source_id="other")], StoryIndex()
    )
    assert late == first == fresh_process


async def test_a_store_from_before_the_memory_is_upgraded_and_its_stories_found(
    store_url: str, clock: FakeClock
) -> None:
    """A store whose story_items have no version and whose term_stats no tokens (as the
    first clustering release wrote them) is upgraded at open; a later copy still joins."""
    from sqlalchemy import text

    a, b, _ = _copies(clock.now - timedelta(hours=2))
    store = Store(store_url, clock=clock)
    await store.open()
    [first] = await assign_all(store, [a], StoryIndex())
    async with store.engine.begin() as conn:  # back to the old schema, rows kept
        await conn.execute(text("DROP INDEX ix_story_items_version"))
        for table, column in (("story_items", "version"), ("term_stats", "token"),
                              ("term_stats", "prev_token")):  # fmt: skip
            await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    await store.close()
    store = Store(store_url, clock=clock)
    await store.open()
    try:
        [copy] = await assign_all(store, [b], StoryIndex())
    finally:
        await store.close()
    assert copy == first


def _others(n: int, t: datetime) -> list[Item]:
    """`n` unrelated items, one story each (different mines, figures and places)."""
    return [
        _item(
            f"o{i}",
            f"o{i}",
            f"Mine {i} output report",
            f"Mining firm Number{i} Holdings said output at its Site{i} mine rose {100 + i}.5%"
            f" to {2000 + 7 * i} tonnes in Region{i}, its chief executive Person{i} said.",
            t + timedelta(minutes=i),
        )
        for i in range(n)
    ]


async def test_the_memory_cap_holds_and_an_evicted_story_is_joined_through_the_store(
    store: Store, clock: FakeClock
) -> None:
    """Over its cap the memory forgets the oldest stories; a later copy of one, still
    inside the time window, joins it all the same (the store's candidate index)."""
    cap = 4
    index = StoryIndex(memory_items=cap)
    a, b, c = _copies(clock.now - timedelta(hours=3))
    [first] = await assign_all(store, [a], index)
    others = _others(12, clock.now - timedelta(hours=2))
    keys = []
    for item in others:
        keys += await assign_all(store, [item], index)
        [memory] = index._memories.values()
        assert len(memory.members) <= cap
    assert first not in {s.key for s in memory.stories.values()}  # forgotten...
    [second, other] = await assign_all(store, [b, c], index)
    assert second == first and other != first  # ...and found again
    assert len(set(keys)) == 12  # the unrelated ones stayed apart


async def test_a_restarted_process_loads_at_most_its_cap(store: Store, clock: FakeClock) -> None:
    a, b, c = _copies(clock.now - timedelta(hours=3))
    [first] = await assign_all(store, [a], StoryIndex())
    await assign_all(store, _others(8, clock.now - timedelta(hours=2)), StoryIndex())
    restarted = StoryIndex(memory_items=3)
    [second, other] = await assign_all(store, [b, c], restarted)  # a new process
    [memory] = restarted._memories.values()
    assert len(memory.members) <= 3 + 2
    assert second == first and other != first


async def test_source_ids_are_not_interned(store: Store, clock: FakeClock) -> None:
    """With 10,000 sources, interning their ids grew Python's table of interned strings
    by ~2 MB. Neither a polled item's id nor one read back from the store is interned."""

    def fresh(text: str) -> str:  # an equal string built at run time: not interned yet
        return "".join(list(text))

    a, b, _ = _copies(clock.now - timedelta(hours=3))
    a = a._replace(source_id=fresh("never-interned-a"))
    b = b._replace(source_id=fresh("never-interned-b"))
    await assign_all(store, [a], StoryIndex())
    restarted = StoryIndex()  # a new process: reads `a` back from the store
    await assign_all(store, [b], restarted)
    [memory] = restarted._memories.values()
    ids = {m.source_id: m.source_id for m in memory.members.values()}
    assert ids.keys() == {"never-interned-a", "never-interned-b"}
    assert sys.intern(fresh("never-interned-a")) is not ids["never-interned-a"]
    assert sys.intern(fresh("never-interned-b")) is not ids["never-interned-b"]


def test_the_word_key_caches_are_bounded() -> None:
    """A stream brings new words for ever: the caches of their keys stay small."""
    for cached in (cluster._term_key, cluster._entity_key):
        cached.cache_clear()
        for i in range(constants.CLUSTER_WORD_CACHE_ENTRIES + 100):
            cached(f"Word{i}x")
        assert cached.cache_info().currsize == constants.CLUSTER_WORD_CACHE_ENTRIES <= 8192


async def test_the_memory_cap_holds_when_items_share_one_time(
    store: Store, clock: FakeClock
) -> None:
    """A feed that stamps every item alike: forgetting by time must still get under the cap."""
    index = StoryIndex(memory_items=5)
    at = clock.now - timedelta(hours=1)
    keys = []
    for item in _others(15, at):
        item = item._replace(published=at)
        keys += await assign_all(store, [item], index)
        [memory] = index._memories.values()
        assert len(memory.members) <= 5
    assert len(set(keys)) == 15


async def test_a_store_without_the_candidate_index_has_it_filled(
    store: Store, clock: FakeClock
) -> None:
    """A store written before `story_keys` existed: the first assignment fills it."""
    a, b, c = _copies(clock.now - timedelta(hours=3))
    [first] = await assign_all(store, [a], StoryIndex())
    await assign_all(store, _others(8, clock.now - timedelta(hours=2)), StoryIndex())
    async with store.transaction() as tx:
        await tx.conn.execute(delete(story_keys))
    restarted = StoryIndex(memory_items=3)
    [second, other] = await assign_all(store, [b, c], restarted)
    assert second == first and other != first
    async with store.engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(story_keys))).scalar()
    assert stored and stored > 9


FIRST_DAY = datetime(1, 1, 2, tzinfo=UTC)
LAST_DAY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize("cap", [constants.CLUSTER_MEMORY_ITEMS, 4])
async def test_items_dated_near_the_ends_of_time_are_assigned(
    store: Store, clock: FakeClock, cap: int
) -> None:
    """A feed may date an item in year 1 or 9999: its window reaches past what a datetime
    holds, which means "from the start", not an error that fails every poll. With a small
    cap, the window also reaches past the memory (the store's candidate index is asked)."""
    index = StoryIndex(memory_items=cap)
    await assign_all(store, _others(8, clock.now - timedelta(hours=2)), index)
    a, b, c = _copies(FIRST_DAY)
    [first, other] = await assign_all(store, [a, c], index)
    [second] = await assign_all(store, [b], index)  # the same day, as far back as it goes
    assert second == first != other
    late = _item("late", "late", "Codelco output 1.4 million", "Codelco output.", LAST_DAY)
    [story] = await assign_all(store, [late], index)  # a future date counts as now
    async with store.engine.connect() as conn:
        info = await story_info(conn, story)
    assert info is not None and info.first_at == clock.now
