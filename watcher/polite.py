"""Polite polling: when to check a source next, from our interval and the server's hints.

    next check = clamp(max(interval, RSS ttl, Cache-Control max-age, Expires), min, max)

then, after errors, exponential backoff (Retry-After honoured), and a source past
its error limit is only tried every `broken_interval_s`. (Whether a source is
broken is watcher.health's call, by `[health] broken_after_errors`.)
The scheduler adds jitter to whatever comes out of here.
"""

from __future__ import annotations

from dataclasses import dataclass

from watcher import constants


@dataclass(frozen=True)
class PollPolicy:
    min_s: float = constants.POLL_INTERVAL_MIN_S
    max_s: float = constants.POLL_NEXT_MAX_S
    backoff_max_s: float = constants.POLL_BACKOFF_MAX_S
    error_limit: int = constants.POLL_ERROR_LIMIT
    broken_interval_s: float = constants.POLL_BROKEN_INTERVAL_S

    def next_check_s(
        self, interval_s: float, *, ttl_s: float | None = None, fresh_for_s: float | None = None
    ) -> float:
        """Seconds until the next check of a healthy source."""
        wanted = max(interval_s, ttl_s or 0.0, fresh_for_s or 0.0)
        return min(max(wanted, self.min_s), self.max_s)

    def after_error_s(
        self,
        interval_s: float,
        errors: int,
        retry_after_s: float | None,
        *,
        ttl_s: float | None = None,
    ) -> float:
        """Seconds until the next try after `errors` consecutive failures (errors >= 1).

        Never sooner than a healthy source's next check (its interval, and the RSS ttl
        of its last good body): backoff polls less often, never more. A source whose
        interval is past `backoff_max_s` (a daily feed) is simply tried at its interval.
        """
        healthy = self.next_check_s(interval_s, ttl_s=ttl_s)
        if errors >= self.error_limit:
            # a server's Retry-After may hold a broken source back longer, within bounds
            ceiling = max(self.broken_interval_s, self.max_s)
            return min(max(self.broken_interval_s, healthy, retry_after_s or 0.0), ceiling)
        delay = max(min(interval_s * float(2 ** min(errors, 20)), self.backoff_max_s), healthy)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_s))
        return delay

    def is_broken(self, errors: int) -> bool:
        return errors >= self.error_limit
