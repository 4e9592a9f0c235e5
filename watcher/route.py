"""Route stage: subscriptions decide which receivers get an alert."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from watcher.config import SubscriptionConfig
from watcher.models import Hit, Item


class Router:
    def __init__(self, subscriptions: Sequence[SubscriptionConfig]) -> None:
        self.subscriptions = tuple(subscriptions)

    def receivers_for(self, hit: Hit, item: Item) -> list[str]:
        out: set[str] = set()
        for sub in self.subscriptions:
            if self._selects(sub, hit, item):
                out.update(sub.receivers)
        return sorted(out)

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
