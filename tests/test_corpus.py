"""Hostile input: every feed in the shared corpora parses to items or to a clear ParseError."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.errors import ParseError
from watcher.parse import parse_feed

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_files(name: str) -> list[Path]:
    root = CORPUS / name
    if not root.is_dir():
        pytest.skip(f"{root} is absent: the shared feed corpus is needed for this test")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("LICENSE", "SOURCE.md", "SOURCES.md")
    )


@pytest.mark.parametrize("corpus", ["feedparser-tests", "real-feeds"])
def test_no_feed_crashes_the_parser(corpus: str) -> None:
    files = corpus_files(corpus)
    with_items = empty = bad = 0
    for path in files:
        try:
            items = parse_feed(path.read_bytes(), source_id="corpus")
        except ParseError as exc:
            assert exc.source_id == "corpus"  # noqa: PT017 - counting, not expecting
            bad += 1
            continue
        if items:
            with_items += 1
            for item in items:
                assert "<script" not in item.text.lower()
                assert not item.url or item.url.startswith(("http://", "https://"))
                assert item.published is None or item.published.utcoffset() is not None
        else:
            empty += 1
    print(f"{corpus}: {len(files)} files: {with_items} with items, {empty} empty, {bad} bad")
    assert with_items + empty + bad == len(files)
    if corpus == "real-feeds":
        # every real feed yields items, the Federal Register API JSON files included
        assert with_items == len(files)
    else:
        # measured: 555 with items, 1,544 valid without entries (feed-level tests), 8 not feeds
        assert with_items >= 550
        assert bad <= 10
