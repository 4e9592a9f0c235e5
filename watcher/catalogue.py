"""The shipped catalogue of real sources (watcher/catalogue.toml), enabled from config by id.

    catalogue = ["fr-bis", "govuk-ecju"]     # in config.toml, at the top level

A `[[sources]]` entry with the same id overrides the catalogue's field by field:
its own fields win, and the catalogue fills in the ones it leaves out. The URLs
come from public documentation and public code (each entry says where) and were
not checked live from the development machine.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class CatalogueEntry:
    id: str
    url: str
    format: str
    language: str
    jurisdiction: str
    tags: tuple[str, ...]
    interval_s: int
    source: str

    def as_source(self) -> dict[str, Any]:
        """The `[[sources]]` entry this catalogue entry stands for."""
        return {
            "id": self.id,
            "url": self.url,
            "interval_s": self.interval_s,
            "tags": list(self.tags),
            "language": self.language,
        }


@cache
def catalogue() -> dict[str, CatalogueEntry]:
    text = resources.files("watcher").joinpath("catalogue.toml").read_text(encoding="utf-8")
    entries = tomllib.loads(text)["sources"]
    return {
        e["id"]: CatalogueEntry(
            id=e["id"],
            url=e["url"],
            format=e["format"],
            language=e["language"],
            jurisdiction=e["jurisdiction"],
            tags=tuple(e["tags"]),
            interval_s=int(e["interval_s"]),
            source=e["source"],
        )
        for e in entries
    }


def check_ids(ids: list[str]) -> list[str]:
    """`ids`, when the catalogue has every one; else ValueError naming those it lacks
    and the ones it has."""
    known = catalogue()
    unknown = [i for i in dict.fromkeys(ids) if i not in known]
    if unknown:
        raise ValueError(
            f"unknown source id(s) {', '.join(repr(u) for u in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return ids


def expand(ids: list[Any], configured: list[Any]) -> list[Any]:
    """Configured sources plus the catalogue entries named by id.

    A configured source with the id of an entry named here overrides it field by
    field: its own fields win, the catalogue's fill in the rest (its URL, tags,
    language, interval). What is not a known id, or not a source table, is passed
    over as it is, for validation to report where it is (`check_ids` for ids).
    """
    known = catalogue()
    named = {i: known[i].as_source() for i in ids if isinstance(i, str) and i in known}
    sources = []
    for source in configured:
        ident = source.get("id") if isinstance(source, dict) else None
        entry = named.pop(ident, None) if isinstance(ident, str) else None
        sources.append(source if entry is None else {**entry, **source})
    return sources + list(named.values())
