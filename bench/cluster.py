"""Cluster benchmark: items/s through the cluster stage with 1k, 10k and 100k stored items.

Prints one JSON object. Two floors matter: speed, and flatness (the cost per
item must not grow with the store: an index lookup for candidates, not a
scan), so the rate at 100k stored items is compared with the rate at 1k
measured in the same run (`flat_ratio_100k_vs_1k`, 1.0 = perfectly flat).

Synthetic stories (random names, amounts and terms from a fixed vocabulary,
several rewrites each) arrive at a steady intake of INTAKE_PER_DAY items a
day, so a bigger store is an older one and the clustering window (the default
7 days) holds as many items at 10k as at 100k; the prefill writes the same rows the cluster stage
writes (vectors computed by the real code) in bulk. Then, per size:

- `warmup_s_at_N`: the first assignment of a process, which reads the recent
  past into memory (once per process start);
- `items_per_s_at_N` (the headline): `MEASURED` new items, half of them
  rewrites of stored stories and half new stories, through the real
  `StoryIndex.assign` on SQLite, one transaction per item as a poll of one
  new item does; the time inside `assign` only;
- `poll_items_per_s_at_N`: the same polls timed whole (transaction, item
  insert, assignment, commit), next to `floor_poll_items_per_s_at_N`, the same
  polls without the cluster stage: what the store alone costs;
- `batch_items_per_s_at_N`: polls of BATCH items each (a feed's first poll,
  a busy source), time inside `assign` only;
- `cpu_ms_per_item_at_N`, `batch_cpu_ms_per_item_at_N`: the CPU time (this
  process, all threads, so SQLite's work too) inside `assign` per item, which
  other load on the machine disturbs less than the wall-clock rates.

With WATCHER_TEST_POSTGRES_DSN set (a database the bench may wipe), the
same at PG_SIZE stored items on PostgreSQL (`pg_...`), plus
`pg_two_replicas_items_per_s`: two stores (two replicas) taking turns on one
database, so every assignment first catches up on the other's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from watcher.cluster import features, weigh  # noqa: E402
from watcher.models import Item  # noqa: E402
from watcher.parse import make_item  # noqa: E402
from watcher.store import Store, items  # noqa: E402
from watcher.story_store import StoryIndex, stories, story_items, term_stats  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
PG_SIZE = 10_000
MEASURED = 300
BATCH = 30
ITEMS_PER_STORY = 4
START = datetime(2025, 1, 1, tzinfo=UTC)
INTAKE_PER_DAY = 1_000

_SYLLABLES = "ka lo mi ra ten vo su dar bel nix quo ter pal zan fen gor hul iv jas".split()  # noqa: SIM905


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(n))


class Synth:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.names = sorted({_word(self.rng, 3).capitalize() for _ in range(6000)})
        self.terms = sorted({_word(self.rng, 2) + "ing" for _ in range(4000)})

    def story(self) -> dict[str, list[str]]:
        r = self.rng
        return {
            "names": r.sample(self.names, 6),
            "amounts": [f"${r.randint(2, 900)} million", f"{r.randint(11, 99)}%"],
            "terms": r.sample(self.terms, 30),
        }

    def item(self, story: dict[str, list[str]], source: str, guid: str, at: datetime) -> Item:
        r = self.rng
        names = r.sample(story["names"], 5)
        terms = r.sample(story["terms"], 22)
        sentences = []
        for i in range(6):
            chunk = " ".join(terms[i * 3 : i * 3 + 4])
            sentences.append(f"The {chunk} was noted by {names[i % 5]} on Tuesday.")
        sentences.append(f"It is worth {story['amounts'][0]}, up {story['amounts'][1]}.")
        title = f"{names[0]} and {names[1]} {terms[0]} {terms[1]}"
        return make_item(
            source_id=source, guid=guid, title=title, text=" ".join(sentences), published=at
        )


async def prefill(
    store: Store, synth: Synth, n: int
) -> list[tuple[datetime, dict[str, list[str]]]]:
    """Write n stored items (n / ITEMS_PER_STORY stories) in bulk; returns the stories."""
    story_defs: list[tuple[datetime, dict[str, list[str]]]] = []
    span_s = n / INTAKE_PER_DAY * 86400
    df: Counter[str] = Counter()
    item_rows: list[dict[str, object]] = []
    story_rows: list[dict[str, object]] = []
    member_rows: list[dict[str, object]] = []
    for s in range(n // ITEMS_PER_STORY):
        story = synth.story()
        at0 = START + timedelta(seconds=synth.rng.uniform(0, span_s))
        story_defs.append((at0, story))
        story_id = s * ITEMS_PER_STORY + 1  # a story's id is its first item's
        story_rows.append(
            {"id": story_id, "key": f"bench-{story_id}", "title": "", "first_at": at0,
             "last_at": at0 + timedelta(hours=ITEMS_PER_STORY - 1),
             "item_count": ITEMS_PER_STORY, "source_count": ITEMS_PER_STORY,
             "created_at": at0, "updated_at": at0}
        )  # fmt: skip
        for k in range(ITEMS_PER_STORY):
            item_id = story_id + k
            at = at0 + timedelta(hours=k)
            item = synth.item(story, f"src{k}", f"g{item_id}", at)
            f = features(item)
            vector = weigh(f.counts, df, item_id - 1)
            df.update(f.counts.keys())
            item_rows.append(
                {"id": item_id, "source_id": item.source_id, "dedup_key": item.dedup_key,
                 "guid": item.guid, "url": "", "title": item.title, "text": item.text,
                 "published": at, "language": "", "content_hash": item.content_hash,
                 "fetched_at": at}
            )  # fmt: skip
            member_rows.append(
                {"item_id": item_id, "story_id": story_id, "source_id": item.source_id,
                 "at": at, "similarity": 1.0, "polarity": "", "countries": "", "amounts": "",
                 "vector": json.dumps(vector, separators=(",", ":")), "version": item_id}
            )  # fmt: skip
    term_rows = [{"term": t, "df": c} for t, c in df.items()]
    term_rows.append({"term": "", "df": len(item_rows)})
    async with store.transaction() as tx:
        for table, rows in (
            (items, item_rows),
            (stories, story_rows),
            (story_items, member_rows),
            (term_stats, term_rows),
        ):
            for i in range(0, len(rows), 5000):
                await tx.conn.execute(table.insert(), rows[i : i + 5000])
        if tx.conn.dialect.name == "postgresql":  # ids were given: move the sequence past them
            await tx.conn.execute(
                text("SELECT setval(pg_get_serial_sequence('items', 'id'), max(id)) FROM items")
            )
    if store.engine.dialect.name == "postgresql":  # statistics, as autovacuum would gather
        async with store.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("ANALYZE"))
    return story_defs


def _new_items(
    synth: Synth, story_defs: list[tuple[datetime, dict[str, list[str]]]], now: datetime, tag: str
) -> list[Item]:
    """Half rewrites of stories of the last six days, half new stories."""
    recent = [s for at, s in story_defs if at > now - timedelta(days=6)]
    return [
        synth.item(
            synth.rng.choice(recent) if i % 2 == 0 else synth.story(), "late", f"{tag}{i}", now
        )
        for i in range(MEASURED)
    ]


async def _polls(
    store: Store, index: StoryIndex | None, batches: list[list[Item]]
) -> tuple[float, float, int, float]:
    """Run one transaction per batch; returns seconds in assign, seconds in all, how many
    joined a story, and the CPU seconds (this process, all threads) in assign."""
    in_assign = cpu = 0.0
    joined = 0
    start = time.perf_counter()
    for batch in batches:
        async with store.transaction() as tx:
            new = await tx.insert_new_items(batch)
            if index is not None:
                t0, c0 = time.perf_counter(), time.process_time()
                got = await index.assign(tx.conn, new, tx.now)
                in_assign += time.perf_counter() - t0
                cpu += time.process_time() - c0
                joined += sum(not a.new_story for a in got.values())
    return in_assign, time.perf_counter() - start, joined, cpu


async def measure(url: str, n: int) -> dict[str, float]:
    synth = Synth()
    clock_now = START + timedelta(days=n / INTAKE_PER_DAY)
    store = Store(url, clock=lambda: clock_now)
    await store.open()
    try:
        t0 = time.perf_counter()
        story_defs = await prefill(store, synth, n)
        prefill_s = time.perf_counter() - t0
        index = StoryIndex()  # the default window
        warm = [synth.item(synth.story(), "late", "warm", clock_now)]
        warmup_s, _, _, _ = await _polls(store, index, [warm])
        singles = _new_items(synth, story_defs, clock_now, "one")
        in_assign, whole, joined, cpu = await _polls(store, index, [[i] for i in singles])
        floor = _new_items(synth, story_defs, clock_now, "floor")
        _, floor_s, _, _ = await _polls(store, None, [[i] for i in floor])
        batched = _new_items(synth, story_defs, clock_now, "batch")
        batch_s, _, _, batch_cpu = await _polls(
            store, index, [batched[i : i + BATCH] for i in range(0, len(batched), BATCH)]
        )
    finally:
        await store.close()
    return {
        "items_per_s": round(MEASURED / in_assign, 1),
        "poll_items_per_s": round(MEASURED / whole, 1),
        "floor_poll_items_per_s": round(MEASURED / floor_s, 1),
        "batch_items_per_s": round(MEASURED / batch_s, 1),
        "cpu_ms_per_item": round(cpu / MEASURED * 1000, 2),
        "batch_cpu_ms_per_item": round(batch_cpu / MEASURED * 1000, 2),
        "warmup_s": round(warmup_s, 2),
        "joined_existing": joined,
        "prefill_s": round(prefill_s, 1),
    }


async def two_replicas(url: str, n: int) -> float:
    """Two stores on one database taking turns, one item per poll: items/s in assign."""
    synth = Synth(11)
    clock_now = START + timedelta(days=n / INTAKE_PER_DAY)
    replicas = [Store(url, clock=lambda: clock_now) for _ in range(2)]
    for s in replicas:
        await s.open()
    try:
        story_defs = await prefill(replicas[0], synth, n)
        indexes = [StoryIndex(), StoryIndex()]
        for k in range(2):
            warm = [synth.item(synth.story(), "late", f"warm{k}", clock_now)]
            await _polls(replicas[k], indexes[k], [warm])
        spent = 0.0
        for i, item in enumerate(_new_items(synth, story_defs, clock_now, "two")):
            took, _, _, _ = await _polls(replicas[i % 2], indexes[i % 2], [[item]])
            spent += took
    finally:
        for s in replicas:
            await s.close()
    return round(MEASURED / spent, 1)


async def _wipe(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:  # every table, also those an older version left
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


async def main() -> dict[str, object]:
    out: dict[str, object] = {"bench": "cluster", "measured_items": MEASURED, "batch": BATCH}
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            r = await measure(f"sqlite+aiosqlite:///{tmp}/c{n}.db", n)
            for name, value in r.items():
                out[f"{name}_at_{n}"] = value
    for name in ("items_per_s", "batch_items_per_s"):
        first, mid, last = (out[f"{name}_at_{n}"] for n in SIZES)
        assert isinstance(first, float) and isinstance(mid, float) and isinstance(last, float)
        prefix = "" if name == "items_per_s" else "batch_"
        out[f"{prefix}flat_ratio_100k_vs_1k"] = round(last / first, 2)
        # From 10k on, the window holds the same number of items: the pure store-size effect.
        out[f"{prefix}flat_ratio_100k_vs_10k"] = round(last / mid, 2)
    dsn = os.environ.get("WATCHER_TEST_POSTGRES_DSN")
    if dsn:
        url = str(make_url(dsn).set(drivername="postgresql+asyncpg"))
        await _wipe(url)
        for name, value in (await measure(url, PG_SIZE)).items():
            out[f"pg_{name}_at_{PG_SIZE}"] = value
        await _wipe(url)
        out[f"pg_two_replicas_items_per_s_at_{PG_SIZE}"] = await two_replicas(url, PG_SIZE)
        await _wipe(url)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
