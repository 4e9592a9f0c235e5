"""The Federal Register API adapter: documents.json and Public Inspection JSON -> Items.

    https://www.federalregister.gov/api/v1/documents.json
        ?conditions[agencies][]=industry-and-security-bureau&conditions[term]=semiconductor
    https://www.federalregister.gov/api/v1/public-inspection-documents/current.json

A search answer (`{"results": [...]}`), a single document, and Public
Inspection documents all become the same `Item`s as feed entries. A document
is identified by its document number, which the Federal Register assigns
when the document is filed for public inspection (about one business day
before publication) and keeps when it is published. So the filing and the
published document share one identity: the same guid (`fr-doc:<number>`) and
the same content hash, which is the story key an alert is raised once for.
The filing alerts; the published document joins the same story instead of
alerting again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import cache
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from watcher.models import Item
from watcher.text import html_to_text

API = "https://www.federalregister.gov/api/v1"
PUBLIC_INSPECTION_TAG = "public-inspection"


def documents_url(
    agencies: Iterable[str] = (), term: str = "", *, fmt: str = "json", per_page: int = 100
) -> str:
    """A documents search URL (newest first) with agency and term conditions."""
    query: list[tuple[str, str]] = [("conditions[agencies][]", a) for a in agencies]
    if term:
        query.append(("conditions[term]", term))
    query += [("order", "newest"), ("per_page", str(per_page))]
    return f"{API}/documents.{fmt}?{urlencode(query)}"


def public_inspection_url() -> str:
    return f"{API}/public-inspection-documents/current.json"


def is_federal_register(doc: object) -> bool:
    """A Federal Register API answer: a search result list (maybe empty) or one document.

    A search with no match may leave `results` out (`{"count": 0, "description": ...,
    "total_pages": 0}`). Entries that are not documents are skipped when items are read,
    so one is enough to tell a result list, as long as some entry is a document.
    """
    if not isinstance(doc, Mapping):
        return False
    results = doc.get("results")
    if isinstance(results, list):
        if not results:
            return "count" in doc or "description" in doc
        return any(isinstance(r, Mapping) and "document_number" in r for r in results)
    if results is None and doc.get("count") == 0 and "document_number" not in doc:
        return "description" in doc or "total_pages" in doc
    return "document_number" in doc and ("html_url" in doc or "title" in doc)


# "FR Doc. 2026-02222", as the printed Federal Register cites a document
_FR_DOC_PREFIX = re.compile(r"fr\s*doc\b\.?\s*", re.IGNORECASE)


def normal_number(number: str) -> str:
    """A document number as the Federal Register writes it: "C1-2026-02222".

    Every path that reads a number (the API's field, a document page's URL) goes
    through here, so one document has one identity however a source spells it:
    without the whitespace around it or an "FR Doc." citation prefix, upper case.
    """
    number = number.strip()
    if prefix := _FR_DOC_PREFIX.match(number):
        number = number[prefix.end() :]
    return number.upper()


def story_hash(document_number: str) -> str:
    """The content hash (story key) of a Federal Register document: its number."""
    return hashlib.sha256(f"fr-doc:{normal_number(document_number)}".encode()).hexdigest()[:32]


# A document's page: /documents/YYYY/MM/DD/<number>/<slug>, or the short form /d/<number>
# (what documents.rss links to, and its guid); the host as canonical_url writes it.
_DOCUMENT_URL = re.compile(
    r"https?://(?:www\.)?federalregister\.gov/(?:documents/\d{4}/\d{2}/\d{2}|d)/"
    r"([0-9A-Za-z][0-9A-Za-z-]{2,40})(?:[/?#]|$)"
)


def document_number(url: str) -> str | None:
    """The document number a federalregister.gov document URL names, else None."""
    m = _DOCUMENT_URL.match(url)
    return normal_number(m[1]) if m else None


def join_documents(items: list[Item]) -> None:
    """Give feed items that are Federal Register documents the document's story identity.

    An RSS or Atom entry (documents.rss, and any feed that links a document) links the
    document's page; its number gives it the content hash the API adapter gives the
    filing and the published document, so it joins their story instead of alerting
    again. Its guid and dedup key stay the feed's own: an item already stored is not
    new again. An item the API adapter read has its document's identity already (from
    its number, whatever page it links). Changes `items` in place.
    """
    for i, item in enumerate(items):
        if item.guid.startswith("fr-doc:"):
            continue
        for link in (item.url, item.guid):
            if "federalregister.gov/" in link and (number := document_number(link)):
                items[i] = item._replace(content_hash=story_hash(number))
                break


def document_identity(item: Item) -> str | None:
    """The document number whose story key is the item's content hash, else None.

    Such an item is the document itself (read by the API adapter, or a feed entry that
    links the document's page): one story with every other item of that number, however
    far apart in time, and never with an item of another number, however alike their
    boilerplate (a number is never given to another document).
    """
    for ident in (item.guid, item.url):
        if ident.startswith("fr-doc:"):
            number: str | None = ident.removeprefix("fr-doc:")
        elif "federalregister.gov/" in ident:
            number = document_number(ident)
        else:
            continue
        if number and item.content_hash == story_hash(number):
            return normal_number(number)
    return None


# The years an API date is believed in: a document "published" in year 1 is a broken
# field, read as no date (the span the fast feed parser reads dates in by itself).
_YEARS = range(1900, 2201)


@cache
def _washington() -> tzinfo:
    """The Federal Register's time zone: its dates are days in Washington."""
    try:
        return ZoneInfo("America/New_York")
    except ZoneInfoNotFoundError:
        # no tz database on this machine (the tzdata package is a dependency, so only a
        # broken install): Eastern Standard Time, an hour late in summer but on the day
        return timezone(timedelta(hours=-5), "EST")


def _date(value: object) -> datetime | None:
    """A date or time of the API, in UTC; None when absent, unreadable or out of range.

    A date alone ("2026-02-05", a publication date) is midnight in Washington, the
    instant the agencies' documents.rss gives the same document; so is a time without
    an offset, which only Washington's clock can have written.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.year not in _YEARS:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_washington())
    return parsed.astimezone(UTC)


def _str(value: object) -> str:
    """A field's text: the API gives strings (numbers at most); anything else is ignored.
    Without NUL (JSON's \u0000), which PostgreSQL text cannot hold."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _agencies(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    names = (
        _str(a.get("name")) or _str(a.get("raw_name")) for a in value if isinstance(a, Mapping)
    )
    return [n for n in names if n]


def items_from_api(doc: Mapping[str, Any], *, source_id: str, tags: Iterable[str]) -> list[Item]:
    """The documents of an API answer as Items.

    The answer is untrusted input: an entry that is not a document is skipped, and a
    field of the wrong type is read as absent, so the rest of the document still counts.
    """
    from watcher.parse import canonical_url, make_item  # one implementation of each

    # a search answer; else one document, or a search with no match (no `results`)
    single = [doc] if "document_number" in doc else []
    results = doc.get("results", single)
    tag_tuple = tuple(tags)
    inspection_tags = (
        tag_tuple if PUBLIC_INSPECTION_TAG in tag_tuple else (*tag_tuple, PUBLIC_INSPECTION_TAG)
    )
    items: list[Item] = []
    for r in results if isinstance(results, list) else []:
        if not isinstance(r, Mapping):
            continue
        number = normal_number(_str(r.get("document_number")))
        if not number:
            continue
        inspection = "filed_at" in r or "filing_type" in r
        agencies = _agencies(r.get("agencies"))
        title = html_to_text(_str(r.get("title")) or _str(r.get("toc_subject")))
        kind = _str(r.get("type"))
        parts = [
            f"{kind} ({'filed for public inspection' if inspection else 'published'})"
            if kind
            else "",
            "Agencies: " + "; ".join(agencies) if agencies else "",
            html_to_text(_str(r.get("abstract")) or _str(r.get("excerpts"))),
        ]
        text = "\n".join(p for p in parts if p)
        url = canonical_url(_str(r.get("html_url")) or _str(r.get("pdf_url")))
        published = _date(r.get("filed_at")) if inspection else None
        published = published or _date(r.get("publication_date"))
        item = make_item(
            source_id=source_id,
            guid=f"fr-doc:{number}",
            url=url,
            title=title,
            text=text,
            published=published,
            language="en",
            tags=inspection_tags if inspection else tag_tuple,
        )
        items.append(item._replace(content_hash=story_hash(number)))
    return items
