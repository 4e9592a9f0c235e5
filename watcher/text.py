"""Text handling shared by parse and match: HTML to plain text, normalisation, tokens."""

from __future__ import annotations

import re
import unicodedata
from html import unescape
from html.parser import HTMLParser

_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "iframe", "object", "svg"})
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
        "table", "blockquote", "section", "article", "header", "footer", "pre", "hr",
    }
)  # fmt: skip
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")
_NEWLINES = re.compile(r"\s*\n\s*")


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
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def collapse_whitespace(text: str) -> str:
    text = _SPACES.sub(" ", text)
    return _NEWLINES.sub("\n", text).strip()


# The fast path of html_to_text: markup made only of plain tags (quoted attributes
# allowed), none whose content is skipped or parsed specially. Anything else goes
# to the HTMLParser below; a test holds both to the same text on the corpora.
_TAG = re.compile(
    r"<(/?)([A-Za-z][A-Za-z0-9]*)"
    r"((?:\s+[^\s\"'<>/=]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+))?)*)\s*(/?)>"
)
_SPECIAL = frozenset(
    {*_SKIP_TAGS, "title", "textarea", "xmp", "plaintext", "noembed", "noframes", "listing"}
)


def _simple_html_to_text(html: str) -> str | None:
    parts = _TAG.split(html)
    out: list[str] = []
    # split() yields: text, slash, name, attrs, selfclose, text, ...
    for i in range(0, len(parts), 5):
        text = parts[i]
        if "<" in text:
            return None
        out.append(unescape(text) if "&" in text else text)
        if i + 2 < len(parts):
            name = parts[i + 2].lower()
            if name in _SPECIAL:
                return None
            if name in _BLOCK_TAGS:
                out.append("\n")
    return collapse_whitespace("".join(out))


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


def normalize(text: str) -> str:
    """NFKC, case-folded, accents folded: the form rules and texts are compared in."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFD", folded)
    return unicodedata.normalize("NFC", _DIACRITICS.sub("", decomposed))


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


def is_cjk(term: str) -> bool:
    """True when a term is written in a script without spaces (Chinese, Japanese, Korean)."""
    return any(
        "\u3040" <= c <= "\u30ff"  # kana
        or "\u3400" <= c <= "\u9fff"  # CJK ideographs
        or "\uac00" <= c <= "\ud7af"  # hangul
        or "\uf900" <= c <= "\ufaff"
        for c in term
    )
