"""Server.impair on the wire: per-user rules, later allocations, Send/Data indications, rate limits, STUN left
alone, and the fast path restored (nothing swapped) once no impairment is in force."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from interop import MiniTurnClient, TurnRequestFailed, start_echo_peer

import pyturn
from pyturn.errors import PyturnError
from pyturn.net.relay import RelayEndpoint
from pyturn.wire.codec import decode_message
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Attr, Method

USERS = {"alice": "alice-password", "bob": "bob-password"}
WAIT = 5.0


@pytest.fixture
async def server() -> AsyncIterator[pyturn.Server]:
    async with pyturn.Server(users=USERS) as running:
        yield running


async def data_indication(client: MiniTurnClient, timeout: float) -> bytes:
    """The payload of the next Data indication (RFC 8656 §11.4) the client receives."""
    while True:
        message = decode_message(await client.receive(timeout))
        if message.method == Method.DATA:
            payload: bytes = message.get(Attr.DATA)
            return payload


async def echo_once(client: MiniTurnClient, peer: tuple[str, int], payload: bytes, timeout: float = WAIT) -> float:
    sent = time.perf_counter()
    await client.send_indication(peer, payload)
    assert await data_indication(client, timeout) == payload
    return time.perf_counter() - sent


def untouched(server: pyturn.Server) -> bool:
    runtime = server.runtime
    assert runtime is not None
    return "_send_to_client" not in vars(runtime) and all(
        type(relay) is RelayEndpoint and (relay.udp_sock is None or isinstance(relay.udp_sock, socket.socket))
        for relay in runtime.relays
    )


async def test_impairment_applies_per_user_and_to_later_allocations(server: pyturn.Server) -> None:
    peer_transport, _ = await start_echo_peer()
    peer = peer_transport.get_extra_info("sockname")
    address = server.addresses["udp"][0]
    with MiniTurnClient(address, "alice", USERS["alice"]) as alice, MiniTurnClient(
        address, "bob", USERS["bob"]
    ) as bob:
        try:
            await alice.allocate()
            await alice.create_permission(peer)
            active = server.impair(pyturn.Impairment(delay=0.15, seed=3), username="alice")
            assert active is not None
            # bob allocates after the impairment: not his, so his path stays as fast as ever
            await bob.allocate()
            await bob.create_permission(peer)
            assert await echo_once(bob, peer, b"bob") < 0.15
            # alice's Send indication waits 150 ms, the Data indication back another 150 ms; her STUN does not
            assert await echo_once(alice, peer, b"alice") >= 0.3
            started = time.perf_counter()
            assert await alice.refresh(600) == 600
            assert time.perf_counter() - started < 0.15
            assert active.to_peer is not None and active.to_client is not None
            assert (active.to_peer.delayed, active.to_client.delayed) == (1, 1)
            # an impairment for everyone: bob gets it, alice keeps her own
            everyone = server.impair(pyturn.Impairment(loss=1.0), direction="to_peer")
            assert everyone is not None
            await bob.send_indication(peer, b"lost")
            with pytest.raises(TimeoutError):
                await data_indication(bob, 0.3)
            assert everyone.dropped == 1
            assert await echo_once(alice, peer, b"alice again") >= 0.3
            server.impair(None)
            assert untouched(server)
            assert await echo_once(alice, peer, b"fast again") < 0.15
        finally:
            peer_transport.close()


async def test_impairment_rate_limit_queues_and_drops_the_excess(server: pyturn.Server) -> None:
    peer_transport, peer_protocol = await start_echo_peer()
    peer = peer_transport.get_extra_info("sockname")
    with MiniTurnClient(server.addresses["udp"][0], "alice", USERS["alice"]) as alice:
        try:
            await alice.allocate()
            await alice.create_permission(peer)
            # 1000 bytes/s and 4 waiting at most: of 10 back-to-back 200-byte datagrams 4 wait (200 ms each for
            # the path to carry it), the rest are dropped
            with server.impaired(pyturn.Impairment(rate=1000, limit=4), direction="to_peer") as active:
                for number in range(10):
                    await alice.send_indication(peer, bytes([number]) * 200)
                deadline = time.monotonic() + WAIT
                while len(peer_protocol.seen) < 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # nothing more comes
            assert [data[0] for data, _ in peer_protocol.seen] == [0, 1, 2, 3]  # in order
            assert (active.delayed, active.rate_dropped, active.packets) == (4, 6, 10)
        finally:
            peer_transport.close()


async def test_impairment_controls_need_a_running_server() -> None:
    server = pyturn.Server(users=USERS)
    with pytest.raises(PyturnError):
        server.impair(pyturn.Impairment())
    with pytest.raises(PyturnError):
        server.pause_relay()
    async with server:
        with pytest.raises(ValueError):
            server.impair(pyturn.Impairment(), direction="up")
        with pytest.raises(ValueError):
            server.fail_next("BINDING", 500)
        assert server.expire_allocations() == 0 and server.close_connections() == 0
        assert untouched(server) and server.runtime is not None and not server.runtime.impairments.active


def test_impairment_and_faults_through_run_in_thread() -> None:
    # A synchronous test: the server runs on its own thread, the client on an event loop of this one.
    async def echo_and_refresh(address: tuple[str, int]) -> tuple[float, TurnRequestFailed]:
        peer_transport, _ = await start_echo_peer()
        peer = peer_transport.get_extra_info("sockname")
        try:
            with MiniTurnClient(address, "alice", USERS["alice"]) as alice:
                await alice.allocate()
                await alice.create_permission(peer)
                elapsed = await echo_once(alice, peer, b"through the thread")
                with pytest.raises(TurnRequestFailed) as failed:
                    await alice.refresh(600)
                assert alice.key is not None and verify_integrity(failed.value.response, alice.key)
                return elapsed, failed.value
        finally:
            peer_transport.close()

    with pyturn.run_in_thread(users=USERS) as server:
        server.fail_next("REFRESH", 500)
        with server.impaired(pyturn.Impairment(delay=0.1, seed=2), username="alice") as active:
            elapsed, failure = asyncio.run(echo_and_refresh(server.addresses["udp"][0]))
        assert elapsed >= 0.2 and failure.code == 500
        assert active.delayed == 2 and active.dropped == 0
        assert server.expire_allocations("alice") == 1
        server.pause_relay()
        server.resume_relay()
        server.expire_nonces()
        assert server.impair(None) is None
