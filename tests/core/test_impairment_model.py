"""The pure impairment model (pyturn.impairment) and the core's test-rig faults (fail_next, expiry, nonces).

The model is replayed here with its documented random source: four draws per packet (loss, duplicate, reorder,
jitter), so the statistics a seed produces are computed independently of the code under test.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from turnclient import Harness

from pyturn.core.actions import SendToClient
from pyturn.core.events import AllocationDeleted
from pyturn.core.faults import FailureInjector, method_of
from pyturn.core.impairment import ActiveImpairment, ImpairedPath, Impairment, ImpairmentStats, path_random
from pyturn.wire.codec import decode_message
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Attr, MessageClass, Method

PACKETS = 2000
INTERVAL = 0.001  # a packet per millisecond


def draws(seed: int | str, direction: str, packets: int) -> list[tuple[float, float, float, float]]:
    # The documented derivation of a direction's random source and the documented draw order.
    rng = random.Random(f"pyturn-impairment:{seed}:{direction}")
    return [(rng.random(), rng.random(), rng.random(), rng.random()) for _ in range(packets)]


def run(path: ImpairedPath, packets: int = PACKETS, size: int = 100) -> list[tuple[float, tuple[float, ...]]]:
    return [(n * INTERVAL, path.admit(size, n * INTERVAL)) for n in range(packets)]


def test_impairment_statistics_are_what_the_seed_makes_them() -> None:
    impairment = Impairment(loss=0.1, delay=0.05, jitter=0.01, duplicate=0.05, seed=42)
    path = ImpairedPath(impairment, path_random(42, "to_peer"))
    decisions = run(path)
    replay = draws(42, "to_peer", PACKETS)
    lost = [u[0] < 0.1 for u in replay]
    doubled = [not gone and u[1] < 0.05 for gone, u in zip(lost, replay, strict=True)]
    assert path.stats == ImpairmentStats(
        packets=PACKETS, dropped=sum(lost), delayed=PACKETS - sum(lost), duplicated=sum(doubled)
    )
    assert 150 < path.stats.dropped < 250 and 50 < path.stats.duplicated < 150  # the seed is not degenerate
    previous = 0.0
    for (now, departures), gone, twice, u in zip(decisions, lost, doubled, replay, strict=True):
        assert len(departures) == (0 if gone else 2 if twice else 1)
        for departure in departures:
            # 50 ms +- 10 ms, never earlier than the packet before it (jitter keeps the order)
            assert departure >= previous
            assert departure == pytest.approx(max(previous, now + 0.05 + (2 * u[3] - 1) * 0.01))
            previous = departure


def test_impairment_same_seed_same_run_other_seed_other_run() -> None:
    impairment = Impairment(loss=0.2, delay=0.02, jitter=0.02, duplicate=0.1, reorder=0.1, seed="run-1")
    first = run(ImpairedPath(impairment, path_random("run-1", "to_client")))
    again = run(ImpairedPath(impairment, path_random("run-1", "to_client")))
    other = run(ImpairedPath(impairment, path_random("run-2", "to_client")))
    other_direction = run(ImpairedPath(impairment, path_random("run-1", "to_peer")))
    assert first == again
    assert first != other and first != other_direction


def test_impairment_reordered_packets_skip_the_delay() -> None:
    impairment = Impairment(delay=0.1, reorder=0.25, seed=5)
    path = ImpairedPath(impairment, path_random(5, "to_peer"))
    decisions = run(path, 400)
    chosen = [u[2] < 0.25 for u in draws(5, "to_peer", 400)]
    assert path.stats.reordered == sum(chosen) and 60 < sum(chosen) < 140
    assert path.stats.delayed == 400 - sum(chosen)
    for (now, departures), reordered in zip(decisions, chosen, strict=True):
        assert departures == ((now,) if reordered else (pytest.approx(now + 0.1),))


def test_impairment_rate_queues_then_drops_beyond_the_limit() -> None:
    # 1000 bytes/s carries a 100-byte packet every 100 ms; 5 may wait, the rest of a burst is dropped.
    path = ImpairedPath(Impairment(rate=1000, limit=5), random.Random(0))
    burst = [path.admit(100, 10.0) for _ in range(8)]
    assert burst[:5] == [(pytest.approx(10.0 + 0.1 * n),) for n in range(1, 6)]
    assert burst[5:] == [(), (), ()]
    assert path.stats == ImpairmentStats(packets=8, delayed=5, rate_dropped=3)
    # Once the link has sent what waited, packets go through at once again.
    assert path.admit(100, 11.0) == (pytest.approx(11.1),)


def test_impairment_delay_queue_is_bounded() -> None:
    path = ImpairedPath(Impairment(delay=1.0, limit=3), random.Random(0))
    assert [len(path.admit(10, 0.0)) for _ in range(5)] == [1, 1, 1, 0, 0]
    assert path.stats.overflowed == 2 and path.stats.delayed == 3
    assert path.admit(10, 1.5) == (2.5,)  # the first three have left by then


def test_impairment_without_effects_sends_at_once() -> None:
    path = ImpairedPath(Impairment(), random.Random(0))
    assert path.admit(1200, 3.0) == (3.0,)
    assert path.stats == ImpairmentStats(packets=1)


@pytest.mark.parametrize(
    "arguments",
    [
        {"loss": 1.5}, {"loss": -0.1}, {"duplicate": 2}, {"delay": -1.0}, {"jitter": float("nan")},
        {"rate": 0}, {"rate": -5.0}, {"reorder": 0.1}, {"limit": 0},
    ],
)
def test_impairment_refuses_impossible_values(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Impairment(**arguments)  # type: ignore[arg-type]


def test_active_impairment_adds_the_directions_up() -> None:
    active = ActiveImpairment(Impairment(loss=0.5, seed=1), "both")
    assert set(active.paths) == {"to_peer", "to_client"}
    for name in ("to_peer", "to_client"):
        for n in range(100):
            active.paths[name].admit(10, n)
    assert active.to_peer is not None and active.to_client is not None
    assert active.packets == 200
    assert active.dropped == active.to_peer.dropped + active.to_client.dropped == active.stats.dropped
    with pytest.raises(ValueError):
        ActiveImpairment(Impairment(), "sideways")
    assert ActiveImpairment(Impairment(), "to_client").to_peer is None


# ------------------------------------------------------------------------------------------ faults
def test_fault_methods_by_name_number_or_member() -> None:
    assert method_of("REFRESH") is Method.REFRESH
    assert method_of("channel-bind") is Method.CHANNEL_BIND
    assert method_of(Method.ALLOCATE) is Method.ALLOCATE
    assert method_of(0x008) is Method.CREATE_PERMISSION
    for wrong in ("BINDING", "NOPE", 0x001, 0x999):
        with pytest.raises(ValueError):
            method_of(wrong)
    injector = FailureInjector()
    with pytest.raises(ValueError):
        injector.add("REFRESH", 200)
    with pytest.raises(ValueError):
        injector.add("REFRESH", 508, count=0)
    injector.add("REFRESH", 508, count=2)
    injector.add("REFRESH", 486)
    assert injector.pending("REFRESH") == 3
    assert [injector.take(0x004) for _ in range(4)] == [508, 508, 486, None]
    assert not injector


def test_fault_fail_next_refresh_is_signed_and_counted_down() -> None:
    harness = Harness()
    client = harness.client()
    assert client.allocate().response.msg_class is MessageClass.SUCCESS
    harness.core.faults.add("REFRESH", 508, count=2)
    for _ in range(2):
        result = client.refresh(600)
        assert result.error_code == 508
        response = result.response
        assert response.get(Attr.ERROR_CODE) == (508, "Insufficient Capacity")
        assert verify_integrity(response, client.key)  # decided after authentication: signed
    assert client.refresh(600).response.msg_class is MessageClass.SUCCESS
    assert client.allocation.expires == harness.now + 600


def test_fault_fail_next_allocate_then_allocates() -> None:
    harness = Harness()
    client = harness.client()
    harness.core.faults.add(Method.ALLOCATE, 486)
    result = client.allocate()
    assert result.error_code == 486 and verify_integrity(result.response, client.key)
    assert result.response.get(Attr.XOR_MAPPED_ADDRESS) == client.five_tuple.client
    assert client.five_tuple not in harness.core.allocations
    assert client.allocate().response.msg_class is MessageClass.SUCCESS


def test_fault_fail_next_438_is_a_challenge_with_a_fresh_nonce() -> None:
    harness = Harness()
    client = harness.client()
    client.allocate()
    harness.core.faults.add("CREATE_PERMISSION", 438)
    result = client.send_raw(client.signed(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, ("198.51.100.7", 1))]))
    response = result.response
    assert result.error_code == 438
    assert response.get(Attr.NONCE) and response.get(Attr.REALM) == "reTurn"
    assert response.integrity_offset is None  # RFC 8489 §9.2.4: a challenge is not signed


def test_fault_expire_nonces_makes_the_next_request_438() -> None:
    harness = Harness()
    client = harness.client()
    client.allocate()
    stale = client.nonce
    harness.core.expire_nonces()
    result = client.send_raw(client.signed(Method.REFRESH, [(Attr.LIFETIME, 600)]))
    assert result.error_code == 438
    assert result.response.get(Attr.NONCE) != stale
    client.learn(result.response)
    assert client.refresh(600).response.msg_class is MessageClass.SUCCESS


def test_fault_expire_allocations_deletes_as_the_timer_would() -> None:
    harness = Harness()
    alice, bob = harness.client("alice"), harness.client("bob", client=("203.0.113.11", 40001))
    alice.allocate()
    bob.allocate()
    actions = harness.core.expire_allocations(harness.now, "alice")
    deleted = [action for action in actions if isinstance(action, AllocationDeleted)]
    assert [(event.five_tuple, event.reason) for event in deleted] == [(alice.five_tuple, "expired")]
    assert alice.five_tuple not in harness.core.allocations and bob.five_tuple in harness.core.allocations
    assert harness.tick().actions == []  # the stale timer entry of alice's allocation does nothing
    result = alice.refresh(600)
    assert result.error_code == 437  # RFC 8656 §7.3: gone
    assert len(harness.core.expire_allocations(harness.now)) == 2  # bob's: CloseRelay + AllocationDeleted
    assert not harness.core.allocations
    assert not [a for a in result.actions if isinstance(a, SendToClient) and decode_message(a.data).method != 4]


# ------------------------------------------------------------------------------------ properties
@given(
    loss=st.floats(0, 1), duplicate=st.floats(0, 1), reorder=st.floats(0, 1), delay=st.floats(0.001, 2),
    jitter=st.floats(0, 1), rate=st.none() | st.floats(100, 1e7), limit=st.integers(1, 50), seed=st.integers(),
    arrivals=st.lists(st.tuples(st.floats(0, 0.05), st.integers(1, 1500)), max_size=200),
)
def test_impairment_properties(
    loss: float, duplicate: float, reorder: float, delay: float, jitter: float, rate: float | None, limit: int,
    seed: int, arrivals: list[tuple[float, int]],
) -> None:
    path = ImpairedPath(Impairment(loss=loss, duplicate=duplicate, reorder=reorder, delay=delay, jitter=jitter,
                                   rate=rate, limit=limit), random.Random(seed))
    now = 0.0
    pending: list[float] = []
    last_in_order = 0.0
    kept = 0
    for gap, size in arrivals:
        now += gap
        departures = path.admit(size, now)
        pending = [at for at in pending if at > now]
        assert len(pending) <= limit + 1  # bounded: one packet's copy may come on top of the limit
        assert len(departures) in (0, 1, 2) and len(set(departures)) <= 1
        kept += bool(departures)
        for departure in departures:
            assert departure >= now
            if departure > now:
                assert departure >= last_in_order  # the waiting packets leave in order
                last_in_order = departure
                pending.append(departure)
    stats = path.stats
    assert stats.packets == len(arrivals) == kept + stats.dropped + stats.rate_dropped + stats.overflowed
    assert stats.duplicated <= kept and stats.reordered + stats.delayed <= kept
