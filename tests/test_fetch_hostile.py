"""Hostile sources: huge and bomb bodies, slow drips, private addresses, odd statuses."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import tracemalloc
import zlib
from collections.abc import Iterator

import aiohttp
import brotli
import pytest
from aiohttp import web

from tests.conftest import FakeClock
from tests.servers import FeedServer, RawServer, Route, raw_response
from watcher.errors import FetchError, FetchReason
from watcher.fetch import (
    AddressPolicy,
    Fetcher,
    FetchLimits,
    fetch_session,
    parse_freshness,
    parse_networks,
)

LOOPBACK = parse_networks(["127.0.0.0/8", "::1/128"])
FEED = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'


def limits(**kw: object) -> FetchLimits:
    base: dict[str, object] = {
        "timeout_s": 1.0,
        "max_body_bytes": 100_000,
        "max_redirects": 3,
        "allow_networks": LOOPBACK,
    }
    base.update(kw)
    return FetchLimits(**base)  # type: ignore[arg-type]


async def test_gzip_and_deflate_bodies_are_decoded(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/gz"] = Route(
        body=gzip.compress(FEED), headers={"Content-Encoding": "gzip"}
    )
    feed_server.routes["/zl"] = Route(
        body=zlib.compress(FEED), headers={"Content-Encoding": "deflate"}
    )
    raw = zlib.compressobj(wbits=-15)
    feed_server.routes["/raw"] = Route(
        body=raw.compress(FEED) + raw.flush(), headers={"Content-Encoding": "deflate"}
    )
    f = Fetcher(session=session, limits=limits(), clock=clock)
    for path in ("/gz", "/zl", "/raw"):
        assert (await f.fetch("s", feed_server.url(path))).body == FEED
    assert "gzip" in feed_server.requests_to("/gz")[0]["Accept-Encoding"]


async def test_gzip_body_over_the_cap_is_cut_while_streaming(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    # a few KB on the wire (under the 100 KB cap), 600 KB once decompressed
    payload = b"<item><title>watcher</title></item>" * 17_000
    body = gzip.compress(payload)
    assert len(body) < 100_000 < len(payload)
    feed_server.routes["/big.gz"] = Route(body=body, headers={"Content-Encoding": "gzip"})
    f = Fetcher(session=session, limits=limits(), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("big", feed_server.url("/big.gz"))
    assert err.value.reason is FetchReason.TOO_LARGE
    assert "decompressed body exceeds the 100000-byte cap" in str(err.value)


async def test_decompression_bomb_is_refused_without_inflating_it(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    z = zlib.compressobj(9, wbits=31)
    block = bytes(1_000_000)
    bomb = b"".join(z.compress(block) for _ in range(100)) + z.flush()  # 100 MB of zeros
    assert len(bomb) < 200_000
    feed_server.routes["/bomb"] = Route(body=bomb, headers={"Content-Encoding": "gzip"})
    # a generous cap (50 MB): the ratio guard stops it long before that
    f = Fetcher(session=session, limits=limits(max_body_bytes=50_000_000), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("bomb", feed_server.url("/bomb"))
    assert err.value.reason is FetchReason.TOO_LARGE
    assert "decompression bomb" in str(err.value)


async def test_every_member_of_a_multi_member_gzip_body_is_decoded(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    head, tail = FEED[:40], FEED[40:]
    feed_server.routes["/two"] = Route(
        body=gzip.compress(head) + gzip.compress(tail), headers={"Content-Encoding": "gzip"}
    )
    # a member of 200 KB of spaces, to cross chunk boundaries, then junk (ignored, as gzip does)
    padded = FEED + b" " * 200_000
    feed_server.routes["/junk"] = Route(
        body=gzip.compress(padded[:100]) + gzip.compress(padded[100:]) + b"JUNK",
        headers={"Content-Encoding": "gzip"},
    )
    f = Fetcher(session=session, limits=limits(max_body_bytes=300_000), clock=clock)
    assert (await f.fetch("s", feed_server.url("/two"))).body == FEED
    assert (await f.fetch("s", feed_server.url("/junk"))).body == padded


async def test_the_cap_and_the_bomb_guard_count_every_gzip_member(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    member = gzip.compress(bytes(60_000))  # each member alone is under the cap
    feed_server.routes["/members"] = Route(body=member * 3, headers={"Content-Encoding": "gzip"})
    bomb_member = gzip.compress(bytes(900_000), 9)  # under the 1 MiB ratio allowance alone
    feed_server.routes["/bomb"] = Route(body=bomb_member * 30, headers={"Content-Encoding": "gzip"})
    f = Fetcher(session=session, limits=limits(max_body_bytes=100_000), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("s", feed_server.url("/members"))
    assert err.value.reason is FetchReason.TOO_LARGE
    assert "decompressed body exceeds the 100000-byte cap" in str(err.value)
    generous = Fetcher(session=session, limits=limits(max_body_bytes=50_000_000), clock=clock)
    with pytest.raises(FetchError) as err:
        await generous.fetch("s", feed_server.url("/bomb"))
    assert "decompression bomb" in str(err.value)


async def test_brotli_bodies_are_decoded(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/br"] = Route(
        body=brotli.compress(FEED), headers={"Content-Encoding": "br"}
    )
    f = Fetcher(session=session, limits=limits(), clock=clock)
    assert (await f.fetch("s", feed_server.url("/br"))).body == FEED
    assert "br" in feed_server.requests_to("/br")[0]["Accept-Encoding"].split(", ")


async def test_brotli_bomb_is_refused_without_inflating_it(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    bomb = brotli.compress(bytes(200_000_000), quality=5)  # 200 MB of zeros
    assert len(bomb) < 50_000
    feed_server.routes["/bomb.br"] = Route(body=bomb, headers={"Content-Encoding": "br"})
    f = Fetcher(session=session, limits=limits(max_body_bytes=50_000_000), clock=clock)
    tracemalloc.start()
    try:
        with pytest.raises(FetchError) as err:
            await f.fetch("bomb", feed_server.url("/bomb.br"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason is FetchReason.TOO_LARGE
    assert "decompression bomb" in str(err.value)
    assert peak < 10_000_000  # the ratio allowance (1 MiB here), not the 200 MB


@pytest.mark.parametrize(
    "body", [b"not brotli at all", brotli.compress(FEED)[:-5]], ids=["garbage", "truncated"]
)
async def test_broken_brotli_is_a_decoding_error(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock, body: bytes
) -> None:
    feed_server.routes["/bad.br"] = Route(body=body, headers={"Content-Encoding": "br"})
    f = Fetcher(session=session, limits=limits(), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("bad", feed_server.url("/bad.br"))
    assert err.value.reason is FetchReason.DECODING
    assert str(err.value).startswith("source 'bad': decoding:")


def _deflated(data: bytes, wbits: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return z.compress(data) + z.flush()


_LONG_FEED = FEED.replace(b"</channel>", b"<item><title>x</title></item>" * 2000 + b"</channel>")


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"not gzip at all"),
        # cut short: zlib's flush() takes it for the whole body, which would lose the
        # items after the cut (and, answered 304 afterwards, lose them for good)
        ("gzip", gzip.compress(_LONG_FEED)[: len(gzip.compress(_LONG_FEED)) // 2]),
        ("gzip", gzip.compress(_LONG_FEED)[:-4]),  # the length trailer only
        ("deflate", _deflated(_LONG_FEED, 15)[:-30]),
        ("deflate", _deflated(_LONG_FEED, -15)[:-30]),  # raw deflate
    ],
    ids=["garbage", "gzip-cut-in-half", "gzip-without-its-length", "deflate-cut", "raw-cut"],
)
async def test_broken_gzip_is_a_decoding_error(
    feed_server: FeedServer,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    encoding: str,
    body: bytes,
) -> None:
    feed_server.routes["/bad.gz"] = Route(body=body, headers={"Content-Encoding": encoding})
    f = Fetcher(session=session, limits=limits(), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("bad", feed_server.url("/bad.gz"))
    assert err.value.reason is FetchReason.DECODING
    assert str(err.value).startswith("source 'bad': decoding:")


@pytest.mark.parametrize("wbits", [31, 15, -15], ids=["gzip", "deflate", "raw-deflate"])
async def test_whole_compressed_bodies_decode(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock, wbits: int
) -> None:
    encoding = "gzip" if wbits == 31 else "deflate"
    feed_server.routes["/ok.z"] = Route(
        body=_deflated(_LONG_FEED, wbits), headers={"Content-Encoding": encoding}
    )
    f = Fetcher(session=session, limits=limits(), clock=clock)
    assert (await f.fetch("ok", feed_server.url("/ok.z"))).body == _LONG_FEED


async def test_body_over_the_cap_without_content_length_is_cut(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A chunked body (no Content-Length) that never ends: cut at the cap while streaming."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with_chunk = b"<item>" + b"x" * 16_000 + b"</item>"
        try:
            for _ in range(10_000):
                await resp.write(with_chunk)
                sent += len(with_chunk)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    async with _server(endless) as url:
        f = Fetcher(session=session, limits=limits(), clock=clock)
        with pytest.raises(FetchError) as err:
            await f.fetch("endless", url)
    assert err.value.reason is FetchReason.TOO_LARGE
    assert sent < 10_000 * 16_000  # the server was cut off long before the end


async def test_slow_drip_hits_the_whole_read_timeout(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A byte every 50 ms keeps every socket read alive: the whole-read timeout ends it."""

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(200):
                await resp.write(b" ")
                await asyncio.sleep(0.05)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    async with _server(drip) as url:
        f = Fetcher(session=session, limits=limits(timeout_s=0.5), clock=clock)
        with pytest.raises(FetchError) as err:
            await f.fetch("drip", url)
    assert err.value.reason is FetchReason.TIMEOUT


class _server:
    def __init__(self, handler: object) -> None:
        self.handler = handler
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/feed", self.handler)  # type: ignore[arg-type]
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/feed"

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


# ------------------------------------------------------------------ address guard


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("224.0.0.1", False),
        # IPv6 that leads to an IPv4 address: that address decides
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to 169.254.169.254
        ("64:ff9b::7f00:1", False),  # NAT64 to 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 to 10.0.0.1
        ("64:ff9b::5db8:d70e", True),  # NAT64 to 93.184.215.14
        ("64:ff9b:1::a9fe:a9fe", False),  # local-use NAT64, /96 layout
        # local-use NAT64 in the /48, /56 and /64 layouts (RFC 6052 section 2.2), to 10.0.0.1
        ("64:ff9b:1:a00:0:100::", False),
        ("64:ff9b:1:a:0:1::", False),
        ("64:ff9b:1:0:a:0:100:0", False),
        ("64:ff9b:1:5db8:d7:e00::", False),  # even to a public address: local use only
        ("::ffff:0:a9fe:a9fe", False),  # SIIT IPv4-translated
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:5db8:d70e::1", True),  # 6to4 of 93.184.215.14
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo (client 192.0.2.45)
        # deprecated forms, refused whatever they carry
        ("::a9fe:a9fe", False),  # IPv4-compatible 169.254.169.254
        ("::5db8:d70e", False),  # IPv4-compatible, even of a public address
        ("fec0::1", False),  # site-local
    ],
)
def test_address_policy(address: str, allowed: bool) -> None:
    assert AddressPolicy().allows(address) is allowed
    assert AddressPolicy(parse_networks(["0.0.0.0/0", "::/0"])).allows(address)


def test_allow_networks_override_the_embedded_and_deprecated_forms() -> None:
    assert AddressPolicy(parse_networks(["fec0::/10"])).allows("fec0::1")
    assert AddressPolicy(parse_networks(["::/96"])).allows("::a9fe:a9fe")
    assert AddressPolicy(parse_networks(["64:ff9b::/96"])).allows("64:ff9b::a00:1")
    # the IPv4 network the address leads to, listed, lets it through too
    assert AddressPolicy(parse_networks(["10.0.0.0/8"])).allows("64:ff9b::a00:1")
    assert not AddressPolicy(parse_networks(["10.0.0.0/8"])).allows("64:ff9b::a9fe:a9fe")


async def test_loopback_source_refused_unless_allowed(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/f"] = Route(body=FEED)
    refused = Fetcher(session=session, limits=limits(allow_networks=()), clock=clock)
    with pytest.raises(FetchError) as err:
        await refused.fetch("local", feed_server.url("/f"))
    assert err.value.reason is FetchReason.BLOCKED_ADDRESS
    assert "address 127.0.0.1: private, loopback and link-local addresses are refused" in str(
        err.value
    )
    assert feed_server.requests_to("/f") == []  # refused before any request was sent
    allowed = Fetcher(session=session, limits=limits(), clock=clock)
    assert (await allowed.fetch("local", feed_server.url("/f"))).body == FEED


async def test_hostname_is_checked_by_its_resolved_addresses(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/f"] = Route(body=FEED)
    url = feed_server.url("/f").replace("127.0.0.1", "localhost")
    with pytest.raises(FetchError) as err:
        await Fetcher(session=session, limits=limits(allow_networks=()), clock=clock).fetch(
            "h", url
        )
    assert err.value.reason is FetchReason.BLOCKED_ADDRESS
    assert "localhost resolves to" in str(err.value)


async def test_redirect_to_a_private_address_is_refused(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A public-looking source that redirects inward: the hop is checked before it is followed."""
    feed_server.routes["/out"] = Route(
        status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    )
    f = Fetcher(session=session, limits=limits(), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("s", feed_server.url("/out"))
    assert err.value.reason is FetchReason.BLOCKED_ADDRESS
    assert "169.254.169.254" in str(err.value)


async def test_redirect_to_a_non_http_scheme_is_refused(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/out"] = Route(status=301, headers={"Location": "file:///etc/passwd"})
    f = Fetcher(session=session, limits=limits(), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("s", feed_server.url("/out"))
    assert err.value.reason is FetchReason.BAD_URL


async def test_guarded_session_refuses_at_connect_time(
    feed_server: FeedServer, clock: FakeClock
) -> None:
    """The service's fetch session checks addresses again when aiohttp resolves (DNS rebinding)."""
    feed_server.routes["/f"] = Route(body=FEED)
    url = feed_server.url("/f").replace("127.0.0.1", "localhost")
    async with fetch_session(limits(allow_networks=())) as guarded:
        with pytest.raises(aiohttp.ClientConnectorError) as err:
            async with guarded.get(url):
                pass
    assert "refused" in str(err.value.os_error)
    async with fetch_session(limits()) as open_session:
        f = Fetcher(session=open_session, limits=limits(), clock=clock)
        assert (await f.fetch("s", url)).body == FEED


# ------------------------------------------------------------------ status policy


async def test_permanent_redirects_report_the_new_url(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/old"] = Route(status=301, headers={"Location": "/mid"})
    feed_server.routes["/mid"] = Route(status=308, headers={"Location": "/new"})
    feed_server.routes["/new"] = Route(body=FEED)
    feed_server.routes["/temp"] = Route(status=302, headers={"Location": "/new"})
    f = Fetcher(session=session, limits=limits(), clock=clock)
    moved = await f.fetch("s", feed_server.url("/old"))
    assert moved.body == FEED and moved.moved_to == feed_server.url("/new")
    assert (await f.fetch("s", feed_server.url("/temp"))).moved_to is None
    assert (await f.fetch("s", feed_server.url("/new"))).moved_to is None


async def test_410_is_gone(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/gone"] = Route(status=410)
    with pytest.raises(FetchError) as err:
        await Fetcher(session=session, limits=limits(), clock=clock).fetch(
            "s", feed_server.url("/gone")
        )
    assert err.value.reason is FetchReason.GONE and err.value.status == 410


async def test_503_with_http_date_retry_after(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    # the server's clock agrees with ours (the fake one), then runs an hour ahead: the
    # date counts from the server's own Date, so the wait is the same hour both times
    for date, retry_at in (
        ("Thu, 05 Feb 2026 12:00:00 GMT", "Thu, 05 Feb 2026 13:00:00 GMT"),
        ("Thu, 05 Feb 2026 13:00:00 GMT", "Thu, 05 Feb 2026 14:00:00 GMT"),
    ):
        feed_server.routes["/busy"] = Route(
            status=503, headers={"Retry-After": retry_at, "Date": date}
        )
        with pytest.raises(FetchError) as err:
            await Fetcher(session=session, limits=limits(), clock=clock).fetch(
                "s", feed_server.url("/busy")
            )
        assert err.value.status == 503 and err.value.retry_after_s == 3600


async def test_freshness_headers_are_reported(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    feed_server.routes["/f"] = Route(body=FEED, headers={"Cache-Control": "public, max-age=1800"})
    result = await Fetcher(session=session, limits=limits(), clock=clock).fetch(
        "s", feed_server.url("/f")
    )
    assert result.fresh_for_s == 1800
    # from a cache (a CDN) that has held it for 25 of its 30 minutes
    feed_server.routes["/f"] = Route(
        body=FEED, headers={"Cache-Control": "public, max-age=1800", "Age": "1500"}
    )
    result = await Fetcher(session=session, limits=limits(), clock=clock).fetch(
        "s", feed_server.url("/f")
    )
    assert result.fresh_for_s == 300


def test_parse_freshness(clock: FakeClock) -> None:
    now = clock()
    assert parse_freshness("max-age=600", None, None, now) == 600
    assert parse_freshness("max-age=600", "Thu, 05 Feb 2026 18:00:00 GMT", None, now) == 600
    assert parse_freshness(None, "Thu, 05 Feb 2026 13:00:00 GMT", None, now) == 3600
    # Expires relative to the server's own Date header, whatever our clock says
    assert (
        parse_freshness(None, "Thu, 05 Feb 2026 10:30:00 GMT", "Thu, 05 Feb 2026 10:00:00 GMT", now)
        == 1800
    )
    assert parse_freshness("no-cache", None, None, now) is None
    assert parse_freshness("max-age=soon", None, None, now) is None
    assert parse_freshness(None, "0", None, now) is None
    assert parse_freshness(None, None, None, now) is None
    assert parse_freshness(None, "Thu Feb  5 13:00:00 2026", None, now) == 3600  # asctime
    # a copy a cache has held for 59 of its 60 minutes is fresh for one more (Age)
    assert parse_freshness("max-age=3600", None, None, now, "3540") == 60
    assert parse_freshness("max-age=3600", None, None, now, "7200") == 0
    assert parse_freshness(None, "Thu, 05 Feb 2026 13:00:00 GMT", None, now, "600") == 3000
    assert parse_freshness("max-age=3600", None, None, now, "soon") == 3600


async def test_per_host_concurrency_is_limited(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    active = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(body=FEED)

    async with _server(slow) as url:
        f = Fetcher(session=session, limits=limits(per_host_concurrency=2), clock=clock)
        await asyncio.gather(*(f.fetch(f"s{i}", url) for i in range(8)))
    assert peak == 2


async def test_waiting_for_a_host_slot_does_not_count_against_the_timeout(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Five sources on one host, one at a time: each answers well within the timeout, but
    the last ones wait longer than the timeout for their turn. None may time out."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(body=FEED)

    async with _server(slow) as url:
        f = Fetcher(
            session=session, limits=limits(per_host_concurrency=1, timeout_s=1.0), clock=clock
        )
        results = await asyncio.gather(*(f.fetch(f"s{i}", url) for i in range(5)))
    assert [r.body for r in results] == [FEED] * 5


async def test_one_host_spelled_differently_shares_its_slots(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """One slot per host however it is spelled (the limit itself: the test above)."""
    f = Fetcher(session=session, limits=limits(per_host_concurrency=1), clock=clock)
    # addresses: by their canonical form
    assert f._slot("::1") is f._slot("0:0:0:0:0:0:0:1") is f._slot("0::0:1")
    # names: the same whatever the case and with a trailing dot
    assert f._slot("Feeds.Example.ORG.") is f._slot("feeds.example.org")
    assert f._slot("feeds.example.org") is not f._slot("example.org")


async def test_a_redirect_chain_shares_one_timeout(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Each hop fits the timeout alone, the two together do not."""
    feed_server.routes["/slow-move"] = Route(
        status=302, delay_s=0.5, headers={"Location": "/slow-feed"}
    )
    feed_server.routes["/slow-feed"] = Route(body=FEED, delay_s=0.5)
    f = Fetcher(session=session, limits=limits(timeout_s=1.0), clock=clock)
    assert (await f.fetch("s", feed_server.url("/slow-feed"))).body == FEED
    with pytest.raises(FetchError) as err:
        await f.fetch("s", feed_server.url("/slow-move"))
    assert err.value.reason is FetchReason.TIMEOUT


async def test_unicode_digits_in_max_age_are_no_hint_and_no_error(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """ "²" is a digit to str.isdigit() but not to float(): a good 200 stays a good 200."""
    answer = raw_response(b"200 OK", "Cache-Control: max-age=\u00b2\r\n".encode(), FEED)
    async with RawServer(lambda _: answer) as raw:
        result = await Fetcher(session=session, limits=limits(), clock=clock).fetch(
            "s", raw.url("/feed")
        )
    assert result.body == FEED and result.fresh_for_s is None


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u2070", "\u0661\u0662"])
async def test_unicode_digits_in_retry_after_keep_the_status(
    session: aiohttp.ClientSession, clock: FakeClock, value: str
) -> None:
    answer = raw_response(b"429 Too Many", f"Retry-After: {value}\r\n".encode())
    async with RawServer(lambda _: answer) as raw:
        with pytest.raises(FetchError) as err:
            await Fetcher(session=session, limits=limits(), clock=clock).fetch(
                "s", raw.url("/feed")
            )
    assert err.value.reason is FetchReason.HTTP_STATUS
    assert err.value.status == 429 and err.value.retry_after_s is None


@pytest.mark.parametrize("location", ["http://[::1", "http://" + "a" * 300 + "/"])
async def test_a_redirect_to_an_invalid_url_is_a_bad_url(
    feed_server: FeedServer, session: aiohttp.ClientSession, clock: FakeClock, location: str
) -> None:
    feed_server.routes["/out"] = Route(status=301, headers={"Location": location})
    with pytest.raises(FetchError) as err:
        await Fetcher(session=session, limits=limits(), clock=clock).fetch(
            "s", feed_server.url("/out")
        )
    assert err.value.reason is FetchReason.BAD_URL


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: a connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for s in [*fillers, listener]:
        s.close()


async def test_a_connect_timeout_is_reported_as_one(
    session: aiohttp.ClientSession, clock: FakeClock, unanswered_port: int
) -> None:
    f = Fetcher(session=session, limits=limits(connect_timeout_s=0.2, timeout_s=5.0), clock=clock)
    with pytest.raises(FetchError) as err:
        await f.fetch("s", f"http://127.0.0.1:{unanswered_port}/feed")
    assert err.value.reason is FetchReason.CONNECT
    assert "connect timeout: no connection within 0.2s (connect_timeout_s)" in str(err.value)
