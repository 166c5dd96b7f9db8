"""Core-only micro benchmark: what pyturn's protocol code costs per operation, with no socket and no event loop.

    python -m benchmarks.micro_core [--allocations N] [--packets N] [--json PATH]

It drives pyturn.core.dispatch.TurnServerCore directly, playing the adapter (relay sockets are plain objects), and
reports nanoseconds per operation (best of --repeat runs) for:

* allocation set-up: Allocate -> 401, authenticated Allocate (+ relay_opened), ChannelBind;
* client -> peer ChannelData: the adapter's route-table lookup (what UdpListener does per datagram) and the
  core's own path (TurnServerCore.handle_client);
* client -> peer Send indication (STUN decode + permission check);
* peer -> client: a bound channel (ChannelData header) and no channel (Data indication encode).

These figures measure the interpreter's share only. Kernel work (recvfrom/sendto, about 2-4 µs per datagram
on loopback) and the event loop come on top; benchmarks.relay measures those end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyturn.config import Config
from pyturn.core.actions import OpenRelay, SendToClient, SendToPeer
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.userdb import UserDB
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import encode_channel_data
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

USERNAME, PASSWORD, REALM = "test", "1234", "reTurn"
SERVER = ("192.0.2.1", 3478)
PEER = ("198.51.100.7", 5000)
CHANNEL = 0x4000
PAYLOAD = bytes(170)


@dataclass(frozen=True, slots=True)
class FakeRelay:
    port: int


def _client(index: int) -> FiveTuple:
    return FiveTuple(Transport.UDP, (f"203.0.{index // 60000 % 250}.{index // 250 % 250 + 1}", 1024 + index % 60000),
                     SERVER)


def _core() -> TurnServerCore:
    config = Config(allocation_port_range_min=10000, allocation_port_range_max=65535, log_level="WARNING")
    users = UserDB.from_passwords({USERNAME: PASSWORD}, REALM)
    return TurnServerCore(config, users=users.lookup, secret=b"\x01" * 32)


def _request(method: int, attributes: Sequence[tuple[int, Any]], nonce: str | None, key: bytes | None) -> bytes:
    message = Message(method, MessageClass.REQUEST, os.urandom(12), list(attributes))
    if nonce is None or key is None:
        return encode_message(message)
    message.add(Attr.USERNAME, USERNAME).add(Attr.REALM, REALM).add(Attr.NONCE, nonce)
    return encode_message(message, integrity_key=key)


def _nonce(core: TurnServerCore, now: float) -> str:
    actions = core.handle_client(_request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], None, None),
                                 _client(10**6), now)
    reply = decode_message(next(a for a in actions if isinstance(a, SendToClient)).data)
    nonce: str = reply.get(Attr.NONCE)
    return nonce


def _best(repeat: int, count: int, body: Callable[[], None]) -> float:
    """Nanoseconds per operation: best of `repeat` timings of body(), which performs `count` operations."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        body()
        best = min(best, (time.perf_counter_ns() - started) / count)
    return best


def bench_allocations(count: int, repeat: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"challenge_401": [], "allocate_authenticated": [], "channel_bind": []}
    for _ in range(repeat):
        core = _core()
        now = 1000.0
        nonce = _nonce(core, now)
        key = long_term_key(USERNAME, REALM, PASSWORD)
        tuples = [_client(i) for i in range(count)]
        allocate = [(Attr.REQUESTED_TRANSPORT, 17)]
        unauthenticated = [_request(Method.ALLOCATE, allocate, None, None) for _ in tuples]
        authenticated = [_request(Method.ALLOCATE, allocate, nonce, key) for _ in tuples]
        binds = [_request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, PEER)],
                          nonce, key) for _ in tuples]
        handle_client, relay_opened = core.handle_client, core.relay_opened

        started = time.perf_counter_ns()
        for data, five_tuple in zip(unauthenticated, tuples, strict=True):
            handle_client(data, five_tuple, now)
        results["challenge_401"].append((time.perf_counter_ns() - started) / count)

        started = time.perf_counter_ns()
        for index, (data, five_tuple) in enumerate(zip(authenticated, tuples, strict=True)):
            for action in handle_client(data, five_tuple, now):
                if type(action) is OpenRelay:
                    relay_opened(action.token, FakeRelay(index), ("192.0.2.1", action.port), now)
        results["allocate_authenticated"].append((time.perf_counter_ns() - started) / count)
        if len(core.allocations) != count:
            raise SystemExit(f"only {len(core.allocations)} of {count} allocations were created")

        started = time.perf_counter_ns()
        for data, five_tuple in zip(binds, tuples, strict=True):
            handle_client(data, five_tuple, now)
        results["channel_bind"].append((time.perf_counter_ns() - started) / count)
    best = {name: min(values) for name, values in results.items()}
    best["allocation_total"] = sum(best.values())
    return best


def bench_relay(packets: int, repeat: int) -> dict[str, float]:
    core = _core()
    now = 1000.0
    nonce = _nonce(core, now)
    key = long_term_key(USERNAME, REALM, PASSWORD)
    with_channel, without_channel = _client(1), _client(2)
    relays: dict[FiveTuple, FakeRelay] = {}
    for index, five_tuple in enumerate((with_channel, without_channel)):
        for action in core.handle_client(_request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], nonce, key),
                                         five_tuple, now):
            if isinstance(action, OpenRelay):
                relays[five_tuple] = FakeRelay(index)
                core.relay_opened(action.token, relays[five_tuple], ("192.0.2.1", action.port), now)
    core.handle_client(_request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, PEER)],
                                nonce, key), with_channel, now)
    core.handle_client(_request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)], nonce, key),
                       without_channel, now)
    channel_data = encode_channel_data(CHANNEL, PAYLOAD)
    send = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
    send_indication = encode_message(send.add(Attr.XOR_PEER_ADDRESS, PEER).add(Attr.DATA, PAYLOAD))
    routes = core.routes(Transport.UDP, SERVER)
    source = with_channel.client
    for data, five_tuple in ((channel_data, with_channel), (send_indication, without_channel)):
        if not any(isinstance(a, SendToPeer) for a in core.handle_client(data, five_tuple, now)):
            raise SystemExit("the relay path did not produce SendToPeer: set-up failed")
    batch = range(packets)

    def adapter_fast_path() -> None:
        # UdpListener._readable's per-datagram work minus the system calls
        get = routes.get
        for _ in batch:
            data = channel_data
            if len(data) >= 4 and data[0] & 0xC0 == 0x40:
                route = get((source, (data[0] << 8) | data[1]))
                if route is not None:
                    end = 4 + ((data[2] << 8) | data[3])
                    if end <= len(data):
                        route[0].port  # noqa: B018 - stands in for route[0].send(data[4:end], route[1])
                        data[4:end]

    def core_channel_data() -> None:
        handle = core.handle_client
        for _ in batch:
            handle(channel_data, with_channel, now)

    def core_send_indication() -> None:
        handle = core.handle_client
        for _ in batch:
            handle(send_indication, without_channel, now)

    def peer_to_client_channel() -> None:
        handle, relay = core.handle_peer, relays[with_channel]
        for _ in batch:
            handle(relay, PAYLOAD, PEER, now)

    def peer_to_client_data_indication() -> None:
        handle, relay = core.handle_peer, relays[without_channel]
        for _ in batch:
            handle(relay, PAYLOAD, PEER, now)

    return {
        "channel_data_adapter_route_lookup": _best(repeat, packets, adapter_fast_path),
        "channel_data_core_handle_client": _best(repeat, packets, core_channel_data),
        "send_indication_core_handle_client": _best(repeat, packets, core_send_indication),
        "peer_to_client_channel_core": _best(repeat, packets, peer_to_client_channel),
        "peer_to_client_data_indication_core": _best(repeat, packets, peer_to_client_data_indication),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_core", description=__doc__.split("\n")[0])
    parser.add_argument("--allocations", type=int, default=5000)
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    arguments = parser.parse_args(argv)
    allocation = bench_allocations(arguments.allocations, arguments.repeat)
    relay = bench_relay(arguments.packets, arguments.repeat)
    print(f"core only (no sockets), {platform.python_implementation()} {platform.python_version()}, "
          f"best of {arguments.repeat}")
    print(f"{'operation':40}{'ns/op':>10}{'ops/s':>12}")
    for name, value in {**allocation, **relay}.items():
        print(f"{name:40}{value:>10.0f}{1e9 / value:>12.0f}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps({
            "python": platform.python_version(), "cpus": os.cpu_count(), "allocations": arguments.allocations,
            "packets": arguments.packets, "ns_per_op": {**allocation, **relay},
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
