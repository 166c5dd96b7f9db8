"""Impairment of the relayed media, end to end: an aiortc data channel through loss and delay, relay-only ICE.

Both peers allocate on one embedded pyturn; each message crosses the sender's allocation towards its peer (the
other allocation's relayed address) and the receiver's allocation towards its client. Impairing "to_peer"
therefore impairs each way exactly once.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import AsyncIterator
from typing import Any

import pytest
from requirements import require_module

aiortc = require_module("aiortc")

from webrtc_rig import WAIT, peer_pair  # noqa: E402

import pyturn  # noqa: E402

USERNAME = "rig"
PASSWORD = "impaired path"
LOSS = 0.10
DELAY = 0.050
SEED = 18
BURST = 40
SAMPLES = 15


def ice_servers(server: pyturn.Server) -> list[dict[str, Any]]:
    return server.ice_servers(USERNAME, transports=("udp",))


@pytest.fixture
async def server() -> AsyncIterator[pyturn.Server]:
    async with pyturn.Server(users={USERNAME: PASSWORD}) as running:
        yield running


async def test_impairment_data_channel_through_loss_and_delay_in_order(server: pyturn.Server) -> None:
    async with peer_pair(ice_servers(server)) as pinger:
        await pinger.connect()
        baseline = await pinger.round_trips(SAMPLES)
        impairment = pyturn.Impairment(loss=LOSS, delay=DELAY, seed=SEED)
        with server.impaired(impairment, direction="to_peer") as active:
            replies = await asyncio.wait_for(pinger.burst(BURST), WAIT * 2)
            impaired = await asyncio.wait_for(pinger.round_trips(SAMPLES), WAIT * 2)
        stats = active.to_peer
        assert stats is not None and active.to_client is None

    # SCTP retransmits what was lost: every message arrives, in order.
    assert replies == [f"pong {number}" for number in range(BURST)]
    # Each way crosses one impaired hop: the round trip grows by 2 x 50 ms (within 20 %). Medians: the samples
    # whose ping or pong was lost waited for an SCTP retransmission (about 1 s), fewer than a third of them.
    growth = statistics.median(impaired) - statistics.median(baseline)
    print(f"round trip: baseline median {statistics.median(baseline) * 1000:.1f} ms, impaired median "
          f"{statistics.median(impaired) * 1000:.1f} ms, growth {growth * 1000:.1f} ms (expected 100 ms); "
          f"impairment {stats}")
    assert 2 * DELAY * 0.8 <= growth <= 2 * DELAY * 1.2
    # The statistics are the seed's decisions for the packets that went through: replay them.
    rng = random.Random(f"pyturn-impairment:{SEED}:to_peer")
    draws = [(rng.random(), rng.random(), rng.random(), rng.random()) for _ in range(stats.packets)]
    lost = sum(1 for draw in draws if draw[0] < LOSS)
    assert stats.dropped == lost > 0
    assert stats.delayed == stats.packets - lost  # every packet not lost waited 50 ms
    assert stats.duplicated == stats.reordered == stats.rate_dropped == stats.overflowed == 0


async def test_impairment_pause_relay_is_a_black_hole_for_media_only(server: pyturn.Server) -> None:
    async with peer_pair(ice_servers(server)) as pinger:
        await pinger.connect()
        relayed = server.relayed_bytes()
        server.pause_relay()
        pinger.channel.send("ping lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pinger.pongs.get(), 1.5)
        assert server.relayed_bytes() == relayed  # nothing crossed the relay meanwhile
        assert server.allocation_count() == 2  # while STUN/TURN is still answered (the refreshes go on)
        server.resume_relay()
        # SCTP retransmits the message sent during the pause (its timer has backed off: allow for that).
        assert await asyncio.wait_for(pinger.pongs.get(), WAIT) == "pong lost"
        assert await pinger.burst(3) == ["pong 0", "pong 1", "pong 2"]


async def test_impairment_data_channel_through_jitter_duplicates_and_reordering(server: pyturn.Server) -> None:
    impairment = pyturn.Impairment(delay=0.02, jitter=0.01, duplicate=0.1, reorder=0.1, seed=SEED)
    async with peer_pair(ice_servers(server)) as pinger:
        await pinger.connect()
        with server.impaired(impairment) as active:  # both directions: each way crosses two impaired hops
            replies = await asyncio.wait_for(pinger.burst(BURST), WAIT * 2)
    assert replies == [f"pong {number}" for number in range(BURST)]  # SCTP reorders and drops the copies
    for direction, stats in (("to_peer", active.to_peer), ("to_client", active.to_client)):
        assert stats is not None
        rng = random.Random(f"pyturn-impairment:{SEED}:{direction}")
        draws = [(rng.random(), rng.random(), rng.random(), rng.random()) for _ in range(stats.packets)]
        assert stats.duplicated == sum(1 for draw in draws if draw[1] < 0.1)
        assert stats.reordered == sum(1 for draw in draws if draw[2] < 0.1)
        assert stats.delayed == stats.packets - stats.reordered  # 20 ms +- 10 ms: every other packet waited
        assert stats.dropped == stats.rate_dropped == stats.overflowed == 0
    assert active.duplicated > 0 and active.reordered > 0
