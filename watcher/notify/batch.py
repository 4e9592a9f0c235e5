"""Webhook bodies for notifications that carry several alerts, or an update.

Version 1 of the payload (watcher/schemas/webhook-v1.schema.json) has three
types: "alert" (one alert; an update to one carries `"update": true` and
`"in_reply_to"`, the id of the notification it follows), "alert_group" (the
alerts of one group_wait window, or folded by a throttle) and "digest" (a
digest subscription's alerts of one period). Alert objects are the same in all
three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from watcher.store import BatchMember, ClaimedDelivery

Single = Callable[[ClaimedDelivery], dict[str, Any]]


def _alert_body(claimed: ClaimedDelivery, member: BatchMember, single: Single) -> dict[str, Any]:
    body = single(replace(claimed, alert=member.alert, batch=None))
    if member.update:
        body["alert"]["update"] = True
        if member.reply_to:
            body["alert"]["in_reply_to"] = member.reply_to
    return body


def batch_payload(claimed: ClaimedDelivery, single: Single) -> dict[str, Any]:
    """The body for a claimed group, digest or update; `single` builds one alert's body."""
    batch = claimed.batch
    assert batch is not None
    key = claimed.delivery.idempotency_key
    bodies = [_alert_body(claimed, m, single) for m in batch.members]
    if batch.single:
        return bodies[0]  # its id is the notification's key
    version = bodies[0]["version"] if bodies else "1"
    objects = [b["alert"] for b in bodies]
    if batch.kind == "digest":
        d = batch.detail
        return {
            "version": version,
            "type": "digest",
            "id": key,
            "digest": {
                "subscription": d.get("subscription", ""),
                "period_start": d.get("period_start"),
                "period_end": d.get("period_end"),
                "timezone": d.get("timezone", "UTC"),
            },
            "alerts": objects,
        }
    return {"version": version, "type": "alert_group", "id": key, "alerts": objects}
