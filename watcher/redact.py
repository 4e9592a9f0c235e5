"""Secrets out of error text and log lines: a URL keeps its host and path only.

A source URL may carry credentials (`https://user:pass@host/feed`) or an API key
in its query (`?token=...`). Its errors end up in log lines, the store's
`last_error`, `/healthz` and health notices, all read by people who must not
learn the key. So every URL we put in such text goes through `redact_url`, and
text we did not write (aiohttp's exception messages quote the request URL)
goes through `scrub_urls`. `FetchError` scrubs its detail itself, so no fetch
error can carry a secret whatever raised it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

HIDDEN = "…"
# a URL inside free text: a scheme, "://", and everything up to whitespace
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
# where the authority (userinfo@host:port) begins: after "scheme://" or a leading "//"
_AUTHORITY_START = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//")
# what quotes or ends a URL in a message (url='...', <...>, (...), a full stop)
_CLOSING = "'\")]>,;."
# a query parameter name shown as is: short and plain (anything else is hidden too)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,40}")


def redact_url(url: str) -> str:
    """`url` without its userinfo, with its query values and fragment hidden.

    `http://u:p@host/feed?token=abc&x=1#f` becomes `http://host/feed?token=…&x=…#…`:
    still enough to tell which source it is, and nothing that authenticates. Works
    on malformed URLs too (no parsing that could raise).
    """
    start = _AUTHORITY_START.match(url)
    if start:
        url = start.group() + _without_userinfo(url[start.end() :])
    rest, hash_, _ = url.partition("#")
    rest, question, query = rest.partition("?")
    if question:
        rest += "?" + "&".join(_hide_value(p) for p in query.split("&"))
    if hash_:
        rest += "#" + HIDDEN
    return rest


def origin(url: str | None) -> str:
    """A URL's scheme and host alone, for text about where something pointed when even
    its path may be a secret (a Slack webhook's, a redirect's to one)."""
    try:
        parts = urlsplit(url or "")
        host = parts.hostname
        return f"{parts.scheme}://{host}" if parts.scheme and host else "a relative location"
    except ValueError:
        return "an invalid location"


def _without_userinfo(after: str) -> str:
    """What follows "scheme://", without its userinfo.

    The authority ends at the first "/", "?" or "#", and its userinfo at its last "@".
    A password holding one of those three unescaped (`https://u:pa/ss@host/`) ends
    the authority early, after "u:pa": an authority whose ":" is not followed by a
    port (digits) is a user and password then, and everything up to the "@" after
    it goes (the last "@" before the next "/", "?" or "#", should the password hold
    one too). A password of digits alone with an unescaped delimiter reads as a port.
    """
    end = _first_delimiter(after, 0)
    authority = after[:end]
    if "@" in authority:
        return after[authority.rindex("@") + 1 :]
    _, colon, port = authority.partition(":")
    if not colon or not port or port.isdigit() or authority.startswith("["):
        return after  # a host, a host and port, or an IPv6 literal
    at = after.find("@", end)
    if at < 0:
        return after  # no userinfo after all: a malformed port
    return after[after.rindex("@", at, _first_delimiter(after, at)) + 1 :]


def _first_delimiter(text: str, start: int) -> int:
    """Where the first "/", "?" or "#" from `start` on is, else the end of the text."""
    found = [i for i in (text.find(c, start) for c in "/?#") if i >= 0]
    return min(found, default=len(text))


def _hide_value(param: str) -> str:
    name, equals, _ = param.partition("=")
    if equals and _PLAIN_NAME.fullmatch(name):
        return f"{name}={HIDDEN}"
    return HIDDEN


def scrub_urls(text: str) -> str:
    """`text` with every URL in it redacted (see `redact_url`), quotes kept."""
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    found = match.group()
    url = found.rstrip(_CLOSING)
    return redact_url(url) + found[len(url) :]


class ScrubbingFormatter(logging.Formatter):
    """A log line, its traceback included, with every URL in it redacted.

    Our own messages redact the URLs they name; this catches what they quote from
    elsewhere: a library's exception text or a traceback (`logger.exception`), which
    may hold a source's or a receiver's credentials.
    """

    def format(self, record: logging.LogRecord) -> str:
        return scrub_urls(super().format(record))
