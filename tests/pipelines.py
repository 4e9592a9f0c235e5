"""A pipeline over loopback sources, as the tests build it: config, store rows, pipeline."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import FakeClock
from watcher.config import Config
from watcher.metrics import Metrics
from watcher.pipeline import Pipeline, build_pipeline
from watcher.rules import Matcher
from watcher.store import Store


async def loopback_pipeline(
    store: Store,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    sources: list[dict[str, Any]],
    *,
    matcher: Matcher | None = None,
    polling: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[Config, Pipeline]:
    """The config of these sources (loopback allowed, a 2 s timeout, `polling` on top, other
    sections as given), their rows in the store, and a pipeline over them (no rules unless
    a matcher is given)."""
    config = Config.model_validate(
        {
            "polling": {"allow_networks": ["127.0.0.0/8"], "timeout_s": 2, **(polling or {})},
            "sources": sources,
            **settings,
        }
    )
    await store.sync_sources((s.id, str(s.url)) for s in config.sources)
    rules = matcher or Matcher([])
    pipeline = build_pipeline(
        config, store=store, session=session, matcher=lambda: rules, metrics=Metrics(),
        clock=clock,
    )  # fmt: skip
    return config, pipeline
