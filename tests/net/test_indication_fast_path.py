"""Send and Data indications through a real server on 127.0.0.1: the first of a peer takes the core's path, the
following ones the adapters' fast path (pyturn.core.routes); the peer and the client see the same bytes either
way, and a pause or a bandwidth cap holds on the fast path too."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from interop import LOOPBACK, PASSWORD, USERNAME, MiniTurnClient, binding_request

from pyturn.config import Config
from pyturn.core.allocation import Transport
from pyturn.server import Server
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.indications import peer_attribute
from pyturn.wire.message import Attr, Message, MessageClass, Method

TIMEOUT = 2.0
IP_MTU_DISCOVER = 10  # Linux <linux/in.h>; the socket module does not name it on every build
IP_PMTUDISC_DO = 2


def _send(peer: tuple[str, int], payload: bytes, *extra: tuple[int, Any], data_first: bool = False,
          fingerprint: bool = False) -> bytes:
    message = Message(Method.SEND, MessageClass.INDICATION, bytes(range(12)))
    attrs: list[tuple[int, Any]] = [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload)]
    for attr, value in [*(reversed(attrs) if data_first else attrs), *extra]:
        message.add(attr, value)
    return encode_message(message, fingerprint=fingerprint)


@asynccontextmanager
async def _relay(config: Config, *allocate_extra: tuple[int, Any]) -> AsyncIterator[tuple[Server, MiniTurnClient,
                                                                                         socket.socket, Any]]:
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        with MiniTurnClient(server.addresses["udp"][0]) as client, socket.socket(socket.AF_INET,
                                                                                  socket.SOCK_DGRAM) as peer:
            peer.setblocking(False)
            peer.bind((LOOPBACK, 0))
            relayed = await client.allocate(*allocate_extra)
            await client.create_permission(peer.getsockname())
            yield server, client, peer, relayed


async def _peer_receives(peer: socket.socket, count: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    return [(await asyncio.wait_for(loop.sock_recvfrom(peer, 65536), TIMEOUT))[0] for _ in range(count)]


def _learned(server: Server) -> dict[Any, Any]:
    address = server.addresses["udp"][0]
    return server.core.route_table.sends_for_listener(Transport.UDP, address)


async def test_send_indications_reach_the_peer_alike_on_both_paths(loopback_config: Config) -> None:
    async with _relay(loopback_config) as (server, client, peer, _):
        target = peer.getsockname()
        await client.send(_send(target, b"first: the core"))
        assert await _peer_receives(peer, 1) == [b"first: the core"]
        assert list(_learned(server)) == [(client.sock.getsockname(), peer_attribute(target))]
        payloads = [bytes([n]) * n for n in range(1, 40)]
        for n, payload in enumerate(payloads):
            await client.send(_send(target, payload, data_first=n % 2 == 1, fingerprint=n % 3 == 0))
        await client.send(_send(target, b"software: the core", (Attr.SOFTWARE, "test")))
        await client.send(_send(target, b""))
        assert await _peer_receives(peer, len(payloads) + 2) == [*payloads, b"software: the core", b""]
        counter = server.runtime.relayed_to_peer[Transport.UDP]  # type: ignore[union-attr]
        assert counter.packets == len(payloads) + 3


async def test_data_indications_from_the_template_are_the_codecs(loopback_config: Config) -> None:
    async with _relay(loopback_config) as (_, client, peer, relayed):
        loop = asyncio.get_running_loop()
        payloads = [b"x" * n for n in range(0, 30)]
        tids = set()
        for payload in payloads:
            await loop.sock_sendto(peer, payload, relayed)
            message = decode_message(await client.receive(TIMEOUT))
            assert (message.method, message.msg_class) == (Method.DATA, MessageClass.INDICATION)
            assert message.get(Attr.XOR_PEER_ADDRESS) == peer.getsockname()
            assert message.get(Attr.DATA) == payload
            assert not message.has_fingerprint
            tids.add(message.transaction_id)
        assert len(tids) == len(payloads)  # RFC 8489 §6: one per indication


async def test_dont_fragment_on_a_relay_without_df_is_set_for_that_datagram(loopback_config: Config) -> None:
    # RFC 8656 §11.3: DF on the datagram the Send indication asked for, the relay's own setting untouched after
    async with _relay(loopback_config) as (server, client, peer, _):
        target = peer.getsockname()
        relay = next(iter(server.runtime.relays))  # type: ignore[union-attr]
        before = relay.sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER)
        await client.send(_send(target, b"plain"))
        await client.send(_send(target, b"with DF", (Attr.DONT_FRAGMENT, True)))
        await client.send(_send(target, b"plain again"))
        assert await _peer_receives(peer, 3) == [b"plain", b"with DF", b"plain again"]
        assert relay.sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == before
        assert before != IP_PMTUDISC_DO


async def test_dont_fragment_on_a_relay_with_df_takes_the_fast_path(loopback_config: Config) -> None:
    async with _relay(loopback_config, (Attr.DONT_FRAGMENT, True)) as (server, client, peer, _):
        target = peer.getsockname()
        relay = next(iter(server.runtime.relays))  # type: ignore[union-attr]
        assert relay.sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DO
        for n in range(5):
            await client.send(_send(target, b"df %d" % n, (Attr.DONT_FRAGMENT, True)))
        assert await _peer_receives(peer, 5) == [b"df %d" % n for n in range(5)]


async def test_a_paused_relay_drops_fast_path_send_indications(loopback_config: Config) -> None:
    async with _relay(loopback_config) as (server, client, peer, _):
        target = peer.getsockname()
        await client.send(_send(target, b"learned"))
        assert await _peer_receives(peer, 1) == [b"learned"]
        server.pause_relay()
        await client.send(_send(target, b"paused"))
        await asyncio.sleep(0.2)
        server.resume_relay()
        await client.send(_send(target, b"resumed"))
        assert await _peer_receives(peer, 1) == [b"resumed"]


async def test_the_bandwidth_cap_holds_on_the_fast_path(loopback_config: Config) -> None:
    config = dataclasses.replace(loopback_config, max_bandwidth_per_allocation=1000)  # bytes per second
    async with _relay(config) as (_, client, peer, _relayed):
        target = peer.getsockname()
        for _ in range(10):
            await client.send(_send(target, b"y" * 400))
        received = 0
        try:
            while True:
                await _peer_receives(peer, 1)
                received += 1
        except TimeoutError:
            pass
        assert 1 <= received <= 3  # a second's worth (1000 bytes) of 400-byte datagrams


async def test_runt_datagrams_leave_the_listener_answering(loopback_config: Config) -> None:
    # Shorter than a ChannelData header or a STUN type: the listener's fast-path checks must not raise on them.
    loop = asyncio.get_running_loop()
    raised: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: raised.append(context))  # an escaped error in a reader callback
    try:
        async with _relay(loopback_config) as (server, client, peer, _):
            target = peer.getsockname()
            await client.send(_send(target, b"learned"))
            assert await _peer_receives(peer, 1) == [b"learned"]
            for runt in (b"", b"\x00", b"\x40", b"\x00\x16"):
                await client.send(runt)
            request, transaction_id = binding_request()
            await client.send(request)
            response = decode_message(await client.receive(TIMEOUT))
            assert (response.method, response.msg_class) == (Method.BINDING, MessageClass.SUCCESS)
            assert response.transaction_id == transaction_id
            assert response.get(Attr.XOR_MAPPED_ADDRESS) == client.sock.getsockname()
            await client.send(_send(target, b"still fast"))
            assert await _peer_receives(peer, 1) == [b"still fast"]
            assert server.runtime.internal_errors.total == 0  # type: ignore[union-attr]
    finally:
        loop.set_exception_handler(None)
    assert raised == []
