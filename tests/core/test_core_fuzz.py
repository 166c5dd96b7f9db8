"""Property tests over the sans-IO core: random sequences of valid and mutated messages from several clients
never raise and never break the table invariants (docs/security.md case 12)."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable
from ipaddress import ip_network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyturn.config import Config
from pyturn.core.actions import OpenRelay, SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.userdb import UserDB
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import encode_channel_data
from pyturn.wire.message import Attr, Message, MessageClass, Method

REALM = "reTurn"
PASSWORD = "pw"
SERVER = ("192.0.2.1", 3478)
CLIENTS = [("203.0.113.1", 40000 + n) for n in range(3)]
PEERS = [("198.51.100.1", 5000), ("198.51.100.2", 5001), ("127.0.0.1", 5002)]


def _randbytes() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda size: hashlib.sha256(next(counter).to_bytes(8, "big")).digest()[:size]


class Driver:
    """Plays the adapter: answers OpenRelay at once, remembers the last nonce each client saw."""

    def __init__(self, config: Config) -> None:
        users = UserDB.from_passwords({"u0": PASSWORD, "u1": PASSWORD}, REALM)
        self.core = TurnServerCore(config, users=users.lookup, secret=b"s" * 32, rng=random.Random(3),
                                   randbytes=_randbytes())
        self.now = 1000.0
        self.nonces: dict[int, str] = {}
        self.tids = itertools.count(1)
        self.handles = itertools.count(1)

    def five_tuple(self, client: int, transport: Transport) -> FiveTuple:
        return FiveTuple(transport, CLIENTS[client], SERVER)

    def feed(self, client: int, transport: Transport, data: bytes) -> None:
        actions = list(self.core.handle_client(data, self.five_tuple(client, transport), self.now))
        while actions:
            action = actions.pop(0)
            if isinstance(action, OpenRelay):
                handle = ("relay", next(self.handles))
                actions.extend(self.core.relay_opened(action.token, handle, ("192.0.2.1", action.port), self.now))
            elif isinstance(action, SendToClient):
                response = decode_message(action.data) if action.data[0] & 0xC0 == 0 else None
                if response is not None and response.get(Attr.NONCE) is not None:
                    self.nonces[client] = response.get(Attr.NONCE)

    def request(self, client: int, method: int, attributes: list[tuple[int, Any]], *, user: str = "u0") -> bytes:
        message = Message(method, MessageClass.REQUEST, next(self.tids).to_bytes(12, "big"))
        for attr, value in attributes:
            message.add(attr, value)
        nonce = self.nonces.get(client)
        if nonce is None:
            return encode_message(message)
        message.add(Attr.USERNAME, user).add(Attr.REALM, REALM).add(Attr.NONCE, nonce)
        key = hashlib.md5(f"{user}:{REALM}:{PASSWORD}".encode()).digest()
        return encode_message(message, integrity_key=key)


def check_invariants(core: TurnServerCore, now: float) -> None:
    allocations = core.allocations
    assert len(core.state.by_handle) == len(allocations)
    for five_tuple, allocation in allocations.items():
        assert allocation.five_tuple == five_tuple
        assert core.allocation_for_handle(allocation.relay_handle) is allocation
        for channel, binding in allocation.channels.items():
            assert binding.channel == channel
            assert [other.peer for other in allocation.channels.values()].count(binding.peer) == 1
        for peer, channel in allocation.channel_for_peer.items():
            assert allocation.channels[channel].peer == peer
    assert sum(core.state.per_user.values()) == len(allocations)
    live_handles = {allocation.relay_handle for allocation in allocations.values()}
    for table in core.route_table.listeners():
        for (client, channel), (handle, peer) in table.items():
            assert handle in live_handles
            allocation = core.allocation_for_handle(handle)
            assert allocation is not None and allocation.five_tuple.client == client
            assert allocation.channels[channel].peer == peer


def _operation() -> st.SearchStrategy[tuple[Any, ...]]:
    client = st.integers(0, len(CLIENTS) - 1)
    peer = st.sampled_from(PEERS)
    channel = st.one_of(st.integers(0x4000, 0x4003), st.integers(0x3FF0, 0x8010))
    lifetime = st.one_of(st.none(), st.integers(0, 4000))
    return st.one_of(
        st.tuples(st.just("allocate"), client, st.booleans(), st.sampled_from([17, 17, 17, None, 6])),
        st.tuples(st.just("refresh"), client, lifetime),
        st.tuples(st.just("permission"), client, st.lists(peer, max_size=3)),
        st.tuples(st.just("channel"), client, channel, peer),
        st.tuples(st.just("send"), client, peer, st.binary(max_size=40)),
        st.tuples(st.just("channeldata"), client, channel, st.binary(max_size=40)),
        st.tuples(st.just("peer"), st.integers(0, 5), peer, st.binary(max_size=40)),
        st.tuples(st.just("garbage"), client, st.binary(max_size=80)),
        st.tuples(st.just("mutate"), client, st.integers(0, 10_000), st.integers(0, 255)),
        st.tuples(st.just("tcp_close"), client),
        st.tuples(st.just("advance"), st.floats(0, 700)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(_operation(), max_size=40), transport=st.sampled_from(list(Transport)))
def test_core_random_sequences_never_raise_and_keep_invariants(
    operations: list[tuple[Any, ...]], transport: Transport
) -> None:
    config = Config(allocation_port_range_min=50000, allocation_port_range_max=50015,
                    allowed_peer_addresses=(ip_network("127.0.0.0/8"),))
    driver = Driver(config)
    last_request = b""
    for client in (0, 1):  # a head start: two clients hold allocations before the random part
        for _ in range(2):
            driver.feed(client, transport, driver.request(client, Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert len(driver.core.allocations) == 2
    for operation in operations:
        kind = operation[0]
        if kind == "advance":
            driver.now += operation[1]
            driver.core.tick(driver.now)
        elif kind == "peer":
            handle = ("relay", operation[1])
            driver.core.handle_peer(handle, operation[3], operation[2], driver.now)
        elif kind == "tcp_close":
            driver.core.connection_closed(driver.five_tuple(operation[1], transport), driver.now)
        elif kind == "garbage":
            driver.feed(operation[1], transport, operation[2])
        elif kind == "mutate":
            if last_request:
                mutated = bytearray(last_request)
                mutated[operation[2] % len(mutated)] ^= operation[3] or 1
                driver.feed(operation[1], transport, bytes(mutated))
        elif kind == "channeldata":
            driver.feed(operation[1], transport, encode_channel_data(max(operation[2], 0x4000), operation[3]))
        elif kind == "send":
            indication = Message(Method.SEND, MessageClass.INDICATION, b"\x01" * 12)
            indication.add(Attr.XOR_PEER_ADDRESS, operation[2]).add(Attr.DATA, operation[3])
            driver.feed(operation[1], transport, encode_message(indication))
        else:
            client = operation[1]
            if kind == "allocate":
                attributes: list[tuple[int, Any]] = []
                if operation[3] is not None:
                    attributes.append((Attr.REQUESTED_TRANSPORT, operation[3]))
                if operation[2]:
                    attributes.append((Attr.EVEN_PORT, True))
                last_request = driver.request(client, Method.ALLOCATE, attributes)
            elif kind == "refresh":
                attributes = [] if operation[2] is None else [(Attr.LIFETIME, operation[2])]
                last_request = driver.request(client, Method.REFRESH, attributes)
            elif kind == "permission":
                last_request = driver.request(
                    client, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, p) for p in operation[2]]
                )
            else:
                attributes = [(Attr.CHANNEL_NUMBER, operation[2]), (Attr.XOR_PEER_ADDRESS, operation[3])]
                last_request = driver.request(client, Method.CHANNEL_BIND, attributes)
            driver.feed(client, transport, last_request)
        check_invariants(driver.core, driver.now)
    driver.now += 4000
    driver.core.tick(driver.now)
    check_invariants(driver.core, driver.now)
    assert not driver.core.allocations  # everything expires in the end
    assert driver.core.ports.in_use == 0
