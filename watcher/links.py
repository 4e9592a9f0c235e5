"""HTTP `Link` headers (RFC 8288): the URL a response names for each relation.

WebSub discovery (W3C WebSub 4) prefers them to the feed's own `<link>` elements:
`Link: <https://hub.example/>; rel="hub", <https://example.org/feed>; rel="self"`.
A response may send several Link headers, each with several links; a `rel` may be
quoted and name several relations (`rel="self alternate"`); a target may be
relative (to the response's URL). Anything malformed is skipped, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import urljoin

_TARGET = re.compile(r"\s*<([^<>]*)>")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf"\s*;\s*({_TOKEN})\s*(?:=\s*({_QUOTED}|[^\s;,\"]*))?")
# what is left of a malformed link, up to the comma before the next one (a comma in a
# quoted string is not one)
_REST = re.compile(rf"(?:{_QUOTED}|[^,\"])*")
_COMMA = re.compile(r"\s*,")
_ESCAPED = re.compile(r"\\(.)")


def links(values: Iterable[str], base: str = "") -> dict[str, str]:
    """The first target each relation names (relation types in lower case), resolved
    against `base`, across all `values` (the Link headers, in order)."""
    found: dict[str, str] = {}
    for value in values:
        for target, params in _parse(value):
            # a link with an anchor is about another resource than the response; a target
            # with a control character, or bytes that were not UTF-8 (aiohttp decodes them
            # into lone surrogates, which no URL we store or send may carry), is no URL
            if "anchor" in params or not target.isprintable():
                continue
            try:
                url = urljoin(base, target.strip())
            except ValueError:  # e.g. an unclosed IPv6 literal
                continue
            for rel in params.get("rel", "").lower().split():
                found.setdefault(rel, url)
    return found


def _parse(value: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Each link of one header value: its target and its parameters (names in lower
    case; of a parameter given twice, the first, as RFC 8288 3.3 says of rel). What
    is not a link is skipped up to the next comma."""
    pos = 0
    while True:
        target = _TARGET.match(value, pos)
        if target is not None:
            params: dict[str, str] = {}
            pos = target.end()
            while (param := _PARAM.match(value, pos)) is not None:
                params.setdefault(param[1].lower(), _unquote(param[2] or ""))
                pos = param.end()
            yield target[1], params
        rest = _REST.match(value, pos)  # always matches, if only ""
        comma = _COMMA.match(value, rest.end() if rest else pos)
        if comma is None:
            return
        pos = comma.end()


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _ESCAPED.sub(r"\1", value[1:-1])
    return value
