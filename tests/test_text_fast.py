"""html_to_text's regex fast path gives exactly the HTMLParser's text, or steps aside."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_corpus import corpus_files
from watcher.text import _simple_html_to_text, _slow_html_to_text, collapse_whitespace

TOKENS = [
    "<p>", "</p>", "<b>", "</b>", "<br>", "<br/>", "<br />", "<div class=\"a>b\">", "</div>",
    '<a href="https://x.example/?a=1&amp;b=2">', "</a>", "<img src='x.png' alt=\"<\">",
    "<script>", "</script>", "<style>", "<title>", "<!-- c -->", "<![CDATA[x]]>", "<", ">",
    "&amp;", "&lt;", "&#39;", "&#x41;", "&nbsp;", "&bogus;", "&amp", " ", "\n", "text", "é",
    "<P>", "</ P>", "<li>", "<x-y>", "<1>", "a < b", "&", "<p/>", "<h2 id=t>", "</h2>",
    "&am", "p;", ";", "&#", "12", "x41;", "&not", "in;", "\u3000", "\xa0", "\t", "\r\n", "  ",
]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30))
def test_fast_path_equals_htmlparser(tokens: list[str]) -> None:
    html = "".join(tokens)
    fast = _simple_html_to_text(html)
    if fast is not None:
        assert fast == _slow_html_to_text(html), html


def test_fast_path_equals_htmlparser_on_the_corpora() -> None:
    import feedparser

    checked = 0
    for corpus in ("real-feeds", "feedparser-tests"):
        for path in corpus_files(corpus):
            parsed = feedparser.parse(path.read_bytes(), sanitize_html=False)
            for entry in parsed.entries:
                values = [entry.get("title"), entry.get("summary")]
                values += [c.get("value") for c in entry.get("content") or []]
                for html in values:
                    if isinstance(html, str):
                        assert collapse_whitespace(html) == _collapse_reference(html), path
                    if isinstance(html, str) and ("<" in html or "&" in html):
                        fast = _simple_html_to_text(html)
                        if fast is not None:
                            checked += 1
                            assert fast == _slow_html_to_text(html), (path, html[:200])
    assert checked > 1000


_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")
_NEWLINES = re.compile(r"\s*\n\s*")
WHITESPACE = [chr(c) for c in range(0x3000 + 1) if chr(c).isspace()] + ["\u200b", "a", "b c"]


def _collapse_reference(text: str) -> str:
    """collapse_whitespace's definition, as regexes."""
    return _NEWLINES.sub("\n", _SPACES.sub(" ", text)).strip()


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(WHITESPACE), max_size=40))
def test_collapse_whitespace_is_its_regex_definition(chars: list[str]) -> None:
    text = "".join(chars)
    assert collapse_whitespace(text) == _collapse_reference(text), repr(text)
