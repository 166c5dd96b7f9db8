"""UDP listeners: the client side of the relay hot path (docs/architecture.md "Relay hot path").

A plain non-blocking socket drained from ``loop.add_reader``, up to DRAIN_BATCH datagrams a wake-up, which avoids
asyncio's per-datagram transport overhead. A ChannelData datagram on a bound channel costs a header unpack, a dict
lookup and one ``sendto`` from the relay socket; everything else goes to the core.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from pyturn.core.allocation import FiveTuple, Transport
from pyturn.net.sockets import DRAIN_BATCH, MAX_DATAGRAM, plain_address
from pyturn.wire.framing import CHANNEL_HEADER
from pyturn.wire.message import Address

if TYPE_CHECKING:
    from pyturn.net.runtime import Runtime


class UdpListener:
    """A UDP socket clients talk to (TurnPort, and the RFC 5780 alternate sockets)."""

    __slots__ = ("address", "core", "relayed", "routes", "runtime", "sock", "v6")

    def __init__(self, runtime: Runtime, sock: socket.socket) -> None:
        self.runtime = runtime
        self.core = runtime.core
        self.sock = sock
        self.address: Address = plain_address(sock.getsockname())
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
        unpack_header = CHANNEL_HEADER.unpack_from
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
                channel, length = unpack_header(data)
                route = routes.get((source, channel))
                if route is not None:
                    end = 4 + length
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


