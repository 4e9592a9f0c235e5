"""What every notifier shares: the contract and the templates."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol

from watcher.store import ClaimedDelivery

if TYPE_CHECKING:
    import jinja2


@functools.cache
def _env() -> jinja2.Environment:
    """The templates' environment, built (and jinja2 imported, ~2 MB) at the first render."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("watcher", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


EXCERPT_CHARS = 600


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " …"


def render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


class Notifier(Protocol):
    receiver_id: str

    async def send(self, claimed: ClaimedDelivery) -> None:
        """Deliver one alert; raise DeliveryError (retryable or not) on failure."""

    async def close(self) -> None:
        """Release what the notifier keeps open (connections)."""
