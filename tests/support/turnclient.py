"""Test helpers for driving the sans-IO core: a fake adapter with a fake clock and a TURN client doing the 401 dance.

Nothing here opens a socket or sleeps. `Harness` owns a TurnServerCore and a float clock and plays the asyncio
adapter: OpenRelay actions are answered at once with relay_opened() (or relay_failed() for ports listed in
`busy_ports`, the odd port of an EVEN-PORT R pair included). `TurnClient` builds requests for one 5-tuple and
keeps the REALM and NONCE it was challenged with.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from turnsession import (
    CLIENT_SOFTWARE,
    ClientSession,
    Outgoing,
    SessionField,
    counting_transaction_id,
    message,
    run_exchange,
)

from pyturn.config import Config
from pyturn.core.actions import Action, OpenRelay, RelayFailure, SendFrom, SendToClient
from pyturn.core.allocation import Allocation, FiveTuple, Transport
from pyturn.core.auth import UserLookup
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.userdb import UserDB
from pyturn.wire.codec import decode_message
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

REALM = "reTurn"
SERVER: Address = ("192.0.2.1", 3478)
CLIENT: Address = ("203.0.113.10", 40000)
PEER: Address = ("198.51.100.7", 5000)
PASSWORDS = {"alice": "secret", "bob": "hunter2"}
START = 1000.0

T = TypeVar("T")


def counter_randbytes() -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom: SHA-256 of a counter, as many bytes as asked (up to 32)."""
    counter = itertools.count(1)

    def randbytes(size: int) -> bytes:
        return hashlib.sha256(next(counter).to_bytes(8, "big")).digest()[:size]

    return randbytes


def make_config(**changes: Any) -> Config:
    """A Config with a modest port range; any field can be overridden."""
    values: dict[str, Any] = {"allocation_port_range_min": 50000, "allocation_port_range_max": 50999}
    values.update(changes)
    return Config(**values)


@dataclass(frozen=True)
class RelayHandle:
    """What the fake adapter hands the core as a relay socket."""

    host: str
    port: int


@dataclass
class Result:
    """The actions one call produced, with helpers to pick them apart."""

    actions: list[Action]

    def of(self, kind: type[T]) -> list[T]:
        return [action for action in self.actions if isinstance(action, kind)]

    def one(self, kind: type[T]) -> T:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind.__name__}, got {self.actions!r}"
        return found[0]

    @property
    def sent(self) -> list[bytes]:
        """Bytes of every SendToClient, in order."""
        return [action.data for action in self.of(SendToClient)]

    @property
    def response(self) -> Message:
        """The one message sent to the client (SendToClient or SendFrom), decoded."""
        replies = [a.data for a in self.actions if isinstance(a, SendToClient | SendFrom)]
        assert len(replies) == 1, f"expected one reply, got {self.actions!r}"
        return decode_message(replies[0])

    @property
    def error_code(self) -> int | None:
        response = self.response
        if response.msg_class is not MessageClass.ERROR:
            return None
        code: int = response.get(Attr.ERROR_CODE)[0]
        return code


@dataclass
class Harness:
    """A TurnServerCore, a fake clock and a fake adapter that opens relays synchronously."""

    config: Config = field(default_factory=make_config)
    users: UserLookup | None = None
    now: float = START
    busy_ports: set[int] = field(default_factory=set)
    auto_open: bool = True
    opened: list[OpenRelay] = field(default_factory=list)
    core: TurnServerCore = field(init=False)

    def __post_init__(self) -> None:
        if self.users is None:
            self.users = UserDB.from_passwords(PASSWORDS, REALM).lookup
        self.core = TurnServerCore(
            self.config, users=self.users, secret=b"k" * 32, rng=random.Random(1), randbytes=counter_randbytes()
        )

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def settle(self, actions: Iterable[Action]) -> Result:
        """Carry out OpenRelay actions like an adapter would; returns every action, follow-ups included."""
        pending = list(actions)
        result: list[Action] = []
        while pending:
            action = pending.pop(0)
            result.append(action)
            if isinstance(action, OpenRelay) and self.auto_open:
                self.opened.append(action)
                if action.port in self.busy_ports:
                    pending.extend(self.core.relay_failed(action.token, RelayFailure.PORT_IN_USE, self.now))
                elif action.reserve_next and action.port + 1 in self.busy_ports:
                    # EVEN-PORT R: the adapter binds the odd port too, and says which of the two is in use
                    pending.extend(self.core.relay_failed(action.token, RelayFailure.PORT_IN_USE, self.now,
                                                          port=action.port + 1))
                else:
                    handle = RelayHandle(action.host, action.port)
                    bound = (action.host, action.port)
                    pending.extend(self.core.relay_opened(action.token, handle, bound, self.now))
        return Result(result)

    def send(self, data: bytes, five_tuple: FiveTuple) -> Result:
        return self.settle(self.core.handle_client(data, five_tuple, self.now))

    def peer(self, handle: Any, data: bytes, peer: Address = PEER) -> Result:
        return Result(self.core.handle_peer(handle, data, peer, self.now))

    def tick(self) -> Result:
        return Result(self.core.tick(self.now))

    def client(
        self,
        username: str = "alice",
        password: str | None = None,
        *,
        client: Address = CLIENT,
        server: Address = SERVER,
        transport: Transport = Transport.UDP,
        realm: str | None = None,
    ) -> TurnClient:
        if password is None:
            password = PASSWORDS.get(username, "")
        return TurnClient(self, FiveTuple(transport, client, server), username, password, realm)


def new_tid(classic: bool = False) -> bytes:
    return counting_transaction_id(classic)


def build(
    method: int,
    attrs: Sequence[tuple[int, Any]] = (),
    *,
    msg_class: MessageClass = MessageClass.REQUEST,
    tid: bytes | None = None,
    key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """Encode a message; with key, MESSAGE-INTEGRITY is appended."""
    tid = tid if tid is not None else new_tid()
    return message(method, attrs, msg_class=msg_class, tid=tid, key=key, fingerprint=fingerprint)


class TurnClient:
    """A TURN client on one 5-tuple that authenticates the way RFC 8489 §9.2 clients do: the in-process driver of
    tests/support/turnsession.py's ClientSession.

    It challenges with an Allocate first, so only a 438 makes a request go again (a 401 to a signed request is the
    answer under test).
    """

    def __init__(
        self, harness: Harness, five_tuple: FiveTuple, username: str, password: str, realm: str | None
    ) -> None:
        self.harness = harness
        self.five_tuple = five_tuple
        self.session = ClientSession(
            username, password, retry_codes=(438,), default_realm=REALM, realm_override=realm, new_tid=new_tid
        )
        self.allocate_result: Result | None = None

    username = SessionField("username")
    password = SessionField("password")
    realm = SessionField("realm")
    nonce = SessionField("nonce")
    forced_realm = SessionField("realm_override")  # use this realm instead of the one the server announced

    @property
    def key(self) -> bytes:
        key = self.session.key
        assert key is not None
        return key

    def signed(
        self, method: int, attrs: Sequence[tuple[int, Any]] = (), *, tid: bytes | None = None, fingerprint: bool = False
    ) -> bytes:
        """A request carrying USERNAME, REALM, NONCE and MESSAGE-INTEGRITY with the current nonce."""
        assert self.nonce is not None, "challenge first"
        return self.session.signed(method, attrs, tid=tid if tid is not None else new_tid(), fingerprint=fingerprint)

    def send_raw(self, data: bytes) -> Result:
        return self.harness.send(data, self.five_tuple)

    def challenge(self) -> Result:
        """Send an unauthenticated Allocate and remember REALM and NONCE from the 401.

        Allocate is used because the other TURN requests are answered 437 before authentication when the
        5-tuple has no allocation.
        """
        attrs: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17)]
        if self.session.rfc8489:
            attrs.append((Attr.SOFTWARE, CLIENT_SOFTWARE))
        result = self.send_raw(build(Method.ALLOCATE, attrs))
        self.learn(result.response)
        return result

    def learn(self, response: Message) -> None:
        self.session.learn(response)

    def request(
        self, method: int, attrs: Sequence[tuple[int, Any]] = (), *, tid: bytes | None = None, fingerprint: bool = False
    ) -> Result:
        """An authenticated request: challenge first when no nonce is known, retry once on 438."""
        if self.nonce is None:
            self.challenge()
        results: list[Result] = []

        def transmit(outgoing: Outgoing) -> Message | None:
            result = self.send_raw(outgoing.data)
            results.append(result)
            return result.response if result.of(SendToClient) else None

        exchange = self.session.exchange(method, attrs, tid=tid, fingerprint=fingerprint, sign=True)
        run_exchange(exchange, transmit)
        return results[-1]

    def allocate(self, *extra: tuple[int, Any], transport: int | None = 17) -> Result:
        attrs: list[tuple[int, Any]] = [] if transport is None else [(Attr.REQUESTED_TRANSPORT, transport)]
        result = self.request(Method.ALLOCATE, [*attrs, *extra])
        self.allocate_result = result
        return result

    def refresh(self, lifetime: int | None = None) -> Result:
        attrs = [] if lifetime is None else [(Attr.LIFETIME, lifetime)]
        return self.request(Method.REFRESH, attrs)

    def create_permission(self, *peers: Address) -> Result:
        return self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer) for peer in peers])

    def channel_bind(self, channel: int, peer: Address = PEER) -> Result:
        return self.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)])

    def send_indication(self, data: bytes, peer: Address = PEER) -> Result:
        attrs = [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, data)]
        return self.send_raw(build(Method.SEND, attrs, msg_class=MessageClass.INDICATION))

    @property
    def allocation(self) -> Allocation:
        return self.harness.core.allocations[self.five_tuple]

    @property
    def handle(self) -> Any:
        return self.allocation.relay_handle

    @property
    def relayed(self) -> Address:
        return self.allocation.relayed
