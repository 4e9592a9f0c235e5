"""Stories in the store: the cluster stage's tables and its candidate index.

Tables (created with the rest of the schema, on SQLite and PostgreSQL alike):

- ``stories``: one row per story (key, first/last time, item and source counts);
- ``story_items``: which story each item joined, with its TF-IDF vector and
  headline cues, so later items are compared against it;
- ``story_keys``: the inverted index, (distinctive key, time) -> story, so
  finding candidate stories is an index lookup whose cost does not grow with
  the store (the time window bounds each posting list);
- ``term_stats``: document frequencies learned from the stream (the row with
  the empty term counts documents).

`StoryIndex.assign()` runs inside the pipeline's transaction, so an item, its
story and its alerts are stored together or not at all. An item that matches
several stories bridges them: the oldest absorbs the others (``merged_into``
points from an absorbed story to its absorber, and its alerts move unless the
absorber already alerted for that rule).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    case,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from watcher import constants
from watcher.cluster import (
    Features,
    features,
    index_keys,
    shared_specifics,
    similarity,
    vetoed,
    weigh,
)
from watcher.models import Item
from watcher.store import UTCDateTime, _Id, _insert, alerts, items, metadata

_DOCS = ""  # the term_stats row that counts documents

stories = Table(
    "stories",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("title", Text, nullable=False),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("source_count", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("merged_into", _Id, ForeignKey("stories.id")),  # set when absorbed by a bridge
)

story_items = Table(
    "story_items",
    metadata,
    Column("item_id", _Id, ForeignKey("items.id"), primary_key=True),
    Column("story_id", _Id, ForeignKey("stories.id"), nullable=False),
    Column("source_id", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("similarity", Float, nullable=False),
    Column("polarity", String(16), nullable=False),
    Column("countries", String(200), nullable=False),
    Column("amounts", String(200), nullable=False),
    Column("vector", Text, nullable=False),
    Index("ix_story_items_story", "story_id", "at"),
)

story_keys = Table(
    "story_keys",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("key", String(160), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("story_id", _Id, ForeignKey("stories.id"), nullable=False),
    Index("ix_story_keys_key_at", "key", "at"),
)

term_stats = Table(
    "term_stats",
    metadata,
    Column("term", String(160), primary_key=True),
    Column("df", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class StoryAssignment:
    """Where an item went: a new story, or an existing one it now also reports."""

    story_id: int
    story_key: str
    new_story: bool
    similarity: float
    item_count: int
    source_count: int
    merged: tuple[str, ...] = ()  # keys of stories this item bridged into this one


@dataclass(frozen=True)
class StoryInfo:
    id: int
    key: str
    title: str
    first_at: datetime
    last_at: datetime
    item_count: int
    source_count: int
    item_ids: tuple[int, ...]
    sources: tuple[str, ...]


def _chunks(seq: Sequence[str], n: int = 500) -> list[Sequence[str]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


class StoryIndex:
    """Assigns items to stories. Keyword-only options, all with defaults from constants."""

    def __init__(
        self,
        *,
        window_s: float = constants.CLUSTER_WINDOW_S,
        threshold: float = constants.CLUSTER_THRESHOLD,
    ) -> None:
        self.window = timedelta(seconds=window_s)
        self.threshold = threshold

    async def assign(
        self, conn: AsyncConnection, batch: Sequence[tuple[int, Item]], now: datetime
    ) -> dict[int, StoryAssignment]:
        """Put each new item into a story (existing or new); returns item id -> assignment."""
        out: dict[int, StoryAssignment] = {}
        for item_id, item in batch:
            out[item_id] = await self._assign_one(conn, item_id, item, now)
        return out

    async def _assign_one(
        self, conn: AsyncConnection, item_id: int, item: Item, now: datetime
    ) -> StoryAssignment:
        feats = features(item)
        # Frequencies before this document: the upsert returns them counted in.
        df = {t: n - 1 for t, n in (await self._count_document(conn, sorted(feats.counts))).items()}
        docs = df.pop(_DOCS, 0)
        vector = weigh(feats.counts, df, docs)
        at = item.published if item.published is not None and item.published <= now else now

        matches = await self._matching_stories(conn, vector, feats, at)
        # The same content within the window (a syndicated copy, or a Federal
        # Register document and its Public Inspection filing, which share an
        # identity) is the same story, whatever the similarity says.
        same = await conn.scalar(
            select(story_items.c.story_id)
            .join(items, items.c.id == story_items.c.item_id)
            .where(
                items.c.content_hash == item.content_hash,
                items.c.id != item_id,
                story_items.c.at >= at - self.window,
                story_items.c.at <= at + self.window,
            )
            .order_by(story_items.c.story_id)
            .limit(1)
        )
        if same is not None:
            matches.setdefault(int(same), 1.0)
        merged: tuple[str, ...] = ()
        best_sim = max(matches.values(), default=0.0)
        if not matches:
            story_id = await self._new_story(conn, item_id, item, at, now)
            new_story = True
        else:
            # The oldest matching story absorbs the others this item bridges.
            story_id, new_story = min(matches), False
            if len(matches) > 1:
                merged = await self._merge(conn, story_id, sorted(matches)[1:], now)
        await conn.execute(
            _insert(conn, story_items).values(
                item_id=item_id,
                story_id=story_id,
                source_id=item.source_id,
                at=at,
                similarity=best_sim,
                polarity=feats.polarity,
                countries=",".join(sorted(feats.countries))[:200],
                amounts=",".join(sorted(feats.amounts))[:200],
                vector=json.dumps(vector, separators=(",", ":")),
            )
        )
        keys = index_keys(vector, constants.CLUSTER_INDEX_KEYS)
        if keys:
            await conn.execute(
                _insert(conn, story_keys),
                [{"key": k, "at": at, "story_id": story_id} for k in keys],
            )
        sources_in_story = (
            select(func.count(story_items.c.source_id.distinct()))
            .where(story_items.c.story_id == story_id)
            .scalar_subquery()
        )
        row = (
            await conn.execute(
                update(stories)
                .where(stories.c.id == story_id)
                .values(
                    item_count=select(func.count())
                    .where(story_items.c.story_id == story_id)
                    .scalar_subquery(),
                    source_count=sources_in_story,
                    last_at=case(
                        (stories.c.last_at < at, literal(at, UTCDateTime())),
                        else_=stories.c.last_at,
                    ),
                    updated_at=now,
                )
                .returning(stories.c.key, stories.c.item_count, stories.c.source_count)
            )
        ).one()
        return StoryAssignment(
            story_id=story_id,
            story_key=row.key,
            new_story=new_story,
            similarity=best_sim,
            item_count=int(row.item_count),
            source_count=int(row.source_count),
            merged=merged,
        )

    async def _count_document(self, conn: AsyncConnection, terms: list[str]) -> dict[str, int]:
        """Count one more document for each term; returns the new document frequencies.

        Every ingest locks the document-count row first, so on PostgreSQL concurrent
        ingests (several replicas) take their turns here and never deadlock, and a
        copy arriving on another replica sees the story the first one created.
        """
        stmt = _insert(conn, term_stats)
        stmt = stmt.on_conflict_do_update(
            index_elements=["term"], set_={"df": term_stats.c.df + 1}
        ).returning(term_stats.c.term, term_stats.c.df)
        out: dict[str, int] = {}
        for chunk in _chunks([_DOCS, *terms]):
            rows = await conn.execute(stmt, [{"term": t, "df": 1} for t in chunk])
            out.update({r.term: int(r.df) for r in rows})
        return out

    async def _matching_stories(
        self, conn: AsyncConnection, vector: dict[str, float], feats: Features, at: datetime
    ) -> dict[int, float]:
        """Candidate stories this item belongs to: story id -> best similarity.

        A story with an item whose headline vetoes this one (a different event)
        is never a match, however close its other items are.
        """
        lookup = index_keys(vector, constants.CLUSTER_LOOKUP_KEYS)
        if not lookup:
            return {}
        candidates = (
            select(story_keys.c.story_id)
            .where(
                story_keys.c.key.in_(lookup),
                story_keys.c.at >= at - self.window,
                story_keys.c.at <= at + self.window,
            )
            .group_by(story_keys.c.story_id)
            .order_by(func.count().desc(), story_keys.c.story_id.desc())
            .limit(constants.CLUSTER_MAX_CANDIDATES)
        )
        rank = (
            func.row_number()
            .over(partition_by=story_items.c.story_id, order_by=story_items.c.at.desc())
            .label("rank")
        )
        inner = (
            select(
                story_items.c.story_id,
                story_items.c.polarity,
                story_items.c.countries,
                story_items.c.amounts,
                story_items.c.vector,
                rank,
            )
            .where(story_items.c.story_id.in_(candidates.scalar_subquery()))
            .subquery()
        )
        rows = await conn.execute(
            select(inner).where(inner.c.rank <= constants.CLUSTER_ITEMS_PER_STORY_COMPARED)
        )
        best: dict[int, float] = {}
        vetoing: set[int] = set()
        for r in rows:
            other = Features(
                counts={},
                polarity=r.polarity,
                countries=frozenset(c for c in r.countries.split(",") if c),
                amounts=frozenset(a for a in r.amounts.split(",") if a),
            )
            if vetoed(feats, other):
                vetoing.add(int(r.story_id))
                continue
            other_vector = json.loads(r.vector)
            sim = similarity(vector, other_vector)
            if (
                sim >= self.threshold
                and sim > best.get(int(r.story_id), 0.0)
                and shared_specifics(vector, other_vector) >= constants.CLUSTER_MIN_SHARED_SPECIFICS
            ):
                best[int(r.story_id)] = sim
        return {k: v for k, v in best.items() if k not in vetoing}

    async def _merge(
        self, conn: AsyncConnection, target: int, others: list[int], now: datetime
    ) -> tuple[str, ...]:
        """Fold `others` into `target`: items, index keys and alerts move; returns their keys.

        An alert of an absorbed story moves to the target unless the target
        already has one for that rule (both were sent; the older one stays).
        """
        rows = await conn.execute(
            select(stories.c.id, stories.c.key).where(stories.c.id.in_([target, *others]))
        )
        keys = {int(r.id): str(r.key) for r in rows}
        await conn.execute(
            update(story_items).where(story_items.c.story_id.in_(others)).values(story_id=target)
        )
        await conn.execute(
            update(story_keys).where(story_keys.c.story_id.in_(others)).values(story_id=target)
        )
        taken = set(
            (
                await conn.execute(
                    select(alerts.c.rule_id).where(alerts.c.story_key == keys[target])
                )
            ).scalars()
        )
        moving = await conn.execute(
            select(alerts.c.id, alerts.c.rule_id)
            .where(alerts.c.story_key.in_([keys[o] for o in others]))
            .order_by(alerts.c.id)
        )
        for alert in moving.all():
            if alert.rule_id not in taken:
                taken.add(alert.rule_id)
                await conn.execute(
                    update(alerts).where(alerts.c.id == alert.id).values(story_key=keys[target])
                )
        both = stories.alias("merging")  # an alias, so the subqueries do not correlate
        together = both.c.id.in_([target, *others])
        first = select(func.min(both.c.first_at)).where(together).scalar_subquery()
        last = select(func.max(both.c.last_at)).where(together).scalar_subquery()
        await conn.execute(
            update(stories)
            .where(stories.c.id == target)
            .values(first_at=first, last_at=last, updated_at=now)
        )
        await conn.execute(
            update(stories)
            .where(stories.c.id.in_(others))
            .values(merged_into=target, item_count=0, source_count=0, updated_at=now)
        )
        return tuple(keys[o] for o in others)

    async def _new_story(
        self, conn: AsyncConnection, item_id: int, item: Item, at: datetime, now: datetime
    ) -> int:
        row = (
            await conn.execute(
                _insert(conn, stories)
                .values(
                    key=f"{item.content_hash[:16]}-{item_id}",
                    title=item.title[:1000],
                    first_at=at,
                    last_at=at,
                    item_count=0,
                    source_count=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(stories.c.id)
            )
        ).one()
        return int(row.id)


def sources_by_key(conn: Connection, keys: Sequence[str]) -> dict[str, list[str]]:
    """Each story's sources, first reporter first, for many story keys in one query.

    A story merged into another reports the sources of the story that absorbed it.
    """
    if not keys:
        return {}
    out: dict[str, list[str]] = {}
    for key, source in conn.execute(_SOURCES_BY_KEY, {"keys": sorted(set(keys))}):
        sources = out.setdefault(key, [])
        if source not in sources:
            sources.append(source)
    return out


_named = stories.alias("named")
_SOURCES_BY_KEY = (  # built once: the outbox runs it on every claim
    select(_named.c.key, story_items.c.source_id)
    .join(story_items, story_items.c.story_id == func.coalesce(_named.c.merged_into, _named.c.id))
    .where(_named.c.key.in_(bindparam("keys", expanding=True)))
    .order_by(_named.c.key, story_items.c.at, story_items.c.item_id)
)


async def story_info(conn: AsyncConnection, key: str) -> StoryInfo | None:
    """A story with its items (oldest first) and sources, by key."""
    s = (await conn.execute(select(stories).where(stories.c.key == key))).first()
    while s is not None and s.merged_into is not None:
        s = (await conn.execute(select(stories).where(stories.c.id == s.merged_into))).first()
    if s is None:
        return None
    rows = (
        await conn.execute(
            select(story_items.c.item_id, story_items.c.source_id)
            .where(story_items.c.story_id == s.id)
            .order_by(story_items.c.at, story_items.c.item_id)
        )
    ).all()
    sources: list[str] = []
    for r in rows:
        if r.source_id not in sources:
            sources.append(r.source_id)
    return StoryInfo(
        id=int(s.id),
        key=s.key,
        title=s.title,
        first_at=s.first_at,
        last_at=s.last_at,
        item_count=int(s.item_count),
        source_count=int(s.source_count),
        item_ids=tuple(int(r.item_id) for r in rows),
        sources=tuple(sources),
    )


def item_columns() -> Any:
    """Columns to map stored item ids back to what the input called them."""
    return select(items.c.id, items.c.source_id, items.c.dedup_key)
