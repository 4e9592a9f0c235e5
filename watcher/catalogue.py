"""The shipped catalogue of real sources (watcher/catalogue.toml), enabled from config by id.

    catalogue = ["fr-bis", "govuk-ecju"]     # in config.toml, at the top level

A `[[sources]]` entry with the same id wins over the catalogue's, so any field
can be overridden. The URLs come from public documentation and public code
(each entry says where) and were not checked live from the development machine.
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


def expand(ids: list[str], configured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Configured sources plus the catalogue entries named by id (configured ones win).

    Raises ValueError naming any id the catalogue does not have.
    """
    known = catalogue()
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(
            f"catalogue: unknown source id(s) {', '.join(repr(u) for u in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    have = {str(s.get("id")) for s in configured}
    return configured + [known[i].as_source() for i in dict.fromkeys(ids) if i not in have]
