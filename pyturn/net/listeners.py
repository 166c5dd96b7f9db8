"""The listening sockets of one server: UDP listeners and TCP/TLS servers, the addresses they are bound at, and the
sockets a parent process bound for them (pyturn.ops.workers, docs/architecture.md "Workers").
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Collection

from pyturn.core.allocation import Transport
from pyturn.errors import StartupError
from pyturn.net.runtime import Runtime
from pyturn.net.sockets import bind_udp
from pyturn.net.stream import make_stream_factory, start_stream_listener
from pyturn.net.tls import HANDSHAKE_TIMEOUT
from pyturn.net.udp import UdpListener
from pyturn.wire.message import Address

EPHEMERAL_PORT_ATTEMPTS = 20  # TurnPort 0: ports tried until one is free for both UDP and TCP
STREAM_CLOSE_GRACE = 0.5  # seconds close() lets TCP/TLS connections shut down cleanly before aborting them
STREAM_SERVER_CLOSE_TIMEOUT = 2.0  # seconds to wait for a TCP/TLS server to close


def listen_key(kind: int, host: str, port: int) -> tuple[int, str, int]:
    """How an adopted socket is found again: (socket type, normalised IP, port)."""
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return int(kind), host, int(port)


class Listeners:
    """The UDP listeners (``udp``) and TCP/TLS servers (``streams``) of one server. ``addresses`` maps "udp",
    "tcp" and "tls" to the bound (IP, port) of each; ``adopted`` are sockets bound elsewhere, taken instead of
    binding the same type, address and port."""

    def __init__(self, adopted: Collection[socket.socket], *, reuse_port: bool, auth_timeout: float) -> None:
        self.adopted = {listen_key(sock.type, *sock.getsockname()[:2]): sock for sock in adopted}
        self.reuse_port = reuse_port
        self.auth_timeout = auth_timeout
        self.udp: list[UdpListener] = []
        self.streams: list[asyncio.Server] = []
        self.addresses: dict[str, list[Address]] = {"udp": [], "tcp": [], "tls": []}

    def adopt(self, kind: int, host: str, port: int) -> socket.socket | None:
        """The adopted socket of that type bound at host:port, taken out of ``adopted``, or None."""
        return self.adopted.pop(listen_key(kind, host, port), None)

    async def open_turn_port(self, runtime: Runtime, hosts: list[str], port: int, transports: Collection[str]) -> int:
        """UDP and TCP on one port for every host; returns the port. With port 0 the kernel picks the UDP port,
        which another socket may already hold for TCP: then what was opened here is closed and another is tried."""
        attempt = 1
        while True:
            chosen = port
            try:
                for host in hosts:
                    if "udp" in transports:
                        chosen = self.open_udp(runtime, host, chosen)
                    if "tcp" in transports:
                        chosen = await self.open_stream(runtime, host, chosen, Transport.TCP, None)
                return chosen
            except StartupError:
                if port or attempt == EPHEMERAL_PORT_ATTEMPTS:
                    raise
            attempt += 1
            for listener in self.udp:
                listener.close()
            self.udp.clear()
            for server in self.streams:
                server.close()
                await server.wait_closed()
            self.streams.clear()
            self.addresses["udp"].clear()
            self.addresses["tcp"].clear()

    def open_udp(self, runtime: Runtime, host: str, port: int) -> int:
        """A UDP listener on host:port (0 = ephemeral); returns the bound port."""
        try:
            sock = self.adopt(socket.SOCK_DGRAM, host, port) or bind_udp(host, port, reuse_port=self.reuse_port)
        except OSError as error:
            raise StartupError(f"cannot listen on UDP {host}:{port}: {error.strerror or error}") from error
        listener = UdpListener(runtime, sock)
        self.udp.append(listener)
        self.addresses["udp"].append(listener.address)
        return listener.address[1]

    async def open_stream(
        self, runtime: Runtime, host: str, port: int, kind: Transport, context: ssl.SSLContext | None
    ) -> int:
        """A TCP (or, with `context`, TLS) server on host:port (0 = ephemeral); returns the bound port."""
        adopted = self.adopt(socket.SOCK_STREAM, host, port)
        try:
            if adopted is not None:
                server = await runtime.loop.create_server(
                    make_stream_factory(runtime, kind, self.auth_timeout), sock=adopted,
                    ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None,
                )
            else:
                server = await start_stream_listener(
                    runtime, host, port, kind, ssl_context=context,
                    auth_timeout=self.auth_timeout, reuse_port=self.reuse_port,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                )
        except OSError as error:
            raise StartupError(
                f"cannot listen on {kind.value.upper()} {host}:{port}: {error.strerror or error}"
            ) from error
        self.streams.append(server)
        bound = server.sockets[0].getsockname()
        self.addresses[kind.value].append((bound[0], bound[1]))
        return int(bound[1])

    def open_alternate(self, runtime: Runtime, primary: Address, other: Address) -> None:
        """RFC 3489 / RFC 5780: three more UDP sockets beside primary = A1:P1, at A1:P2, A2:P1 and A2:P2
        (docs/compatibility.md "Alternate address")."""
        (primary_host, primary_port), (other_host, other_port) = primary, other
        self.open_udp(runtime, primary_host, other_port)
        self.open_udp(runtime, other_host, primary_port)
        self.open_udp(runtime, other_host, other_port)

    def close_adopted(self) -> None:
        """Close the adopted sockets nothing took."""
        for sock in self.adopted.values():
            sock.close()
        self.adopted.clear()

    def stop(self) -> None:
        """Close the UDP listeners and stop the TCP/TLS servers accepting; wait_closed() finishes the servers."""
        for listener in self.udp:
            listener.close()
        self.udp.clear()
        for server in self.streams:
            server.close()

    async def wait_closed(self) -> None:
        for server in self.streams:
            try:
                await asyncio.wait_for(server.wait_closed(), STREAM_SERVER_CLOSE_TIMEOUT)
            except (TimeoutError, Exception):
                pass
        self.streams.clear()


async def release_streams(runtime: Runtime) -> None:
    """Wait briefly for closing TCP/TLS connections (a TLS close_notify needs the client's answer), then abort
    the rest, so that close() returns with every socket released."""
    deadline = runtime.loop.time() + STREAM_CLOSE_GRACE
    while runtime.streams and runtime.loop.time() < deadline:
        await asyncio.sleep(0.01)
    for stream in list(runtime.streams.values()):
        if stream.transport is not None:
            stream.transport.abort()
    if runtime.streams:
        await asyncio.sleep(0)  # abort() runs connection_lost, which releases the socket, on the next iteration
