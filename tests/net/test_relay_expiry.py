"""The production relay path stops relaying within one tick of a channel's or permission's expiry.

The adapter's fast path (UdpListener._readable, RelayEndpoint._readable) relays from route tables that the
core's tick() updates, so an expired channel or permission keeps working until the next tick at the latest.
These tests run a real server on real loopback sockets, with the lifetimes shortened (RFC 8656's 300 s and
600 s would make them take minutes), and watch traffic in both directions until well past the expiry.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from interop import LOOPBACK, PASSWORD, USERNAME, MiniTurnClient

import pyturn.core.permissions
from pyturn.server import TICK_INTERVAL, Server, loopback_config
from pyturn.wire.codec import decode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.message import Attr, Method

CHANNEL = 0x4000
SHORT_LIFETIME = 2.0
PACE = 0.02  # seconds between datagrams in each direction
# What "within one tick" may overrun by on a loaded machine (the ticker's sleep drifts by the loop's latency).
SCHEDULING_SLACK = 0.5
WATCH_AFTER = TICK_INTERVAL + 1.0


@pytest.fixture
def peer_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((LOOPBACK, 0))
    yield sock
    sock.close()


async def _watch(client: MiniTurnClient, peer: socket.socket, relayed: tuple[str, int], until: float
                 ) -> dict[str, float]:
    """Send ChannelData and peer datagrams every PACE s until `until` (loop time); the last arrival of each kind."""
    loop = asyncio.get_running_loop()
    last = {"to_peer": 0.0, "channel_to_client": 0.0, "data_indication_to_client": 0.0}
    frame = encode_channel_data(CHANNEL, b"client")

    def drain() -> None:
        while True:
            try:
                data, _ = peer.recvfrom(65535)
            except BlockingIOError:
                break
            if data == b"client":
                last["to_peer"] = loop.time()
        while True:
            try:
                data, _ = client.sock.recvfrom(65535)
            except BlockingIOError:
                break
            if data[0] & 0xC0 == 0x40 and decode_channel_data(data) == (CHANNEL, b"peer"):
                last["channel_to_client"] = loop.time()
            elif data[0] & 0xC0 == 0 and decode_message(data).method == Method.DATA:
                last["data_indication_to_client"] = loop.time()

    while loop.time() < until:
        client.sock.sendto(frame, client.server)
        peer.sendto(b"peer", relayed)
        await asyncio.sleep(PACE)
        drain()
    return last


async def _bound_client(server: Server, client: MiniTurnClient, peer: socket.socket) -> tuple[str, int]:
    relayed = await client.allocate()
    await client.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, CHANNEL),
                         (Attr.XOR_PEER_ADDRESS, peer.getsockname()))
    return relayed


@pytest.mark.parametrize("expiring", ["channel", "permission"])
async def test_fast_path_stops_relaying_within_one_tick_of_an_expiry(
    expiring: str, monkeypatch: pytest.MonkeyPatch, peer_socket: socket.socket
) -> None:
    """A channel binding (RFC 8656 §12) or the permission under it (RFC 8656 §9) expires while the other lives on:
    the fast path stops within one tick of it."""
    lifetime = "CHANNEL_LIFETIME" if expiring == "channel" else "PERMISSION_LIFETIME"
    monkeypatch.setattr(pyturn.core.permissions, lifetime, SHORT_LIFETIME)
    async with Server(loopback_config(), users={USERNAME: PASSWORD}, transports=("udp",)) as server:
        assert server.core is not None
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            relayed = await _bound_client(server, client, peer_socket)
            allocation = next(iter(server.core.allocations.values()))
            channel, permission = allocation.channels[CHANNEL].expires, allocation.permissions[LOOPBACK]
            expires, other = (channel, permission) if expiring == "channel" else (permission, channel)
            assert other > expires + WATCH_AFTER  # the other one lives on
            last = await _watch(client, peer_socket, relayed, expires + WATCH_AFTER)
    # Relayed on the channel right up to the expiry, in both directions ...
    assert last["to_peer"] >= expires - 0.5
    assert last["channel_to_client"] >= expires - 0.5
    # ... and not after the first tick past it.
    assert last["to_peer"] <= expires + TICK_INTERVAL + SCHEDULING_SLACK
    assert last["channel_to_client"] <= expires + TICK_INTERVAL + SCHEDULING_SLACK
    if expiring == "channel":
        # The permission lives on: peer data comes as Data indications.
        assert last["data_indication_to_client"] > expires + TICK_INTERVAL
    else:
        # RFC 8656 §9: without a permission nothing is relayed, in either direction, in any form.
        assert last["data_indication_to_client"] == 0.0


async def test_tcp_fast_path_stops_relaying_a_channel_within_one_tick_of_its_expiry(
    monkeypatch: pytest.MonkeyPatch, peer_socket: socket.socket
) -> None:
    """The same over TCP: StreamConnection's route lookup and the relay's stream write (RFC 8656 §12.5)."""
    from streamclient import StreamTurnClient

    monkeypatch.setattr(pyturn.core.permissions, "CHANNEL_LIFETIME", SHORT_LIFETIME)
    loop = asyncio.get_running_loop()
    last = {"to_peer": 0.0, "channel_to_client": 0.0}
    async with Server(loopback_config(), users={USERNAME: PASSWORD}, transports=("tcp",)) as server:
        assert server.core is not None
        client = await StreamTurnClient.connect(server.addresses["tcp"][0])
        try:
            relayed = await client.allocate_with_channel(peer_socket.getsockname(), CHANNEL)
            allocation = next(iter(server.core.allocations.values()))
            expires = allocation.channels[CHANNEL].expires

            async def read_frames() -> None:
                while True:
                    frame = await client.next_frame(timeout=WATCH_AFTER + SHORT_LIFETIME + 5)
                    if frame[0] & 0xC0 == 0x40 and decode_channel_data(frame) == (CHANNEL, b"peer"):
                        last["channel_to_client"] = loop.time()

            reader = asyncio.create_task(read_frames())
            frame = encode_channel_data(CHANNEL, b"client", pad=True)
            while loop.time() < expires + WATCH_AFTER:
                await client.write(frame)
                peer_socket.sendto(b"peer", relayed)
                await asyncio.sleep(PACE)
                while True:
                    try:
                        data, _ = peer_socket.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if data == b"client":
                        last["to_peer"] = loop.time()
            reader.cancel()
        finally:
            await client.close()
    assert expires - 0.5 <= last["to_peer"] <= expires + TICK_INTERVAL + SCHEDULING_SLACK
    assert expires - 0.5 <= last["channel_to_client"] <= expires + TICK_INTERVAL + SCHEDULING_SLACK
