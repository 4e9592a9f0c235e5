"""Stories in the store: the cluster stage's tables and its in-memory candidate index.

Tables (created with the rest of the schema, on SQLite and PostgreSQL alike):

- ``stories``: one row per story (key, first/last time, item and source
  counts); a story's id is the id of the item that started it, so ids follow
  the order items were stored and a new story needs no round trip for its id;
- ``story_items``: which story each item joined, with its TF-IDF vector and
  headline cues, and the ``version`` (see below) of the assignment that last
  wrote the row;
- ``term_stats``: document frequencies learned from the stream. The row with
  the empty term counts documents, and is the cluster stage's lock and clock.

Finding candidates is an index lookup, not a scan: each process keeps the
stories of the recent past (every story with an item at or after a moving
low-water mark, ``2 x window`` back by default) in memory, with an inverted
index from each item's most distinctive keys to the items, kept sorted by
time so a lookup touches only the time window around the new item. Nothing
is read from the store per item; an assignment is three statements whatever
the batch size (the document counts, the stories, the items; four when a
batch both starts stories and grows others).

Keeping that memory right, across restarts and replicas, rests on the
document-count row. Every assignment first upserts its terms' counts together
with that row, which (1) takes the row's lock, so assignments take turns and
each sees what the previous one committed (on PostgreSQL the lock is held to
the end of the poll's transaction; on SQLite writers take turns anyway),
(2) returns the document count, which grows with every committed assignment
and so serves as a version, stamped on the ``story_items`` rows each
assignment writes, and (3) swaps in a random token and returns the previous
one. If the previous token is the one this process wrote last, nothing
happened in between and the memory is exact; otherwise (another replica
wrote, or this process's last transaction rolled back) the stories that
changed since the version the memory holds are read back, in one query. A
process that starts, or meets an item older than its memory reaches, loads
what it lacks the same way. All of it happens after the features, which cost
most, are computed, so the time the lock is held is a few statements.

`StoryIndex.assign()` runs inside the pipeline's transaction, so an item, its
story and its alerts are stored together or not at all. An item that matches
several stories bridges them: the oldest absorbs the others (``merged_into``
points from an absorbed story to its absorber, and its alerts move unless the
absorber already alerted for that rule).
"""

from __future__ import annotations

import heapq
import json
import secrets
import sys
import weakref
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import chain
from operator import itemgetter, neg
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from watcher import constants
from watcher.asyncdb import AsyncConnection
from watcher.cluster import Features, features, is_document, similarity, vetoed, weigh
from watcher.models import Item
from watcher.store import UTCDateTime, _Id, _insert, alerts, items, metadata

_DOCS = ""  # the term_stats row that counts documents

stories = Table(
    "stories",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=False),  # the first item's id
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
    # the document count after the assignment that last wrote this row
    Column("version", BigInteger, nullable=False, server_default="0"),
    Index("ix_story_items_story", "story_id", "at"),
    Index("ix_story_items_at", "at"),
    Index("ix_story_items_version", "version"),
)

# The candidate index in the store: each item's index keys (what `_Memory.postings` holds
# for the recent past), so a lookup that reaches back past the memory is an index scan.
story_keys = Table(
    "story_keys",
    metadata,
    Column("key", String(160), primary_key=True),
    Column("at", UTCDateTime, primary_key=True),
    Column("item_id", _Id, ForeignKey("items.id"), primary_key=True),
)

term_stats = Table(
    "term_stats",
    metadata,
    Column("term", String(160), primary_key=True),
    Column("df", BigInteger, nullable=False),
    # On the document-count row only: who assigned last, and who before them.
    Column("token", String(32)),
    Column("prev_token", String(32)),
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


def _chunks(seq: Sequence[Any], n: int = 500) -> list[Sequence[Any]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


@dataclass(eq=False, slots=True)
class _Member:
    """A stored item as the cluster stage compares it.

    One per item of the recent past, so it is kept small: slots, and nothing that
    can be worked out from the vector (its index keys, its names, amounts and dates).
    """

    item_id: int
    story_id: int
    at: float  # POSIX seconds
    source_id: str
    content_hash: str
    cues: Features  # headline cues only (no counts)
    vector: dict[str, float]

    def index_keys(self) -> list[str]:
        """Its most distinctive keys: what the inverted index holds."""
        return _ranked(self.vector)[: constants.CLUSTER_INDEX_KEYS]


@dataclass(eq=False, slots=True)
class _Story:
    id: int
    key: str
    title: str
    first_at: datetime
    last_at: datetime
    created_at: datetime
    members: list[tuple[float, int]] = field(default_factory=list)  # (at, item id), sorted
    sources: Counter[str] = field(default_factory=Counter)
    merged_into: int | None = None


@dataclass
class _Pending:
    """An assignment this process made whose transaction was not yet known to commit."""

    token: str
    version: int
    touched: set[int] = field(default_factory=set)  # stories it changed or created


class _Memory:
    """The recent past of one database: stories, their items, and the inverted index.

    Holds every story that has an item at or after `low` (whole stories, so
    counts, sources and the most recent items are exact), as of `version`.
    """

    def __init__(self) -> None:
        self.members: dict[int, _Member] = {}
        self.stories: dict[int, _Story] = {}
        self.postings: dict[str, _Posting] = {}
        self.by_hash: dict[str, list[int]] = {}
        self.loaded = False
        self.low = float("inf")
        self.version = 0
        self.head: str | None = None  # the token of the last assignment `version` includes
        self.pending: _Pending | None = None
        self.evicted_at = float("-inf")
        self.shrunk = False  # `low` was raised to keep under the cap, not by time
        # Bounds on every story memory does not hold: the most items one has, its newest id.
        self.gone_items = 0
        self.gone_id = -1

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    # -- members

    def add(self, m: _Member, story: _Story, keys: Sequence[str]) -> None:
        """Add `m` to `story`, indexed under `keys` (`m.index_keys()`, passed in when known)."""
        self.members[m.item_id] = m
        insort(story.members, (m.at, m.item_id))
        story.sources[m.source_id] += 1
        for k in keys:
            posting = self.postings.get(k)
            if posting is None:
                posting = self.postings[k] = _Posting()
            i = bisect_right(posting.times, m.at)
            posting.times.insert(i, m.at)
            posting.items.insert(i, m.item_id)
            posting.stories.insert(i, m.story_id)
        self.by_hash.setdefault(m.content_hash, []).append(m.item_id)

    def add_many(self, loaded: Sequence[tuple[_Member, _Story]]) -> None:
        """`add` for many members at once (a load): each posting list is sorted once."""
        new: dict[str, list[tuple[float, int, int]]] = {}
        for m, story in loaded:
            self.members[m.item_id] = m
            story.members.append((m.at, m.item_id))
            story.sources[m.source_id] += 1
            for k in m.index_keys():
                entry = (m.at, m.item_id, m.story_id)
                got = new.get(k)
                if got is None:
                    new[k] = [entry]
                else:
                    got.append(entry)
            self.by_hash.setdefault(m.content_hash, []).append(m.item_id)
        for story in {id(story): story for _, story in loaded}.values():
            story.members.sort()
        for k, entries in new.items():
            posting = self.postings.get(k)
            if posting is None:
                posting = self.postings[k] = _Posting()
            elif len(entries) < _MERGE_POSTINGS_FROM:  # a few: insert them where they go
                for at, item_id, story_id in entries:
                    i = bisect_right(posting.times, at)
                    posting.times.insert(i, at)
                    posting.items.insert(i, item_id)
                    posting.stories.insert(i, story_id)
                continue
            else:
                entries.extend(zip(posting.times, posting.items, posting.stories, strict=True))
            entries.sort()
            posting.times = [e[0] for e in entries]
            posting.items = [e[1] for e in entries]
            posting.stories = [e[2] for e in entries]

    def remove(self, item_id: int) -> None:
        m = self.members.pop(item_id)
        story = self.stories.get(m.story_id)
        if story is not None:
            self._leave(m, story)
        for k in m.index_keys():
            posting = self.postings[k]
            i = posting.find(m)
            del posting.times[i], posting.items[i], posting.stories[i]
            if not posting.times:
                del self.postings[k]
        same = self.by_hash[m.content_hash]
        same.remove(item_id)
        if not same:
            del self.by_hash[m.content_hash]

    def _leave(self, m: _Member, story: _Story) -> None:
        story.members.remove((m.at, m.item_id))
        story.sources[m.source_id] -= 1
        if not story.sources[m.source_id]:
            del story.sources[m.source_id]

    def move(self, m: _Member, to: _Story) -> None:
        old = self.stories.get(m.story_id)
        if old is not None:
            self._leave(m, old)
        m.story_id = to.id
        for k in m.index_keys():
            posting = self.postings[k]
            posting.stories[posting.find(m)] = to.id
        insort(to.members, (m.at, m.item_id))
        to.sources[m.source_id] += 1

    def drop_story(self, story_id: int) -> None:
        story = self.stories.get(story_id)
        if story is None:
            return
        self.gone_items = max(self.gone_items, len(story.members))
        self.gone_id = max(self.gone_id, story_id)
        for _, item_id in list(story.members):
            self.remove(item_id)
        del self.stories[story_id]

    # -- lookups

    def candidates(self, keys: Sequence[str], lo: float, hi: float) -> list[int]:
        """The stories with most index hits among `keys` in [lo, hi] (then the newest)."""
        return [story_id for story_id, _ in self._candidates(keys, lo, hi)]

    def weakest(self, keys: Sequence[str], lo: float, hi: float) -> tuple[int, int] | None:
        """(hits, id) of the last story `candidates` picks, when it picks a full set."""
        chosen = self._candidates(keys, lo, hi)
        if len(chosen) < constants.CLUSTER_MAX_CANDIDATES:
            return None
        least = min(hits for _, hits in chosen)
        return least, min(story_id for story_id, hits in chosen if hits == least)

    def _candidates(self, keys: Sequence[str], lo: float, hi: float) -> list[tuple[int, int]]:
        found = []
        for k in keys:
            posting = self.postings.get(k)
            if posting is not None:
                times = posting.times
                found.append(posting.stories[bisect_left(times, lo) : bisect_right(times, hi)])
        hits = Counter(chain.from_iterable(found))
        n = constants.CLUSTER_MAX_CANDIDATES
        if len(hits) <= n:
            return list(hits.items())
        # Most hits first; among the stories tied at the n-th count, the newest.
        ranked = sorted(hits.items(), key=itemgetter(1), reverse=True)
        least = ranked[n - 1][1]
        counts = list(map(neg, map(itemgetter(1), ranked)))
        above = bisect_left(counts, -least)  # stories with more hits than the n-th
        tied = ranked[above : bisect_right(counts, -least)]
        newest = heapq.nlargest(n - above, map(itemgetter(0), tied))
        return ranked[:above] + [(story_id, least) for story_id in newest]

    def same_content(self, content_hash: str, item_id: int, lo: float, hi: float) -> int | None:
        """The oldest story holding an item with this content in [lo, hi]."""
        found = [
            self.members[x].story_id
            for x in self.by_hash.get(content_hash, ())
            if x != item_id and lo <= self.members[x].at <= hi
        ]
        return min(found, default=None)

    def shrink(self, cap: int) -> None:
        """Over `cap` members: forget the stories that ended longest ago, down to 90% of it.

        Whole stories go, and every story that ended before the last one to go, so the
        memory still holds every story with an item at or after its (raised) `low`;
        the store answers for the rest.
        """
        if len(self.members) <= cap:
            return
        excess = len(self.members) - int(cap * 0.9)
        ends = sorted(
            (story.members[-1][0], len(story.members))
            for story in self.stories.values()
            if story.members
        )
        last = ends[-1][0]
        for end, n in ends:
            last = end
            excess -= n
            if excess <= 0:
                break
        cutoff = _just_after(last)
        for story in list(self.stories.values()):  # `evict`, also below a raised `low`
            if story.members and story.members[-1][0] < cutoff:
                self.drop_story(story.id)
        self.low = max(self.low, cutoff)
        self.shrunk = True

    def evict(self, cutoff: float) -> None:
        """Forget stories that ended before `cutoff`; the memory then starts there."""
        if cutoff <= self.low:
            return
        for story in list(self.stories.values()):
            if story.members and story.members[-1][0] < cutoff:
                self.drop_story(story.id)
        self.low = cutoff
        self.shrunk = False


_MERGE_POSTINGS_FROM = 16  # new entries for one key from which a load re-sorts its list


class _Posting:
    """The items indexed under one key, in time order, with their stories."""

    __slots__ = ("items", "stories", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.items: list[int] = []
        self.stories: list[int] = []

    def find(self, m: _Member) -> int:
        i = bisect_left(self.times, m.at)
        while self.items[i] != m.item_id:
            i += 1
        return i


@dataclass(frozen=True)
class _Statements:
    """The statements every assignment runs, built once per dialect."""

    count_terms: Any
    insert_stories: Any
    upsert_stories: Any
    insert_items: Any
    insert_keys: Any


_STATEMENTS: dict[str, _Statements] = {}


def _statements(conn: AsyncConnection) -> _Statements:
    built = _STATEMENTS.get(conn.dialect.name)
    if built is None:
        terms = _insert(conn, term_stats)
        count_terms = terms.on_conflict_do_update(
            index_elements=["term"],
            set_={
                "df": term_stats.c.df + terms.excluded.df,
                "prev_token": term_stats.c.token,
                "token": terms.excluded.token,
            },
        ).returning(term_stats.c.term, term_stats.c.df, term_stats.c.prev_token)
        upsert = _insert(conn, stories)
        changing = [
            "first_at",
            "last_at",
            "item_count",
            "source_count",
            "updated_at",
            "merged_into",
        ]
        upsert_stories = upsert.on_conflict_do_update(
            index_elements=["id"], set_={c: upsert.excluded[c] for c in changing}
        )
        built = _STATEMENTS[conn.dialect.name] = _Statements(
            count_terms=count_terms,
            insert_stories=_insert(conn, stories),
            upsert_stories=upsert_stories,
            insert_items=_insert(conn, story_items),
            insert_keys=_insert(conn, story_keys),
        )
    return built


_FOREVER_S = float("inf")  # a time span with no bound
# The first and last instants a datetime holds, in POSIX seconds.
_FIRST_S = datetime.min.replace(tzinfo=UTC).timestamp()
_LAST_S = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def _at(posix_s: float) -> datetime:
    """The instant of POSIX seconds, within what a datetime holds: a window around an item
    dated near the ends of time (a feed's year 1) reaches past them, and means "from the
    start" (or "to the end"), not an error that fails the poll."""
    return datetime.fromtimestamp(min(max(posix_s, _FIRST_S), _LAST_S), tz=UTC)


def _just_after(posix_s: float) -> float:
    """The next time the store can hold (microseconds): `_at` of it is exact, and after."""
    return (_at(posix_s) + timedelta(microseconds=1)).timestamp()


def _member(row: Any) -> _Member:
    stored = json.loads(row.vector)
    vector = dict(zip(map(sys.intern, stored), map(float, stored.values()), strict=True))
    return _Member(
        item_id=int(row.item_id),
        story_id=int(row.story_id),
        at=row.at.timestamp(),
        source_id=row.source_id,
        content_hash=row.content_hash,
        cues=_cues(row.polarity, row.countries, row.amounts),
        vector=vector,
    )


_CUES: dict[tuple[str, str], Features] = {}
_NO_COUNTS: Mapping[str, int] = MappingProxyType({})
_NONE: frozenset[str] = frozenset()


def _names(joined: str) -> frozenset[str]:
    return frozenset(c for c in joined.split(",") if c) if joined else _NONE


def _cues(polarity: str, countries: str, amounts: str) -> Features:
    """Headline cues as stored; shared, since most items have the same few.

    Headline amounts make cues all but unique ("adds 140 entities"): those are not
    kept in the shared table, which would otherwise hold one entry per such item
    long after the item left the memory.
    """
    if amounts:
        return Features(
            counts=_NO_COUNTS,
            polarity=polarity,
            countries=_names(countries),
            amounts=_names(amounts),
        )
    key = (polarity, countries)
    cues = _CUES.get(key)
    if cues is None:
        cues = Features(counts=_NO_COUNTS, polarity=polarity, countries=_names(countries))
        if len(_CUES) < 100_000:
            _CUES[key] = cues
    return cues


def _specifics(vector: dict[str, float]) -> frozenset[str]:
    return frozenset(k for k in vector if k[0] in "end")


def _ranked(vector: dict[str, float]) -> list[str]:
    """The vector's keys, most distinctive first (what `cluster.index_keys` orders by)."""
    return [k for _, k in sorted(zip(map(neg, vector.values()), vector, strict=True))]


class StoryIndex:
    """Assigns items to stories. Keyword-only options, all with defaults from constants.

    One instance keeps the recent past of each database it is used with in
    memory (see the module docstring); it is safe to share between concurrent
    polls of one process and between processes on one database.
    """

    def __init__(
        self,
        *,
        window_s: float = constants.CLUSTER_WINDOW_S,
        threshold: float = constants.CLUSTER_THRESHOLD,
        memory_items: int = constants.CLUSTER_MEMORY_ITEMS,
    ) -> None:
        self.memory_items = memory_items
        self.window = timedelta(seconds=window_s)
        self.window_s = float(window_s)
        self.threshold = threshold
        self._memories: weakref.WeakKeyDictionary[Engine, _Memory] = weakref.WeakKeyDictionary()

    async def assign(
        self, conn: AsyncConnection, batch: Sequence[tuple[int, Item]], now: datetime
    ) -> dict[int, StoryAssignment]:
        """Put each new item into a story (existing or new); returns item id -> assignment.

        Items are assigned in order, each seeing the ones before it.
        """
        if not batch:
            return {}
        feats = [features(item) for _, item in batch]  # the costly part, before the lock
        ats = [
            item.published if item.published is not None and item.published <= now else now
            for _, item in batch
        ]
        token = secrets.token_hex(8)
        df, docs, previous = await self._count_documents(conn, feats, token)
        memory = self._memories.setdefault(conn.sync_engine, _Memory())
        earliest = min(at.timestamp() for at in ats) - self.window_s
        # an item whose content hash names what it is (a document number), not what it
        # says, is one story with its others whenever they come, not only within the
        # window (a Public Inspection filing on Friday, its publication on Monday)
        identities = list(map(is_document, feats))
        try:
            await self._catch_up(conn, memory, previous, docs - len(batch), earliest, now)
            named = [item.content_hash for (_, item), i in zip(batch, identities, strict=True) if i]
            if named:
                await self._recall_identities(conn, memory, named)
            # Known only when the next assignment sees whose token it replaced.
            pending = memory.pending = _Pending(token=token, version=docs)
            run = _Run(memory=memory, pending=pending, now=now)
            out: dict[int, StoryAssignment] = {}
            for n, ((item_id, item), feat, at, identity) in enumerate(
                zip(batch, feats, ats, identities, strict=True)
            ):
                vector = weigh(feat.counts, df, docs - len(batch) + n)
                df.update({k: df.get(k, 0) + 1 for k in feat.counts})
                out[item_id] = await self._assign_one(
                    conn, run, item_id, item, feat, vector, at, df, identity=identity
                )
            if run.merges:
                out = _as_merged(out, memory)
            await self._write(conn, run, docs)
            memory.shrink(self.memory_items)
        except BaseException:
            memory.reset()  # half-done: the next assignment reads the store afresh
            raise
        return out

    async def _assign_one(
        self,
        conn: AsyncConnection,
        run: _Run,
        item_id: int,
        item: Item,
        feats: Features,
        vector: dict[str, float],
        at: datetime,
        df: Mapping[str, int],
        *,
        identity: bool,
    ) -> StoryAssignment:
        memory = run.memory
        at_s = at.timestamp()
        lo, hi = at_s - self.window_s, at_s + self.window_s
        ranked = _ranked(vector)
        if lo < memory.low and memory.shrunk:  # the window reaches past what memory holds
            await self._recall(conn, memory, ranked, df, item.content_hash, item_id, lo, hi)
        matches = self._matching_stories(memory, vector, feats, ranked, lo, hi)
        # The same content within the window (a syndicated copy) is the same story,
        # whatever the similarity says; the same identity (a Federal Register document
        # and its Public Inspection filing) at any time: `_recall_identities` read in
        # the stories memory lacked.
        same_lo, same_hi = (-_FOREVER_S, _FOREVER_S) if identity else (lo, hi)
        same = memory.same_content(item.content_hash, item_id, same_lo, same_hi)
        if same is not None:
            matches.setdefault(same, 1.0)
        best_sim = max(matches.values(), default=0.0)
        merged: tuple[str, ...] = ()
        if not matches:
            story = _Story(
                id=item_id,
                key=f"{item.content_hash[:16]}-{item_id}",
                title=item.title[:1000],
                first_at=at,
                last_at=at,
                created_at=run.now,
            )
            memory.stories[story.id] = story
            run.created.add(story.id)
            new_story = True
        else:
            # The oldest matching story absorbs the others this item bridges.
            story, new_story = memory.stories[min(matches)], False
            if len(matches) > 1:
                merged = self._merge(run, story, sorted(matches)[1:])
        run.pending.touched.add(story.id)
        story.last_at = max(story.last_at, at)
        cues = (
            feats.polarity,
            ",".join(sorted(feats.countries))[:200],
            ",".join(sorted(feats.amounts))[:200],
        )
        member = _Member(
            item_id=item_id,
            story_id=story.id,
            at=at_s,
            # not interned: with 10,000 sources, their ids grew Python's table of
            # interned strings by ~2 MB; an item's id is its source config's string
            # already, and only members read back from the store have copies
            source_id=item.source_id,
            content_hash=item.content_hash,
            cues=_cues(*cues),  # as stored, and as read back
            vector=vector,
        )
        keys = ranked[: constants.CLUSTER_INDEX_KEYS]
        memory.add(member, story, keys)
        run.items.append((member, best_sim, at, cues, keys))
        return StoryAssignment(
            story_id=story.id,
            story_key=story.key,
            new_story=new_story,
            similarity=best_sim,
            item_count=len(story.members),
            source_count=len(story.sources),
            merged=merged,
        )

    def _matching_stories(
        self,
        memory: _Memory,
        vector: dict[str, float],
        feats: Features,
        ranked: list[str],
        lo: float,
        hi: float,
    ) -> dict[int, float]:
        """Candidate stories this item belongs to: story id -> best similarity.

        A story with an item whose headline vetoes this one (a different event)
        is never a match, however close its other items are.
        """
        lookup = ranked[: constants.CLUSTER_LOOKUP_KEYS]
        if not lookup:
            return {}
        specifics = _specifics(vector)
        best: dict[int, float] = {}
        for story_id in memory.candidates(lookup, lo, hi):
            story = memory.stories[story_id]
            sim_best = 0.0
            for _, item_id in reversed(
                story.members[-constants.CLUSTER_ITEMS_PER_STORY_COMPARED :]
            ):
                other = memory.members[item_id]
                if vetoed(feats, other.cues):
                    sim_best = 0.0
                    break
                # the names, amounts and dates both have (`specifics` holds only those)
                if len(other.vector.keys() & specifics) < constants.CLUSTER_MIN_SHARED_SPECIFICS:
                    continue  # vocabulary alone never merges: no need to weigh it
                sim = similarity(vector, other.vector)
                if sim >= self.threshold and sim > sim_best:
                    sim_best = sim
            if sim_best:
                best[story_id] = sim_best
        return best

    def _merge(self, run: _Run, target: _Story, others: list[int]) -> tuple[str, ...]:
        """Fold `others` into `target` in memory; the store follows in `_write`."""
        memory = run.memory
        keys = []
        for other_id in others:
            other = memory.stories[other_id]
            for _, item_id in list(other.members):
                memory.move(memory.members[item_id], target)
            target.first_at = min(target.first_at, other.first_at)
            target.last_at = max(target.last_at, other.last_at)
            other.merged_into = target.id
            del memory.stories[other_id]
            run.absorbed[other_id] = other
            run.merges.append((target, other))
            run.pending.touched.add(other_id)
            keys.append(other.key)
        return tuple(keys)

    async def _count_documents(
        self, conn: AsyncConnection, feats: Sequence[Features], token: str
    ) -> tuple[dict[str, int], int, str | None]:
        """Count the batch's documents in; returns the frequencies before the batch, the
        document count after it, and the token of the previous assignment.

        The document-count row comes first, so on PostgreSQL concurrent
        assignments (several replicas) take their turns here and never deadlock.
        """
        counted: Counter[str] = Counter()
        for f in feats:
            counted.update(f.counts.keys())
        stmt = _statements(conn).count_terms
        rows: list[dict[str, Any]] = [{"term": _DOCS, "df": len(feats), "token": token}]
        rows += [{"term": t, "df": n, "token": None} for t, n in sorted(counted.items())]
        df: dict[str, int] = {}
        previous: str | None = None
        for chunk in _chunks(rows):
            for r in await conn.execute(stmt, list(chunk)):
                df[r.term] = int(r.df)
                if r.term == _DOCS:
                    previous = r.prev_token
        docs = df.pop(_DOCS)
        return {t: n - counted[t] for t, n in df.items()}, docs, previous

    async def _catch_up(
        self,
        conn: AsyncConnection,
        memory: _Memory,
        previous: str | None,
        version: int,
        earliest: float,
        now: datetime,
    ) -> None:
        """Make the memory what the store holds at `version` (holding the lock)."""
        pending = memory.pending
        if pending is not None and previous == pending.token:
            memory.version, memory.head, memory.pending = pending.version, pending.token, None
        now_s = now.timestamp()
        reach_s = now_s - constants.CLUSTER_MEMORY_WINDOWS * self.window_s
        if not memory.loaded or version < memory.version:
            memory.reset()  # first use, or not the history we knew
            await self._backfill_keys(conn)
            low_s, shrunk = reach_s, False
            # the newest `memory_items` items at most: the store answers for older ones
            newest = await conn.execute(
                select(story_items.c.at)
                .where(story_items.c.at >= _at(reach_s))
                .order_by(story_items.c.at.desc())
                .limit(1)
                .offset(self.memory_items)
            )
            oldest_left_out = newest.scalar()
            if oldest_left_out is not None:
                low_s, shrunk = _just_after(oldest_left_out.timestamp()), True
            low = _at(low_s)
            await self._load(conn, memory, lambda t: t.at >= low)
            memory.loaded, memory.low, memory.evicted_at = True, low_s, now_s
            memory.shrunk = shrunk
            gone = await conn.execute(  # the stories it did not read: what bounds them
                select(func.max(stories.c.item_count), func.max(stories.c.id)).where(
                    stories.c.last_at < low
                )
            )
            most, newest_id = gone.one()
            memory.gone_items = max(memory.gone_items, int(most or 0))
            memory.gone_id = max(memory.gone_id, int(newest_id if newest_id is not None else -1))
        elif memory.pending is not None or previous != memory.head:
            # Another process assigned, or our last transaction rolled back: read back
            # every story changed since our version, and the ones we last touched.
            touched = sorted(memory.pending.touched) if memory.pending is not None else []
            for story_id in touched:
                memory.drop_story(story_id)
            since = memory.version
            await self._load(
                conn,
                memory,
                lambda t: (
                    or_(t.version > since, t.story_id.in_(touched))
                    if touched
                    else t.version > since
                ),
            )
        memory.version, memory.head, memory.pending = version, previous, None
        if now_s - memory.evicted_at > self.window_s:
            memory.evict(reach_s)
            memory.evicted_at = now_s
        if earliest < memory.low and not memory.shrunk:  # an item older than memory reaches
            low, high = _at(earliest), _at(memory.low)
            await self._load(conn, memory, lambda t: and_(t.at >= low, t.at < high))
            memory.low = earliest
        memory.shrink(self.memory_items)

    async def _recall(
        self,
        conn: AsyncConnection,
        memory: _Memory,
        ranked: list[str],
        df: Mapping[str, int],
        content_hash: str,
        item_id: int,
        lo: float,
        hi: float,
    ) -> None:
        """Load the stories that memory no longer holds and a lookup in [lo, hi] may pick.

        Memory holds every story with an item at or after its `low`; a story it lacks
        has all its items before `low`, so its index hits come from the store alone.
        The stories the store ranks first (most hits, then the newest: what
        `_Memory.candidates` ranks by) and the oldest story with the same content are
        loaded whole; a lookup in memory then picks what it would have picked had
        memory held everything.
        """
        lo_at, hi_at, low_at = _at(lo), _at(hi), _at(memory.low)
        wanted: set[int] = set()
        lookup = ranked[: constants.CLUSTER_LOOKUP_KEYS]
        n = constants.CLUSTER_MAX_CANDIDATES
        limit = 2 * n
        # A story memory lacks has at most `gone_items` hits per key some other document
        # has (`df` counts this item too): when that cannot beat the weakest pick of
        # memory alone, the store need not be asked.
        weakest = memory.weakest(lookup, lo, hi)
        if weakest is not None:
            bound = memory.gone_items * sum(1 for k in lookup if df.get(k, 0) > 1)
            if bound < weakest[0] or (bound == weakest[0] and memory.gone_id < weakest[1]):
                lookup = []
        # Rows come ranked (most hits, then the newest); stories memory holds rank here by
        # their older items only, and are skipped. Only a story that outranks memory's
        # weakest pick can be among the n picks.
        least = (0, -1) if weakest is None else weakest
        while lookup:
            rows = (
                await conn.execute(
                    _RECALL, {"keys": lookup, "lo": lo_at, "hi": hi_at, "low": low_at, "n": limit}
                )
            ).all()
            for r in rows:
                story_id, hits = int(r.story_id), int(r.hits)
                if (hits, story_id) <= least or len(wanted) == n:
                    lookup = []
                    break
                if story_id not in memory.stories:
                    wanted.add(story_id)
            else:
                if len(rows) < limit:
                    break
                limit *= 4
        same = await conn.execute(
            _SAME_CONTENT, {"hash": content_hash, "item": item_id, "lo": lo_at, "hi": hi_at}
        )
        oldest = same.scalar()
        if oldest is not None:
            wanted.add(int(oldest))
        missing = sorted(wanted - memory.stories.keys())
        if missing:
            await self._load(conn, memory, lambda t: t.story_id.in_(missing))

    async def _recall_identities(
        self, conn: AsyncConnection, memory: _Memory, hashes: Sequence[str]
    ) -> None:
        """Load the stories memory lacks that hold an item with one of these identities.

        Whenever they were stored: a document's filing may be older than the memory
        reaches (a short window, a long weekend, a restart). One indexed query per batch
        (items.content_hash), which finds a handful of rows per document at most.
        """
        found: set[int] = set()
        for chunk in _chunks(sorted(set(hashes))):
            rows = await conn.execute(_SAME_IDENTITY, {"hashes": list(chunk)})
            found.update(int(story_id) for story_id in rows.scalars())
        missing = sorted(found - memory.stories.keys())
        if missing:
            await self._load(conn, memory, lambda t: t.story_id.in_(missing))

    async def _backfill_keys(self, conn: AsyncConnection) -> None:
        """Fill the store's candidate index for a store written before it existed."""
        if (await conn.execute(select(story_keys.c.item_id).limit(1))).first() is not None:
            return
        last = -1
        while True:  # a page at a time: an old store may hold many items
            rows = (
                await conn.execute(
                    select(story_items.c.item_id, story_items.c.at, story_items.c.vector)
                    .where(story_items.c.item_id > last)
                    .order_by(story_items.c.item_id)
                    .limit(2000)
                )
            ).all()
            if not rows:
                return
            last = int(rows[-1].item_id)
            keys = [
                {"key": k, "at": r.at, "item_id": r.item_id}
                for r in rows
                for k in _ranked(json.loads(r.vector))[: constants.CLUSTER_INDEX_KEYS]
            ]
            if keys:
                await conn.execute(_statements(conn).insert_keys, keys)

    async def _load(
        self, conn: AsyncConnection, memory: _Memory, where: Callable[[Any], ColumnElement[bool]]
    ) -> None:
        """Read into memory, whole, every story with an item for which `where(table)` holds."""
        inner = story_items.alias("wanted")
        wanted = select(inner.c.story_id).where(where(inner.c))
        rows = await conn.execute(
            select(
                story_items.c.item_id,
                story_items.c.story_id,
                story_items.c.source_id,
                story_items.c.at,
                story_items.c.polarity,
                story_items.c.countries,
                story_items.c.amounts,
                story_items.c.vector,
                items.c.content_hash,
                stories.c.key,
                stories.c.title,
                stories.c.first_at,
                stories.c.last_at,
                stories.c.created_at,
            )
            .join(items, items.c.id == story_items.c.item_id)
            .join(stories, stories.c.id == story_items.c.story_id)
            .where(story_items.c.story_id.in_(wanted.scalar_subquery()))
        )
        emptied: set[int] = set()
        loaded: list[tuple[_Member, _Story]] = []
        for r in rows:
            story = memory.stories.get(int(r.story_id))
            if story is None:
                story = memory.stories[int(r.story_id)] = _Story(
                    id=int(r.story_id),
                    key=r.key,
                    title=r.title,
                    first_at=r.first_at,
                    last_at=r.last_at,
                    created_at=r.created_at,
                )
            else:
                story.first_at, story.last_at = r.first_at, r.last_at
            known = memory.members.get(int(r.item_id))
            if known is None:
                loaded.append((_member(r), story))
            elif known.story_id != story.id:
                emptied.add(known.story_id)
                memory.move(known, story)
        memory.add_many(loaded)
        for story_id in emptied:
            story = memory.stories.get(story_id)
            if story is not None and not story.members:
                del memory.stories[story_id]

    async def _write(self, conn: AsyncConnection, run: _Run, version: int) -> None:
        """Store what the batch changed: the stories, merges, then the new items."""
        memory, now = run.memory, run.now
        rows: dict[bool, list[dict[str, Any]]] = {True: [], False: []}  # new?
        for story_id in sorted(run.pending.touched):
            story = memory.stories.get(story_id) or run.absorbed[story_id]
            merged = story.merged_into is not None
            rows[story_id in run.created].append(
                {
                    "id": story.id,
                    "key": story.key,
                    "title": story.title,
                    "first_at": story.first_at,
                    "last_at": story.last_at,
                    "item_count": 0 if merged else len(story.members),
                    "source_count": 0 if merged else len(story.sources),
                    "created_at": story.created_at,
                    "updated_at": now,
                    "merged_into": story.merged_into,
                }
            )
        # New stories by plain INSERT: an id taken by a story of an older store fails loudly.
        if rows[True]:
            await conn.execute(_statements(conn).insert_stories, rows[True])
        if rows[False]:
            await conn.execute(_statements(conn).upsert_stories, rows[False])
        for target, other in run.merges:
            await self._merge_stored(conn, target, other, version)
        await conn.execute(
            _statements(conn).insert_items,
            [
                {
                    "item_id": m.item_id,
                    "story_id": m.story_id,
                    "source_id": m.source_id,
                    "at": at,
                    "similarity": sim,
                    "polarity": cues[0],
                    "countries": cues[1],
                    "amounts": cues[2],
                    "vector": json.dumps(m.vector, separators=(",", ":")),
                    "version": version,
                }
                for m, sim, at, cues, _ in run.items
            ],
        )
        index = [
            {"key": k, "at": at, "item_id": m.item_id}
            for m, _, at, _, keys in run.items
            for k in keys
        ]
        if index:  # an item with no keys (an empty one) is found by its content alone
            await conn.execute(_statements(conn).insert_keys, index)

    async def _merge_stored(
        self, conn: AsyncConnection, target: _Story, other: _Story, version: int
    ) -> None:
        """Move an absorbed story's stored items and alerts to its absorber.

        An alert of an absorbed story moves to the target unless the target
        already has one for that rule (both were sent; the older one stays).
        """
        await conn.execute(
            update(story_items)
            .where(story_items.c.story_id == other.id)
            .values(story_id=target.id, version=version)
        )
        taken = set(
            (await conn.execute(select(alerts.c.rule_id).where(alerts.c.story_key == target.key)))
            .scalars()
            .all()
        )
        moving = await conn.execute(
            select(alerts.c.id, alerts.c.rule_id)
            .where(alerts.c.story_key == other.key)
            .order_by(alerts.c.id)
        )
        for alert in moving.all():
            if alert.rule_id not in taken:
                taken.add(alert.rule_id)
                await conn.execute(
                    update(alerts).where(alerts.c.id == alert.id).values(story_key=target.key)
                )


def _as_merged(out: dict[int, StoryAssignment], memory: _Memory) -> dict[int, StoryAssignment]:
    """Each item's assignment as the batch left it: an item whose story a later item of
    the batch merged into another (it bridged the two) is in that other story now, and
    its alerts go there, where one per (rule, story) holds, not under the key of a story
    that no longer exists (a second alert)."""
    final: dict[int, StoryAssignment] = {}
    for item_id, assigned in out.items():
        story = memory.stories[memory.members[item_id].story_id]
        final[item_id] = replace(
            assigned,
            story_id=story.id,
            story_key=story.key,
            item_count=len(story.members),
            source_count=len(story.sources),
        )
    return final


@dataclass
class _Run:
    """One batch's assignment: what it changed, to be written at the end."""

    memory: _Memory
    pending: _Pending
    now: datetime
    items: list[tuple[_Member, float, datetime, tuple[str, str, str], list[str]]] = field(
        default_factory=list
    )
    created: set[int] = field(default_factory=set)
    absorbed: dict[int, _Story] = field(default_factory=dict)
    merges: list[tuple[_Story, _Story]] = field(default_factory=list)


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


_hits = func.count().label("hits")
_RECALL = (  # built once: runs per item while memory is over its cap
    select(story_items.c.story_id, _hits)
    .select_from(story_keys.join(story_items, story_items.c.item_id == story_keys.c.item_id))
    .where(
        story_keys.c.key.in_(bindparam("keys", expanding=True)),
        story_keys.c.at >= bindparam("lo"),
        story_keys.c.at <= bindparam("hi"),
        story_keys.c.at < bindparam("low"),
    )
    .group_by(story_items.c.story_id)
    .order_by(_hits.desc(), story_items.c.story_id.desc())
    .limit(bindparam("n"))
)
_SAME_CONTENT = (
    select(func.min(story_items.c.story_id))
    .select_from(items.join(story_items, story_items.c.item_id == items.c.id))
    .where(
        items.c.content_hash == bindparam("hash"),
        items.c.id != bindparam("item"),
        story_items.c.at >= bindparam("lo"),
        story_items.c.at <= bindparam("hi"),
    )
)

_SAME_IDENTITY = (  # what `_SAME_CONTENT` finds, at any time, for many hashes at once
    select(story_items.c.story_id)
    .distinct()
    .select_from(items.join(story_items, story_items.c.item_id == items.c.id))
    .where(items.c.content_hash.in_(bindparam("hashes", expanding=True)))
)

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
