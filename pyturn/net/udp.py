"""UDP listeners: the client side of the relay hot path (docs/architecture.md "Relay hot path").

A plain non-blocking socket drained from ``loop.add_reader``, up to DRAIN_BATCH datagrams a wake-up, which avoids
asyncio's per-datagram transport overhead. A ChannelData datagram on a bound channel costs a header unpack, a dict
lookup and one ``sendto`` from the relay socket; so does a Send indication in the fixed layout to a peer the core
already relayed one to (pyturn.core.routes), plus the layout check. Everything else goes to the core.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from pyturn.core.allocation import FiveTuple, Transport
from pyturn.net.sockets import DRAIN_BATCH, MAX_DATAGRAM, plain_address
from pyturn.wire.framing import CHANNEL_HEADER
from pyturn.wire.indications import SEND_INDICATION_PREFIX, parse_send
from pyturn.wire.message import Address

if TYPE_CHECKING:
    from pyturn.net.runtime import Runtime


class UdpListener:
    """A UDP socket clients talk to (TurnPort, and the RFC 5780 alternate sockets)."""

    __slots__ = ("address", "core", "relayed", "routes", "runtime", "sends", "sock", "v6")

    def __init__(self, runtime: Runtime, sock: socket.socket) -> None:
        self.runtime = runtime
        self.core = runtime.core
        self.sock = sock
        runtime.size_buffers(sock, "listener")  # before any privilege drop: root may exceed net.core.rmem_max
        self.address: Address = plain_address(sock.getsockname())
        self.v6 = sock.family == socket.AF_INET6
        self.routes = runtime.core.routes(Transport.UDP, self.address)
        self.sends = runtime.core.route_table.sends_for_listener(Transport.UDP, self.address)
        self.relayed = runtime.relayed_to_peer[Transport.UDP]
        runtime.udp_listeners[self.address] = self
        runtime.loop.add_reader(sock.fileno(), self._readable)

    def send(self, data: bytes, destination: Address) -> None:
        try:
            self.sock.sendto(data, destination)
        except OSError:
            pass  # UDP: a full buffer or an unreachable client loses the datagram, as the network would

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        routes = self.routes
        sends = self.sends
        unpack_header = CHANNEL_HEADER.unpack_from
        v6 = self.v6
        send_type_high, send_type_low = SEND_INDICATION_PREFIX  # compared by index: no slice per datagram
        packets = octets = 0  # relayed by the fast path in this wake-up, added to self.relayed once
        for _ in range(DRAIN_BATCH):
            try:
                data, source = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if v6:
                source = (source[0], source[1])
            route = None
            size = len(data)
            # Fast path: ChannelData on a bound channel (RFC 8656 §12.4); the first two bits are 01.
            if size >= 4 and data[0] & 0xC0 == 0x40:
                channel, length = unpack_header(data)
                route = routes.get((source, channel))
                if route is not None:
                    start = 4
                    end = 4 + length
                    if end > size:
                        continue
            # Fast path: a Send indication (RFC 8656 §11.2) to a peer the core has relayed one to.
            elif size >= 2 and data[1] == send_type_low and data[0] == send_type_high:
                layout = parse_send(data)
                if layout is not None:
                    route = sends.get((source, layout[0]))
                    if route is not None and layout[3] and not route[0].dont_fragment:
                        route = None  # DF for this datagram only: the core decides (RFC 8656 §11.3)
                    start = layout[1]
                    end = layout[2]
            if route is not None:
                relay, peer = route
                sendto = relay.direct_sendto
                if sendto is not None:
                    try:
                        sendto(data[start:end], peer)
                    except OSError:
                        continue
                    relay.bytes_to_peer += end - start
                elif not relay.send(data[start:end], peer):
                    continue
                packets += 1
                octets += end - start
                continue
            self._slow_path(data, source)
        if packets:
            relayed = self.relayed
            relayed.packets += packets
            relayed.octets += octets

    def _slow_path(self, data: bytes, source: Address) -> None:
        runtime = self.runtime
        try:
            actions = self.core.handle_client(data, FiveTuple(Transport.UDP, source, self.address), runtime.now())
        except Exception:
            runtime.internal_errors.note(runtime.now(), f"a datagram from {source[0]}:{source[1]}", exc_info=True)
            return
        runtime.dispatch(actions)

    def close(self) -> None:
        self.runtime.udp_listeners.pop(self.address, None)
        try:
            self.runtime.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()


