from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.feeds import CURB, NOISE, rss
from watcher.errors import ParseError
from watcher.parse import canonical_url, parse_feed
from watcher.text import html_to_text, normalize


def test_rss_items_are_normalised() -> None:
    items = parse_feed(rss(CURB, NOISE), source_id="s1", tags=["cn"])
    assert [i.guid for i in items] == ["curb-1", "noise-1"]
    first = items[0]
    assert first.source_id == "s1"
    assert first.dedup_key == "guid:curb-1"
    assert first.url == "https://example.org/news/curb-1"
    assert first.text.startswith("Beijing will require an export licence")
    assert "<p>" not in first.text
    assert first.published == datetime(2026, 2, 5, 10, 0, tzinfo=UTC)
    assert first.language == "en"
    assert first.tags == ("cn",)
    assert len(first.content_hash) == 32


def test_script_and_style_never_survive() -> None:
    html = '<p>Export <b>licence</b> required<script>alert("x")</script><style>p{}</style></p>'
    assert html_to_text(html) == "Export licence required"
    items = parse_feed(rss(("g", "T<script>x</script>", html)), source_id="s")
    assert "alert" not in items[0].text and "script" not in items[0].title


def test_identity_falls_back_from_guid_to_link_to_hash() -> None:
    body = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
    <item><title>Only a link</title><link>https://Example.org/a?utm_source=x&amp;id=3#frag</link></item>
    <item><title>Only a title</title></item>
    </channel></rss>"""
    with_link, bare = parse_feed(body, source_id="s")
    assert with_link.dedup_key == "url:https://example.org/a?id=3"
    assert bare.dedup_key == f"hash:{bare.content_hash}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "empty body"),
        (b"\xef\xbb\xbf \n", "empty body"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "an HTML page"),
        (b"\xef\xbb\xbf<!DOCTYPE html><html><body>hi</body></html>", "an HTML page"),
        (b"<!-- served by nginx -->\n<html><body><a href='/x'>x</a></body></html>", "an HTML page"),
        (b"\n  <!doctype HTML PUBLIC '-//W3C//DTD HTML 4.01//EN'><HTML><BODY>x", "an HTML page"),
        (
            b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body/></html>',
            "an HTML page",
        ),
        (b'{"error": "rate limited"}', "JSON that is not a JSON Feed"),
        (b'\xef\xbb\xbf{"error": "rate limited"}', "JSON that is not a JSON Feed"),
        (b"\x00\x01garbage", "unrecognised document"),
        (b"<htmlish/>", "unrecognised document"),
    ],
)
def test_non_feeds_are_reported_as_such(body: bytes, expected: str) -> None:
    with pytest.raises(ParseError, match=expected) as err:
        parse_feed(body, source_id="src-x")
    assert err.value.source_id == "src-x"


def test_parser_is_never_given_a_url() -> None:
    with pytest.raises(TypeError):
        parse_feed("https://example.org/feed.xml", source_id="s")  # type: ignore[arg-type]
    # bytes that look like a URL are just a bad document: nothing is fetched
    with pytest.raises(ParseError):
        parse_feed(b"http://127.0.0.1:9/feed.xml", source_id="s")


def test_canonical_url_keeps_only_http() -> None:
    assert canonical_url("javascript:alert(1)") == ""
    assert canonical_url("/a/b", "https://gov.example/feed") == "https://gov.example/a/b"
    assert canonical_url("HTTPS://GOV.example/x?b=1&utm_medium=y") == "https://gov.example/x?b=1"


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        # a user and password are dropped: the link shows the host it goes to
        ("https://gov.example@evil.example/x", "https://evil.example/x"),
        ("https://user:Secret@gov.example/x", "https://gov.example/x"),
        ("//user@gov.example/x", "https://gov.example/x"),
        # a host no browser reads as urlsplit does, or none at all: no link
        ("https://gov.example\\@evil.example/", ""),
        ("https://gov example/x", ""),
        ("https://user@/x", ""),
        # a port and no host before it: no link
        ("http://:80/", ""),
        ("https://:443/x", ""),
        ("https://u:p@:8080/", ""),
        ("HTTP://:/", ""),
    ],
)
def test_canonical_url_gives_the_host_the_link_goes_to(url: str, canonical: str) -> None:
    assert canonical_url(url, "https://feeds.example/feed") == canonical


def test_normalize_folds_case_width_and_accents_but_not_kana_voicing() -> None:
    assert normalize("Exportación ＬＩＣＥＮＣＥ") == "exportacion licence"
    assert normalize("ガリウム") == "ガリウム"


def test_atom_and_json_feed() -> None:
    atom = b"""<?xml version="1.0" encoding="utf-8"?>
    <feed xmlns="http://www.w3.org/2005/Atom" xml:lang="ja"><title>METI</title>
    <entry><id>tag:meti,1</id><title>\xe8\xbc\xb8\xe5\x87\xba\xe7\xae\xa1\xe7\x90\x86</title>
    <link href="/press/1.html"/><updated>2026-02-05T09:00:00+09:00</updated></entry></feed>"""
    [item] = parse_feed(atom, source_id="meti", base_url="https://www.meti.go.jp/feed.atom")
    assert item.title == "輸出管理"
    assert item.url == "https://www.meti.go.jp/press/1.html"
    assert item.published == datetime(2026, 2, 5, 0, 0, tzinfo=UTC)
    assert item.language == "ja"
    jf = b"""{"version": "https://jsonfeed.org/version/1.1", "title": "j",
    "items": [{"id": "1", "content_html": "<p>Gallium export ban</p>", "url": "https://j.example/1"}]}"""
    [j] = parse_feed(jf, source_id="j")
    assert j.text == "Gallium export ban"
    [j] = parse_feed(b"\xef\xbb\xbf" + jf, source_id="j")  # a UTF-8 BOM (Windows, .NET)
    assert j.text == "Gallium export ban"


def _canonical_url_reference(url: str, base: str = "") -> str:
    """canonical_url as first written: urljoin first, always."""
    from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

    url = url.strip()
    if not url:
        return ""
    try:
        if base:
            url = urljoin(base, url)
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    if any(c in parts.netloc for c in '\\<>^|"\x7f') or min(parts.netloc) <= " ":
        return ""
    host = parts.netloc.rpartition("@")[2]
    bracketed = host.startswith("[")
    if not (host[1:].partition("]")[0] if bracketed else host.partition(":")[0]):
        return ""  # no host before the port
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in _TRACKING
    ]
    return urlunsplit((parts.scheme.lower(), host.lower(), parts.path or "/", urlencode(query), ""))


_TRACKING = {"fbclid", "gclid", "mc_cid", "mc_eid", "ocid", "cmpid"}
URL_PARTS = [
    "http://", "HTTPS://", "https:", "http:", "ftp://", "//", "/", "a.example", "B.Example:81",
    "[::1]", "/x", "/./y", "/../z", ";p", ";", "?", "?a=1", "&b=2", "&utm_x=3", "#f", " ", "\t",
    "%20", "é", "@", "..", "x y", "[", "]", "#", "?utm_a=1", "?fbclid=2&x=", "\n", "\x00",
    "Http://", "hTTpS://", "a]b", "?x#y?z", "é.example", "https://a.example/p?q=1#f",
    "u:p@", "\\", "|", "\x7f", ":80", ":",
]  # fmt: skip
BASES = ["", "https://base.example/dir/feed.xml", "http://base.example", "feed://x", "https:/x"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(URL_PARTS), max_size=8), st.sampled_from(BASES))
def test_canonical_url_is_its_reference(parts: list[str], base: str) -> None:
    url = "".join(parts)
    assert canonical_url(url, base) == _canonical_url_reference(url, base), (url, base)


QUERY_PARTS = ["a", "B", "=", "&", "utm_", "UTM_x", "fbclid", "ocid", "1", "%41", "%2F", "+", " ",
               ".", "~", "-", "_", "é", ";", "cmpid=", "&&", "=="]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(QUERY_PARTS), min_size=1, max_size=9))
def test_clean_query_is_the_parse_qsl_urlencode_round_trip(parts: list[str]) -> None:
    from urllib.parse import parse_qsl, urlencode

    from watcher.parse import _clean_query

    query = "".join(parts)
    expected = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(query, keep_blank_values=True)
            if not k.lower().startswith("utm_") and k.lower() not in _TRACKING
        ]
    )
    assert _clean_query(query) == expected, query


@pytest.mark.parametrize(
    ("title", "text", "digest"),
    [
        # stored hashes stay valid: these are the values of the first definition,
        # sha256(normalize(title) + "\n" + normalize(text))[:32 hex digits]
        ("Rare Earth Export Curb",
         "China’s MOFCOM announces licences… for Ｇａｌｌｉｕｍ. Café Über",
         "8c240f8d203eb1cfd092e9dc55cd31be"),
        ("稀土出口管制", "商务部公告（第１号）：が、ガ、ｶﾞ", "6ef1c1e044e46e5f0b238d37d212a660"),
        ("", "e\u0301 Å ß İ 🔥\ufe0f", "3d54854e72de409693e82b79b0e6e117"),
    ],
)  # fmt: skip
def test_content_hash_keeps_its_definition(title: str, text: str, digest: str) -> None:
    import hashlib

    from watcher.parse import content_hash

    assert content_hash(title, text) == digest
    expected = hashlib.sha256(f"{normalize(title)}\n{normalize(text)}".encode()).hexdigest()
    assert digest == expected[:32]
