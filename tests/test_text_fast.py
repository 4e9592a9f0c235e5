"""html_to_text's regex fast path gives exactly the slow path's text (the text of the tree
the HTML standard builds), or steps aside."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_corpus import corpus_files
from watcher.text import (
    _accented,
    _simple_html_to_text,
    _slow_html_to_text,
    _unfolded,
    collapse_whitespace,
    fast_unescape,
    fold_utf8,
    html_to_text,
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
    '<iframe src="v"></iframe>', "<script/>", "<noembed>", "</noembed>",
    # whitespace to Python's \s and not to HTML: no end to a tag name, no attribute separator
    '<a\xa0b="', '">', "<p\xa0x>", "<br\u3000>", '<p\u2003y="', "<b\x0bc>", "<p\x0c>", "<p\rx>",
    # block structure as the tree builder makes it: stray end tags ignored, <p> closed by
    # the elements after it, table parts outside a table ignored
    "<div>", "<li>", "</li>", "<ul>", "</ul>", "</ol>", "<h1>", "</h3>", "<aside>", "</aside>",
    "<figure>", "</figure>", "<dl>", "<dd>", "</dt>", "<hr>", "</hr>", "</br>", "<tr>", "</td>",
    "<span>", "</span>", "<blockquote>", "</section>", "<nav>", "</pre>", "\r", "\x00", "&#1;",
    "<全", "<3", "x<",  # a "<" that opens no markup is text
]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30))
def test_fast_path_equals_the_slow_path(tokens: list[str]) -> None:
    html = "".join(tokens)
    fast = _simple_html_to_text(html)
    if fast is not None:
        assert fast == _slow_html_to_text(html), html


@pytest.mark.parametrize(
    ("html", "text"),
    [
        # HTML ends a tag name and parts attributes only at tab, LF, FF, CR and space:
        # here the first tag is `a\xa0b="`, and the script after it runs
        ('<a\xa0b="><script>">SECRET<a\xa0c="</script>">', '">'),
        ('<p\u3000x="><style>">SECRET<p\u3000y="</style>">', '">'),
        ('<a\u2003b="><script>">SECRET<a\u2003c="</script>">', '">'),
        ('<a\x0bb="><script>">SECRET<a\x0bc="</script>">', '">'),
        ("a<p\xa0x>b", "ab"),  # a `p\xa0x` element, no paragraph
        ("a<br\u3000>b", "ab"),
        ("a<p\x0cx>b", "a\nb"),  # form feed is HTML whitespace
    ],
)
def test_a_tag_name_ends_only_at_html_whitespace(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_fast_path_equals_the_slow_path_on_the_corpora() -> None:
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
    "&#", "&#x", ";", "#", "x", "a", " ", "\x00", "é", "&" + "a" * 40 + ";", "&#1;", "&#x7F",
    "&#xFFFE;", "&#65535", "&#x1FFFF;", "&#11;",
]  # fmt: skip


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(REFS), max_size=12))
def test_fast_unescape_is_html_unescape_keeping_what_html_keeps(parts: list[str]) -> None:
    import html

    text = "".join(parts)
    # html.unescape drops the controls and noncharacters that the HTML standard keeps
    expected = re.sub(r"&#(?:[xX]([0-9a-fA-F]+)|([0-9]+));?", _keep_dropped, text)
    assert fast_unescape(text) == html.unescape(expected), repr(text)


def _keep_dropped(m: re.Match[str]) -> str:
    import html

    code = int(m[1], 16) if m[1] else int(m[2])
    return m[0] if html.unescape(m[0]) else chr(code)


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


def test_composition_seconds_are_marks_or_jamo() -> None:
    """fold_utf8's rule for what may compose with the character before it, checked over
    the whole Unicode database: the second of every canonical composition, and the
    Hangul vowel and trailing jamo."""
    import sys
    import unicodedata

    from watcher.text import _may_compose_back

    seconds = {chr(c) for c in range(0x1161, 0x1176)} | {chr(c) for c in range(0x11A8, 0x11C3)}
    for code in range(sys.maxunicode + 1):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    for ch in seconds:
        assert _may_compose_back(ch), hex(ord(ch))


# Characters fold_utf8 reads each its own way: kept (CJK, kana, hangul, curly quotes),
# folded to ASCII or to other characters, and those that compose with their neighbours
# (combining marks, jamo, halfwidth voicing marks, variation selectors), which send the
# whole text to normalize.
FOLD_CHARS = [
    "a", "Z", "İ", "ß", "é", "E", "\u0301", "\u0338", "=", "Å", "\u212b", "…", "“", "’", "—",
    "\u2011", "（", "Ｅ", "ｅ", "\u3000", "\xa0", "輸", "出", "が", "か", "\u3099", "ｶ", "ﾞ",
    "한", "ᄒ", "ᅡ", "\u11a8", "ﬁ", "Ⅲ", "①", "ǅ", "ς", "Σ", "\u0345", "Ø", "ø", "ǰ", "ŉ",
    "\U0001f525", "\ufe0f", "\U0001d400", "\u0b47", "\u0b3e", "\u09c7", "\u09be", " ", "\n",
    "x", "1", "\u200b", "\u1e9e", "\u0130", "\u03a3", "\ufb01", "\u2126", "\u0149",
]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(FOLD_CHARS), max_size=16))
def test_fold_utf8_is_normalize(chars: list[str]) -> None:
    text = "".join(chars)
    assert fold_utf8(text) == normalize(text).encode(), repr(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=20))
def test_fold_utf8_is_normalize_on_any_text(text: str) -> None:
    assert fold_utf8(text) == normalize(text).encode(), repr(text)
    mostly_ascii = "plain words " * 10 + text
    assert fold_utf8(mostly_ascii) == normalize(mostly_ascii).encode(), repr(text)


def test_fold_utf8_is_normalize_for_every_character_between_others() -> None:
    """Each character of the Basic Multilingual Plane, between neighbours that fold alone
    (and those that do not), as the mostly-ASCII and the other branch see it."""
    neighbours = ["E", "…", "か", "\u0301", "ᅡ", "\u3099"]
    for code in range(0x80, 0x10000):
        if 0xD800 <= code < 0xE000:
            continue
        ch = chr(code)
        for side in neighbours:
            for text in (side + ch + side, "x" * 9 + ch + side):
                assert fold_utf8(text) == normalize(text).encode(), (hex(code), text)
        if not _unfolded().match(ch):  # a character the scan passes over is its own fold
            assert normalize(ch) == ch, hex(code)


def test_fold_utf8_on_the_corpora() -> None:
    import feedparser

    for corpus in ("real-feeds",):
        for path in corpus_files(corpus):
            parsed = feedparser.parse(path.read_bytes(), sanitize_html=False)
            for entry in parsed.entries:
                for value in (entry.get("title"), entry.get("summary")):
                    if isinstance(value, str):
                        assert fold_utf8(value) == normalize(value).encode(), path


def test_is_cjk_is_any_character_in_the_cjk_ranges() -> None:
    """is_cjk's regex holds the ranges it was written with, checked character by character
    over the whole Basic Multilingual Plane, and in longer text."""
    from watcher.text import is_cjk

    def by_hand(term: str) -> bool:
        return any(
            "\u3040" <= c <= "\u30ff"  # kana
            or "\u3400" <= c <= "\u9fff"  # CJK ideographs
            or "\uac00" <= c <= "\ud7af"  # hangul
            or "\uf900" <= c <= "\ufaff"  # CJK compatibility ideographs
            for c in term
        )

    for code in range(0x10000):
        ch = chr(code)
        assert is_cjk(ch) == by_hand(ch), hex(code)
    for term in ("", "gallium", "稀土", "rare 稀土 earth", "ﾚｱｱｰｽ", "희토류", "café", "豈"):
        assert is_cjk(term) == by_hand(term), term


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("来源<br/>印发<全国交易目录指引>的通知", "来源\n印发<全国交易目录指引>的通知"),
        ("a <3 <p>b", "a <3\nb"),
        ("a<<p>b", "a<\nb"),
    ],
)  # fmt: skip
def test_a_less_than_sign_that_opens_no_markup_is_text_on_the_fast_path(
    html: str, text: str
) -> None:
    """A "<" before anything but a letter, "/", "!" or "?" is text to the standard: the
    fast path reads it (a feed of the real-feeds corpus has one), and a process whose
    feeds are all plain never loads the slow path's parser."""
    assert _simple_html_to_text(html) == text
    assert _slow_html_to_text(html) == text
