"""Text handling shared by parse and match: HTML to plain text, normalisation, tokens."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import cache
from html import unescape
from itertools import compress, repeat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selectolax.lexbor import LexborNode

_SKIP_TAGS = frozenset(
    {"script", "style", "noscript", "template", "iframe", "object", "svg", "noembed", "noframes"}
)
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
        "table", "blockquote", "section", "article", "header", "footer", "pre", "hr",
    }
)  # fmt: skip


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
# to the slow path (the standard's tree, _slow_html_to_text); tests hold both to the same
# text on the corpora and on generated markup.
#
# HTML's whitespace, where Python's \s is Unicode's: a tag name ends, and attributes are
# apart, only at tab, LF, FF, CR (read as LF) and space. `<a\xa0b="><script>">` is one
# `a\xa0b="` tag, then a script; read with \s, the script would be an attribute value.
_WS = r"[\t\n\f\r ]"
_VALUE = r"(?:\"[^\"]*\"|'[^']*'|[^\t\n\f\r \"'=<>`]+)"
_ATTRS = rf"(?:{_WS}+[^\t\n\f\r \"'<>/=]+(?:{_WS}*={_WS}*{_VALUE})?)*"
_SPECIAL = frozenset(
    {*_SKIP_TAGS, "title", "textarea", "xmp", "plaintext", "noembed", "noframes", "listing"}
)


_BLOCK_BREAK = dict.fromkeys(_BLOCK_TAGS, "\n")
# A "<" that opens markup: a tag, end tag, comment or bogus comment. Any other "<" (before
# a space, a digit, "<", a CJK character or the end) is text, as the standard reads it.
_OPENS_MARKUP = re.compile("<[A-Za-z/!?]")


# A plain tag, its slash and name the groups: split() yields text, slash, name, text, ...
_TAG_NAME = re.compile(rf"<(/?)([A-Za-z][A-Za-z0-9]*){_ATTRS}{_WS}*/?>")


def _split_tags(html: str) -> tuple[list[str], list[str]]:
    """html split by _TAG_NAME (text, slash, name, text, ..., text), and its tag names
    lower-cased."""
    parts = _TAG_NAME.split(html)
    return parts, list(map(str.lower, parts[2::3]))


def _simple_html_to_text(html: str) -> str | None:
    """html_to_text's fast path: the text of markup made only of plain tags, or None."""
    if "\x00" in html or "\r" in html:
        # NUL: dropped in text, U+FFFD elsewhere; CR: html_to_text made it LF already
        return None
    parts, names = _split_tags(html)
    if not _SPECIAL.isdisjoint(names) and not _only_empty_iframes(parts, names):
        return None
    # every "<" opens a tag the regex read or nothing, unless an attribute value holds one
    if html.count("<") != len(names) and any(map(_OPENS_MARKUP.search, parts[0::3])):
        return None
    return _plain_markup_text(html, parts, names)


def _plain_markup_text(html: str, parts: list[str], names: list[str]) -> str | None:
    """The text of markup _TAG_NAME split into parts (its tag names lower-cased in names)
    and found plain: a newline where a block element starts or ends, references
    unescaped; None if _tree_breaks cannot tell where."""
    # With references, one unescape over the whole text, NUL between the pieces a tag
    # separates: no entity name holds a NUL (and the input has none), so each piece reads
    # as it would unescaped on its own.
    none = "\x00" if "&" in html else ""
    breaks = _tree_breaks(parts[1::3], names, none)
    if breaks is None:
        return None
    parts[1::3] = breaks
    parts[2::3] = repeat("", len(names))
    text = "".join(parts)
    return collapse_whitespace(fast_unescape(text).replace("\x00", "") if none else text)


# The block structure the HTML standard's tree builder gives plain markup (_tree_breaks).
# Elements no block, whose start tag closes an open <p> as a block's does, and whose end
# tag closes the <p> and <li> open in them: a line break where the markup shows none.
_P_CLOSERS = frozenset(
    {"address", "aside", "center", "details", "dialog", "dir", "dl", "dd", "dt", "fieldset",
     "figcaption", "figure", "hgroup", "main", "menu", "nav", "search", "summary"}
)  # fmt: skip
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Table parts: outside a table, the tree builder ignores them.
_TABLE_PARTS = frozenset(
    {"caption", "col", "colgroup", "frame", "tbody", "td", "tfoot", "th", "thead", "tr"}
)
# What _tree_breaks leaves to the tree builder: tables (whose misplaced content moves
# before them), forms, select (whose rules the standard changed in 2025), MathML, and
# the elements that bound where an end tag looks for its element (button, applet,
# marquee), ruby (whose tags close an open <p>).
_TREE_UNFOLLOWED = frozenset(
    {"table", "form", "select", "math", "button", "applet", "marquee", "ruby"}
)
# Every tag _tree_breaks looks at: the others are inline (or void, or ignored) and
# start or end no block.
_TREE_TAGS = _BLOCK_TAGS | _P_CLOSERS | _TABLE_PARTS | _TREE_UNFOLLOWED
# The start tags that only close an open <p> (then open their element)
_OPENERS = (_BLOCK_TAGS | _P_CLOSERS) - _TABLE_PARTS - _HEADINGS - {"br", "hr", "li", "dd", "dt"}
# Plain markup whose only block tags are these: each tag of a block element a newline.
_P_AND_BR = frozenset({"p", "br"})


def _tree_breaks(slashes: list[str], names: list[str], none: str) -> list[str] | None:
    """For each tag ("/" in slashes for an end tag), "\n" where a block element starts
    or ends in the tree the HTML standard builds (a <div> its fragment's context), else
    none: an end tag with no element to close is ignored there, a <p> is closed by the
    elements after it, a table part outside a table is ignored. None for markup with a
    tag of _TREE_UNFOLLOWED, or where the elements open cannot be told (a heading
    started in an open one may or may not close it).

    Follows the standard's "in body" rules for the elements it keeps a stack of: the
    block and _P_CLOSERS ones, all "special", so that inline elements (which it does not
    track) close none of them and are no bound to the search for one."""
    breaks = list(map(_BLOCK_BREAK.get, names, repeat(none)))
    if _P_AND_BR.issuperset(_TREE_TAGS.intersection(names)):
        return breaks  # every <p>, </p>, <br> and </br> starts or ends a block
    if not _TREE_UNFOLLOWED.isdisjoint(names):
        return None
    stack: list[str] = []  # the block and _P_CLOSERS elements open, innermost last
    for i in compress(range(len(names)), map(_TREE_TAGS.__contains__, names)):
        name = names[i]
        if slashes[i]:
            if stack and stack[-1] == name:  # most end tags: the element open last
                stack.pop()  # (a block's end: "\n" already; another's: none)
            elif name in _TABLE_PARTS:
                breaks[i] = none
            elif name != "br":  # </br> is <br>
                breaks[i] = "\n" if _end_tag_breaks(stack, name) else none
        elif name in _OPENERS:  # most start tags: each closes an open <p>
            if stack and stack[-1] == "p":
                stack.pop()
                breaks[i] = "\n"
            stack.append(name)
        elif name in _TABLE_PARTS:
            breaks[i] = none
        elif name in _HEADINGS:
            if stack and stack[-1] == "p":
                stack.pop()
            if stack and stack[-1] in _HEADINGS:
                return None  # a heading closes the one open only if no inline element is in it
            stack.append(name)
        elif name != "br" and _start_tag_breaks(stack, name):
            breaks[i] = "\n"
    return breaks


def _start_tag_breaks(stack: list[str], name: str) -> bool:
    """Whether the start tag of an <hr>, <li>, <dd> or <dt> (_tree_breaks) starts or ends
    a block element, the stack closed to what it closes."""
    popped: list[str] = []
    if name == "li" or name == "dd" or name == "dt":
        # close the item open, unless another special element is open in it
        items = ("li",) if name == "li" else ("dd", "dt")
        for j in range(len(stack) - 1, -1, -1):
            if stack[j] in items:
                popped = stack[j:]
                del stack[j:]
                break
            if stack[j] not in ("address", "div", "p"):
                break
    if stack and stack[-1] == "p":  # each of these closes an open <p>
        popped.append(stack.pop())
    if name != "hr":  # void
        stack.append(name)
    return name in _BLOCK_TAGS or not _BLOCK_TAGS.isdisjoint(popped)


def _end_tag_breaks(stack: list[str], name: str) -> bool:
    """Whether an end tag ends a block element (_tree_breaks), the stack closed to what
    it closes."""
    if name == "p":
        if stack and stack[-1] == "p":
            stack.pop()
        return True  # with no <p> open, an empty one
    if name == "hr":
        return False  # a void element: no end tag
    targets = _HEADINGS if name in _HEADINGS else (name,)
    for j in range(len(stack) - 1, -1, -1):
        if stack[j] in targets:
            popped = stack[j:]
            del stack[j:]
            return not _BLOCK_TAGS.isdisjoint(popped)
        if name == "li" and stack[j] in ("ul", "ol"):
            break  # an <li> open outside the list: not this list's item
    return False  # nothing open to close: ignored


def html_to_text_and_tags(html: str) -> tuple[str, list[str] | None]:
    """html_to_text(html), and the lower-case names of its tags when every "<" in it
    opens one (as _TAG_NAME reads tags), none of them special; else None."""
    if "<" not in html:
        return html_to_text(html), []
    if "\r" in html:
        html = _CR.sub("\n", html)
    parts, names = _split_tags(html)
    if html.count("<") == len(names) and _SPECIAL.isdisjoint(names) and "\x00" not in html:
        text = _plain_markup_text(html, parts, names)
        # None: a tree _tree_breaks cannot follow, which html_to_text's fast path would
        # find again (the same split, the same walk): the slow path at once
        return (text, names) if text is not None else (_slow_html_to_text(html), None)
    return html_to_text(html), None


# html.unescape's own pattern (CPython's html._charref): one character reference each.
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


class _CharRefs(dict[str, str]):
    """A reference (without its "&") -> what the HTML standard makes of it in text, filled
    on demand: what html.unescape does, but a control or noncharacter html.unescape drops
    (`&#1;`, `&#xFFFE;`) the standard keeps.

    Each match of _CHARREF is replaced on its own, by the rule its text alone decides,
    so unescaping it alone gives the same replacement.
    """

    def __missing__(self, ref: str) -> str:
        value = unescape("&" + ref)
        if not value:  # only a numeric reference html.unescape drops: the standard keeps it
            number = ref[1:].rstrip(";")
            value = chr(int(number[1:], 16) if number[:1] in "xX" else int(number))
        if len(self) < 4096:  # a hostile feed's made-up references cannot grow it past this
            self[ref] = value
        return value


_CHAR_REFS = _CharRefs()


def fast_unescape(text: str) -> str:
    """The character references in HTML text decoded as the HTML standard does: like
    `html.unescape`, but keeping the controls and noncharacters it drops; its
    per-reference Python callback replaced by a dict lookup."""
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
            if name != "iframe" or not parts[3 * i + 1] or parts[3 * i]:
                return False
            open_at = -1
        elif name == "iframe" and not parts[3 * i + 1]:
            open_at = i  # a start tag (<iframe/> too: "/>" closes no HTML element)
    return open_at < 0


def html_to_text(html: str) -> str:
    """Plain text of untrusted HTML: no tags, no script or style content, entities decoded.

    The text of the tree the HTML standard builds, as _slow_html_to_text reads it; most
    markup is plain enough for a regex to give the same text much faster."""
    if "\r" in html:
        html = _CR.sub("\n", html)  # the standard's preprocessing: CRLF and CR are LF
    if "<" not in html and "&" not in html and "\x00" not in html:
        return collapse_whitespace(html)
    fast = _simple_html_to_text(html)
    if fast is not None:
        return fast
    return _slow_html_to_text(html)


_CR = re.compile("\r\n?")


def _slow_html_to_text(html: str) -> str:
    """The text of the tree the HTML standard builds of html, as the content of a <div>
    (an item's HTML is a fragment of a page): its text nodes in order, none inside a
    _SKIP_TAGS element, a newline at the start and at the end of each _BLOCK_TAGS one.

    Lexbor (selectolax) tokenizes and builds the tree by the standard, so scripts,
    styles and comments end where a browser ends them, whatever this Python's
    html.parser does. Imported here: the fast path reads nearly all feed text, and a
    process that never needs this one does not load it."""
    from selectolax.lexbor import LexborHTMLParser

    try:
        data = html.encode()
    except UnicodeEncodeError:  # a lone surrogate: as a decoder would have read its bytes
        data = SURROGATE.sub("\ufffd", html).encode()
    parts: list[str] = []
    node = LexborHTMLParser(data, is_fragment=True).root  # the first top-level node
    open_elements: list[tuple[LexborNode, bool]] = []  # each with: a block element?
    while True:
        if node is None:
            if not open_elements:
                break
            node, block = open_elements.pop()
            if block:
                parts.append("\n")
        elif node.is_text_node:
            parts.append(node.text_content or "")
        elif node.is_element_node and (tag := node.tag) not in _SKIP_TAGS:
            block = tag in _BLOCK_TAGS
            if block:
                parts.append("\n")
            child = node.first_child
            if child is not None:
                open_elements.append((node, block))
                node = child
                continue
            if block:
                parts.append("\n")
        node = node.next
    return collapse_whitespace("".join(parts))


SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate (JSON and aiohttp make them)


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
