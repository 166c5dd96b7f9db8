"""Impairment of the relayed media, end to end: an aiortc data channel through loss and delay, relay-only ICE.

Both peers allocate on one embedded pyturn; each message crosses the sender's allocation towards its peer (the
other allocation's relayed address) and the receiver's allocation towards its client. Impairing "to_peer"
therefore impairs each way exactly once.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator

import pytest
from requirements import require_module

aiortc = require_module("aiortc")

from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)

import pyturn  # noqa: E402

USERNAME = "rig"
PASSWORD = "impaired path"
WAIT = 30.0
LOSS = 0.10
DELAY = 0.050
SEED = 18
BURST = 40
SAMPLES = 15


class Pinger:
    """A data channel from `offerer` to `answerer`, which answers every "ping N" with "pong N"."""

    def __init__(self, offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
        self.channel = offerer.createDataChannel("rig")
        self.opened = asyncio.Event()
        self.pongs: asyncio.Queue[str] = asyncio.Queue()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self.pongs.put_nowait)

        @answerer.on("datachannel")
        def on_datachannel(remote: RTCDataChannel) -> None:
            @remote.on("message")
            def on_message(message: str) -> None:
                remote.send(message.replace("ping", "pong"))

    async def burst(self, count: int) -> list[str]:
        for number in range(count):
            self.channel.send(f"ping {number}")
        return [await asyncio.wait_for(self.pongs.get(), WAIT) for _ in range(count)]

    async def round_trips(self, count: int) -> list[float]:
        """`count` sequential ping-pong times, in seconds."""
        times = []
        for number in range(count):
            sent = time.perf_counter()
            self.channel.send(f"ping rtt-{number}")
            assert await asyncio.wait_for(self.pongs.get(), WAIT) == f"pong rtt-{number}"
            times.append(time.perf_counter() - sent)
        return times


def relay_only(server: pyturn.Server) -> RTCConfiguration:
    entries = server.ice_servers(USERNAME, transports=("udp",))
    return RTCConfiguration(iceServers=[RTCIceServer(**entry) for entry in entries],
                            iceTransportPolicy=RTCIceTransportPolicy.RELAY)


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


@pytest.fixture
async def server() -> AsyncIterator[pyturn.Server]:
    async with pyturn.Server(users={USERNAME: PASSWORD}) as running:
        yield running


async def test_impairment_data_channel_through_loss_and_delay_in_order(server: pyturn.Server) -> None:
    offerer, answerer = RTCPeerConnection(relay_only(server)), RTCPeerConnection(relay_only(server))
    try:
        pinger = Pinger(offerer, answerer)
        await asyncio.wait_for(negotiate(offerer, answerer), WAIT)
        await asyncio.wait_for(pinger.opened.wait(), WAIT)
        baseline = await pinger.round_trips(SAMPLES)
        impairment = pyturn.Impairment(loss=LOSS, delay=DELAY, seed=SEED)
        with server.impaired(impairment, direction="to_peer") as active:
            replies = await asyncio.wait_for(pinger.burst(BURST), WAIT * 2)
            impaired = await asyncio.wait_for(pinger.round_trips(SAMPLES), WAIT * 2)
        stats = active.to_peer
        assert stats is not None and active.to_client is None
    finally:
        await offerer.close()
        await answerer.close()

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
    offerer, answerer = RTCPeerConnection(relay_only(server)), RTCPeerConnection(relay_only(server))
    try:
        pinger = Pinger(offerer, answerer)
        await asyncio.wait_for(negotiate(offerer, answerer), WAIT)
        await asyncio.wait_for(pinger.opened.wait(), WAIT)
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
    finally:
        await offerer.close()
        await answerer.close()
