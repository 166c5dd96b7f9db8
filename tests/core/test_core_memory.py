"""Memory stays flat under allocation churn (docs/security.md case 37): deleted allocations must not be kept
alive by the deadline heap until their old deadlines (600 s) pass."""

from __future__ import annotations

import gc

from turnclient import Harness, make_config

from pyturn.core.allocation import Allocation
from pyturn.core.timers import COMPACT_SLACK

CYCLES = 3000


def test_core_memory_churn_keeps_deadline_heap_and_allocations_bounded() -> None:
    harness = Harness(config=make_config(unauthenticated_rate_limit=0))  # every client here has one IP
    for n in range(CYCLES):
        client = harness.client(client=("203.0.113.10", 10000 + n))
        client.allocate()
        client.channel_bind(0x4000)
        client.refresh(lifetime=0)
        harness.advance(0.01)
    core = harness.core
    assert not core.allocations
    # Every cycle pushed three deadlines (allocation, channel, permission); none of them is current any more.
    assert len(core.state.deadlines) <= COMPACT_SLACK + 3
    gc.collect()
    alive = sum(isinstance(thing, Allocation) for thing in gc.get_objects())
    assert alive <= COMPACT_SLACK  # only what the last, not yet compacted, stretch of the heap still holds


def test_core_memory_refreshes_do_not_grow_the_heap_without_bound() -> None:
    harness = Harness()
    client = harness.client()
    client.allocate()
    client.channel_bind(0x4000)
    for _ in range(CYCLES):
        harness.advance(1.0)
        client.refresh()
        client.channel_bind(0x4000)
    assert len(harness.core.state.deadlines) <= 2 * 3 + COMPACT_SLACK + 3
    assert harness.core.allocations  # still alive: the refreshes worked


def test_core_memory_idle_allocation_drops_its_cached_answers() -> None:
    harness = Harness()
    client = harness.client()
    client.allocate()
    client.channel_bind(0x4000)
    assert len(client.allocation.responses) == 2
    harness.advance(39.9)  # RFC 8489 §6.3.1: kept 40 s
    harness.tick()
    assert len(client.allocation.responses) == 2  # a retransmission may still come
    harness.advance(0.2)
    harness.tick()
    assert client.allocation.responses == {}


def test_core_memory_many_permissions_keep_a_few_heap_entries_per_allocation() -> None:
    """ICE installs a permission per remote candidate: 20 permissions and 2 channels per allocation, refreshed
    every 240 s, must not grow the deadline heap (the entries are per allocation, not per permission), and the
    unrefreshed permissions still expire at 300 s."""
    harness = Harness(config=make_config(unauthenticated_rate_limit=0))
    peers = [(f"198.51.100.{number}", 5000) for number in range(1, 21)]
    clients = [harness.client(client=("203.0.113.10", 10000 + n)) for n in range(50)]
    for client in clients:
        client.allocate()
        client.create_permission(*peers)
        client.channel_bind(0x4000, peers[0])
        client.channel_bind(0x4001, peers[1])
    for _ in range(4):
        harness.advance(240.0)
        for client in clients:
            client.refresh()
            client.create_permission(*peers[:10])  # the other ten lapse
            client.channel_bind(0x4000, peers[0])
            client.channel_bind(0x4001, peers[1])
        harness.tick()
        # at most: the allocation, its permissions and channels together, its response cache
        assert len(harness.core.state.deadlines) <= 3 * len(clients)
    for client in clients:
        assert sorted(client.allocation.permissions) == sorted(ip for ip, _ in peers[:10])
        assert sorted(client.allocation.channels) == [0x4000, 0x4001]
