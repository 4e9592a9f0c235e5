"""Cluster benchmark: items/s through the cluster stage with 1k, 10k and 100k stored items.

Prints one JSON object. The issue's floor is flatness: the cost per item must
not grow with the store (an index lookup for candidates, not a scan), so the
rate at 100k stored items is compared with the rate at 1k measured in the same
run (`flat_ratio_100k_vs_1k`, 1.0 = perfectly flat).

Synthetic stories (random names, amounts and terms from a fixed vocabulary,
several rewrites each) arrive at a steady intake of INTAKE_PER_DAY items a
day, so a bigger store is an older one and the clustering window (the default
7 days) holds as many items at 10k as at 100k; the prefill writes the same rows the cluster stage
writes (vectors computed by the real code) in bulk, then `MEASURED` new items,
half of them rewrites of stored stories and half new stories, go through the
real `StoryIndex.assign` on SQLite, one transaction per item as a poll does.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from watcher import constants  # noqa: E402
from watcher.cluster import features, index_keys, weigh  # noqa: E402
from watcher.models import Item  # noqa: E402
from watcher.parse import make_item  # noqa: E402
from watcher.store import Store, items  # noqa: E402
from watcher.story_store import StoryIndex, stories, story_items, story_keys, term_stats  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
MEASURED = 300
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
    key_rows: list[dict[str, object]] = []
    vectors: list[tuple[int, int, datetime, dict[str, float], str]] = []
    for s in range(n // ITEMS_PER_STORY):
        story = synth.story()
        at0 = START + timedelta(seconds=synth.rng.uniform(0, span_s))
        story_defs.append((at0, story))
        story_rows.append(
            {"id": s + 1, "key": f"bench-{s + 1}", "title": "", "first_at": at0, "last_at": at0,
             "item_count": ITEMS_PER_STORY, "source_count": ITEMS_PER_STORY,
             "created_at": at0, "updated_at": at0}
        )  # fmt: skip
        for k in range(ITEMS_PER_STORY):
            item_id = s * ITEMS_PER_STORY + k + 1
            at = at0 + timedelta(hours=k)
            item = synth.item(story, f"src{k}", f"g{item_id}", at)
            f = features(item)
            df.update(f.counts.keys())
            vectors.append((item_id, s + 1, at, weigh(f.counts, df, item_id), item.source_id))
            item_rows.append(
                {"id": item_id, "source_id": item.source_id, "dedup_key": item.dedup_key,
                 "guid": item.guid, "url": "", "title": item.title, "text": item.text,
                 "published": at, "language": "", "content_hash": item.content_hash,
                 "fetched_at": at}
            )  # fmt: skip
    for item_id, story_id, at, vector, source in vectors:
        member_rows.append(
            {"item_id": item_id, "story_id": story_id, "source_id": source, "at": at,
             "similarity": 1.0, "polarity": "", "countries": "", "amounts": "",
             "vector": json.dumps(vector, separators=(",", ":"))}
        )  # fmt: skip
        key_rows.extend(
            {"key": key, "at": at, "story_id": story_id}
            for key in index_keys(vector, constants.CLUSTER_INDEX_KEYS)
        )
    term_rows = [{"term": t, "df": c} for t, c in df.items()]
    term_rows.append({"term": "", "df": len(item_rows)})
    async with store.transaction() as tx:
        for table, rows in (
            (items, item_rows),
            (stories, story_rows),
            (story_items, member_rows),
            (story_keys, key_rows),
            (term_stats, term_rows),
        ):
            for i in range(0, len(rows), 5000):
                await tx.conn.execute(table.insert(), rows[i : i + 5000])
    return story_defs


async def measure(n: int, tmp: Path) -> dict[str, float]:
    synth = Synth()
    clock_now = START + timedelta(days=n / INTAKE_PER_DAY)
    store = Store(f"sqlite+aiosqlite:///{tmp}/c{n}.db", clock=lambda: clock_now)
    await store.open()
    try:
        t0 = time.perf_counter()
        story_defs = await prefill(store, synth, n)
        prefill_s = time.perf_counter() - t0
        index = StoryIndex()  # the default window
        recent = [s for at, s in story_defs if at > clock_now - timedelta(days=6)]
        new_items = []
        for i in range(MEASURED):
            story = synth.rng.choice(recent) if i % 2 == 0 else synth.story()
            new_items.append(synth.item(story, "late", f"new{i}", clock_now))
        start = time.perf_counter()
        joined = 0
        for item in new_items:
            async with store.transaction() as tx:
                new = await tx.insert_new_items([item])
                got = await index.assign(tx.conn, new, tx.now)
                joined += sum(not a.new_story for a in got.values())
        rate = MEASURED / (time.perf_counter() - start)
    finally:
        await store.close()
    return {
        "items_per_s": round(rate, 1),
        "joined_existing": joined,
        "prefill_s": round(prefill_s, 1),
    }


async def main() -> dict[str, object]:
    out: dict[str, object] = {"bench": "cluster", "measured_items": MEASURED}
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            r = await measure(n, Path(tmp))
            out[f"items_per_s_at_{n}"] = r["items_per_s"]
            out[f"joined_existing_at_{n}"] = r["joined_existing"]
            out[f"prefill_s_at_{n}"] = r["prefill_s"]
    first, last = out[f"items_per_s_at_{SIZES[0]}"], out[f"items_per_s_at_{SIZES[-1]}"]
    assert isinstance(first, float) and isinstance(last, float)
    out["flat_ratio_100k_vs_1k"] = round(last / first, 2)
    # From 10k on, the window holds the same number of items: the pure store-size effect.
    mid = out[f"items_per_s_at_{SIZES[1]}"]
    assert isinstance(mid, float)
    out["flat_ratio_100k_vs_10k"] = round(last / mid, 2)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
