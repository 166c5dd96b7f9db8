"""Dual allocations on real sockets (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY): one Allocate over UDP gets an IPv4
and an IPv6 relay on loopback, and relays to an IPv4 and an IPv6 peer, each through the relay of its family; a
Refresh of one family (§7.3) closes that relay only. Needs the IPv6 loopback (under CI a missing one fails)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from interop import LOOPBACK, LOOPBACK_V6, EchoProtocol, MiniTurnClient, has_ipv6, start_echo_peer

from pyturn.config import Config
from pyturn.core.impairment import Impairment
from pyturn.net.relay import RelayEndpoint
from pyturn.net.shaping import ImpairedRelayEndpoint
from pyturn.server import Server
from pyturn.wire.message import Attr, Method

pytestmark = pytest.mark.requires(has_ipv6(), "this host has no IPv6 loopback")

WAIT = 5.0
ADDITIONAL_IPV6 = (Attr.ADDITIONAL_ADDRESS_FAMILY, 0x02)


@pytest.fixture
def dual_config(loopback_config: Config) -> Config:
    return loopback_config.replace(turn_v6_address=LOOPBACK_V6)


@pytest.mark.parametrize("listener", [LOOPBACK, LOOPBACK_V6], ids=["ipv4-client", "ipv6-client"])
async def test_dual_allocation_relays_to_peers_of_both_families(dual_config: Config, listener: str) -> None:
    v4_transport, v4_peer = await start_echo_peer(LOOPBACK)
    v6_transport, v6_peer = await start_echo_peer(LOOPBACK_V6)
    v4_address = v4_transport.get_extra_info("sockname")[:2]
    v6_address = v6_transport.get_extra_info("sockname")[:2]
    try:
        async with Server(dual_config, users={"alice": "secret"}) as server:
            address = next(a for a in server.addresses["udp"] if (":" in a[0]) == (":" in listener))
            with MiniTurnClient(address, "alice", "secret") as client:
                response = await asyncio.wait_for(
                    client.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), ADDITIONAL_IPV6), WAIT
                )
                relayed_v4, relayed_v6 = response.get_all(Attr.XOR_RELAYED_ADDRESS)
                assert relayed_v4[0] == LOOPBACK and relayed_v6[0] == LOOPBACK_V6
                assert not response.has(Attr.ADDRESS_ERROR_CODE)
                await asyncio.wait_for(client.channel_bind(0x4000, v4_address), WAIT)
                await asyncio.wait_for(client.channel_bind(0x4001, v6_address), WAIT)
                await client.send_channel_data(0x4000, b"over ipv4")
                assert await client.receive_payload(WAIT) == b"over ipv4"
                await client.send_channel_data(0x4001, b"over ipv6")
                assert await client.receive_payload(WAIT) == b"over ipv6"
                assert v4_peer.seen == [(b"over ipv4", relayed_v4)]
                assert v6_peer.seen[0][0] == b"over ipv6" and v6_peer.seen[0][1][:2] == relayed_v6
                # Drop the IPv6 relay alone (RFC 8656 §7.3); IPv4 goes on.
                deleted = await asyncio.wait_for(
                    client.request(Method.REFRESH, (Attr.LIFETIME, 0), (Attr.REQUESTED_ADDRESS_FAMILY, 0x02)), WAIT
                )
                assert deleted.get(Attr.LIFETIME) == 0
                assert server.allocation_count() == 1
                await client.send_channel_data(0x4000, b"still ipv4")
                assert await client.receive_payload(WAIT) == b"still ipv4"
                assert await asyncio.wait_for(client.refresh(0), WAIT) == 0
            assert server.allocation_count() == 0
    finally:
        v4_transport.close()
        v6_transport.close()


async def test_dual_allocation_without_ipv6_relays_gets_address_error_code(loopback_config: Config) -> None:
    # No IPv6 listener address and an IPv6 relay address that cannot be bound: IPv4 alone, ADDRESS-ERROR-CODE.
    config = loopback_config.replace(relay_v6_address="2001:db8::1")
    async with Server(config, users={"alice": "secret"}) as server:
        with MiniTurnClient(server.addresses["udp"][0], "alice", "secret") as client:
            response = await asyncio.wait_for(
                client.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), ADDITIONAL_IPV6), WAIT
            )
            assert len(response.get_all(Attr.XOR_RELAYED_ADDRESS)) == 1
            family, code, _ = response.get(Attr.ADDRESS_ERROR_CODE)
            assert (family, code) in ((0x02, 440), (0x02, 508))
            assert await asyncio.wait_for(client.refresh(0), WAIT) == 0



@contextlib.asynccontextmanager
async def dual_session(config: Config) -> AsyncIterator[tuple[Server, MiniTurnClient, EchoProtocol, EchoProtocol]]:
    """A server, and a client with a dual allocation on it whose channel 0x4000 goes to an IPv4 echo peer and
    0x4001 to an IPv6 one; the allocation is deleted (Refresh 0) on the way out."""
    v4_transport, v4_peer = await start_echo_peer(LOOPBACK)
    v6_transport, v6_peer = await start_echo_peer(LOOPBACK_V6)
    try:
        async with Server(config, users={"alice": "secret"}) as server:
            with MiniTurnClient(server.addresses["udp"][0], "alice", "secret") as client:
                response = await asyncio.wait_for(
                    client.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), ADDITIONAL_IPV6), WAIT
                )
                assert len(response.get_all(Attr.XOR_RELAYED_ADDRESS)) == 2
                await asyncio.wait_for(client.channel_bind(0x4000, v4_transport.get_extra_info("sockname")[:2]), WAIT)
                await asyncio.wait_for(client.channel_bind(0x4001, v6_transport.get_extra_info("sockname")[:2]), WAIT)
                yield server, client, v4_peer, v6_peer
                assert await asyncio.wait_for(client.refresh(0), WAIT) == 0
    finally:
        v4_transport.close()
        v6_transport.close()


async def test_dual_allocation_deleted_reports_the_bytes_of_both_relays(dual_config: Config) -> None:
    async with dual_session(dual_config) as (server, client, _, _):
        await client.send_channel_data(0x4000, b"over ipv4")  # 9 bytes
        assert await client.receive_payload(WAIT) == b"over ipv4"
        await client.send_channel_data(0x4001, b"over ipv6, longer")  # 17 bytes
        assert await client.receive_payload(WAIT) == b"over ipv6, longer"
    ended = server.ended_allocations
    assert len(ended) == 1
    assert (ended[0].bytes_to_peer, ended[0].bytes_to_client) == (26, 26)


async def test_dual_allocation_shares_one_bandwidth_cap(dual_config: Config) -> None:
    """MaxBandwidthPerAllocation 20 000 B/s: 40 kB offered within about 0.1 s, half through each relay. One
    bucket for the allocation lets about 20 kB (its burst plus a little refill) through, not 40 kB."""
    payload = bytes(500)
    config = dual_config.replace(max_bandwidth_per_allocation=20_000)
    async with dual_session(config) as (_, client, v4_peer, v6_peer):
        started = time.monotonic()
        for _ in range(10):  # 10 bursts of 4 + 4 datagrams: 40 000 bytes
            for _ in range(4):
                await client.send_channel_data(0x4000, payload)
                await client.send_channel_data(0x4001, payload)
            await asyncio.sleep(0.005)
        sending = time.monotonic() - started
        await asyncio.sleep(0.3)
        through_v4 = sum(len(data) for data, _ in v4_peer.seen)
        through_v6 = sum(len(data) for data, _ in v6_peer.seen)
        assert through_v4 > 0 and through_v6 > 0
        # One bucket passes its burst (one second of the cap) plus what it refills while the datagrams arrive; one
        # bucket per relay would pass all 40 000 bytes. Bounded by the measured sending time, not by a guess of it.
        assert 10_000 <= through_v4 + through_v6 <= 20_000 + 20_000 * (sending + 0.3) + 1_000, (
            through_v4, through_v6, sending)


async def test_dual_allocation_impairment_covers_both_relays(dual_config: Config) -> None:
    async with dual_session(dual_config) as (server, client, v4_peer, v6_peer):
        runtime = server.runtime
        assert runtime is not None and len(runtime.relays) == 2
        server.impair(Impairment(loss=1.0), direction="to_peer")
        assert all(type(relay) is ImpairedRelayEndpoint for relay in runtime.relays)
        await client.send_channel_data(0x4000, b"lost over ipv4")
        await client.send_channel_data(0x4001, b"lost over ipv6")
        await asyncio.sleep(0.3)
        assert (v4_peer.seen, v6_peer.seen) == ([], [])
        # Lifted: both relays are plain again and relay.
        server.impair(None)
        assert all(type(relay) is RelayEndpoint for relay in runtime.relays)
        await client.send_channel_data(0x4001, b"over ipv6")
        assert await client.receive_payload(WAIT) == b"over ipv6"
        # A dual allocation created while an impairment is in force gets it on both relays.
        server.impair(Impairment(loss=1.0), direction="to_peer")
        with MiniTurnClient(server.addresses["udp"][0], "alice", "secret") as later:
            response = await asyncio.wait_for(
                later.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), ADDITIONAL_IPV6), WAIT
            )
            assert len(response.get_all(Attr.XOR_RELAYED_ADDRESS)) == 2
            assert len(runtime.relays) == 4
            assert all(type(relay) is ImpairedRelayEndpoint for relay in runtime.relays)
            assert await asyncio.wait_for(later.refresh(0), WAIT) == 0
        server.impair(None)
