"""What every notifier shares: the contract and the templates."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from watcher.errors import DeliveryError, DeliveryReason
from watcher.store import ClaimedDelivery
from watcher.text import one_line

if TYPE_CHECKING:
    import jinja2


@functools.cache
def _env() -> jinja2.Environment:
    """The templates' environment, built (and jinja2 imported, ~2 MB) at the first render."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("watcher", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,  # every {{ value }}, before the HTML templates escape it
    )
    env.filters["link"] = link
    return env


def _finalize(value: Any) -> Any:
    """A value a template prints holds one line: feed text cannot start a line of its own
    ("Link: https://evil.example" under the title) or carry a control or a bidi override."""
    if isinstance(value, str):
        return type(value)(one_line(value))  # an escaped Markup stays Markup
    return value


# What a URL may hold as it is (RFC 3986: reserved, unreserved and "%"); the rest of its
# path and query are percent-encoded as UTF-8, the host written in IDNA.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"
_HOST = re.compile(r"[A-Za-z0-9.\-_]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")
LINK_MAX_CHARS = 2000


def link(url: str) -> str:
    """An item's link as every message writes it: http(s) only, no space, quote, angle
    bracket, pipe, control or other character a URL may not hold as it is, at most
    LINK_MAX_CHARS long; '' when there is none such (no link is better than a wrong one).

    The parse stage gives absolute http(s) URLs, but their paths may hold anything but
    tab, CR and LF (a space, "|", ">", U+2028): in a Slack `<url|label>` or a plain-text
    line that is a spoofed label or a broken line."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return ""
    end = min((i for i in map(rest.find, "/?#") if i != -1), default=len(rest))
    host, tail = rest[:end], rest[end:]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    if not _HOST.fullmatch(host):
        return ""
    out = f"{scheme.lower()}://{host}{quote(tail, safe=_URL_SAFE)}"
    return out if len(out) <= LINK_MAX_CHARS else ""


EXCERPT_CHARS = 600


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " …"


def send_budget_s(lease_until: datetime | None, now: datetime, share: float) -> float | None:
    """How long a send may take: `share` of the time left on its row's lease (past the
    lease, the row could be claimed and sent again); None when it holds no lease."""
    if lease_until is None:
        return None
    return max(0.0, (lease_until - now).total_seconds() * share)


@contextlib.asynccontextmanager
async def within_lease(
    claimed: ClaimedDelivery,
    now: datetime,
    share: float,
    *,
    where: str = "",
    delivered: Callable[[], Iterable[str]] = lambda: (),
) -> AsyncIterator[None]:
    """Run the body, cut short once it has used `share` of the time left on the row's lease
    (send_budget_s): past the lease the row could be claimed again and sent a second time
    beside this send. A send cut short is a retryable failure (TIMEOUT), never a success;
    `delivered()`, asked when it is cut, names the recipients that already have it, and
    `where` starts the error's text."""
    budget_s = send_budget_s(claimed.lease_until, now, share)
    deadline = asyncio.timeout(budget_s)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise
        raise DeliveryError(
            DeliveryReason.TIMEOUT,
            f"{where}the send did not end within {budget_s or 0.0:.3g}s, before its lease",
            receiver=claimed.delivery.receiver,
            retryable=True,
            delivered=tuple(delivered()),
        ) from None


def render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


class Notifier(Protocol):
    receiver_id: str

    async def send(self, claimed: ClaimedDelivery) -> None:
        """Deliver one alert; raise DeliveryError (retryable or not) on failure."""

    async def close(self) -> None:
        """Release what the notifier keeps open (connections)."""
