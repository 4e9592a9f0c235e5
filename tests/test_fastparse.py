"""The lxml fast path yields exactly feedparser's items, on every corpus file it accepts."""

from __future__ import annotations

import pytest

from tests.feeds import CURB, NOISE, rss
from tests.test_corpus import corpus_files
from watcher.errors import ParseError
from watcher.fastparse import fast_parse
from watcher.parse import _parse_with_feedparser, parse_document, refuse_entities

BASE = "https://feeds.example.org/dir/feed.xml"


def _both(body: bytes, content_type: str, base: str) -> tuple[object, object] | None:
    try:
        refuse_entities(body, source_id="c")
    except ParseError:
        return None
    fast = fast_parse(body, source_id="c", content_type=content_type, base_url=base,
                      language="", tags=("t",))  # fmt: skip
    if fast is None:
        return None
    slow = _parse_with_feedparser(body, source_id="c", content_type=content_type,
                                  base_url=base, language="", tags=("t",))  # fmt: skip
    return (fast[0], slow.items)


@pytest.mark.parametrize(
    # (corpus, files the fast path must at least accept)
    ("corpus", "min_fast"),
    [("real-feeds", 23), ("feedparser-tests", 700)],
)
def test_fast_path_yields_feedparsers_items(corpus: str, min_fast: int) -> None:
    accepted = 0
    files = corpus_files(corpus)
    for path in files:
        body = path.read_bytes()
        results = [_both(body, ct, base) for ct, base in (("", ""), ("application/xml", BASE))]
        for pair in results:
            if pair is not None:
                fast, slow = pair
                assert fast == slow, path
        if results[0] is not None:
            accepted += 1
    print(f"{corpus}: the fast path reads {accepted} of {len(files)} files; feedparser the rest")
    assert accepted >= min_fast


def test_fast_path_reads_a_plain_feed_and_gives_up_on_odd_ones() -> None:
    plain = rss(CURB, NOISE)
    assert fast_parse(plain, source_id="s", content_type="", base_url="", language="", tags=())
    odd = [
        plain.replace(b"<channel>", b'<channel xml:base="https://x.example/">'),
        plain.replace(b"</description>", b"</description><media:title "
                      b'xmlns:media="http://search.yahoo.com/mrss/">x</media:title>', 1),
        plain.replace(b"<title>Test feed</title>", b"<title>Test feed</title>") + b"<junk",
        plain.replace(b"</item>", b"<title>again</title></item>", 1),
    ]  # fmt: skip
    for body in odd:
        assert (
            fast_parse(body, source_id="s", content_type="", base_url="", language="", tags=())
            is None
        )
    # an HTTP charset that contradicts the document: feedparser's rules apply
    assert (
        fast_parse(plain, source_id="s", content_type="text/xml; charset=iso-8859-1",
                   base_url="", language="", tags=()) is None
    )  # fmt: skip
    # and parse_document still reads all of them the slow way (or reports a bad feed)
    for body in odd[:2]:
        assert parse_document(body, source_id="s").items


MEDIA = b'xmlns:media="http://search.yahoo.com/mrss/"'


@pytest.mark.parametrize(
    "change",
    [
        # feedparser: a media:description after the description is the entry's content
        (b"</description>", b"</description><media:description " + MEDIA + b">caption"
         b"</media:description>"),
        (b"</description>", b"</description><media:content " + MEDIA + b' url="x">'
         b"<media:credit>c</media:credit><media:description>caption</media:description>"
         b"</media:content>"),
        # ... and before it, the summary, the description then being the content
        (b"<description>", b"<media:description " + MEDIA + b">caption</media:description>"
         b"<description>"),
        # an empty <link/> is an empty link, with or without a base
        (b"<link>https://example.org/news/curb-1</link>", b"<link/>"),
    ],
)  # fmt: skip
def test_fast_path_reads_feedparsers_quirks_alike(change: tuple[bytes, bytes]) -> None:
    body = rss(CURB, NOISE).replace(*change, 1)
    for base in ("", BASE):
        pair = _both(body, "", base)
        assert pair is not None, change
        assert pair[0] == pair[1]
