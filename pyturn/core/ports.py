"""The relay port pool: random choice inside AllocationPortRangeMin..Max, even ports and reserved pairs.

Pure: the caller supplies randomness and the time. Ports another process holds are learnt from failed binds
and skipped for a while (RFC 8656 §7.2: 508 only when the range is really exhausted).
"""

from __future__ import annotations

import random

BUSY_RETRY_AFTER = 60.0  # seconds before a port another process held is tried again


class PortPool:
    __slots__ = ("_busy_until", "_high", "_low", "_rng", "_used")

    def __init__(self, low: int, high: int, rng: random.Random) -> None:
        self._low = low
        self._high = high
        self._rng = rng
        self._used: set[int] = set()
        self._busy_until: dict[int, float] = {}

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def size(self) -> int:
        return max(0, self._high - self._low + 1)

    def _free(self, port: int, now: float) -> bool:
        if port in self._used or not self._low <= port <= self._high:
            return False
        until = self._busy_until.get(port)
        if until is None:
            return True
        if until <= now:
            del self._busy_until[port]
            return True
        return False

    def take(
        self, now: float, *, even: bool = False, with_next: bool = False, after: int | None = None
    ) -> int | None:
        """Mark and return a free port (an even one when asked; with_next also takes port+1), None if none.

        Starts at a random point and walks the range once, so the choice is unpredictable and exhaustion is
        detected exactly. `after` (a retry once a bind failed there) continues the walk from that port instead,
        so a run of retries visits each candidate once and costs one lap of the range in all.
        """
        first = self._low + (self._low % 2) if even or with_next else self._low
        step = 2 if even or with_next else 1
        count = (self._high - first) // step + 1
        if count <= 0:
            return None
        if after is None or not first <= after <= self._high:
            begin = self._rng.randrange(count)
        else:
            begin = ((after - first) // step + 1) % count
        for index in range(count):
            port = first + step * ((begin + index) % count)
            if not self._free(port, now):
                continue
            if with_next and not self._free(port + 1, now):
                continue
            self._used.add(port)
            if with_next:
                self._used.add(port + 1)
            return port
        return None

    def claim(self, port: int) -> None:
        """Mark a specific port as used (a reserved port handed to its RESERVATION-TOKEN holder)."""
        self._used.add(port)

    def release(self, port: int) -> None:
        self._used.discard(port)

    def mark_busy(self, port: int, now: float) -> None:
        """Another process holds this port: release it and skip it for BUSY_RETRY_AFTER seconds."""
        self._used.discard(port)
        self._busy_until[port] = now + BUSY_RETRY_AFTER
