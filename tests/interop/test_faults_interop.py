"""Injected faults against a real client (aioice): a failing Refresh, stale nonces, expired allocations, dropped
TCP connections; and impairment of both directions over TCP (the stream sender pads ChannelData)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from interop import PASSWORD, USERNAME, python_module_available, start_echo_peer

import pyturn
from pyturn import AllocationDeleted, AllocationRefreshed
from pyturn.net.relay import RelayEndpoint

WAIT = 10.0
LIFETIME = 3  # seconds: aioice refreshes after 5/6 of it, 2.5 s


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def server() -> AsyncIterator[pyturn.Server]:
    python_module_available("aioice")
    config = pyturn.loopback_config(default_allocation_lifetime=LIFETIME, max_allocation_lifetime=LIFETIME)
    async with pyturn.Server(config, users={USERNAME: PASSWORD}) as running:
        yield running


async def allocate(server: pyturn.Server, transport: str = "udp") -> tuple[Any, Collector]:
    from aioice.turn import create_turn_endpoint

    address = server.addresses[transport][0]
    turn, collector = await asyncio.wait_for(
        create_turn_endpoint(Collector, server_addr=address, username=USERNAME, password=PASSWORD,
                             lifetime=LIFETIME, transport=transport),
        WAIT,
    )
    return turn, collector


async def test_fault_aioice_gives_up_an_allocation_whose_refresh_fails_508(
    server: pyturn.Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioice.turn")
    turn, _ = await allocate(server)
    try:
        server.fail_next(pyturn.Method.REFRESH, 508)
        # aioice checks the answer's MESSAGE-INTEGRITY: only a signed 508 makes it give up with this message.
        await wait_until(lambda: "refresh failed" in caplog.text)
        assert "508" in caplog.text
        assert server.core is not None
        assert server.core.stats.error_responses[("refresh", 508)] == 1
        assert not any(isinstance(event, AllocationRefreshed) for event in server.events)
        # aioice stops using the allocation (RFC 8656 §8): unrefreshed, it expires on the server.
        ended = await server.wait_for_event(AllocationDeleted, timeout=WAIT)
        assert ended.reason == "expired"
    finally:
        turn.close()


async def test_fault_aioice_answers_438_after_expire_nonces(
    server: pyturn.Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioice.turn")
    turn, _ = await allocate(server)
    try:
        server.expire_nonces()
        refreshed = await server.wait_for_event(AllocationRefreshed, timeout=WAIT)
        assert refreshed.lifetime == LIFETIME
        assert server.core is not None
        assert server.core.stats.error_responses[("refresh", 438)] == 1  # then aioice retried with the new nonce
        assert "refresh failed" not in caplog.text
    finally:
        turn.close()


async def test_fault_expire_allocations_ends_relaying_and_refreshes_meet_437(
    server: pyturn.Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioice.turn")
    peer_transport, _ = await start_echo_peer()
    peer = peer_transport.get_extra_info("sockname")
    turn, collector = await allocate(server)
    try:
        turn.sendto(b"before", peer)
        assert (await asyncio.wait_for(collector.received.get(), WAIT))[0] == b"before"
        assert server.expire_allocations(USERNAME) == 1
        expired = time.monotonic()
        ended = server.ended_allocations[-1]
        assert ended.reason == "expired" and ended.bytes_to_peer == len(b"before")
        turn.sendto(b"after", peer)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(collector.received.get(), 0.5)
        # aioice's next Refresh (2.5 s after the allocation, it is signed) meets no allocation: 437 after
        # authentication, with MESSAGE-INTEGRITY (RFC 8656 §5, RFC 8489 §9.2.4). aioice accepts it at once and gives
        # the allocation up; an unsigned 437 it would discard and retransmit for about 40 s.
        await wait_until(lambda: "refresh failed" in caplog.text, timeout=5.0)
        assert time.monotonic() - expired < 5.0
        assert "437" in caplog.text
        assert server.core is not None
        assert server.core.stats.error_responses[("refresh", 437)] == 1  # answered once: no retransmission
    finally:
        turn.close()
        peer_transport.close()


async def test_fault_close_connections_drops_tcp_and_its_allocation(server: pyturn.Server) -> None:
    turn, _ = await allocate(server, "tcp")
    try:
        assert server.close_connections(username="nobody") == 0
        assert server.close_connections(USERNAME) == 1
        ended = await server.wait_for_event(AllocationDeleted, timeout=WAIT)
        assert ended.reason == "closed"
        assert server.runtime is not None
        await wait_until(lambda: not server.runtime.streams)  # type: ignore[union-attr]
    finally:
        turn.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_impairment_delays_both_directions_and_keeps_payloads_intact(
    server: pyturn.Server, transport: str
) -> None:
    peer_transport, _ = await start_echo_peer()
    peer = peer_transport.get_extra_info("sockname")
    turn, collector = await allocate(server, transport)
    try:
        turn.sendto(b"warm-up", peer)  # binds the channel
        assert (await asyncio.wait_for(collector.received.get(), WAIT))[0] == b"warm-up"
        with server.impaired(pyturn.Impairment(delay=0.1, seed=1)) as active:
            for payload in (b"a", b"ab", b"abc", b"abcd", b"x" * 171):  # every ChannelData padding length
                sent = time.perf_counter()
                turn.sendto(payload, peer)
                data, source = await asyncio.wait_for(collector.received.get(), WAIT)
                elapsed = time.perf_counter() - sent
                assert (data, source[1]) == (payload, peer[1])
                assert 0.2 <= elapsed < 1.0  # 100 ms towards the peer, 100 ms back to the client
        assert active.to_peer is not None and active.to_client is not None
        assert active.to_peer.delayed == active.to_client.delayed == 5
        # Removed: the fast path is back.
        sent = time.perf_counter()
        turn.sendto(b"unimpaired", peer)
        assert (await asyncio.wait_for(collector.received.get(), WAIT))[0] == b"unimpaired"
        assert time.perf_counter() - sent < 0.2
        assert server.runtime is not None
        assert server.runtime.impairments is not None and not server.runtime.impairments.active
        assert "_send_to_client" not in vars(server.runtime)
        assert all(type(relay) is RelayEndpoint for relay in server.runtime.relays)
    finally:
        turn.close()
        peer_transport.close()
