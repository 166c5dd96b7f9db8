"""Two aiortc peers in one process with relay-only ICE and a ping-pong data channel: the loopback WebRTC, impairment
and recipe tests and the deployment's aiortc call share it.

RTCIceTransportPolicy.RELAY makes aioice gather relayed candidates only, so the one possible path is peer A ->
TURN (A's allocation) -> TURN (B's allocation) -> peer B. The SDP goes from one peer to the other directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)

WAIT = 30.0
CLOSE_WAIT = 3.0
MESSAGES = 20


def relay_only(ice_servers: Sequence[dict[str, Any]]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(**entry) for entry in ice_servers],
                            iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if line.startswith("a=candidate:")}


def _check_candidates(connection: RTCPeerConnection) -> None:
    # aioice gathers no relayed candidate when its Allocate fails; ICE would then wait for the remote side forever.
    if "a=candidate:" not in connection.localDescription.sdp:
        raise ConnectionError("no relayed candidate: the TURN allocation failed")


class Pinger:
    """A data channel from `offerer` to `answerer`, which answers every "ping N" with "pong N"."""

    def __init__(self, offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
        self.offerer = offerer
        self.answerer = answerer
        self.channel = offerer.createDataChannel("rig")
        self.opened = asyncio.Event()
        self.pongs: asyncio.Queue[str] = asyncio.Queue()
        self.failed = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self.pongs.put_nowait)

        @offerer.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            if offerer.iceConnectionState == "failed":
                self.failed.set()

        @answerer.on("datachannel")
        def on_datachannel(remote: RTCDataChannel) -> None:
            @remote.on("message")
            def on_message(message: str) -> None:
                remote.send(message.replace("ping", "pong"))

    async def connect(self, timeout: float = WAIT) -> None:
        """Offer/answer (aiortc gathers every candidate in setLocalDescription) and wait for the channel.

        ConnectionError when ICE fails (for instance when no TURN allocation could be made)."""

        async def negotiate() -> None:
            offerer, answerer = self.offerer, self.answerer
            await offerer.setLocalDescription(await offerer.createOffer())
            _check_candidates(offerer)
            await answerer.setRemoteDescription(offerer.localDescription)
            await answerer.setLocalDescription(await answerer.createAnswer())
            _check_candidates(answerer)
            await offerer.setRemoteDescription(answerer.localDescription)
            opened, failed = asyncio.create_task(self.opened.wait()), asyncio.create_task(self.failed.wait())
            try:
                await asyncio.wait((opened, failed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                opened.cancel()
                failed.cancel()
            if not self.opened.is_set():
                raise ConnectionError("ICE failed")

        await asyncio.wait_for(negotiate(), timeout)

    async def burst(self, count: int, timeout: float = WAIT) -> list[str]:
        """Send `count` pings at once; the pongs in the order they came."""
        for number in range(count):
            self.channel.send(f"ping {number}")
        return [await asyncio.wait_for(self.pongs.get(), timeout) for _ in range(count)]

    async def round_trips(self, count: int, timeout: float = WAIT) -> list[float]:
        """`count` sequential ping-pong times, in seconds."""
        times = []
        for number in range(count):
            sent = time.perf_counter()
            self.channel.send(f"ping rtt-{number}")
            assert await asyncio.wait_for(self.pongs.get(), timeout) == f"pong rtt-{number}"
            times.append(time.perf_counter() - sent)
        return times


@asynccontextmanager
async def peer_pair(offerer_servers: Sequence[dict[str, Any]],
                    answerer_servers: Sequence[dict[str, Any]] | None = None) -> AsyncIterator[Pinger]:
    """Two relay-only peers (not yet connected) and their data channel; both are closed afterwards."""
    offerer = RTCPeerConnection(relay_only(offerer_servers))
    answerer = RTCPeerConnection(relay_only(offerer_servers if answerer_servers is None else answerer_servers))
    try:
        yield Pinger(offerer, answerer)
    finally:
        # Bounded, whatever the server answers aioice's deleting Refresh (a lost answer means retransmissions for
        # about 40 s). The close goes on in the background if cut short.
        closing = asyncio.gather(offerer.close(), answerer.close())
        done, _ = await asyncio.wait([closing], timeout=CLOSE_WAIT)
        if closing in done:
            closing.result()


async def exchange(offerer: RTCPeerConnection, answerer: RTCPeerConnection, messages: int = MESSAGES,
                   wait: float = WAIT) -> list[str]:
    """Connect the two peers (not closed here) and send `messages` pings; the pongs, in the order they came."""
    pinger = Pinger(offerer, answerer)
    await pinger.connect(wait)
    return await pinger.burst(messages, wait)
