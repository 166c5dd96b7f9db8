"""TURN over UDP end to end: aioice and coturn's turnutils_uclient relaying through pyturn to real UDP peers."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from interop import (
    LOOPBACK,
    LOOPBACK_V6,
    PASSWORD,
    USERNAME,
    MiniTurnClient,
    PyturnProcess,
    TurnRequestFailed,
    UclientReport,
    aioice_udp_client,
    free_port,
    free_udp_port_pair,
    has_ipv6,
    open_fd_count,
    parse_uclient,
    python_module_available,
    pyturn_process,
    require_tool,
    run_uclient,
    start_echo_peer,
    turnutils_peer,
    write_config,
)
from requirements import require

from pyturn.config import Config
from pyturn.server import Server

pytestmark = pytest.mark.interop

IO_TIMEOUT = 5.0
UCLIENT_MESSAGES = 1000
UCLIENT_CLIENTS = 10
UCLIENT_TIMEOUT = 90.0


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait((repr(exc).encode(), ("error", 0)))


def _server_address(server: Server) -> tuple[str, int]:
    host, port = server.addresses["udp"][0]
    return host, port


# --------------------------------------------------------------------------------------------- aioice
async def test_interop_aioice_channel_relays_to_echo_peer(inprocess_server: Server) -> None:
    python_module_available("aioice")
    from aioice.turn import create_turn_endpoint

    peer_transport, peer = await start_echo_peer()
    peer_address = peer_transport.get_extra_info("sockname")
    turn, collector = await asyncio.wait_for(
        create_turn_endpoint(_Collector, server_addr=_server_address(inprocess_server), username=USERNAME,
                             password=PASSWORD, lifetime=600, channel_refresh_time=1),
        IO_TIMEOUT,
    )
    try:
        relayed = turn.get_extra_info("sockname")
        assert relayed[0] == LOOPBACK
        turn.sendto(b"first over a channel", peer_address)
        data, source = await asyncio.wait_for(collector.queue.get(), IO_TIMEOUT)
        assert (data, source) == (b"first over a channel", peer_address)
        assert peer.seen[0][1] == relayed  # the peer saw the relayed transport address
        # channel_refresh_time=1: the next send after a second re-binds the same channel (a ChannelBind refresh).
        assert inprocess_server.core is not None
        allocation = next(iter(inprocess_server.core.allocations.values()))
        ((channel, binding),) = allocation.channels.items()
        bound_until = binding.expires
        await asyncio.sleep(1.1)
        turn.sendto(b"after the channel refresh", peer_address)
        data, source = await asyncio.wait_for(collector.queue.get(), IO_TIMEOUT)
        assert (data, source) == (b"after the channel refresh", peer_address)
        await _wait_until(lambda: binding.expires > bound_until)  # the refresh reached the server ...
        assert allocation.channels == {channel: binding}  # ... for the same channel and peer
        assert inprocess_server.allocation_count() == 1
    finally:
        turn.close()
        peer_transport.close()
    await _wait_until(lambda: inprocess_server.allocation_count() == 0)


async def test_interop_aioice_send_indication_relays_to_echo_peer(inprocess_server: Server) -> None:
    python_module_available("aioice")
    from aioice import stun
    from aioice.turn import TurnClientUdpProtocol

    data_indications: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class DataIndicationClient(TurnClientUdpProtocol):
        # aioice hands a Data indication on only for peers it bound a channel to; catch them all here.
        def datagram_received(self, data: bytes | str, addr: tuple[str, int]) -> None:
            assert isinstance(data, bytes)
            if len(data) >= 20 and data[0] & 0xC0 == 0:
                message = stun.parse_message(data)
                if message.message_method == stun.Method.DATA and message.message_class == stun.Class.INDICATION:
                    data_indications.put_nowait((message.attributes["DATA"], message.attributes["XOR-PEER-ADDRESS"]))
                    return
            super().datagram_received(data, addr)

    server_address = _server_address(inprocess_server)
    peer_transport, peer = await start_echo_peer()
    peer_address = peer_transport.get_extra_info("sockname")
    transport, client = await aioice_udp_client(DataIndicationClient, server_address)
    try:
        relayed = await asyncio.wait_for(client.connect(), IO_TIMEOUT)
        permission = stun.Message(message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST)
        permission.attributes["XOR-PEER-ADDRESS"] = peer_address
        await asyncio.wait_for(client.request_with_retry(permission), IO_TIMEOUT)
        send = stun.Message(message_method=stun.Method.SEND, message_class=stun.Class.INDICATION)
        send.attributes["XOR-PEER-ADDRESS"] = peer_address
        send.attributes["DATA"] = b"over a Send indication"
        client.send_stun(send, server_address)
        data, source = await asyncio.wait_for(data_indications.get(), IO_TIMEOUT)
        assert (data, source) == (b"over a Send indication", peer_address)
        assert peer.seen == [(b"over a Send indication", relayed)]
        await asyncio.wait_for(client.delete(), IO_TIMEOUT)
    finally:
        transport.close()
        peer_transport.close()
    assert inprocess_server.allocation_count() == 0


async def _wait_until(condition: Any, timeout: float = IO_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------------- resource hygiene
async def test_interop_allocate_and_delete_cycles_leave_no_socket_open(inprocess_server: Server) -> None:
    server_address = _server_address(inprocess_server)
    with MiniTurnClient(server_address) as client:
        await client.allocate()
        assert await client.refresh(0) == 0  # warm-up: caches, lazy imports, the nonce
        fds_before = open_fd_count()
        relays = set()
        for _ in range(1000):
            relays.add(await client.allocate(lifetime=600))
            assert await client.refresh(0) == 0
        fds_after = open_fd_count()
    assert inprocess_server.allocation_count() == 0
    assert fds_after == fds_before, f"{fds_after - fds_before} descriptors leaked over 1000 allocations"
    assert len(relays) > 1  # relay ports are drawn at random, not one port reused


async def test_interop_relay_port_held_by_another_socket_is_skipped(loopback_config: Config) -> None:
    # A foreign socket with SO_REUSEADDR on the only even port of the range: pyturn must not share that port.
    for _ in range(100):
        low = free_udp_port_pair()
        if low % 2 == 0:
            break
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((LOOPBACK, low))
        config = loopback_config.replace(allocation_port_range_min=low, allocation_port_range_max=low + 1)
        async with Server(config, users={USERNAME: PASSWORD}) as server:
            with MiniTurnClient(_server_address(server)) as client:
                try:
                    relayed = await client.allocate()
                except TurnRequestFailed as failure:
                    assert failure.code == 508  # the range is exhausted: acceptable, sharing is not
                else:
                    assert relayed == (LOOPBACK, low + 1)


# --------------------------------------------------------------------------------- turnutils_uclient
@pytest.fixture(scope="module")
def uclient_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PyturnProcess, int]]:
    require_tool("turnutils_uclient")
    directory: Path = tmp_path_factory.mktemp("uclient")
    port = free_port()
    peer_port = free_udp_port_pair()
    config = write_config(directory, port)
    with turnutils_peer(peer_port), pyturn_process(config, port) as server:
        yield server, peer_port


UCLIENT_MODES = [
    pytest.param([], id="channels-even-port-reservation"),
    pytest.param(["-s"], id="send-indications"),
    pytest.param(["-g", "-X"], id="dont-fragment"),
    pytest.param(["-s", "-g", "-X"], id="send-indications-dont-fragment"),
]


@pytest.mark.parametrize("flags", UCLIENT_MODES)
def test_interop_uclient_relays_every_message(uclient_setup: tuple[PyturnProcess, int], flags: list[str]) -> None:
    server, peer_port = uclient_setup
    started = time.monotonic()
    report = run_uclient([
        *flags, "-e", LOOPBACK, "-r", str(peer_port), "-u", USERNAME, "-w", PASSWORD, "-p", str(server.port),
        "-n", str(UCLIENT_MESSAGES), "-m", str(UCLIENT_CLIENTS), "-l", "170", LOOPBACK,
    ], timeout=UCLIENT_TIMEOUT)
    _print_report(flags, report, time.monotonic() - started)
    # turnutils_uclient 4.6.1 with a peer: -m counts sessions (RTP and RTCP allocations in pairs, rounded up to
    # even); every session sends -n messages. So 10 x 1000 here (coturn's docs' "x2" is the -y c2c case).
    expected = UCLIENT_MESSAGES * (UCLIENT_CLIENTS + UCLIENT_CLIENTS % 2)
    assert (report.sent, report.received, report.lost) == (expected, expected, 0), report.output[-3000:]
    assert report.send_dropped == 0
    assert report.lost_percent == 0.0


def test_interop_uclient_ipv6_relays_keep_their_family_across_the_reservation(
    uclient_setup: tuple[PyturnProcess, int],
) -> None:
    # -x asks for IPv6 relays (RFC 6156 REQUESTED-ADDRESS-FAMILY) from the IPv4 listener; the RTCP allocation
    # presents only the RESERVATION-TOKEN and must still get an IPv6 relay (RFC 8656 §7.2).
    require(has_ipv6(), "no IPv6 loopback on this host")
    server, peer_port = uclient_setup
    report = run_uclient([
        "-x", "-e", LOOPBACK_V6, "-r", str(peer_port), "-u", USERNAME, "-w", PASSWORD, "-p", str(server.port),
        "-n", "100", "-m", "2", "-l", "170", LOOPBACK,
    ], timeout=UCLIENT_TIMEOUT)
    assert report.sent == report.received == 2 * 100
    assert report.lost == 0


def test_interop_uclient_rtcp_allocation_uses_reservation_token(uclient_setup: tuple[PyturnProcess, int]) -> None:
    server, peer_port = uclient_setup
    tool = require_tool("turnutils_uclient")
    completed = subprocess.run(
        [tool, "-v", "-e", LOOPBACK, "-r", str(peer_port), "-u", USERNAME, "-w", PASSWORD, "-p", str(server.port),
         "-n", "5", "-m", "2", "-l", "100", LOOPBACK],
        capture_output=True, text=True, timeout=UCLIENT_TIMEOUT,
    )
    output = completed.stdout + completed.stderr
    # -v prints each relayed address and "clnet_allocate: rtv=<token>" (nonzero: EVEN-PORT R=1 got a token). The
    # lines of several clients may interleave, so ports and tokens are collected separately.
    relayed_ports = {int(port) for port in re.findall(r"Received relay addr: 127\.0\.0\.1:(\d+)", output)}
    tokens = [int(token) for token in re.findall(r"clnet_allocate: rtv=(\d+)", output)]
    # 4.6.1 per pair: a token-only Allocate (R=1), the RTCP Allocate redeeming that token on the next port,
    # then the RTP Allocate (R=1 again; its token goes unused).
    assert any(tokens), output
    redeemed = [port for port in relayed_ports if port % 2 == 0 and port + 1 in relayed_ports]
    assert redeemed, output  # an even port (RFC 8656 §14.6) whose RESERVATION-TOKEN was redeemed on port+1
    assert parse_uclient(output).lost == 0


def _print_report(flags: list[str], report: UclientReport, wall: float) -> None:
    print(f"turnutils_uclient {' '.join(flags) or '(channels)'}: sent={report.sent} recv={report.received} "
          f"lost={report.lost} ({report.lost_percent}%) dropped={report.send_dropped} rtt avg={report.rtt_avg_ms} "
          f"min={report.rtt_min_ms} max={report.rtt_max_ms} ms transmit={report.transmit_seconds}s wall={wall:.1f}s")


