"""Relay sockets: the peer side of the relay hot path (docs/architecture.md "Relay hot path").

A peer datagram on a bound channel costs a dict lookup, a 4-byte header and one ``sendto`` from the client's UDP
listener (or one stream write); one from a peer the core already relayed a Data indication for costs a dict lookup
and a header packed from the peer's template (pyturn.core.routes). Everything else goes to the core.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.ratelimit import TokenBucket
from pyturn.net.sockets import DRAIN_BATCH, MAX_DATAGRAM, send_dont_fragment
from pyturn.wire.framing import CHANNEL_HEADER, CHANNEL_PADDING
from pyturn.wire.indications import (
    DATA_INDICATION,
    DATA_INDICATION_HEAD,
    INDICATION_PADDING,
    MAGIC_COOKIE,
)
from pyturn.wire.message import Address

if TYPE_CHECKING:
    from pyturn.net.runtime import Runtime


class RelayEndpoint:
    """One allocation's relay socket. Its identity is the handle the core keys the allocation by."""

    __slots__ = (
        "allocation",
        "bytes_to_client",
        "bytes_to_peer",
        "client",
        "client_limit",
        "closed",
        "direct_sendto",
        "dont_fragment",
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
        self.dont_fragment = False  # DF set on everything this socket sends (an Allocate with DONT-FRAGMENT)
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
        # dropped, never queued (docs/security.md "Bandwidth cap").
        rate = runtime.core.config.max_bandwidth_per_allocation
        now = runtime.loop.time()
        self.peer_limit = TokenBucket(rate, rate, now) if rate else None
        self.client_limit = TokenBucket(rate, rate, now) if rate else None
        self.direct_sendto: Any = None
        self.send_directly()
        runtime.loop.add_reader(self.fd, self._readable)

    def send_directly(self) -> None:
        """Let the client listeners' fast path call the socket's sendto itself (no Python frame per datagram)
        while nothing stands between: no MaxBandwidthPerAllocation bucket, no impairment (pyturn.net.shaping)."""
        self.direct_sendto = self.sock.sendto if self.peer_limit is None else None

    def send(self, data: bytes, peer: Address, dont_fragment: bool = False) -> bool:
        """Send to a peer; False when MaxBandwidthPerAllocation or the socket dropped the datagram.

        dont_fragment: set DF on this datagram only, dropping it when DF cannot be set (RFC 8656 §11.3)."""
        limit = self.peer_limit
        if limit is not None and not limit.allow(len(data), self.runtime.loop.time()):
            return False
        if dont_fragment and not self.dont_fragment:
            if not send_dont_fragment(self.sock, data, peer):
                return False
        else:
            try:
                self.sock.sendto(data, peer)
            except OSError:
                return False
        self.bytes_to_peer += len(data)
        return True

    def _readable(self) -> None:
        allocation = self.allocation
        if allocation is None:
            allocation = self.allocation = self.runtime.core.allocation_for_handle(self)
            if allocation is None:
                self._drain_and_drop()
                return
        recvfrom = self.sock.recvfrom
        channels = allocation.channel_for_peer
        templates = allocation.peer_attributes
        pack_header = CHANNEL_HEADER.pack
        udp_sock = self.udp_sock
        client = self.client
        limit = self.client_limit
        v6 = self.v6
        core = self.runtime.core
        tid_prefix = core.data_tid_prefix  # both fixed for the core's life (docs/architecture.md "Adapter contract")
        tids = core.data_tids
        packets = octets = 0  # relayed towards the client in this wake-up, added to the counters once
        for _ in range(DRAIN_BATCH):
            try:
                data, peer = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if v6:
                peer = (peer[0], peer[1])
            size = len(data)
            channel = channels.get(peer)
            if channel is not None:
                message = pack_header(channel, size) + data
                if self.pad:
                    message += CHANNEL_PADDING[size % 4]
            else:
                template = templates.get(peer)
                if template is None:
                    self._slow_path(data, peer)
                    continue
                # RFC 8656 §11.4 Data indication: the peer's XOR-PEER-ADDRESS from the template, a fresh transaction id
                # (RFC 8489 §6). Length: the 12-byte attribute, the DATA header, the value padded to 4 (RFC 8489 §14).
                message = DATA_INDICATION_HEAD.pack(
                    DATA_INDICATION, 16 + size + (-size & 3), MAGIC_COOKIE, tid_prefix, next(tids), template,
                    0x0013, size,
                ) + data + INDICATION_PADDING[size % 4]
            if limit is not None and not limit.allow(size, self.runtime.loop.time()):
                continue
            packets += 1
            octets += size
            if udp_sock is not None:
                try:
                    udp_sock.sendto(message, client)  # measured: cheaper than sendmsg
                except OSError:
                    pass
                continue
            stream = self.runtime.streams.get(self.stream_key)
            if stream is not None:
                stream.write(message)
        if packets:
            self.bytes_to_client += octets
            relayed = self.relayed_to_client
            relayed.packets += packets
            relayed.octets += octets

    def _slow_path(self, data: bytes, peer: Address) -> None:
        """A peer datagram the route tables do not cover: the core decides (permission, policy, Data indication)."""
        runtime = self.runtime
        actions = runtime.core.handle_peer(self, data, peer, runtime.now())
        limit = self.client_limit
        if actions and (limit is None or limit.allow(len(data), runtime.now())):
            self.bytes_to_client += len(data)
            relayed = self.relayed_to_client
            relayed.packets += 1
            relayed.octets += len(data)
            runtime.dispatch(actions)

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


