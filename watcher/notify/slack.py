"""Slack: a Block Kit message through an incoming webhook.

Feed text is untrusted: everything that goes into mrkdwn is one line with no control
or bidi override (text.one_line) and escaped (`&`, `<`, `>`), so an item cannot inject
mentions (`<!channel>`) or links; an item's link is base.link's (http(s), nothing a
`<url|label>` could be split at) or none; every text is cut to Slack's limits on a word
boundary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from watcher import constants
from watcher.config import SlackReceiverConfig
from watcher.models import Alert, Clock
from watcher.notify.base import LINK_MAX_CHARS, excerpt, link
from watcher.notify.email import period_text
from watcher.notify.webhook import post_json
from watcher.store import ClaimedDelivery
from watcher.text import one_line

HEADER_MAX_CHARS = 150  # header block plain_text
SECTION_MAX_CHARS = 3000  # section text
FIELD_MAX_CHARS = 2000  # each section field
CONTEXT_MAX_CHARS = 2000
SEVERITY_MARK = {"low": "⚪", "medium": "🟡", "high": "🟠", "critical": "🔴"}


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    """Cut to `limit` characters on a word boundary, marking the cut with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


def _escaped(text: str, limit: int) -> str:
    # Escape first, then cut without splitting an entity such as "&amp;".
    out = escape(one_line(text))
    if len(out) <= limit:
        return out
    cut = truncate(out, limit)
    amp = cut.rfind("&", max(0, len(cut) - 6))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp].rstrip() + "…"
    return cut


def _linked(url: str, label: str) -> str:
    """`<url|label>` for an item's link, or the label alone when it has none.

    base.link leaves no "|", "<", ">" or space in the URL; its "&" is escaped, as
    everywhere in mrkdwn, and the escaped URL is held to LINK_MAX_CHARS (each "&"
    becomes "&amp;": a link within base.link's cap could grow past a section's 3,000),
    so the link always fits whole and the section's text is cut around it, never in it."""
    url = escape(link(url))
    return f"<{url}|{label}>" if url and len(url) <= LINK_MAX_CHARS else label


def blocks(alert: Alert) -> dict[str, Any]:
    """The Slack message for one alert: fallback text plus Block Kit blocks."""
    mark = SEVERITY_MARK.get(alert.severity.value, "")
    title = one_line(alert.title) or "(untitled)"
    headline = f"*{_linked(alert.url, _escaped(title, 500))}*"
    body = excerpt(alert.text, 1200)
    fields = [
        f"*Event type*\n{alert.event_type.value}",
        f"*Severity*\n{alert.severity.value}",
    ]
    for name, label in (("countries", "Jurisdiction"), ("minerals", "Minerals")):
        values = alert.facets.get(name)
        if values:
            fields.append(f"*{label}*\n{_escaped(', '.join(values), FIELD_MAX_CHARS - 20)}")
    published = alert.published.strftime("%Y-%m-%d %H:%M UTC") if alert.published else "unknown"
    sources = alert.all_sources
    context = f"{_escaped(sources[0], 200)} · {published} · rule `{_escaped(alert.rule_id, 100)}`"
    if len(sources) > 1:
        also = ", ".join(sources[1:])
        context += f" · also reported by {len(sources) - 1}: {_escaped(also, 1000)}"
    out: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": truncate(f"{mark} {alert.rule_title}".strip(), HEADER_MAX_CHARS),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                # the excerpt gets what the headline leaves: the headline is never cut
                "text": f"{headline}\n{_escaped(body, SECTION_MAX_CHARS - len(headline) - 1)}",
            },
        },
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": truncate(context, CONTEXT_MAX_CHARS)}],
        },
    ]
    url = link(alert.url)
    if url:
        out.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open the article"},
                        "url": url,
                    }
                ],
            }
        )
    fallback = f"[{alert.severity.value.upper()}] {alert.rule_title}: {title}"
    return {"text": _escaped(fallback, SECTION_MAX_CHARS), "blocks": out}


def text_message(headline: str, body: str) -> dict[str, Any]:
    """A short plain message: a bold headline and a line of text (source health notices)."""
    text = f"*{_escaped(headline, HEADER_MAX_CHARS)}*\n{_escaped(body, SECTION_MAX_CHARS - 200)}"
    return {"text": text}


def message(claimed: ClaimedDelivery) -> dict[str, Any]:
    """The Slack message for a claimed notification: one alert, an update, a group or a digest."""
    batch = claimed.batch
    if batch is None:
        return blocks(claimed.alert)
    if batch.single:
        member = batch.members[0]
        out = blocks(member.alert)
        if member.update:
            n = len(member.alert.all_sources)
            note = f"Update: now reported by {n} source{'' if n == 1 else 's'}"
            out["text"] = f"{note}. {out['text']}"
            out["blocks"].insert(1, _context_block(f"*{note}*"))
        return out
    return list_blocks(
        [m.alert for m in batch.members],
        updates={m.alert.id for m in batch.members if m.update},
        period=period_text(batch.detail) if batch.kind == "digest" else "",
        digest=batch.kind == "digest",
    )


def _context_block(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def list_blocks(
    alerts: list[Alert], *, updates: set[int], period: str = "", digest: bool = False
) -> dict[str, Any]:
    """One message listing several alerts (a group or a digest), within Slack's limits."""
    n = len(alerts)
    title = f"watcher {'digest' if digest else 'alerts'}: {n} alert{'' if n == 1 else 's'}"
    out: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}}
    ]
    if period:
        out.append(_context_block(_escaped(period, CONTEXT_MAX_CHARS)))
    shown = alerts[: constants.GROUP_MAX_ALERTS_SHOWN]
    for alert in shown:
        mark = SEVERITY_MARK.get(alert.severity.value, "")
        name = one_line(alert.title) or "(untitled)"
        headline = _linked(alert.url, _escaped(name, 300))
        sources = alert.all_sources
        lines = [
            f"{mark} *{_escaped(alert.rule_title, 200)}* · {alert.severity.value}",
            headline,
        ]
        if alert.id in updates:
            lines.insert(0, f"*Update: now reported by {len(sources)} sources*")
        # the sources get what the lines above leave: the link is never cut
        room = SECTION_MAX_CHARS - len("\n".join(lines)) - 1
        lines.append(_escaped(", ".join(sources), min(600, room)))
        out.append({"type": "divider"})
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}})
    if n > len(shown):
        out.append(_context_block(f"…and {n - len(shown)} more"))
    return {"text": _escaped(title, SECTION_MAX_CHARS), "blocks": out}


class SlackNotifier:
    def __init__(
        self, config: SlackReceiverConfig, *, session: aiohttp.ClientSession, clock: Clock
    ) -> None:
        self.config = config
        self.receiver_id = config.id
        self.session = session
        self.clock = clock

    async def send(self, claimed: ClaimedDelivery) -> None:
        await self.post(message(claimed))

    async def post(self, document: Mapping[str, Any]) -> None:
        """POST one message to the incoming webhook."""
        body = json.dumps(document, ensure_ascii=False).encode()
        await post_json(
            self.session,
            self.config.url,
            body,
            {"Content-Type": "application/json; charset=utf-8"},
            timeout_s=self.config.timeout_s,
            receiver=self.receiver_id,
            clock=self.clock,
        )

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the service."""
