"""Fuzz harness for the sans-IO TURN core (pyturn.core.dispatch.TurnServerCore).

A FuzzedDataProvider script drives one core (fake clock, a fake adapter that answers OpenRelay at once, later or
with a failure) through client datagrams from nine 5-tuples (three clients x UDP/TCP/TLS): authenticated
Allocate/Refresh/CreatePermission/ChannelBind requests with fuzz-chosen attributes, Send indications,
ChannelData, requests with arbitrary attribute bytes (signed or not), raw and mutated datagrams, plus peer
datagrams, clock ticks and TCP/TLS connection closes. No exception may escape, everything the core sends a
client must decode, and tests/test_core_fuzz.check_invariants holds after every step. At the end every
allocation expires and every relay port returns to the pool.
Run a campaign with `python tests/fuzz/fuzz_core.py corpus/core/` (see README.md).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import sys
from ipaddress import ip_network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzkit

sys.path.insert(0, str(fuzzkit.TESTS_DIR / "support"))
sys.path.insert(0, str(fuzzkit.TESTS_DIR / "core"))

with fuzzkit.instrumented_imports(__name__ == "__main__"):
    from test_core_fuzz import PASSWORD, PEERS, REALM, Driver, check_invariants

    from pyturn.config import Config
    from pyturn.core.actions import OpenRelay, RelayFailure, SendFrom, SendToClient
    from pyturn.core.allocation import FiveTuple, Transport
    from pyturn.wire.codec import decode_message, encode_message
    from pyturn.wire.framing import decode_channel_data, encode_channel_data
    from pyturn.wire.message import Attr, Message, MessageClass, Method

CLIENT_HOSTS = [("203.0.113.1", 40000), ("203.0.113.1", 40001), ("203.0.113.2", 40000)]
SERVER = ("192.0.2.1", 3478)
TRANSPORTS = (Transport.UDP, Transport.TCP, Transport.TLS)
FIVE_TUPLES = [FiveTuple(transport, client, SERVER) for client in CLIENT_HOSTS for transport in TRANSPORTS]
ALL_PEERS = [*PEERS, ("2001:db8::7", 6000), ("192.0.2.1", 3478), ("0.0.0.0", 0)]
USERS = ("u0", "u1", "nobody")
METHODS = (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND, Method.BINDING,
           Method.SEND, Method.CONNECT, 0x0FF)
ODD_ATTRIBUTES = (Attr.LIFETIME, Attr.REQUESTED_TRANSPORT, Attr.XOR_PEER_ADDRESS, Attr.CHANNEL_NUMBER, Attr.DATA,
                  Attr.EVEN_PORT, Attr.RESERVATION_TOKEN, Attr.REQUESTED_ADDRESS_FAMILY, Attr.DONT_FRAGMENT,
                  Attr.USERNAME, Attr.NONCE, Attr.REALM, Attr.CHANGE_REQUEST, Attr.RESPONSE_PORT, 0x0030, 0xC001)
CONFIGS: list[dict[str, Any]] = [
    {},
    {"max_permissions_per_allocation": 2, "max_channels_per_allocation": 1, "max_allocations_per_user": 1},
    {"unauthenticated_rate_limit": 2, "tcp_channel_data_padding": False, "max_allocations": 2},
    {"allocation_port_range_min": 50000, "allocation_port_range_max": 50003, "software_name": ""},
]
OPERATIONS = 14
SETTLE_MODES = (0, 2, 3, 4)  # a deferred bind is opened or fails (never deferred again)
MAX_STEPS = 64


class FuzzDriver(Driver):
    """test_core_fuzz.Driver over nine 5-tuples; the fake adapter may defer or fail a relay bind."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.deferred: list[OpenRelay] = []
        self.handles: list[Any] = []  # type: ignore[assignment]
        self.reservation_tokens: list[bytes] = []
        self.relay_mode = 0  # 0: open at once, 1: defer, 2: port in use, 3: family unavailable, 4: other

    def deliver(self, index: int, data: bytes) -> None:
        self.process(index, self.core.handle_client(data, FIVE_TUPLES[index], self.now))

    def process(self, index: int, actions: list[Any]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, OpenRelay):
                queue.extend(self.answer_relay(action, self.relay_mode))
            elif isinstance(action, SendToClient | SendFrom):
                self.observe(FIVE_TUPLES.index(action.five_tuple) if isinstance(action, SendToClient) else index,
                             action.data)

    def answer_relay(self, action: OpenRelay, mode: int) -> list[Any]:
        if mode == 1:
            self.deferred.append(action)
            return []
        if mode in (2, 3, 4):
            failure = (RelayFailure.PORT_IN_USE, RelayFailure.FAMILY_UNAVAILABLE, RelayFailure.OTHER)[mode - 2]
            return self.core.relay_failed(action.token, failure, self.now)
        handle = ("relay", len(self.handles) + 1)
        self.handles.append(handle)
        return self.core.relay_opened(action.token, handle, (action.host, action.port), self.now)

    def observe(self, index: int, data: bytes) -> None:
        """Whatever the core sends a client is well formed; remember nonces and reservation tokens."""
        if data[0] & 0xC0:
            decode_channel_data(data)
            return
        response = decode_message(data)
        nonce = response.get(Attr.NONCE)
        if nonce is not None:
            self.nonces[index] = nonce
        token = response.get(Attr.RESERVATION_TOKEN)
        if token is not None:
            self.reservation_tokens.append(token)

    def signed(self, index: int, method: int, body: bytes, user: str, authenticate: bool) -> bytes:
        """A request with raw attribute bytes, then USERNAME/REALM/NONCE and MESSAGE-INTEGRITY when asked."""
        tid = next(self.tids).to_bytes(12, "big")
        message = Message(method, MessageClass.REQUEST, tid)
        nonce = self.nonces.get(index)
        if authenticate and nonce is not None:
            message.add(Attr.USERNAME, user).add(Attr.REALM, REALM).add(Attr.NONCE, nonce)
        head = encode_message(message)
        data = bytearray(head[:20] + body + head[20:])
        if authenticate and nonce is not None:  # RFC 8489 §14.5 by hand: the body is not Message-encodable
            struct.pack_into("!H", data, 2, len(data) - 20 + 24)
            key = hashlib.md5(f"{user}:{REALM}:{PASSWORD}".encode()).digest()
            data += struct.pack("!HH", Attr.MESSAGE_INTEGRITY, 20) + hmac.digest(key, bytes(data), "sha1")
        else:
            struct.pack_into("!H", data, 2, len(data) - 20)
        return bytes(data)


def _peer(provider: fuzzkit.DataProvider) -> tuple[str, int]:
    return ALL_PEERS[provider.ConsumeIntInRange(0, len(ALL_PEERS) - 1)]


def _raw_attributes(provider: fuzzkit.DataProvider) -> bytes:
    body = bytearray()
    for _ in range(provider.ConsumeIntInRange(0, 4)):
        attr = ODD_ATTRIBUTES[provider.ConsumeIntInRange(0, len(ODD_ATTRIBUTES) - 1)]
        value = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 24))
        body += struct.pack("!HH", attr, len(value)) + value + b"\x00" * (-len(value) % 4)
    return bytes(body)


def _step(driver: FuzzDriver, provider: fuzzkit.DataProvider, last_request: bytes) -> bytes:
    """One operation; returns the latest request sent (for the mutate operation)."""
    operation = provider.ConsumeIntInRange(0, OPERATIONS - 1)
    index = provider.ConsumeIntInRange(0, len(FIVE_TUPLES) - 1)
    core = driver.core
    user = USERS[provider.ConsumeIntInRange(0, len(USERS) - 1)]
    request: bytes | None = None
    if operation == 0:  # Allocate
        flags = provider.ConsumeIntInRange(0, 255)
        attributes: list[tuple[int, Any]] = []
        if not flags & 1:
            attributes.append((Attr.REQUESTED_TRANSPORT, 17 if flags & 2 else provider.ConsumeIntInRange(0, 255)))
        if flags & 4:
            attributes.append((Attr.EVEN_PORT, bool(flags & 8)))
        if flags & 16:
            attributes.append((Attr.LIFETIME, provider.ConsumeIntInRange(0, 4000)))
        if flags & 32 and driver.reservation_tokens:
            attributes.append((Attr.RESERVATION_TOKEN, driver.reservation_tokens[-1]))
        if flags & 64:
            attributes.append((Attr.REQUESTED_ADDRESS_FAMILY, provider.ConsumeIntInRange(1, 3)))
        if flags & 128:
            attributes.append((Attr.DONT_FRAGMENT, True))
        request = driver.request(index, Method.ALLOCATE, attributes, user=user)
    elif operation == 1:  # Refresh
        lifetime = provider.ConsumeIntInRange(-1, 4000)
        request = driver.request(index, Method.REFRESH, [] if lifetime < 0 else [(Attr.LIFETIME, lifetime)], user=user)
    elif operation == 2:  # CreatePermission
        peers: list[tuple[int, Any]] = [
            (Attr.XOR_PEER_ADDRESS, _peer(provider)) for _ in range(provider.ConsumeIntInRange(0, 3))
        ]
        request = driver.request(index, Method.CREATE_PERMISSION, peers, user=user)
    elif operation == 3:  # ChannelBind
        channel = provider.ConsumeIntInRange(0x3FFE, 0x8001)
        attributes = [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, _peer(provider))]
        request = driver.request(index, Method.CHANNEL_BIND, attributes[: provider.ConsumeIntInRange(1, 2)], user=user)
    elif operation == 4:  # Send indication
        indication = Message(Method.SEND, MessageClass.INDICATION, next(driver.tids).to_bytes(12, "big"))
        indication.add(Attr.XOR_PEER_ADDRESS, _peer(provider)).add(Attr.DATA, provider.ConsumeBytes(48))
        driver.deliver(index, encode_message(indication))
    elif operation == 5:  # ChannelData
        channel = provider.ConsumeIntInRange(0x4000, 0x4003)
        driver.deliver(index, encode_channel_data(channel, provider.ConsumeBytes(48), pad=provider.ConsumeBool()))
    elif operation == 6:  # a datagram from a peer to a relay socket (or to an unknown handle)
        handles = driver.handles
        handle_index = provider.ConsumeIntInRange(0, len(handles))
        handle = handles[handle_index] if handle_index < len(handles) else ("relay", 0)
        peer = _peer(provider)
        for action in core.handle_peer(handle, provider.ConsumeBytes(48), peer, driver.now):
            if isinstance(action, SendToClient):
                driver.observe(FIVE_TUPLES.index(action.five_tuple), action.data)
    elif operation == 7:  # raw bytes
        driver.deliver(index, provider.ConsumeBytes(provider.ConsumeIntInRange(0, 96)))
    elif operation == 8:  # the last request with one byte changed
        if last_request:
            mutated = bytearray(last_request)
            mutated[provider.ConsumeIntInRange(0, len(mutated) - 1)] ^= provider.ConsumeIntInRange(1, 255)
            driver.deliver(index, bytes(mutated))
    elif operation == 9:  # the clock moves
        driver.now += provider.ConsumeIntInRange(0, 700) + provider.ConsumeIntInRange(0, 99) / 100
        driver.process(index, core.tick(driver.now))
    elif operation == 10:  # a TCP/TLS connection closes (a UDP 5-tuple: nothing happens)
        driver.process(index, core.connection_closed(FIVE_TUPLES[index], driver.now))
    elif operation == 11:  # how the fake adapter answers OpenRelay from now on; settle one deferred bind
        driver.relay_mode = provider.ConsumeIntInRange(0, 4)
        if driver.deferred:
            pending = driver.deferred.pop(provider.ConsumeIntInRange(0, len(driver.deferred) - 1))
            driver.process(index, driver.answer_relay(pending, SETTLE_MODES[provider.ConsumeIntInRange(0, 3)]))
    elif operation == 12:  # a request with attribute bytes straight from the input, signed or not
        method = METHODS[provider.ConsumeIntInRange(0, len(METHODS) - 1)]
        request = driver.signed(index, method, _raw_attributes(provider), user, provider.ConsumeBool())
    else:  # a retransmission of the last request (the response cache)
        if last_request:
            driver.deliver(index, last_request)
    if request is not None:
        driver.deliver(index, request)
        return request
    return last_request


def TestOneInput(data: bytes) -> None:
    provider = fuzzkit.provider_for(data)
    overrides = CONFIGS[provider.ConsumeIntInRange(0, len(CONFIGS) - 1)]
    values: dict[str, Any] = {
        "allocation_port_range_min": 50000, "allocation_port_range_max": 50015,
        "allowed_peer_addresses": (ip_network("127.0.0.0/8"),),
    }
    values.update(overrides)
    driver = FuzzDriver(Config(**values))
    last_request = b""
    steps = 0
    while provider.remaining_bytes() and steps < MAX_STEPS:
        last_request = _step(driver, provider, last_request)
        check_invariants(driver.core, driver.now)
        steps += 1
    while driver.deferred:  # the adapter answers every bind it still owes
        driver.process(0, driver.answer_relay(driver.deferred.pop(), 0))
    for _ in range(2):
        driver.now += 4000
        driver.process(0, driver.core.tick(driver.now))
        check_invariants(driver.core, driver.now)
    assert not driver.core.allocations
    assert not driver.core.state.pending
    assert driver.core.ports.in_use == 0


if __name__ == "__main__":
    fuzzkit.fuzz_main(TestOneInput)
