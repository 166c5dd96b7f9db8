"""Resource exhaustion (docs/security.md cases 34-40).

Connection caps and the file-descriptor limit are tested against real servers: in-process for the caps, and in a
subprocess whose RLIMIT_NOFILE is lowered (preexec_fn) for the fd limit, under both the CLI (uvloop) and the
library on plain asyncio. Quotas and tables are tested through the sans-IO core; the bandwidth cap and the logs
under a flood through an in-process server. Everything runs on 127.0.0.1 with bounded waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from interop import (
    LOOPBACK,
    PASSWORD,
    USERNAME,
    MiniTurnClient,
    TurnRequestFailed,
    free_port,
    start_echo_peer,
    stop_process,
    udp_binding,
    wait_for_binding,
    write_config,
)
from turnclient import Harness, TurnClient, make_config

from pyturn.config import Config
from pyturn.net.limits import FD_RESERVE, FDS_PER_STREAM, derived_stream_limit, socket_budget, stream_limit
from pyturn.server import Server
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Attr, Message, MessageClass, Method

WAIT = 5.0
PEER = ("198.51.100.7", 5000)


# ------------------------------------------------------------------------------------ the derived cap
@pytest.mark.parametrize(
    ("soft_limit", "budget", "cap"),
    [(1024, 896, 448), (4096, 3968, 1984), (256, 128, 64), (128, 32, 16), (10, 32, 16),
     (1_048_576, 1_048_448, 524_224), (resource.RLIM_INFINITY, 0, 0)],
    ids=["1024", "4096", "256", "128-floor", "10-floor", "1M", "unlimited"],
)
def test_security_derived_stream_limit_formula(soft_limit: int, budget: int, cap: int) -> None:
    assert socket_budget(soft_limit) == budget
    assert derived_stream_limit(soft_limit) == cap
    if budget > 32:
        assert budget == soft_limit - FD_RESERVE and cap == budget // FDS_PER_STREAM


def test_security_stream_limit_configured_value_wins_else_fd_limit() -> None:
    assert stream_limit(7) == 7
    assert stream_limit(0) == derived_stream_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


# ------------------------------------------------------------------------------- in-process connection caps
async def _connect(address: tuple[str, int], source: str = LOOPBACK) -> tuple[asyncio.StreamReader,
                                                                              asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(*address, local_addr=(source, 0)), WAIT)


async def _served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """True when a Binding on this connection is answered; False when the server closed it."""
    tid = os.urandom(12)
    try:
        writer.write(encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid)))
        await writer.drain()
        head = await asyncio.wait_for(reader.readexactly(20), WAIT)
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[2:4], "big")), WAIT)
    return decode_message(head + body).transaction_id == tid


async def _udp_answers(address: tuple[str, int]) -> bool:
    """A Binding over UDP to an in-process server (the blocking helper would stall the server's own loop)."""
    loop = asyncio.get_running_loop()
    tid = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((LOOPBACK, 0))
        await loop.sock_sendto(sock, encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid)), address)
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), WAIT)
        except TimeoutError:
            return False
    return decode_message(data).transaction_id == tid


def _refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "refused" in record.getMessage()]


async def test_security_tcp_connections_per_source_capped(
    loopback_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    config = loopback_config.replace(max_tcp_connections_per_source=2)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        address = server.addresses["tcp"][0]
        with caplog.at_level(logging.INFO, logger="pyturn"):
            kept = [await _connect(address) for _ in range(2)]
            assert all([await _served(*connection) for connection in kept])
            refused = [await _connect(address) for _ in range(6)]
            assert not any([await _served(*connection) for connection in refused])
            # Another source has its own budget; UDP is untouched.
            other = await _connect(address, source="127.0.0.2")
            assert await _served(*other)
            assert await _udp_answers(server.addresses["udp"][0])
            # A slot freed is a slot available again.
            kept[0][1].close()
            await asyncio.sleep(0.1)
            again = await _connect(address)
            assert await _served(*again)
        assert server._runtime is not None and server._runtime.refused_streams == 6
        assert len(_refusal_lines(caplog)) == 1  # one line per interval, not one per connection
        for _, writer in [*kept[1:], *refused, other, again]:
            writer.close()


async def test_security_tcp_connections_total_capped(loopback_config: Config) -> None:
    config = loopback_config.replace(max_tcp_connections=3)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        address = server.addresses["tcp"][0]
        kept = [await _connect(address, source=f"127.0.0.{n}") for n in (1, 2, 3)]
        assert all([await _served(*connection) for connection in kept])
        assert not await _served(*await _connect(address, source="127.0.0.4"))
        assert await _udp_answers(server.addresses["udp"][0])
        assert server._runtime is not None
        assert server._runtime.streams_per_source == {"127.0.0.1": 1, "127.0.0.2": 1, "127.0.0.3": 1}
        for _, writer in kept:
            writer.close()
        await asyncio.sleep(0.1)
        assert server._runtime.streams_per_source == {}


async def test_security_refused_connection_creates_no_state(loopback_config: Config) -> None:
    config = loopback_config.replace(max_tcp_connections_per_source=1)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        address = server.addresses["tcp"][0]
        first = await _connect(address)
        assert await _served(*first)
        for _ in range(20):
            _reader, writer = await _connect(address)
            writer.write(encode_message(Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12),
                                                [(Attr.REQUESTED_TRANSPORT, 17)])))
            writer.close()
        await asyncio.sleep(0.1)
        assert server._runtime is not None
        assert len(server._runtime.streams) == 1
        assert server._runtime.streams_per_source == {"127.0.0.1": 1}
        first[1].close()


# TcpAuthTimeout (case 35) is tested in tests/interop/test_interop_tcp_tls.py:
# test_stream_without_allocation_closed_after_auth_timeout and test_stream_with_allocation_outlives_auth_timeout.


# ------------------------------------------------------------------------------- fd limit, in a subprocess
LIBRARY_SERVER = """
import asyncio, sys
from pyturn.server import Server, loopback_config

async def main() -> None:
    config = loopback_config(turn_port=int(sys.argv[1]), max_tcp_connections=int(sys.argv[2]), tcp_auth_timeout=60)
    async with Server(config, users={sys.argv[3]: sys.argv[4]}):
        await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.contextmanager
def limited_server(tmp_path: Path, launcher: str, soft_limit: int, max_tcp: int) -> Iterator[tuple[int, Any, Path]]:
    """A pyturn server process with RLIMIT_NOFILE lowered to soft_limit; yields (port, process, log path)."""
    port = free_port(ipv6=False)
    log_path = tmp_path / "server.log"
    if launcher == "cli-uvloop":
        config = write_config(tmp_path, port, extra={"TurnV6Address": "", "MaxTcpConnections": max_tcp,
                                                     "TcpAuthTimeout": 60, "LogLevel": "INFO"})
        command = [sys.executable, "-m", "pyturn", "-c", str(config)]
    else:
        command = [sys.executable, "-c", LIBRARY_SERVER, str(port), str(max_tcp), USERNAME, PASSWORD]

    def lower_limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard))

    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   preexec_fn=lower_limit)
    try:
        wait_for_binding(LOOPBACK, port, WAIT, process)
        yield port, process, log_path
    finally:
        stop_process(process)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _open_connections(port: int, count: int) -> list[socket.socket]:
    connections = []
    for _ in range(count):
        try:
            connections.append(socket.create_connection((LOOPBACK, port), timeout=2.0))
        except OSError:
            break  # the listen backlog is full: the kernel refuses, which is refusal too
    return connections


def _still_open(connections: list[socket.socket]) -> int:
    """How many connections the server has neither closed nor reset (after a moment to settle)."""
    open_count = 0
    for connection in connections:
        connection.setblocking(False)
        try:
            if connection.recv(1) != b"":
                open_count += 1
        except BlockingIOError:
            open_count += 1
        except OSError:
            pass
    return open_count


def _idle_while_saturated(pid: int) -> None:
    """Not spinning: under 30 % of one CPU over a second while the connections stay open."""
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    before = _cpu_ticks(pid)
    time.sleep(1.0)
    assert _cpu_ticks(pid) - before < 0.3 * ticks_per_second


LAUNCHERS = [pytest.param("cli-uvloop", id="cli-uvloop"), pytest.param("library-asyncio", id="library-asyncio")]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_security_fd_limit_derives_the_cap_and_keeps_udp(tmp_path: Path, launcher: str) -> None:
    """Case 40: soft RLIMIT_NOFILE 256 -> MaxTcpConnections 0 means (256 - 128) // 2 = 64 connections."""
    with limited_server(tmp_path, launcher, 256, 0) as (port, process, log_path):
        connections = _open_connections(port, 150)
        try:
            time.sleep(0.5)
            kept = _still_open(connections)
            assert kept == derived_stream_limit(256) == 64
            assert udp_binding(LOOPBACK, port, timeout=2.0) is not None
            _idle_while_saturated(process.pid)
            assert process.poll() is None
        finally:
            for connection in connections:
                connection.close()
        time.sleep(0.3)
        with socket.create_connection((LOOPBACK, port), timeout=2.0) as again:
            again.sendall(encode_message(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))))
            again.settimeout(2.0)
            assert len(again.recv(2048)) >= 20
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if "refused" in line]
        assert 1 <= len(lines) <= 2, lines


async def _refuses_while_saturated_then_recovers(
    port: int, process: Any, log_path: Path, count: int, saturated: Callable[[list[socket.socket]], None],
    *, recovery: float,
) -> None:
    """Open `count` TCP connections; while they stand `saturated` holds, UDP Binding is answered, an Allocate gets
    508 and the process idles. Once they are gone (and `recovery` seconds) an Allocate succeeds, the process
    lives, and its log holds no traceback and no flood."""
    connections = _open_connections(port, count)
    try:
        await asyncio.sleep(0.5)
        saturated(connections)
        assert udp_binding(LOOPBACK, port, timeout=2.0) is not None
        with MiniTurnClient((LOOPBACK, port)) as client:
            with pytest.raises(TurnRequestFailed) as refused:
                await client.allocate()
            assert refused.value.code == 508
        await asyncio.to_thread(_idle_while_saturated, process.pid)
        assert process.poll() is None
    finally:
        for connection in connections:
            connection.close()
    await asyncio.sleep(recovery)
    with MiniTurnClient((LOOPBACK, port)) as client:
        relayed = await client.allocate()
        assert relayed[1] > 0
    assert process.poll() is None
    log_text = log_path.read_text(errors="replace")
    assert "Traceback" not in log_text
    assert len(log_text.splitlines()) < 20, log_text  # one refusal line per interval, not one per connection


@pytest.mark.parametrize("launcher", LAUNCHERS)
async def test_security_fd_budget_beats_a_cap_set_too_high(tmp_path: Path, launcher: str) -> None:
    """MaxTcpConnections 1000 under a soft limit of 256: the fd budget (256 - 128 sockets) refuses connections and
    relay sockets (508) before the process reaches EMFILE; UDP Binding is answered; everything recovers."""
    with limited_server(tmp_path, launcher, 256, 1000) as (port, process, log_path):

        def within_budget(connections: list[socket.socket]) -> None:
            assert _still_open(connections) == socket_budget(256) == 128
            assert len(os.listdir(f"/proc/{process.pid}/fd")) < 256

        await _refuses_while_saturated_then_recovers(port, process, log_path, 200, within_budget, recovery=0.3)


async def test_security_real_emfile_at_accept_under_uvloop(tmp_path: Path) -> None:
    """The process really out of descriptors (soft limit 40: the 32-socket floor is more than it has): libuv
    accepts and closes what it cannot hold, silently and without spinning; UDP keeps serving; a relay bind that
    fails with EMFILE is a 508; all recovers once the connections go."""
    with limited_server(tmp_path, "cli-uvloop", 40, 1000) as (port, process, log_path):

        def out_of_descriptors(connections: list[socket.socket]) -> None:
            assert len(os.listdir(f"/proc/{process.pid}/fd")) >= 39  # the limit is really reached

        await _refuses_while_saturated_then_recovers(port, process, log_path, 100, out_of_descriptors, recovery=0.5)


async def test_security_relay_bind_emfile_is_508_logged_once(
    loopback_config: Config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pyturn.net.runtime

    def out_of_descriptors(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        monkeypatch.setattr(pyturn.net.runtime, "bind_udp", out_of_descriptors)
        with caplog.at_level(logging.INFO, logger="pyturn"):
            for _ in range(10):
                with MiniTurnClient(server.addresses["udp"][0]) as client:
                    with pytest.raises(TurnRequestFailed) as refused:
                        await client.allocate()
                    assert refused.value.code == 508
            assert await _udp_answers(server.addresses["udp"][0])
        assert server.allocation_count() == 0
        warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "508" in warnings[0].getMessage()


# ------------------------------------------------------------------------------------------- quotas (core)
def _allocate(harness: Harness, client: TurnClient) -> int | None:
    return client.allocate().error_code


def test_security_quota_per_user_486_total_508() -> None:
    harness = Harness(make_config(max_allocations_per_user=2, max_allocations=3))
    alice = [harness.client("alice", client=(f"203.0.113.{n}", 4000)) for n in range(1, 4)]
    assert [_allocate(harness, c) for c in alice] == [None, None, 486]
    bob = [harness.client("bob", client=(f"203.0.113.{n}", 5000)) for n in range(1, 3)]
    assert [_allocate(harness, c) for c in bob] == [None, 508]  # RFC 8656 §7.2: server-wide capacity


def test_security_ports_freed_after_refresh_zero_and_after_expiry() -> None:
    # Case 34 (coturn#1568): with a one-port range, 508 until the port is free again, both ways.
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50000))
    first = harness.client("alice", client=("203.0.113.1", 4000))
    second = harness.client("bob", client=("203.0.113.2", 4000))
    third = harness.client("alice", client=("203.0.113.3", 4000))
    assert _allocate(harness, first) is None
    assert _allocate(harness, second) == 508
    assert first.refresh(0).response.msg_class is MessageClass.SUCCESS
    assert _allocate(harness, second) is None
    assert _allocate(harness, third) == 508
    harness.advance(harness.config.default_allocation_lifetime + 1)
    harness.tick()
    assert not harness.core.allocations
    assert _allocate(harness, third) is None


def test_security_permission_cap_508_and_whole_request_refused() -> None:
    harness = Harness(make_config(max_permissions_per_allocation=3))
    client = harness.client()
    client.allocate()
    peers = [(f"198.51.100.{n}", 5000) for n in range(1, 5)]
    assert client.create_permission(*peers[:3]).error_code is None
    assert client.create_permission(peers[3]).error_code == 508
    assert client.create_permission(peers[0]).error_code is None  # refreshing an existing one is fine
    assert client.channel_bind(0x4000, peers[3]).error_code == 508  # a channel would add a fourth permission
    assert len(client.allocation.permissions) == 3


def test_security_channel_cap_508() -> None:
    harness = Harness(make_config(max_channels_per_allocation=2))
    client = harness.client()
    client.allocate()
    assert client.channel_bind(0x4000, ("198.51.100.1", 1)).error_code is None
    assert client.channel_bind(0x4001, ("198.51.100.2", 1)).error_code is None
    assert client.channel_bind(0x4002, ("198.51.100.3", 1)).error_code == 508
    assert client.channel_bind(0x4000, ("198.51.100.1", 1)).error_code is None  # a refresh is no new channel
    assert len(client.allocation.channels) == 2


def test_security_core_state_returns_to_empty_after_churn() -> None:
    # Case 37 at the protocol level: 5,000 allocate / permission / channel / delete cycles leave nothing behind.
    # (Process RSS after many server starts: tests/net/test_server_leaks.py; long runs: benchmarks/soak.py.)
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50009))
    for n in range(5000):
        client = harness.client("alice" if n % 2 else "bob", client=(f"203.0.{n // 250}.{n % 250 + 1}", 4000))
        assert client.allocate().error_code is None
        client.channel_bind(0x4000 + n % 100, PEER)
        assert client.refresh(0).response.msg_class is MessageClass.SUCCESS
        harness.advance(0.01)
    harness.advance(3600)
    harness.tick()
    core = harness.core
    assert not core.allocations and not core.state.by_handle and not core.state.per_user and not core.state.pending
    assert len(core.state.deadlines) == 0
    assert all(not table for table in core.route_table.listeners())
    assert core.ports.in_use == 0


# ------------------------------------------------------------------------------------ bandwidth (in-process)
async def test_security_bandwidth_cap_drops_the_excess(loopback_config: Config) -> None:
    """Case 38: 10x MaxBandwidthPerAllocation offered for a second; what reaches the peer is about the cap
    (one second's burst plus one second's refill at most), and the rest is dropped, not queued."""
    cap = 20_000
    payload = bytes(500)
    config = loopback_config.replace(max_bandwidth_per_allocation=cap)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        transport, echo = await start_echo_peer()
        try:
            peer = transport.get_extra_info("sockname")[:2]
            with MiniTurnClient(server.addresses["udp"][0]) as client:
                await client.allocate()
                await client.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS,
                                                                                          peer))
                loop = asyncio.get_running_loop()
                frame = (0x4000).to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload
                offered = 0
                for _ in range(20):  # 20 bursts of 20 datagrams over one second: 200 kB = 10x the cap
                    for _ in range(20):
                        await loop.sock_sendto(client.sock, frame, client.server)
                        offered += len(payload)
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                arrived = sum(len(data) for data, _ in echo.seen)
                assert offered == 10 * cap
                assert 0.5 * cap <= arrived <= 2 * cap + len(payload), arrived
                # Nothing queued: a second later nothing more shows up at the peer.
                await asyncio.sleep(0.5)
                assert sum(len(data) for data, _ in echo.seen) == arrived
        finally:
            transport.close()


# ------------------------------------------------------------------------------------- logs under a flood
async def test_security_logs_bounded_under_unauthenticated_flood(
    loopback_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """Case 39: 1,000 bad requests (unauthenticated, forged, malformed, wrong password) -> no per-packet lines."""
    config = loopback_config.replace(unauthenticated_rate_limit=10)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        address = server.addresses["udp"][0]
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((LOOPBACK, 0))
        garbage = [
            encode_message(Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12),
                                   [(Attr.REQUESTED_TRANSPORT, 17)])),
            encode_message(Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12),
                                   [(Attr.REQUESTED_TRANSPORT, 17), (Attr.USERNAME, USERNAME),
                                    (Attr.REALM, "reTurn"), (Attr.NONCE, "AAAAAAAAAAAAAAAA")]),
                           integrity_key=b"wrong"),
            encode_message(Message(Method.REFRESH, MessageClass.REQUEST, os.urandom(12))),
            bytes(40),
            b"\xff" * 100,
        ]
        try:
            with caplog.at_level(logging.INFO):
                for n in range(1000):
                    await loop.sock_sendto(sock, garbage[n % len(garbage)], address)
                    if n % 100 == 99:
                        await asyncio.sleep(0.01)
                with MiniTurnClient(address, USERNAME, "wrong password") as wrong:
                    for _ in range(20):
                        with contextlib.suppress(TurnRequestFailed):
                            await wrong.allocate()
                assert await _udp_answers(address)
        finally:
            sock.close()
        lines = [record for record in caplog.records if record.levelno >= logging.INFO
                 and record.name.startswith("pyturn")]
        assert len(lines) <= 5, [record.getMessage() for record in lines]
