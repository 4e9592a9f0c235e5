"""Fetch stage: one conditional HTTP GET of a source, with every limit applied.

The status policy lives in one function (`Fetcher.fetch`): 200 gives a body,
304 gives nothing new, 429/503 carry Retry-After, anything else is an error
with a fixed reason. The body is read through a size cap while streaming, so a
huge (or decompression-bomb) body is cut off at the cap, not after.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

import aiohttp

from watcher import constants
from watcher.errors import FetchError, FetchReason
from watcher.models import Clock

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)


@dataclass(frozen=True)
class FetchResult:
    status: int  # 200 or 304
    body: bytes
    etag: str | None
    last_modified: str | None
    content_type: str
    url: str

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class FetchLimits:
    timeout_s: float = constants.FETCH_TIMEOUT_S
    connect_timeout_s: float = constants.FETCH_CONNECT_TIMEOUT_S
    max_body_bytes: int = constants.FETCH_MAX_BODY_BYTES
    max_redirects: int = constants.FETCH_MAX_REDIRECTS


class Fetcher:
    def __init__(
        self, *, session: aiohttp.ClientSession, limits: FetchLimits, clock: Clock
    ) -> None:
        self.session = session
        self.limits = limits
        self.clock = clock

    async def fetch(
        self, source_id: str, url: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        headers = {"User-Agent": constants.USER_AGENT, "Accept": ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        timeout = aiohttp.ClientTimeout(
            total=self.limits.timeout_s, sock_connect=self.limits.connect_timeout_s
        )
        try:
            async with self.session.get(
                url,
                headers=headers,
                timeout=timeout,
                allow_redirects=True,
                max_redirects=self.limits.max_redirects,
            ) as resp:
                if resp.status == 304:
                    return FetchResult(304, b"", etag, last_modified, "", str(resp.url))
                if resp.status in (429, 503):
                    raise FetchError(
                        FetchReason.HTTP_STATUS,
                        f"HTTP {resp.status}",
                        source_id=source_id,
                        status=resp.status,
                        retry_after_s=parse_retry_after(
                            resp.headers.get("Retry-After"), self.clock()
                        ),
                    )
                if resp.status != 200:
                    raise FetchError(
                        FetchReason.HTTP_STATUS,
                        f"HTTP {resp.status}",
                        source_id=source_id,
                        status=resp.status,
                    )
                body = await self._read_capped(source_id, resp)
                return FetchResult(
                    200,
                    body,
                    resp.headers.get("ETag"),
                    resp.headers.get("Last-Modified"),
                    resp.headers.get("Content-Type", ""),
                    str(resp.url),
                )
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(
                FetchReason.TIMEOUT,
                f"no complete answer within {self.limits.timeout_s:g}s",
                source_id=source_id,
            ) from None
        except aiohttp.TooManyRedirects:
            raise FetchError(
                FetchReason.TOO_MANY_REDIRECTS,
                f"more than {self.limits.max_redirects} redirects",
                source_id=source_id,
            ) from None
        except (aiohttp.InvalidURL, ValueError) as exc:
            raise FetchError(FetchReason.BAD_URL, str(exc), source_id=source_id) from None
        except aiohttp.ClientConnectorError as exc:
            raise FetchError(
                FetchReason.CONNECT,
                f"cannot connect: {exc.os_error.strerror or exc}",
                source_id=source_id,
            ) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise FetchError(
                FetchReason.PROTOCOL, str(exc) or type(exc).__name__, source_id=source_id
            ) from None
        except aiohttp.ClientError as exc:
            raise FetchError(
                FetchReason.CONNECT, str(exc) or type(exc).__name__, source_id=source_id
            ) from None

    async def _read_capped(self, source_id: str, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.limits.max_body_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise FetchError(
                FetchReason.TOO_LARGE,
                f"Content-Length {resp.content_length} exceeds the {cap}-byte cap",
                source_id=source_id,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(constants.FETCH_CHUNK_BYTES):
            size += len(chunk)
            if size > cap:
                raise FetchError(
                    FetchReason.TOO_LARGE, f"body exceeds the {cap}-byte cap", source_id=source_id
                )
            chunks.append(chunk)
        return b"".join(chunks)
