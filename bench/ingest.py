"""Ingest benchmark: parse the real-feeds corpus, match it, dedup it through the store.

Prints one JSON object. Reads ../shared/corpus/real-feeds (skips with a reason
when absent). The floor named in issue 2: batched INSERT ... ON CONFLICT DO
NOTHING RETURNING through SQLAlchemy async dedups ~40,000-100,000 keys/s on
SQLite (WAL, synchronous=NORMAL); one row per transaction ~1,650/s. Both are
measured here in the same run.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from watcher.errors import ParseError  # noqa: E402
from watcher.models import Item, utc_now  # noqa: E402
from watcher.parse import make_item, parse_feed  # noqa: E402
from watcher.rules import Matcher, load_rules  # noqa: E402
from watcher.store import Store  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "real-feeds"


def parse_corpus() -> tuple[list[Item], float, int]:
    items: list[Item] = []
    bad = 0
    start = time.perf_counter()
    for path in sorted(CORPUS.iterdir()):
        if path.suffix in (".md",):
            continue
        try:
            items.extend(parse_feed(path.read_bytes(), source_id=path.stem[:60]))
        except ParseError:
            bad += 1
    return items, time.perf_counter() - start, bad


async def dedup_rates(n: int) -> dict[str, float]:
    synthetic = [
        make_item(source_id="bench", guid=f"g{i}", title=f"t{i}", text="x") for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite+aiosqlite:///{tmp}/b.db", clock=utc_now)
        await store.open()
        try:
            start = time.perf_counter()
            for i in range(0, n, 1000):
                async with store.transaction() as tx:
                    await tx.insert_new_items(synthetic[i : i + 1000])
            batched_new = n / (time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(0, n, 1000):
                async with store.transaction() as tx:
                    await tx.insert_new_items(synthetic[i : i + 1000])
            batched_seen = n / (time.perf_counter() - start)
            single_n = min(n, 2000)
            single = [
                make_item(source_id="one", guid=f"g{i}", title="t", text="x")
                for i in range(single_n)
            ]
            start = time.perf_counter()
            for it in single:
                async with store.transaction() as tx:
                    await tx.insert_new_items([it])
            one_per_tx = single_n / (time.perf_counter() - start)
        finally:
            await store.close()
    return {
        "dedup_new_keys_per_s": round(batched_new),
        "dedup_seen_keys_per_s": round(batched_seen),
        "floor_one_row_per_tx_keys_per_s": round(one_per_tx),
    }


def main() -> None:
    if not CORPUS.is_dir():
        print(json.dumps({"skipped": f"{CORPUS} is absent"}))
        return
    items, parse_s, bad = parse_corpus()
    rules, errors = load_rules([REPO / "rules"])
    matcher = Matcher(rules)
    start = time.perf_counter()
    hits = sum(len(matcher.match(i)) for i in items)
    match_s = time.perf_counter() - start
    result: dict[str, object] = {
        "bench": "ingest",
        "corpus_items": len(items),
        "corpus_bad_feeds": bad,
        "parse_items_per_s": round(len(items) / parse_s),
        "rules": len(rules),
        "rule_errors": len(errors),
        "match_items_per_s": round(len(items) / match_s),
        "hits": hits,
    }
    result.update(asyncio.run(dedup_rates(50_000)))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
