"""html_to_text reads markup as the HTML standard does: scripts, styles and comments end
where a browser ends them, and no script or style body comes out as item text, whichever
way a feed reaches it (RSS, Atom, JSON Feed; the fast parser or feedparser)."""

from __future__ import annotations

import json
import re
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.parse import parse_document
from watcher.text import _slow_html_to_text, html_to_text

# Each with the text of the tree the standard builds (a fragment in a <div>), walked as
# html_to_text walks it: html5lib's tree (a spec-compliant reference, not a dependency)
# gave every one. SECRET marks what is inside a script or style; VISIBLE looks like it is
# and is not.
STANDARD = [
    # an end tag the standard does not take for one, so the script or style goes on
    ("<script>document.write('a')</ script>SECRET_1; steal()</script>", ""),
    ("<script>var a=1</script\xa0>SECRET_2; steal()</script>", ""),
    ("<style>a</style\u3000>SECRET_7{color:red}</style>", ""),
    ("<script>a</scripts>SECRET_17</script>ok", "ok"),
    # the script's escaped states: "<!--" then "<script" in a script holds its end tag off
    ("<script><!--\ndocument.write('<script src=x.js></script>'); SECRET_3(); //--></script>", ""),
    ("<script>x<!--<script>y</script>-->SECRET_13</script>ok", "ok"),
    ("<script><!--<script></script>SECRET_14</script>-->ok</script>ok2", "-->okok2"),
    ("<script>x<!--y</script>ok", "ok"),
    ("<style><!--</style>ok-->", "ok-->"),
    # comments the standard closes early
    ("<!--><script>-->SECRET_4()</script>", ""),
    ("<!---><script>-->SECRET_11</script>ok", "ok"),
    ("<!-- note --!><script>-->SECRET_5()</script>", ""),
    ("<!--a--!>ok<!--b-->", "ok"),
    ("<!-- <!-- x --!>ok", "ok"),
    # "<![CDATA[" in HTML content: a bogus comment to the first ">"
    ("<![CDATA[ x > <script> ]]>SECRET_6()</script>", ""),
    ("<![CDATA[<script>]]>VISIBLE</script>ok", "]]>VISIBLEok"),
    ("a<![CDATA[b>c]]>d", "ac]]>d"),
    # end tags the standard takes and Python's html.parser did not
    ("<script>a</script x><style>b</script>SECRET_8{color:red}</style>", ""),
    ("<script>a</script/>ok<style>b</script>SECRET_12</style>", "ok"),
    ("<script>a</SCRIPT\t>ok", "ok"),
    ("<script>a</script\x0c>ok", "ok"),
    ("<script/src=x>SECRET_18</script>ok", "ok"),
    # a tag name ends only at HTML whitespace
    ('<a\xa0b="><script>">SECRET_9<a\xa0c="</script>">', '">'),
    ('<p\u3000x="><style>">SECRET_10<p\u3000y="</style>">', '">'),
    ("a<p\xa0x>b", "ab"),
    # raw text and escapable raw text
    ("<title><script>x</title>ok", "<script>xok"),
    ("<textarea></textarea x>ok", "ok"),
    ("<noscript><style></noscript>SECRET_16</style>ok", ""),
    # block structure as the tree has it: stray end tags ignored, <p> closed by <nav>, a
    # table part outside a table ignored, text misplaced in a table moved before it
    ("<div>a</div></div>b<p>c<nav>d</nav>e", "a\nb\nc\nde"),
    ("<ul><li>a<li>b</ul>c</li>d", "a\nb\ncd"),
    ("x<tr>y</tr>z<table><tr><td>a</td></tr>b</table>", "xyzb\na"),
    ("<dl><section>y</dl>y", "y\ny"),  # </dl> closes the <section> open in it
    ("<p>a<aside>b</aside>c", "a\nbc"),  # <aside> closes the <p>
    # references as the standard decodes them in text; CR and CRLF are LF
    ("a&#1;b&#0;c&#x80;d&notin;e&notit", "a\x01b\ufffdc\u20acd\u2209e\xacit"),
    ("a\rb\r\nc<p>d\re", "a\nb\nc\nd\ne"),
]  # fmt: skip


@pytest.mark.parametrize(("html", "text"), STANDARD)
def test_the_slow_path_reads_markup_as_the_standard_does(html: str, text: str) -> None:
    assert _slow_html_to_text(html) == text
    assert html_to_text(html) == text


def _rss(html: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>'
        "<link>https://feed.example/</link><item><title>" + escape(html) + "</title>"
        "<link>https://feed.example/a</link><description>" + escape(html) + "</description>"
        "</item></channel></rss>"
    ).encode()


def _atom(html: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        "<title>t</title><id>urn:f</id><entry><id>urn:e</id>"
        f'<title type="html">{escape(html)}</title>'
        f'<content type="html">{escape(html)}</content></entry></feed>'
    ).encode()


def _json_feed(html: str) -> bytes:
    item = {"id": "1", "title": html, "content_html": html, "url": "https://feed.example/a"}
    return json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [item]}).encode()


FEEDS = [_rss, _atom, _json_feed]


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize("html", [html for html, _ in STANDARD if "SECRET" in html])
def test_no_script_or_style_body_reaches_an_item(feed: object, html: str) -> None:
    assert callable(feed)
    [item] = parse_document(feed(html), source_id="s").items
    assert "SECRET" not in item.title
    assert "SECRET" not in item.text


# The pieces of the payloads above, to put together at random; each "T" becomes a marker
# of its own, so that which text came out shows where the parser put it.
PIECES = [
    "<script>", "</script>", "</ script>", "</script\xa0>", "</script x>", "</script/>",
    "</SCRIPT\t>", "<style>", "</style>", "</style\u3000>", "<!--", "-->", "--!>", "<!-->",
    "<!--->", "<![CDATA[", "]]>", ">", "<", "<script/>", '<a\xa0b="', '">', "<p\u3000x>",
    "<noscript>", "</noscript>", "<title>", "</title>", "<svg>", "</svg>", "<p>", "</p>",
    "<div>", "</div>", "<table>", "<tr>", "<li>", "<nav>", "&lt;", "&amp;", " ", "\n", "T",
]  # fmt: skip
_MARKER = re.compile(r"T[0-9]+x")


def _with_markers(pieces: list[str]) -> str:
    counter = iter(range(len(pieces)))
    return "".join(f"T{next(counter)}x" if p == "T" else p for p in pieces)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=16), st.sampled_from(FEEDS))
def test_an_item_shows_no_text_the_standard_hides(pieces: list[str], feed: object) -> None:
    """Whichever way the feed is parsed, an item shows no marker the standard's tree keeps
    in a script, style or comment (the slow path's text holds what it shows)."""
    assert callable(feed)
    html = _with_markers(pieces)
    shown = set(_MARKER.findall(_slow_html_to_text(html)))
    for item in parse_document(feed(html), source_id="s").items:
        assert set(_MARKER.findall(item.title + "\n" + item.text)) <= shown, html
