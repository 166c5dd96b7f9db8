"""RFC 8489 §9.2 authentication end to end, on real sockets: a SHA-256 + USERHASH allocation with the project's own
client over UDP and over TCP, and aioice (an RFC 5389 client, like every browser) unaffected by the offer."""

from __future__ import annotations

import asyncio

import pytest
from interop import (
    LOOPBACK,
    PASSWORD,
    USERNAME,
    MiniTurnClient,
    aioice_udp_client,
    python_module_available,
    start_echo_peer,
)
from streamclient import StreamTurnClient

from pyturn.config import Config
from pyturn.server import Server
from pyturn.wire.codec import decode_message
from pyturn.wire.message import Attr, Message, MessageClass, Method

pytestmark = pytest.mark.interop

IO_TIMEOUT = 5.0
OFFER = ((0x0002, b""), (0x0001, b""))  # PASSWORD-ALGORITHMS: SHA-256, MD5 (RFC 8489 §18.5)
CHANNEL = 0x4000


def only_allocation_algorithm(server: Server) -> int:
    assert server.core is not None
    (allocation,) = server.core.allocations.values()
    return allocation.algorithm


async def test_rfc8489_sha256_userhash_allocation_over_udp(inprocess_server: Server) -> None:
    peer_transport, peer = await start_echo_peer()
    peer_address = peer_transport.get_extra_info("sockname")
    try:
        with MiniTurnClient(inprocess_server.addresses["udp"][0], rfc8489=True) as client:
            response = await asyncio.wait_for(
                client.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17)), IO_TIMEOUT
            )
            assert client.session.use_userhash and client.session.algorithm == 0x0002
            assert response.integrity_sha256_offset is not None and response.integrity_offset is None
            relayed = response.get(Attr.XOR_RELAYED_ADDRESS)
            assert only_allocation_algorithm(inprocess_server) == 0x0002
            await asyncio.wait_for(client.channel_bind(CHANNEL, peer_address), IO_TIMEOUT)
            await client.send_channel_data(CHANNEL, b"sha-256 over udp")
            assert await client.receive_payload(IO_TIMEOUT) == b"sha-256 over udp"
            assert peer.seen[-1] == (b"sha-256 over udp", relayed)
            assert await asyncio.wait_for(client.refresh(0), IO_TIMEOUT) == 0
    finally:
        peer_transport.close()
    assert inprocess_server.allocation_count() == 0


async def test_rfc8489_sha256_userhash_allocation_over_tcp(loopback_config: Config) -> None:
    peer_transport, peer = await start_echo_peer()
    peer_address = peer_transport.get_extra_info("sockname")
    try:
        async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
            client = await StreamTurnClient.connect(server.addresses["tcp"][0], rfc8489=True)
            try:
                relayed = await asyncio.wait_for(client.allocate_with_channel(peer_address, CHANNEL), IO_TIMEOUT)
                assert client.session.use_userhash and client.session.algorithm == 0x0002
                assert only_allocation_algorithm(server) == 0x0002
                await client.send_channel_data(CHANNEL, b"sha-256 over tcp")
                frame = await client.next_frame(IO_TIMEOUT)
                assert frame[4:4 + 16] == b"sha-256 over tcp"
                assert peer.seen[-1] == (b"sha-256 over tcp", relayed)
            finally:
                await client.close()
    finally:
        peer_transport.close()


async def test_rfc8489_aioice_ignores_the_offer_and_relays(inprocess_server: Server) -> None:
    """aioice knows RFC 5389 only: it is offered PASSWORD-ALGORITHMS and the cookie nonce, ignores the attribute,
    echoes the nonce and allocates with MD5 exactly as before."""
    python_module_available("aioice")
    from aioice.turn import TurnClientUdpProtocol

    challenges: list[Message] = []

    class RecordingClient(TurnClientUdpProtocol):
        def datagram_received(self, data: bytes | str, addr: tuple[str, int]) -> None:
            assert isinstance(data, bytes)
            if len(data) >= 20 and data[0] & 0xC0 == 0:
                message = decode_message(data)
                if message.msg_class is MessageClass.ERROR:
                    challenges.append(message)
            super().datagram_received(data, addr)

    server_address = inprocess_server.addresses["udp"][0]
    peer_transport, peer = await start_echo_peer()
    peer_address = peer_transport.get_extra_info("sockname")
    transport, client = await aioice_udp_client(RecordingClient, server_address)
    try:
        relayed = await asyncio.wait_for(client.connect(), IO_TIMEOUT)
        assert relayed[0] == LOOPBACK
        (challenge,) = challenges
        assert challenge.get(Attr.ERROR_CODE)[0] == 401
        assert challenge.get(Attr.PASSWORD_ALGORITHMS) == OFFER
        assert challenge.get(Attr.NONCE).startswith("obMatJos2")
        assert only_allocation_algorithm(inprocess_server) == 0x0001
        await asyncio.wait_for(client.send_data(b"still md5", peer_address), IO_TIMEOUT)
        for _ in range(100):
            if peer.seen:
                break
            await asyncio.sleep(0.02)
        assert peer.seen == [(b"still md5", relayed)]
        await asyncio.wait_for(client.delete(), IO_TIMEOUT)
    finally:
        transport.close()
        peer_transport.close()
    assert inprocess_server.allocation_count() == 0
