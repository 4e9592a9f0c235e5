"""A realistic sample alert, for `watcher send-test` (and golden-file tests)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from watcher.models import Alert, Delivery, DeliveryState, EventType, Severity
from watcher.store import ClaimedDelivery


def sample_delivery(
    receiver: str, *, now: datetime, key: str = "", **alert: Any
) -> ClaimedDelivery:
    fields: dict[str, Any] = {
        "id": 42,
        "rule_id": "ree-export-curb",
        "rule_title": "Rare-earth export curb",
        "event_type": EventType.EXPORT_RESTRICTION,
        "severity": Severity.HIGH,
        "story_key": "3f2a9c",
        "item_id": 7,
        "source_id": "mofcom-en",
        "title": "China tightens export controls on rare earth magnets",
        "url": "https://example.org/news/curb-1",
        "text": "Beijing will require an export licence for rare earth magnets and "
        "processing technology, the commerce ministry said on Thursday.",
        "published": now,
        "created_at": now,
        "sources": ["mofcom-en", "reuters-world", "nikkei-asia"],
        "facets": {"minerals": ["rare earths"], "countries": ["China"]},
    }
    fields.update(alert)
    delivery = Delivery(
        id=0,
        alert_id=fields["id"],
        receiver=receiver,
        state=DeliveryState.PENDING,
        attempts=1,
        idempotency_key=key or f"wd_{fields['id']}_{receiver}",
        next_attempt_at=now,
        created_at=now,
    )
    return ClaimedDelivery(delivery, Alert(**fields))
