"""html_to_text's regex fast path gives exactly the HTMLParser's text, or steps aside."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_corpus import corpus_files
from watcher.text import (
    _accented,
    _simple_html_to_text,
    _slow_html_to_text,
    collapse_whitespace,
    fast_unescape,
    normalize,
)

TOKENS = [
    "<p>", "</p>", "<b>", "</b>", "<br>", "<br/>", "<br />", "<div class=\"a>b\">", "</div>",
    '<a href="https://x.example/?a=1&amp;b=2">', "</a>", "<img src='x.png' alt=\"<\">",
    "<script>", "</script>", "<style>", "<title>", "<!-- c -->", "<![CDATA[x]]>", "<", ">",
    "&amp;", "&lt;", "&#39;", "&#x41;", "&nbsp;", "&bogus;", "&amp", " ", "\n", "text", "é",
    "<P>", "</ P>", "<li>", "<x-y>", "<1>", "a < b", "&", "<p/>", "<h2 id=t>", "</h2>",
    "&am", "p;", ";", "&#", "12", "x41;", "&not", "in;", "\u3000", "\xa0", "\t", "\r\n", "  ",
    '<iframe src="https://v.example/e">', "</iframe>", "<IFRAME/>", "</iframe x=1>", "</iframe/>",
    '<iframe src="v"></iframe>',
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


REFS = [
    "&", "&amp;", "&amp", "&ampx", "&not", "&notin;", "&noti", "in;", "&#39;", "&#039", "&#x41;",
    "&#X41", "&#0;", "&#128;", "&#xD800;", "&#1114112;", "&bogus;", "&nbsp;", "&nbsp", "&rsquo;",
    "&#", "&#x", ";", "#", "x", "a", " ", "\x00", "é", "&" + "a" * 40 + ";",
]  # fmt: skip


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(REFS), max_size=12))
def test_fast_unescape_is_html_unescape(parts: list[str]) -> None:
    import html

    text = "".join(parts)
    assert fast_unescape(text) == html.unescape(text), repr(text)


def _normalize_reference(text: str) -> str:
    """normalize as first written: NFKC, casefold, NFD, diacritics out, NFC."""
    import unicodedata

    folded = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFD", folded)
    return unicodedata.normalize("NFC", re.sub("[\u0300-\u036f]", "", decomposed))


FOLDS = ["A", "é", "e\u0301", "\u0301", "ß", "İ", "Å", "≠", "=\u0338", "（", "）", "，", "\u3000",
         "…", "Ｅ", "ｅ", "輸出", "ガ", "カ\u3099", "\u3099", "ｶﾞ", "한", "ᄒ", "ᅡ", "ﬁ", "Ⅲ", "①",
         "ǅ", "ς", "\u0345", "Ω", "\u212b", "\uff5e", "\uff61", " ", "x"]  # fmt: skip


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(FOLDS), min_size=1, max_size=10))
def test_normalize_is_its_reference(parts: list[str]) -> None:
    text = "".join(parts)
    assert normalize(text) == _normalize_reference(text), repr(text)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=12))
def test_normalize_is_its_reference_on_any_text(text: str) -> None:
    assert normalize(text) == _normalize_reference(text), repr(text)


def test_no_character_from_u3000_on_decomposes_to_a_diacritic() -> None:
    """normalize's short cut looks for diacritic-bearing characters below U+3000 only."""
    import sys
    import unicodedata

    accented = _accented()
    for code in range(0x80, sys.maxunicode + 1):
        ch = chr(code)
        if code >= 0x3000 and not unicodedata.decomposition(ch):
            continue  # no decomposition: NFD leaves it as it is
        has = re.search("[\u0300-\u036f]", unicodedata.normalize("NFD", ch)) is not None
        assert has == (accented.match(ch) is not None), hex(code)
