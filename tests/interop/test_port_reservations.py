"""The relay port pool on a busy host: reservations hold their port, EVEN-PORT pairs are searched for, and 508
comes only when the range is exhausted (RFC 8656 §7.2, RFC 8656 §14.6 EVEN-PORT, §14.9 RESERVATION-TOKEN).

Other processes' sockets are simulated by sockets this test binds inside the relay range; everything is on
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    PASSWORD,
    USERNAME,
    MiniTurnClient,
    TurnRequestFailed,
    free_port,
    free_udp_port_pair,
    pyturn_process,
    run_uclient,
    turnutils_peer,
    write_config,
)

import pyturn.core.reservations
from pyturn.server import Server, ephemeral_overlap, loopback_config
from pyturn.wire.message import Attr, Method

# 2000 ports inside Linux's default ephemeral range (32768-60999), as reTurn's default relay range overlaps it:
# other sockets on the host may hold a few more of them by chance, which the tests tolerate.
RANGE_LOW = 41000
RANGE_HIGH = 42999
HELD_FRACTION = 0.10
# The measurement: coturn completes turnutils_uclient -m 100 with 30% of the range held.
HELD_FRACTIONS = [pytest.param(0.10, id="10%-held"), pytest.param(0.30, id="30%-held")]
PAIRS = 200
UCLIENT_TIMEOUT = 120.0


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        return None  # held by someone else already: it counts as held all the same
    return sock


@pytest.fixture
def held_ports(request: pytest.FixtureRequest) -> Iterator[set[int]]:
    """10% of the relay range (or the fraction the test is parametrized with), odd and even ports alike, bound by
    'other processes' (this test)."""
    fraction = getattr(request, "param", HELD_FRACTION)
    rng = random.Random(12)
    ports = set(rng.sample(range(RANGE_LOW, RANGE_HIGH + 1), int((RANGE_HIGH - RANGE_LOW + 1) * fraction)))
    sockets = [sock for sock in map(_bind, sorted(ports)) if sock is not None]
    yield ports
    for sock in sockets:
        sock.close()


def _bindable(port: int) -> bool:
    sock = _bind(port)
    if sock is None:
        return False
    sock.close()
    return True


def _config() -> object:
    return loopback_config(allocation_port_range_min=RANGE_LOW, allocation_port_range_max=RANGE_HIGH)


async def _rtp_rtcp_pair(server_address: tuple[str, int], clients: contextlib.ExitStack) -> tuple[int, int]:
    """EVEN-PORT with R, then RESERVATION-TOKEN on another 5-tuple: the relayed ports of both allocations. The
    clients stay open (in `clients`): a closed one's source port could come back as a new client's 5-tuple."""
    rtp = clients.enter_context(MiniTurnClient(server_address))
    rtcp = clients.enter_context(MiniTurnClient(server_address))
    response = await rtp.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True))
    even = response.get(Attr.XOR_RELAYED_ADDRESS)[1]
    odd = (await rtcp.allocate((Attr.RESERVATION_TOKEN, response.get(Attr.RESERVATION_TOKEN))))[1]
    return even, odd


async def test_reserved_port_is_bound_until_redeemed_then_relays(held_ports: set[int]) -> None:
    async with Server(_config(), users={USERNAME: PASSWORD}, transports=("udp",)) as server:
        address = server.addresses["udp"][0]
        with MiniTurnClient(address) as rtp:
            response = await rtp.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True))
            even = response.get(Attr.XOR_RELAYED_ADDRESS)[1]
            assert even % 2 == 0 and even not in held_ports and even + 1 not in held_ports
            # RFC 8656 §7.2: the reserved port is really held: nobody else can bind it now.
            assert not _bindable(even + 1)
            with MiniTurnClient(address) as rtcp:
                relayed = await rtcp.allocate((Attr.RESERVATION_TOKEN, response.get(Attr.RESERVATION_TOKEN)))
                assert relayed == (LOOPBACK, even + 1)
                # The socket handed over is the relay: a peer's datagram reaches the client.
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                    peer.bind((LOOPBACK, 0))
                    await rtcp.create_permission(peer.getsockname())
                    peer.sendto(b"to the reserved port", relayed)
                    data = await rtcp.receive(2.0)
                    assert b"to the reserved port" in data
            assert server._runtime is not None and not server._runtime.reserved


async def test_reserved_port_is_released_when_the_token_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyturn.core.reservations, "RESERVATION_LIFETIME", 1.0)
    async with Server(_config(), users={USERNAME: PASSWORD}, transports=("udp",)) as server:
        with MiniTurnClient(server.addresses["udp"][0]) as rtp:
            response = await rtp.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True))
            even = response.get(Attr.XOR_RELAYED_ADDRESS)[1]
            assert not _bindable(even + 1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 4.0  # lifetime 1 s, plus a tick or two
            while not _bindable(even + 1):
                assert loop.time() < deadline, "the reserved port is still held after its token expired"
                await asyncio.sleep(0.1)
            with MiniTurnClient(server.addresses["udp"][0]) as late, pytest.raises(TurnRequestFailed) as refused:
                await late.allocate((Attr.RESERVATION_TOKEN, response.get(Attr.RESERVATION_TOKEN)))
            assert refused.value.code == 508


@pytest.mark.parametrize("held_ports", HELD_FRACTIONS, indirect=True)
async def test_two_hundred_rtp_rtcp_pairs_without_508_while_other_sockets_hold_ports(held_ports: set[int]) -> None:
    """200 EVEN-PORT(R) + RESERVATION-TOKEN pairs, 10% (30%) of the range held by other sockets: not one 508."""
    async with Server(_config(), users={USERNAME: PASSWORD}, transports=("udp",)) as server:
        address = server.addresses["udp"][0]
        with contextlib.ExitStack() as clients:
            pairs = [await _rtp_rtcp_pair(address, clients) for _ in range(PAIRS)]
        assert server.allocation_count() == 2 * PAIRS
    for even, odd in pairs:
        assert even % 2 == 0 and odd == even + 1
        assert even not in held_ports and odd not in held_ports
    assert len({port for pair in pairs for port in pair}) == 2 * PAIRS


async def test_even_port_pairs_exhausted_only_when_no_free_pair_is_left() -> None:
    """A small range where every pair but one is blocked by an odd port held elsewhere: the one free pair is found,
    and the next request gets 508 (RFC 8656 §7.2: the range is exhausted)."""
    low, high = 21000, 21019  # below the ephemeral range: no socket of the host takes one by chance
    blockers = [sock for sock in (_bind(port) for port in range(low + 1, high + 1, 2) if port != 21013) if sock]
    try:
        config = loopback_config(allocation_port_range_min=low, allocation_port_range_max=high)
        async with Server(config, users={USERNAME: PASSWORD}, transports=("udp",)) as server:
            address = server.addresses["udp"][0]
            with contextlib.ExitStack() as clients:
                assert await _rtp_rtcp_pair(address, clients) == (21012, 21013)
            with MiniTurnClient(address) as client, pytest.raises(TurnRequestFailed) as refused:
                await client.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True))
            assert refused.value.code == 508
    finally:
        for sock in blockers:
            sock.close()


async def test_workers_redeem_each_others_tokens_and_the_placeholder_gets_nothing() -> None:
    """Workers (SO_REUSEPORT): a token issued by one server is redeemed by another sharing the secret; the
    redeeming relay takes the port over from the issuer's held socket, and receives the peer's datagrams."""
    secret = b"s" * 32
    issuer_config = loopback_config(allocation_port_range_min=21100, allocation_port_range_max=21199)
    redeemer_config = loopback_config(allocation_port_range_min=21200, allocation_port_range_max=21299)
    users = {USERNAME: PASSWORD}
    async with Server(issuer_config, users=users, transports=("udp",), secret=secret, reuse_port=True) as issuer, \
            Server(redeemer_config, users=users, transports=("udp",), secret=secret, reuse_port=True) as redeemer:
        with MiniTurnClient(issuer.addresses["udp"][0]) as rtp, MiniTurnClient(redeemer.addresses["udp"][0]) as rtcp:
            response = await rtp.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, True))
            even = response.get(Attr.XOR_RELAYED_ADDRESS)[1]
            assert not _bindable(even + 1)
            relayed = await rtcp.allocate((Attr.RESERVATION_TOKEN, response.get(Attr.RESERVATION_TOKEN)))
            assert relayed == (LOOPBACK, even + 1)
            assert issuer._runtime is not None and issuer._runtime.reserved  # still held until expiry
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.bind((LOOPBACK, 0))
                await rtcp.create_permission(peer.getsockname())
                for number in range(20):
                    peer.sendto(b"datagram %d" % number, relayed)
                received = [await rtcp.receive(2.0) for _ in range(20)]
            assert all(b"datagram" in data for data in received)


# ------------------------------------------------------------------------------ turnutils_uclient
@pytest.mark.interop
@pytest.mark.parametrize("held_ports", HELD_FRACTIONS, indirect=True)
def test_uclient_m100_rtp_rtcp_pairs_while_other_sockets_hold_ports(tmp_path: Path, held_ports: set[int]) -> None:
    """`turnutils_uclient -m 100` in its default mode (RTP/RTCP pairs: EVEN-PORT R, then RESERVATION-TOKEN)
    against a relay range with 10% (30%) of its ports held by other sockets: every message relayed, no 508."""
    port = free_port()
    peer_port = free_udp_port_pair()
    config = write_config(tmp_path, port, extra={
        "AllocationPortRangeMin": RANGE_LOW, "AllocationPortRangeMax": RANGE_HIGH, "UnauthenticatedRateLimit": 0,
    })
    messages, clients = 20, 100
    with turnutils_peer(peer_port), pyturn_process(config, port) as server:
        report = run_uclient([
            "-e", LOOPBACK, "-r", str(peer_port), "-u", USERNAME, "-w", PASSWORD, "-p", str(port),
            "-n", str(messages), "-m", str(clients), "-l", "170", LOOPBACK,
        ], timeout=UCLIENT_TIMEOUT)
        log = server.log()
    expected = messages * clients
    assert (report.sent, report.received, report.lost) == (expected, expected, 0), report.output[-3000:]
    # uclient prints "error 508" for a refused request; its byte and message counters can contain 508 too.
    assert not re.search(r"error[: ]+508", report.output)
    assert "Insufficient Capacity" not in log


# ------------------------------------------------------------------------------ start-up warning
def test_ephemeral_overlap_names_both_ranges(tmp_path: Path) -> None:
    source = tmp_path / "ip_local_port_range"
    source.write_text("32768\t60999\n")
    warning = ephemeral_overlap(49152, 65535, source)
    assert warning is not None and "49152-65535" in warning and "32768-60999" in warning
    assert ephemeral_overlap(10000, 29999, source) is None
    assert ephemeral_overlap(61000, 65535, source) is None
    assert ephemeral_overlap(10000, 32768, source) is not None  # one port in common is an overlap
    assert ephemeral_overlap(10000, 29999, tmp_path / "missing") is None


@pytest.mark.interop
def test_startup_warns_when_the_relay_range_overlaps_the_ephemeral_range(tmp_path: Path) -> None:
    first, last = (int(field) for field in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    port = free_port()
    overlapping = write_config(tmp_path, port, extra={"AllocationPortRangeMin": first,
                                                      "AllocationPortRangeMax": first + 999})
    with pyturn_process(overlapping, port) as server:
        log = server.log()
    assert f"{first}-{first + 999}" in log and f"{first}-{last}" in log
    outside = write_config(tmp_path, port, name="outside.config", extra={
        "AllocationPortRangeMin": 1024, "AllocationPortRangeMax": min(first - 1, 2023)})
    with pyturn_process(outside, port) as server:
        log = server.log()
    assert "ephemeral port range" not in log
