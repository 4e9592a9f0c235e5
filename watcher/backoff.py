"""Exponential backoff with full jitter, for whatever retries: the outbox's deliveries,
WebSub's subscription requests.

Full jitter (a uniform draw between 0 and the ceiling) spreads the retries of many
failures that happened together, e.g. after an outage, better than a jitter of a
few per cent around the ceiling.
"""

from __future__ import annotations

import random


def backoff_s(attempts: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2^(attempts-1)))."""
    ceiling = min(max_s, base_s * (2 ** max(0, min(attempts - 1, 30))))
    return rng.uniform(0, ceiling)
