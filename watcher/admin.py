"""Operator commands that work on the store or a receiver: deliveries, send-test."""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp

from watcher.config import Config
from watcher.errors import DeliveryError, WatcherError
from watcher.models import DeliveryState, utc_now
from watcher.notify import build_notifiers
from watcher.notify.sample import sample_delivery
from watcher.store import Store


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, columns aligned, the last column unpadded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


async def deliveries_list(
    config: Config, *, state: DeliveryState | None, receiver: str | None, limit: int
) -> str:
    store = Store(config.store.url, clock=utc_now)
    await store.open()
    try:
        rows = await store.list_deliveries(state=state, receiver=receiver, limit=limit)
    finally:
        await store.close()
    out = []
    for c in rows:
        d, a = c.delivery, c.alert
        when = d.sent_at if d.state == DeliveryState.SENT else d.next_attempt_at
        title = (a.title[:40] + "…") if len(a.title) > 40 else a.title
        if c.batch is not None and not c.batch.single:
            n = len(c.batch.members)
            title = f"({c.batch.kind} of {n} alert{'' if n == 1 else 's'}) {title}"
        elif c.batch is not None:
            title = f"(update) {title}"
        out.append(
            [
                str(d.id),
                d.state.value,
                d.receiver,
                str(d.attempts),
                when.strftime("%Y-%m-%d %H:%M:%S") if when else "",
                a.rule_id,
                title,
                d.last_error[:80],
            ]
        )
    headers = ["ID", "STATE", "RECEIVER", "TRIES", "SENT/NEXT (UTC)", "RULE", "TITLE", "LAST ERROR"]
    return table(headers, out) + f"\n{len(out)} deliver{'y' if len(out) == 1 else 'ies'}"


async def deliveries_retry(config: Config, ids: Sequence[int] | None) -> tuple[int, list[str]]:
    """Queue dead deliveries again: (how many, what was wrong with named ids that were
    not queued: no such delivery, or one that is not dead)."""
    store = Store(config.store.url, clock=utc_now)
    await store.open()
    try:
        states = await store.delivery_states(ids) if ids else {}
        problems = [
            f"delivery {i}: no such delivery"
            if i not in states
            else f"delivery {i}: not dead ({states[i]}): nothing to retry"
            for i in dict.fromkeys(ids or ())
            if states.get(i) != DeliveryState.DEAD.value
        ]
        return await store.retry_dead(ids), problems
    finally:
        await store.close()


async def send_test(config: Config, receiver_id: str) -> str:
    """Send a sample alert to one receiver, straight through its notifier."""
    if config.receiver(receiver_id) is None:
        known = ", ".join(r.id for r in config.receivers) or "none configured"
        raise WatcherError(f"unknown receiver '{receiver_id}' (receivers: {known})")
    now = utc_now()
    claimed = sample_delivery(
        receiver_id,
        now=now,
        key=f"wd_test_{receiver_id}_{int(now.timestamp())}",
        title="[watcher test] China tightens export controls on rare earth magnets",
    )
    async with aiohttp.ClientSession() as session:
        notifier = build_notifiers(config, session=session, clock=utc_now)[receiver_id]
        try:
            await notifier.send(claimed)
        except DeliveryError:
            raise
        finally:
            await notifier.close()
    return f"sent a test alert to receiver '{receiver_id}' ({claimed.delivery.idempotency_key})"
