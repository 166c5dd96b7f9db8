"""asyncio adapters around the sans-IO core: UDP listeners, TCP/TLS streams and UDP relay sockets.

The relay hot path lives here. UDP sockets are plain non-blocking sockets drained from ``loop.add_reader``
(one wake-up reads up to DRAIN_BATCH datagrams), which avoids asyncio's per-datagram transport overhead.
A ChannelData datagram costs a dict lookup and one ``sendto``; a peer datagram on a bound channel costs a
dict lookup, a 4-byte header and one ``sendto``. Everything else goes through the core.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

from pyturn.allocation import FiveTuple, Transport
from pyturn.core import (
    Action,
    CloseRelay,
    OpenRelay,
    RelayFailure,
    ReleasePort,
    SendFrom,
    SendToClient,
    SendToPeer,
    TurnServerCore,
)
from pyturn.errors import StunDecodeError
from pyturn.ratelimit import TokenBucket
from pyturn.stats import RelayCounter
from pyturn.stun import Address, StreamFramer

log = logging.getLogger(__name__)

DRAIN_BATCH = 64
MAX_DATAGRAM = 65535
# The largest TCP/TLS frame accepted: ChannelData carrying the largest IPv4 UDP payload (65507), padded. Anything
# bigger could never be relayed, so the stream is taken to be garbage and closed.
MAX_STREAM_FRAME = 4 + 65508
SOCKET_BUFFER = 1 << 20
RESERVED_BUFFER = 4096  # receive buffer of a held reserved port (the kernel's minimum applies)
LISTEN_BACKLOG = 1024
MAX_STREAM_BACKLOG = 1 << 20  # bytes queued towards one TCP/TLS client before relayed data is dropped
_CHANNEL_HEADER = struct.Struct("!HH")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
# Linux values; the socket module only names some of them on some builds.
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_DO = getattr(socket, "IPV6_PMTUDISC_DO", 2)
_IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
_ROUTE_PROBE = {socket.AF_INET: ("192.0.2.1", 9), socket.AF_INET6: ("2001:db8::1", 9)}
# The fd budget (anchors.md §5.5 case 40): relay sockets and TCP/TLS connections together stay FD_RESERVE below the
# soft RLIMIT_NOFILE. The reserve covers listeners, the event loop, log files and the interpreter, plus one burst of
# connections accepted before the refused ones are closed (asyncio accepts up to 100 per wake-up), so the process
# does not reach EMFILE through its own sockets. MaxTcpConnections = 0 takes half the budget: each TCP/TLS client
# also holds a relay socket.
FD_RESERVE = 128
MIN_SOCKET_BUDGET = 32
FDS_PER_STREAM = 2
REFUSAL_LOG_INTERVAL = 10.0  # seconds between log lines about refused TCP/TLS connections

EventSink = Callable[[Any], None]


def _plain(address: Any) -> Address:
    """(host, port) from what the socket layer gives (IPv6 adds flowinfo and scope id)."""
    return (address[0], address[1])


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def local_address_towards(family: int, destination: Address) -> str:
    """The local IP the kernel would use to reach `destination` (a connect() on UDP sends nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((destination[0], destination[1] or 9))
        host: str = probe.getsockname()[0]
        return host


def _set_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass


def set_dont_fragment(sock: socket.socket, family: int) -> bool:
    """RFC 8656 §7.2 DONT-FRAGMENT: set DF on everything the relay sends (path-MTU discovery 'do').

    False when the kernel refuses: the core then answers 420, never an allocation that silently fragments."""
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_DONTFRAG, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
    except OSError as error:
        log.debug("could not set DF on a relay socket: %s", error)
        return False
    return True


def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # No SO_REUSEADDR: on Linux it lets two UDP sockets that both set it share a port, so a second server
        # (or another process's relay) would bind "successfully" and steal datagrams; UDP has no TIME_WAIT.
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _set_buffers(sock)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def socket_budget(soft_fd_limit: int) -> int:
    """Relay sockets plus TCP/TLS connections allowed: max(32, soft RLIMIT_NOFILE - 128); 0 when unlimited."""
    if soft_fd_limit < 0 or soft_fd_limit == resource.RLIM_INFINITY:
        return 0
    return max(MIN_SOCKET_BUDGET, soft_fd_limit - FD_RESERVE)


def derived_stream_limit(soft_fd_limit: int) -> int:
    """MaxTcpConnections = 0: max(32, soft RLIMIT_NOFILE - 128) // 2 connections; 0 (no cap) when unlimited."""
    return socket_budget(soft_fd_limit) // FDS_PER_STREAM


def stream_limit(max_tcp_connections: int) -> int:
    """The TCP/TLS connection cap in force: the configured one, or the one the fd limit allows (0 = none)."""
    if max_tcp_connections:
        return max_tcp_connections
    return derived_stream_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class _ThrottledWarning:
    """Counts refusals and logs them at most once per REFUSAL_LOG_INTERVAL, never once per event."""

    __slots__ = ("level", "logged_at", "template", "total", "unlogged")

    def __init__(self, template: str, level: int = logging.WARNING) -> None:
        self.template = template  # formatted with the number of events since the last line, then `detail`
        self.level = level
        self.total = 0
        self.unlogged = 0
        self.logged_at: float | None = None

    def note(self, now: float, detail: str = "", *, exc_info: bool = False) -> None:
        """Count one event; log (with the current exception's traceback when exc_info) if the interval passed."""
        self.total += 1
        self.unlogged += 1
        if self.logged_at is None or now - self.logged_at >= REFUSAL_LOG_INTERVAL:
            log.log(self.level, self.template + "%s", self.unlogged, detail, exc_info=exc_info)
            self.unlogged = 0
            self.logged_at = now


class Runtime:
    """Carries out the core's actions; owns the socket registries shared by the adapters."""

    def __init__(self, core: TurnServerCore, loop: asyncio.AbstractEventLoop, on_event: EventSink | None) -> None:
        self.core = core
        self.loop = loop
        self.on_event = on_event
        self.udp_listeners: dict[Address, UdpListener] = {}
        self.streams: dict[FiveTuple, StreamConnection] = {}
        self.relays: set[RelayEndpoint] = set()
        # Relayed datagrams and bytes by client transport, added once per wake-up by the relay loops.
        self.relayed_to_peer = {kind: RelayCounter() for kind in Transport}
        self.relayed_to_client = {kind: RelayCounter() for kind in Transport}
        # Reserved odd ports (EVEN-PORT R), bound and held until redeemed or released: (family, port) -> socket.
        self.reserved: dict[tuple[int, int], socket.socket] = {}
        # Workers: another process may redeem this one's tokens (see _hold_reserved).
        self.share_reserved_ports = False
        # MaxTcpConnections / MaxTcpConnectionsPerSource and the fd budget (anchors.md §5.5 case 40).
        self.socket_budget = socket_budget(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.max_streams = stream_limit(core.config.max_tcp_connections)
        self.max_streams_per_source = core.config.max_tcp_connections_per_source
        self.streams_per_source: dict[str, int] = {}
        self._stream_refusals = _ThrottledWarning(
            f"refused %d TCP/TLS connection(s): limit of {self.max_streams} in total, "
            f"{self.max_streams_per_source} per source or {self.socket_budget} sockets reached (0 = none)"
        )
        self._relay_refusals = _ThrottledWarning(
            f"refused %d relay socket(s) (508): out of file descriptors or the budget of {self.socket_budget} "
            "sockets reached"
        )
        # pyturn.shaping.RelayImpairments once a test rig impairs or pauses the relay (docs/testing.md).
        self.impairments: Any = None
        # One input-triggered bug must not become a traceback per packet (a log flood): one line per interval.
        self.internal_errors = _ThrottledWarning(
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

    def _sockets_exhausted(self) -> bool:
        return bool(self.socket_budget) and (
            len(self.streams) + len(self.relays) + len(self.reserved) >= self.socket_budget
        )

    def now(self) -> float:
        return self.loop.time()

    def admit_stream(self, client_ip: str) -> bool:
        """Count a new TCP/TLS connection in, or refuse it when a connection cap is reached."""
        count = self.streams_per_source.get(client_ip, 0)
        if (
            (self.max_streams and len(self.streams) >= self.max_streams)
            or (self.max_streams_per_source and count >= self.max_streams_per_source)
            or self._sockets_exhausted()
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
        for action in actions:
            kind = type(action)
            if kind is SendToClient:
                self._send_to_client(action.five_tuple, action.data)  # type: ignore[union-attr]
            elif kind is SendToPeer:
                handle = action.handle  # type: ignore[union-attr]
                if handle.send(action.data, action.peer):  # type: ignore[union-attr]
                    counter = handle.relayed_to_peer
                    counter.packets += 1
                    counter.octets += len(action.data)  # type: ignore[union-attr]
            elif kind is OpenRelay:
                self._open_relay(action)  # type: ignore[arg-type]
            elif kind is CloseRelay:
                action.handle.close()  # type: ignore[union-attr]
            elif kind is ReleasePort:
                self.release_reserved(action.family, action.port)  # type: ignore[union-attr]
            elif kind is SendFrom:
                listener = self.udp_listeners.get(action.source)  # type: ignore[union-attr]
                if listener is not None:
                    listener.send(action.data, action.destination)  # type: ignore[union-attr]
            elif self.on_event is not None:
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

    def _relay_failure(self, error: OSError, host: str, port: int, now: float) -> RelayFailure:
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
        if held is None and self._sockets_exhausted():
            self._relay_refusals.note(now)  # 508 rather than EMFILE later on an accept or a log file
            return core.relay_failed(action.token, RelayFailure.OTHER, now)
        host = action.host
        try:
            if held is not None and not self.share_reserved_ports:
                sock, held = held, None  # the socket bound when the token was issued becomes the relay
                _set_buffers(sock)
            else:
                if held is not None:
                    host = held.getsockname()[0]
                elif _wildcard(host):
                    same_family = (":" in five_tuple.client[0]) == (family == socket.AF_INET6)
                    # RFC 6156 cross-family relay with no RelayAddress: the address routed towards a documentation
                    # prefix (a UDP connect sends nothing); no route means the family is unavailable (440).
                    towards = five_tuple.client if same_family else _ROUTE_PROBE[family]
                    host = local_address_towards(family, towards)
                # Workers: a redeemed port may be held by the worker that issued the token; joining its
                # SO_REUSEPORT group takes the port over (see _hold_reserved).
                sock = bind_udp(host, action.port, reuse_port=action.reserved and self.share_reserved_ports)
        except OSError as error:
            return core.relay_failed(action.token, self._relay_failure(error, host, action.port, now), now)
        finally:
            if held is not None:
                held.close()  # our own placeholder: the relay socket has joined its group (or could not)
        if action.reserve_next:
            # RFC 8656 §7.2 EVEN-PORT R: the odd port is reserved by binding it now, on the relay's own address.
            try:
                self.reserved[(action.family, action.port + 1)] = self._hold_reserved(sock.getsockname()[0],
                                                                                      action.port + 1)
            except OSError as error:
                sock.close()
                failure = self._relay_failure(error, host, action.port + 1, now)
                return core.relay_failed(action.token, failure, now, port=action.port + 1)
        if action.dont_fragment and not set_dont_fragment(sock, family):
            sock.close()
            if action.reserve_next:
                self.release_reserved(action.family, action.port + 1)
            return core.relay_failed(action.token, RelayFailure.DONT_FRAGMENT, now)
        relay = RelayEndpoint(self, sock, five_tuple)
        self.relays.add(relay)
        return core.relay_opened(action.token, relay, _plain(sock.getsockname()), now)

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


class UdpListener:
    """A UDP socket clients talk to (TurnPort, and the RFC 5780 alternate sockets)."""

    __slots__ = ("address", "core", "relayed", "routes", "runtime", "sock", "v6")

    def __init__(self, runtime: Runtime, sock: socket.socket) -> None:
        self.runtime = runtime
        self.core = runtime.core
        self.sock = sock
        self.address: Address = _plain(sock.getsockname())
        self.v6 = sock.family == socket.AF_INET6
        self.routes = runtime.core.routes(Transport.UDP, self.address)
        self.relayed = runtime.relayed_to_peer[Transport.UDP]
        runtime.udp_listeners[self.address] = self
        runtime.loop.add_reader(sock.fileno(), self._readable)

    def send(self, data: bytes, destination: Address) -> None:
        try:
            self.sock.sendto(data, destination)
        except OSError:
            pass  # UDP: a full buffer or an unreachable client loses the datagram, as the network would

    def _readable(self) -> None:
        sock = self.sock
        routes = self.routes
        packets = octets = 0  # relayed by the fast path in this wake-up, added to self.relayed once
        for _ in range(DRAIN_BATCH):
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if self.v6:
                source = (source[0], source[1])
            # Fast path: ChannelData on a bound channel (RFC 8656 §12.4); the first two bits are 01.
            if len(data) >= 4 and data[0] & 0xC0 == 0x40:
                route = routes.get((source, (data[0] << 8) | data[1]))
                if route is not None:
                    end = 4 + ((data[2] << 8) | data[3])
                    if end <= len(data) and route[0].send(data[4:end], route[1]):
                        packets += 1
                        octets += end - 4
                    continue
            try:
                actions = self.core.handle_client(
                    data, FiveTuple(Transport.UDP, source, self.address), self.runtime.now()
                )
            except Exception:
                self.runtime.internal_errors.note(
                    self.runtime.now(), f"a datagram from {source[0]}:{source[1]}", exc_info=True
                )
                continue
            self.runtime.dispatch(actions)
        if packets:
            relayed = self.relayed
            relayed.packets += packets
            relayed.octets += octets

    def close(self) -> None:
        self.runtime.udp_listeners.pop(self.address, None)
        try:
            self.runtime.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()


class RelayEndpoint:
    """One allocation's relay socket. Its identity is the handle the core keys the allocation by."""

    __slots__ = (
        "allocation",
        "bytes_to_client",
        "bytes_to_peer",
        "client",
        "client_limit",
        "closed",
        "fd",
        "pad",
        "peer_limit",
        "relayed_to_client",
        "relayed_to_peer",
        "runtime",
        "sock",
        "stream_key",
        "udp_sock",
        "v6",
    )

    def __init__(self, runtime: Runtime, sock: socket.socket, five_tuple: FiveTuple) -> None:
        self.runtime = runtime
        self.sock = sock
        self.fd = sock.fileno()
        self.v6 = sock.family == socket.AF_INET6
        self.client = five_tuple.client
        self.closed = False
        self.bytes_to_peer = 0
        self.bytes_to_client = 0
        self.allocation: Any = None
        listener = runtime.udp_listeners.get(five_tuple.server) if five_tuple.transport is Transport.UDP else None
        self.udp_sock = listener.sock if listener is not None else None
        self.stream_key = five_tuple
        self.relayed_to_peer = runtime.relayed_to_peer[five_tuple.transport]
        self.relayed_to_client = runtime.relayed_to_client[five_tuple.transport]
        self.pad = five_tuple.transport is not Transport.UDP and runtime.core.config.tcp_channel_data_padding
        # MaxBandwidthPerAllocation: one token bucket per direction holding one second's worth; excess is
        # dropped, never queued (anchors.md §5.5 case 38).
        rate = runtime.core.config.max_bandwidth_per_allocation
        now = runtime.loop.time()
        self.peer_limit = TokenBucket(rate, rate, now) if rate else None
        self.client_limit = TokenBucket(rate, rate, now) if rate else None
        runtime.loop.add_reader(self.fd, self._readable)

    def send(self, data: bytes, peer: Address) -> bool:
        """Send to a peer; False when MaxBandwidthPerAllocation or the socket dropped the datagram."""
        limit = self.peer_limit
        if limit is not None and not limit.allow(len(data), self.runtime.loop.time()):
            return False
        try:
            self.sock.sendto(data, peer)
        except OSError:
            return False
        self.bytes_to_peer += len(data)
        return True

    def _readable(self) -> None:
        if self.allocation is None:
            self.allocation = self.runtime.core.allocation_for_handle(self)
            if self.allocation is None:
                self._drain_and_drop()
                return
        sock = self.sock
        channels = self.allocation.channel_for_peer
        packets = octets = 0  # relayed towards the client in this wake-up, added to the counters once
        for _ in range(DRAIN_BATCH):
            try:
                data, peer = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if self.v6:
                peer = (peer[0], peer[1])
            channel = channels.get(peer)
            if channel is not None:
                limit = self.client_limit
                if limit is not None and not limit.allow(len(data), self.runtime.loop.time()):
                    continue
                packets += 1
                octets += len(data)
                header = _CHANNEL_HEADER.pack(channel, len(data))
                if self.udp_sock is not None:
                    try:
                        self.udp_sock.sendto(header + data, self.client)  # measured: cheaper than sendmsg
                    except OSError:
                        pass
                    continue
                stream = self.runtime.streams.get(self.stream_key)
                if stream is not None:
                    stream.write(header + data + _PAD[len(data) % 4] if self.pad else header + data)
                continue
            runtime = self.runtime
            actions = runtime.core.handle_peer(self, data, peer, runtime.now())
            limit = self.client_limit
            if actions and (limit is None or limit.allow(len(data), runtime.now())):
                packets += 1
                octets += len(data)
                runtime.dispatch(actions)
        if packets:
            self.bytes_to_client += octets
            relayed = self.relayed_to_client
            relayed.packets += packets
            relayed.octets += octets

    def _drain_and_drop(self) -> None:
        try:
            while True:
                self.sock.recvfrom(MAX_DATAGRAM)
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.allocation = None  # the byte counters outlive the socket (hooks read them); the allocation need not
        self.runtime.relays.discard(self)
        try:
            self.runtime.loop.remove_reader(self.fd)
        except (ValueError, OSError):
            pass
        self.sock.close()


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check here.
        self.transport = transport  # type: ignore[assignment]
        client = _plain(transport.get_extra_info("peername"))
        server = _plain(transport.get_extra_info("sockname"))
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
        if self.five_tuple is not None and self.five_tuple not in self.runtime.core.allocations:
            log.debug("closing %s connection from %s: no allocation in time", self.kind.value, self.five_tuple.client)
            self.close()

    def data_received(self, data: bytes) -> None:
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
        for frame in frames:
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


def has_ipv6() -> bool:
    """Whether this host can bind IPv6 loopback at all (a kernel without IPv6, or with it disabled, cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_stream(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening, non-blocking TCP socket (IPv6 only on IPv6 addresses; SO_REUSEADDR for TIME_WAIT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
