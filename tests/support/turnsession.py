"""The sans-IO core of the one TURN/STUN test client: requests, long-term credentials, responses, ChannelData.

Nothing here opens a socket, sleeps or reads a clock. A driver moves the bytes:
- tests/support/turnclient.py `TurnClient` hands them to an in-process TurnServerCore (the `Harness`);
- tests/support/interop.py `MiniTurnClient` sends them over UDP (asyncio);
- tests/support/streamclient.py `StreamTurnClient` over one TCP or TLS stream (asyncio).

`ClientSession.exchange` is the RFC 8489 §9.2.3 long-term-credential dance written once, as a generator: it yields
each request to send (bytes and transaction id) and is sent back the response the driver matched to it (or None
when none came); a 401/438 carrying a NONCE teaches it REALM and NONCE and the request goes once more, signed.
With ``rfc8489=True`` it also follows RFC 8489 §9.2.5: it copies PASSWORD-ALGORITHMS, picks the first algorithm it
knows (SHA-256 signs with MESSAGE-INTEGRITY-SHA256) and sends USERHASH when the nonce cookie offers anonymity.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from pyturn.core.auth import FEATURE_USERNAME_ANONYMITY, nonce_features
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.integrity import long_term_key, long_term_key_sha256, userhash, verify_message_integrity
from pyturn.wire.message import Attr, Message, MessageClass, Method, PasswordAlgorithm

Attributes = Sequence[tuple[int, Any]]
RETRY_CODES = (401, 438)  # RFC 8489 §9.2.3.1 (first challenge), §9.2.3.2 (stale nonce)
REQUESTED_TRANSPORT_UDP = 17  # RFC 8656 §14.7: the protocol number of UDP
REQUESTED_TRANSPORT_TCP = 6  # RFC 6062 §6.1: the protocol number of TCP
# RFC 8489 §14.9: clients SHOULD say who they are; it also keeps a first request big enough for the server's full
# RFC 8489 challenge within its 3x amplification budget (docs/security.md "Amplification").
CLIENT_SOFTWARE = "pyturn test client (RFC 8489)"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One request to send: its bytes and its transaction id (for matching the response)."""

    data: bytes
    transaction_id: bytes


Exchange = Generator[Outgoing, Message | None, Message | None]


def random_transaction_id() -> bytes:
    return os.urandom(12)


_counter = itertools.count(1)


def counting_transaction_id(classic: bool = False) -> bytes:
    """Distinct, reproducible ids; classic: a 16-byte RFC 3489 id whose first 4 bytes are not the magic cookie."""
    value = next(_counter)
    if classic:
        return b"\xc1" * 8 + value.to_bytes(8, "big")
    return value.to_bytes(12, "big")


def message(
    method: int,
    attrs: Attributes = (),
    *,
    msg_class: MessageClass = MessageClass.REQUEST,
    tid: bytes | None = None,
    key: bytes | None = None,
    sha256_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """Encode a message; with key, MESSAGE-INTEGRITY is appended, with sha256_key MESSAGE-INTEGRITY-SHA256 (and
    FINGERPRINT after them when asked)."""
    built = Message(method, msg_class, tid if tid is not None else random_transaction_id())
    for attr, value in attrs:
        built.add(attr, value)
    return encode_message(built, integrity_key=key, integrity_sha256_key=sha256_key, fingerprint=fingerprint)


def binding_request(tid: bytes | None = None) -> Outgoing:
    tid = tid if tid is not None else random_transaction_id()
    return Outgoing(message(Method.BINDING, tid=tid), tid)


def send_indication(peer: tuple[str, int], payload: bytes, *, tid: bytes | None = None) -> bytes:
    """A Send indication (RFC 8656 §11.1): never signed, never answered."""
    return message(
        Method.SEND, [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload)], msg_class=MessageClass.INDICATION, tid=tid
    )


def channel_data(channel: int, payload: bytes, *, pad: bool = False) -> bytes:
    """A ChannelData message (RFC 8656 §12.4); pad to 4 bytes over TCP/TLS (§12.5)."""
    return encode_channel_data(channel, payload, pad=pad)


def is_stun(packet: bytes) -> bool:
    """RFC 8489 §6: the two top bits of a STUN message are 0 (ChannelData starts with 0b01)."""
    return len(packet) >= 20 and packet[0] & 0xC0 == 0


def is_channel_data(packet: bytes) -> bool:
    return len(packet) >= 4 and packet[0] & 0xC0 == 0x40


def response_to(packet: bytes, transaction_id: bytes) -> Message | None:
    """The packet decoded when it is the STUN response of that transaction, else None."""
    if not is_stun(packet):
        return None
    response = decode_message(packet)
    if response.transaction_id != transaction_id or response.msg_class is MessageClass.INDICATION:
        return None
    return response


def relayed_payload(packet: bytes) -> bytes | None:
    """The payload of a relayed packet: a ChannelData message or a Data indication (RFC 8656 §11.4); else None."""
    if is_channel_data(packet):
        return decode_channel_data(packet)[1]
    if is_stun(packet):
        received = decode_message(packet)
        if received.method == Method.DATA and received.msg_class is MessageClass.INDICATION:
            data: bytes = received.get(Attr.DATA)
            return data
    return None


def error_code(response: Message | None) -> int | None:
    if response is None or response.msg_class is not MessageClass.ERROR:
        return None
    return int(response.get(Attr.ERROR_CODE)[0])


class ClientSession:
    """A TURN client's long-term-credential state (RFC 8489 §9.2): who it is and the REALM and NONCE it was given.

    ``realm_override`` signs with that realm instead of the announced one (tests of wrong realms);
    ``default_realm`` is the realm the key uses before any was announced.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        retry_codes: Sequence[int] = RETRY_CODES,
        default_realm: str | None = None,
        realm_override: str | None = None,
        new_tid: Callable[[], bytes] = random_transaction_id,
        rfc8489: bool = False,
    ) -> None:
        self.rfc8489 = rfc8489
        self.password_algorithms: tuple[tuple[int, bytes], ...] | None = None  # as the last challenge offered them
        self.algorithm: int = PasswordAlgorithm.MD5
        self.use_userhash = False
        self.username = username
        self.password = password
        self.retry_codes = tuple(retry_codes)
        self.default_realm = default_realm
        self.realm_override = realm_override
        self.new_tid = new_tid
        self.realm: str | None = None
        self.nonce: str | None = None
        self.challenges = 0  # 401/438 answers that made a request go again

    @property
    def signing_realm(self) -> str | None:
        return self.realm_override or self.realm or self.default_realm

    @property
    def key(self) -> bytes | None:
        """The long-term key (RFC 8489 §9.2.2), once a realm is known."""
        realm = self.signing_realm
        if realm is None:
            return None
        if self.algorithm == PasswordAlgorithm.SHA256:
            return long_term_key_sha256(self.username, realm, self.password)
        return long_term_key(self.username, realm, self.password)

    @property
    def can_sign(self) -> bool:
        return self.nonce is not None and self.signing_realm is not None

    def credentials(self) -> list[tuple[int, Any]]:
        assert self.nonce is not None and self.signing_realm is not None, "challenge first"
        realm = self.signing_realm
        hashed = userhash(self.username, realm) if self.use_userhash else None
        who = (Attr.USERHASH, hashed) if hashed is not None else (Attr.USERNAME, self.username)
        attrs: list[tuple[int, Any]] = [who, (Attr.REALM, realm), (Attr.NONCE, self.nonce)]
        if self.password_algorithms is not None:
            # RFC 8489 §9.2.5: the list as the challenge gave it, then the algorithm chosen from it.
            attrs += [(Attr.PASSWORD_ALGORITHMS, self.password_algorithms),
                      (Attr.PASSWORD_ALGORITHM, (self.algorithm, b""))]
        return attrs

    def signed(
        self, method: int, attrs: Attributes = (), *, tid: bytes | None = None, fingerprint: bool = False
    ) -> bytes:
        """A request with the attributes, then USERNAME (or USERHASH), REALM, NONCE, the password algorithms when
        offered and MESSAGE-INTEGRITY, or MESSAGE-INTEGRITY-SHA256 for a SHA-256 key (RFC 8489 §9.2.3, §9.2.5)."""
        key = self.key
        sha256 = self.algorithm == PasswordAlgorithm.SHA256
        return message(method, [*attrs, *self.credentials()], tid=tid, key=None if sha256 else key,
                       sha256_key=key if sha256 else None, fingerprint=fingerprint)

    def outgoing(self, method: int, attrs: Attributes = (), *, tid: bytes | None = None, fingerprint: bool = True,
                 sign: bool | None = None) -> Outgoing:
        """A request, signed when credentials are known (or as ``sign`` says)."""
        tid = tid if tid is not None else self.new_tid()
        if self.rfc8489:
            attrs = [*attrs, (Attr.SOFTWARE, CLIENT_SOFTWARE)]
        if sign if sign is not None else self.can_sign:
            return Outgoing(self.signed(method, attrs, tid=tid, fingerprint=fingerprint), tid)
        return Outgoing(message(method, attrs, tid=tid, fingerprint=fingerprint), tid)

    def learn(self, response: Message) -> None:
        """Remember the REALM and NONCE a response carries (RFC 8489 §9.2.4)."""
        realm = response.get(Attr.REALM)
        nonce = response.get(Attr.NONCE)
        if realm is not None:
            self.realm = realm
        if nonce is not None:
            self.nonce = nonce
        if not self.rfc8489 or nonce is None:
            return
        offered = response.get(Attr.PASSWORD_ALGORITHMS)
        supported = (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)
        known = [algorithm for algorithm, _ in offered or () if algorithm in supported]
        self.password_algorithms = tuple(offered) if known else None
        self.algorithm = known[0] if known else PasswordAlgorithm.MD5
        self.use_userhash = bool(nonce_features(nonce) & FEATURE_USERNAME_ANONYMITY)

    def wants_retry(self, response: Message | None) -> bool:
        """A 401 or 438 with a NONCE: learn from it and send the request again (RFC 8489 §9.2.5)."""
        if error_code(response) not in self.retry_codes or response is None or not response.has(Attr.NONCE):
            return False
        self.learn(response)
        self.challenges += 1
        return True

    def exchange(self, method: int, attrs: Attributes = (), *, tid: bytes | None = None,
                 fingerprint: bool = True, sign: bool | None = None) -> Exchange:
        """Send the request; on a 401/438 with a NONCE send it once more with fresh credentials."""
        response = yield self.outgoing(method, attrs, tid=tid, fingerprint=fingerprint, sign=sign)
        if self.wants_retry(response):
            response = yield self.outgoing(method, attrs, fingerprint=fingerprint, sign=True)
        return response

    def verify(self, response: Message) -> bool:
        """MESSAGE-INTEGRITY(-SHA256) of a response checks with the session's key."""
        key = self.key
        return key is not None and verify_message_integrity(response, key)


class SessionField:
    """A driver's attribute that lives in its ClientSession (tests read and set realm and nonce on the client)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return getattr(client.session, self.name)

    def __set__(self, client: Any, value: Any) -> None:
        setattr(client.session, self.name, value)


def run_exchange(exchange: Exchange, transmit: Callable[[Outgoing], Message | None]) -> Message | None:
    """Drive an exchange with a synchronous transmit (the in-process driver)."""
    try:
        outgoing = next(exchange)
        while True:
            outgoing = exchange.send(transmit(outgoing))
    except StopIteration as done:
        result: Message | None = done.value
        return result


async def run_exchange_async(
    exchange: Exchange, transmit: Callable[[Outgoing], Awaitable[Message | None]]
) -> Message | None:
    """Drive an exchange with an asynchronous transmit (the UDP and stream drivers)."""
    try:
        outgoing = next(exchange)
        while True:
            outgoing = exchange.send(await transmit(outgoing))
    except StopIteration as done:
        result: Message | None = done.value
        return result
