"""Authentication and integrity (docs/security.md cases 13-20) through the sans-IO core.

What tests/core/test_core_auth.py already covers is referenced from SECURITY.md rather than repeated here: the 401
challenge without state, 400 for missing USERNAME/REALM/NONCE, unknown user and wrong password, forged and stale
nonces, the flipped byte under MESSAGE-INTEGRITY and the 437 ownership rules.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from hashlib import sha1
from typing import Any

import pytest
from turnclient import CLIENT, REALM, SERVER, Harness, Result, TurnClient, build, make_config

import pyturn.wire.integrity
from pyturn.core.actions import OpenRelay, SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.events import AllocationRefreshed, AuthFailed
from pyturn.core.userdb import UserDB
from pyturn.wire.codec import encode_message
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

PEER = ("198.51.100.7", 5000)
ALLOCATE_ATTRS = [(Attr.REQUESTED_TRANSPORT, 17)]
MI_ATTR_SIZE = 24


def _challenged(harness: Harness, username: str = "alice", password: str | None = None) -> TurnClient:
    client = harness.client(username, password)
    client.challenge()
    return client


def _nothing_allocated(harness: Harness, result: Result) -> None:
    assert not result.of(OpenRelay)
    assert not harness.core.allocations
    assert not harness.core.state.pending


def _set_length(data: bytearray, length: int) -> None:
    struct.pack_into("!H", data, 2, length)


# ------------------------------------------------------------------------------- case 15: integrity bypass
def test_security_auth_truncated_integrity_is_dropped() -> None:
    harness = Harness()
    client = _challenged(harness)
    data = bytearray(client.signed(Method.ALLOCATE, ALLOCATE_ATTRS))
    # Cut the last 4 bytes of the HMAC and shorten the attribute: MESSAGE-INTEGRITY must be 20 bytes (RFC 8489
    # §14.5), so the message is malformed and dropped without an answer, and nothing is allocated.
    del data[-4:]
    struct.pack_into("!H", data, len(data) - 16 - 2, 16)
    _set_length(data, len(data) - 20)
    result = client.send_raw(bytes(data))
    assert result.actions == []
    _nothing_allocated(harness, result)


@pytest.mark.parametrize("length", [0, 16, 19, 21, 32], ids=lambda n: f"mi-{n}-bytes")
def test_security_auth_integrity_of_wrong_length_gets_no_success(length: int) -> None:
    harness = Harness()
    client = _challenged(harness)
    assert client.realm is not None and client.nonce is not None
    body = Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), [
        (Attr.REQUESTED_TRANSPORT, 17), (Attr.USERNAME, "alice"), (Attr.REALM, client.realm),
        (Attr.NONCE, client.nonce),
    ])
    unsigned = bytearray(encode_message(body))
    padded = length + (-length % 4)
    unsigned += struct.pack("!HH", Attr.MESSAGE_INTEGRITY, length) + bytes(padded)
    _set_length(unsigned, len(unsigned) - 20)
    result = client.send_raw(bytes(unsigned))
    assert not result.actions or result.error_code in (400, 401)
    _nothing_allocated(harness, result)


def test_security_auth_integrity_computed_without_length_rewrite_gets_401() -> None:
    # RFC 8489 §14.5: the HMAC covers the header with the length set to end at MESSAGE-INTEGRITY. A client that
    # hashes the final length instead (here: FINGERPRINT follows) sends an HMAC that cannot verify.
    harness = Harness()
    client = _challenged(harness)
    assert client.realm is not None and client.nonce is not None
    key = client.key
    signed = bytearray(client.signed(Method.ALLOCATE, ALLOCATE_ATTRS, fingerprint=True))
    # Recompute the HMAC over the header carrying the full length (FINGERPRINT included), the wrong way.
    mi_value_at = len(signed) - 8 - 20
    wrong = hmac.new(key, bytes(signed[: mi_value_at - 4]), sha1).digest()
    signed[mi_value_at : mi_value_at + 20] = wrong
    # Keep the FINGERPRINT valid so that only the integrity check can object.
    crc = zlib.crc32(bytes(signed[:-8])) ^ 0x5354554E
    struct.pack_into("!I", signed, len(signed) - 4, crc)
    result = client.send_raw(bytes(signed))
    assert result.error_code == 401
    assert result.one(AuthFailed).code == 401
    _nothing_allocated(harness, result)


def test_security_auth_fingerprint_only_gets_401() -> None:
    harness = Harness()
    client = _challenged(harness)
    assert client.realm is not None and client.nonce is not None
    data = build(Method.ALLOCATE, [*ALLOCATE_ATTRS, (Attr.USERNAME, "alice"), (Attr.REALM, client.realm),
                                   (Attr.NONCE, client.nonce)], fingerprint=True)
    result = client.send_raw(data)
    assert result.error_code == 401
    _nothing_allocated(harness, result)


@pytest.mark.parametrize("offset_from_end", [1, 10, 20], ids=["mac-last", "mac-middle", "mac-first"])
def test_security_auth_byte_flipped_inside_the_hmac_gets_401(offset_from_end: int) -> None:
    harness = Harness()
    client = _challenged(harness)
    data = bytearray(client.signed(Method.ALLOCATE, ALLOCATE_ATTRS))
    data[-offset_from_end] ^= 0x80
    result = client.send_raw(bytes(data))
    assert result.error_code == 401
    _nothing_allocated(harness, result)


def test_security_auth_attribute_after_integrity_is_not_trusted() -> None:
    # Case 6: REQUESTED-TRANSPORT placed after MESSAGE-INTEGRITY is ignored, so the Allocate lacks it -> 400.
    harness = Harness()
    client = _challenged(harness)
    assert client.realm is not None and client.nonce is not None
    signed = bytearray(build(Method.ALLOCATE, [(Attr.USERNAME, "alice"), (Attr.REALM, client.realm),
                                               (Attr.NONCE, client.nonce)], key=client.key))
    signed += struct.pack("!HHB3x", Attr.REQUESTED_TRANSPORT, 4, 17)
    _set_length(signed, len(signed) - 20)
    result = client.send_raw(bytes(signed))
    assert result.error_code == 400
    _nothing_allocated(harness, result)


def test_security_auth_compares_macs_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Case 14: the HMAC check goes through hmac.compare_digest (coturn #1869).
    calls: list[int] = []
    real = pyturn.wire.integrity.hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(pyturn.wire.integrity.hmac, "compare_digest", recording)
    harness = Harness()
    client = _challenged(harness, "alice", "wrong")
    assert client.send_raw(client.signed(Method.ALLOCATE, ALLOCATE_ATTRS)).error_code == 401
    assert 20 in calls


# ------------------------------------------------------------------------------------ case 16: nonces
def _allocated(harness: Harness) -> TurnClient:
    client = harness.client()
    assert client.allocate((Attr.LIFETIME, 3600)).response.msg_class is MessageClass.SUCCESS
    return client


def test_security_auth_refresh_replayed_after_nonce_expiry_refreshes_nothing() -> None:
    harness = Harness(make_config(nonce_lifetime=30, max_allocation_lifetime=3600))
    client = _allocated(harness)
    refresh = client.signed(Method.REFRESH, [(Attr.LIFETIME, 3600)])
    assert client.send_raw(refresh).one(AllocationRefreshed).lifetime == 3600
    expires = client.allocation.expires
    harness.advance(45)  # past the nonce lifetime and the 10 s response cache
    harness.tick()
    replay = client.send_raw(refresh)
    assert replay.error_code == 438
    assert not replay.of(AllocationRefreshed)
    assert client.allocation.expires == expires
    # A new transaction signed with the stale nonce fares no better.
    again = client.send_raw(client.signed(Method.REFRESH, [(Attr.LIFETIME, 3600)]))
    assert again.error_code == 438
    assert client.allocation.expires == expires


def test_security_auth_replay_within_cache_window_returns_the_same_bytes_and_changes_nothing() -> None:
    harness = Harness(make_config(nonce_lifetime=5))
    client = _allocated(harness)
    refresh = client.signed(Method.REFRESH, [(Attr.LIFETIME, 3600)])
    first = client.send_raw(refresh)
    expires = client.allocation.expires
    harness.advance(8)  # nonce stale, cached response still kept
    replay = client.send_raw(refresh)
    assert replay.sent == first.sent
    assert not replay.of(AllocationRefreshed)
    assert client.allocation.expires == expires


def test_security_auth_nonce_lifetime_follows_config_exactly() -> None:
    harness = Harness(make_config(nonce_lifetime=100))
    client = _challenged(harness)
    harness.advance(100)
    assert client.send_raw(client.signed(Method.ALLOCATE, ALLOCATE_ATTRS)).response.msg_class is \
        MessageClass.SUCCESS
    other = _challenged(harness, "bob")
    harness.advance(101)
    assert other.send_raw(other.signed(Method.ALLOCATE, ALLOCATE_ATTRS)).error_code == 438


# ----------------------------------------------------------------------------- case 17: credential switch
@pytest.mark.parametrize(
    ("method", "attrs"),
    [
        pytest.param(Method.REFRESH, [(Attr.LIFETIME, 600)], id="refresh"),
        pytest.param(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)], id="create-permission"),
        pytest.param(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, PEER)],
                     id="channel-bind"),
    ],
)
def test_security_auth_other_valid_user_on_an_allocation_gets_441(method: int, attrs: list[tuple[int, Any]]) -> None:
    harness = Harness()
    owner = _allocated(harness)
    intruder = harness.client("bob")  # a valid user, on alice's 5-tuple
    intruder.realm, intruder.nonce = owner.realm, owner.nonce
    result = intruder.send_raw(intruder.signed(method, attrs))
    assert result.error_code == 441
    allocation = owner.allocation
    assert not allocation.permissions and not allocation.channels
    assert allocation.username == "alice"


# ------------------------------------------------------------------------------------ case 18: realm
@pytest.mark.parametrize("realm", ["evil", "RETURN", "reTurn ", ""], ids=["other", "case", "trailing-space", "empty"])
def test_security_auth_foreign_realm_gets_401_with_the_servers_realm(realm: str) -> None:
    harness = Harness()
    client = harness.client(realm=realm)
    client.challenge()
    client.forced_realm = realm
    data = build(Method.ALLOCATE, [*ALLOCATE_ATTRS, (Attr.USERNAME, "alice"), (Attr.REALM, realm),
                                   (Attr.NONCE, client.nonce)],
                 key=long_term_key("alice", realm, "secret"))
    result = client.send_raw(data)
    assert result.error_code == 401
    assert result.response.get(Attr.REALM) == REALM
    _nothing_allocated(harness, result)


# ---------------------------------------------------------------------------- case 20: injection usernames
INJECTIONS = [
    pytest.param("alice\x00", id="nul-suffix"),
    pytest.param("\x00", id="nul"),
    pytest.param("ali\x00ce", id="nul-inside"),
    pytest.param(b"\xff\xfe\xc3".decode("utf-8", "surrogateescape"), id="invalid-utf8"),
    pytest.param("%s%s%s%n%x{0}{__class__}", id="format-string"),
    pytest.param("' OR '1'='1'; --", id="sql"),
    pytest.param("*\r\n$3\r\nSET\r\n", id="redis-protocol"),
    pytest.param("\u0041\u030a", id="saslprep-combining"),
    pytest.param("\u2163", id="saslprep-roman-numeral"),
    pytest.param("a" * 600, id="600-bytes"),
    pytest.param("a" * 763, id="763-bytes"),
]


@pytest.mark.parametrize("username", INJECTIONS)
def test_security_auth_injection_style_username_gets_401_verbatim(username: str) -> None:
    seen: list[tuple[str, str]] = []
    database = UserDB.from_passwords({"alice": "secret"}, REALM)

    def lookup(name: str, realm: str) -> bytes | None:
        seen.append((name, realm))
        return database.lookup(name, realm)

    harness = Harness(users=lookup)
    client = harness.client(username, "secret")
    client.challenge()
    result = client.send_raw(client.signed(Method.ALLOCATE, ALLOCATE_ATTRS))
    assert result.error_code == 401
    assert result.one(AuthFailed).username == username
    assert seen == [(username, REALM)]  # handed to the back end exactly as received, no interpretation
    _nothing_allocated(harness, result)


def test_security_auth_no_state_held_for_a_flood_of_unauthenticated_allocates() -> None:
    # Case 13: stateless nonces; 10,000 spoofed sources leave no per-request state behind.
    harness = Harness(make_config(unauthenticated_rate_limit=0))
    data = build(Method.ALLOCATE, ALLOCATE_ATTRS)
    for n in range(10_000):
        source = (f"203.0.{n // 250}.{n % 250 + 1}", 40000 + n % 1000)
        result = harness.send(data, FiveTuple(Transport.UDP, source, SERVER))
        assert result.error_code == 401
    core = harness.core
    assert not core.allocations and not core.state.pending and len(core.state.deadlines) == 0


def test_security_auth_unauthenticated_answer_goes_to_the_requester_only() -> None:
    harness = Harness()
    five_tuple = FiveTuple(Transport.UDP, CLIENT, SERVER)
    result = harness.send(build(Method.ALLOCATE, ALLOCATE_ATTRS), five_tuple)
    assert [type(action) for action in result.actions] == [SendToClient]
    assert result.one(SendToClient).five_tuple == five_tuple
