"""Parse stage: fetched bytes -> normalised Items.

feedparser is always handed the bytes we fetched, never a URL or a URL-like
string: given one, it would fetch it itself, around every limit and check.
"""

from __future__ import annotations

import asyncio
import calendar
import codecs
import functools
import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, Required, TypedDict, Unpack
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
import feedparser.encodings

from watcher import constants
from watcher.errors import ParseError
from watcher.fastparse import fast_parse
from watcher.federal_register import is_federal_register, items_from_api, join_documents
from watcher.memtrim import after_parse
from watcher.models import Item
from watcher.text import SURROGATE, fold_utf8, html_to_text

P = ParamSpec("P")
_TRACKING_PARAMS = frozenset({"fbclid", "gclid", "mc_cid", "mc_eid", "ocid", "cmpid"})


# An absolute http(s) URL as urlsplit splits it (netloc, path, query; the fragment dropped)
# when it holds nothing urlsplit removes or checks: no tab, CR or LF, no IPv6 brackets; and
# a netloc that is a host as it is (no userinfo, nothing _BAD_HOST finds, not a bare port).
_NETLOC_CHAR = r"[^/?#\[\]\x00-\x20\x7f@\\<>^|\"]"
_HTTP_URL = re.compile(
    rf"(?i:https?)://((?!:){_NETLOC_CHAR}+)(/[^?#\t\r\n]*)?(?:\?([^#\t\r\n]*))?(?:#.*)?",
    re.S,
)
# What no host holds (the WHATWG URL standard's forbidden host code points that urlsplit
# lets through): a link whose netloc has one is no link ("https://gov.example\\@x.example/"
# goes to gov.example in a browser, to x.example by urlsplit).
_BAD_HOST = re.compile(r"[\x00-\x20\x7f\\<>^|\"]")


# A query parse_qsl and urlencode give back as it is: name=value pairs of characters
# neither quotes nor unquotes; with none of the tracking names, it is its own clean form.
_PLAIN_QUERY = re.compile(r"[\w.~-]+=[\w.~-]*(?:&[\w.~-]+=[\w.~-]*)*", re.ASCII)
_TRACKING_NAME = re.compile(
    r"(?:^|&)(?:utm_|(?:" + "|".join(sorted(_TRACKING_PARAMS)) + ")=)", re.IGNORECASE
)


def _clean_query(query: str) -> str:
    if _PLAIN_QUERY.fullmatch(query) and not _TRACKING_NAME.search(query):
        return query
    return urlencode(
        [
            (k, v)
            for k, v in parse_qsl(query, keep_blank_values=True)
            if not k.lower().startswith("utm_") and k.lower() not in _TRACKING_PARAMS
        ]
    )


def canonical_url(url: str, base: str = "") -> str:
    """Absolute http(s) URL without fragment, user, password and tracking parameters; ''
    if not http(s) or its host is not one."""
    url = url.strip()
    if not url:
        return ""
    # the common case, an absolute http(s) URL: urlsplit's split by one regex (a property
    # test holds this to the general way below)
    m = _HTTP_URL.fullmatch(url) if ";" not in url else None
    if m is not None and m[1].isascii():
        netloc, path, query = m.groups()
        query = _clean_query(query) if query else ""
        scheme = "https://" if url[4] in "sS" else "http://"
        return f"{scheme}{netloc.lower()}{path or '/'}{'?' if query else ''}{query}"
    try:
        # urljoin leaves an absolute http(s) URL as it is, up to what the canonical form
        # rebuilds anyway (a ";" is where its round trip could differ): skip it then
        absolute = url[:8].lower().startswith(("http://", "https://")) and ";" not in url
        if base and not absolute:
            url = urljoin(base, url)
        parts = urlsplit(url)
        if base and absolute and not parts.netloc:  # "http:path": relative after all
            parts = urlsplit(urljoin(base, url))
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    if _BAD_HOST.search(parts.netloc):
        return ""
    # a user and password dropped: "https://gov.example@x.example/" goes to x.example
    host = parts.netloc.rpartition("@")[2]
    if not parts.hostname:  # none, or only a port: "http://:80/", "https://u:p@:8080/"
        return ""
    # most links have no query: no parse_qsl/urlencode round trip then
    query = _clean_query(parts.query) if parts.query else ""
    return urlunsplit((parts.scheme.lower(), host.lower(), parts.path or "/", query, ""))


def content_hash(title: str, text: str) -> str:
    """sha256 of normalize(title), a newline and normalize(text), as UTF-8: 32 hex digits."""
    digest = hashlib.sha256(fold_utf8(title))
    digest.update(b"\n")
    digest.update(fold_utf8(text))
    return digest.hexdigest()[:32]


def _published(entry: Mapping[str, Any]) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        # dict.get: feedparser's own .get aliases updated -> published with a warning
        value = dict.get(entry, key) if isinstance(entry, dict) else entry.get(key)
        if isinstance(value, time.struct_time):
            try:
                return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
            except (OverflowError, ValueError, OSError):
                continue
    return None


def _language(*candidates: object) -> str:
    for value in candidates:
        if isinstance(value, str) and value.strip():
            return value.strip().lower().replace("_", "-").split("-")[0]
    return ""


def _entry_text(entry: Mapping[str, Any]) -> str:
    contents = entry.get("content") or []
    bodies = [c.get("value", "") for c in contents if isinstance(c, Mapping)]
    body = max(bodies, key=len, default="") or entry.get("summary", "") or ""
    return html_to_text(str(body))[: constants.ITEM_TEXT_MAX_CHARS]


def make_item(
    *,
    source_id: str,
    guid: str = "",
    url: str = "",
    title: str = "",
    text: str = "",
    published: datetime | None = None,
    language: str = "",
    tags: Iterable[str] = (),
) -> Item:
    """Build an Item with its identity: guid, else canonical link, else content hash."""
    return _item(source_id, guid, url, title, text, published, language, tuple(tags))


def _item(
    source_id: str,
    guid: str,
    url: str,
    title: str,
    text: str,
    published: datetime | None,
    language: str,
    tags: tuple[str, ...],
) -> Item:
    """make_item's work, its arguments by position (the parse loops call it per entry)."""
    # PostgreSQL text holds no NUL: one from a broken feed (`&#0;`, which feedparser's loose
    # parser reads, or JSON's \u0000) would fail the insert of the whole batch, every poll
    title = title.replace("\x00", "")[: constants.ITEM_TITLE_MAX_CHARS]
    text = text.replace("\x00", "")[: constants.ITEM_TEXT_MAX_CHARS]
    chash = content_hash(title, text)
    guid = guid.replace("\x00", "").strip()
    url = url.replace("\x00", "")
    language = language.replace("\x00", "")
    if guid:
        key = f"guid:{guid}"
    elif url:
        key = f"url:{url}"
    else:
        key = f"hash:{chash}"
    if published is not None and published.tzinfo is not UTC:
        published = published.astimezone(UTC)
    return Item(
        source_id=source_id,
        dedup_key=key[:512],
        guid=guid[:512],
        url=url,
        title=title,
        text=text,
        published=published,
        language=language,
        tags=tags,
        content_hash=chash,
    )


@dataclass(frozen=True)
class ParsedFeed:
    items: list[Item]
    ttl_s: float | None = None  # RSS <ttl>, in seconds
    hub: str | None = None  # a WebSub hub the feed advertises (<link rel="hub">)
    self_url: str | None = None  # the feed's own URL (<link rel="self">), the WebSub topic


_ENTITY_MARKERS = tuple(
    b"<!ENTITY".decode().encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be")
)
_ASCII = bytes(range(128))
# what feedparser reads as a declared encoding: every `encoding="..."` on the first line
_DECLARED_ENCODING = re.compile(rb"encoding=[\'\"]([^\'\"\n]*)")
_CONTENT_TYPE_CHARSET = re.compile(r"charset\s*=\s*[\"']?([^\s;\"']*)", re.IGNORECASE)
_EBCDIC_XML = b"\x4c\x6f\xa7\x94"  # "<?xm" in EBCDIC, which feedparser reads as cp037


@functools.lru_cache(maxsize=64)  # the names come from feeds: a bounded cache
def _shows_ascii_as_is(encoding: str) -> bool:
    """Whether a document in this encoding holds "<!ENTITY" as those ASCII bytes: it reads
    every ASCII byte as itself, and no other byte sequence as ASCII (the stateless
    single- and multi-byte encodings; not UTF-7, UTF-16/32, EBCDIC or ISO-2022)."""
    try:
        codec = codecs.lookup(encoding)
        return _ASCII.decode(codec.name) == _ASCII.decode("ascii") and codec.name not in ("utf-7")
    except (LookupError, UnicodeDecodeError, ValueError):
        return False  # unknown to Python: feedparser tries other encodings, checked below


def _feedparser_headers(content_type: str, base_url: str) -> dict[str, str]:
    # no Content-Type: XML's default, UTF-8, as with no headers at all. (Headers without
    # one, only the base URL, would have feedparser read the body as ISO-8859-1.)
    headers = {"content-type": content_type or "application/xml"}
    if base_url:
        headers["content-location"] = base_url
    return headers


def refuse_entities(
    body: bytes, *, source_id: str, content_type: str = "", base_url: str = ""
) -> None:
    """Refuse any XML entity declaration: no billion laughs, no external entities.

    Like defusedxml's `forbid_entities`: a feed has no business declaring
    entities, and the predefined ones (&amp; &lt; ...) need no declaration.
    Whatever encoding feedparser would read the body in (UTF-32, EBCDIC, UTF-7...).
    """
    # the UTF-16 markers hold NUL bytes: a body without one (most) needs no search for them
    nul = b"\x00" in body
    markers = _ENTITY_MARKERS if nul else _ENTITY_MARKERS[:1]
    found = any(marker in body for marker in markers)
    if not found and _may_hide_ascii(body, content_type, nul=nul):
        # an encoding the bytes do not show "<!ENTITY" in: search where feedparser reads it
        found = b"<!ENTITY" in _as_feedparser_reads(
            body, source_id=source_id, content_type=content_type, base_url=base_url
        )
    if found:
        raise ParseError(
            "XML entity declarations are refused (entity expansion, external entities)",
            source_id=source_id,
        )


def _may_hide_ascii(body: bytes, content_type: str, *, nul: bool) -> bool:
    """Whether feedparser may read the body in an encoding that does not show ASCII as
    its bytes (UTF-16/32, which hold NUL bytes; EBCDIC; a declared or HTTP charset)."""
    return nul or body[:4] == _EBCDIC_XML or _hides_ascii(body, content_type)


def _as_feedparser_reads(body: bytes, *, source_id: str, content_type: str, base_url: str) -> bytes:
    """The body as feedparser reads it: converted to UTF-8 by its own encoding rules."""
    headers = _feedparser_headers(content_type, base_url)
    try:
        converted: bytes = feedparser.encodings.convert_to_utf8(headers, body, {})
    except Exception as exc:  # as feedparser.parse would fail: a declared "\x80tf-8"
        raise ParseError(f"parser failure: {type(exc).__name__}", source_id=source_id) from exc
    return converted


def _hides_ascii(body: bytes, content_type: str) -> bool:
    """Whether the body's declared encoding or the HTTP charset may not show ASCII as it is."""
    line_end = body.find(b"\n")
    first_line = body if line_end < 0 else body[:line_end]
    names = [m[1].decode("latin-1") for m in _DECLARED_ENCODING.finditer(first_line)]
    if "charset" in content_type.lower():
        names += _CONTENT_TYPE_CHARSET.findall(content_type)
    return not all(map(_shows_ascii_as_is, names))


def entry_item(
    *,
    source_id: str,
    guid: str,
    url: str,
    title: str,
    text: str,
    published: datetime | None,
    language: str,
    tags: Iterable[str],
) -> Item | None:
    """A feed entry as an Item, or None when it has nothing to identify or show."""
    if not (title or text or url or guid):
        return None
    return _item(source_id, guid, url, title, text, published, language, tuple(tags))


class ParseOptions(TypedDict, total=False):
    """What `parse_document` takes besides the body, for the functions that pass it on."""

    source_id: Required[str]
    content_type: str
    base_url: str
    language: str
    tags: Iterable[str]


def parse_feed(body: bytes, **options: Unpack[ParseOptions]) -> list[Item]:
    """Parse a fetched feed body (RSS, Atom, RDF or JSON Feed) into Items.

    Raises ParseError when the body is not a feed at all (an HTML page, an empty
    body, a JSON error). A feed with no entries gives an empty list.
    """
    return parse_document(body, **options).items


def _releasing_memory(
    parse: Callable[Concatenate[bytes, P], ParsedFeed],
) -> Callable[Concatenate[bytes, P], ParsedFeed]:
    """After each parse, count the body towards giving the C heap's free pages back to
    the system (watcher.memtrim), whether the parse succeeded or not."""

    @functools.wraps(parse)
    def parse_then_release(body: bytes, /, *args: P.args, **kwargs: P.kwargs) -> ParsedFeed:
        try:
            return parse(body, *args, **kwargs)
        finally:
            if isinstance(body, bytes):
                after_parse(len(body))

    return parse_then_release


@functools.cache
def _parse_thread() -> ThreadPoolExecutor:
    # one thread: large bodies are parsed one at a time, as on the loop, so their trees
    # never add up in memory
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="watcher-parse")


async def parse_off_loop(body: bytes, **options: Unpack[ParseOptions]) -> ParsedFeed:
    """`parse_document`, in a worker thread when the body is large.

    Parsing holds the GIL, but a thread gives it up every few milliseconds, so
    the event loop goes on (deliveries, the API, other polls) while a large or
    hostile feed is read: feedparser, the fallback for a broken feed, reads
    ~2.5 MB/s, and a body may hold up to 10 MB. Small bodies, most of them,
    are parsed at once: the hop to a thread would cost more than their parse.
    """
    parse = functools.partial(parse_document, body, **options)
    if not isinstance(body, bytes) or len(body) < constants.PARSE_IN_THREAD_BYTES:
        return parse()
    return await asyncio.get_running_loop().run_in_executor(_parse_thread(), parse)


@_releasing_memory
def parse_document(
    body: bytes,
    *,
    source_id: str,
    content_type: str = "",
    base_url: str = "",
    language: str = "",
    tags: Iterable[str] = (),
) -> ParsedFeed:
    """`parse_feed`, plus what the feed says about polling it (RSS ttl)."""
    if not isinstance(body, bytes):  # never let feedparser see a URL-like string
        raise TypeError("parse_feed takes the fetched bytes")
    start = _content_start(body)
    if start == len(body):
        raise ParseError("empty body", source_id=source_id)
    if body[start : start + 1] in (b"{", b"["):
        parsed = ParsedFeed(
            _parse_json_feed(body[start:], source_id=source_id, language=language, tags=tags)
        )
    else:
        parsed = _parse_xml(
            body,
            source_id=source_id,
            content_type=content_type,
            base_url=base_url,
            language=language,
            tags=tuple(tags),
        )
    join_documents(parsed.items)  # whichever parser read them, JSON Feed included
    return parsed


def _parse_xml(
    body: bytes,
    *,
    source_id: str,
    content_type: str,
    base_url: str,
    language: str,
    tags: tuple[str, ...],
) -> ParsedFeed:
    """An RSS, Atom or RDF body: the fast parser, else feedparser."""
    refuse_entities(body, source_id=source_id, content_type=content_type, base_url=base_url)
    read = functools.partial(
        fast_parse,
        source_id=source_id,
        content_type=content_type,
        base_url=base_url,
        language=language,
        tags=tags,
    )
    fast = read(body)
    if fast is None:
        # lxml refuses a whole feed for one reference to a character XML forbids: read
        # it again without them (a good feed, read above, never pays for the search)
        repaired = repair_references(body, content_type)
        if repaired is not body:
            body = repaired
            fast = read(body)
    if fast is not None:
        return fast_parsed(fast)
    return _parse_with_feedparser(
        body,
        source_id=source_id,
        content_type=content_type,
        base_url=base_url,
        language=language,
        tags=tags,
    )


def fast_parsed(fast: tuple[list[Item], Any]) -> ParsedFeed:
    """The ParsedFeed of what fast_parse read: its items, and the feed's ttl, hub and self."""
    meta = fast[1]
    hub, own = _feed_url(meta.get("hub")), _feed_url(meta.get("self"))
    return ParsedFeed(fast[0], _ttl_s(meta.get("ttl")), hub, own)


# A character reference that may be to a character XML forbids or to none, its number
# in group 1 (a search for one finds nothing in most bodies). A test holds it to
# _repaired_reference: it finds exactly the references that one changes.
_BAD_REFERENCE = (
    rb"&#([xX]0*(?:[0-8bcefBCEF]|1[0-9a-fA-F]|[dD][89a-fA-F][0-9a-fA-F]{2}|[fF]{3}[eEfF]"
    rb"|1[1-9a-fA-F][0-9a-fA-F]{4}|[2-9a-fA-F][0-9a-fA-F]{5}|[1-9a-fA-F][0-9a-fA-F]{6,})"
    rb"|0*(?:[0-8]|1[124-9]|2[0-9]|3[01]|5529[6-9]|55[3-9][0-9]{2}|56[0-9]{3}|57[0-2][0-9]{2}"
    rb"|573[0-3][0-9]|5734[0-3]|6553[45]|111411[2-9]|11141[2-9][0-9]|1114[2-9][0-9]{2}"
    rb"|111[5-9][0-9]{3}|11[2-9][0-9]{4}|1[2-9][0-9]{5}|[2-9][0-9]{6}|[1-9][0-9]{7,}));"
)
_ANY_BAD_REFERENCE = re.compile(_BAD_REFERENCE)
# ... or a CDATA section or a comment, whose "&#" is none (one never closed runs to the
# end of the body, so the search never scans the same bytes twice)
_REFERENCE = re.compile(_BAD_REFERENCE + rb"|<!\[CDATA\[(?:.*?\]\]>|.*)|<!--(?:.*?-->|.*)", re.S)
_CODE_POINT_MAX_DIGITS = 7  # 1114111 (U+10FFFF), leading zeros aside


def _repaired_reference(match: re.Match[bytes]) -> bytes:
    """What a reference to a character XML forbids or to none becomes (a CDATA section or
    a comment, and a reference to a character XML allows, stay as they are)."""
    number = match[1]
    if number is None:
        return match[0]
    hexadecimal = number[:1] in b"xX"
    digits = (number[1:] if hexadecimal else number).lstrip(b"0") or b"0"
    code = int(digits, 16 if hexadecimal else 10) if len(digits) <= _CODE_POINT_MAX_DIGITS else -1
    xml_char = 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF
    if xml_char or code in (0x9, 0xA, 0xD):  # XML's Char production
        return match[0]
    if code < 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return b"&#xFFFD;"  # no character at all
    return b""  # a character XML forbids: NUL, a C0 control, U+FFFE, U+FFFF


def repair_references(body: bytes, content_type: str = "") -> bytes:
    """The body without the character references XML forbids, which fail a whole feed:
    lxml and feedparser's strict parser refuse them, and its loose parser fails on a
    surrogate or a number past U+10FFFF (it reads the others as the character).

    A reference to no character (a surrogate, past U+10FFFF) becomes U+FFFD, as in HTML
    and as a lone surrogate in a JSON Feed does here; one to a character XML forbids
    (NUL, a C0 control but tab, LF and CR, U+FFFE, U+FFFF) becomes nothing, as a NUL
    always did. Whatever encoding feedparser reads the body in. A body with none is
    given back as it is (the same object).
    """
    if not _may_hide_ascii(body, content_type, nul=b"\x00" in body):
        return _repaired(body)
    # UTF-16, UTF-32, EBCDIC...: repaired as feedparser reads it, then written back in
    # that encoding (when it gives back these very bytes, as the codecs feedparser picks do)
    result: dict[str, Any] = {}
    try:
        utf8 = feedparser.encodings.convert_to_utf8(
            _feedparser_headers(content_type, ""), body, result
        )
        encoding = str(result.get("encoding") or "")
        if not encoding or _ANY_BAD_REFERENCE.search(utf8) is None:
            return body
        text = body.decode(encoding)
        if text.encode(encoding) != body:
            return body
        return _repaired(text.encode()).decode().encode(encoding)
    except Exception:  # feedparser fails on this body its own way, and says so
        return body


def _repaired(body: bytes) -> bytes:
    if _ANY_BAD_REFERENCE.search(body) is None:  # most bodies: one search at C speed
        return body
    repaired = _REFERENCE.sub(_repaired_reference, body)
    return body if repaired == body else repaired  # those in CDATA sections, say


# what may come before a document's first byte of content: whitespace, a UTF-8 BOM
_LEAD = re.compile(rb"\s*(?:\xef\xbb\xbf\s*)?")
# ... and before an HTML page's <html> or doctype: comments, an XML declaration
_HTML_PROLOGUE = re.compile(rb"(?:\s+|<!--.*?-->|<\?.*?\?>)*", re.S)
_HTML_START = re.compile(rb"<!doctype\s+html|<html[\s>]", re.I)
_HTML_HEAD_BYTES = 4096  # how far into a body to look for the start of an HTML page


def _content_start(body: bytes) -> int:
    """Where the content of `body` starts: after leading whitespace and a UTF-8 BOM
    (Windows and .NET servers send one), found without copying the body."""
    match = _LEAD.match(body)
    return match.end() if match else 0


def _looks_like_html(body: bytes) -> bool:
    """An HTML page, whatever comes first: a BOM, comments (a server's banner), an XML
    declaration (XHTML), a doctype in any case."""
    head = body[:_HTML_HEAD_BYTES]
    head = head[_content_start(head) :]
    prologue = _HTML_PROLOGUE.match(head)
    return _HTML_START.match(head, prologue.end() if prologue else 0) is not None


# the start tag of an RSS item or an Atom entry, any case, any prefix
_ENTRY_START = re.compile(rb"<(?:[\w.-]+:)?(?:item|entry)[\s>/]", re.IGNORECASE)


def _refuse_endless(body: bytes, *, source_id: str, content_type: str, base_url: str) -> None:
    """Refuse a body with more entries than feedparser should read (see
    constants.PARSE_FALLBACK_MAX_ENTRIES): counted up to one past the limit, in the
    encoding feedparser reads (a UTF-16 body shows no "<item" as ASCII bytes)."""
    limit = constants.PARSE_FALLBACK_MAX_ENTRIES
    if _may_hide_ascii(body, content_type, nul=b"\x00" in body):
        body = _as_feedparser_reads(
            body, source_id=source_id, content_type=content_type, base_url=base_url
        )
    starts = _ENTRY_START.finditer(body)
    if next(itertools.islice(starts, limit, None), None) is not None:
        raise ParseError(
            f"more than {limit} entries in a feed the fast parser cannot read: not read",
            source_id=source_id,
        )


def _parse_with_feedparser(
    body: bytes,
    *,
    source_id: str,
    content_type: str,
    base_url: str,
    language: str,
    tags: Iterable[str],
) -> ParsedFeed:
    _refuse_endless(body, source_id=source_id, content_type=content_type, base_url=base_url)
    body = repair_references(body, content_type)
    headers = _feedparser_headers(content_type, base_url)
    try:
        parsed = feedparser.parse(
            body, response_headers=headers, sanitize_html=False, resolve_relative_uris=False
        )
    except Exception as exc:  # feedparser is robust, but the input is hostile
        raise ParseError(f"parser failure: {type(exc).__name__}", source_id=source_id) from exc
    entries = parsed.get("entries") or []
    if not parsed.get("version") and not entries:
        if _looks_like_html(body):
            what = "an HTML page"
        else:
            problem = parsed.get("bozo_exception")
            what = (
                "unrecognised document ("
                + (type(problem).__name__ if problem else "no feed elements")
                + ")"
            )
        raise ParseError(what, source_id=source_id)
    feed = parsed.get("feed") or {}
    feed_link = str(feed.get("link") or base_url)
    feed_lang = _language(feed.get("language"), language)
    tag_tuple = tuple(tags)
    items: list[Item] = []
    for entry in entries:
        title = html_to_text(str(entry.get("title") or ""))
        text = _entry_text(entry)
        url = canonical_url(str(entry.get("link") or ""), feed_link)
        guid = str(entry.get("id") or "")
        item = entry_item(
            source_id=source_id,
            guid=guid,
            url=url,
            title=title,
            text=text,
            published=_published(entry),
            language=_language(entry.get("language"), feed_lang),
            tags=tag_tuple,
        )
        if item is not None:
            items.append(item)
    links = [link for link in feed.get("links") or [] if isinstance(link, Mapping)]
    hub = next((x.get("href") for x in links if x.get("rel") == "hub" and x.get("href")), None)
    own = next((x.get("href") for x in links if x.get("rel") == "self" and x.get("href")), None)
    return ParsedFeed(items, _ttl_s(feed.get("ttl")), _feed_url(hub), _feed_url(own))


def _feed_url(href: object) -> str | None:
    """A hub or self URL as both parsers give it (an Atom link's href, joined to the base
    as it is), without the whitespace around it: "" is none."""
    return str(href).strip() or None if href else None


def _ttl_s(value: object) -> float | None:
    """RSS <ttl> is in minutes."""
    try:
        minutes = float(str(value).strip())
    except ValueError:
        return None
    return minutes * 60.0 if 0 < minutes < 10**6 else None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a surrogate in JSON's \u escape


def _parse_json_feed(
    body: bytes, *, source_id: str, language: str, tags: Iterable[str]
) -> list[Item]:
    """JSON Feed 1.0/1.1 (https://jsonfeed.org), which feedparser 6 does not read."""
    try:
        # strictly decoded: json.loads would let surrogates through, which no UTF-8 holds
        text = body.decode(json.detect_encoding(body))
        doc = json.loads(text)
        if _SURROGATE_ESCAPE.search(text):  # "\ud800": a lone one becomes U+FFFD
            doc = json.loads(SURROGATE.sub("\ufffd", json.dumps(doc, ensure_ascii=False)))
    except (ValueError, RecursionError):
        raise ParseError("invalid JSON", source_id=source_id) from None
    if is_federal_register(doc):
        return items_from_api(doc, source_id=source_id, tags=tags)
    if not (
        isinstance(doc, dict)
        and "jsonfeed.org/version" in str(doc.get("version", ""))
        and isinstance(doc.get("items"), list)
    ):
        raise ParseError("JSON that is not a JSON Feed", source_id=source_id)
    base = str(doc.get("home_page_url") or doc.get("feed_url") or "")
    feed_lang = _language(doc.get("language"), language)
    items: list[Item] = []
    for entry in doc["items"]:
        if not isinstance(entry, dict):
            continue
        html = entry.get("content_html")
        text = (
            html_to_text(str(html)) if html else html_to_text(str(entry.get("content_text") or ""))
        )
        if not text and entry.get("summary"):
            text = html_to_text(str(entry["summary"]))
        published = None
        for key in ("date_published", "date_modified"):
            try:
                published = datetime.fromisoformat(str(entry.get(key) or "").replace("Z", "+00:00"))
            except ValueError:
                continue
            if published.tzinfo is None:
                published = published.replace(tzinfo=UTC)
            try:
                published = published.astimezone(UTC)
            except OverflowError:  # "0001-01-01T00:00:00+01:00": before the first UTC instant
                published = None
                continue
            break
        title = html_to_text(str(entry.get("title") or ""))
        url = canonical_url(str(entry.get("url") or ""), base)
        guid = str(entry.get("id") or "")
        item = entry_item(
            source_id=source_id,
            guid=guid,
            url=url,
            title=title,
            text=text,
            published=published,
            language=_language(entry.get("language"), feed_lang),
            tags=tags,
        )
        if item is not None:
            items.append(item)
    return items
