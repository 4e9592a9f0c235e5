"""The typed objects that flow between pipeline stages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime. Injected wherever time matters."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class EventType(StrEnum):
    EXPORT_RESTRICTION = "export_restriction"
    EXPORT_EASING = "export_easing"
    ENTITY_LISTING = "entity_listing"
    AGREEMENT_SIGNED = "agreement_signed"
    TARIFF_OR_PRICE_MEASURE = "tariff_or_price_measure"
    STOCKPILE_OR_INVESTMENT = "stockpile_or_investment"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class Item(NamedTuple):
    """One normalised feed entry. Text is plain (HTML stripped) and bounded.

    A named tuple, not a pydantic model or a frozen dataclass: items are built only
    by the parse stage (parse.make_item, the Federal Register adapter) from values
    it has already checked, thousands per second, and validation was ~4% of a parse,
    a frozen dataclass's __init__ (a setattr per field) ~2%. Immutable and hashable;
    `item._replace(field=...)` makes a changed copy.
    """

    source_id: str
    dedup_key: str  # guid, else canonical link, else content hash
    content_hash: str
    guid: str = ""
    url: str = ""
    title: str = ""
    text: str = ""
    published: datetime | None = None
    language: str = ""
    tags: tuple[str, ...] = ()


class Hit(BaseModel):
    """A rule matched an item."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    rule_title: str
    event_type: EventType
    severity: Severity
    tags: tuple[str, ...] = ()
    minerals: tuple[str, ...] = Field(default=(), description="minerals the item names")
    countries: tuple[str, ...] = Field(
        default=(), description="jurisdictions involved: ISO 3166-1 alpha-2 codes, and EU"
    )


class Alert(BaseModel):
    """A stored alert: one per (rule, story)."""

    id: int
    rule_id: str
    rule_title: str
    event_type: EventType
    severity: Severity
    story_key: str
    item_id: int
    source_id: str
    title: str
    url: str
    text: str
    published: datetime | None
    created_at: datetime
    sources: list[str] = Field(default_factory=list, description="all sources reporting the story")
    facets: dict[str, list[str]] = Field(
        default_factory=dict, description="e.g. minerals, countries named in the text"
    )
    source_count: int = Field(default=1, description="sources reporting the story, kept current")
    updated_at: datetime | None = Field(
        default=None, description="when a later copy last grew the story's sources"
    )

    @property
    def all_sources(self) -> list[str]:
        return self.sources or [self.source_id]


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


class Delivery(BaseModel):
    """A row of the outbox: one alert for one receiver."""

    id: int
    alert_id: int
    receiver: str
    state: DeliveryState
    attempts: int
    idempotency_key: str
    next_attempt_at: datetime
    last_error: str = ""
    created_at: datetime
    sent_at: datetime | None = None
    kind: str | None = Field(
        default=None, description='None: one alert; "group" or "digest": see its batch'
    )
    delivered_to: list[str] = Field(
        default_factory=list,
        description="email: the recipients an earlier attempt delivered to (a retry skips them)",
    )
