"""Impairment and pausing of the relayed media on a running server, with the event loop's timers.

Nothing here runs while no impairment is in force: the relay fast paths (pyturn.net.udp, .relay, .stream) keep
their code and cost. Impairing a relay endpoint swaps what it sends with, and restoring it swaps the original back:

* towards the peer, every datagram goes through ``RelayEndpoint.send`` (ChannelData fast paths, Send
  indications): the endpoint's class becomes ``ImpairedRelayEndpoint``, whose ``send`` asks the shaper;
* towards the client, the fast path writes ChannelData to ``endpoint.udp_sock``: that becomes a stand-in whose
  ``sendto`` asks the shaper (over TCP/TLS it pads and writes to the stream); Data indications, which the core
  builds, are caught in ``Runtime._send_to_client`` while any client path is impaired.

The decisions are pyturn.core.impairment's (pure, seeded); a PathShaper holds the delayed packets in one FIFO queue
per direction and releases them from one loop timer. docs/testing.md describes the API.
"""

from __future__ import annotations

import asyncio
import types
from collections import deque
from collections.abc import Callable
from typing import Any

from pyturn.core.allocation import Allocation, FiveTuple
from pyturn.core.events import AllocationCreated, AllocationDeleted, Event
from pyturn.core.impairment import ActiveImpairment, ImpairedPath, Impairment, directions_of
from pyturn.net.relay import RelayEndpoint
from pyturn.net.runtime import Runtime
from pyturn.net.sockets import DRAIN_BATCH, MAX_DATAGRAM
from pyturn.wire.framing import CHANNEL_PADDING
from pyturn.wire.message import Address

Deliver = Callable[[bytes, Any], object]
TIMER_SLACK = 0.0005  # seconds: a timer may fire this much early (the loop's clock resolution); still due
_DATA_INDICATION = b"\x00\x17"  # RFC 8656 §11.4: Data indication message type


class PathShaper:
    """One impaired direction: admits packets through its ImpairedPath, delivers them now or from its queue."""

    __slots__ = ("_loop", "_path", "_queue", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, path: ImpairedPath) -> None:
        self._loop = loop
        self._path = path
        self._queue: deque[tuple[float, Deliver, bytes, Any]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, deliver: Deliver, data: bytes, address: Any) -> bool:
        """False when the packet is dropped; otherwise it is delivered, now or at its departure time."""
        now = self._loop.time()
        departures = self._path.admit(len(data), now)
        if not departures:
            return False
        for departure in departures:
            if departure <= now:
                deliver(data, address)
            else:
                self._queue.append((departure, deliver, data, address))
                if self._timer is None:
                    self._timer = self._loop.call_at(departure, self._release)
        return True

    def _release(self) -> None:
        self._timer = None
        due = self._loop.time() + TIMER_SLACK
        queue = self._queue
        while queue and queue[0][0] <= due:
            _, deliver, data, address = queue.popleft()
            deliver(data, address)
        if queue:
            self._timer = self._loop.call_at(queue[0][0], self._release)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


class BlackHole:
    """A paused relay (Server.pause_relay): every packet is dropped and counted."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0

    def submit(self, deliver: Deliver, data: bytes, address: Any) -> bool:
        self.dropped += 1
        return False


Shaper = PathShaper | BlackHole


def _drain_into(sock: Any, hole: BlackHole) -> None:
    for _ in range(DRAIN_BATCH):
        try:
            sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue
        hole.dropped += 1


class ImpairedRelayEndpoint(RelayEndpoint):
    """A RelayEndpoint whose datagrams towards the peer go through a shaper (same layout: no new slots)."""

    __slots__ = ()

    def send(self, data: bytes, peer: Address, dont_fragment: bool = False) -> bool:
        impairments: RelayImpairments = self.runtime.impairments
        return impairments.send_to_peer(self, data, peer)


class _ShapedSocket:
    """Stands in for an endpoint's ``udp_sock`` while its client direction is impaired."""

    __slots__ = ("deliver", "shaper")

    def __init__(self, shaper: Shaper, deliver: Deliver) -> None:
        self.shaper = shaper
        self.deliver = deliver

    def sendto(self, data: bytes, address: Address) -> None:
        self.shaper.submit(self.deliver, data, address)


def _datagram_sender(sock: Any) -> Deliver:
    def deliver(data: bytes, address: Any) -> None:
        try:
            sock.sendto(data, address)
        except OSError:
            pass  # as the unimpaired path: a full buffer or a closed socket loses the datagram

    return deliver


def _stream_sender(runtime: Runtime, endpoint: RelayEndpoint) -> Deliver:
    key, pad = endpoint.stream_key, endpoint.pad

    def deliver(data: bytes, address: Any) -> None:
        stream = runtime.streams.get(key)
        if stream is not None:
            # data is ChannelData with its 4-byte header; RFC 8656 §12.5 pads it to 4 bytes over a stream
            stream.write(data + CHANNEL_PADDING[(len(data) - 4) % 4] if pad else data)

    return deliver


class RelayImpairments:
    """The impairments in force on one server (per username, or for everyone) and the relay pause."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.rules: dict[str | None, tuple[ActiveImpairment, dict[str, PathShaper]]] = {}
        self.paused: BlackHole | None = None
        self.paused_dropped = 0  # datagrams a pause has swallowed, over every pause so far
        self._to_peer: dict[RelayEndpoint, tuple[Shaper, Deliver]] = {}
        self._to_client: dict[RelayEndpoint, Any] = {}  # endpoint -> its real udp_sock (None over TCP/TLS)
        self._indications: dict[FiveTuple, tuple[Shaper, Deliver]] = {}
        self._endpoints: dict[FiveTuple, list[RelayEndpoint]] = {}  # the endpoints changed above, per allocation
        self._paused_readers: set[RelayEndpoint] = set()
        self._send_to_client = runtime._send_to_client
        runtime.impairments = self

    # ------------------------------------------------------------------------------------------ control
    def impair(self, impairment: Impairment | None, direction: str = "both",
               username: str | None = None) -> ActiveImpairment | None:
        if impairment is None:
            for key in list(self.rules) if username is None else [username]:
                removed = self.rules.pop(key, None)
                if removed is not None:
                    for shaper in removed[1].values():
                        shaper.close()
            self._apply_all()
            return None
        directions_of(direction)  # ValueError before anything changes
        active = ActiveImpairment(impairment, direction, username)
        shapers = {name: PathShaper(self.runtime.loop, path) for name, path in active.paths.items()}
        previous = self.rules.get(username)
        self.rules[username] = (active, shapers)
        if previous is not None:
            for shaper in previous[1].values():
                shaper.close()
        self._apply_all()
        return active

    def remove(self, active: ActiveImpairment) -> None:
        """Take `active` out of force if it still is (the end of a ``with server.impaired(...)``)."""
        rule = self.rules.get(active.username)
        if rule is not None and rule[0] is active:
            self.impair(None, username=active.username)

    def pause(self) -> None:
        if self.paused is None:
            self.paused = BlackHole()
            self._apply_all()

    def resume(self) -> None:
        if self.paused is not None:
            self.paused_dropped += self.paused.dropped
            self.paused = None
            self._apply_all()

    def close(self) -> None:
        """The server is closing: drop what waits in the queues and every impairment."""
        for _, shapers in self.rules.values():
            for shaper in shapers.values():
                shaper.close()
        self.rules.clear()
        self.paused = None

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.paused is not None

    def on_event(self, event: Event) -> None:
        """Impair the relays of allocations created while impairments are in force; forget deleted ones."""
        if type(event) is AllocationCreated:
            allocation = self.runtime.core.allocations.get(event.five_tuple)
            if allocation is not None:
                self._apply_allocation(allocation)
        elif type(event) is AllocationDeleted:
            endpoints = self._endpoints.get(event.five_tuple)  # the event log passes the event on without it
            if endpoints is not None:
                self._apply(endpoints, None, event.five_tuple, forget=True)
        self._sync_override()

    # ------------------------------------------------------------------------------------------ packets
    def send_to_peer(self, endpoint: RelayEndpoint, data: bytes, peer: Address) -> bool:
        entry = self._to_peer.get(endpoint)
        if entry is None:  # cannot happen while the class is swapped; never lose data over it
            return RelayEndpoint.send(endpoint, data, peer)
        return entry[0].submit(entry[1], data, peer)

    def send_to_client(self, five_tuple: FiveTuple, data: bytes) -> None:
        """Runtime._send_to_client while a client path is impaired: media (Data indications) is shaped,
        STUN answers are not."""
        entry = self._indications.get(five_tuple)
        if entry is not None and (data[:2] == _DATA_INDICATION or data[0] & 0xC0 == 0x40):
            entry[0].submit(entry[1], data, five_tuple)
        else:
            self._send_to_client(five_tuple, data)

    # ------------------------------------------------------------------------------------------ wiring
    def _pause_reading(self, endpoint: RelayEndpoint, hole: BlackHole | None) -> None:
        """While paused, the relay socket's reader is swapped for one that drains and counts: its datagrams
        reach neither the fast path nor the core, and are not counted as relayed to the client."""
        if endpoint.closed:
            self._paused_readers.discard(endpoint)
            return
        loop = self.runtime.loop
        if hole is not None and endpoint not in self._paused_readers:
            self._paused_readers.add(endpoint)
            loop.remove_reader(endpoint.fd)
            loop.add_reader(endpoint.fd, _drain_into, endpoint.sock, hole)
        elif hole is None and endpoint in self._paused_readers:
            self._paused_readers.discard(endpoint)
            loop.remove_reader(endpoint.fd)
            loop.add_reader(endpoint.fd, endpoint._readable)

    def _shapers_for(self, username: str | None) -> tuple[Shaper | None, Shaper | None]:
        if self.paused is not None:
            return self.paused, self.paused
        rule = self.rules.get(username) if username is not None else None
        if rule is None:
            rule = self.rules.get(None)
        if rule is None:
            return None, None
        return rule[1].get("to_peer"), rule[1].get("to_client")

    def _apply_all(self) -> None:
        for allocation in self.runtime.core.allocations.values():
            self._apply_allocation(allocation)
        self._sync_override()

    def _apply_allocation(self, allocation: Allocation) -> None:
        """Every relay of `allocation` (both of a dual one, RFC 8656 §7.2) under the impairment of its user; a relay
        a Refresh has closed since (one family dropped) is restored and forgotten."""
        endpoints = [handle for handle, _ in allocation.relays() if isinstance(handle, RelayEndpoint)]
        five_tuple = allocation.five_tuple
        gone = [endpoint for endpoint in self._endpoints.get(five_tuple, ()) if endpoint not in endpoints]
        if gone:
            self._apply(gone, None, five_tuple, forget=True)
        if endpoints:
            self._apply(endpoints, allocation.username, five_tuple)

    def _sync_override(self) -> None:
        """Data indications pass through send_to_client only while some client path is impaired."""
        if self._indications:
            self.runtime._send_to_client = self.send_to_client  # type: ignore[method-assign]
        else:
            self.runtime.__dict__.pop("_send_to_client", None)

    def _apply(self, endpoints: list[RelayEndpoint], username: str | None, five_tuple: FiveTuple,
               *, forget: bool = False) -> None:
        """Impair (or restore, `forget`) the relay sockets `endpoints` of the allocation of `five_tuple`."""
        to_peer, to_client = (None, None) if forget else self._shapers_for(username)
        hole = to_client if isinstance(to_client, BlackHole) else None
        if hole is not None:
            to_client = None  # nothing read from the relay socket reaches the client path
        for endpoint in endpoints:
            self._pause_reading(endpoint, hole)
            self._apply_endpoint(endpoint, to_peer, to_client)
        if to_client is not None:
            unshaped = self._send_to_client
            self._indications[five_tuple] = (to_client, lambda data, key: unshaped(key, data))
        else:
            self._indications.pop(five_tuple, None)
        changed = [
            endpoint for endpoint in endpoints
            if endpoint in self._to_peer or endpoint in self._to_client or endpoint in self._paused_readers
        ]
        others = [endpoint for endpoint in self._endpoints.get(five_tuple, ()) if endpoint not in endpoints]
        if changed or others:
            self._endpoints[five_tuple] = [*others, *changed]
        else:
            self._endpoints.pop(five_tuple, None)

    def _apply_endpoint(self, endpoint: RelayEndpoint, to_peer: Shaper | None, to_client: Shaper | None) -> None:
        if to_peer is not None:
            self._to_peer[endpoint] = (to_peer, types.MethodType(RelayEndpoint.send, endpoint))
            endpoint.__class__ = ImpairedRelayEndpoint
            endpoint.direct_sendto = None  # the client listeners' fast path goes through send() then
        elif self._to_peer.pop(endpoint, None) is not None:
            endpoint.__class__ = RelayEndpoint
            endpoint.send_directly()
        if to_client is not None:
            original = self._to_client.setdefault(endpoint, endpoint.udp_sock)
            client_deliver = (
                _datagram_sender(original) if original is not None else _stream_sender(self.runtime, endpoint)
            )
            endpoint.udp_sock = _ShapedSocket(to_client, client_deliver)  # type: ignore[assignment]
        elif endpoint in self._to_client:
            endpoint.udp_sock = self._to_client.pop(endpoint)
