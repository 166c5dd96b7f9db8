"""A relay-only aiortc call between two RTCPeerConnections in one process: SDP exchanged directly, a data channel
whose offerer sends pings the answerer turns into pongs. Shared by the loopback and the deployment WebRTC tests."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # aiortc is imported by the tests, which require it first
    from aiortc import RTCDataChannel, RTCPeerConnection

WAIT = 20.0
MESSAGES = 20


async def connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())  # aiortc gathers every candidate here
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def exchange(offerer: RTCPeerConnection, answerer: RTCPeerConnection, messages: int = MESSAGES,
                   wait: float = WAIT) -> list[str]:
    """Open a data channel; the offerer sends `messages` pings, the answerer answers each with a pong."""
    channel = offerer.createDataChannel("chat")
    opened = asyncio.Event()
    pongs: asyncio.Queue[str] = asyncio.Queue()
    channel.on("open", opened.set)
    channel.on("message", pongs.put_nowait)

    @answerer.on("datachannel")
    def on_datachannel(remote: RTCDataChannel) -> None:
        @remote.on("message")
        def on_message(message: str) -> None:
            remote.send(message.replace("ping", "pong"))

    await connect(offerer, answerer)
    await asyncio.wait_for(opened.wait(), wait)
    for number in range(messages):
        channel.send(f"ping {number}")
    return [await asyncio.wait_for(pongs.get(), wait) for _ in range(messages)]
