"""TCP relays (RFC 6062): the listening socket of each TCP allocation, its peer data connections, and the pipe that
joins a peer data connection to its client data connection (a StreamConnection after ConnectionBind).

The core (pyturn.core.tcp_relay) decides; this module carries out ConnectPeer, AcceptPeer, RefusePeer,
BindDataConnection and ClosePeerConnection and reports connects, failures and closes back. Bytes of a joined pair
never reach the core: each read is written to the other side as it is. Back-pressure instead of buffers: when
one side's write buffer passes HIGH_WATER, reading from the other side pauses until it drains below LOW_WATER, so
what the server holds per pair stays within about two buffers' worth (docs/security.md "TCP relays").
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

from pyturn.core.actions import (
    AcceptPeer,
    BindDataConnection,
    ClosePeerConnection,
    ConnectPeer,
    OpenRelay,
    RefusePeer,
    TcpRelayAction,
)
from pyturn.core.allocation import FiveTuple
from pyturn.net.sockets import ROUTE_PROBE, bind_stream, is_wildcard, local_address_towards, plain_address

if TYPE_CHECKING:
    from pyturn.core.actions import Action
    from pyturn.net.runtime import Runtime
    from pyturn.net.stream import StreamConnection

log = logging.getLogger(__name__)

HIGH_WATER = 64 * 1024  # bytes queued towards one side before reading from the other side pauses
LOW_WATER = 16 * 1024  # ... and resumes
ACCEPT_BATCH = 16  # connections accepted per wake-up of a relayed address
ACCEPT_BACKLOG = 16  # pending connections the kernel queues per relayed address
ACCEPT_PAUSE = 1.0  # seconds a relayed address stops accepting after accept() failed (out of descriptors)
CLOSE_GRACE = 5.0  # seconds a closed connection may go on writing what is queued before it is aborted
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and keeps no TIME_WAIT


class TcpRelayListener:
    """One TCP allocation's relayed address. Its identity is the handle the core keys the allocation by."""

    __slots__ = ("adapter", "address", "bytes_to_client", "bytes_to_peer", "closed", "fd", "sock", "stream_key")

    def __init__(self, adapter: TcpRelayAdapter, sock: socket.socket, five_tuple: FiveTuple) -> None:
        self.adapter = adapter
        self.sock = sock
        self.fd = sock.fileno()
        self.address = plain_address(sock.getsockname())
        self.stream_key = five_tuple  # read by Runtime.dispatch for AllocationDeleted's byte counts
        self.bytes_to_peer = 0
        self.bytes_to_client = 0
        self.closed = False
        adapter.runtime.loop.add_reader(self.fd, self._acceptable)

    def send(self, data: bytes, peer: Any, dont_fragment: bool = False) -> bool:
        """Send indications and ChannelData mean nothing on a TCP allocation: dropped."""
        return False

    def _acceptable(self) -> None:
        runtime = self.adapter.runtime
        for _ in range(ACCEPT_BATCH):
            try:
                accepted, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._pause_accepting(error)
                return
            if runtime.sockets_exhausted():
                _refuse(accepted)
                continue
            try:
                actions = runtime.core.tcp_relays.peer_accepted(self, accepted, plain_address(address), runtime.now())
            except Exception:
                runtime.internal_errors.note(runtime.now(), "an incoming peer connection", exc_info=True)
                _refuse(accepted)
                continue
            runtime.dispatch(actions)

    def _pause_accepting(self, error: OSError) -> None:
        if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            return  # ECONNABORTED and the like: that one connection is gone, the next may come
        loop = self.adapter.runtime.loop
        loop.remove_reader(self.fd)
        loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self.closed:
            self.adapter.runtime.loop.add_reader(self.fd, self._acceptable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.adapter.listeners.discard(self)
        try:
            self.adapter.runtime.loop.remove_reader(self.fd)
        except (ValueError, OSError):
            pass
        self.sock.close()


def _refuse(accepted: socket.socket) -> None:
    try:
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    except OSError:
        pass
    accepted.close()


class PeerLink(asyncio.Protocol):
    """One peer data connection; once joined, the pipe between it and its client data connection."""

    def __init__(self, adapter: TcpRelayAdapter, connection_id: int, relay: TcpRelayListener) -> None:
        self.adapter = adapter
        self.connection_id = connection_id
        self.relay = relay
        self.sock: socket.socket | None = None  # until a transport owns it
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.client: asyncio.Transport | None = None  # the client data connection's transport, once joined
        self.peer_done = False  # the peer sent EOF
        self.client_done = False  # the client sent EOF
        self.closed = False
        kind = relay.stream_key.transport
        self.to_peer = adapter.runtime.relayed_to_peer[kind]
        self.to_client = adapter.runtime.relayed_to_client[kind]

    # ---------------------------------------------------------------------------------- peer side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sock = None
        if self.closed:
            transport.abort()  # type: ignore[attr-defined]
            return
        # RFC 6062 §5.2/§5.3: what the peer sends before the ConnectionBind waits in the kernel, whose receive
        # window closes when it is full; nothing is read until the pair is joined.
        transport.pause_reading()  # type: ignore[attr-defined]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client.write(data)
            self.relay.bytes_to_client += len(data)
            counter = self.to_client
            counter.packets += 1
            counter.octets += len(data)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading()  # the peer reads slower than the client sends

    def resume_writing(self) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    def eof_received(self) -> bool:
        self.peer_done = True
        return self._half_close(self.client)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        runtime = self.adapter.runtime
        runtime.dispatch(runtime.core.tcp_relays.peer_closed(self.connection_id, runtime.now()))
        self.adapter.close_connection(self.connection_id)

    # -------------------------------------------------------------------- client side (from the stream)
    def join(self, stream: StreamConnection) -> None:
        """RFC 6062 §5.4: the client data connection and this peer data connection now carry each other's bytes."""
        client = stream.transport
        peer = self.transport
        assert client is not None and peer is not None
        self.client = client
        stream.pipe = self
        client.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        peer.resume_reading()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("tcp relay connection %08x joined: client %s <-> peer %s", self.connection_id,
                      stream.five_tuple.client if stream.five_tuple else "?", peer.get_extra_info("peername"))

    def from_client(self, data: bytes) -> None:
        peer = self.transport
        if peer is not None:
            peer.write(data)
            self.relay.bytes_to_peer += len(data)
            counter = self.to_peer
            counter.packets += 1
            counter.octets += len(data)

    def client_backlogged(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # the client reads slower than the peer sends

    def client_drained(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def client_eof(self) -> bool:
        self.client_done = True
        return self._half_close(self.transport)

    def _half_close(self, other: asyncio.Transport | None) -> bool:
        """One side finished sending: pass the EOF on and keep the other direction open, while both can."""
        if self.peer_done and self.client_done:
            self.close()
            return False
        if other is not None and other.can_write_eof() and not other.is_closing():
            other.write_eof()
            return True
        self.close()  # TLS has no half-close: the pair ends
        return False

    def close(self) -> None:
        self.closed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.sock is not None:  # a connect under way or an accepted socket not wrapped yet
            _refuse(self.sock)
            self.sock = None
        loop = self.adapter.runtime.loop
        for transport in (self.transport, self.client):
            if transport is not None and not transport.is_closing():
                transport.close()  # what is queued is still written, for a while: a side that never reads
                if transport.get_write_buffer_size():  # would hold its descriptor for ever
                    loop.call_later(CLOSE_GRACE, transport.abort)


class TcpRelayAdapter:
    """The TCP relay part of a Runtime: the relayed addresses and the peer data connections by connection id."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.listeners: set[TcpRelayListener] = set()
        self.links: dict[int, PeerLink] = {}

    @property
    def sockets(self) -> int:
        """Descriptors held (counted in the Runtime's socket budget)."""
        return len(self.listeners) + len(self.links)

    def open_listener(self, action: OpenRelay, now: float) -> list[Action]:
        """RFC 6062 §5.1: bind and listen on the relayed address; answer the core as for a UDP relay (the Runtime
        checked the socket budget)."""
        runtime, core = self.runtime, self.runtime.core
        family = socket.AF_INET6 if action.family == 2 else socket.AF_INET
        host = action.host
        try:
            if is_wildcard(host):
                same_family = (":" in action.five_tuple.client[0]) == (family == socket.AF_INET6)
                towards = action.five_tuple.client if same_family else ROUTE_PROBE[family]
                host = local_address_towards(family, towards)
            sock = bind_stream(host, action.port, reuse_port=True, backlog=ACCEPT_BACKLOG)
        except OSError as error:
            return core.relay_failed(action.token, runtime.relay_failure(error, host, action.port, now), now)
        listener = TcpRelayListener(self, sock, action.five_tuple)
        self.listeners.add(listener)
        return core.relay_opened(action.token, listener, listener.address, now)

    def perform(self, action: TcpRelayAction) -> None:
        if isinstance(action, BindDataConnection):
            self._bind(action)
        elif isinstance(action, ClosePeerConnection):
            self.close_connection(action.connection_id)
        elif isinstance(action, ConnectPeer):
            self._connect(action)
        elif isinstance(action, AcceptPeer):
            self._adopt(action)
        elif isinstance(action, RefusePeer):
            _refuse(action.connection)

    def close_connection(self, connection_id: int) -> None:
        link = self.links.pop(connection_id, None)
        if link is not None:
            link.close()

    def _adopt(self, action: AcceptPeer) -> None:
        link = PeerLink(self, action.connection_id, action.handle)
        link.sock = action.connection
        self.links[action.connection_id] = link
        link.task = self.runtime.loop.create_task(self._wrap_accepted(link, action.connection))

    async def _wrap_accepted(self, link: PeerLink, accepted: socket.socket) -> None:
        try:
            await self.runtime.loop.connect_accepted_socket(lambda: link, accepted)
        except OSError:
            self.close_connection(link.connection_id)
            runtime = self.runtime
            runtime.dispatch(runtime.core.tcp_relays.peer_closed(link.connection_id, runtime.now()))

    def _connect(self, action: ConnectPeer) -> None:
        relay: TcpRelayListener = action.handle
        link = PeerLink(self, action.connection_id, relay)
        self.links[action.connection_id] = link
        link.task = self.runtime.loop.create_task(self._open(link, relay.address, action.peer))

    async def _open(self, link: PeerLink, source: tuple[str, int], peer: tuple[str, int]) -> None:
        """RFC 6062 §5.2: connect from the relayed address (SO_REUSEPORT on it and on the listener lets both bind
        it); from another port of its IP when that 4-tuple is busy (a recent connection to the peer in TIME_WAIT)."""
        loop = self.runtime.loop
        connected = False
        # Out of descriptors (docs/security.md "TCP relays"): no socket is opened and the Connect gets 447.
        ports = () if self.runtime.sockets_exhausted() else (source[1], 0)
        for port in ports:
            try:
                sock = bind_stream(source[0], port, reuse_port=True, backlog=None)
            except OSError:
                continue
            link.sock = sock
            try:
                await loop.sock_connect(sock, peer)
                await loop.create_connection(lambda: link, sock=sock)
                connected = True
                break
            except OSError as error:
                if link.sock is not None:
                    link.sock.close()
                    link.sock = None
                if error.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    break
        runtime = self.runtime
        tcp_relays = runtime.core.tcp_relays
        if connected:
            runtime.dispatch(tcp_relays.peer_connected(link.connection_id, runtime.now()))
        else:
            self.links.pop(link.connection_id, None)
            runtime.dispatch(tcp_relays.peer_connect_failed(link.connection_id, runtime.now()))

    def _bind(self, action: BindDataConnection) -> None:
        stream = self.runtime.streams.get(action.five_tuple)
        link = self.links.get(action.connection_id)
        if stream is None or link is None or link.transport is None or stream.transport is None:
            if stream is not None:
                stream.close()
            self.close_connection(action.connection_id)
            return
        link.join(stream)

    def close_all(self) -> None:
        for connection_id in list(self.links):
            self.close_connection(connection_id)
        for listener in list(self.listeners):
            listener.close()

