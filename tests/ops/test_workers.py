"""Workers = N: a master and N worker processes sharing TurnPort through SO_REUSEPORT (pyturn.ops.workers).

Which worker serves a flow is the kernel's choice (a hash of the 5-tuple), so the tests tell workers apart by
the relay port slice an allocation lands in, and they try many client source ports until every worker answered.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import make_ca, write_server_files
from interop import (
    LOOPBACK,
    PASSWORD,
    REALM,
    USERNAME,
    MiniTurnClient,
    PyturnProcess,
    TurnRequestFailed,
    binding_request,
    free_port,
    free_udp_port_pair,
    pyturn_process,
    run_pyturn_cli,
    run_uclient,
    start_echo_peer,
    turnutils_peer,
    write_config,
)

from pyturn.config import Config
from pyturn.ops.daemon import EXIT_STARTUP
from pyturn.ops.workers import port_slices, worker_count
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

RELAY_LOW = 46000
RELAY_HIGH = 46999
WORKERS = 2
SLICES = port_slices(RELAY_LOW, RELAY_HIGH, WORKERS)
CLIENT_ATTEMPTS = 60  # source ports tried until every worker has answered (each hit is a coin toss)
RESTART_TIMEOUT = 5.0
STOP_TIMEOUT = 2.5
RELOAD_TIMEOUT = 5.0
PATIENT_BINDING_TIMEOUT = 3.0
UCLIENT_TIMEOUT = 90.0
REQUESTED_TRANSPORT_UDP = 17

pytestmark = pytest.mark.interop


# ------------------------------------------------------------------------------------------------ helpers
def child_pids(parent: int) -> set[int]:
    """Live children of `parent`, from /proc/*/stat (field 4 is the ppid; the command name may hold spaces)."""
    children: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state != "Z":
            children.add(int(entry))
    return children


def wait_for_children(parent: int, count: int, exclude: frozenset[int] | set[int] = frozenset(),
                      timeout: float = RESTART_TIMEOUT) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        children = child_pids(parent)
        if len(children) == count and not children & exclude:
            return children
        assert time.monotonic() < deadline, f"children of {parent}: {children}, wanted {count} not in {exclude}"
        time.sleep(0.02)


def worker_pid_by_slice(server: PyturnProcess) -> dict[tuple[int, int], int]:
    """The latest worker started on each relay slice, from the master's log."""
    pattern = re.compile(r"worker \d+ started \(pid (\d+), relay ports (\d+)-(\d+)\)")
    return {(int(low), int(high)): int(pid) for pid, low, high in pattern.findall(server.log())}


def slice_of(port: int) -> tuple[int, int]:
    return next((low, high) for low, high in SLICES if low <= port <= high)


def patient_binding(port: int, timeout: float = PATIENT_BINDING_TIMEOUT) -> bool:
    """A Binding retransmitted (same transaction) every 0.25 s, as a STUN client would, until answered."""
    request, transaction_id = binding_request()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.25)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(request, (LOOPBACK, port))
            try:
                data = sock.recv(2048)
            except OSError:
                continue
            if decode_message(data).transaction_id == transaction_id:
                return True
    return False


def tcp_binding(port: int) -> bool:
    request, transaction_id = binding_request()
    with socket.create_connection((LOOPBACK, port), timeout=2.0) as sock:
        sock.sendall(request)
        response = b""
        while len(response) < 20 or len(response) < 20 + int.from_bytes(response[2:4], "big"):
            chunk = sock.recv(2048)
            if not chunk:
                return False
            response += chunk
    return decode_message(response).transaction_id == transaction_id


def transact(sock: socket.socket, port: int, request: bytes, transaction_id: bytes) -> Message:
    sock.settimeout(0.25)
    for _ in range(8):
        sock.sendto(request, (LOOPBACK, port))
        try:
            response = decode_message(sock.recv(2048))
        except TimeoutError:
            continue
        if response.transaction_id == transaction_id:
            return response
    raise AssertionError(f"no answer from {LOOPBACK}:{port}")


def allocate_request(nonce: str | None = None, realm: str = REALM, lifetime: int | None = None) -> tuple[bytes, bytes]:
    message = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12))
    message.add(Attr.REQUESTED_TRANSPORT, REQUESTED_TRANSPORT_UDP)
    return _signed(message, nonce, realm, lifetime)


def refresh_request(nonce: str, realm: str = REALM, lifetime: int = 0) -> tuple[bytes, bytes]:
    return _signed(Message(Method.REFRESH, MessageClass.REQUEST, os.urandom(12)), nonce, realm, lifetime)


def _signed(message: Message, nonce: str | None, realm: str, lifetime: int | None) -> tuple[bytes, bytes]:
    if lifetime is not None:
        message.add(Attr.LIFETIME, lifetime)
    if nonce is None:
        return encode_message(message, fingerprint=True), message.transaction_id
    message.add(Attr.USERNAME, USERNAME).add(Attr.REALM, realm).add(Attr.NONCE, nonce)
    key = long_term_key(USERNAME, realm, PASSWORD)
    return encode_message(message, integrity_key=key, fingerprint=True), message.transaction_id


def error_code(response: Message) -> int | None:
    if response.msg_class is not MessageClass.ERROR:
        return None
    return int(response.get(Attr.ERROR_CODE)[0])


async def allocate_in_every_slice(port: int, username: str = USERNAME, password: str = PASSWORD, *,
                                  keep: bool = False) -> tuple[list[int], dict[tuple[int, int], MiniTurnClient]]:
    """Allocations from fresh source ports until both slices were hit; returns every relayed port and, with
    `keep`, one client per slice whose allocation is left in place (every other one is released)."""
    relayed: list[int] = []
    kept: dict[tuple[int, int], MiniTurnClient] = {}
    for _ in range(CLIENT_ATTEMPTS):
        client = MiniTurnClient((LOOPBACK, port), username, password)
        try:
            relayed_port = (await client.allocate())[1]
            relayed.append(relayed_port)
            if keep and slice_of(relayed_port) not in kept:
                kept[slice_of(relayed_port)] = client
                continue
            await client.refresh(0)
        except BaseException:
            client.close()
            raise
        client.close()
        if {slice_of(p) for p in relayed} == set(SLICES):
            break
    return relayed, kept


async def relay_round_trip(client: MiniTurnClient, peer: tuple[str, int], payload: bytes) -> bool:
    """Send a Send indication to the echo peer and wait for the Data indication carrying the echo."""
    await client.create_permission(peer)
    await client.send_indication(peer, payload)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            packet = await client.receive(deadline - time.monotonic())
        except TimeoutError:
            return False
        if len(packet) >= 20 and packet[0] & 0xC0 == 0:
            message = decode_message(packet)
            if message.method == Method.DATA and message.get(Attr.DATA) == payload:
                return True
    return False


def worker_config(directory: Path, port: int, workers: int = WORKERS) -> Path:
    return write_config(directory, port, extra={
        "Workers": workers, "AllocationPortRangeMin": RELAY_LOW, "AllocationPortRangeMax": RELAY_HIGH,
    })


@pytest.fixture
def workers_server(tmp_path: Path) -> Iterator[PyturnProcess]:
    port = free_port()
    with pyturn_process(worker_config(tmp_path, port), port) as server:
        wait_for_children(server.process.pid, WORKERS)
        yield server


# ---------------------------------------------------------------------------------------------- unit tests
@pytest.mark.parametrize(("low", "high", "count", "expected"), [
    pytest.param(49152, 65535, 1, [(49152, 65535)], id="one-worker-whole-range"),
    pytest.param(40000, 40999, 2, [(40000, 40499), (40500, 40999)], id="two-even-halves"),
    pytest.param(40000, 40009, 3, [(40000, 40001), (40002, 40003), (40004, 40009)], id="last-takes-remainder"),
    pytest.param(40000, 40010, 2, [(40000, 40003), (40004, 40010)], id="odd-size-rounded-to-even"),
    pytest.param(40000, 40003, 2, [(40000, 40001), (40002, 40003)], id="smallest-two-per-worker"),
])
def test_port_slices_even_starts_cover_range(low: int, high: int, count: int,
                                             expected: list[tuple[int, int]]) -> None:
    slices = port_slices(low, high, count)
    assert slices == expected
    assert all(start % 2 == low % 2 for start, _ in slices)
    assert slices[0][0] == low and slices[-1][1] == high
    assert all(slices[i][1] + 1 == slices[i + 1][0] for i in range(count - 1))


@pytest.mark.parametrize(("low", "high", "count"), [
    pytest.param(40000, 40002, 2, id="three-ports-two-workers"),
    pytest.param(40000, 40000, 1, id="single-port"),
    pytest.param(40000, 40015, 16, id="one-port-per-worker"),
])
def test_port_slices_too_small_range_raises(low: int, high: int, count: int) -> None:
    with pytest.raises(ValueError, match="too small"):
        port_slices(low, high, count)


def test_worker_count_zero_means_one_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert worker_count(Config(workers=0)) == 6
    assert worker_count(Config(workers=3)) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert worker_count(Config(workers=0)) == 1


# ----------------------------------------------------------------------------------------- process tests
async def test_workers_two_children_serve_allocations_in_both_slices(workers_server: PyturnProcess) -> None:
    assert len(child_pids(workers_server.process.pid)) == WORKERS
    assert patient_binding(workers_server.port)
    assert all(tcp_binding(workers_server.port) for _ in range(10))

    async def allocate_and_release() -> int:
        with MiniTurnClient((LOOPBACK, workers_server.port)) as client:
            relayed = await client.allocate()
            await client.refresh(0)
            return relayed[1]

    relayed = await asyncio.gather(*(allocate_and_release() for _ in range(20)))
    assert len(relayed) == 20
    assert all(RELAY_LOW <= port <= RELAY_HIGH for port in relayed)
    more, _ = await allocate_in_every_slice(workers_server.port)  # 20 coin tosses rarely all land on one worker
    assert {slice_of(port) for port in [*relayed, *more]} == set(SLICES), "one worker served every client"


def test_workers_uclient_rtp_rtcp_reservations_zero_loss(tmp_path: Path) -> None:
    port = free_port()
    peer_port = free_udp_port_pair()
    with turnutils_peer(peer_port), pyturn_process(worker_config(tmp_path, port), port) as server:
        messages, clients = 200, 10
        report = run_uclient([
            "-e", LOOPBACK, "-r", str(peer_port), "-u", USERNAME, "-w", PASSWORD, "-p", str(port),
            "-n", str(messages), "-m", str(clients), "-l", "170", LOOPBACK,
        ], timeout=UCLIENT_TIMEOUT)
        expected = messages * clients
        assert (report.sent, report.received, report.lost) == (expected, expected, 0), report.output[-3000:]
        assert report.send_dropped == 0
        assert server.process.poll() is None


@pytest.mark.parametrize("secure", [pytest.param(False, id="tcp"), pytest.param(True, id="tls")])
def test_workers_uclient_stream_relays_without_loss(secure: bool, tmp_path: Path) -> None:
    port, tls_port = free_port(), free_port()
    files = write_server_files(make_ca(), tmp_path)
    config = write_config(tmp_path, port, extra={
        "Workers": WORKERS, "AllocationPortRangeMin": RELAY_LOW, "AllocationPortRangeMax": RELAY_HIGH,
        "TlsTurnPort": tls_port, "TlsServerCertificateFilename": files.certificate,
        "TlsServerPrivateKeyFilename": files.key, "TlsTempDhFilename": "",
    })
    peer_port = free_udp_port_pair()
    with turnutils_peer(peer_port), pyturn_process(config, port):
        messages, clients = 100, 6
        arguments = ["-t", "-n", str(messages), "-m", str(clients), "-l", "170", "-e", LOOPBACK,
                     "-r", str(peer_port), "-u", USERNAME, "-w", PASSWORD]
        arguments += ["-S", "-p", str(tls_port)] if secure else ["-p", str(port)]  # -t -S is TLS
        report = run_uclient([*arguments, LOOPBACK], timeout=UCLIENT_TIMEOUT)
        expected = messages * clients
        assert (report.sent, report.received, report.lost) == (expected, expected, 0), report.output[-3000:]


def test_workers_nonce_from_one_worker_accepted_by_the_other(workers_server: PyturnProcess) -> None:
    port = workers_server.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
        challenge = transact(first, port, *allocate_request())
    assert error_code(challenge) == 401
    nonce, realm = challenge.get(Attr.NONCE), challenge.get(Attr.REALM)

    answered_slices: set[tuple[int, int]] = set()
    for _ in range(CLIENT_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            response = transact(sock, port, *allocate_request(nonce, realm))
            assert error_code(response) is None, f"nonce refused: {response.get(Attr.ERROR_CODE)}"
            answered_slices.add(slice_of(response.get(Attr.XOR_RELAYED_ADDRESS)[1]))
            released = transact(sock, port, *refresh_request(nonce, realm))
            assert error_code(released) is None
        if answered_slices == set(SLICES):
            break
    assert answered_slices == set(SLICES), "every request landed on one worker"


async def test_workers_sigkill_one_worker_restarts_and_other_keeps_allocation(
        workers_server: PyturnProcess) -> None:
    master = workers_server.process.pid
    before = child_pids(master)
    _, kept = await allocate_in_every_slice(workers_server.port, keep=True)
    peer_transport, _ = await start_echo_peer()
    peer = peer_transport.get_extra_info("sockname")
    try:
        assert set(kept) == set(SLICES), "every allocation landed on one worker"
        victim_slice, survivor_slice = SLICES
        victim = worker_pid_by_slice(workers_server)[victim_slice]
        assert victim in before
        survivor = kept[survivor_slice]
        assert await relay_round_trip(survivor, peer, b"before")

        polls: list[bool] = []
        stop_polling = threading.Event()

        def poll() -> None:
            while not stop_polling.is_set():
                polls.append(patient_binding(workers_server.port))

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            await asyncio.sleep(0.2)
            os.kill(victim, signal.SIGKILL)
            after = await asyncio.to_thread(wait_for_children, master, WORKERS, {victim})
            await asyncio.sleep(0.5)
        finally:
            stop_polling.set()
            await asyncio.to_thread(poller.join, PATIENT_BINDING_TIMEOUT + 1)
        assert len(polls) >= 3 and all(polls), f"Bindings unanswered while a worker restarted: {polls}"
        assert len(after - before) == 1 and victim not in after

        assert await survivor.refresh(600) == 600
        assert await relay_round_trip(survivor, peer, b"after"), "the surviving worker's allocation broke"
        relayed, _ = await allocate_in_every_slice(workers_server.port)
        assert {slice_of(port) for port in relayed} == set(SLICES), "the restarted worker serves no one"
        assert worker_pid_by_slice(workers_server)[victim_slice] in after - before
    finally:
        peer_transport.close()
        for client in kept.values():
            client.close()


async def _allocate_after_reload(port: int, username: str, password: str) -> set[tuple[int, int]]:
    """Allocations as `username` from fresh source ports until both workers granted one; a worker that has not
    handled the forwarded SIGHUP yet answers 401, which is retried (bounded)."""
    granted: set[tuple[int, int]] = set()
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while granted != set(SLICES) and time.monotonic() < deadline:
        with MiniTurnClient((LOOPBACK, port), username, password) as client:
            try:
                granted.add(slice_of((await client.allocate())[1]))
                await client.refresh(0)
            except TurnRequestFailed as failure:
                assert failure.code == 401
                await asyncio.sleep(0.05)
    return granted


async def test_workers_sighup_reaches_every_worker_and_sigterm_stops_all(workers_server: PyturnProcess,
                                                                         tmp_path: Path) -> None:
    master = workers_server.process
    workers = child_pids(master.pid)
    with MiniTurnClient((LOOPBACK, workers_server.port), "bob", "builder") as stranger, \
            pytest.raises(TurnRequestFailed) as refused:
        await stranger.allocate()
    assert refused.value.code == 401
    with (tmp_path / "users.txt").open("a") as users:
        users.write(f"bob:builder:{REALM}:authorized\n")
    master.send_signal(signal.SIGHUP)
    granted = await _allocate_after_reload(workers_server.port, "bob", "builder")
    assert granted == set(SLICES), f"bob was allocated only on {granted}"
    assert child_pids(master.pid) == workers, "SIGHUP restarted a worker"

    started = time.monotonic()
    master.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(master.wait, STOP_TIMEOUT + 2)
    stopped_in = time.monotonic() - started
    assert code == 0
    assert stopped_in < STOP_TIMEOUT, f"stopping took {stopped_in:.2f} s"
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived the master"


def test_workers_port_held_by_another_socket_exits_71(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((LOOPBACK, port))
        completed = run_pyturn_cli("-c", str(worker_config(tmp_path, port)))
    assert completed.returncode == EXIT_STARTUP, completed.stdout + completed.stderr
    assert "in use" in (completed.stdout + completed.stderr)


def test_workers_second_pyturn_on_same_port_exits_71(workers_server: PyturnProcess, tmp_path: Path) -> None:
    second = tmp_path / "second"
    second.mkdir()
    completed = run_pyturn_cli("-c", str(worker_config(second, workers_server.port)))
    assert completed.returncode == EXIT_STARTUP, completed.stdout + completed.stderr
    assert workers_server.process.poll() is None
    assert len(child_pids(workers_server.process.pid)) == WORKERS
    assert patient_binding(workers_server.port)


def test_workers_zero_starts_one_worker_per_cpu(tmp_path: Path) -> None:
    cpus = os.cpu_count() or 1
    port = free_port()
    with pyturn_process(worker_config(tmp_path, port, workers=0), port, ready_timeout=15.0) as server:
        expected_children = cpus if cpus > 1 else 0  # one worker: the process serves by itself
        assert len(wait_for_children(server.process.pid, expected_children)) == expected_children
        assert patient_binding(port)
