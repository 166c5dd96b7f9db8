"""TCP/TLS client connections: stream framing in, the same fast path as UDP for ChannelData (RFC 8656 §12.5).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyturn.core.allocation import FiveTuple, Transport
from pyturn.errors import StunDecodeError
from pyturn.net.sockets import bind_stream, plain_address
from pyturn.wire.framing import StreamFramer
from pyturn.wire.message import Address

if TYPE_CHECKING:
    from pyturn.net.runtime import Runtime

log = logging.getLogger(__name__)

# The largest TCP/TLS frame accepted: ChannelData carrying the largest IPv4 UDP payload (65507), padded. Anything
# bigger could never be relayed, so the stream is taken to be garbage and closed.
MAX_STREAM_FRAME = 4 + 65508
MAX_STREAM_BACKLOG = 1 << 20  # bytes queued towards one TCP/TLS client before relayed data is dropped
class StreamConnection(asyncio.Protocol):
    """One TCP or TLS client connection: STUN and ChannelData framed on one stream (RFC 8656 §12.5)."""

    def __init__(self, runtime: Runtime, transport_kind: Transport, auth_timeout: float) -> None:
        self.runtime = runtime
        self.kind = transport_kind
        self.framer = StreamFramer(
            channel_padding=runtime.core.config.tcp_channel_data_padding, max_frame=MAX_STREAM_FRAME
        )
        self.transport: asyncio.Transport | None = None
        self.five_tuple: FiveTuple | None = None
        self.routes: dict[tuple[Address, int], tuple[Any, Address]] = {}
        self.relayed = runtime.relayed_to_peer[transport_kind]
        self.auth_timeout = auth_timeout
        self.timer: asyncio.TimerHandle | None = None
        # RFC 6062 §5.4: after ConnectionBind, the peer connection (pyturn.net.tcp_relay.PeerLink) that this
        # client data connection's bytes go to, unframed.
        self.pipe: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check here.
        self.transport = transport  # type: ignore[assignment]
        client = plain_address(transport.get_extra_info("peername"))
        server = plain_address(transport.get_extra_info("sockname"))
        if not self.runtime.admit_stream(client[0]):
            transport.abort()  # type: ignore[attr-defined]  # refused: accepted and closed at once
            return
        self.five_tuple = FiveTuple(self.kind, client, server)
        self.routes = self.runtime.core.routes(self.kind, server)
        self.runtime.streams[self.five_tuple] = self
        if self.auth_timeout > 0:
            self.timer = self.runtime.loop.call_later(self.auth_timeout, self._check_authenticated)

    def _check_authenticated(self) -> None:
        self.timer = None
        if self.five_tuple is not None and self.five_tuple not in self.runtime.core.allocations and self.pipe is None:
            log.debug("closing %s connection from %s: no allocation in time", self.kind.value, self.five_tuple.client)
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.from_client(data)
            return
        five_tuple = self.five_tuple
        if five_tuple is None:
            return  # a refused connection: nothing is read from it
        try:
            frames = self.framer.feed(data)
        except StunDecodeError:
            self.close()  # an oversized or nonsensical frame desynchronises the stream: give up on it
            return
        runtime = self.runtime
        routes = self.routes
        client = five_tuple.client
        packets = octets = 0  # relayed by the fast path from this read, added to self.relayed once
        for index, frame in enumerate(frames):
            if frame[0] & 0xC0 == 0x40:
                route = routes.get((client, (frame[0] << 8) | frame[1]))
                if route is not None:
                    if route[0].send(frame[4:], route[1]):
                        packets += 1
                        octets += len(frame) - 4
                    continue
            try:
                actions = runtime.core.handle_client(frame, five_tuple, runtime.now())
            except Exception:
                runtime.internal_errors.note(runtime.now(), f"a frame from {client[0]}:{client[1]}", exc_info=True)
                continue
            runtime.dispatch(actions)
            if self.pipe is not None:  # that frame was a ConnectionBind: the rest of the stream is the peer's
                rest = b"".join(frames[index + 1 :]) + self.framer.drain()
                if rest:
                    self.pipe.from_client(rest)
                break
        if packets:
            relayed = self.relayed
            relayed.packets += packets
            relayed.octets += octets

    def write(self, data: bytes) -> None:
        transport = self.transport
        # A client that reads slower than its peers send loses data, as it would over UDP: the write buffer is
        # bounded instead of growing without limit.
        if transport is not None and not transport.is_closing() and (
            transport.get_write_buffer_size() < MAX_STREAM_BACKLOG
        ):
            transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # RFC 6062 data connections: back-pressure and half-close pass through to the peer connection.
    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.client_backlogged()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.client_drained()

    def eof_received(self) -> bool | None:
        return bool(self.pipe.client_eof()) if self.pipe is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.five_tuple is None:
            return
        runtime = self.runtime
        runtime.streams.pop(self.five_tuple, None)
        runtime.release_stream(self.five_tuple.client[0])
        runtime.dispatch(runtime.core.connection_closed(self.five_tuple, runtime.now()))


def make_stream_factory(
    runtime: Runtime, kind: Transport, auth_timeout: float
) -> Callable[[], StreamConnection]:
    def factory() -> StreamConnection:
        return StreamConnection(runtime, kind, auth_timeout)

    return factory



async def start_stream_listener(
    runtime: Runtime,
    host: str,
    port: int,
    kind: Transport,
    *,
    ssl_context: ssl.SSLContext | None = None,
    auth_timeout: float = 0.0,
    reuse_port: bool = False,
    ssl_handshake_timeout: float | None = None,
) -> asyncio.Server:
    sock = bind_stream(host, port, reuse_port=reuse_port)
    return await runtime.loop.create_server(
        make_stream_factory(runtime, kind, auth_timeout), sock=sock, ssl=ssl_context,
        ssl_handshake_timeout=ssl_handshake_timeout if ssl_context is not None else None,
    )
