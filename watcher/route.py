"""Route stage: subscriptions decide which receivers get an alert, and how."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from watcher.config import SubscriptionConfig
from watcher.models import Hit, Item

IMMEDIATE = ""
"""The stream name of a receiver's immediate alerts (a digest's stream is its subscription id)."""


@dataclass(frozen=True)
class Route:
    """One way an alert reaches a receiver: at once (grouped by the receiver's
    group_wait), or in the digest of subscription `stream`."""

    receiver: str
    stream: str = IMMEDIATE
    notify_updates: bool = False


class Router:
    def __init__(self, subscriptions: Sequence[SubscriptionConfig]) -> None:
        self.subscriptions = tuple(subscriptions)
        self.wants_updates = any(s.notify_updates for s in self.subscriptions)

    def receivers_for(self, hit: Hit, item: Item) -> list[str]:
        return sorted({r.receiver for r in self.routes_for(hit, item)})

    def routes_for(self, hit: Hit, item: Item) -> list[Route]:
        """Every (receiver, stream) that gets the alert, once each; sorted.

        A receiver named by several immediate subscriptions gets the alert once
        (with updates if any of them asked); each digest lists it as well.
        """
        out: dict[tuple[str, str], bool] = {}
        for sub in self.subscriptions:
            if self._selects(sub, hit, item):
                stream = (sub.id or IMMEDIATE) if sub.mode == "digest" else IMMEDIATE
                for receiver in sub.receivers:
                    key = (receiver, stream)
                    out[key] = out.get(key, False) or sub.notify_updates
        return [Route(r, s, u) for (r, s), u in sorted(out.items())]

    @staticmethod
    def _selects(sub: SubscriptionConfig, hit: Hit, item: Item) -> bool:
        if not any(fnmatch.fnmatchcase(hit.rule_id, pattern) for pattern in sub.rules):
            return False
        if sub.event_types and hit.event_type not in sub.event_types:
            return False
        if hit.severity.rank < sub.min_severity.rank:
            return False
        if sub.sources and not any(fnmatch.fnmatchcase(item.source_id, s) for s in sub.sources):
            return False
        return not (sub.tags and not set(sub.tags) & (set(hit.tags) | set(item.tags)))
