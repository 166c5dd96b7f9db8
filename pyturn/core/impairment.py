"""Network impairment of the relayed media for test rigs: what happens to each packet, decided from a seed. Pure.

An ``Impairment`` describes one direction of a path (loss, delay, jitter, duplication, reordering, a rate limit).
``ImpairedPath`` applies it: given a packet's size and the current time it answers when the packet (and a copy
of it) leaves, or that it is lost. It reads no clock and owns no timer; the asyncio side (pyturn.net.shaping) holds
the packets until then. docs/testing.md describes the semantics and has recipes.

Each packet consumes exactly four draws from the path's ``random.Random``, in this order, whether or not the
corresponding impairment is enabled: loss, duplicate, reorder, jitter. A run with a seed is therefore
reproducible packet by packet, and a test can replay the decisions with its own ``random.Random``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, fields

DEFAULT_LIMIT = 1000  # packets waiting per direction, as netem's default queue
DIRECTIONS = ("to_peer", "to_client")
DIRECTION_CHOICES = ("both", *DIRECTIONS)


@dataclass(frozen=True, slots=True)
class Impairment:
    """What a relayed path does to packets, in each impaired direction.

    ``loss``, ``duplicate``, ``reorder``: probabilities (0..1). ``delay``: seconds added to every packet;
    ``jitter``: up to that many seconds more or less, drawn uniformly (the delay never goes below 0; jitter
    keeps the packets in order). ``reorder``: a packet skips the delay and overtakes the packets waiting, so it
    needs a delay. ``rate``: bytes per second the path carries; packets wait for it in a queue. ``limit``:
    packets that may wait in one direction; more are dropped and counted. ``seed``: makes a run reproducible.
    """

    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    rate: float | None = None
    seed: int | str | None = None
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"Impairment {name} is a probability between 0 and 1, got {value!r}")
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
                raise ValueError(f"Impairment {name} is a number of seconds >= 0, got {value!r}")
        if self.rate is not None and not (
            isinstance(self.rate, int | float) and math.isfinite(self.rate) and self.rate > 0
        ):
            raise ValueError(f"Impairment rate is bytes per second > 0 (or None), got {self.rate!r}")
        if self.reorder and not self.delay:
            raise ValueError("Impairment reorder needs a delay: a packet can only overtake packets that wait")
        if not (isinstance(self.limit, int) and self.limit >= 1):
            raise ValueError(f"Impairment limit is a number of packets >= 1, got {self.limit!r}")


@dataclass(slots=True)
class ImpairmentStats:
    """What an impairment did to one direction's packets (or, added up, to several directions').

    ``packets``: offered to the impairment. ``dropped``: lost at random (``loss``). ``delayed``: held for a later
    departure. ``duplicated``: sent twice. ``reordered``: sent ahead of the packets waiting. ``rate_dropped``:
    dropped because ``limit`` packets were waiting for the rate-limited path. ``overflowed``: dropped because
    ``limit`` packets were waiting out their delay (no rate limit).
    """

    packets: int = 0
    dropped: int = 0
    delayed: int = 0
    duplicated: int = 0
    reordered: int = 0
    rate_dropped: int = 0
    overflowed: int = 0

    def __add__(self, other: ImpairmentStats) -> ImpairmentStats:
        return ImpairmentStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class ImpairedPath:
    """The decisions for one direction: admit() says when a packet leaves, () when it does not.

    Departures of packets that are not reordered never go backwards (FIFO), so a holder can keep them in one
    queue. The path remembers the departures still ahead to bound that queue at ``impairment.limit``.
    """

    __slots__ = ("_last_departure", "_link_free", "_random", "_waiting", "impairment", "stats")

    def __init__(self, impairment: Impairment, rng: random.Random, stats: ImpairmentStats | None = None) -> None:
        self.impairment = impairment
        self.stats = stats if stats is not None else ImpairmentStats()
        self._random = rng.random
        self._waiting: deque[float] = deque()  # departures after `now`, in order
        self._last_departure = -math.inf
        self._link_free = -math.inf  # when the rate-limited path has sent what it holds

    def admit(self, size: int, now: float) -> tuple[float, ...]:
        """The departure time of a packet of `size` bytes arriving at `now`, twice when it is duplicated."""
        impairment = self.impairment
        stats = self.stats
        stats.packets += 1
        draw = self._random
        lost, duplicate, reorder, jitter = draw(), draw(), draw(), draw()
        if lost < impairment.loss:
            stats.dropped += 1
            return ()
        copies = 2 if duplicate < impairment.duplicate else 1
        if reorder < impairment.reorder:
            stats.reordered += 1
            stats.duplicated += copies - 1
            return (now,) * copies
        waiting = self._waiting
        while waiting and waiting[0] <= now:
            waiting.popleft()
        if len(waiting) >= impairment.limit:
            if impairment.rate is not None:
                stats.rate_dropped += 1
            else:
                stats.overflowed += 1
            return ()
        departure = now
        if impairment.rate is not None:
            self._link_free = max(now, self._link_free) + size / impairment.rate
            departure = self._link_free
        if impairment.delay or impairment.jitter:
            departure += max(0.0, impairment.delay + (2.0 * jitter - 1.0) * impairment.jitter)
        departure = max(departure, self._last_departure)
        self._last_departure = departure
        stats.duplicated += copies - 1
        if departure > now:
            stats.delayed += 1
            waiting.extend((departure,) * copies)
        return (departure,) * copies


def path_random(seed: int | str | None, direction: str) -> random.Random:
    """The random source of one direction: derived from the seed (reproducible), or from the OS without one."""
    if seed is None:
        return random.Random()
    return random.Random(f"pyturn-impairment:{seed}:{direction}")


def directions_of(direction: str) -> tuple[str, ...]:
    if direction not in DIRECTION_CHOICES:
        raise ValueError(f"direction must be one of {DIRECTION_CHOICES}, got {direction!r}")
    return DIRECTIONS if direction == "both" else (direction,)


class ActiveImpairment:
    """An impairment in force on a server: its paths (one per impaired direction) and their statistics.

    The counters are live (the server's loop updates them); ``to_peer`` and ``to_client`` are None for a
    direction that is not impaired, and the attributes named as ImpairmentStats' add both directions up.
    """

    __slots__ = ("direction", "impairment", "paths", "username")

    def __init__(self, impairment: Impairment, direction: str = "both", username: str | None = None) -> None:
        self.impairment = impairment
        self.direction = direction
        self.username = username
        self.paths = {
            name: ImpairedPath(impairment, path_random(impairment.seed, name)) for name in directions_of(direction)
        }

    @property
    def to_peer(self) -> ImpairmentStats | None:
        path = self.paths.get("to_peer")
        return path.stats if path is not None else None

    @property
    def to_client(self) -> ImpairmentStats | None:
        path = self.paths.get("to_client")
        return path.stats if path is not None else None

    @property
    def stats(self) -> ImpairmentStats:
        """Both directions added up (a copy)."""
        total = ImpairmentStats()
        for path in self.paths.values():
            total = total + path.stats
        return total

    @property
    def packets(self) -> int:
        return sum(path.stats.packets for path in self.paths.values())

    @property
    def dropped(self) -> int:
        return sum(path.stats.dropped for path in self.paths.values())

    @property
    def delayed(self) -> int:
        return sum(path.stats.delayed for path in self.paths.values())

    @property
    def duplicated(self) -> int:
        return sum(path.stats.duplicated for path in self.paths.values())

    @property
    def reordered(self) -> int:
        return sum(path.stats.reordered for path in self.paths.values())

    @property
    def rate_dropped(self) -> int:
        return sum(path.stats.rate_dropped for path in self.paths.values())

    @property
    def overflowed(self) -> int:
        return sum(path.stats.overflowed for path in self.paths.values())

    def __repr__(self) -> str:
        return f"<ActiveImpairment {self.impairment} {self.direction} user={self.username!r} {self.stats}>"
