"""Text handling shared by parse and match: HTML to plain text, normalisation, tokens."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import cache
from html import unescape
from html.parser import HTMLParser
from itertools import repeat

_SKIP_TAGS = frozenset(
    {"script", "style", "noscript", "template", "iframe", "object", "svg", "noembed", "noframes"}
)
# HTML elements that "/>" does not close (the HTML standard ignores it on them): `<script/>`
# starts a script like `<script>`. `<svg/>` is foreign content, closed by it.
_SKIP_HTML_TAGS = _SKIP_TAGS - {"svg"}
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
        "table", "blockquote", "section", "article", "header", "footer", "pre", "hr",
    }
)  # fmt: skip


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_HTML_TAGS:
            self.handle_starttag(tag, attrs)
            if tag in self.CDATA_CONTENT_ELEMENTS:  # script, style: raw text to their end tag
                self.set_cdata_mode(tag)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)

    def close(self) -> None:
        """The end of the text. What is left unparsed starts with markup never closed,
        which Python's parser would give as text; the HTML standard reads it as a comment
        to the end (`<!--`), a bogus comment to the next ">" (`<!`, `<?`, `</` and no
        letter) or a tag cut off by the end of the text (dropped)."""
        rest = self.rawdata
        while len(rest) > 1 and rest[0] == "<":
            cut_tag = rest[1].isalpha() or (rest[1] == "/" and rest[2:3].isalpha())
            if cut_tag or rest.startswith("<!--"):
                rest = ""
            elif rest[1] in "!?/":
                rest = rest[_bogus_comment_end(rest, 2) :]
                self.rawdata = rest
                self.goahead(False)  # what follows the bogus comment
                rest = self.rawdata
            else:
                break
        self.rawdata = rest
        super().close()

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        """`<![CDATA[...]]>` or `<![if ...]>`, as Python's parser reads them. Anything else
        after `<![`, and a section never closed, the HTML standard reads as a bogus
        comment up to the next ">" (or the end): Python 3.11's parser raises
        AssertionError on the first ("expected name token", "unknown status keyword"),
        which must not fail the parse of a feed, and dumps the second as text at
        close(). (The extractor is always given the whole text at once, so a section
        unclosed now stays unclosed.)"""
        try:
            end = super().parse_marked_section(i, report)
        except AssertionError:
            end = -1
        return end if end >= 0 else _bogus_comment_end(self.rawdata, i + 3)


def _bogus_comment_end(text: str, start: int) -> int:
    """Where a bogus comment whose content starts at `start` ends: after the next ">",
    else at the end of the text (the HTML standard's rule)."""
    close = text.find(">", start)
    return len(text) if close < 0 else close + 1


_SPACE_RUN = re.compile("  +")  # a literal prefix: scanned for much faster than a class


def collapse_whitespace(text: str) -> str:
    """Runs of spaces become one space, a whitespace run holding a newline one newline.

    Spaces are " \\t\\r\\f\\v", no-break and zero-width spaces; whitespace is `str.isspace`.
    C-level string operations, several times faster on long texts than regexes: each
    space becomes " " and runs of " " one; a whitespace run holding a newline is the end
    of one line, the newline and the start of the next (whitespace-only lines vanish).
    Printable text (most titles) holds no whitespace but " " (every other whitespace
    character is a separator or a control), and str.split is all it needs.
    """
    if text.isprintable():
        if "  " in text or text[:1] == " " or text[-1:] == " ":
            return " ".join(text.split())
        return text
    for char in "\t\r\f\v\xa0\u200b":
        if char in text:
            text = text.replace(char, " ")
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    return "\n".join(filter(None, map(str.strip, text.split("\n"))))


# The fast path of html_to_text: markup made only of plain tags (quoted attributes
# allowed), none whose content is skipped or parsed specially. Anything else goes
# to the HTMLParser below; a test holds both to the same text on the corpora.
#
# HTML's whitespace, where Python's \s is Unicode's: a tag name ends, and attributes are
# apart, only at tab, LF, FF, CR (read as LF) and space. `<a\xa0b="><script>">` is one
# `a\xa0b="` tag, then a script; read with \s, the script would be an attribute value.
_WS = r"[\t\n\f\r ]"
_VALUE = r"(?:\"[^\"]*\"|'[^']*'|[^\t\n\f\r \"'=<>`]+)"
_ATTRS = rf"(?:{_WS}+[^\t\n\f\r \"'<>/=]+(?:{_WS}*={_WS}*{_VALUE})?)*"
_TAG = re.compile(rf"<(/?)([A-Za-z][A-Za-z0-9]*)({_ATTRS}){_WS}*(/?)>")
_SPECIAL = frozenset(
    {*_SKIP_TAGS, "title", "textarea", "xmp", "plaintext", "noembed", "noframes", "listing"}
)


_BLOCK_BREAK = dict.fromkeys(_BLOCK_TAGS, "\n")


# _TAG with the tag name its only group: split() then yields text, name, text, ..., text
_TAG_NAME = re.compile(rf"</?([A-Za-z][A-Za-z0-9]*){_ATTRS}{_WS}*/?>")


def _split_tags(html: str) -> tuple[list[str], list[str]]:
    """html split by _TAG_NAME (text, name, text, ..., text), and its tag names lower-cased."""
    parts = _TAG_NAME.split(html)
    return parts, list(map(str.lower, parts[1::2]))


def _simple_html_to_text(html: str) -> str | None:
    parts, names = _split_tags(html)
    if not _SPECIAL.isdisjoint(names):
        return _html_with_iframes_to_text(html)
    # every "<" opens a tag the regex read, unless an attribute value holds one
    if html.count("<") != len(names) and any("<" in text for text in parts[0::2]):
        return None
    return _plain_markup_text(html, parts, names)


def _plain_markup_text(html: str, parts: list[str], names: list[str]) -> str | None:
    """The text of markup _TAG_NAME split into parts (its tag names lower-cased in names)
    and found plain: block tags a newline, other tags nothing, references unescaped."""
    if "&" not in html:
        parts[1::2] = map(_BLOCK_BREAK.get, names, repeat(""))
        return collapse_whitespace("".join(parts))
    if "\x00" in html:
        return None
    # as in _html_with_iframes_to_text: NUL between the pieces a tag separates
    parts[1::2] = map(_BLOCK_BREAK.get, names, repeat("\x00"))
    return collapse_whitespace(fast_unescape("".join(parts)).replace("\x00", ""))


def html_to_text_and_tags(html: str) -> tuple[str, list[str] | None]:
    """html_to_text(html), and the lower-case names of its tags when every "<" in it
    opens one (as _TAG_NAME reads tags), none of them special; else None."""
    if "<" not in html:
        return html_to_text(html), []
    parts, names = _split_tags(html)
    if html.count("<") == len(names) and _SPECIAL.isdisjoint(names):
        text = _plain_markup_text(html, parts, names)
        if text is not None:
            return text, names
    return html_to_text(html), None


def _html_with_iframes_to_text(html: str) -> str | None:
    """_simple_html_to_text for markup with special tags: its text if they are only
    empty iframes, else None."""
    parts = _TAG.split(html)
    # split() yields: text, slash, name, attrs, selfclose, text, ...
    texts = parts[0::5]
    names = list(map(str.lower, parts[2::5]))
    if not _SPECIAL.isdisjoint(names) and not _only_empty_iframes(parts, names):
        return None
    # every "<" opens a tag the regex read, unless an attribute value holds one
    if html.count("<") != len(names) and any("<" in text for text in texts):
        return None
    out = [""] * (len(texts) + len(names))
    out[0::2] = texts
    if "&" not in html:
        out[1::2] = map(_BLOCK_BREAK.get, names, repeat(""))
        return collapse_whitespace("".join(out))
    if "\x00" in html:
        return None
    # One unescape over the whole text, with NUL between the pieces a tag separates: no
    # entity name holds a NUL (and the input has none), so each piece reads as it would
    # unescaped on its own.
    out[1::2] = map(_BLOCK_BREAK.get, names, repeat("\x00"))
    return collapse_whitespace(fast_unescape("".join(out)).replace("\x00", ""))


# html.unescape's own pattern (CPython's html._charref): one character reference each.
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


class _CharRefs(dict[str, str]):
    """A reference (without its "&") -> what html.unescape makes of it, filled on demand.

    Each match of _CHARREF is replaced on its own, by the rule its text alone decides,
    so unescaping it alone gives the same replacement.
    """

    def __missing__(self, ref: str) -> str:
        value = unescape("&" + ref)
        if len(self) < 4096:  # a hostile feed's made-up references cannot grow it past this
            self[ref] = value
        return value


_CHAR_REFS = _CharRefs()


def fast_unescape(text: str) -> str:
    """`html.unescape`, with its per-reference Python callback replaced by a dict lookup."""
    if "&" not in text:
        return text
    parts = _CHARREF.split(text)  # text, reference, text, reference, ..., text
    parts[1::2] = map(_CHAR_REFS.__getitem__, parts[1::2])
    return "".join(parts)


def _only_empty_iframes(parts: list[str], names: list[str]) -> bool:
    """True when the special tags are only iframes with nothing between their start
    and end tags (video embeds): what they skip is nothing, and, not being block
    tags, they add nothing either."""
    if not {"iframe"}.issuperset(_SPECIAL.intersection(names)):
        return False
    open_at = -1  # an iframe start tag, the one before this
    for i, name in enumerate(names):
        if open_at >= 0:
            # the next tag must be its end tag, with no text between
            if name != "iframe" or not parts[5 * i + 1] or parts[5 * i]:
                return False
            open_at = -1
        elif name == "iframe" and not parts[5 * i + 1]:
            open_at = i  # a start tag (<iframe/> too: "/>" closes no HTML element)
    return open_at < 0


def html_to_text(html: str) -> str:
    """Plain text of untrusted HTML: no tags, no script or style content, entities decoded."""
    if "<" not in html and "&" not in html:
        return collapse_whitespace(html)
    fast = _simple_html_to_text(html)
    if fast is not None:
        return fast
    return _slow_html_to_text(html)


def _slow_html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return collapse_whitespace("".join(parser.parts))


def _is_diacritic(ch: str) -> bool:
    # Only the generic combining diacritics (accents on Latin, Greek, Cyrillic):
    # the Japanese voicing marks (U+3099/U+309A) change meaning and are kept.
    return "\u0300" <= ch <= "\u036f"


_DIACRITICS = re.compile("[\u0300-\u036f]")  # the same range as _is_diacritic


@cache
def _accented() -> re.Pattern[str]:
    """A character that is a diacritic or whose canonical decomposition holds one.

    Built once, on first use, from this Python's own Unicode database; a test checks
    that no character from U+3000 on needs it (none does up to Unicode 15.1).
    """
    codes = (
        c for c in range(0x80, 0x3000) if _DIACRITICS.search(unicodedata.normalize("NFD", chr(c)))
    )
    return re.compile("[" + _char_class(codes) + "]")


def _char_class(codes: Iterable[int]) -> str:
    """The inside of a regex character class matching these code points (ascending),
    one range per run of consecutive ones."""
    runs: list[list[int]] = []  # [first, last] code point of each run
    for code in codes:
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in runs)


# Fullwidth ASCII, the ideographic space and the ellipsis, the compatibility characters of
# most CJK text: each one's NFKC decomposition is the ASCII it is mapped to here.
_WIDE = re.compile("[\uff01-\uff5e\u3000\u2026]")
_WIDE_ASCII = {chr(c + 0xFEE0): chr(c) for c in range(0x21, 0x7F)}
_WIDE_ASCII |= {"\u3000": " ", "\u2026": "..."}


def _nfkc(text: str) -> str:
    """unicodedata.normalize("NFKC", text), faster on text whose only compatibility
    characters are _WIDE's: NFKC decomposes each character on its own, so replacing
    some by their decompositions first changes nothing, and if what is left is NFKC
    already, it is the answer."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    simpler = _WIDE.sub(lambda m: _WIDE_ASCII[m[0]], text)
    if simpler is not text and unicodedata.is_normalized("NFKC", simpler):
        return simpler
    return unicodedata.normalize("NFKC", simpler)


def normalize(text: str) -> str:
    """NFKC, case-folded, accents folded: the form rules and texts are compared in."""
    folded = _nfkc(text).casefold()
    if folded.isascii():
        return folded
    # Nothing to fold (most CJK text): the decomposition below would hold no diacritic,
    # and recomposing it gives NFC(folded), which is folded itself when that is NFC.
    if unicodedata.is_normalized("NFC", folded) and not _accented().search(folded):
        return folded
    decomposed = unicodedata.normalize("NFD", folded)
    return unicodedata.normalize("NFC", _DIACRITICS.sub("", decomposed))


def _may_compose_back(ch: str) -> bool:
    """True for every character that can be the second of a canonical composition: all
    are marks or Hangul jamo (a test checks this over the whole Unicode database)."""
    return unicodedata.category(ch)[0] == "M" or "\u1100" <= ch <= "\u11ff"


def _starts_alone(text: str) -> bool:
    """The text starts with a starter that composes with nothing before it."""
    return bool(text) and unicodedata.combining(text[0]) == 0 and not _may_compose_back(text[0])


def _folds_alone(ch: str) -> str | None:
    """normalize(ch), if normalize folds any text holding ch character by character.

    That holds when each step's piece for ch starts with a starter that composes with
    nothing before it: NFKC, case folding, NFD, dropping diacritics and NFC then each
    act within the piece, never across two (a test holds fold_utf8 to normalize).
    """
    decomposed = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", ch).casefold())
    stripped = _DIACRITICS.sub("", decomposed)
    if not (
        _starts_alone(unicodedata.normalize("NFKD", ch))
        and unicodedata.combining(decomposed[:1] or "\u0300") == 0
        and _starts_alone(stripped)
    ):
        return None
    return unicodedata.normalize("NFC", stripped)


@cache
def _unfolded() -> re.Pattern[str]:
    """A character fold_utf8 must look at: not ASCII, and not one that normalize keeps as
    it is in any text of such characters. Built once, on first use, from this Python's
    Unicode database, over the Basic Multilingual Plane (the rest is looked at)."""
    kept = (code for code in range(0x80, 0x10000) if _kept_as_is(chr(code)))
    return re.compile("[^\x00-\x7f" + _char_class(kept) + "]")


def _kept_as_is(ch: str) -> bool:
    """normalize keeps ch as it is in any text of such characters (surrogates: no)."""
    if "\ud800" <= ch <= "\udfff":
        return False
    if unicodedata.decomposition(ch):
        return _folds_alone(ch) == ch
    # no decomposition: NFKC, NFD and NFC keep it; only case folding may not
    return unicodedata.combining(ch) == 0 and not _may_compose_back(ch) and ch.casefold() == ch


class _Folds(dict[str, bytes | None]):
    """A character -> UTF-8 of normalize(ch) when that may take its place in any text
    (see _folds_alone), b"" when that is the character itself, else None. Filled on
    demand."""

    def __missing__(self, ch: str) -> bytes | None:
        folded = _folds_alone(ch)
        value = None if folded is None else b"" if folded == ch else folded.encode()
        if value and value.lower() != value:
            value = None  # never so (case folding leaves no ASCII capital), but fold_utf8 needs it
        if len(self) < 4096:  # a hostile feed's characters cannot grow it past this
            self[ch] = value
        return value


_FOLDS = _Folds()
_ASCII_BYTES = bytes(range(0x80))


def fold_utf8(text: str) -> bytes:
    """`normalize(text).encode()`, faster on text whose non-ASCII characters each fold
    on their own (most CJK text, curly quotes, "é", "…", fullwidth ASCII): their folds
    replace them in the UTF-8 bytes, and bytes.lower() folds the ASCII."""
    utf8 = text.encode()
    if len(utf8) == len(text):  # ASCII
        return utf8.lower()
    others = utf8.translate(None, _ASCII_BYTES)  # the UTF-8 of the non-ASCII characters
    if 4 * len(others) < len(utf8):  # mostly ASCII: look at each distinct character
        distinct = set(others.decode())
    else:  # mostly not: look at those a C-level scan finds
        distinct = set(_unfolded().findall(text))
    for ch in distinct:
        folded = _FOLDS[ch]
        if folded is None:
            return normalize(text).encode()
        if folded:
            utf8 = utf8.replace(ch.encode(), folded)
    return utf8.lower()


def normalize_keep_case(text: str) -> str:
    """NFKC and accents folded, case kept: the form of case-sensitive terms."""
    nfkc = unicodedata.normalize("NFKC", text)
    if nfkc.isascii():
        return nfkc
    decomposed = unicodedata.normalize("NFD", nfkc)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not _is_diacritic(c)))


_WORD = re.compile(r"\w+")


def tokens(normalized: str) -> list[str]:
    """Word tokens of already-normalised text. Hyphens and punctuation separate words."""
    return _WORD.findall(normalized)


# Scripts written without spaces: kana, CJK ideographs (and extension A), hangul, CJK
# compatibility ideographs. Their runs are words of their own (watcher.query).
CJK_RANGES = "\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{CJK_RANGES}]")


def is_cjk(term: str) -> bool:
    """True when a term is written in a script without spaces (Chinese, Japanese, Korean)."""
    return not term.isascii() and _CJK_CHAR.search(term) is not None


# What no line of a message may carry from a feed: C0 and C1 controls and DEL (a terminal
# escape, a bell, a NUL), and the bidi embeddings, overrides and isolates, which reorder the
# text after them (U+202E turns "Publisher: BIS" that follows a title round). The marks
# (LRM, RLM, ALM) only hint a direction, and stay.
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """Feed text as one line of a message: every whitespace run (a line break, CRLF,
    U+2028) one space, controls and bidi overrides removed."""
    if text.isprintable() and "  " not in text and text.strip() == text:
        return text
    return _HIDDEN.sub("", " ".join(text.split()))
