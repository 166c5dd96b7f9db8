"""Relay sockets: the peer side of the relay hot path (docs/architecture.md "Relay hot path").

A peer datagram on a bound channel costs a dict lookup, a 4-byte header and one ``sendto`` from the client's UDP
listener (or one stream write); everything else goes to the core.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.ratelimit import TokenBucket
from pyturn.net.sockets import DRAIN_BATCH, MAX_DATAGRAM
from pyturn.wire.framing import CHANNEL_HEADER, CHANNEL_PADDING
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
        # dropped, never queued (docs/security.md "Bandwidth cap").
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
        pack_header = CHANNEL_HEADER.pack
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
                header = pack_header(channel, len(data))
                if self.udp_sock is not None:
                    try:
                        self.udp_sock.sendto(header + data, self.client)  # measured: cheaper than sendmsg
                    except OSError:
                        pass
                    continue
                stream = self.runtime.streams.get(self.stream_key)
                if stream is not None:
                    stream.write(header + data + CHANNEL_PADDING[len(data) % 4] if self.pad else header + data)
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


