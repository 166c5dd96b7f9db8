"""The runtime that carries out the core's actions and owns the socket registries the adapters share; it logs the
allocation lifecycle from the core's events (docs/architecture.md "Sans-IO contract").
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import resource
import socket
from collections.abc import Callable
from typing import Any

from pyturn.core.actions import (
    AcceptPeer,
    Action,
    BindDataConnection,
    ClosePeerConnection,
    CloseRelay,
    ConnectPeer,
    OpenRelay,
    RefusePeer,
    RelayFailure,
    ReleasePort,
    SendFrom,
    SendToClient,
    SendToPeer,
)
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.events import AllocationCreated, AllocationDeleted
from pyturn.core.stats import RelayCounter
from pyturn.net.limits import ThrottledWarning, socket_budget, stream_limit
from pyturn.net.relay import RelayEndpoint
from pyturn.net.sockets import (
    RESERVED_BUFFER,
    ROUTE_PROBE,
    SocketBuffers,
    bind_udp,
    is_wildcard,
    local_address_towards,
    plain_address,
    set_buffers,
    set_dont_fragment,
)
from pyturn.net.stream import StreamConnection
from pyturn.net.tcp_relay import TcpRelayAdapter
from pyturn.net.udp import UdpListener
from pyturn.wire.message import Address

log = logging.getLogger(__name__)

EventSink = Callable[[Any], None]
_TCP_RELAY_ACTIONS = frozenset((BindDataConnection, ClosePeerConnection, ConnectPeer, AcceptPeer, RefusePeer))

def _log_lifecycle(event: AllocationCreated | AllocationDeleted) -> None:
    """The allocation lifecycle lines of the server log, written from the core's events."""
    client, transport = event.five_tuple.client, event.five_tuple.transport.value
    if isinstance(event, AllocationCreated):
        log.info("allocation %s:%d/%s for %r relayed at %s:%d for %ds", client[0], client[1], transport,
                 event.username, event.relayed[0], event.relayed[1], event.lifetime)
        if event.also_relayed is not None:
            log.info("allocation %s:%d/%s also relayed at [%s]:%d (dual allocation)", client[0], client[1],
                     transport, event.also_relayed[0], event.also_relayed[1])
    else:
        log.info("allocation %s:%d/%s deleted (%s)", client[0], client[1], transport, event.reason)


class Runtime:
    """Carries out the core's actions; owns the socket registries shared by the adapters."""

    def __init__(self, core: TurnServerCore, loop: asyncio.AbstractEventLoop, on_event: EventSink | None) -> None:
        self.core = core
        self.loop = loop
        self.on_event = on_event
        self.udp_listeners: dict[Address, UdpListener] = {}
        self.streams: dict[FiveTuple, StreamConnection] = {}
        self.relays: set[RelayEndpoint] = set()
        self.tcp = TcpRelayAdapter(self)  # RFC 6062 relayed addresses and peer connections (pyturn.net.tcp_relay)
        # Relayed datagrams and bytes by client transport, added once per wake-up by the relay loops.
        self.relayed_to_peer = {kind: RelayCounter() for kind in Transport}
        self.relayed_to_client = {kind: RelayCounter() for kind in Transport}
        # Reserved odd ports (EVEN-PORT R), bound and held until redeemed or released: (family, port) -> socket.
        self.reserved: dict[tuple[int, int], socket.socket] = {}
        # Workers: another process may redeem this one's tokens (see _hold_reserved).
        self.share_reserved_ports = False
        # MaxTcpConnections / MaxTcpConnectionsPerSource and the fd budget (docs/security.md "Descriptor budget").
        self.socket_budget = socket_budget(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.max_streams = stream_limit(core.config.max_tcp_connections)
        self.max_streams_per_source = core.config.max_tcp_connections_per_source
        self.streams_per_source: dict[str, int] = {}
        self._stream_refusals = ThrottledWarning(
            f"refused %d TCP/TLS connection(s): limit of {self.max_streams} in total, "
            f"{self.max_streams_per_source} per source or {self.socket_budget} sockets reached (0 = none)"
        )
        self._relay_refusals = ThrottledWarning(
            f"refused %d relay socket(s) (508): out of file descriptors or the budget of {self.socket_budget} "
            "sockets reached"
        )
        config = core.config
        self.listener_buffers = SocketBuffers(config.listener_receive_buffer, config.listener_send_buffer)
        self.relay_buffers = SocketBuffers(config.relay_receive_buffer, config.relay_send_buffer)
        self._buffers_warned: set[str] = set()
        # pyturn.net.shaping.RelayImpairments once a test rig impairs or pauses the relay (docs/testing.md).
        self.impairments: Any = None
        # One input-triggered bug must not become a traceback per packet (a log flood): one line per interval.
        self.internal_errors = ThrottledWarning(
            "dropped %d datagram(s) or frame(s) after an internal error; the latest, with its traceback: ",
            logging.ERROR,
        )

    @property
    def refused_streams(self) -> int:
        """TCP/TLS connections refused so far (caps or fd budget)."""
        return self._stream_refusals.total

    @property
    def refused_relays(self) -> int:
        """Relay sockets refused so far (out of descriptors or the socket budget)."""
        return self._relay_refusals.total

    def sockets_exhausted(self) -> bool:
        return bool(self.socket_budget) and (
            len(self.streams) + len(self.relays) + len(self.reserved) + self.tcp.sockets >= self.socket_budget
        )

    def now(self) -> float:
        return self.loop.time()

    def size_buffers(self, sock: socket.socket, kind: str) -> None:
        """Listener or relay socket buffers from the config; a kernel cap is told once per kind (start-up for
        listeners, the first relay for relays: opened after a privilege drop, they cannot be forced)."""
        shortfalls = set_buffers(sock, self.listener_buffers if kind == "listener" else self.relay_buffers)
        if shortfalls and kind not in self._buffers_warned:
            self._buffers_warned.add(kind)
            log.warning("UDP %s socket %s: %s", kind, "; ".join(shortfalls),
                        "; bursts beyond the buffer are dropped by the kernel")

    def admit_stream(self, client_ip: str) -> bool:
        """Count a new TCP/TLS connection in, or refuse it when a connection cap is reached."""
        count = self.streams_per_source.get(client_ip, 0)
        if (
            (self.max_streams and len(self.streams) >= self.max_streams)
            or (self.max_streams_per_source and count >= self.max_streams_per_source)
            or self.sockets_exhausted()
        ):
            self._stream_refusals.note(self.now())
            return False
        self.streams_per_source[client_ip] = count + 1
        return True

    def release_stream(self, client_ip: str) -> None:
        remaining = self.streams_per_source.get(client_ip, 1) - 1
        if remaining > 0:
            self.streams_per_source[client_ip] = remaining
        else:
            self.streams_per_source.pop(client_ip, None)

    def dispatch(self, actions: list[Action]) -> None:
        # The counters of the relay sockets just closed for one five-tuple (both relays of a dual allocation),
        # which the AllocationDeleted that follows them reports.
        closed_key: Any = None
        closed_to_peer = closed_to_client = 0
        for action in actions:
            kind = type(action)
            if kind is SendToClient:
                self._send_to_client(action.five_tuple, action.data)  # type: ignore[union-attr]
            elif kind is SendToPeer:
                handle = action.handle  # type: ignore[union-attr]
                if handle.send(action.data, action.peer, action.dont_fragment):  # type: ignore[union-attr]
                    counter = handle.relayed_to_peer
                    counter.packets += 1
                    counter.octets += len(action.data)  # type: ignore[union-attr]
            elif kind is OpenRelay:
                self._open_relay(action)  # type: ignore[arg-type]
            elif kind is CloseRelay:
                closing = action.handle  # type: ignore[union-attr]
                closing.close()
                if closing.stream_key != closed_key:
                    closed_key = closing.stream_key
                    closed_to_peer = closed_to_client = 0
                closed_to_peer += closing.bytes_to_peer
                closed_to_client += closing.bytes_to_client
            elif kind is ReleasePort:
                self.release_reserved(action.family, action.port)  # type: ignore[union-attr]
            elif kind in _TCP_RELAY_ACTIONS:
                self.tcp.perform(action)  # type: ignore[arg-type]
            elif kind is SendFrom:
                listener = self.udp_listeners.get(action.source)  # type: ignore[union-attr]
                if listener is not None:
                    listener.send(action.data, action.destination)  # type: ignore[union-attr]
            else:
                if isinstance(action, AllocationDeleted) and closed_key is not None and (
                    closed_key == action.five_tuple
                ):
                    # The core's deletion comes right after the CloseRelay of each of that allocation's relays.
                    action = dataclasses.replace(
                        action, bytes_to_peer=closed_to_peer, bytes_to_client=closed_to_client
                    )
                    closed_key = None
                if kind is AllocationCreated or kind is AllocationDeleted:
                    _log_lifecycle(action)  # type: ignore[arg-type]
                if self.on_event is not None:
                    try:
                        self.on_event(action)
                    except Exception:
                        log.exception("event hook failed")

    def _send_to_client(self, five_tuple: FiveTuple, data: bytes) -> None:
        if five_tuple.transport is Transport.UDP:
            listener = self.udp_listeners.get(five_tuple.server)
            if listener is not None:
                listener.send(data, five_tuple.client)
        else:
            stream = self.streams.get(five_tuple)
            if stream is not None:
                stream.write(data)

    def _open_relay(self, first: OpenRelay) -> None:
        # A bind that fails with EADDRINUSE comes back as another OpenRelay on the next candidate port: carried out
        # in this loop, not by recursion, since a busy host may make many of them in a row.
        queue = [first]
        while queue:
            for action in self._bind_relay(queue.pop()):
                if type(action) is OpenRelay:
                    queue.append(action)
                else:
                    self.dispatch([action])

    def relay_failure(self, error: OSError, host: str, port: int, now: float) -> RelayFailure:
        if error.errno == errno.EADDRINUSE:
            return RelayFailure.PORT_IN_USE
        if error.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.ENETUNREACH):
            return RelayFailure.FAMILY_UNAVAILABLE
        if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self._relay_refusals.note(now)  # out of descriptors: one line per interval, not per request
        else:
            log.warning("relay bind on %s:%d failed: %s", host, port, error)
        return RelayFailure.OTHER

    def _bind_relay(self, action: OpenRelay) -> list[Action]:
        five_tuple = action.five_tuple
        family = socket.AF_INET6 if action.family == 2 else socket.AF_INET
        now = self.now()
        core = self.core
        held = self.reserved.pop((action.family, action.port), None) if action.reserved else None
        if held is None and self.sockets_exhausted():
            self._relay_refusals.note(now)  # 508 rather than EMFILE later on an accept or a log file
            return core.relay_failed(action.token, RelayFailure.OTHER, now)
        if action.tcp:
            return self.tcp.open_listener(action, now)  # RFC 6062 (never reserved)
        host = action.host
        try:
            if held is not None and not self.share_reserved_ports:
                sock, held = held, None  # the socket bound when the token was issued becomes the relay
            else:
                if held is not None:
                    host = held.getsockname()[0]
                elif is_wildcard(host):
                    same_family = (":" in five_tuple.client[0]) == (family == socket.AF_INET6)
                    # RFC 6156 cross-family relay with no RelayAddress: the address routed towards a documentation
                    # prefix (a UDP connect sends nothing); no route means the family is unavailable (440).
                    towards = five_tuple.client if same_family else ROUTE_PROBE[family]
                    host = local_address_towards(family, towards)
                # Workers: a redeemed port may be held by the worker that issued the token; joining its
                # SO_REUSEPORT group takes the port over (see _hold_reserved).
                sock = bind_udp(host, action.port, reuse_port=action.reserved and self.share_reserved_ports)
        except OSError as error:
            return core.relay_failed(action.token, self.relay_failure(error, host, action.port, now), now)
        finally:
            if held is not None:
                held.close()  # our own placeholder: the relay socket has joined its group (or could not)
        self.size_buffers(sock, "relay")
        if action.reserve_next:
            # RFC 8656 §7.2 EVEN-PORT R: the odd port is reserved by binding it now, on the relay's own address.
            try:
                self.reserved[(action.family, action.port + 1)] = self._hold_reserved(sock.getsockname()[0],
                                                                                      action.port + 1)
            except OSError as error:
                sock.close()
                failure = self.relay_failure(error, host, action.port + 1, now)
                return core.relay_failed(action.token, failure, now, port=action.port + 1)
        if action.dont_fragment and not set_dont_fragment(sock, family):
            sock.close()
            if action.reserve_next:
                self.release_reserved(action.family, action.port + 1)
            return core.relay_failed(action.token, RelayFailure.DONT_FRAGMENT, now)
        relay = RelayEndpoint(self, sock, five_tuple)
        relay.dont_fragment = action.dont_fragment
        self.relays.add(relay)
        actions = core.relay_opened(action.token, relay, plain_address(sock.getsockname()), now)
        if relay.peer_limit is not None:
            allocation = core.allocation_for_handle(relay)
            if allocation is not None and allocation.extra_handle is relay:
                # MaxBandwidthPerAllocation caps the allocation, not each relay: the IPv6 relay of a dual one
                # draws on the IPv4 relay's buckets (docs/security.md "Bandwidth cap").
                first = allocation.relay_handle
                relay.peer_limit, relay.client_limit = first.peer_limit, first.client_limit
        return actions

    def _hold_reserved(self, host: str, port: int) -> socket.socket:
        """Bind a reserved port and keep it, unread, until it is redeemed or released.

        With workers the token may be redeemed by another process, which cannot be handed this socket. The
        placeholder is then bound with SO_REUSEPORT and connected to itself: the kernel prefers unconnected
        members of the group for datagrams from anyone else, so the redeeming worker's relay socket (bound with
        SO_REUSEPORT too) receives everything from the moment it binds, and this one nothing.
        """
        sock = bind_udp(host, port, reuse_port=self.share_reserved_ports)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RESERVED_BUFFER)  # nothing is read from it
            if self.share_reserved_ports:
                sock.connect(sock.getsockname())
        except OSError:
            sock.close()
            raise
        return sock

    def release_reserved(self, family: int, port: int) -> None:
        sock = self.reserved.pop((family, port), None)
        if sock is not None:
            sock.close()

    def close_reserved(self) -> None:
        for sock in self.reserved.values():
            sock.close()
        self.reserved.clear()


