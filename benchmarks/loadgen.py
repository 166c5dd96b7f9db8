"""The load generator: TURN clients and UDP echo peers, each role in its own process.

It never runs inside the server's interpreter. benchmarks.relay starts it as

    python -m benchmarks.loadgen echo --sockets K       UDP echo peers on 127.0.0.1
    python -m benchmarks.loadgen clients --spec JSON    N TURN clients (one socket and one allocation each)

and talks to it with one JSON object per line: the process writes events to stdout
({"event": "ports" | "setup_start" | "progress" | "ready" | "result", ...}) and reads commands from stdin
({"cmd": "go", "t0": ..., "t1": ..., "stop_at": ..., "end": ...} or {"cmd": "stop"}). All times are
time.monotonic() seconds, which is one clock for every process on the machine, so the client processes and the
echo process count the same measurement window [t0, t1].

A client sets up its allocation the way a real one does: Allocate, 401 with REALM and NONCE, Allocate with
MESSAGE-INTEGRITY, then ChannelBind (mode "channel") or CreatePermission (mode "send") towards an echo peer.
Then it sends payloads that start with a sequence number and a send timestamp (CLOCK_MONOTONIC, ns), either
paced (`rate` datagrams per second per client) or unpaced: a closed loop keeping `window` datagrams in flight
per client (an open-loop flood on loopback only measures socket-buffer overflow). The echo peer returns every
datagram to its source, so each payload crosses the relay twice and the reply carries its own round-trip time.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyturn.errors import StunDecodeError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import StreamFramer
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

HOST = "127.0.0.1"
CHANNEL = 0x4000
UDP_PROTOCOL = 17
PROGRESS_INTERVAL = 0.5
STALL_TIMEOUT = 0.25  # unpaced: a client that heard nothing for this long forgets its in-flight datagrams
MAX_RTT_SAMPLES = 200_000
RTO_UDP = 0.5
RTO_TCP = 5.0
MAX_TRANSMISSIONS = 6
PROBE_SIZE = 12  # sequence number (4) + send time in ns (8) at the start of every payload
ECHO_BUFFER = 4 << 20

_PROBE = struct.Struct("!IQ")
_CHANNEL_PROBE = struct.Struct("!HHIQ")
_TYPE_LENGTH = struct.Struct("!HH")
_SEND_INDICATION = 0x0016  # method Send (0x006), class indication (RFC 8656 §10.1)
_DATA_INDICATION = 0x0017
_COOKIE = struct.pack("!I", 0x2112A442)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards `wanted` (root may lift the hard limit too); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    for new_hard in (max(hard, wanted), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_command(stream: Any) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        return {"cmd": "stop"}
    command: dict[str, Any] = json.loads(line)
    return command


def probe_binding(host: str, port: int, timeout: float) -> bool:
    """True once a STUN Binding request to host:port (UDP) is answered within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        while time.monotonic() < deadline:
            request = encode_message(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
            try:
                sock.send(request)
                sock.settimeout(0.1)
                reply = sock.recv(2048)
            except OSError:
                time.sleep(0.05)
                continue
            if len(reply) >= 20 and reply[8:20] == request[8:20]:
                return True
    return False


# ------------------------------------------------------------------------------------------------ echo peer
def run_echo(sockets: int) -> int:
    """UDP echo peers: every datagram goes back to its source. Counts what arrives inside the window."""
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    for _ in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, ECHO_BUFFER)
            except OSError:
                pass
        sock.bind((HOST, 0))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        socks.append(sock)
    selector.register(sys.stdin, selectors.EVENT_READ)
    emit("ports", ports=[sock.getsockname()[1] for sock in socks], pid=os.getpid())
    received = 0
    t0 = t1 = float("inf")
    at_t0: int | None = None
    at_t1: int | None = None
    while True:
        for key, _ in selector.select(0.05):
            if key.fileobj is sys.stdin:
                command = read_command(sys.stdin)
                if command["cmd"] == "window":
                    t0, t1 = float(command["t0"]), float(command["t1"])
                    continue
                if at_t0 is None:
                    at_t0 = received
                if at_t1 is None:
                    at_t1 = received
                emit("result", received_total=received, received_in_window=at_t1 - at_t0)
                return 0
            ready = key.fileobj
            if not isinstance(ready, socket.socket):
                continue
            recvfrom, sendto = ready.recvfrom, ready.sendto
            for _ in range(256):
                try:
                    data, source = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                received += 1
                try:
                    sendto(data, source)
                except OSError:
                    pass
        if at_t1 is None:
            now = time.monotonic()
            if at_t0 is None and now >= t0:
                at_t0 = received
            if now >= t1:
                at_t1 = received


# ------------------------------------------------------------------------------------------------ clients
@dataclass(slots=True)
class ClientSpec:
    server_host: str
    server_port: int
    transport: str  # "udp" | "tcp"
    mode: str  # "channel" | "send"
    username: str
    password: str
    clients: int
    peers: list[tuple[str, int]]
    first_index: int = 0
    payload: int = 170
    rate: float | None = None  # datagrams per second per client; None = unpaced
    window: int = 8
    setup_concurrency: int = 64
    lifetime: int = 600

    @classmethod
    def from_json(cls, text: str) -> ClientSpec:
        values = json.loads(text)
        values["peers"] = [tuple(peer) for peer in values["peers"]]
        return cls(**values)


@dataclass(slots=True, eq=False)
class Client:
    index: int
    peer: tuple[str, int]
    sock: socket.socket | None = None
    framer: StreamFramer | None = None
    step: str = "new"  # new -> challenge -> allocate -> bind -> ready | failed
    request: bytes = b""
    transaction_id: bytes = b""
    transmissions: int = 0
    deadline: float = 0.0
    realm: str = ""
    nonce: str = ""
    key: bytes = b""
    relayed: tuple[str, int] | None = None
    started: float = 0.0
    finished: float = 0.0
    error: str = ""
    # traffic
    head: bytes = b""  # Send indication: everything before the probe
    tail: bytes = b""  # filler (and padding) after the probe
    seq: int = 0
    inflight: int = 0
    last_heard: float = 0.0


class ClientFleet:
    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.selector = selectors.DefaultSelector()
        self.clients = [
            Client(spec.first_index + i, spec.peers[(spec.first_index + i) % len(spec.peers)])
            for i in range(spec.clients)
        ]
        self.by_fd: dict[int, Client] = {}
        self.rto = RTO_UDP if spec.transport == "udp" else RTO_TCP

    # ------------------------------------------------------------------------------------- set-up
    def _open(self, client: Client) -> None:
        server = (self.spec.server_host, self.spec.server_port)
        if self.spec.transport == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((HOST, 0))
            sock.connect(server)
        else:
            sock = socket.create_connection(server, timeout=5.0)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.framer = StreamFramer(channel_padding=True)
        sock.setblocking(False)
        client.sock = sock
        self.by_fd[sock.fileno()] = client
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _request(self, client: Client, method: int, attributes: Sequence[tuple[int, Any]], now: float,
                 authenticated: bool) -> None:
        client.transaction_id = os.urandom(12)
        message = Message(method, MessageClass.REQUEST, client.transaction_id, list(attributes))
        if authenticated:
            message.add(Attr.USERNAME, self.spec.username).add(Attr.REALM, client.realm).add(Attr.NONCE, client.nonce)
            client.request = encode_message(message, integrity_key=client.key)
        else:
            client.request = encode_message(message)
        client.transmissions = 0
        self._transmit(client, now)

    def _transmit(self, client: Client, now: float) -> None:
        assert client.sock is not None
        client.transmissions += 1
        client.deadline = now + self.rto * (2 ** (client.transmissions - 1))
        try:
            client.sock.send(client.request)
        except OSError:
            pass  # retransmitted on the deadline

    def _allocate_attributes(self) -> list[tuple[int, Any]]:
        return [(Attr.REQUESTED_TRANSPORT, UDP_PROTOCOL), (Attr.LIFETIME, self.spec.lifetime)]

    def _start(self, client: Client, now: float) -> None:
        self._open(client)
        client.started = now
        client.step = "challenge"
        self._request(client, Method.ALLOCATE, self._allocate_attributes(), now, authenticated=False)

    def _fail(self, client: Client, reason: str, now: float) -> None:
        client.step = "failed"
        client.error = reason
        client.finished = now

    def _on_response(self, client: Client, response: Message, now: float) -> None:
        if response.transaction_id != client.transaction_id or response.msg_class == MessageClass.INDICATION:
            return
        error = response.get(Attr.ERROR_CODE)
        if error is not None and error[0] in (401, 438) and client.step in ("challenge", "allocate", "bind"):
            stale = error[0] == 438
            if client.step != "challenge" and not stale:
                self._fail(client, f"{error[0]} {error[1]} on {client.step}", now)
                return
            client.realm = response.get(Attr.REALM, client.realm)
            client.nonce = response.get(Attr.NONCE, client.nonce)
            client.key = long_term_key(self.spec.username, client.realm, self.spec.password)
            if client.step == "challenge" or client.step == "allocate":
                client.step = "allocate"
                self._request(client, Method.ALLOCATE, self._allocate_attributes(), now, authenticated=True)
            else:
                self._bind(client, now)
            return
        if error is not None:
            self._fail(client, f"{error[0]} {error[1]} on {client.step}", now)
            return
        if client.step == "allocate":
            client.relayed = response.get(Attr.XOR_RELAYED_ADDRESS)
            client.step = "bind"
            self._bind(client, now)
        elif client.step == "bind":
            client.step = "ready"
            client.finished = now

    def _bind(self, client: Client, now: float) -> None:
        if self.spec.mode == "channel":
            attributes = [(Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, client.peer)]
            self._request(client, Method.CHANNEL_BIND, attributes, now, authenticated=True)
        else:
            self._request(client, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, client.peer)], now,
                          authenticated=True)

    def _frames(self, client: Client) -> list[bytes]:
        assert client.sock is not None
        frames: list[bytes] = []
        while True:
            try:
                data = client.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return frames
            except OSError as error:
                if error.errno == errno.ECONNREFUSED:
                    continue
                raise
            if client.framer is None:
                frames.append(data)
                continue
            if not data:
                raise ConnectionResetError("server closed the TCP connection")
            try:
                frames.extend(client.framer.feed(data))
            except StunDecodeError:
                raise ConnectionResetError("unframeable TCP stream") from None

    def setup(self, deadline: float) -> dict[str, Any]:
        """Set up every allocation, `setup_concurrency` at a time. Returns set-up statistics."""
        spec = self.spec
        waiting = list(reversed(self.clients))
        active: set[Client] = set()
        started = time.monotonic()
        emit("setup_start", t=started)
        next_progress = started + PROGRESS_INTERVAL
        done = 0
        while waiting or active:
            now = time.monotonic()
            while waiting and len(active) < spec.setup_concurrency:
                client = waiting.pop()
                try:
                    self._start(client, now)
                except OSError as error:
                    self._fail(client, f"socket: {error}", now)
                    done += 1
                    continue
                active.add(client)
            if now > deadline:
                for client in active:
                    self._fail(client, "set-up deadline", now)
                break
            for key, _ in self.selector.select(0.02):
                client = key.data
                if client not in active:
                    continue
                try:
                    frames = self._frames(client)
                except OSError as error:
                    self._fail(client, f"socket: {error}", now)
                    frames = []
                for frame in frames:
                    try:
                        response = decode_message(frame)
                    except StunDecodeError:
                        continue
                    self._on_response(client, response, time.monotonic())
            now = time.monotonic()
            for client in list(active):
                if client.step in ("ready", "failed"):
                    active.discard(client)
                    done += 1
                elif now >= client.deadline:
                    if client.transmissions >= MAX_TRANSMISSIONS:
                        self._fail(client, f"timeout on {client.step}", now)
                        active.discard(client)
                        done += 1
                    else:
                        self._transmit(client, now)
            if now >= next_progress:
                emit("progress", phase="setup", done=done, total=len(self.clients))
                next_progress = now + PROGRESS_INTERVAL
        finished = time.monotonic()
        ready = [c for c in self.clients if c.step == "ready"]
        errors: dict[str, int] = {}
        for client in self.clients:
            if client.step != "ready":
                reason = client.error or "not started"
                errors[reason] = errors.get(reason, 0) + 1
        latencies = sorted(c.finished - c.started for c in ready)
        return {
            "setup_started": started,
            "setup_finished": finished,
            "allocations_ok": len(ready),
            "allocations_failed": len(self.clients) - len(ready),
            "errors": errors,
            "setup_latency_ms": [round(v * 1000.0, 3) for v in _subsample(latencies, 20_000)],
        }

    # ------------------------------------------------------------------------------------- traffic
    def _prepare(self, client: Client) -> None:
        spec = self.spec
        filler_size = max(0, spec.payload - PROBE_SIZE)
        tcp = spec.transport == "tcp"
        if spec.mode == "channel":
            pad = (-spec.payload) % 4 if tcp else 0
            client.tail = b"\x00" * (filler_size + pad)
        else:
            peer_attribute = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
            peer_attribute.add(Attr.XOR_PEER_ADDRESS, client.peer)
            encoded = encode_message(peer_attribute)
            data_length = max(spec.payload, PROBE_SIZE)
            pad = (-data_length) % 4
            body = encoded[20:] + _TYPE_LENGTH.pack(Attr.DATA, data_length)
            header = _TYPE_LENGTH.pack(_SEND_INDICATION, len(body) + data_length + pad) + encoded[4:20]
            client.head = header + body
            client.tail = b"\x00" * (filler_size + pad)

    def traffic(self, t0: float, t1: float, stop_at: float, end: float) -> dict[str, Any]:
        """Send until stop_at, receive until end; count what falls inside the window [t0, t1]."""
        spec = self.spec
        channel_mode = spec.mode == "channel"
        clients = [c for c in self.clients if c.step == "ready"]
        for client in clients:
            self._prepare(client)
        t0_ns, t1_ns = int(t0 * 1e9), int(t1 * 1e9)
        monotonic_ns = time.monotonic_ns
        rtts = array("q")
        counters = {"sent": 0, "sent_in_window": 0, "send_failed": 0, "received": 0, "received_in_window": 0,
                    "replies_for_window": 0, "foreign": 0}
        channel_pack = _CHANNEL_PROBE.pack
        probe_pack = _PROBE.pack
        probe_unpack_from = _PROBE.unpack_from
        payload_length = max(spec.payload, PROBE_SIZE)

        def send(client: Client) -> bool:
            now_ns = monotonic_ns()
            client.seq += 1
            if channel_mode:
                data = channel_pack(CHANNEL, payload_length, client.seq, now_ns) + client.tail
            else:
                data = client.head + probe_pack(client.seq, now_ns) + client.tail
            try:
                client.sock.send(data)  # type: ignore[union-attr]
            except OSError:
                counters["send_failed"] += 1
                return False
            counters["sent"] += 1
            if t0_ns <= now_ns <= t1_ns:
                counters["sent_in_window"] += 1
            client.inflight += 1
            return True

        def receive(client: Client) -> int:
            got = 0
            try:
                frames = self._frames(client)
            except OSError:
                return 0
            now_ns = monotonic_ns()
            for frame in frames:
                if frame[0] & 0xC0 == 0x40:
                    offset = 4
                elif len(frame) >= 20 and _TYPE_LENGTH.unpack_from(frame)[0] == _DATA_INDICATION:
                    offset = _data_offset(frame)
                    if offset < 0:
                        counters["foreign"] += 1
                        continue
                else:
                    counters["foreign"] += 1
                    continue
                if len(frame) < offset + PROBE_SIZE:
                    counters["foreign"] += 1
                    continue
                _seq, sent_ns = probe_unpack_from(frame, offset)
                got += 1
                if t0_ns <= now_ns <= t1_ns:
                    counters["received_in_window"] += 1
                if t0_ns <= sent_ns <= t1_ns:
                    counters["replies_for_window"] += 1
                    rtts.append(now_ns - sent_ns)
            counters["received"] += got
            return got

        selector = self.selector
        next_progress = time.monotonic() + PROGRESS_INTERVAL
        if spec.rate:
            interval = 1.0 / spec.rate
            start = time.monotonic()
            schedule = [(start + interval * i / max(1, len(clients)), i) for i in range(len(clients))]
            heapq.heapify(schedule)
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                timeout = schedule[0][0] - now if schedule and now < stop_at else min(0.05, end - now)
                for key, _ in selector.select(max(0.0, min(timeout, 0.05))):
                    receive(key.data)
                now = time.monotonic()
                while schedule and schedule[0][0] <= now and now < stop_at:
                    due, index = heapq.heappop(schedule)
                    send(clients[index])
                    heapq.heappush(schedule, (due + interval, index))
                if now >= next_progress:
                    emit("progress", phase="traffic", sent=counters["sent"], received=counters["received"])
                    next_progress = now + PROGRESS_INTERVAL
        else:
            window = spec.window
            now = time.monotonic()
            for client in clients:
                client.last_heard = now
                for _ in range(window):
                    if not send(client):
                        break
            next_stall_check = now + STALL_TIMEOUT / 2
            sending = True
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                if sending and now >= stop_at:
                    sending = False
                for key, _ in selector.select(0.02):
                    client = key.data
                    got = receive(client)
                    if got:
                        client.inflight = max(0, client.inflight - got)
                        client.last_heard = now
                        if sending:
                            while client.inflight < window and send(client):
                                pass
                now = time.monotonic()
                if sending and now >= next_stall_check:
                    for client in clients:
                        if client.inflight and now - client.last_heard > STALL_TIMEOUT:
                            client.inflight = 0
                            client.last_heard = now
                            while client.inflight < window and send(client):
                                pass
                    next_stall_check = now + STALL_TIMEOUT / 2
                if now >= next_progress:
                    emit("progress", phase="traffic", sent=counters["sent"], received=counters["received"])
                    next_progress = now + PROGRESS_INTERVAL
        samples = _subsample(sorted(rtts), MAX_RTT_SAMPLES)
        return {**counters, "clients_active": len(clients), "rtt_us": [round(v / 1000.0, 1) for v in samples]}

    def close(self) -> None:
        for client in self.clients:
            if client.sock is not None:
                client.sock.close()
        self.selector.close()


def _data_offset(frame: bytes) -> int:
    """Offset of the DATA value inside a Data indication, or -1."""
    position, size = 20, len(frame)
    while position + 4 <= size:
        attr_type, attr_length = _TYPE_LENGTH.unpack_from(frame, position)
        if attr_type == Attr.DATA:
            return position + 4
        position += 4 + ((attr_length + 3) & ~3)
    return -1


def _subsample(values: list[Any], limit: int) -> list[Any]:
    """At most `limit` evenly spaced values of a sorted list (keeps the percentiles)."""
    if len(values) <= limit:
        return list(values)
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]


def run_clients(spec: ClientSpec, setup_timeout: float) -> int:
    raise_fd_limit(spec.clients + 256)
    fleet = ClientFleet(spec)
    try:
        stats = fleet.setup(time.monotonic() + setup_timeout)
        emit("ready", **stats)
        while True:
            command = read_command(sys.stdin)
            if command["cmd"] == "go":
                result = fleet.traffic(float(command["t0"]), float(command["t1"]), float(command["stop_at"]),
                                       float(command["end"]))
                emit("result", **result)
                continue
            emit("stopped")
            return 0
    finally:
        fleet.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    echo = roles.add_parser("echo", help="UDP echo peers")
    echo.add_argument("--sockets", type=int, default=4)
    clients = roles.add_parser("clients", help="TURN clients")
    clients.add_argument("--spec", required=True, help="ClientSpec as JSON")
    clients.add_argument("--setup-timeout", type=float, default=60.0)
    arguments = parser.parse_args(argv)
    random.seed()
    if arguments.role == "echo":
        return run_echo(arguments.sockets)
    return run_clients(ClientSpec.from_json(arguments.spec), arguments.setup_timeout)


if __name__ == "__main__":
    raise SystemExit(main())
