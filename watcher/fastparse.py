"""The fast path of the parse stage: lxml for plain, well-formed RSS 2.0, RSS 1.0 and Atom 1.0.

Parsing is the hot path of a poll that brings new items, and feedparser reads
about 1,000 items/s. This reads the common case at lxml speed and gives up
(returns None) on anything it does not reproduce exactly as feedparser would:
a DOCTYPE, xml:base, an HTTP charset that overrides the document's, XHTML
content, duplicate fields, elements feedparser maps onto the fields we use,
or markup whose sanitising could differ. `parse.parse_document` then falls back
to feedparser, so robustness is unchanged; a test holds the two paths to the
same items on every corpus file the fast path accepts.

Where the rules are feedparser's (date formats, relative-URI joining, reading the
declared encoding and the HTTP charset), its own functions are used, so the two paths
cannot drift apart.

One difference is left on purpose: a prefix declared for two namespaces in one
document. feedparser maps a known namespace's prefix to its own once for the whole
document, so `xmlns:content` declared for Dublin Core anywhere makes a later
content:encoded a "dc_encoded" to it. Finding such declarations takes a scan of the
whole body (~2.5% of a parse); the fast path reads such a document by its namespaces.
"""

from __future__ import annotations

import calendar
import codecs
import functools
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from feedparser.api import StrictFeedParser as _FeedParser
from feedparser.datetimes import _parse_date
from feedparser.datetimes.rfc822 import _parse_date_rfc822
from feedparser.datetimes.rfc822 import months as _MONTHS
from feedparser.datetimes.rfc822 import timezone_names as rfc822_zones
from feedparser.datetimes.w3dtf import _parse_date_w3dtf
from feedparser.encodings import RE_XML_PI_ENCODING, parse_content_type
from feedparser.html import _cp1252 as _CP1252
from feedparser.mixin import _FeedParserMixin
from feedparser.urls import _urljoin, make_safe_absolute_uri
from lxml import etree

from watcher.models import Item

ATOM = "http://www.w3.org/2005/Atom"
RSS1 = "http://purl.org/rss/1.0/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
CONTENT = "http://purl.org/rss/1.0/modules/content/"
MEDIA = "http://search.yahoo.com/mrss/"
XML = "http://www.w3.org/XML/1998/namespace"
_XML_LANG = f"{{{XML}}}lang"
_XML_BASE = f"{{{XML}}}base"

# Namespaces feedparser knows: their elements may map onto fields we read, so an
# element from one of them that is not listed below sends the document to feedparser.
_KNOWN_NS = frozenset(str(k).lower() for k in _FeedParserMixin.namespaces)

_IGNORED: frozenset[tuple[str, str]] = frozenset(
    [("", n) for n in ("category", "author", "comments", "enclosure", "source")]
    + [(DC, n) for n in ("creator", "subject", "publisher", "rights", "contributor")]
    + [(MEDIA, n) for n in ("content", "thumbnail", "credit", "keywords", "category")]
    + [(ATOM, n) for n in ("author", "contributor", "category", "rights")]
    + [
        ("http://purl.org/rss/1.0/modules/slash/", "comments"),
        ("http://wellformedweb.org/CommentAPI/", "commentrss"),
        ("http://wellformedweb.org/CommentAPI/", "comment"),
    ]
)
# Elements whose children feedparser keeps apart from the fields we read.
_HARMLESS_CHILDREN: dict[tuple[str, str], frozenset[tuple[str, str]]] = {
    (ATOM, "author"): frozenset({(ATOM, "name"), (ATOM, "email"), (ATOM, "uri")}),
    (ATOM, "contributor"): frozenset({(ATOM, "name"), (ATOM, "email"), (ATOM, "uri")}),
    (MEDIA, "content"): frozenset(
        {(MEDIA, "credit"), (MEDIA, "thumbnail"), (MEDIA, "keywords"), (MEDIA, "description")}
    ),
}
_FIELDS: dict[tuple[str, str], str] = {
    ("", "title"): "title",
    ("", "link"): "link",
    ("", "description"): "summary",
    ("", "guid"): "id",
    ("", "pubdate"): "published",
    (DC, "date"): "updated",
    (DC, "language"): "language",
    (CONTENT, "encoded"): "content",
    (ATOM, "link"): "atomlink",
    (MEDIA, "description"): "description",
}
_ATOM_FIELDS: dict[tuple[str, str], str] = {
    (ATOM, "title"): "title",
    (ATOM, "summary"): "summary",
    (ATOM, "content"): "content",
    (ATOM, "id"): "id",
    (ATOM, "link"): "atomlink",
    (ATOM, "published"): "published",
    (ATOM, "updated"): "updated",
    (DC, "date"): "updated",
    (DC, "language"): "language",
}
_RSS1_FIELDS = {(RSS1 if k[0] == "" else k[0], k[1]): v for k, v in _FIELDS.items()}
# What an entry's child element is to _fields, by its tag as lxml spells it: a field name
# from the table, or one of these. Filled on demand, one cache per table.
_SKIP, _IGNORE, _GIVE_UP = "#skip", "#ignore", "#give-up"
_ACTIONS: dict[int, dict[Any, str]] = {id(t): {} for t in (_FIELDS, _RSS1_FIELDS, _ATOM_FIELDS)}
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Elements feedparser's sanitiser and our text extractor treat differently. Inside the
# fields we read, markup as text is checked on its own (_RISKY_TEXT below).
_RISKY_ELEMENTS = frozenset(
    {"noscript", "template", "object", "svg", "math", "applet", "embed", "frame", "xmp",
     "plaintext", "listing"}
)  # fmt: skip
# a plain `base` attribute (`\sbase\s*=`), which feedparser reads as xml:base; searched for
# from its literal start, which is much faster than from the leading \s
_BASE_ATTR = re.compile(rb"base\s*=")
_TAG_OF = attrgetter("tag")


def _base_attribute(body: bytes) -> bool:
    """A `base` attribute but the root's xml:base (which _read checks): plain, or in a
    namespace feedparser does not know (whose prefix it drops: `x:base` is `base`)."""
    low = body.lower()  # ASCII-only, as a bytes pattern's IGNORECASE would be
    for m in _BASE_ATTR.finditer(low):
        start = m.start()
        before = low[start - 1 : start]
        if before.isspace():
            return True
        if before == b":" and not (
            low[start - 4 : start] == b"xml:" and low[start - 5 : start - 4].isspace()
        ):
            return True
    return False


# What a tag is to _check_tags (filled on demand): read where _read looks for it, an
# entry, in a namespace feedparser does not know, or a reason to give up.
_OK, _ENTRY, _CONTENT, _UNKNOWN = "#ok", "#entry", "#content", "#unknown"
# The document's own structure: another rss, channel or feed element anywhere (feedparser
# sets the feed's language from one, and its CDF link; its end leaves the feed)
_STRUCTURE = "#structure"
_STRUCTURE_NAMES = frozenset({"rss", "channel", "feed", "rdf_rdf"})
# Elements that set feedparser's "has content" flag, which only the end of an entry clears
_CONTENT_NAMES = frozenset({"content", "content_encoded", "fullitem"})
_CONTENTS = "#contents"  # _fields' count of an entry's content elements
_TAG_KINDS: dict[Any, str] = {}
# Namespaces feedparser reads as plain RSS: their item and entry elements are entries
_PLAIN_NS = frozenset(k.lower() for k, v in _FeedParserMixin.namespaces.items() if v == "")


def _tag_kind(tag: Any) -> str:
    ns, local = _split(tag)
    if ns == "#" or local in _RISKY_ELEMENTS:
        return _OK if ns == "#" else _GIVE_UP
    low = ns.lower()
    if low in _KNOWN_NS:
        if low in _PLAIN_NS and local in ("item", "entry"):
            return _ENTRY
        name = _feedparser_name((ns, local))
        if name in _STRUCTURE_NAMES:
            return _STRUCTURE
        return _CONTENT if name in _CONTENT_NAMES else _OK
    if "backend.userland.com/rss" in low:
        return _GIVE_UP  # feedparser reads any such namespace as plain RSS
    return _UNKNOWN


def _check_tags(root: Any, entries: list[Any], structure: int) -> int:
    """Give up on elements feedparser reads where _read does not look for them: an entry
    anywhere but in the entry list (feedparser takes any item or entry, in any of the
    namespaces it reads as plain RSS, at any depth), content anywhere but in an entry
    (it would carry feedparser's "has content" flag into the next entry), and an
    element of a namespace feedparser does not know that it reads all the same (see
    _check_unknown). Each distinct tag is looked at once, from a set collected at C
    speed. Returns the number of content elements, which _read holds to those in entries."""
    entry_key = _split(entries[0].tag) if entries else None
    entry_tags = []
    content_tags = []
    structure_tags = []
    for tag in set(map(_TAG_OF, root.iter())):
        kind = _TAG_KINDS.get(tag)
        if kind is None:
            kind = _tag_kind(tag)
            if len(_TAG_KINDS) < _KEYS_MAX:
                _TAG_KINDS[tag] = kind
        if kind == _OK:
            continue
        if kind == _ENTRY and _split(tag) == entry_key:
            entry_tags.append(tag)
        elif kind == _CONTENT:
            content_tags.append(tag)
        elif kind == _STRUCTURE:
            structure_tags.append(tag)
        elif kind == _UNKNOWN:
            _check_unknown(root, tag)
        else:
            raise _GiveUp
    if entry_tags and sum(1 for _ in root.iter(*entry_tags)) != len(entries):
        raise _GiveUp  # nested entries
    if structure_tags and sum(1 for _ in root.iter(*structure_tags)) != structure:
        raise _GiveUp  # a second rss, channel or feed element
    return sum(1 for _ in root.iter(*content_tags)) if content_tags else 0


def _check_unknown(root: Any, tag: str) -> None:
    """An element of a namespace feedparser does not know is stored apart, as a key of
    its own, unless its name (the prefix it is written with, if any, and its local
    name: `<title xmlns="urn:x">` is a title, `<dc:date xmlns:dc="urn:x">` a dc:date)
    is one feedparser handles; and feedparser reads the elements inside it."""
    prefixes = set()
    for el in root.iter(tag):
        if len(el):
            raise _GiveUp
        prefixes.add(el.prefix)
    local = _split(tag)[1]
    for prefix in prefixes:
        if _read_by_feedparser(f"{prefix.lower()}_{local}" if prefix else local):
            raise _GiveUp


# Keys feedparser's handlers keep in an entry or the feed, of their own types (`links` is a
# list), which an element it has no handler for would take as its name (`<links
# xmlns="urn:x">` makes `links` a string, and the link after it is lost); and names
# ending in "_detail" or "_parsed", which it derives
_ENTRY_KEYS = frozenset(
    {"authors", "chapters", "content", "contributors", "enclosures", "generator_detail",
     "guidislink", "href", "id", "image", "license", "link", "links", "media_content",
     "media_credit", "media_license", "media_player", "media_rating", "media_restriction",
     "media_thumbnail", "newlocation", "psc_chapters", "rel", "scheme", "source", "summary",
     "tags", "textinput", "title", "type", "where", "width", "height", "language", "name",
     "validity_start", "validity_end", "author", "publisher", "ttl"}
)  # fmt: skip


# What an entry or feed element may carry: xml:lang, xml:base (_read allows it on the root
# alone), and on RSS 1.0 RDF's about (an entry's id)
_ENTRY_ATTRIBUTES = frozenset({_XML_LANG, _XML_BASE})
_RDF_ATTRIBUTES = frozenset({_XML_LANG, _XML_BASE, f"{{{RDF}}}about"})


def _check_attributes(el: Any, rdf: bool) -> None:
    """Give up on an entry's or the feed's attribute other than these: feedparser reads
    `href` and `lastmod` there (its CDF link and date), rdf:about outside RSS 1.0 (an
    entry's id), and an unknown namespace's attribute as a plain one."""
    if not (_RDF_ATTRIBUTES if rdf else _ENTRY_ATTRIBUTES).issuperset(el.keys()):
        raise _GiveUp


_RISKY_NAMES = (
    "script", "style", "noscript", "template", "iframe", "object", "svg", "math", "applet",
    "embed", "frame", "xmp", "plaintext", "listing",
)  # fmt: skip
# what IGNORECASE matches for each letter: the two ASCII cases, and these (a test checks)
_OTHER_CASES = {"i": "İı", "s": "ſ", "k": "\u212a"}


def _any_case(word: str) -> str:
    return "".join(f"[{c}{c.upper()}{_OTHER_CASES.get(c, '')}]" for c in word)


# `<!|<\s*/?\s*(script|style|...)\b` with IGNORECASE, written without it: a plain "<" to
# start from is searched for much faster
_RISKY_TEXT = re.compile(r"<(?:!|\s*/?\s*(?:" + "|".join(map(_any_case, _RISKY_NAMES)) + r")\b)")
_RISKY_TAGS = frozenset(_RISKY_NAMES)
# An empty <iframe ...></iframe> (an embed) reads the same both ways: nothing.
_EMPTY_IFRAME = re.compile(r"<iframe\b[^<>]*>\s*</iframe\s*>", re.IGNORECASE)
# C1 controls: feedparser reads them as windows-1252 ("demoronizing"); lxml keeps them.
_C1 = re.compile("[\x80-\x9f]")
_PAST_LATIN1 = re.compile("[^\x00-\xff]")
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    recover=False,
    remove_comments=True,
    remove_pis=True,
)


class _GiveUp(Exception):
    """Not a document the fast path reproduces exactly: use feedparser."""


_KEYS: dict[str, tuple[str, str]] = {}  # tag -> (namespace, lower-case local name)
_KEYS_MAX = 4096  # a hostile feed's made-up tags cannot grow it past this


def _split(tag: Any) -> tuple[str, str]:
    if not isinstance(tag, str):
        return ("#", "")  # a comment or processing instruction
    key = _KEYS.get(tag)
    if key is not None:
        return key
    if tag[0] == "{":
        ns, _, local = tag[1:].partition("}")
        key = (ns, local.lower())
    else:
        key = ("", tag.lower())
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[tag] = key
    return key


def _text(el: Any) -> str:
    if len(el):
        raise _GiveUp  # markup as child elements: feedparser serialises it its own way
    text = el.text
    return text.strip() if text else ""


def _popped(value: str) -> str:
    """The last of feedparser's work on an element's text, stripped (its pop()): text that
    is UTF-8 read as ISO-8859-1 ("CafÃ©") read back as UTF-8 ("Café"), then C1 controls
    read as windows-1252. Not on attributes (an Atom link's href). ASCII (most) is as is."""
    if value.isascii():
        return value
    value = _utf8_read_back(value)
    return value.translate(_CP1252) if _C1.search(value) else value


def _utf8_read_back(value: str) -> str:
    """_popped without the C1 step, for text already known to hold no C1 control (it
    holds none after this either: U+0080-U+009F come only from C1 in the text)."""
    if value.isascii() or _PAST_LATIN1.search(value):  # most text, found at C speed
        return value
    try:
        return value.encode("iso-8859-1").decode("utf-8")
    except UnicodeDecodeError:  # not UTF-8 after all
        return value


# Encodings lxml and Python's codecs (feedparser's) decode alike, by their codec names.
# (Of windows-1252, the five bytes Python's codec leaves undefined are errors to lxml.)
_SAME_DECODING = frozenset({"utf-8", "ascii", "iso8859-1", "cp1252"})


def _codec(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return ""


# The declared encoding as XML (lxml) reads it
_XML_DECLARED = re.compile(rb"<\?xml[^>]*encoding\s*=\s*[\"']([\w.:-]+)")


def _document_encoding(body: bytes) -> str:
    """The codec name both lxml and feedparser read the body in, or "" when they may not
    agree: feedparser reads the declaration with its own pattern, over the whole first
    line (the last `encoding="..."` before a `?>` there), and lxml follows a UTF-8 BOM
    whatever the declaration says."""
    data = body[3:] if body.startswith(codecs.BOM_UTF8) else body
    m = _XML_DECLARED.match(data)
    ours = _codec(m.group(1).decode()) if m else "utf-8"
    m = RE_XML_PI_ENCODING.match(data)
    theirs = _codec(m.group(1).decode("latin-1")) if m else "utf-8"
    if ours != theirs or (data is not body and ours != "utf-8"):
        return ""
    return ours


def fast_parse(
    body: bytes,
    *,
    source_id: str,
    content_type: str,
    base_url: str,
    language: str,
    tags: Iterable[str],
) -> tuple[list[Item], Any] | None:
    """(items, feed fields: link, language, ttl, hub, self) when the fast path reproduces
    feedparser exactly, else None."""
    # UTF-16 and UTF-32, with or without a BOM: lxml detects them where feedparser may not
    if body.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in body[:4]:
        return None
    if _base_attribute(body):
        return None
    encoding = _document_encoding(body)
    if encoding not in _SAME_DECODING:
        return None  # lxml (iconv) and Python's codecs read legacy encodings apart
    charset = parse_content_type(content_type)[1]  # feedparser's reading: the last charset
    if charset and _codec(charset) != encoding:
        return None
    if content_type and not content_type.lower().startswith(
        ("application/", "text/xml", "text/plain")
    ):
        return None
    try:
        root = etree.fromstring(body, _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        return None
    try:
        return _read(root, source_id, base_url, language, tuple(tags))
    except _GiveUp:
        return None


def _read(
    root: Any, source_id: str, base_url: str, language: str, tags: tuple[str, ...]
) -> tuple[list[Item], Any]:
    from watcher.parse import _item, _language, canonical_url  # one implementation
    from watcher.text import html_to_text, html_to_text_and_tags

    ns, local = _split(root.tag)
    rdf = ns == RDF
    # feedparser sets the feed's language from the root's xml:lang, but not on rdf:RDF
    # (it compares the lower-cased tag with "rdf:RDF")
    root_lang = None if rdf else root.get(_XML_LANG)
    page_url = base_url  # parse.py falls back to this for the feed's link
    xml_base = root.get(_XML_BASE)
    if root.xpath("count(//@xml:base)") != (0 if xml_base is None else 1):
        raise _GiveUp  # bases below the root: feedparser's stack of them is its business
    if any(_split(name)[1] == "lang" for name in root.attrib if name != _XML_LANG):
        raise _GiveUp  # a plain or unknown-namespace lang: feedparser's xml:lang
    if xml_base is not None:
        # feedparser's rule for the document element's xml:base
        if base_url:
            base_url = make_safe_absolute_uri(base_url, xml_base) or base_url
        else:
            base_url = _urljoin(base_url, xml_base)
    if base_url and make_safe_absolute_uri(base_url, base_url) != base_url:
        raise _GiveUp  # feedparser joins the base to itself at each element: it would change
    if ns == "" and local == "rss":
        channels = [c for c in root if _split(c.tag) == ("", "channel")]
        if len(channels) != 1 or len(root) != 1:
            raise _GiveUp
        channel = channels[0]
        entries = [c for c in channel if _split(c.tag) == ("", "item")]
        feed_el = channel
        fields = _FIELDS
        atom = False
    elif ns == RDF and local == "rdf":
        channels = [c for c in root if _split(c.tag) == (RSS1, "channel")]
        entries = [c for c in root if _split(c.tag) == (RSS1, "item")]
        if len(channels) != 1:
            raise _GiveUp
        feed_el = channels[0]
        fields = _RSS1_FIELDS
        atom = False
    elif ns == ATOM and local == "feed":
        feed_el = root
        entries = [c for c in root if _split(c.tag) == (ATOM, "entry")]
        fields = _ATOM_FIELDS
        atom = True
    else:
        raise _GiveUp
    # rss and its channel, rdf:RDF and its channel, or the Atom feed
    contents_left = _check_tags(root, entries, 1 if atom else 2)
    _check_attributes(feed_el, rdf)
    if rdf:  # RSS 1.0's image and textinput beside the channel; nothing else there
        for child in root:
            key = _split(child.tag)
            if child is feed_el or key == (RSS1, "item"):
                continue
            if key not in ((RSS1, "image"), (RSS1, "textinput")):
                raise _GiveUp  # e.g. a guid, which feedparser makes the feed's link
            _feed_child(child, key)
    feed = _feed_fields(feed_el, rdf, base_url)
    feed_link = feed.get("link") or page_url
    # an empty <language/> is the feed's language all the same: '' (then the argument)
    feed_lang = _language(
        feed["language"] if "language" in feed else root_lang.replace("_", "-") if root_lang
        else None, language,
    )  # fmt: skip
    entry_lang = _language(feed_lang)  # an entry's language, unless it has its own
    items: list[Item] = []
    for el in entries:
        if el.keys():
            _check_attributes(el, rdf)
        entry = _fields(el, fields, base_url, atom=atom)
        contents_left -= entry.get(_CONTENTS, 0)
        if rdf and el.get(f"{{{RDF}}}about") and "id" not in entry:
            entry["id"] = el.get(f"{{{RDF}}}about")
        title = entry.get("title", "")
        contents = entry.get("contents", ())
        summary = entry.get("summary", "")
        # parse._entry_text's choice: the longest content, else the summary
        body = max(contents, key=len, default="") or summary
        text, names = html_to_text_and_tags(body)
        if names is None or not _RISKY_TAGS.isdisjoint(names):
            _check_markup(body)
        # else every "<" in the body opens a tag named in names: _RISKY_TEXT finds nothing
        for value in (title, summary, *contents):
            if value is not body:
                _check_markup(value)
        title = html_to_text(title)
        url = canonical_url(entry.get("link", ""), feed_link)
        guid = entry.get("id", "")
        if title or text or url or guid:  # parse.entry_item's rule
            lang = entry.get("language")
            language = _language(lang, feed_lang) if lang else entry_lang
            items.append(
                _item(source_id, guid, url, title, text, _published(entry), language, tags)
            )
    if contents_left:
        raise _GiveUp  # content outside an entry: feedparser carries its flag into the next
    return items, feed


def _published(entry: dict[str, Any]) -> datetime | None:
    """parse._published's choice: the first date that reads, published before updated."""
    value = entry.get("published")
    published = _date(value) if value else None
    if published is None:
        value = entry.get("updated")
        published = _date(value) if value else None
    return published


def _feed_fields(el: Any, rss1: bool, base: str) -> dict[str, Any]:
    """feed.link, feed.language and ttl of a channel or Atom feed element."""
    out: dict[str, Any] = {}
    plain = RSS1 if rss1 else ""
    for child in el:
        key = _split(child.tag)
        if key in _ENTRY_ELEMENTS:
            continue  # an entry (_check_tags has made sure it is one _read reads)
        if key in ((plain, "link"), ("", "link")) and not (key[0] == "" and rss1):
            if "link" in out or child.keys():
                raise _GiveUp  # an href, url or uri attribute is the link to feedparser
            value = _text(child)
            if not value or _NAME_REF.search(value):
                raise _GiveUp  # (feedparser's "query fix" of a link, see _link)
            out["link"] = _popped(_urljoin(base, value))
        elif key == (ATOM, "link"):
            _atom_link(child, out, base)
            rel = child.get("rel", "").lower()  # feedparser's case for rel and type
            if rel in ("hub", "self") and child.get("href") == "":
                raise _GiveUp  # feedparser's is the base: an empty href resolves to it
            if rel in ("hub", "self") and child.get("href"):
                out.setdefault(rel, _urljoin(base, child.get("href")))  # WebSub
        elif key == (ATOM, "id"):
            if child.keys():
                raise _GiveUp  # isPermaLink="false" keeps it from being the link
            value = _text(child)  # feedparser: an Atom id doubles as the link when none is given
            out.setdefault("link", _popped(_urljoin(base, value)) if value else value)
        elif key in ((plain, "language"), (DC, "language")):
            out["language"] = _popped(_text(child))
        elif key == (plain, "ttl"):
            if child.keys():
                raise _GiveUp  # feedparser keeps such a ttl apart
            out["ttl"] = _popped(_text(child))
        else:
            _feed_child(child, key)
    return out


def _feed_child(child: Any, key: tuple[str, str]) -> None:
    """Give up on a feed-level element _feed_fields does not read, or on what is inside it,
    where feedparser reads a field entries get (a channel's guid becomes the base of
    relative links; a link or language at any depth is the feed's)."""
    name = _feedparser_name(key)
    if name in _FEED_LEVEL_READS or (name or "").startswith("gml_"):
        raise _GiveUp  # (feedparser fails on GML outside a georss:where)
    if name is not None and not _has_handler(name) and _read_by_feedparser(name):
        raise _GiveUp  # a key of its own, where feedparser keeps one of another type
    if name in _FLAGGED_CHILDREN:
        _check_flagged(child, _FLAGGED_CHILDREN[name])
    elif len(child):
        allowed = _FEED_CONTAINERS.get(name or "", frozenset())
        for inner in child.iterdescendants():
            inner_name = _feedparser_name(_split(inner.tag))
            if (
                inner_name is not None
                and inner_name not in allowed
                and _read_by_feedparser(inner_name)
            ):
                raise _GiveUp


# What feedparser calls an element of a namespace it knows: its prefix for the namespace
# and the local name ("dc_date"), or the local name alone (plain RSS, Atom, RSS 1.0 ...)
_PREFIXES = {k.lower(): v for k, v in _FeedParserMixin.namespaces.items()}


@functools.lru_cache(maxsize=_KEYS_MAX)  # a hostile feed's made-up tags cannot grow it past this
def _feedparser_name(key: tuple[str, str]) -> str | None:
    prefix = _PREFIXES.get(key[0].lower())  # None: an unknown namespace (see _check_tags)
    return key[1] if prefix == "" else None if prefix is None else f"{prefix}_{key[1]}"


_ENTRY_ELEMENTS = frozenset({("", "item"), (ATOM, "entry")})
# Feed-level elements whose handlers set what entries get, unless _feed_fields reads them
# (a summary makes the description after it content, which sets the content flag)
_FEED_LEVEL_READS = frozenset(
    {"link", "language", "dc_language", "guid", "id", "ttl", "content", "content_encoded",
     "fullitem", "summary"}
)  # fmt: skip
# Feed-level elements whose children feedparser keeps apart (the flagged ones: see below)
_FEED_CONTAINERS = {
    "author": frozenset({"name", "email", "uri", "url", "href"}),
    "contributor": frozenset({"name", "email", "uri", "url", "href"}),
    "itunes_owner": frozenset({"itunes_name", "itunes_email"}),
    "itunes_category": frozenset({"itunes_category"}),
    "skiphours": frozenset({"hour"}),
    "skipdays": frozenset({"day"}),
}
# An image or textinput: feedparser tracks that it is inside one by a flag that any plain
# element but these clears (in ill-formed feeds, it says), after which a link inside it
# is the feed's link
_FLAGGED_CHILDREN = {
    "image": frozenset({"title", "link", "description", "url", "href", "width", "height"}),
    "textinput": frozenset({"title", "link", "description", "name"}),
}


def _check_flagged(el: Any, allowed: frozenset[str]) -> None:
    for child in el.iterdescendants():
        ns, local = _split(child.tag)
        prefix = _PREFIXES.get(ns.lower())
        if ns == "#" or prefix or (prefix == "" and local in allowed):
            continue  # an element with a prefix (feedparser's) clears no flag
        raise _GiveUp


def _atom_link(child: Any, out: dict[str, Any], base: str) -> None:
    keys = child.keys()
    if not _LINK_ATTRIBUTES.issuperset(keys):
        raise _GiveUp  # feedparser reads names in any case, and url or uri before href
    rel = child.get("rel", "alternate").lower()  # feedparser's case for rel and type
    ctype = child.get("type", "application/atom+xml" if rel == "self" else "text/html")
    if ctype.lower() in ("html", "xhtml"):
        raise _GiveUp  # feedparser's names for text/html and application/xhtml+xml
    href = child.get("href")
    if href is None or len(child):
        raise _GiveUp
    if rel == "alternate" and ctype.lower() in _HTML_TYPES:
        out["link"] = _urljoin(base, href)


_LINK_ATTRIBUTES = frozenset({"rel", "type", "href", "hreflang", "title", "length", _XML_LANG})


def _join(base: str, uri: str) -> str:
    """feedparser's _urljoin: with no base, only its extra-slash fix, and that only on ":///"."""
    if not base and ":///" not in uri:
        return uri
    return str(_urljoin(base, uri))


def _markup(el: Any, *, atom: bool) -> str:
    """The text of a title, summary or content element, if both paths read it alike (with
    _check_markup: every such text of an entry ends up in _fields' title, summary or
    contents, and _read checks each)."""
    value = _text(el)
    if atom:
        if not _TEXT_ATTRIBUTES.issuperset(el.keys()):
            raise _GiveUp  # e.g. mode="base64", which feedparser decodes
        ctype = el.get("type", "text").lower()
        if ctype not in ("text", "html", "text/html", "text/plain") or el.get("src"):
            raise _GiveUp
    elif el.keys():
        raise _GiveUp  # e.g. media:description type="html" mode="base64"
    if not value.isascii() and _C1.search(value):
        raise _GiveUp
    return _utf8_read_back(value)  # (its markup is checked by _check_markup, in _read)


_TEXT_ATTRIBUTES = frozenset({"type", _XML_LANG})


def _check_markup(value: str) -> None:
    """Give up on markup feedparser's sanitiser and our text extractor read apart."""
    if (
        "<" in value
        and _RISKY_TEXT.search(value)
        and _RISKY_TEXT.search(_EMPTY_IFRAME.sub("", value))
    ):
        raise _GiveUp


def _xml_content(el: Any) -> str | None:
    """'' for an Atom content of XML records feedparser keeps apart (SEC EDGAR's filings:
    `<content type="text/xml"><filing-date>...`), else None.

    Such content is no markup to feedparser: each child element is its own entry key
    (handled by no method of its own, holding only text), the content's value is the
    whitespace between them, stripped: ''. Anything else about it: feedparser decides.
    """
    if el.get("type", "").lower() not in ("text/xml", "application/xml") or len(el.keys()) != 1:
        return None
    if not len(el) or (el.text or "").strip():
        return None
    for child in el:
        ns, local = _split(child.tag)
        if (
            ns != ATOM
            or len(child)
            or child.keys()
            or (child.tail or "").strip()
            or _read_by_feedparser(local)
        ):
            return None
    return ""


def _read_by_feedparser(name: str) -> bool:
    """feedparser reads an element by this name: it has a handler for it, or, having none,
    stores it under a key its handlers keep (see _ENTRY_KEYS) or derive ("_detail")."""
    return _has_handler(name) or name in _ENTRY_KEYS or name.endswith("_detail")


_HANDLED: dict[str, bool] = {}  # local name -> feedparser handles it, or makes it "_parsed"


def _has_handler(local: str) -> bool:
    handled = _HANDLED.get(local)
    if handled is None:
        handled = (
            local.endswith("_parsed")
            or hasattr(_FeedParser, "_start_" + local)
            or hasattr(_FeedParser, "_end_" + local)
        )
        if len(_HANDLED) < _KEYS_MAX:
            _HANDLED[local] = handled
    return handled


def _description(out: dict[str, Any], value: str) -> None:
    """An RSS description or media:description, by feedparser's rule: the first is the
    summary; one after it, while the entry has no content yet, is content."""
    if "summary" not in out:
        out["summary"] = value
    elif not out.get("contents"):
        out["contents"] = [value]
    else:
        raise _GiveUp  # a third one replaces the summary: order-dependent


def _action(fields: dict[tuple[str, str], str], tag: Any) -> str:
    """What the child element with this tag is to _fields (see _ACTIONS)."""
    key = _split(tag)
    name = fields.get(key)
    if name is not None:
        return name
    if key[0] == "#":
        return _SKIP
    if key in _IGNORED:
        return _IGNORE
    if key[0] == "" or key[0].lower() in _KNOWN_NS or key[0] == RSS1:
        return _GIVE_UP  # feedparser may map it onto a field we read
    return _SKIP  # an unknown namespace: feedparser stores it apart


def _fields(
    el: Any, fields: dict[tuple[str, str], str], base: str, *, atom: bool
) -> dict[str, Any]:
    """The fields feedparser would set on one entry, in document order."""
    out: dict[str, Any] = {}
    seen: set[str] = set()
    actions = _ACTIONS[id(fields)]
    for child in el:
        tag = child.tag
        name = actions.get(tag)
        if name is None:
            name = _action(fields, tag)
            if len(actions) < _KEYS_MAX:
                actions[tag] = name
        if name == _SKIP:
            continue
        if name == _IGNORE:
            if not len(child):
                continue  # most often: nothing inside
            allowed = _HARMLESS_CHILDREN.get(_split(tag), frozenset())
            for c in child.iterdescendants():
                inner = _split(c.tag)
                if inner not in allowed:
                    raise _GiveUp  # e.g. an <image> inside a <category>: feedparser reads it
                if inner == (MEDIA, "description"):
                    if atom:
                        raise _GiveUp  # feedparser's summary or content then: not modelled
                    _description(out, _markup(c, atom=False))
            continue
        if name == _GIVE_UP:
            raise _GiveUp
        if name == "atomlink":
            _atom_link(child, out, base)
            continue
        if name == "description" or (name == "summary" and not atom):
            _description(out, _markup(child, atom=False))
            continue
        if name in seen:
            raise _GiveUp  # feedparser's handling of duplicates is order-dependent
        seen.add(name)
        if name == "title" or name == "summary":
            out[name] = _markup(child, atom=atom)
            continue
        if name == "content":
            out[_CONTENTS] = out.get(_CONTENTS, 0) + 1
            value = _xml_content(child) if atom else None
            out.setdefault("contents", []).append(
                _markup(child, atom=atom) if value is None else value
            )
            continue
        if len(child):
            raise _GiveUp  # markup as child elements: feedparser serialises it its own way
        value = (child.text or "").strip()
        if name == "link":
            if child.keys():
                raise _GiveUp  # an href, url or uri attribute is the link to feedparser
            # an empty <link/> is an empty link to feedparser, whatever the base
            out["link"] = _link(_popped(_join(base, value))) if value else ""
        elif name == "id":
            if atom and child.keys():
                raise _GiveUp  # isPermaLink="false" keeps it from being the link
            is_link = atom or _is_permalink(child)
            if is_link and value:
                value = _join(base, value)
            value = _popped(value)
            out["id"] = value
            if is_link:
                out.setdefault("link", value)
        elif name == "published" or name == "updated":
            out[name] = _popped(value)  # read by _published: the second only if the first does not
        elif name == "language":
            out["language"] = _popped(value)
    return out


# "&amp;" or another reference-like "&name;" left in a link's text once XML has decoded it
_NAME_REF = re.compile("&([A-Za-z0-9_]+);")


def _link(value: str) -> str:
    """feedparser's fix of an entry link's query: "&amp;" is "&", "&name;" is "&name"
    (`?a=1&amp;amp;b=2`, escaped twice, is `?a=1&b=2`)."""
    if "&" not in value:
        return value
    return _NAME_REF.sub(r"&\g<1>", value.replace("&amp;", "&"))


def _is_permalink(guid: Any) -> bool:
    """feedparser's guidislink: isPermaLink="true" or none, its name in any case (it reads
    every attribute name in lower case; of two spellings, the last), in no namespace or
    one it does not prefix (an unknown one loses its prefix: `x:isPermaLink` counts)."""
    value = None
    for name, given in guid.items():
        ns, local = _split(name)
        if local == "ispermalink" and not _PREFIXES.get(ns.lower()):
            if value is not None and name[0] == "{":
                raise _GiveUp  # two, one in a namespace: the order feedparser sees is expat's
            value = given
    return value is None or value == "true"


_DATE_ERRORS = (KeyError, OverflowError, ValueError, AttributeError)  # what _parse_date skips
# The common shapes, read here as feedparser's RFC 822 and W3DTF handlers read them: an
# optional day name, day, month, four-digit year, time with seconds, and a numeric or
# named zone; W3DTF with seconds (a fraction is dropped) and Z or a +hh:mm offset.
_RFC822 = re.compile(
    r"(?:(?:mon|tue|wed|thu|fri|sat|sun), )?(\d\d?) ([a-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d)"
    r" (?:([+-]\d{4})|([a-z]{1,4}))",
    re.IGNORECASE,
)
_W3DTF = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)t(\d\d):(\d\d):(\d\d)(?:\.\d+)?(?:z|([+-]\d\d:\d\d))",
    re.IGNORECASE,
)

_NO_OFFSET = timedelta()
# east of UTC; unknown names are UTC
_ZONES: dict[str, timedelta] = {k: timedelta(hours=v) for k, v in rfc822_zones.items()}
_OFFSETS: dict[str, timedelta] = {}  # "+0530" or "+05:30" -> its offset, filled on demand


def _offset(value: str) -> timedelta:
    offset = _OFFSETS.get(value)
    if offset is None:
        offset = timedelta(hours=int(value[1:3]), minutes=int(value[-2:]))
        offset = -offset if value[0] == "-" else offset
        if len(_OFFSETS) < 4096:  # at most 2 x 100 x 100 spellings reach here anyway
            _OFFSETS[value] = offset
    return offset


def _date(value: str) -> datetime | None:
    """What parse._published makes of feedparser's `_parse_date(value)`, faster.

    The common shapes are read by one regex each; anything else goes to feedparser's
    own handlers. Its first is W3DTF, which reads no date that does not start with
    four digits, and RFC 822 its second: so one of the two gives _parse_date's answer,
    or it is asked itself. A test holds both ways to the same instants.
    """
    m = _RFC822.fullmatch(value)
    if m is not None:
        day, name, year, hour, minute, second, numeric, zone = m.groups()
        month = _MONTHS.get(name.lower())
        if numeric is not None:
            offset: timedelta | None = _offset(numeric)
        else:
            zone = zone.lower()
            gmt_plus = zone.startswith("gmt") and zone != "gmt"  # feedparser reads "gmt+1"
            offset = None if gmt_plus else _ZONES.get(zone, _NO_OFFSET)
        if month is not None and offset is not None:
            return _utc(int(year), month, int(day), int(hour), int(minute), int(second), offset,
                        value)  # fmt: skip
    m = _W3DTF.fullmatch(value)
    if m is not None:
        year, month_, day, hour, minute, second, numeric = m.groups()
        offset = _NO_OFFSET if numeric is None else _offset(numeric)
        return _utc(int(year), int(month_), int(day), int(hour), int(minute), int(second),
                    offset, value)  # fmt: skip
    return _slow_date(value)


def _utc(
    year: int, month: int, day: int, hour: int, minute: int, second: int, offset: timedelta,
    value: str,
) -> datetime | None:  # fmt: skip
    if not 1900 <= year <= 2200:
        return _slow_date(value)  # near the ends of time, feedparser's own arithmetic decides
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC) - offset
    except ValueError:  # no such date (a 31 February, a 25th hour): feedparser decides
        return _slow_date(value)


def _slow_date(value: str) -> datetime | None:
    handler = _parse_date_rfc822 if value[:1].isalpha() else _parse_date_w3dtf
    try:
        parsed = handler(value)
    except _DATE_ERRORS:
        parsed = None
    if not (parsed and len(parsed) == 9):
        parsed = _parse_date(value)
    if parsed is None:
        return None
    try:  # as parse._published converts it
        return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None
