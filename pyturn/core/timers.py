"""The one deadline heap the core expires allocations, permissions, channels, reservations and cached answers from.

Pure: times are absolute deadlines in the caller's clock (`now: float`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any


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
