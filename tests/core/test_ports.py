"""PortPool: random choice in the relay range, even ports and pairs, busy ports, exhaustion."""

from __future__ import annotations

import itertools
import random

import pytest

from pyturn.core.ports import BUSY_RETRY_AFTER, PortPool

NOW = 100.0


def pool(low: int = 50000, high: int = 50009, seed: int = 1) -> PortPool:
    return PortPool(low, high, random.Random(seed))


def drain(ports: PortPool, **kwargs: bool) -> list[int]:
    taken = []
    while (port := ports.take(NOW, **kwargs)) is not None:
        taken.append(port)
    return taken


def test_ports_take_returns_ports_in_range() -> None:
    ports = pool()
    taken = drain(ports)
    assert sorted(taken) == list(range(50000, 50010))
    assert ports.in_use == 10


def test_ports_take_returns_none_when_exhausted() -> None:
    ports = pool(50000, 50000)
    assert ports.take(NOW) == 50000
    assert ports.take(NOW) is None
    assert ports.take(NOW, even=True) is None


def test_ports_single_port_range() -> None:
    ports = pool(50001, 50001)
    assert ports.take(NOW, even=True) is None
    assert ports.take(NOW) == 50001


@pytest.mark.parametrize(
    ("low", "high"), [pytest.param(50000, 50009, id="even-low"), pytest.param(50001, 50010, id="odd-low")]
)
def test_ports_even_ports(low: int, high: int) -> None:
    ports = pool(low, high)
    taken = drain(ports, even=True)
    assert sorted(taken) == [p for p in range(low, high + 1) if p % 2 == 0]
    assert ports.in_use == len(taken)
    # odd ports are still free
    assert all(p % 2 == 1 for p in drain(ports))


def test_ports_even_skips_taken_even_ports() -> None:
    ports = pool(50000, 50003)
    ports.claim(50000)
    assert ports.take(NOW, even=True) == 50002
    assert ports.take(NOW, even=True) is None


def test_ports_with_next_takes_a_pair() -> None:
    ports = pool()
    port = ports.take(NOW, with_next=True)
    assert port is not None
    assert port % 2 == 0
    assert ports.in_use == 2
    assert port + 1 not in drain(ports)


def test_ports_with_next_needs_the_odd_neighbour_free() -> None:
    ports = pool(50000, 50003)
    ports.claim(50001)
    assert ports.take(NOW, with_next=True) == 50002
    assert ports.take(NOW, with_next=True) is None
    assert ports.in_use == 3


def test_ports_with_next_needs_the_neighbour_inside_the_range() -> None:
    ports = pool(50000, 50002)
    assert ports.take(NOW, with_next=True) == 50000
    assert ports.take(NOW, with_next=True) is None  # 50003 is outside the range


def test_ports_release_makes_a_port_available_again() -> None:
    ports = pool(50000, 50000)
    assert ports.take(NOW) == 50000
    ports.release(50000)
    assert ports.in_use == 0
    assert ports.take(NOW) == 50000


def test_ports_release_of_unknown_port_is_harmless() -> None:
    ports = pool()
    ports.release(12345)
    assert ports.in_use == 0


def test_ports_claim_marks_a_specific_port() -> None:
    ports = pool(50000, 50001)
    ports.claim(50001)
    assert ports.take(NOW) == 50000
    assert ports.take(NOW) is None


def test_ports_busy_port_is_skipped_until_retry_time() -> None:
    ports = pool(50000, 50001)
    first = ports.take(NOW)
    assert first is not None
    ports.mark_busy(first, NOW)
    assert ports.in_use == 0
    other = ports.take(NOW)
    assert other is not None and other != first
    assert ports.take(NOW + BUSY_RETRY_AFTER - 0.001) is None
    assert ports.take(NOW + BUSY_RETRY_AFTER) == first


def test_ports_busy_port_blocks_a_pair() -> None:
    ports = pool(50000, 50001)
    ports.mark_busy(50001, NOW)
    assert ports.take(NOW, with_next=True) is None
    assert ports.take(NOW + BUSY_RETRY_AFTER, with_next=True) == 50000


def test_ports_choice_is_random_not_sequential() -> None:
    ports = pool(49152, 65535, seed=7)
    taken = [port for _ in range(20) if (port := ports.take(NOW)) is not None]
    assert len(set(taken)) == 20
    assert taken != sorted(taken)
    steps = {b - a for a, b in itertools.pairwise(taken)}
    assert len(steps) > 1


def test_ports_choice_depends_on_the_rng() -> None:
    choices = {pool(49152, 65535, seed=seed).take(NOW) for seed in range(10)}
    assert len(choices) > 5
    assert pool(49152, 65535, seed=1).take(NOW) == pool(49152, 65535, seed=1).take(NOW)  # one seed, one choice


def test_ports_empty_range() -> None:
    ports = pool(50001, 50000)
    assert ports.take(NOW) is None
    assert ports.take(NOW, even=True) is None


def test_ports_take_after_continues_the_walk_so_retries_visit_each_port_once() -> None:
    pool = PortPool(50000, 50009, random.Random(3))
    seen: list[int] = []
    port = pool.take(0.0)
    while port is not None:
        seen.append(port)
        pool.mark_busy(port, 0.0)  # every bind fails: another process holds the whole range
        port = pool.take(0.0, after=port)
    assert sorted(seen) == list(range(50000, 50010))  # each candidate once, then None


def test_ports_take_after_keeps_pairs_even() -> None:
    pool = PortPool(50000, 50009, random.Random(3))
    assert pool.take(0.0, with_next=True, after=50002) == 50004
    assert pool.take(0.0, with_next=True, after=50008) == 50000  # wraps around
