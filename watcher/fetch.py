"""Fetch stage: one conditional HTTP GET of a source, with every limit applied.

The status policy lives in one function (`Fetcher.fetch`): 200 gives a body,
304 gives nothing new, 301/308 chains report the new permanent URL, 410 is
`GONE`, 429/503 carry Retry-After, anything else is an error with a fixed
reason. Redirects are followed by hand (bounded), so every hop's address is
checked: private, loopback and link-local addresses are refused unless the
config allows their network. The body is read through a size cap while
streaming, and gzip, deflate and brotli are decoded here, incrementally and under
the same cap, so a decompression bomb is cut off at the cap, not after.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from watcher import constants
from watcher.config import PollingConfig
from watcher.errors import FetchError, FetchReason
from watcher.links import links
from watcher.models import Clock
from watcher.redact import redact_url

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
ACCEPT_ENCODING = "gzip, deflate, br"
_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate", "br"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PERMANENT = frozenset({301, 308})
# a public URL fit for a header: http(s), no spaces or control characters
# delta-seconds (RFC 9110): ASCII digits only; str.isdigit() also takes "²", which float() refuses
_DIGITS = re.compile(r"[0-9]+")
_PUBLIC_URL = re.compile(r"https?://[!-~]+")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchResult:
    status: int  # 200 or 304
    body: bytes
    etag: str | None
    last_modified: str | None
    content_type: str
    url: str
    moved_to: str | None = None  # the new URL when every redirect was permanent (301/308)
    fresh_for_s: float | None = None  # from Cache-Control max-age or Expires
    # WebSub discovery from the Link headers (rel="hub", rel="self"), resolved against `url`
    hub: str | None = None
    self_url: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def parse_retry_after(value: str | None, now: datetime, date: str | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; seconds from now, or None.

    An HTTP date is taken relative to the server's own Date when it sent one (as
    Expires is), so a server whose clock is an hour off does not hold us back an
    hour more. Capped at FETCH_RETRY_AFTER_MAX_S: a server's "999999999999" would
    otherwise overflow the datetime arithmetic of the next poll time.
    """
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        seconds = float(value)
    else:
        until = _seconds_until(value, date, now)
        if until is None:
            return None
        seconds = until
    return min(seconds, constants.FETCH_RETRY_AFTER_MAX_S)


def _seconds_until(value: str, date: str | None, now: datetime) -> float | None:
    """Seconds until the HTTP date `value`, counted from the answer's own Date when it
    has one (a server clock an hour off does not matter), else from now; None for no
    date."""
    when = _http_date(value)
    if when is None:
        return None
    base = (_http_date(date) if date else None) or now
    return max(0.0, (when - base).total_seconds())


def _http_date(value: str) -> datetime | None:
    """An HTTP date in any of its three forms (RFC 9110 5.6.7), or None.

    The asctime form (`Thu Feb  5 13:00:00 2026`) has no zone and parses to a naive
    datetime; HTTP dates are all in GMT, so it is UTC.
    """
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_freshness(
    cache_control: str | None,
    expires: str | None,
    date: str | None,
    now: datetime,
    age: str | None = None,
) -> float | None:
    """How long the server says the response stays fresh, in seconds (None: no hint).

    `Cache-Control: max-age` wins over `Expires` (RFC 9111); `no-cache`/`no-store`
    give no hint rather than "poll constantly". Expires is taken relative to the
    server's Date when there is one, so a skewed server clock does not matter. What
    is left is the lifetime less the response's `Age` (RFC 9111 4.2.3): a copy a CDN
    has held for 59 of its 60 minutes is fresh for one more.
    """
    fresh = _freshness_lifetime(cache_control, expires, date, now)
    if fresh is None:
        return None
    age = (age or "").strip()
    return max(0.0, fresh - float(age)) if _DIGITS.fullmatch(age) else fresh


def _freshness_lifetime(
    cache_control: str | None, expires: str | None, date: str | None, now: datetime
) -> float | None:
    if cache_control:
        directives = [d.strip().lower() for d in cache_control.split(",")]
        for d in directives:
            name, _, value = d.partition("=")
            if name.strip() == "max-age":
                value = value.strip().strip('"')
                if _DIGITS.fullmatch(value):
                    return float(value)
                return None
        if any(d in ("no-cache", "no-store") for d in directives):
            return None
    return _seconds_until(expires, date, now) if expires else None


def _validator(value: str | None) -> str | None:
    """An ETag or Last-Modified we can store and send back, or None (no conditional GET).

    aiohttp decodes header bytes that are not UTF-8 (obs-text, e.g. a Latin-1 0xE9) into
    lone surrogates; the store cannot encode those, and the poll's whole transaction
    would fail on every poll. Losing a validator only costs one full download.
    """
    if value is None or not _is_text(value):
        return None
    return value


def _location(value: str) -> str:
    """A Location header as a URL we can follow and store: bytes that are not UTF-8
    (decoded by aiohttp into lone surrogates) are percent-encoded from the raw bytes,
    as browsers do."""
    if _is_text(value):
        return value
    raw = value.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def _follow(source_id: str, url: str, location: str) -> str:
    """Where a redirect from `url` goes; FetchError (bad_url) when Location is not a URL."""
    try:
        return urljoin(url, _location(location))
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 literal
        raise FetchError(
            FetchReason.BAD_URL,
            f"redirect to an invalid Location {redact_url(location)[:200]!r}: {exc}",
            source_id=source_id,
        ) from None


def _host_key(host: str) -> str:
    """One spelling per host: lower case, no trailing dot, an IP address in its
    canonical form (`[0:0::1]` and `[::1]` share a slot)."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _is_text(value: str) -> bool:
    """Whether `value` is valid text (no lone surrogates from undecodable bytes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


# IPv6 prefixes whose last 32 bits are an IPv4 address: NAT64's well-known prefix
# (RFC 6052, only ever a /96) and SIIT's IPv4-translated addresses
_IPV4_IN_LAST_32_BITS = parse_networks(["64:ff9b::/96", "::ffff:0:0:0/96"])
# refused whatever they carry: site-local (deprecated, RFC 3879), IPv4-compatible
# (deprecated, RFC 4291; nothing routes them, and ::a9fe:a9fe spells 169.254.169.254)
# and local-use NAT64 (RFC 8215: not globally reachable, and its operator picks where
# in the address the IPv4 one sits, /48 to /96, so no one layout can be checked)
_REFUSED_IPV6 = parse_networks(["fec0::/10", "::/96", "64:ff9b:1::/48"])


def _public(ip: IPAddress) -> bool:
    return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to through a translator or a tunnel."""
    found = [
        ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) for net in _IPV4_IN_LAST_32_BITS if ip in net
    ]
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # the Teredo server and the client behind it
    return found


class BlockedAddressError(OSError):
    """A host resolves only to addresses the config does not allow."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which IP addresses a source may resolve to: public ones, plus allowed networks."""

    allow: tuple[IPNetwork, ...] = ()

    def allows(self, address: str | IPAddress) -> bool:
        """Whether a source may be fetched at `address`.

        An IPv6 address that carries an IPv4 one (NAT64, SIIT, 6to4, Teredo) reaches
        that IPv4 address through a gateway, so the IPv4 address must pass too; the
        deprecated site-local and IPv4-compatible forms, and local-use NAT64, are
        refused outright. Only
        `allow` (the config's allow_networks) overrides either.
        """
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self._listed(ip):
            return True
        if not _public(ip):
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if any(ip in net for net in _REFUSED_IPV6):
                return False
            return all(self._listed(v4) or _public(v4) for v4 in _embedded_ipv4(ip))
        return True

    def _listed(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.allow if net.version == ip.version)

    def check(self, host: str, addresses: Sequence[str]) -> None:
        refused = [a for a in addresses if not self.allows(a)]
        if refused or not addresses:
            where = (
                f"address {host}"
                if list(addresses) == [host]
                else f"{host} resolves to {', '.join(refused) or 'nothing'}"
            )
            raise BlockedAddressError(
                f"{where}: private, loopback and link-local addresses are refused "
                "unless [polling] allow_networks lists them"
            )


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses disallowed addresses at connect time.

    The Fetcher checks every hop before it asks; this resolver checks again at the
    moment aiohttp connects, so a DNS answer that changes in between (DNS
    rebinding) is refused too.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        self.policy.check(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class FetchLimits:
    timeout_s: float = constants.FETCH_TIMEOUT_S
    connect_timeout_s: float = constants.FETCH_CONNECT_TIMEOUT_S
    max_body_bytes: int = constants.FETCH_MAX_BODY_BYTES
    max_redirects: int = constants.FETCH_MAX_REDIRECTS
    per_host_concurrency: int = constants.FETCH_PER_HOST_CONCURRENCY
    max_decompression_ratio: int = constants.FETCH_MAX_DECOMPRESSION_RATIO
    allow_networks: tuple[IPNetwork, ...] = field(default=())
    user_agent: str = constants.USER_AGENT


def default_user_agent(public_url: str) -> str:
    """watcher's User-Agent, naming the service's public URL when there is one, so a
    source's operator can see who polls them and how to reach us."""
    url = public_url.strip().rstrip("/")
    if not _PUBLIC_URL.fullmatch(url):
        return constants.USER_AGENT
    return f"{constants.USER_AGENT_PRODUCT} (+{url}; {constants.USER_AGENT_PURPOSE})"


def limits_from_config(p: PollingConfig, *, public_url: str) -> FetchLimits:
    """The fetch limits of `[polling]`; `public_url` ([api]) goes in the default User-Agent."""
    return FetchLimits(
        timeout_s=p.timeout_s,
        connect_timeout_s=p.connect_timeout_s,
        max_body_bytes=p.max_body_bytes,
        max_redirects=p.max_redirects,
        per_host_concurrency=p.per_host_concurrency,
        max_decompression_ratio=p.max_decompression_ratio,
        allow_networks=parse_networks(str(n) for n in p.allow_networks),
        user_agent=p.user_agent or default_user_agent(public_url),
    )


def fetch_session(limits: FetchLimits) -> aiohttp.ClientSession:
    """A client session for fetching sources: guarded resolver, no cookies kept."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(AddressPolicy(limits.allow_networks)),
        limit=0,
        ttl_dns_cache=60,
    )
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    )


class _BrokenEncoding(Exception):
    """A compressed body that does not decode."""


class _Decoder:
    """Incremental gzip/deflate/brotli decoding under a size cap and a ratio cap."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._br: Any = None
        self._seen_any = False
        if encoding == "br":
            import brotli  # imported on first use: most feeds are gzip or plain

            self._br = brotli.Decompressor()
            self._br_error: type[Exception] = brotli.error
            return
        # gzip: wbits 31; deflate: zlib-wrapped (auto-detected with 47), raw as a fallback.
        self._gzip = encoding in ("gzip", "x-gzip")
        self._z: Any = zlib.decompressobj(31 if self._gzip else 47)
        self._raw_tried = encoding not in ("deflate",)
        self._trailing_junk = False

    def feed(self, chunk: bytes, room: int) -> bytes:
        """Decode a chunk; produce at most room+1 bytes (so a caller can see the cap crossed)."""
        if self._br is not None:
            try:
                # brotli stops growing its output at the limit and keeps the rest of the input
                return bytes(self._br.process(chunk, output_buffer_limit=room + 1))
            except self._br_error as exc:
                raise _BrokenEncoding(str(exc) or "invalid brotli data") from None
        if self._trailing_junk:
            return b""
        out = self._inflate(chunk, room)
        # gzip allows several members one after another (gzip(A) + gzip(B) is A + B)
        while self._gzip and self._z.eof and self._z.unused_data and len(out) <= room:
            out += self._next_member(room - len(out))
        return out

    def _next_member(self, room: int) -> bytes:
        """Start on the gzip member after the one that ended (what it left unused)."""
        rest = self._z.unused_data
        self._z = zlib.decompressobj(31)
        try:
            return bytes(self._z.decompress(rest, room + 1))
        except zlib.error:
            self._trailing_junk = True  # not another member: ignored, as gzip(1) does
            return b""

    def _inflate(self, chunk: bytes, room: int) -> bytes:
        try:
            out = self._z.decompress(chunk, room + 1)
        except zlib.error as exc:
            if self._raw_tried or self._seen_any:
                raise _BrokenEncoding(str(exc)) from None
            self._raw_tried = True
            self._z = zlib.decompressobj(-15)
            try:
                out = self._z.decompress(chunk, room + 1)
            except zlib.error as exc2:
                raise _BrokenEncoding(str(exc2)) from None
        self._seen_any = True
        return bytes(out)

    def flush(self) -> bytes:
        if self._br is not None:
            if not self._br.is_finished():
                raise _BrokenEncoding("truncated brotli stream")
            return b""
        if self._trailing_junk:
            return b""
        try:
            rest = bytes(self._z.flush())
        except zlib.error as exc:
            raise _BrokenEncoding(str(exc)) from None
        # zlib's flush() does not complain of a stream cut short: a gzip or deflate body
        # that ends before its last block (and gzip's checksum) is the feed's first part
        # only, and read as the whole it would lose the items after the cut for good
        if self._seen_any and not self._z.eof:
            raise _BrokenEncoding(f"truncated {'gzip' if self._gzip else 'deflate'} stream")
        return rest


class Fetcher:
    def __init__(
        self, *, session: aiohttp.ClientSession, limits: FetchLimits, clock: Clock
    ) -> None:
        self.session = session
        self.limits = limits
        self.clock = clock
        self.policy = AddressPolicy(limits.allow_networks)
        self._host_slots: dict[str, asyncio.Semaphore] = {}

    def _slot(self, host: str) -> asyncio.Semaphore:
        """The per-host slot: one semaphore per host however the URL spells it."""
        key = _host_key(host)
        slot = self._host_slots.get(key)
        if slot is None:
            slot = self._host_slots[key] = asyncio.Semaphore(self.limits.per_host_concurrency)
        return slot

    async def check_url(self, source_id: str, url: str) -> None:
        """Raise FetchError unless `url` is http(s) on an allowed address (e.g. a WebSub hub)."""
        host, port = self._http_host(source_id, url)
        await self._check_address(source_id, host, port)

    def _http_host(self, source_id: str, url: str) -> tuple[str, int | None]:
        """The host and port of an http(s) URL; FetchError (bad_url) for anything else."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port
        except ValueError as exc:
            raise FetchError(FetchReason.BAD_URL, str(exc), source_id=source_id) from None
        if parts.scheme not in ("http", "https") or not host:
            raise FetchError(
                FetchReason.BAD_URL,
                f"not an http(s) URL: {redact_url(url)[:200]}",
                source_id=source_id,
            )
        return host, port

    async def _check_address(self, source_id: str, host: str, port: int | None) -> None:
        """Refuse a host that is, or resolves to, an address the policy does not allow."""
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port or 80, type=socket.SOCK_STREAM
                )
            except UnicodeError as exc:  # the IDNA codec refuses it (e.g. a label too long)
                raise FetchError(
                    FetchReason.BAD_URL,
                    f"not a host name: {host[:100]}: {exc}",
                    source_id=source_id,
                ) from None
            except OSError as exc:
                raise FetchError(
                    FetchReason.CONNECT, f"cannot resolve {host}: {exc}", source_id=source_id
                ) from None
            addresses = sorted({str(info[4][0]) for info in infos})
        try:
            self.policy.check(host, addresses)
        except BlockedAddressError as exc:
            raise FetchError(FetchReason.BLOCKED_ADDRESS, str(exc), source_id=source_id) from None

    async def fetch(
        self, source_id: str, url: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        try:
            return await self._fetch(source_id, url, etag=etag, last_modified=last_modified)
        except FetchError:
            raise
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: before the whole-read one
            raise FetchError(
                FetchReason.CONNECT,
                f"connect timeout: no connection within {self.limits.connect_timeout_s:g}s "
                "(connect_timeout_s)",
                source_id=source_id,
            ) from None
        except TimeoutError:
            raise FetchError(
                FetchReason.TIMEOUT,
                f"no complete answer within {self.limits.timeout_s:g}s",
                source_id=source_id,
            ) from None
        except aiohttp.InvalidURL as exc:
            raise FetchError(FetchReason.BAD_URL, str(exc), source_id=source_id) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddressError):
                raise FetchError(
                    FetchReason.BLOCKED_ADDRESS, str(exc.os_error), source_id=source_id
                ) from None
            raise FetchError(
                FetchReason.CONNECT,
                f"cannot connect: {exc.os_error.strerror or exc}",
                source_id=source_id,
            ) from None
        except _BrokenEncoding as exc:
            raise FetchError(
                FetchReason.DECODING, f"broken compressed body: {exc}", source_id=source_id
            ) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise FetchError(
                FetchReason.PROTOCOL, str(exc) or type(exc).__name__, source_id=source_id
            ) from None
        except aiohttp.ClientError as exc:
            raise FetchError(
                FetchReason.CONNECT, str(exc) or type(exc).__name__, source_id=source_id
            ) from None

    async def _fetch(
        self, source_id: str, url: str, *, etag: str | None, last_modified: str | None
    ) -> FetchResult:
        """Follow redirects by hand, each hop in its host's slot.

        The whole-read timeout counts only while a slot is held: waiting behind other
        sources of a busy host is not this source's slowness. The time a hop used is
        taken off what the next hop has, so a redirect chain stays within one timeout.
        """
        headers = {
            "User-Agent": self.limits.user_agent,
            "Accept": ACCEPT,
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        loop = asyncio.get_running_loop()
        left_s = self.limits.timeout_s
        permanent = True
        hops = 0
        while True:
            host, port = self._http_host(source_id, url)
            async with self._slot(host):
                started = loop.time()
                try:
                    async with asyncio.timeout(left_s):
                        await self._check_address(source_id, host, port)
                        answer = await self._hop(source_id, url, headers, etag, last_modified)
                finally:
                    left_s -= loop.time() - started
            if isinstance(answer, FetchResult):
                return replace(answer, moved_to=url if hops and permanent else None)
            status, location = answer
            if hops >= self.limits.max_redirects:
                raise FetchError(
                    FetchReason.TOO_MANY_REDIRECTS,
                    f"more than {self.limits.max_redirects} redirects",
                    source_id=source_id,
                )
            hops += 1
            permanent = permanent and status in _PERMANENT
            url = _follow(source_id, url, location)

    async def _hop(
        self,
        source_id: str,
        url: str,
        headers: dict[str, str],
        etag: str | None,
        last_modified: str | None,
    ) -> FetchResult | tuple[int, str]:
        """One request: a result, or a redirect's (status, Location)."""
        timeout = aiohttp.ClientTimeout(sock_connect=self.limits.connect_timeout_s)
        async with self.session.get(
            url, headers=headers, timeout=timeout, allow_redirects=False, auto_decompress=False
        ) as resp:
            status = resp.status
            if status in _REDIRECTS and "Location" in resp.headers:
                return status, resp.headers["Location"]
            fresh_for_s = parse_freshness(
                resp.headers.get("Cache-Control"),
                resp.headers.get("Expires"),
                resp.headers.get("Date"),
                self.clock(),
                resp.headers.get("Age"),
            )
            if status == 304:  # its validators, if it sends any, replace ours (RFC 9111 4.3.4)
                return FetchResult(
                    304,
                    b"",
                    _validator(resp.headers.get("ETag")) or etag,
                    _validator(resp.headers.get("Last-Modified")) or last_modified,
                    "",
                    url,
                    fresh_for_s=fresh_for_s,
                )
            if status == 410:
                raise FetchError(
                    FetchReason.GONE,
                    "HTTP 410: the feed is gone",  # what follows is the pipeline's to say
                    source_id=source_id,
                    status=410,
                )
            if status in (429, 503):
                raise FetchError(
                    FetchReason.HTTP_STATUS,
                    f"HTTP {status}",
                    source_id=source_id,
                    status=status,
                    retry_after_s=parse_retry_after(
                        resp.headers.get("Retry-After"), self.clock(), resp.headers.get("Date")
                    ),
                )
            if status != 200:
                raise FetchError(
                    FetchReason.HTTP_STATUS, f"HTTP {status}", source_id=source_id, status=status
                )
            body = await self._read_capped(source_id, resp)
            found = links(resp.headers.getall("Link", ()), url)
            return FetchResult(
                200,
                body,
                _validator(resp.headers.get("ETag")),
                _validator(resp.headers.get("Last-Modified")),
                resp.headers.get("Content-Type", ""),
                url,
                fresh_for_s=fresh_for_s,
                hub=found.get("hub"),
                self_url=found.get("self"),
            )

    async def _read_capped(self, source_id: str, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.limits.max_body_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise FetchError(
                FetchReason.TOO_LARGE,
                f"Content-Length {resp.content_length} exceeds the {cap}-byte cap",
                source_id=source_id,
            )
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        decoder: _Decoder | None = None
        if encoding in _ENCODINGS:
            decoder = _Decoder(encoding)
        elif encoding not in ("identity", ""):
            raise FetchError(
                FetchReason.DECODING,
                f"unsupported Content-Encoding {encoding[:40]!r}",
                source_id=source_id,
            )
        chunks: list[bytes] = []
        size = 0
        wire = 0
        async for chunk in resp.content.iter_chunked(constants.FETCH_CHUNK_BYTES):
            wire += len(chunk)
            if wire > cap:
                raise FetchError(
                    FetchReason.TOO_LARGE, f"body exceeds the {cap}-byte cap", source_id=source_id
                )
            if decoder is not None:
                # never inflate past the cap or the ratio allowance, not even within a chunk
                chunk = decoder.feed(chunk, min(cap, self._ratio_allowance(wire)) - size)
            size += len(chunk)
            self._check_size(source_id, size, wire, decoder is not None)
            chunks.append(chunk)
        if decoder is not None:
            tail = decoder.flush()
            size += len(tail)
            self._check_size(source_id, size, wire, True)
            chunks.append(tail)
        return b"".join(chunks)

    def _ratio_allowance(self, wire: int) -> int:
        """Decompressed bytes allowed for `wire` compressed bytes (small bodies always pass)."""
        return max(1024 * 1024, self.limits.max_decompression_ratio * wire)

    def _check_size(self, source_id: str, size: int, wire: int, compressed: bool) -> None:
        cap = self.limits.max_body_bytes
        if size > cap:
            what = "decompressed body" if compressed else "body"
            raise FetchError(
                FetchReason.TOO_LARGE, f"{what} exceeds the {cap}-byte cap", source_id=source_id
            )
        ratio = self.limits.max_decompression_ratio
        if compressed and size > self._ratio_allowance(wire):
            raise FetchError(
                FetchReason.TOO_LARGE,
                f"compressed body expands more than {ratio}x: a decompression bomb",
                source_id=source_id,
            )
