"""Allocation state: 5-tuples, allocations, permissions, channel bindings and one deadline heap (RFC 8656 §2-§3).

Pure bookkeeping: no sockets, no clock. Times are absolute deadlines in the caller's clock (`now: float`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, NamedTuple

from pyturn.stun import Address

PERMISSION_LIFETIME = 300.0  # RFC 8656 §9: permissions last 300 s (reTurn: fixed)
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12: channel bindings last 10 minutes (reTurn: fixed)
# RFC 8656 §12: channel numbers 0x4000-0x4FFF; 0x5000-0xFFFF are reserved (RFC 7983 demultiplexing uses the
# first byte), so ChannelBind outside gets 400 (§11.2) and ChannelData outside is never relayed.
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
RESERVATION_LIFETIME = 30.0  # RFC 8656 §7.2: a reserved port is held for about 30 s


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class FiveTuple(NamedTuple):
    """Client transport, client address, server address (RFC 8656 §2: the 5-tuple names an allocation)."""

    transport: Transport
    client: Address
    server: Address


@dataclass(slots=True, eq=False)
class ChannelBinding:
    channel: int
    peer: Address
    expires: float


@dataclass(slots=True, eq=False)
class Allocation:
    """One allocation. Hashes by identity; the route dicts are shared with the transport adapter's fast path."""

    five_tuple: FiveTuple
    username: str
    realm: str
    key: bytes
    relay_handle: Any
    relayed: Address
    expires: float
    dont_fragment: bool = False
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, ChannelBinding] = field(default_factory=dict)
    # Fast path views kept in step with the two tables above: peer -> channel number for the live bindings
    # whose peer still has a permission (used by the adapter for peer -> client ChannelData).
    channel_for_peer: dict[Address, int] = field(default_factory=dict)
    reserved_port: int | None = None
    # The deadlines of this allocation's entries in the deadline heap: its own (a Refresh may move `expires`
    # either way) and the one for its permissions and channels together (inf while it has neither).
    scheduled: float = 0.0
    peers_scheduled: float = float("inf")
    # Answers to this 5-tuple's recent requests: transaction id -> (keep until, bytes), oldest first.
    responses: dict[bytes, tuple[float, bytes]] = field(default_factory=dict)

    @property
    def family(self) -> int:
        return 2 if ":" in self.relayed[0] else 1

    def has_permission(self, ip: str, now: float) -> bool:
        expires = self.permissions.get(ip)
        return expires is not None and expires > now

    def next_peer_expiry(self) -> float:
        """The earliest deadline among the permissions and channel bindings (inf when there are none)."""
        first = min(self.permissions.values(), default=float("inf"))
        for binding in self.channels.values():
            if binding.expires < first:
                first = binding.expires
        return first


class DeadlineKind(Enum):
    ALLOCATION = 1
    PEERS = 2  # the earliest expiry among an allocation's permissions and channel bindings
    RESERVATION = 4
    RESPONSES = 5  # an allocation's retransmission cache, emptied when its answers lapse


DeadlineCheck = Callable[[float, DeadlineKind, Any, Any], bool]
"""(deadline, kind, owner, item) -> whether that entry is still its object's one scheduled entry."""
COMPACT_SLACK = 1024  # stale entries tolerated beyond the live ones before the heap is rebuilt


class DeadlineHeap:
    """One heap of (deadline, seq, kind, owner, item) for every expiring object, at most one entry per object.

    Why a heap that counts its stale entries, and not a timer wheel: the old design pushed a new entry on every
    refresh and rebuilt the whole heap from tick() whenever it held more than a guessed number of entries per
    allocation, so 20 permissions per allocation (ICE) made every tick an O(heap) stall. Now a refresh only moves
    the object's own deadline forward; its one entry fires at the old time and the owner pushes it again at the
    new one (one push per lifetime, not per refresh), so a tick costs O(log n) per entry that comes due and
    nothing per entry that does not. The permissions and channels of one allocation share one entry (their
    earliest deadline), so the heap holds a few entries per allocation however many peers it has.

    Entries still go stale when their object is deleted (an allocation's other entries, a redeemed token) or a
    Refresh shortens a lifetime. The owner reports each with note_stale(), and the heap is rebuilt when the stale
    count exceeds the live one (amortised O(1) per stale entry), so deleted allocations are not kept alive until
    their old deadlines. A hashed wheel would need the same bookkeeping for deletions and buys nothing at 1 s ticks.
    """

    __slots__ = ("_heap", "_is_current", "_seq", "_stale")

    def __init__(self, is_current: DeadlineCheck) -> None:
        self._heap: list[tuple[float, int, DeadlineKind, Any, Any]] = []
        self._seq = 0
        self._stale = 0
        self._is_current = is_current

    def push(self, deadline: float, kind: DeadlineKind, owner: Any, item: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, kind, owner, item))

    def note_stale(self, count: int = 1) -> None:
        """`count` entries no longer describe a live object; rebuild once they outnumber the live ones."""
        self._stale += count
        if self._stale > len(self._heap) - self._stale + COMPACT_SLACK:
            self._compact()

    @property
    def stale(self) -> int:
        return self._stale

    def _compact(self) -> None:
        is_current = self._is_current
        # In place: a pop_due generator that is running keeps its reference to this same list.
        self._heap[:] = [entry for entry in self._heap if is_current(entry[0], entry[2], entry[3], entry[4])]
        heapq.heapify(self._heap)
        self._stale = 0

    def pop_due(self, now: float) -> Iterator[tuple[float, DeadlineKind, Any, Any]]:
        """The entries due at `now` that are still current, in deadline order. A generator: each entry is checked
        when it is reached, so expiring one object first makes its duplicates (same deadline) stale."""
        heap = self._heap
        is_current = self._is_current
        while heap and heap[0][0] <= now:
            deadline, _, kind, owner, item = heapq.heappop(heap)
            if is_current(deadline, kind, owner, item):
                yield deadline, kind, owner, item
            elif self._stale:
                self._stale -= 1

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
