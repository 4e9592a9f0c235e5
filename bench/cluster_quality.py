"""Clustering quality on labelled story sets: pairwise precision/recall per threshold.

Runs every labelled item (tests/testdata/stories/*.jsonl plus the five seeds in
../shared/seeds; the threshold was chosen on these) through the real cluster
stage on a throwaway SQLite store, in publication order, once per threshold,
with a window wide enough that only content separates stories, and for
comparison scores a word 3-shingle Jaccard baseline. Then scores a held-out
set (tests/testdata/stories-heldout, written after the threshold was chosen)
at the default threshold, content only and with the default window. `--orders`
also runs the five seeds in all 120 arrival orders. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from watcher import constants
from watcher.models import Item
from watcher.parse import make_item
from watcher.store import Store
from watcher.story_store import StoryIndex, story_items

REPO = Path(__file__).resolve().parent.parent
STORIES = REPO / "tests" / "testdata" / "stories"
HELDOUT = REPO / "tests" / "testdata" / "stories-heldout"
SEEDS = REPO.parent / "shared" / "seeds"
THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
EVAL_WINDOW_S = 400 * 24 * 3600  # so that only content, not time, separates look-alikes


def labelled_items(directory: Path = STORIES, *, seeds: bool = True) -> list[tuple[str, str, Item]]:
    """(id, story label, item), in publication order."""
    out: list[tuple[str, str, Item]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            obj = json.loads(line)
            item = make_item(
                source_id=obj["source"],
                guid=obj["id"],
                title=obj.get("title", ""),
                text=obj["text"],
                published=datetime.fromisoformat(obj["published"].replace("Z", "+00:00")),
            )
            out.append((obj["id"], obj["story"], item))
    for n, path in enumerate(sorted(SEEDS.glob("0*.txt")) if seeds else []):
        item = make_item(
            source_id=f"seed{n}",
            guid=path.stem,
            text=path.read_text(),
            published=datetime(2026, 2, 4, 14 + 2 * n, tzinfo=UTC),
        )
        out.append((path.stem, "seeds", item))
    out.sort(key=lambda t: (t[2].published or datetime.min.replace(tzinfo=UTC), t[0]))
    return out


def pair_scores(labels: dict[str, str], got: dict[str, str]) -> dict[str, float | int]:
    tp = fp = fn = tn = 0
    for a, b in itertools.combinations(sorted(labels), 2):
        same_true = labels[a] == labels[b]
        same_got = got[a] == got[b]
        tp += same_true and same_got
        fp += (not same_true) and same_got
        fn += same_true and not same_got
        tn += (not same_true) and not same_got
    return {
        "pairs_merged_correctly": tp,
        "pairs_merged_wrongly": fp,
        "pairs_split_wrongly": fn,
        "pairs_split_correctly": tn,
        "precision": round(tp / (tp + fp), 3) if tp + fp else 1.0,
        "recall": round(tp / (tp + fn), 3) if tp + fn else 1.0,
    }


async def cluster(
    items: list[tuple[str, str, Item]],
    threshold: float,
    db: Path,
    window_s: float = EVAL_WINDOW_S,
) -> dict[str, str]:
    store = Store(f"sqlite+aiosqlite:///{db}", clock=lambda: datetime(2026, 3, 1, tzinfo=UTC))
    await store.open()
    index = StoryIndex(window_s=window_s, threshold=threshold)
    got: dict[str, str] = {}
    try:
        async with store.transaction() as tx:
            inserted = await tx.insert_new_items([i for _, _, i in items])
            by_key = {(i.source_id, i.dedup_key): ident for ident, _, i in items}
            await index.assign(tx.conn, inserted, tx.now)
            # Final stories (a later item may have bridged two stories into one).
            rows = await tx.conn.execute(select(story_items.c.item_id, story_items.c.story_id))
            final = {int(r.item_id): int(r.story_id) for r in rows}
            for item_id, item in inserted:
                got[by_key[(item.source_id, item.dedup_key)]] = str(final[item_id])
    finally:
        await store.close()
    return got


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def shingle_baseline(items: list[tuple[str, str, Item]], threshold: float) -> dict[str, str]:
    """Single-link clustering on word 3-shingle Jaccard (what near-dup detectors do)."""
    sh = {ident: _shingles(i.title + " " + i.text) for ident, _, i in items}
    parent = {ident: ident for ident, _, _ in items}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for (a, _, _), (b, _, _) in itertools.combinations(items, 2):
        union = sh[a] | sh[b]
        if union and len(sh[a] & sh[b]) / len(union) >= threshold:
            parent[find(a)] = find(b)
    return {ident: find(ident) for ident, _, _ in items}


async def seed_orders(tmp: Path) -> dict[str, int]:
    """The five seeds alone, in every arrival order (120): how often they make one story."""
    seeds = [t for t in labelled_items() if t[1] == "seeds"]
    one = 0
    worst = 1
    for n, order in enumerate(itertools.permutations(seeds)):
        ordered = [
            (
                ident,
                label,
                item._replace(published=datetime(2026, 2, 4, 10 + k, tzinfo=UTC)),
            )
            for k, (ident, label, item) in enumerate(order)
        ]
        got = await cluster(ordered, constants.CLUSTER_THRESHOLD, tmp / f"o{n}.db")
        stories = len(set(got.values()))
        one += stories == 1
        worst = max(worst, stories)
    return {"seed_orders": 120, "seed_orders_one_story": one, "seed_orders_most_stories": worst}


async def main() -> dict[str, object]:
    items = labelled_items()
    labels = {ident: label for ident, label, _ in items}
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, t in enumerate(THRESHOLDS):
            got = await cluster(items, t, Path(tmp) / f"q{n}.db")
            results[f"threshold_{t}"] = pair_scores(labels, got)
            if "-v" in sys.argv:
                results[f"threshold_{t}_stories"] = len(set(got.values()))
        if "--orders" in sys.argv:
            results.update(await seed_orders(Path(tmp)))
        # Written after the threshold was chosen and never used to tune it.
        held = labelled_items(HELDOUT, seeds=False)
        held_labels = {ident: label for ident, label, _ in held}
        got = await cluster(held, constants.CLUSTER_THRESHOLD, Path(tmp) / "heldout.db")
        results["heldout_items"] = len(held)
        results["heldout_stories"] = len(set(held_labels.values()))
        results["heldout_content_only"] = pair_scores(held_labels, got)
        got = await cluster(
            held, constants.CLUSTER_THRESHOLD, Path(tmp) / "heldout-window.db",
            window_s=constants.CLUSTER_WINDOW_S,
        )  # fmt: skip
        results["heldout_with_default_window"] = pair_scores(held_labels, got)
    for t in (0.1, 0.3, 0.5):
        results[f"baseline_shingle_jaccard_{t}"] = pair_scores(labels, shingle_baseline(items, t))
    return {
        "items": len(items),
        "stories": len(set(labels.values())),
        "true_pairs": sum(
            labels[a] == labels[b] for a, b in itertools.combinations(sorted(labels), 2)
        ),
        **results,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
