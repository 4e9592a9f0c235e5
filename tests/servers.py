"""Real aiohttp servers on 127.0.0.1 that tests program: feeds and a webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict


async def _run(app: web.Application) -> web.AppRunner:
    """`app` served on 127.0.0.1, on a port of its own (runner.addresses)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1 for the `async with`; yields its port."""
    runner = await _run(app)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/rss+xml"
    etag: bool = True
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    links: tuple[str, ...] = ()  # each sent as a Link header of its own


class FeedServer:
    """Serves programmable routes; records every request's headers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_to(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        route = self.routes.get(request.path)
        if route is None:
            raise web.HTTPNotFound()
        if route.delay_s:
            await asyncio.sleep(route.delay_s)
        headers = CIMultiDict(route.headers)
        for link in route.links:
            headers.add("Link", link)
        if route.status == 200 and route.etag:
            etag = '"' + hashlib.sha256(route.body).hexdigest()[:16] + '"'
            headers["ETag"] = etag
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers=headers)
        return web.Response(
            status=route.status, body=route.body, content_type=route.content_type, headers=headers
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = await _run(app)
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


class WebhookServer:
    """Receives webhooks; answers with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.responses: list[tuple[int, dict[str, str]]] = []
        self.delay_s = 0.0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def json_bodies(self) -> list[Any]:
        import json

        return [json.loads(body) for _, body in self.received]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if self.responses:
            status, headers = self.responses.pop(0)
            return web.Response(status=status, headers=headers)
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = await _run(app)
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


class _TCPServer:
    """A server on 127.0.0.1 that hands each connection to `_serve`, then closes it; on
    leaving its `async with` it closes the connections still open."""

    def __init__(self) -> None:
        self.port = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            await self._serve(reader, writer)
        except ConnectionError:
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.close()
        await self._server.wait_closed()


class RawServer(_TCPServer):
    """Answers every connection with bytes that `respond(request_bytes)` returns.

    For what aiohttp's server will not send: malformed status lines, raw header
    bytes (obs-text), odd digits. One request per connection, then it closes.
    """

    def __init__(self, respond: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self.respond = respond
        self.requests: list[bytes] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(request)
        writer.write(self.respond(request))
        await writer.drain()
        writer.close()
        await writer.wait_closed()


def raw_response(status_line: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    """One HTTP/1.1 response, byte for byte: `headers` are raw CRLF-terminated lines."""
    return (
        b"HTTP/1.1 " + status_line + b"\r\n" + headers
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )  # fmt: skip


class RawSMTPServer(_TCPServer):
    """An SMTP server that misbehaves on request, for what aiosmtpd will not do: answer
    each command `delay_s` late (a tarpit), or let its idle connections go the way
    Postfix does (`expire_idle`: "421 ... timeout exceeded" as the answer to the next
    command, then close). Records each message whose DATA it took, with its recipients,
    and each connection it accepted."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.messages: list[tuple[list[str], bytes]] = []
        self.connections = 0
        self._goodbye: dict[asyncio.StreamWriter, bytes] = {}  # expired: the last reply

    async def _reply(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        writer.write(line + b"\r\n")
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._reply(writer, b"220 raw ESMTP")
        rcpts: list[str] = []
        while line := await reader.readline():
            if (goodbye := self._goodbye.pop(writer, None)) is not None:
                await self._reply(writer, goodbye)
                return
            cmd = line.strip().upper()
            if cmd.startswith((b"EHLO", b"HELO")):
                await self._reply(writer, b"250 raw")
            elif cmd.startswith(b"MAIL"):
                rcpts = []
                await self._reply(writer, b"250 OK")
            elif cmd.startswith(b"RCPT"):
                rcpts.append(line.split(b":", 1)[1].strip().strip(b"<>").decode())
                await self._reply(writer, b"250 OK")
            elif cmd == b"DATA":
                await self._reply(writer, b"354 go ahead")
                body = b""
                while (data := await reader.readline()) not in (b".\r\n", b""):
                    body += data
                self.messages.append((rcpts, body))
                await self._reply(writer, b"250 OK queued")
            elif cmd == b"QUIT":
                await self._reply(writer, b"221 bye")
                return
            else:  # RSET, NOOP
                await self._reply(writer, b"250 OK")

    async def expire_idle(self, reply: bytes | None = b"421 4.4.2 Error: timeout exceeded") -> None:
        """Let every open connection go: answer its next command with `reply`, then close
        it (a client sees the 421 only once it sends again); None: close it now, without
        a word."""
        for writer in list(self._open):
            if reply is not None:
                self._goodbye[writer] = reply
            else:
                writer.close()
                await writer.wait_closed()
