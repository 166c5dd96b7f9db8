"""Shared helpers for the end-to-end tests: free ports, a pyturn subprocess, coturn's tools, a minimal TURN client.

Everything talks over 127.0.0.1 / ::1 and every network wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from requirements import require, require_module
from turnsession import (
    REQUESTED_TRANSPORT_UDP,
    ClientSession,
    Outgoing,
    SessionField,
    channel_data,
    relayed_payload,
    response_to,
    run_exchange_async,
    send_indication,
)

from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Attr, Message, MessageClass, Method

LOOPBACK = "127.0.0.1"
LOOPBACK_V6 = "::1"
USERNAME = "alice"
PASSWORD = "wonderland"
REALM = "reTurn"
SERVER_READY_TIMEOUT = 5.0
WAIT_UNTIL_TIMEOUT = 5.0
STUN_BINDING_REQUEST = 0x0001


# ------------------------------------------------------------------------------------------------ tools
def require_tool(name: str) -> str:
    """Path of an installed tool; a missing tool skips the test, except under CI where it fails."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def python_module_available(name: str) -> None:
    """Same policy as require_tool for a Python package (aioice)."""
    require_module(name)


# ------------------------------------------------------------------------------------------------ ports
def _can_bind(family: int, kind: int, host: str, port: int) -> bool:
    with socket.socket(family, kind) as probe:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


LISTEN_PORTS = (30000, 32768)  # [start, stop) of the ports test servers listen on


def free_port(*, ipv6: bool = True) -> int:
    """A port currently free for UDP and TCP on 127.0.0.1 (and ::1 when ipv6): what a server listens on.

    Chosen below Linux's ephemeral range (32768-60999), so no client socket or relay socket the kernel or a
    server picks at random can take it between this check and the server's bind.
    """
    for _ in range(200):
        port = random.randrange(*LISTEN_PORTS)
        checks = [(socket.AF_INET, socket.SOCK_DGRAM, LOOPBACK), (socket.AF_INET, socket.SOCK_STREAM, LOOPBACK)]
        if ipv6 and has_ipv6():
            checks += [(socket.AF_INET6, socket.SOCK_DGRAM, LOOPBACK_V6), (socket.AF_INET6, socket.SOCK_STREAM,
                                                                             LOOPBACK_V6)]
        if all(_can_bind(family, kind, host, port) for family, kind, host in checks):
            return port
    raise RuntimeError("no free port found")


def free_udp_port_pair() -> int:
    """An even-free UDP port p on 127.0.0.1 with p+1 free too (turnutils_peer listens on both)."""
    for _ in range(200):
        port = free_port(ipv6=False)
        if _can_bind(socket.AF_INET, socket.SOCK_DGRAM, LOOPBACK, port + 1):
            return port
    raise RuntimeError("no free port pair found")


def has_ipv6() -> bool:
    return _can_bind(socket.AF_INET6, socket.SOCK_DGRAM, LOOPBACK_V6, 0) if socket.has_ipv6 else False


# --------------------------------------------------------------------------------------- STUN, blocking
def binding_request(transaction_id: bytes | None = None) -> tuple[bytes, bytes]:
    transaction_id = transaction_id or os.urandom(12)
    return encode_message(Message(Method.BINDING, MessageClass.REQUEST, transaction_id)), transaction_id


def udp_binding(host: str, port: int, timeout: float = 0.5) -> Message | None:
    """One blocking Binding over UDP; the decoded success response, or None on timeout / refusal."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    request, transaction_id = binding_request()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (host, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(2048)
                response = decode_message(data)
                if response.transaction_id == transaction_id:
                    return response
        except OSError:  # timeout, or ICMP port unreachable surfacing as ECONNREFUSED
            return None
    return None


def wait_for_binding(host: str, port: int, timeout: float = SERVER_READY_TIMEOUT,
                     process: subprocess.Popen[bytes] | None = None) -> float:
    """Poll with Binding requests until one is answered; returns the seconds waited. Fails after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode} before answering a Binding")
        if udp_binding(host, port, timeout=0.1) is not None:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"no Binding answer from {host}:{port} within {timeout} s")


async def wait_until(predicate: Any, timeout: float = WAIT_UNTIL_TIMEOUT) -> None:
    """Poll `predicate` every 20 ms until it holds; AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------------- pyturn subprocess
def write_config(directory: Path, port: int, *, users: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None, name: str = "reTurnServer.config") -> Path:
    """A reTurnServer.config on loopback with a users.txt beside it (plain passwords, realm reTurn)."""
    users = {USERNAME: PASSWORD} if users is None else users
    users_file = directory / "users.txt"
    if not users_file.exists():
        users_file.write_text("".join(f"{login}:{password}:{REALM}:authorized\n" for login, password in users.items()))
    keys: dict[str, Any] = {
        "TurnAddress": LOOPBACK,
        "TurnV6Address": LOOPBACK_V6 if has_ipv6() else "::1",
        "TurnPort": port,
        "TlsTurnPort": 0,
        "AuthenticationRealm": REALM,
        "UserDatabaseFile": users_file,
        "UserDatabaseCheckInterval": 0,
        "LoggingType": "cout",
        "LogLevel": "INFO",
        "AllowedPeerAddresses": "127.0.0.0/8, ::1/128",
        # coturn 4.6's turnutils_uclient picks channel numbers up to 0x7FFF (RFC 5766); RFC 8656 stops at 0x4FFF.
        "LegacyChannelNumbers": "true",
    }
    keys.update(extra or {})
    path = directory / name
    path.write_text("".join(f"{key} = {value}\n" for key, value in keys.items()))
    return path


@dataclass
class PyturnProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_seconds: float = 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


@contextlib.contextmanager
def pyturn_process(config: Path, port: int, *overrides: str, ready_timeout: float = SERVER_READY_TIMEOUT,
                   cwd: Path | None = None) -> Iterator[PyturnProcess]:
    """`python -m pyturn -c CONFIG [overrides]` until it answers a Binding on 127.0.0.1:port; stopped on exit."""
    log_path = config.parent / f"pyturn-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyturn", "-c", str(config), *overrides],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd or config.parent,
        )
    server = PyturnProcess(process, port, log_path)
    try:
        try:
            server.startup_seconds = wait_for_binding(LOOPBACK, port, ready_timeout, process)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- server log ---\n{server.log()}") from None
        yield server
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def run_pyturn_cli(*arguments: str, timeout: float = 20.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyturn", *arguments], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


# ------------------------------------------------------------------------------------------- coturn tools
@contextlib.contextmanager
def turnutils_peer(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """coturn's UDP echo peer on 127.0.0.1:port (and port+1), and on ::1 too when the host has IPv6."""
    tool = require_tool("turnutils_peer")
    listen = ["-L", LOOPBACK, *(["-L", LOOPBACK_V6] if has_ipv6() else [])]
    process = subprocess.Popen([tool, *listen, "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while _can_bind(socket.AF_INET, socket.SOCK_DGRAM, LOOPBACK, port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"turnutils_peer did not start on {port} (exit {process.returncode})")
            time.sleep(0.02)
        yield process
    finally:
        stop_process(process)


@dataclass(frozen=True)
class UclientReport:
    sent: int
    received: int
    lost: int
    lost_percent: float
    send_dropped: int
    rtt_avg_ms: float
    rtt_min_ms: int
    rtt_max_ms: int
    transmit_seconds: int
    output: str


_TOTALS = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", re.M)
_LOST = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\), total send dropped (\d+)")
_RTT = re.compile(r"Average round trip delay ([\d.]+) ms; min = (\d+) ms, max = (\d+) ms")
_TRANSMIT = re.compile(r"Total transmit time is (\d+)")


def parse_uclient(output: str) -> UclientReport:
    """The final block of turnutils_uclient 4.6.1 (docs/benchmarking.md "turnutils_uclient output"); AssertionError if
    it is missing."""
    totals, lost, rtt, transmit = (p.findall(output) for p in (_TOTALS, _LOST, _RTT, _TRANSMIT))
    if not (totals and lost and rtt):
        raise AssertionError(f"turnutils_uclient printed no final report:\n{output[-4000:]}")
    return UclientReport(
        sent=int(totals[-1][0]), received=int(totals[-1][1]), lost=int(lost[-1][0]),
        lost_percent=float(lost[-1][1]), send_dropped=int(lost[-1][2]), rtt_avg_ms=float(rtt[-1][0]),
        rtt_min_ms=int(rtt[-1][1]), rtt_max_ms=int(rtt[-1][2]),
        transmit_seconds=int(transmit[-1]) if transmit else -1, output=output,
    )


def run_uclient(arguments: list[str], timeout: float = 90.0) -> UclientReport:
    tool = require_tool("turnutils_uclient")
    try:
        completed = subprocess.run([tool, *arguments], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        partial = (error.stdout or b"")
        text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        raise AssertionError(f"turnutils_uclient {' '.join(arguments)} ran over {timeout} s:\n{text[-4000:]}") from None
    return parse_uclient(completed.stdout + completed.stderr)


# --------------------------------------------------------------------------- a minimal asyncio TURN client
class TurnRequestFailed(Exception):
    def __init__(self, response: Message) -> None:
        self.response = response
        self.code = int(response.get(Attr.ERROR_CODE, (0, ""))[0])
        super().__init__(f"{response.get(Attr.ERROR_CODE)}")


class MiniTurnClient:
    """Just enough of a long-term-credential TURN client over UDP for tests: the asyncio UDP driver of
    tests/support/turnsession.py's ClientSession.

    Requests retransmit (RFC 8489 §6.2.1, shortened) and every wait is bounded. Packets that arrive while a
    request waits and are not its response are kept in ``unmatched``.
    """

    def __init__(self, server: tuple[str, int], username: str = USERNAME, password: str = PASSWORD, *,
                 rfc8489: bool = False) -> None:
        self.server = server
        self.session = ClientSession(username, password, rfc8489=rfc8489)
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((server[0], 0))
        self.unmatched: list[bytes] = []
        self.redirected_from: tuple[str, int] | None = None

    username = SessionField("username")
    password = SessionField("password")
    realm = SessionField("realm")
    nonce = SessionField("nonce")

    @property
    def key(self) -> bytes | None:
        return self.session.key if self.session.can_sign else None

    @property
    def challenges(self) -> int:
        """401/438 answers received (a redirect with a shared nonce secret adds none)."""
        return self.session.challenges

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MiniTurnClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def receive(self, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), timeout)
        return data

    async def receive_payload(self, timeout: float) -> bytes:
        """The payload of the next relayed packet (ChannelData or Data indication); other packets are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            payload = relayed_payload(await self.receive(max(deadline - loop.time(), 0.001)))
            if payload is not None:
                return payload

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, self.server)

    async def transmit(self, outgoing: Outgoing) -> Message:
        """Send a request, retransmitting, until its response arrives; TimeoutError after about 7.75 s."""
        loop = asyncio.get_running_loop()
        timeout = 0.25
        for _ in range(5):
            await self.send(outgoing.data)
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                try:
                    packet = await self.receive(remaining)
                except TimeoutError:
                    break
                response = response_to(packet, outgoing.transaction_id)
                if response is not None:
                    return response
                self.unmatched.append(packet)
            timeout *= 2
        raise TimeoutError(f"no answer to 0x{outgoing.data[0] << 8 | outgoing.data[1]:04x} from {self.server}")

    async def _transact(self, request: Message, authenticate: bool) -> Message:
        """One request as given (signed with the known credentials when authenticate), no retry."""
        attributes = [(t, v) for t, v in request.attributes if t not in (Attr.USERNAME, Attr.REALM, Attr.NONCE)]
        sign = authenticate and self.session.can_sign
        outgoing = self.session.outgoing(request.method, attributes, tid=request.transaction_id, sign=sign)
        return await self.transmit(outgoing)

    async def request(self, method: int, *attributes: tuple[int, Any]) -> Message:
        """An authenticated request; on 401/438 learns realm/nonce and retries once."""
        response = await run_exchange_async(self.session.exchange(method, attributes), self.transmit)
        assert response is not None
        if response.msg_class is MessageClass.ERROR:
            raise TurnRequestFailed(response)
        assert self.session.verify(response), "success response not signed"
        return response

    async def allocate(
        self, *extra: tuple[int, Any], lifetime: int | None = None, follow_redirect: bool = False
    ) -> tuple[str, int]:
        """Allocate; with follow_redirect a 300 Try Alternate is followed once (RFC 8489 §10): only when its
        MESSAGE-INTEGRITY verifies, keeping the REALM and NONCE it carries, as libwebrtc does."""
        attributes: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, REQUESTED_TRANSPORT_UDP)]
        if lifetime is not None:
            attributes.append((Attr.LIFETIME, lifetime))
        try:
            response = await self.request(Method.ALLOCATE, *attributes, *extra)
        except TurnRequestFailed as failed:
            redirect = failed.response
            if not follow_redirect or failed.code != 300 or self.redirected_from is not None:
                raise
            assert self.session.verify(redirect), "unauthenticated 300"
            self.redirected_from, self.server = self.server, redirect.get(Attr.ALTERNATE_SERVER)
            self.nonce = redirect.get(Attr.NONCE, self.nonce)
            self.realm = redirect.get(Attr.REALM, self.realm)
            response = await self.request(Method.ALLOCATE, *attributes, *extra)
        relayed: tuple[str, int] = response.get(Attr.XOR_RELAYED_ADDRESS)
        return relayed

    async def refresh(self, lifetime: int) -> int:
        response = await self.request(Method.REFRESH, (Attr.LIFETIME, lifetime))
        return int(response.get(Attr.LIFETIME))

    async def create_permission(self, peer: tuple[str, int]) -> None:
        await self.request(Method.CREATE_PERMISSION, (Attr.XOR_PEER_ADDRESS, peer))

    async def channel_bind(self, channel: int, peer: tuple[str, int]) -> None:
        await self.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer))

    async def send_indication(self, peer: tuple[str, int], payload: bytes) -> None:
        await self.send(send_indication(peer, payload))

    async def send_channel_data(self, channel: int, payload: bytes) -> None:
        await self.send(channel_data(channel, payload))


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------------------------------ UDP echo peer
class EchoProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # selector transports skip the ABC

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, addr))
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def start_echo_peer(host: str = LOOPBACK) -> tuple[asyncio.DatagramTransport, EchoProtocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(EchoProtocol, local_addr=(host, 0))
    return transport, protocol


async def aioice_udp_client(protocol: Callable[..., Any], server: tuple[str, int]) -> tuple[Any, Any]:
    """An aioice TurnClientUdpProtocol (or a subclass of it) talking to `server` as USERNAME; connect() allocates."""
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(
        lambda: protocol(server, username=USERNAME, password=PASSWORD, lifetime=600, channel_refresh_time=500),
        remote_addr=server,
    )
