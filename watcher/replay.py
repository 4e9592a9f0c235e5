"""`watcher replay`: the whole pipeline over a file, in a throwaway store, no delivery.

Items go through the same `Pipeline.ingest` as a poll (dedup, cluster, match,
alert), one at a time in publication order, as if they arrived one by one.
No subscription is configured, so nothing is routed or sent. The result is
one record per alert, the stable interface other tools read:

    {"rule": ..., "event_type": ..., "story": ..., "items": [ids], "sources": [...]}
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from watcher.fetch import Fetcher, FetchLimits
from watcher.metrics import Metrics
from watcher.models import Clock, Item
from watcher.pipeline import Pipeline
from watcher.route import Router
from watcher.rules import Matcher
from watcher.store import Store
from watcher.story_store import StoryIndex, item_columns, story_info


def _arrival_order(pair: tuple[str, Item]) -> datetime:
    return pair[1].published or datetime.min.replace(tzinfo=UTC)


async def replay(
    items: list[tuple[str, Item]],
    *,
    matcher: Matcher,
    clock: Clock,
    stories: StoryIndex | None = None,
) -> list[dict[str, Any]]:
    """Run `items` ((input id, item) pairs) through the pipeline; returns one record per alert."""
    ids = {(item.source_id, item.dedup_key): ident for ident, item in items}
    with tempfile.TemporaryDirectory(prefix="watcher-replay-") as tmp:
        store = Store(f"sqlite+aiosqlite:///{Path(tmp) / 'replay.db'}", clock=clock)
        await store.open()
        try:
            async with aiohttp.ClientSession() as session:  # never used: nothing is fetched
                pipeline = Pipeline(
                    store=store,
                    fetcher=Fetcher(session=session, limits=FetchLimits(), clock=clock),
                    matcher=lambda: matcher,
                    router=Router([]),
                    metrics=Metrics(),
                    clock=clock,
                    stories=stories,
                )
                for _, item in sorted(items, key=_arrival_order):
                    await pipeline.ingest(item.source_id, [item], record_source=False)
            return await _records(store, ids)
        finally:
            await store.close()


async def _records(store: Store, ids: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with store.engine.connect() as conn:
        names = {
            r.id: ids.get((r.source_id, r.dedup_key), r.dedup_key)
            for r in await conn.execute(item_columns())
        }
        for alert in await store.list_alerts(limit=1_000_000):
            story = await story_info(conn, alert.story_key)
            item_ids = story.item_ids if story else (alert.item_id,)
            out.append(
                {
                    "rule": alert.rule_id,
                    "event_type": alert.event_type.value,
                    "story": alert.story_key,
                    "items": [names[i] for i in item_ids],
                    "sources": list(story.sources) if story else [alert.source_id],
                }
            )
    return out
