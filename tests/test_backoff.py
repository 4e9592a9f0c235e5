"""One backoff for every retry (outbox deliveries, WebSub requests): exponential, full jitter."""

from __future__ import annotations

import random

from watcher.backoff import backoff_s


class Highest(random.Random):
    """The stdlib's Random, drawing the top of every range: shows a backoff's ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Lowest(random.Random):
    """The stdlib's Random, drawing the bottom of every range."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_the_ceiling_doubles_from_the_base_up_to_the_max() -> None:
    ceilings = [backoff_s(n, base_s=10, max_s=100, rng=Highest()) for n in range(7)]
    assert ceilings == [10, 10, 20, 40, 80, 100, 100]
    assert backoff_s(10**9, base_s=10, max_s=100, rng=Highest()) == 100  # no overflow


def test_full_jitter_draws_anywhere_below_the_ceiling() -> None:
    rng = random.Random(3)
    draws = [backoff_s(3, base_s=10, max_s=100, rng=rng) for _ in range(1000)]
    assert all(0 <= d <= 40 for d in draws)
    assert min(draws) < 4 and max(draws) > 36  # the whole range, not +-20% of the top
