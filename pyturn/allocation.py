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
CHANNEL_MIN = 0x4000  # RFC 5766 §11 range, as reTurn accepts it (RFC 8656 narrows the top to 0x4FFF)
CHANNEL_MAX = 0x7FFF
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
    # Answers to this 5-tuple's recent requests: transaction id -> (keep until, bytes), oldest first.
    responses: dict[bytes, tuple[float, bytes]] = field(default_factory=dict)

    @property
    def family(self) -> int:
        return 2 if ":" in self.relayed[0] else 1

    def has_permission(self, ip: str, now: float) -> bool:
        expires = self.permissions.get(ip)
        return expires is not None and expires > now


class DeadlineKind(Enum):
    ALLOCATION = 1
    PERMISSION = 2
    CHANNEL = 3
    RESERVATION = 4
    RESPONSES = 5  # an allocation's retransmission cache, emptied when its answers lapse


DeadlineCheck = Callable[[float, DeadlineKind, Any, Any], bool]
"""(deadline, kind, owner, item) -> whether that deadline is still the object's current one."""
COMPACT_SLACK = 1024  # stale entries tolerated beyond twice the live ones before the heap is rebuilt


class DeadlineHeap:
    """One heap of (deadline, seq, kind, owner, item) for every expiring object.

    Refreshing an object pushes a new entry instead of moving the old one (lazy deletion), so a refresh costs one
    push. Stale entries (an object refreshed, or deleted early) are skipped when they come due, and the heap is
    rebuilt without them whenever it grows past twice its live size, so deleted allocations are not kept alive
    until their old deadlines (memory stays flat under churn; amortised O(1) per push).
    """

    __slots__ = ("_compact_at", "_heap", "_is_current", "_seq")

    def __init__(self, is_current: DeadlineCheck) -> None:
        self._heap: list[tuple[float, int, DeadlineKind, Any, Any]] = []
        self._seq = 0
        self._is_current = is_current
        self._compact_at = COMPACT_SLACK

    def push(self, deadline: float, kind: DeadlineKind, owner: Any, item: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, kind, owner, item))
        if len(self._heap) > self._compact_at:
            self._compact()

    def compact_if_larger_than(self, size: int) -> None:
        """Rebuild now if the heap holds more than `size` entries (mostly stale, e.g. after a burst of deletes)."""
        if len(self._heap) > size:
            self._compact()

    def _compact(self) -> None:
        is_current = self._is_current
        self._heap = [entry for entry in self._heap if is_current(entry[0], entry[2], entry[3], entry[4])]
        heapq.heapify(self._heap)
        self._compact_at = 2 * len(self._heap) + COMPACT_SLACK

    def pop_due(self, now: float) -> Iterator[tuple[DeadlineKind, Any, Any]]:
        """The entries due at `now` that are still current, in deadline order. A generator: each entry is checked
        when it is reached, so expiring one object first makes its duplicates (same deadline) stale."""
        heap = self._heap
        is_current = self._is_current
        while heap and heap[0][0] <= now:
            deadline, _, kind, owner, item = heapq.heappop(heap)
            if is_current(deadline, kind, owner, item):
                yield kind, owner, item

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
