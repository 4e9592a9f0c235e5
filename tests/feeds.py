"""Build small RSS documents for tests."""

from __future__ import annotations

from xml.sax.saxutils import escape


def rss(*items: tuple[str, str, str], title: str = "Test feed", language: str = "en") -> bytes:
    """items: (guid, title, description-html). Links are derived from the guid."""
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<rss version="2.0"><channel>',
        f"<title>{escape(title)}</title><link>https://example.org/</link>",
        f"<language>{language}</language>",
    ]
    for guid, item_title, desc in items:
        parts.append(
            "<item>"
            f'<guid isPermaLink="false">{escape(guid)}</guid>'
            f"<title>{escape(item_title)}</title>"
            f"<link>https://example.org/news/{escape(guid)}</link>"
            "<pubDate>Thu, 05 Feb 2026 10:00:00 GMT</pubDate>"
            f"<description>{escape(desc)}</description>"
            "</item>"
        )
    parts.append("</channel></rss>")
    return "\n".join(parts).encode()


CURB = (
    "curb-1",
    "China tightens export controls on rare earth magnets",
    "<p>Beijing will require an export licence for rare earth magnets"
    " and processing technology.</p>",
)
NOISE = ("noise-1", "Local team wins the cup", "<p>A football story.</p>")
