"""Every corpus file through the real path: local HTTP server -> fetch -> parse -> store."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import FakeClock
from tests.test_corpus import corpus_files
from watcher.config import Config
from watcher.metrics import Metrics
from watcher.pipeline import PollOutcome, build_pipeline
from watcher.rules import Matcher, load_rules
from watcher.store import Store

RULES = Path(__file__).resolve().parents[1] / "rules"


async def _serve(files: list[Path]) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        path = files[int(request.match_info["n"])]
        return web.Response(body=path.read_bytes(), content_type="application/xml")

    app = web.Application()
    app.router.add_get("/{n}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize(
    # (corpus, files with items, valid feeds without entries, reported as bad feeds)
    # (item_description_not_a_doctype2.xml's one item is an unclosed "<!DOCTYPE" and
    # nothing else, item_description_not_a_doctype.xml's a bogus comment `<!' <a href="foo">`
    # (feedparser's sanitiser, no longer used, escaped it): no text, as the HTML standard
    # reads them, so no item)
    ("corpus", "expected"),
    [("real-feeds", (29, 0, 0)), ("feedparser-tests", (556, 1541, 10))],
)
async def test_every_corpus_file_goes_through_fetch_parse_store(
    corpus: str, expected: tuple[int, int, int], tmp_path: Path, clock: FakeClock
) -> None:
    files = corpus_files(corpus)
    runner = await _serve(files)
    port = runner.addresses[0][1]
    config = Config.model_validate(
        {
            "store": {"url": f"sqlite+aiosqlite:///{tmp_path}/c.db"},
            "polling": {"allow_networks": ["127.0.0.0/8"], "timeout_s": 10},
            "sources": [
                {"id": f"c{i}", "url": f"http://127.0.0.1:{port}/{i}"} for i in range(len(files))
            ],
        }
    )
    rules, errors = load_rules([RULES])
    assert errors == []
    matcher = Matcher(rules)
    store = Store(config.store.url, clock=clock)
    await store.open()
    outcomes = []
    try:
        await store.sync_sources((s.id, str(s.url)) for s in config.sources)
        async with aiohttp.ClientSession() as session:
            pipeline = build_pipeline(
                config,
                store=store,
                session=session,
                matcher=lambda: matcher,
                metrics=Metrics(),
                clock=clock,
            )
            sem = asyncio.Semaphore(16)

            async def poll(i: int) -> PollOutcome:
                async with sem:
                    return await pipeline.poll(config.sources[i])

            outcomes = await asyncio.gather(*(poll(i) for i in range(len(files))))
        stored = await store.count_items()
        states = {s.id: s for s in await store.list_sources()}
    finally:
        await store.close()
        await runner.cleanup()
    kinds: Counter[str] = Counter()
    for o in outcomes:
        if o.outcome == "error":
            # only "not a feed": no fetch error, no crash
            assert states[o.source_id].last_error_reason == "not_a_feed", o.error
            assert str(o.error).startswith(f"source '{o.source_id}': not a feed:")
            kinds["bad"] += 1
        else:
            assert o.outcome == "new", o
            kinds["items" if o.items else "empty"] += 1
    print(f"{corpus}: {len(files)} files through fetch -> parse -> store: {dict(kinds)}, "
          f"{stored} items stored")  # fmt: skip
    assert (kinds["items"], kinds["empty"], kinds["bad"]) == expected
    assert stored == sum(o.new_items for o in outcomes) > 0
