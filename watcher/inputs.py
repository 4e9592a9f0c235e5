"""Offline inputs for `watcher rules test` and friends: a feed file or JSON Lines."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from watcher.errors import ParseError, WatcherError
from watcher.federal_register import join_documents
from watcher.models import Item
from watcher.parse import canonical_url, make_item, parse_feed


class InputError(WatcherError):
    pass


def _jsonl_item(obj: dict[str, object], line: int, path: Path) -> tuple[str, Item]:
    def field(name: str) -> str:
        value = obj.get(name)
        return "" if value is None else str(value)

    published: datetime | None = None
    if field("published"):
        try:
            published = datetime.fromisoformat(field("published").replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{path}:{line}: 'published' is not an ISO 8601 date") from None
        if published.tzinfo is None:
            raise InputError(f"{path}:{line}: 'published' has no time zone")
    item = make_item(
        source_id=field("source") or "input",
        guid=field("id"),
        url=canonical_url(field("url")),
        title=field("title"),
        text=field("text"),
        published=published,
        language=field("lang"),
    )
    return field("id") or item.dedup_key, item


def read_items(path: Path) -> list[tuple[str, Item]]:
    """(id, item) pairs from a feed (RSS/Atom/RDF/JSON Feed) or a JSON Lines file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if data.lstrip().startswith(b"{") and b"jsonfeed.org/version" not in data[:1000]:
        out = []
        for n, raw in enumerate(data.decode("utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{n}: expected a JSON object")
            out.append(_jsonl_item(obj, n, path))
        # as a feed's entries: one linking a Federal Register document takes its identity
        joined = [item for _, item in out]
        join_documents(joined)
        return [(ident, item) for (ident, _), item in zip(out, joined, strict=True)]
    try:
        items = parse_feed(data, source_id=path.stem or "input")
    except ParseError as exc:  # the file the user named, not a source they never configured
        raise InputError(f"{path}: not a feed or JSON Lines file: {exc.detail}") from None
    return [(i.guid or i.url or i.dedup_key, i) for i in items]
