"""HTTP Link headers: the URL a response names for each relation (WebSub discovery)."""

from __future__ import annotations

import pytest

from watcher.links import links

BASE = "https://example.org/feeds/news.atom"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # WebSub's own example: one header, two links
        (['<https://hub.example/>; rel="hub", <https://example.org/t>; rel="self"'],
         {"hub": "https://hub.example/", "self": "https://example.org/t"}),
        # several headers; the first link of a relation wins
        (["<https://a/>; rel=hub", "<https://b/>; rel=hub, <https://t/>; rel=self"],
         {"hub": "https://a/", "self": "https://t/"}),
        # a quoted rel naming several relations, in any case; unquoted; no spaces
        (['<https://a/>; rel="Self alternate"', "<https://h/>;rel=HUB"],
         {"self": "https://a/", "alternate": "https://a/", "hub": "https://h/"}),
        # relative targets are resolved against the response's URL
        (['</hub>; rel="hub", <news.atom?v=1>; rel="self"'],
         {"hub": "https://example.org/hub", "self": "https://example.org/feeds/news.atom?v=1"}),
        # a comma, a semicolon or "rel=" inside a quoted parameter is not a separator
        (['<https://a/>; title="x, <https://evil/>; rel=hub"; rel="self"'],
         {"self": "https://a/"}),
        # rel given twice: the first counts (RFC 8288 3.3)
        (['<https://a/>; rel="self"; rel="hub"'], {"self": "https://a/"}),
        # a link about another resource (anchor) is not the response's
        (['<https://a/>; rel="hub"; anchor="https://other/"'], {}),
        # malformed parts are skipped up to the next link; nothing raises
        (["junk, <https://h/>; rel=hub", "<https://x/; rel=hub, <https://t/>; rel=self"],
         {"hub": "https://h/", "self": "https://t/"}),
        (['<https://a/>; title="unclosed, <https://h/>; rel=hub'], {}),
        (["", ",,", "<>", "<https://a/>"], {}),
        # a target with a control character or bytes that were not UTF-8 is no URL
        (["<https://a/\x07>; rel=hub", "<https://\udce9/>; rel=self"], {}),
    ],
)  # fmt: skip
def test_links(values: list[str], expected: dict[str, str]) -> None:
    assert links(values, BASE) == expected
