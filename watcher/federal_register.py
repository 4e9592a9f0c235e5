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
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from watcher import constants
from watcher.models import Item
from watcher.text import html_to_text

API = "https://www.federalregister.gov/api/v1"


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
    """A Federal Register API answer: a search result list or one document."""
    if isinstance(doc, Mapping):
        results = doc.get("results")
        if isinstance(results, list):
            return all(isinstance(r, Mapping) and "document_number" in r for r in results) and (
                "count" in doc or "description" in doc or bool(results)
            )
        return "document_number" in doc and ("html_url" in doc or "title" in doc)
    return False


def story_hash(document_number: str) -> str:
    """The content hash (story key) of a Federal Register document: its number."""
    return hashlib.sha256(f"fr-doc:{document_number}".encode()).hexdigest()[:32]


def _date(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def items_from_api(doc: Mapping[str, Any], *, source_id: str, tags: Iterable[str]) -> list[Item]:
    from watcher.parse import canonical_url  # one implementation of link hygiene

    results = doc.get("results") if isinstance(doc.get("results"), list) else [doc]
    items: list[Item] = []
    for r in results or []:
        if not isinstance(r, Mapping):
            continue
        number = str(r.get("document_number") or "").strip()
        if not number:
            continue
        inspection = "filed_at" in r or "filing_type" in r
        agencies = [
            str(a.get("name") or a.get("raw_name") or "")
            for a in r.get("agencies") or []
            if isinstance(a, Mapping)
        ]
        title = html_to_text(str(r.get("title") or r.get("toc_subject") or ""))
        kind = str(r.get("type") or "")
        parts = [
            f"{kind} ({'filed for public inspection' if inspection else 'published'})"
            if kind
            else "",
            "Agencies: " + "; ".join(a for a in agencies if a) if agencies else "",
            html_to_text(str(r.get("abstract") or r.get("excerpts") or "")),
        ]
        text = "\n".join(p for p in parts if p)[: constants.ITEM_TEXT_MAX_CHARS]
        url = canonical_url(str(r.get("html_url") or r.get("pdf_url") or ""))
        published = _date(r.get("filed_at")) if inspection else None
        published = published or _date(r.get("publication_date"))
        items.append(
            Item(
                source_id=source_id,
                dedup_key=f"guid:fr-doc:{number}"[:512],
                guid=f"fr-doc:{number}",
                url=url,
                title=title[: constants.ITEM_TITLE_MAX_CHARS],
                text=text,
                published=published,
                language="en",
                tags=(*tags, "public-inspection") if inspection else tuple(tags),
                content_hash=story_hash(number),
            )
        )
    return items
