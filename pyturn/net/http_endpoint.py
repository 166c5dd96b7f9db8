"""A tiny, strict HTTP/1.x listener on the server's event loop, for /metrics, /healthz and /readyz.

Served by the same loop as the relay, so it reads the server's state without locks; whatever arrives on it
costs a bounded amount of work and memory. One GET or HEAD per connection, answered and closed:

* the request line and headers are read within HEAD_TIMEOUT seconds and MAX_HEAD bytes, else the connection
  is dropped (slow or huge requests);
* at most MAX_CONNECTIONS connections are open at once; more are closed at once;
* anything that is not ``GET|HEAD <path> HTTP/1.0|1.1`` gets a 400 or 405 and the connection closes; a request
  body is never read;
* answers that the client does not read within WRITE_TIMEOUT seconds are abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # bytes of request line plus headers
HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[\x21-\x7e]{0,1024}) HTTP/1\.([01])")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            429: "Too Many Requests", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[], Awaitable[Response]]


def _encode(response: Response, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + response.body


def parse_request_line(head: bytes) -> tuple[str, str] | Response:
    """(method, path without the query) from a request head, or the error Response to send."""
    line, _, _ = head.partition(b"\r\n")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return Response(400, b"bad request\n")
    method = match.group(1).decode("ascii")
    if method not in ("GET", "HEAD"):
        return Response(405, b"only GET and HEAD\n")
    path = match.group(2).decode("ascii").partition("?")[0]
    return method, path


class HttpEndpoint:
    """Serves `routes` (path -> handler) on one listening TCP socket until close()."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self.routes = dict(routes)
        self.open: set[asyncio.StreamWriter] = set()
        self.refused = 0  # connections closed at once because MAX_CONNECTIONS were open
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] = ("", 0)

    async def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.open) >= MAX_CONNECTIONS or self._server is None:
            self.refused += 1
            writer.transport.abort()
            return
        self.open.add(writer)
        try:
            await self._answer(reader, writer)
        except Exception:  # a broken connection must never reach the loop's exception handler
            log.debug("metrics connection failed", exc_info=True)
        finally:
            self.open.discard(writer)
            if not writer.is_closing():
                writer.transport.abort()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            await self._send(writer, Response(400, b"request head too large\n"), False)
            return
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return
        parsed = parse_request_line(head)
        if isinstance(parsed, Response):
            await self._send(writer, parsed, False)
            return
        method, path = parsed
        handler = self.routes.get(path)
        if handler is None:
            response = Response(404, b"not found\n")
        else:
            try:
                response = await handler()
            except Exception:
                log.exception("metrics handler for %s failed", path)
                response = Response(503, b"internal error\n")
        await self._send(writer, response, method == "HEAD")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
        writer.write(_encode(response, head_only))
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
            return
        writer.close()

    async def close(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        for writer in list(self.open):
            writer.transport.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), 1.0)
        except (TimeoutError, Exception):
            pass
