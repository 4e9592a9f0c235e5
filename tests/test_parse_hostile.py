"""Hostile feed documents: entity expansion, external entities, random and mutated bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.feeds import CURB, NOISE, rss
from watcher import constants
from watcher.errors import ParseError
from watcher.fastparse import fast_parse
from watcher.models import Item
from watcher.parse import _parse_with_feedparser, parse_document, parse_feed, repair_references

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE rss [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>t</title>
<item><title>&lol9;</title><guid>x</guid></item></channel></rss>"""

EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE rss [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<rss version="2.0"><channel><title>t</title>
<item><title>&xxe;</title><guid>x</guid></item></channel></rss>"""

PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE rss [ <!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote; ]>
<rss version="2.0"><channel><title>t</title><item><title>x</title></item></channel></rss>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL, PARAMETER])
def test_entity_declarations_are_refused(body: bytes) -> None:
    with pytest.raises(ParseError, match="XML entity declarations are refused") as err:
        parse_feed(body, source_id="evil")
    assert str(err.value).startswith("source 'evil': not a feed:")


def test_entity_declarations_are_refused_in_utf16_too() -> None:
    body = BILLION_LAUGHS.decode().replace('<?xml version="1.0"?>', "").encode("utf-16")
    with pytest.raises(ParseError, match="XML entity declarations are refused"):
        parse_feed(body, source_id="evil")


def _encoded(body: bytes, encoding: str) -> bytes:
    declared = f'<?xml version="1.0" encoding="{encoding.removesuffix("-le")}"?>'
    text = body.decode().replace('<?xml version="1.0"?>', declared)
    if encoding == "utf-7":  # "!" written the other way UTF-7 allows
        return text.encode().replace(b"<!ENTITY", b"<+ACE-ENTITY")
    return text.encode(encoding)


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL, PARAMETER])
@pytest.mark.parametrize("encoding", ["utf-32", "utf-32-le", "cp037", "cp500", "utf-7"])
def test_entity_declarations_are_refused_in_any_encoding_feedparser_reads(
    body: bytes, encoding: str
) -> None:
    with pytest.raises(ParseError, match="XML entity declarations are refused"):
        parse_feed(_encoded(body, encoding), source_id="evil")


def test_entity_declarations_are_refused_in_the_http_charset() -> None:
    body = BILLION_LAUGHS.decode().replace('<?xml version="1.0"?>', "").encode("utf-32-be")
    with pytest.raises(ParseError, match="XML entity declarations are refused"):
        parse_feed(body, source_id="evil", content_type="application/xml; charset=utf-32be")


@pytest.mark.parametrize("declared", [b"\x80tf-8", b"\x00utf-8"])
def test_an_encoding_feedparser_fails_on_is_a_bad_feed(declared: bytes) -> None:
    body = rss(CURB).replace(b"utf-8", declared, 1)
    with pytest.raises(ParseError, match="parser failure"):
        parse_feed(body, source_id="s")


def test_predefined_entities_still_work() -> None:
    [item] = parse_feed(rss(("g", "AT&T & co <ltd>", "a &amp; b")), source_id="s")
    assert item.title == "AT&T & co" or item.title.startswith("AT&T & co")
    assert item.text == "a & b"


def test_rss_ttl_is_reported_in_seconds() -> None:
    body = rss(CURB).replace(b"<language>", b"<ttl>90</ttl><language>")
    assert parse_document(body, source_id="s").ttl_s == 5400
    assert parse_document(rss(CURB), source_id="s").ttl_s is None


def test_links_are_absolute_http_only_and_text_has_no_script() -> None:
    body = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
    <link>https://gov.example/news/</link>
    <item><title>a</title><link>javascript:alert(1)</link><guid>1</guid>
      <description>&lt;script&gt;alert(1)&lt;/script&gt;&lt;style&gt;x{}&lt;/style&gt;ok</description></item>
    <item><title>b</title><link>/n/2</link><guid>2</guid></item>
    <item><title>c</title><link>ftp://gov.example/f</link><guid>3</guid></item>
    </channel></rss>"""
    a, b, c = parse_feed(body, source_id="s", base_url="https://gov.example/feed.xml")
    assert a.url == "" and a.text == "ok"
    assert b.url == "https://gov.example/n/2"
    assert c.url == ""


def _check(items: list[Item]) -> None:
    for item in items:
        assert isinstance(item, Item)
        assert "<script" not in item.text.lower() and "<script" not in item.title.lower()
        assert not item.url or item.url.startswith(("http://", "https://"))


def _parse_or_bad(body: bytes) -> None:
    try:
        items = parse_feed(body, source_id="fuzz")
    except ParseError as exc:
        assert exc.source_id == "fuzz"  # noqa: PT017 - any body may be a bad feed
        return
    _check(items)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2_000))
def test_random_bytes_never_crash_the_parser(body: bytes) -> None:
    _parse_or_bad(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0), st.integers(min_value=0, max_value=40), st.binary(max_size=20)
        ),
        min_size=1,
        max_size=8,
    )
)
def test_mutated_feeds_never_crash_the_parser(edits: list[tuple[int, int, bytes]]) -> None:
    """Cut, splice and overwrite pieces of a valid feed: items or a clear ParseError."""
    body = bytearray(rss(CURB, NOISE))
    for pos, cut, insert in edits:
        at = pos % (len(body) + 1)
        body[at : at + cut] = insert
    _parse_or_bad(bytes(body))


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=200),
    st.text(max_size=400),
    st.sampled_from(["", "https://x.example/a", "/rel", "javascript:x", "data:text/html,x"]),
)
def test_any_item_text_is_sanitised(title: str, html: str, link: str) -> None:
    from xml.sax.saxutils import escape

    body = (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>'
        f"<item><title>{escape(title)}</title><link>{escape(link)}</link>"
        f"<description>{escape(html + '<script>evil()</script>')}</description></item>"
        "</channel></rss>"
    )
    _parse_or_bad(body.encode("utf-8", "surrogatepass"))


# Pieces of markup that Python's own HTML parser trips over when put together badly:
# "<![" followed by no section name made Python 3.11's parser raise AssertionError.
_MARKUP = [
    "<![", "<![CDATA[", "]]>", "<!--", "-->", "<!", "<?", "<script>", "</script>", "<style>",
    "<p>", "</", ">", "[", "]", "!", "-", "&", "#", ";", " ", "a", "'",
]  # fmt: skip


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<![<script>evil()</script>ok", "evil()ok"),  # a bogus comment up to the first ">"
        ("r!<?--><![r<style>s;c", "r!s;c"),
        ("<![px;?;x\nmore", ""),  # no ">": a bogus comment to the end
        ("a <![CDATA[x]]> b", "a b"),
        ("<![if !IE]>x<![endif]>", "x"),  # a conditional comment, as before
        # markup never closed, at the end: no longer given as text
        ("<!--<script>x</script>", ""),  # a comment to the end
        ("<p>a</p><!-- c", "a"),
        ("a<!x", "a"),  # a bogus comment to the end
        ("x<?php echo 1 ?>y<?", "xy"),
        ("x</ y>z", "xz"),  # "</" and no letter: a bogus comment to the next ">"
        ('a<b c="d', "a"),  # a tag cut off by the end
        ("a</b", "a"),
        ("a < b", "a < b"),  # a "<" that opens nothing stays text
        ("a <", "a <"),
        # "/>" closes no HTML element: <script/> starts a script, <svg/> (foreign) is empty
        ("<script/>alert(1)</script>ok", "ok"),
        ("<STYLE />p{x:1}</style>ok", "ok"),
        ("<iframe/>frame text</iframe>ok", "ok"),
        ("<svg/>ok", "ok"),
        ("<noembed>x</noembed><noframes>y</noframes>ok", "ok"),
    ],
)
def test_broken_markup_reads_as_the_html_standard_says(html: str, text: str) -> None:
    from watcher.text import html_to_text

    assert html_to_text(html) == text


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_MARKUP), max_size=12).map("".join))
def test_broken_markup_never_fails_a_feed(html: str) -> None:
    from xml.sax.saxutils import escape

    from watcher.text import html_to_text

    assert "<script" not in html_to_text(html + "<script>evil()</script>").lower()
    body = (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>'
        f"<item><title>t</title><description>{escape(html)}</description></item></channel></rss>"
    )
    _parse_or_bad(body.encode())


@pytest.mark.parametrize(
    ("html", "text"),
    [
        # feedparser's sanitiser counted a stray end tag below zero, so the next script's
        # content became text; it kept the text of the elements it dropped
        ("</script><script>alert(1)</script>ok", "ok"),
        ("</style><style>p{x:1}</style>ok", "ok"),
        ("<iframe>frame text</iframe>ok", "ok"),
        ("<template>template text</template>ok", "ok"),
        ("<object>object text</object>ok", "ok"),
    ],
)
def test_the_feedparser_fallback_leaves_no_skipped_content(html: str, text: str) -> None:
    from xml.sax.saxutils import escape

    for doc in (
        rss(("g", "title", html)),
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>'
        b'<entry><id>g</id><title type="html">' + escape(html).encode() + b"</title>"
        b'<summary type="html">' + escape(html).encode() + b"</summary></entry></feed>",
    ):
        [item] = parse_feed(doc, source_id="s")
        assert item.text == text
        if b"<feed" in doc:
            assert item.title == text


@pytest.mark.parametrize(
    "body",
    [
        # &#0; is no XML: feedparser's loose parser reads it as a NUL character
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        b"<item><title>a&#0;b</title><guid>g&#0;1</guid><link>https://x.example/a&#0;b</link>"
        b"<language>e&#0;n</language><description>c&#0;d</description></item></channel></rss>",
        b'{"version": "https://jsonfeed.org/version/1.1", "items": [{"id": "g\\u00001",'
        b' "title": "a\\u0000b", "url": "https://x.example/a\\u0000b",'
        b' "content_text": "c\\u0000d", "language": "e\\u0000n"}]}',
        b'{"results": [{"document_number": "2026-0\\u00001", "title": "a\\u0000b",'
        b' "html_url": "https://x.example/a\\u0000b", "abstract": "c\\u0000d",'
        b' "type": "Rule\\u0000", "agencies": [{"name": "A\\u0000"}]}]}',
    ],
)
def test_items_hold_no_nul_which_postgresql_text_refuses(body: bytes) -> None:
    [item] = parse_feed(body, source_id="s")
    assert "\x00" not in "".join(
        [item.title, item.text, item.guid, item.url, item.dedup_key, item.language]
    )
    assert "ab" in item.title


JSON_FEED = b'{"version": "https://jsonfeed.org/version/1.1", "items": [%s]}'


@pytest.mark.parametrize(
    "body",
    [
        # dates a UTC instant cannot hold: no date, not an OverflowError
        JSON_FEED % b'{"id": "1", "date_published": "0001-01-01T00:00:00+01:00"}',
        JSON_FEED % b'{"id": "1", "date_published": "9999-12-31T23:59:59-01:00"}',
        b'{"results": [{"document_number": "2026-1", "title": "t",'
        b' "publication_date": "0001-01-01T00:00:00+01:00"}]}',
        # a lone surrogate: U+FFFD, not a UnicodeEncodeError when the item is hashed or stored
        JSON_FEED % b'{"id": "1\\ud800", "title": "a\\udc00b", "url": "https://x.example/\\ud800"}',
        b'{"results": [{"document_number": "2026-1", "title": "a\\udc00b"}]}',
    ],
)
def test_json_values_no_item_can_hold_are_dropped_or_replaced(body: bytes) -> None:
    [item] = parse_feed(body, source_id="s")
    assert item.published is None
    for value in (item.title, item.text, item.guid, item.url, item.dedup_key):
        value.encode()


def test_json_with_surrogate_bytes_is_invalid() -> None:
    with pytest.raises(ParseError, match="invalid JSON"):
        parse_feed(JSON_FEED % b'{"id": "1", "title": "a\xed\xa0\x80b"}', source_id="s")
    # an escaped pair is one character, as before
    [item] = parse_feed(JSON_FEED % b'{"id": "1", "title": "\\ud83d\\ude00"}', source_id="s")
    assert item.title == "\U0001f600"


def test_an_endless_feed_only_feedparser_could_read_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """feedparser costs ~135 us an entry on an ill-formed body: a 10 MB one of tiny
    entries would hold the parse thread for most of a minute."""
    monkeypatch.setattr(constants, "PARSE_FALLBACK_MAX_ENTRIES", 50)
    item = b"<item><title>x</title></item>"
    unclosed = b'<rss version="2.0"><channel>'  # ill-formed: lxml refuses it, feedparser reads it
    with pytest.raises(ParseError, match="more than 50 entries"):
        parse_feed(unclosed + item * 51, source_id="s")
    with pytest.raises(ParseError, match="more than 50 entries"):  # any case, any prefix
        parse_feed(unclosed + b"<rss:ITEM><title>x</title></rss:ITEM>" * 51, source_id="s")
    assert len(parse_feed(unclosed + item * 50, source_id="s")) == 50
    # a well-formed feed of any length is read by the fast path
    well_formed = unclosed + item * 51 + b"</channel></rss>"
    assert len(parse_feed(well_formed, source_id="s")) == 51


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-le", "cp037"])
def test_an_endless_feed_is_refused_in_any_encoding_feedparser_reads(
    monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """The entries are counted where feedparser reads them: a UTF-16 "<item" is no ASCII."""
    monkeypatch.setattr(constants, "PARSE_FALLBACK_MAX_ENTRIES", 50)
    unclosed = f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel>'
    item = "<item><title>x</title></item>"
    with pytest.raises(ParseError, match="more than 50 entries"):
        parse_feed((unclosed + item * 51).encode(encoding), source_id="s")
    assert len(parse_feed((unclosed + item * 50).encode(encoding), source_id="s")) == 50


def test_an_endless_feed_is_refused_in_the_http_charset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "PARSE_FALLBACK_MAX_ENTRIES", 50)
    body = ('<rss version="2.0"><channel>' + "<item><title>x</title></item>" * 51).encode(
        "utf-32-be"
    )
    with pytest.raises(ParseError, match="more than 50 entries"):
        parse_feed(body, source_id="s", content_type="application/xml; charset=utf-32be")


# (reference, what it reads as): U+FFFD for no character, nothing for one XML forbids
BAD_REFERENCES = [
    ("&#xD800;", "\ufffd"), ("&#xdfff;", "\ufffd"), ("&#55296;", "\ufffd"),
    ("&#XD800;", "\ufffd"), ("&#x110000;", "\ufffd"), ("&#99999999999;", "\ufffd"),
    ("&#x" + "0" * 5000 + "D800;", "\ufffd"), ("&#" + "9" * 5000 + ";", "\ufffd"),
    ("&#0;", ""), ("&#x1F;", ""), ("&#xB;", ""), ("&#xFFFE;", ""), ("&#xFFFF;", ""),
]  # fmt: skip


def _with_reference(ref: str, *, closed: bool = True) -> bytes:
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        "<link>https://x.example/</link>"
        f'<item><title>a{ref}b</title><guid isPermaLink="false">g{ref}1</guid>'
        f"<link>https://x.example/a{ref}b</link><description>c{ref}d"
        "<![CDATA[ &#0;&#xD800; ]]></description></item>"
        "<item><title>ok</title><guid>https://x.example/ok</guid></item>"
        + ("</channel></rss>" if closed else "")
    ).encode()


@pytest.mark.parametrize(("ref", "read_as"), BAD_REFERENCES)
def test_a_bad_character_reference_does_not_fail_the_feed(ref: str, read_as: str) -> None:
    """lxml refused the whole feed for it, and feedparser's loose parser raised on a
    surrogate or a number past U+10FFFF; a CDATA section's "&#" is no reference."""
    body = _with_reference(ref)
    first, second = parse_feed(body, source_id="s")
    assert first.title == f"a{read_as}b"
    assert first.text == f"c{read_as}d \ufffd\ufffd"  # the CDATA's, as HTML reads them
    assert first.guid == f"g{read_as}1"
    assert second.title == "ok"
    # the same items on both paths: the fast path reads the repaired body, the feedparser
    # fallback the body as it came
    fast = fast_parse(repair_references(body), source_id="s", content_type="", base_url="",
                      language="", tags=())  # fmt: skip
    assert fast is not None
    slow = _parse_with_feedparser(body, source_id="s", content_type="", base_url="",
                                  language="", tags=())  # fmt: skip
    assert fast[0] == slow.items == [first, second]
    # and an ill-formed feed, which only feedparser reads, reads them alike
    assert parse_feed(_with_reference(ref, closed=False), source_id="s") == [first, second]


def test_a_good_feed_is_not_rewritten() -> None:
    body = _with_reference("&#x1F600;&#65;&#9;&#xe000;&#x10FFFF;")
    assert repair_references(body) is body
    assert repair_references(b"no reference at all") == b"no reference at all"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "cp037"])
def test_a_bad_character_reference_is_repaired_in_any_encoding_feedparser_reads(
    encoding: str,
) -> None:
    declared = f'<?xml version="1.0" encoding="{encoding}"?>'
    body = _with_reference("&#xD800;").decode().replace('<?xml version="1.0"?>', declared)
    first, second = parse_feed(body.encode(encoding), source_id="s")
    assert (first.title, second.title) == ("a\ufffdb", "ok")
    # a raw NUL byte in a UTF-8 body (feedparser keeps it; the item drops it)
    first, _ = parse_feed(_with_reference("&#xD800;\x00"), source_id="s")
    assert first.title == "a\ufffdb"


def test_the_bad_reference_search_finds_what_the_repair_changes() -> None:
    """_ANY_BAD_REFERENCE, the quick search, finds exactly the references
    _repaired_reference changes: the code points where either changes its answer, and
    then some, in every spelling."""
    import re

    from watcher.parse import _ANY_BAD_REFERENCE, _REFERENCE, _repaired_reference

    reference = re.compile(rb"&#([xX][0-9a-fA-F]+|[0-9]+);")
    edges = [
        1114119, 1114120, 1114199, 1114200, 1114999, 1115000, 1119999, 1120000, 1199999,
        1200000, 1999999, 2000000, 9999999, 10**7, 0x1FFFFF, 0x200000, 0xFFFFFF, 10**30,
    ]  # fmt: skip
    codes = [*range(0x10010), *range(0x10F000, 0x111000), *range(0x111000, 0x300000, 97), *edges]
    for code in codes:
        for spelled in (b"%d" % code, b"x%x" % code, b"X%X" % code, b"x00%X" % code,
                        b"000%d" % code):  # fmt: skip
            ref = b"&#" + spelled + b";"
            changed = _repaired_reference(reference.fullmatch(ref)) != ref  # type: ignore[arg-type]
            assert (_ANY_BAD_REFERENCE.fullmatch(ref) is not None) == changed, ref
            assert (_REFERENCE.fullmatch(ref) is not None) == changed, ref
