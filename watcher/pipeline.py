"""The pipeline, wired in one place.

    fetch -> parse -> dedup -> cluster -> match -> alert -> route -> group -> outbox

`build_pipeline()` is the only function that wires the stages; reading
`Pipeline.poll` top to bottom shows what one poll of one source does.
Everything from dedup to outbox happens in one store transaction, and the
source's validators are saved in that same transaction, so a crash at any
point either keeps the whole poll or none of it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp

from watcher.batching import Batcher
from watcher.config import Config, SourceConfig
from watcher.errors import FetchError, FetchReason, ParseError
from watcher.fetch import Fetcher, FetchResult, limits_from_config
from watcher.group import Dispatcher, Routed, receiver_policies
from watcher.metrics import Metrics
from watcher.models import Clock, Hit, Item
from watcher.parse import ParsedFeed, parse_off_loop
from watcher.polite import PollPolicy
from watcher.redact import redact_url
from watcher.route import Route, Router
from watcher.rules import Matcher
from watcher.silence import list_silences, silenced
from watcher.store import NewAlert, PollState, Store, UnchangedPoll
from watcher.story_store import StoryAssignment, StoryIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RaisedAlert:
    alert_id: int
    hit: Hit
    item: Item
    receivers: tuple[str, ...]


@dataclass
class PollOutcome:
    source_id: str
    outcome: str  # "new", "unchanged", "error", "gone" (HTTP 410: deactivated), "inactive"
    items: int = 0
    new_items: int = 0
    alerts: list[RaisedAlert] = field(default_factory=list)
    deliveries: int = 0  # sent at once (receivers with no group_wait and no throttle)
    staged: int = 0  # notices for groups, throttled receivers, digests and updates
    error: FetchError | ParseError | None = None
    error_count: int = 0
    next_poll_in_s: float | None = None
    # Items that joined an existing story: its alerts now read "reported by N sources".
    stories_grown: list[StoryAssignment] = field(default_factory=list)
    alerts_updated: list[int] = field(default_factory=list)  # alert rows counting more sources
    broken: bool = False  # errors past polling.error_limit: polled rarely
    moved_to: str | None = None  # a 301/308 moved the feed here


async def parse_fetched(source: SourceConfig, result: FetchResult) -> ParsedFeed:
    """Parse what a fetch of `source` returned, with the source's language and tags (a
    large body in a worker thread: see parse.parse_off_loop)."""
    return await parse_off_loop(
        result.body,
        source_id=source.id,
        content_type=result.content_type,
        base_url=result.url,
        language=source.language,
        tags=source.tags,
    )


def _new_validators(
    state: PollState | None, result: FetchResult
) -> tuple[str | None, str | None] | None:
    """The (ETag, Last-Modified) to keep after a poll that brought nothing new, when they
    differ from the stored ones; else None. The body of the last poll again, answered 200,
    brings its own validators (a server that has started sending an ETag, or rotates it):
    kept, the next poll can be answered 304. A 304 may update them (RFC 9110 13.1.1):
    the fetcher gives a 304 the validators it sent where the 304 sends none."""
    stored = (state.etag, state.last_modified) if state else (None, None)
    given = (result.etag, result.last_modified)
    return None if given == stored else given


class Pipeline:
    def __init__(
        self,
        *,
        store: Store,
        fetcher: Fetcher,
        matcher: Callable[[], Matcher],
        router: Router,
        metrics: Metrics,
        clock: Clock,
        on_enqueued: Callable[[], None] = lambda: None,
        stories: StoryIndex | None = None,
        policy: PollPolicy | None = None,
        dispatcher: Dispatcher | None = None,
        on_staged: Callable[[], None] = lambda: None,
    ) -> None:
        self.stories = stories or StoryIndex()
        self.dispatcher = dispatcher or Dispatcher()
        self.on_staged = on_staged
        self.policy = policy or PollPolicy()
        # group commit for the common, cheap case: many polls share one round trip
        self._states: Batcher[str, PollState | None] = Batcher(store.poll_states)
        self._unchanged: Batcher[UnchangedPoll, None] = Batcher(store.record_polls_unchanged)
        # WebSub: told (source id, hub, topic) when a polled feed advertises a hub
        self.on_hub: Callable[[str, str, str], None] | None = None
        self.store = store
        self.fetcher = fetcher
        self.matcher = matcher
        self.router = router
        self.metrics = metrics
        self._polled = {o: metrics.polls.labels(o) for o in ("new", "unchanged", "error")}
        self.clock = clock
        self.on_enqueued = on_enqueued

    async def poll(self, source: SourceConfig) -> PollOutcome:
        """Fetch one source and take whatever is new all the way to the outbox.

        Every poll updates the source's health: validators and a reset error
        counter on success, the error and its reason (and a backed-off next
        poll time) on failure.
        """
        state = await self._states.run(source.id)
        if state is not None and not state.active:
            return PollOutcome(source.id, "inactive")
        url = state.poll_url if state else str(source.url)
        try:
            result = await self.fetcher.fetch(
                source.id,
                url,
                etag=state.etag if state else None,
                last_modified=state.last_modified if state else None,
            )
            body_hash = hashlib.sha256(result.body).hexdigest() if not result.not_modified else None
            if result.not_modified or (state and body_hash == state.body_hash):
                delay = self.policy.next_check_s(
                    source.interval_s,
                    ttl_s=state.ttl_s if state else None,  # the ttl of the body not parsed again
                    fresh_for_s=result.fresh_for_s,
                )
                await self._record_moved(source, url, result)
                validators = _new_validators(state, result)
                await self._unchanged.run(UnchangedPoll(source.id, delay, validators))
                self._polled["unchanged"].inc()
                return PollOutcome(
                    source.id, "unchanged", next_poll_in_s=delay, moved_to=result.moved_to
                )
            parsed = await parse_fetched(source, result)
        except (FetchError, ParseError) as exc:
            return await self._failed(source, exc, state)
        # a move is kept only once the new URL gave a feed: a 301 to a parked domain's page
        # or a login page would otherwise take the source from its feed for good
        await self._record_moved(source, url, result)
        self._discover_hub(source.id, result, parsed)
        delay = self.policy.next_check_s(
            source.interval_s, ttl_s=parsed.ttl_s, fresh_for_s=result.fresh_for_s
        )
        outcome = await self.ingest(
            source.id,
            parsed.items,
            etag=result.etag,
            last_modified=result.last_modified,
            body_hash=body_hash,
            next_poll_at=self.clock() + timedelta(seconds=delay),
            ttl_s=parsed.ttl_s,
        )
        outcome.moved_to = result.moved_to
        # the policy's delay, not what is left of it after the transaction: a busy store
        # may have used it all up, and the next poll is still that far from this one
        outcome.next_poll_in_s = delay
        self._polled["new"].inc()
        return outcome

    def _discover_hub(self, source_id: str, result: FetchResult, parsed: ParsedFeed) -> None:
        """Tell WebSub of the hub a feed advertises: in its response's Link headers, which
        win (WebSub 4 prefers them), else in its body; its topic likewise, else its URL."""
        hub = result.hub or parsed.hub
        if hub and self.on_hub is not None:
            self.on_hub(source_id, hub, result.self_url or parsed.self_url or result.url)

    async def _record_moved(self, source: SourceConfig, url: str, result: FetchResult) -> None:
        if result.moved_to and result.moved_to != url:
            await self.store.record_moved(source.id, result.moved_to)
            logger.info(
                "source %s: moved permanently to %s", source.id, redact_url(result.moved_to)
            )

    async def record_unexpected(self, source: SourceConfig, exc: Exception) -> float:
        """Record a poll that raised what no stage expects (a bug, a store hiccup) on the
        source like any error, so it backs off and health sees it, instead of failing the
        same way at every interval unseen; returns the seconds until its next try."""
        state = await self.store.source_state(source.id)
        errors = (state.error_count if state else 0) + 1
        delay = self.policy.after_error_s(
            float(source.interval_s), errors, None, ttl_s=state.ttl_s if state else None
        )
        await self.store.record_poll_error(
            source.id,
            reason="internal",
            error=f"internal error: {type(exc).__name__} (the service log has the details)",
            next_poll_at=self.clock() + timedelta(seconds=delay),
        )
        self._polled["error"].inc()
        return delay

    async def _failed(
        self, source: SourceConfig, exc: FetchError | ParseError, state: PollState | None
    ) -> PollOutcome:
        previous_errors = state.error_count if state else 0
        ttl_s = state.ttl_s if state else None
        if isinstance(exc, FetchError) and exc.reason is FetchReason.GONE:
            await self.store.deactivate_source(source.id, str(exc))
            self._polled["error"].inc()
            return PollOutcome(source.id, "gone", error=exc, error_count=previous_errors + 1)
        retry_after = exc.retry_after_s if isinstance(exc, FetchError) else None
        errors = previous_errors + 1
        delay = self.policy.after_error_s(
            float(source.interval_s), errors, retry_after, ttl_s=ttl_s
        )
        errors = await self.store.record_poll_error(
            source.id,
            reason=exc.reason.value if isinstance(exc, FetchError) else "not_a_feed",
            error=str(exc),
            next_poll_at=self.clock() + timedelta(seconds=delay),
        )
        self._polled["error"].inc()
        return PollOutcome(
            source.id,
            "error",
            error=exc,
            error_count=errors,
            next_poll_in_s=delay,
            broken=self.policy.is_broken(errors),
        )

    async def ingest(
        self,
        source_id: str,
        items: Sequence[Item],
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        body_hash: str | None = None,
        next_poll_at: datetime | None = None,
        ttl_s: float | None = None,
        record_source: bool = True,
    ) -> PollOutcome:
        """Dedup, cluster, match, alert, route and enqueue deliveries: one transaction.

        A later copy of a story joins it (its items and sources grow) and raises
        no second alert for a rule that already alerted on the story; the
        story's alerts count its new sources (and, for subscriptions that asked,
        an update notification follows). Without `record_source` (items that came
        other than by a poll: a WebSub push, a replay) the source's poll state is left
        alone, and only its new items are counted.
        """
        matcher = self.matcher()
        raised: list[RaisedAlert] = []
        async with self.store.transaction() as tx:
            new = await tx.insert_new_items(items)
            # Cluster: each new item joins a story; alerts are per (rule, story).
            story_of = await self.stories.assign(tx.conn, new, tx.now)
            pending: list[tuple[NewAlert, Hit, Item]] = []
            for item_id, item in new:
                for hit in matcher.match(item):
                    pending.append(
                        (
                            NewAlert(
                                rule_id=hit.rule_id,
                                rule_title=hit.rule_title,
                                event_type=hit.event_type.value,
                                severity=hit.severity.value,
                                story_key=story_of[item_id].story_key,
                                item_id=item_id,
                                facets=hit_facets(hit),
                                source_count=story_of[item_id].source_count,
                            ),
                            hit,
                            item,
                        )
                    )
            # One alert per (rule, story): insert one at a time to know which rows are new.
            # A silenced alert is stored but routed nowhere.
            active_silences = await list_silences(tx.conn, now=tx.now) if pending else []
            routed: list[Routed] = []
            for new_alert, hit, item in pending:
                ids = await tx.insert_alerts([new_alert])
                if not ids:
                    continue
                routes: list[Route] = (
                    []
                    if silenced(hit.rule_id, active_silences, tx.now)
                    else self.router.routes_for(hit, item)
                )
                receivers = tuple(sorted({r.receiver for r in routes}))
                raised.append(RaisedAlert(ids[0], hit, item, receivers))
                routed.extend(Routed(ids[0], new_alert.source_count, r) for r in routes)
            dispatched = await self.dispatcher.dispatch(tx, routed)
            # Stories that gained sources: their alerts say so (a hook, after clustering).
            grown: dict[str, int] = {}
            for joined in story_of.values():
                if not joined.new_story:
                    key = joined.story_key
                    grown[key] = max(grown.get(key, 0), joined.source_count)
            updates = await self.dispatcher.stories_grown(
                tx, grown, updates=self.router.wants_updates
            )
            if record_source:
                await tx.record_poll(
                    source_id,
                    etag=etag,
                    last_modified=last_modified,
                    body_hash=body_hash,
                    new_items=len(new),
                    next_poll_at=next_poll_at,
                    ttl_s=ttl_s,
                )
            elif new:  # a push: its new items count as seen, the poll state is the polls'
                await tx.count_new_items(source_id, len(new))
        if new:
            self.metrics.items.inc(len(new))
        for a in raised:
            self.metrics.alerts.labels(a.hit.rule_id, a.hit.event_type.value).inc()
        if dispatched.deliveries:
            self.on_enqueued()
        if dispatched.staged or updates.staged:
            self.on_staged()
        return PollOutcome(
            source_id,
            "new",
            items=len(items),
            new_items=len(new),
            alerts=raised,
            deliveries=dispatched.deliveries,
            staged=dispatched.staged + updates.staged,
            alerts_updated=updates.alert_ids,
            stories_grown=[a for a in story_of.values() if not a.new_story],
        )


def hit_facets(hit: Hit) -> dict[str, list[str]]:
    """What an alert shows besides the text: minerals and countries the item names."""
    facets = {"minerals": list(hit.minerals), "countries": list(hit.countries)}
    return {name: values for name, values in facets.items() if values}


def build_pipeline(
    config: Config,
    *,
    store: Store,
    session: aiohttp.ClientSession,
    matcher: Callable[[], Matcher],
    metrics: Metrics,
    clock: Clock,
    on_enqueued: Callable[[], None] = lambda: None,
    on_staged: Callable[[], None] = lambda: None,
) -> Pipeline:
    p = config.polling
    fetcher = Fetcher(
        session=session,
        limits=limits_from_config(p, public_url=config.api.public_url),
        clock=clock,
    )
    return Pipeline(
        store=store,
        fetcher=fetcher,
        matcher=matcher,
        router=Router(config.subscriptions),
        dispatcher=Dispatcher(receiver_policies(config)),
        metrics=metrics,
        clock=clock,
        on_enqueued=on_enqueued,
        on_staged=on_staged,
        stories=StoryIndex(
            window_s=config.stories.window_days * 86400,
            threshold=config.stories.threshold,
            memory_items=config.stories.memory_items,
        ),
        policy=PollPolicy(
            min_s=p.min_interval_s,
            max_s=p.max_interval_s,
            backoff_max_s=p.backoff_max_s,
            error_limit=p.error_limit,
            broken_interval_s=p.broken_interval_s,
        ),
    )
