"""Soak test: churn many short allocations through a real pyturn server and check its memory comes back.

    python -m benchmarks.soak                                   # 2,000 warm-up + 100,000 allocations, 200 in flight
    python -m benchmarks.soak --allocations 20000 --inprocess   # server in this process, tracemalloc diff at the end

Each allocation is one fresh UDP socket doing Allocate -> 401 -> Allocate -> ChannelBind -> a few ChannelData to
an echo peer (waiting for the echoes) -> Refresh LIFETIME 0, with retransmissions (RFC 8489 §6.2.1, 0.5 s RTO).
The server is `python -m pyturn -c soak.config` in a temp dir (127.0.0.1, UnauthenticatedRateLimit = 0,
AllowedPeerAddresses = 127.0.0.0/8, relay ports 10000-29999, LogLevel = WARNING). Its VmRSS is read from /proc
after the warm-up and a settle (the start), all along the churn (the peak), right after it, and after another
settle (the end). The settle outlasts the server's 40 s response cache, so start and end see the same state:
no allocation and no cached response. PASS when the end is within --tolerance (10 %) of the start.

--inprocess runs the server in a thread of this process with tracemalloc on (slower: use fewer allocations) and
prints the biggest allocation-site differences between the start and the end snapshots.
"""

from __future__ import annotations

import argparse
import gc
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import probe_binding, raise_fd_limit
from benchmarks.procstat import memory_kib
from pyturn.errors import StunDecodeError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

HOST = "127.0.0.1"
USERNAME, PASSWORD, REALM = "soak", "churn", "reTurn"
RELAY_PORT_MIN, RELAY_PORT_MAX = 10000, 29999
CHANNEL = 0x4000
UDP_PROTOCOL = 17
RTO = 0.5
MAX_TRANSMISSIONS = 6
ECHO_TIMEOUT = 1.0
ECHO_SOCKETS = 4
SERVER_START_TIMEOUT = 15.0
PROGRESS_INTERVAL = 5.0
RSS_INTERVAL = 0.25
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------------ servers
class SubprocessServer:
    """`python -m pyturn -c soak.config` in its own process group."""

    def __init__(self, workdir: Path, port: int) -> None:
        (workdir / "users.txt").write_text(f"{USERNAME}:{PASSWORD}:{REALM}:authorized\n", encoding="utf-8")
        config = workdir / "soak.config"
        config.write_text("\n".join([
            "TurnAddress = 127.0.0.1", "TurnV6Address = ", f"TurnPort = {port}", "TlsTurnPort = 0",
            f"AuthenticationRealm = {REALM}", "UserDatabaseFile = users.txt", "UserDatabaseCheckInterval = 0",
            f"AllocationPortRangeMin = {RELAY_PORT_MIN}", f"AllocationPortRangeMax = {RELAY_PORT_MAX}",
            "AllowedPeerAddresses = 127.0.0.0/8", "UnauthenticatedRateLimit = 0",
            "LoggingType = cout", "LogLevel = WARNING", "",
        ]), encoding="utf-8")
        self.log = workdir / "pyturn.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyturn", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                cwd=str(REPO), start_new_session=True,
            )
        self.port = port
        self.pid = self.process.pid

    def rss_kib(self) -> int:
        return memory_kib(self.pid)[0]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class ThreadServer:
    """pyturn.Server on a background thread of this process (for tracemalloc)."""

    def __init__(self, port: int) -> None:
        import pyturn

        config = pyturn.loopback_config(turn_port=port, allocation_port_range_min=RELAY_PORT_MIN,
                                        allocation_port_range_max=RELAY_PORT_MAX, log_level="WARNING")
        self.runner = pyturn.run_in_thread(config, users={USERNAME: PASSWORD}, transports=("udp",))
        self.runner.start()
        self.port = port
        self.pid = os.getpid()

    def rss_kib(self) -> int:
        return memory_kib(self.pid)[0]

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        self.runner.stop()


# ------------------------------------------------------------------------------------------------ clients
@dataclass(slots=True, eq=False)
class Session:
    number: int
    peer: tuple[str, int]
    sock: socket.socket
    step: str = "challenge"  # challenge -> allocate -> bind -> data -> refresh -> done | failed
    transaction_id: bytes = b""
    request: bytes = b""
    transmissions: int = 0
    deadline: float = 0.0
    nonce: str = ""
    key: bytes = b""
    echoes: int = 0


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    echoes_expected: int = 0
    echoes_received: int = 0
    retransmissions: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Churner:
    """Runs allocation life cycles `concurrency` at a time over one selector, with UDP echo peers alongside."""

    def __init__(self, server_port: int, concurrency: int, channel_data: int, payload: int) -> None:
        self.server = (HOST, server_port)
        self.concurrency = concurrency
        self.channel_data = channel_data
        self.payload = payload
        self.selector = selectors.DefaultSelector()
        self.echo_sockets = []
        for _ in range(ECHO_SOCKETS):
            echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            echo.bind((HOST, 0))
            echo.setblocking(False)
            self.selector.register(echo, selectors.EVENT_READ, None)
            self.echo_sockets.append(echo)
        self.peers = [echo.getsockname() for echo in self.echo_sockets]
        self.counters = Counters()
        self.started = 0
        self.active: set[Session] = set()

    def close(self) -> None:
        for session in list(self.active):
            self._finish(session, "closed")
        for echo in self.echo_sockets:
            echo.close()
        self.selector.close()

    # -------------------------------------------------------------------------------------- protocol
    def _send_request(self, session: Session, method: int, attributes: list[tuple[int, Any]], now: float) -> None:
        session.transaction_id = os.urandom(12)
        message = Message(method, MessageClass.REQUEST, session.transaction_id, list(attributes))
        if session.key:
            message.add(Attr.USERNAME, USERNAME).add(Attr.REALM, REALM).add(Attr.NONCE, session.nonce)
            session.request = encode_message(message, integrity_key=session.key)
        else:
            session.request = encode_message(message)
        session.transmissions = 0
        self._transmit(session, now)

    def _transmit(self, session: Session, now: float) -> None:
        session.transmissions += 1
        if session.transmissions > 1:
            self.counters.retransmissions += 1
        session.deadline = now + RTO * 2 ** (session.transmissions - 1)
        try:
            session.sock.send(session.request)
        except OSError:
            pass  # the deadline retransmits

    def _allocate(self, session: Session, now: float) -> None:
        self._send_request(session, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, UDP_PROTOCOL)], now)

    def _start(self, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.connect(self.server)
        sock.setblocking(False)
        self.started += 1
        session = Session(self.started, self.peers[self.started % len(self.peers)], sock)
        self.selector.register(sock, selectors.EVENT_READ, session)
        self.active.add(session)
        self._allocate(session, now)

    def _finish(self, session: Session, error: str | None) -> None:
        self.active.discard(session)
        self.selector.unregister(session.sock)
        session.sock.close()
        if error is None:
            session.step = "done"
            self.counters.completed += 1
        else:
            session.step = "failed"
            self.counters.failed += 1
            self.counters.errors[error] = self.counters.errors.get(error, 0) + 1

    def _refresh(self, session: Session, now: float) -> None:
        session.step = "refresh"
        self._send_request(session, Method.REFRESH, [(Attr.LIFETIME, 0)], now)

    def _on_stun(self, session: Session, response: Message, now: float) -> None:
        if response.transaction_id != session.transaction_id or response.msg_class is MessageClass.INDICATION:
            return
        error = response.get(Attr.ERROR_CODE)
        if error is not None:
            code = error[0]
            if code == 438 or (code == 401 and session.step == "challenge"):  # RFC 8656 §7.2 / RFC 8489 §9.2
                session.nonce = response.get(Attr.NONCE, session.nonce)
                session.key = long_term_key(USERNAME, response.get(Attr.REALM, REALM), PASSWORD)
                if session.step == "challenge":
                    session.step = "allocate"
                session.request = b""
                self._resend_step(session, now)
                return
            self._finish(session, f"{code} on {session.step}")
            return
        if session.step == "allocate":
            session.step = "bind"
            self._send_request(session, Method.CHANNEL_BIND,
                               [(Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, session.peer)], now)
        elif session.step == "bind":
            session.step = "data"
            session.deadline = now + ECHO_TIMEOUT
            for index in range(self.channel_data):
                body = session.number.to_bytes(8, "big") + index.to_bytes(2, "big")
                try:
                    session.sock.send(encode_channel_data(CHANNEL, body.ljust(self.payload, b".")))
                except OSError:
                    pass
            self.counters.echoes_expected += self.channel_data
        elif session.step == "refresh":
            self._finish(session, None)

    def _resend_step(self, session: Session, now: float) -> None:
        if session.step == "allocate":
            self._allocate(session, now)
        elif session.step == "bind":
            self._send_request(session, Method.CHANNEL_BIND,
                               [(Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, session.peer)], now)
        elif session.step == "refresh":
            self._refresh(session, now)

    def _on_readable(self, session: Session, now: float) -> None:
        for _ in range(16):
            try:
                data = session.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if not data:
                continue
            if data[0] & 0xC0:
                try:
                    decode_channel_data(data)
                except StunDecodeError:
                    continue
                if session.step == "data":
                    session.echoes += 1
                    self.counters.echoes_received += 1
                    if session.echoes >= self.channel_data:
                        self._refresh(session, now)
                continue
            try:
                response = decode_message(data)
            except StunDecodeError:
                continue
            self._on_stun(session, response, now)
            if session.step in ("done", "failed"):
                return

    def _echo(self, echo: socket.socket) -> None:
        for _ in range(64):
            try:
                data, source = echo.recvfrom(65535)
                echo.sendto(data, source)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue

    # -------------------------------------------------------------------------------------- driving
    def run(self, total: int, deadline: float, on_tick: Callable[[float], None]) -> None:
        """Complete (or fail) `total` more allocations; stop early at `deadline` (monotonic)."""
        target = self.started + total
        while self.started < target or self.active:
            now = time.monotonic()
            if now >= deadline:
                break
            while self.started < target and len(self.active) < self.concurrency:
                self._start(now)
            for key, _ in self.selector.select(0.01):
                if key.data is None:
                    self._echo(key.fileobj)  # type: ignore[arg-type]
                else:
                    session: Session = key.data
                    if session.step not in ("done", "failed"):
                        self._on_readable(session, time.monotonic())
            now = time.monotonic()
            for session in [s for s in self.active if now >= s.deadline]:
                if session.step == "data":  # echoes lost: move on
                    self._refresh(session, now)
                elif session.transmissions >= MAX_TRANSMISSIONS:
                    self._finish(session, f"timeout on {session.step}")
                else:
                    self._transmit(session, now)
            on_tick(now)


# ------------------------------------------------------------------------------------------------ driver
@dataclass
class RssMonitor:
    read: Callable[[], int]
    peak_kib: int = 0
    last_sample: float = 0.0

    def sample(self, now: float) -> None:
        if now - self.last_sample >= RSS_INTERVAL:
            self.last_sample = now
            self.peak_kib = max(self.peak_kib, self.read())


def _settle(seconds: float, churner: Churner, monitor: RssMonitor) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        churner.run(0, end, monitor.sample)
        time.sleep(0.05)
        monitor.sample(time.monotonic())


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--allocations", type=int, default=100_000, help="allocations churned after the warm-up")
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--channel-data", type=int, default=3, help="ChannelData echoed per allocation")
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--settle", type=float, default=42.0, help="seconds idle before the start and end readings")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="hard limit for the churn phase")
    parser.add_argument("--inprocess", action="store_true", help="server in this process, with tracemalloc")
    parser.add_argument("--top", type=int, default=12, help="--inprocess: allocation sites shown")
    arguments = parser.parse_args(argv)

    raise_fd_limit(arguments.concurrency + 256)
    port = free_port()
    if arguments.inprocess:
        tracemalloc.start(12)
    with tempfile.TemporaryDirectory(prefix="pyturn-soak-") as workdir:
        server: SubprocessServer | ThreadServer
        server = ThreadServer(port) if arguments.inprocess else SubprocessServer(Path(workdir), port)
        churner: Churner | None = None
        try:
            if not probe_binding(HOST, port, SERVER_START_TIMEOUT):
                print("server did not answer a Binding request", file=sys.stderr)
                return 2
            churner = Churner(port, arguments.concurrency, arguments.channel_data, arguments.payload)
            monitor = RssMonitor(server.rss_kib)
            print(f"server pid {server.pid} on {HOST}:{port}; RSS at start-up {_mib(server.rss_kib())}", flush=True)

            churner.run(arguments.warmup, time.monotonic() + arguments.max_seconds, monitor.sample)
            _settle(arguments.settle, churner, monitor)
            gc.collect()
            start_kib = server.rss_kib()
            start_snapshot = tracemalloc.take_snapshot() if arguments.inprocess else None
            monitor.peak_kib = start_kib
            warm = churner.counters.completed
            print(f"warm-up: {warm} allocations; RSS after {arguments.settle:.0f} s settle {_mib(start_kib)}",
                  flush=True)

            began = time.monotonic()
            next_progress = began + PROGRESS_INTERVAL

            def on_tick(now: float) -> None:
                nonlocal next_progress
                monitor.sample(now)
                if now >= next_progress:
                    next_progress = now + PROGRESS_INTERVAL
                    done = churner.counters.completed - warm
                    print(f"  {now - began:6.1f} s  {done:7d} done  {done / (now - began):7.0f}/s  "
                          f"RSS {_mib(server.rss_kib())}  failed {churner.counters.failed}", flush=True)

            churner.run(arguments.allocations, began + arguments.max_seconds, on_tick)
            elapsed = time.monotonic() - began
            after_kib = server.rss_kib()
            _settle(arguments.settle, churner, monitor)
            gc.collect()
            end_kib = server.rss_kib()
            counters = churner.counters
            churned = counters.completed - warm
            growth = (end_kib - start_kib) / start_kib
            finished = churned + counters.failed >= arguments.allocations
            passed = server.alive() and finished and abs(growth) <= arguments.tolerance
            print(f"churned: {churned} allocations completed, {counters.failed} failed {counters.errors or ''} "
                  f"in {elapsed:.1f} s = {churned / elapsed:.0f} allocations/s")
            print(f"ChannelData echoed: {counters.echoes_received}/{counters.echoes_expected}; "
                  f"retransmissions {counters.retransmissions}")
            print(f"RSS start {_mib(start_kib)}  peak {_mib(monitor.peak_kib)}  right after churn {_mib(after_kib)}  "
                  f"end (after {arguments.settle:.0f} s settle) {_mib(end_kib)}  change {growth:+.1%}")
            if start_snapshot is not None:
                _report_tracemalloc(start_snapshot, tracemalloc.take_snapshot(), arguments.top)
            print("PASS" if passed else "FAIL", f"(end RSS within {arguments.tolerance:.0%} of the post-warm-up start)")
            return 0 if passed else 1
        finally:
            if churner is not None:
                churner.close()
            server.stop()


def _report_tracemalloc(start: tracemalloc.Snapshot, end: tracemalloc.Snapshot, top: int) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib*")]
    start, end = start.filter_traces(ignore), end.filter_traces(ignore)
    print(f"tracemalloc: traced memory start {sum(s.size for s in start.statistics('filename')) / 2**20:.1f} MiB, "
          f"end {sum(s.size for s in end.statistics('filename')) / 2**20:.1f} MiB")
    print(f"top {top} allocation sites by growth (end - start):")
    for stat in end.compare_to(start, "lineno")[:top]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8d} blocks  {stat.traceback[0]}")
    print("largest growth by full traceback:")
    for stat in end.compare_to(start, "traceback")[:3]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8d} blocks")
        for line in stat.traceback.format(limit=8):
            print(f"    {line}")


if __name__ == "__main__":
    raise SystemExit(main())
