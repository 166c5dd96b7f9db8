"""Timer benchmark: what one TurnServerCore.tick() costs with many deadlines, and whether it stalls relaying.

    python -m benchmarks.tick [--allocations N] [--permissions N] [--channels N] [--window S]
    python -m benchmarks.tick --live [--window S]

Core only (the default): N allocations (10,000), each with 20 permissions and 2 channels, set up at staggered
times over 300 s of a fake clock, as clients arrive. Nine in ten refresh their permissions and channels every
240 s (CreatePermission + ChannelBind); the tenth lets them lapse, so permissions and then channels expire on
every tick. The figures are the p50, p99 and max wall time of one tick() over --window ticks, one per fake
second, after the set-up (the refresh requests run between ticks and are not timed).

--live: the same population inside a real in-process Server (relay handles are stand-ins, the allocations take
no sockets) whose lapsing permissions expire during --window seconds of real time, plus one real client in
another process that relays ChannelData every 5 ms through a real allocation to an echo peer and reports the
longest gap between echoes: a stalled tick() shows up as a gap.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import multiprocessing
import os
import platform
import select
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyturn.config import Config
from pyturn.core.actions import OpenRelay, SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.userdb import UserDB
from pyturn.server import Server, loopback_config
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

USERNAME, PASSWORD, REALM = "test", "1234", "reTurn"
KEY = long_term_key(USERNAME, REALM, PASSWORD)
SPREAD = 300.0  # seconds over which the allocations arrive
REFRESH_EVERY = 240.0  # what clients refresh permissions and channels at (before the 300 s lifetime)
LAPSING = 10  # one allocation in LAPSING never refreshes
PACE = 0.005  # seconds between the live client's ChannelData
LIVE_TIMEOUT = 5.0


class StandInRelay:
    """A relay handle without a socket (the population needs deadlines, not datagrams)."""

    __slots__ = ()

    def close(self) -> None:
        pass

    def send(self, data: bytes, peer: Any) -> None:
        pass


def _request(method: int, attributes: Sequence[tuple[int, Any]], nonce: str | None) -> bytes:
    message = Message(method, MessageClass.REQUEST, os.urandom(12), list(attributes))
    if nonce is None:
        return encode_message(message)
    message.add(Attr.USERNAME, USERNAME).add(Attr.REALM, REALM).add(Attr.NONCE, nonce)
    return encode_message(message, integrity_key=KEY)


@dataclass(slots=True)
class Population:
    """Drives N allocations through the core directly, playing the adapter for them."""

    core: TurnServerCore
    server: tuple[str, int]
    permissions: int
    channels: int
    nonce: str = ""

    def client(self, index: int) -> FiveTuple:
        # 203.0.113.0/24 (TEST-NET-3) sources: nothing is ever sent to them (their answers are discarded).
        return FiveTuple(Transport.UDP, (f"203.0.113.{index % 250 + 1}", 1024 + index // 250), self.server)

    def peers(self) -> list[tuple[str, int]]:
        return [(f"198.51.100.{number + 1}", 5000) for number in range(max(self.permissions, self.channels))]

    def challenge(self, now: float) -> None:
        actions = self.core.handle_client(_request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], None),
                                          self.client(10**6), now)
        reply = decode_message(next(a for a in actions if isinstance(a, SendToClient)).data)
        self.nonce = reply.get(Attr.NONCE)

    def allocate(self, index: int, now: float) -> None:
        five_tuple = self.client(index)
        request = _request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.LIFETIME, 3600)], self.nonce)
        for action in self.core.handle_client(request, five_tuple, now):
            if type(action) is OpenRelay:
                self.core.relay_opened(action.token, StandInRelay(), ("127.0.0.1", action.port), now)
        if five_tuple not in self.core.allocations:
            raise SystemExit(f"allocation {index} failed")
        self.refresh(index, now)

    def refresh(self, index: int, now: float) -> None:
        five_tuple = self.client(index)
        peers = self.peers()
        handle = self.core.handle_client
        handle(_request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer) for peer in
                                                   peers[:self.permissions]], self.nonce), five_tuple, now)
        for number in range(self.channels):
            handle(_request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000 + number),
                                                  (Attr.XOR_PEER_ADDRESS, peers[number])], self.nonce),
                   five_tuple, now)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_core(
    allocations: int, permissions: int, channels: int, window: int, *, tick_during_set_up: bool = True
) -> dict[str, float]:
    config = Config(allocation_port_range_min=10000, allocation_port_range_max=65535, nonce_lifetime=10**6,
                    max_allocation_lifetime=3600, log_level="WARNING")
    core = TurnServerCore(config, users=UserDB.from_passwords({USERNAME: PASSWORD}, REALM).lookup,
                          secret=b"\x01" * 32)
    population = Population(core, ("192.0.2.1", 3478), permissions, channels)
    start = 1000.0
    population.challenge(start)
    step = SPREAD / allocations
    created = [start + index * step for index in range(allocations)]
    next_refresh = [at + REFRESH_EVERY for at in created]

    def refresh_due(now: float) -> None:
        for index in range(allocations):
            if index % LAPSING and next_refresh[index] <= now:
                population.refresh(index, now)
                next_refresh[index] += REFRESH_EVERY

    set_up = time.perf_counter()
    second = start
    for index, at in enumerate(created):
        if at >= second + 1:
            second += 1
            refresh_due(second)
            if tick_during_set_up:
                core.tick(second)
        population.allocate(index, at)
    set_up = time.perf_counter() - set_up
    heap_before = len(core.state.deadlines)  # reported, to show the population's size
    times: list[float] = []
    collected: list[bool] = []  # whether the cyclic garbage collector ran during that tick
    collections = [0]

    def count_collections(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            collections[0] += 1

    gc.callbacks.append(count_collections)
    expired_permissions = 0
    now = start + SPREAD
    for _ in range(window):
        now += 1.0
        refresh_due(now)
        permissions_before = sum(len(a.permissions) for a in core.allocations.values()) if not times else 0
        before = collections[0]
        began = time.perf_counter()
        core.tick(now)
        times.append(time.perf_counter() - began)
        collected.append(collections[0] != before)
        if permissions_before:
            expired_permissions = permissions_before - sum(len(a.permissions) for a in core.allocations.values())
    gc.callbacks.remove(count_collections)
    without_gc = [spent for spent, gc_ran in zip(times, collected, strict=True) if not gc_ran]
    return {
        "set_up_s": set_up,
        "heap_entries": heap_before,
        "ticks": len(times),
        "first_tick_expired_permissions": expired_permissions,
        "tick_p50_ms": 1000 * statistics.median(times),
        "tick_p99_ms": 1000 * _percentile(times, 0.99),
        "tick_max_ms": 1000 * max(times),
        "slowest_tick": times.index(max(times)),
        "ticks_with_full_gc": sum(collected),
        "tick_max_without_full_gc_ms": 1000 * max(without_gc, default=0.0),
    }


# -------------------------------------------------------------------------------------------------- live
def _paced_client(server: tuple[str, int], seconds: float, result: Any) -> None:
    """The child process: allocate, bind a channel to an echo peer, relay every PACE s, report the longest gap."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    peer.bind(("127.0.0.1", 0))
    client.settimeout(LIVE_TIMEOUT)

    def transact(attributes: Sequence[tuple[int, Any]], method: int, nonce: str | None) -> Message:
        client.sendto(_request(method, attributes, nonce), server)
        return decode_message(client.recvfrom(65535)[0])

    allocate = [(Attr.REQUESTED_TRANSPORT, 17)]
    nonce = transact(allocate, Method.ALLOCATE, None).get(Attr.NONCE)
    relayed = transact(allocate, Method.ALLOCATE, nonce).get(Attr.XOR_RELAYED_ADDRESS)
    bound = transact([(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, peer.getsockname())],
                     Method.CHANNEL_BIND, nonce)
    if bound.msg_class is not MessageClass.SUCCESS:
        result.put(("ChannelBind failed", 0.0, 0))
        return
    client.setblocking(False)
    peer.setblocking(False)
    payload = bytes(160)
    frame = encode_channel_data(0x4000, payload)
    arrivals: list[float] = []
    deadline = time.monotonic() + seconds
    next_send = time.monotonic()
    while (now := time.monotonic()) < deadline:
        if now >= next_send:
            client.sendto(frame, server)
            next_send += PACE
        readable, _, _ = select.select([client, peer], [], [], max(0.0, next_send - time.monotonic()))
        for sock in readable:
            try:
                data, _ = sock.recvfrom(65535)
            except BlockingIOError:
                continue
            if sock is peer:
                peer.sendto(data, relayed)  # the echo goes back through the relay
            elif decode_channel_data(data)[0] == 0x4000:
                arrivals.append(time.monotonic())
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    result.put(("ok", max(gaps) if gaps else float("inf"), len(arrivals)))


async def _live(allocations: int, permissions: int, channels: int, window: float) -> dict[str, Any]:
    config = loopback_config(nonce_lifetime=10**6, max_allocation_lifetime=3600, log_level="WARNING",
                             allocation_port_range_min=20000, allocation_port_range_max=60999)
    async with Server(config, users={USERNAME: PASSWORD}, transports=("udp",), keep_events=16) as server:
        core = server.core
        assert core is not None
        loop = asyncio.get_running_loop()
        listener = server.addresses["udp"][0]
        population = Population(core, listener, permissions, channels)
        now = loop.time()
        population.challenge(now - 300.0)  # nonces are checked for age: issue one before every use
        # The lapsing tenth was set up about 300 s ago, so its permissions expire during the window; the rest
        # were set up (and refreshed once, leaving stale heap entries) just now.
        for index in range(allocations):
            if index % LAPSING:
                population.allocate(index, now)
                population.refresh(index, now)
            else:
                population.allocate(index, now - 300.0 + 1.0 + window * index / allocations)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        child = context.Process(target=_paced_client, args=(listener, window, queue))
        child.start()
        began = loop.time()
        while child.is_alive() and loop.time() - began < window + 30:
            await asyncio.sleep(0.1)
        child.join(timeout=1)
        if child.is_alive():
            child.kill()
            raise SystemExit("the paced client did not finish")
        status, gap, received = queue.get(timeout=1)
        lapsed = sum(1 for a in core.allocations.values() if a.username == USERNAME and len(a.permissions) == 0)
        return {"status": status, "longest_gap_ms": 1000 * gap, "echoes": received,
                "allocations_with_expired_permissions": lapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tick", description=__doc__.split("\n")[0])
    parser.add_argument("--allocations", type=int, default=10_000)
    parser.add_argument("--permissions", type=int, default=20)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--window", type=int, default=120, help="ticks measured (core) or seconds (--live)")
    parser.add_argument("--live", action="store_true", help="a real server and a paced client (see above)")
    parser.add_argument("--no-set-up-ticks", action="store_true",
                        help="no tick() during the set-up (how the figures before the timer fix were taken)")
    arguments = parser.parse_args(argv)
    print(f"{platform.python_implementation()} {platform.python_version()}, {arguments.allocations} allocations x "
          f"{arguments.permissions} permissions x {arguments.channels} channels")
    if arguments.live:
        figures = asyncio.run(_live(arguments.allocations, arguments.permissions, arguments.channels,
                                    arguments.window))
    else:
        figures = bench_core(arguments.allocations, arguments.permissions, arguments.channels, arguments.window,
                             tick_during_set_up=not arguments.no_set_up_ticks)
    for name, value in figures.items():
        print(f"{name:40}{value:>12.3f}" if isinstance(value, float) else f"{name:40}{value!s:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
