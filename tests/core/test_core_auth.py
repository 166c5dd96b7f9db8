"""TurnServerCore: the request pipeline, long-term authentication and Binding (bytes in, actions out)."""

from __future__ import annotations

from typing import Any

import pytest
from turnclient import CLIENT, REALM, SERVER, Harness, build, make_config, new_tid

from pyturn.core.actions import OpenRelay, SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.auth import NonceSigner
from pyturn.core.events import AuthFailed
from pyturn.core.userdb import UserDB
from pyturn.wire.integrity import long_term_key, verify_integrity
from pyturn.wire.message import Attr, MessageClass, Method

UDP_TUPLE = FiveTuple(Transport.UDP, CLIENT, SERVER)


def core_state(harness: Harness) -> tuple[Any, ...]:
    core = harness.core
    return (
        dict(core.state.pending),
        dict(core.allocations),
        len(core.state.deadlines),
        dict(core.state.reservations),
        core.ports.in_use,
    )


# ----------------------------------------------------------------------------------------- challenges
def test_core_auth_request_without_integrity_gets_401_with_realm_and_nonce() -> None:
    harness = Harness()
    result = harness.send(build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]), UDP_TUPLE)
    response = result.response
    assert response.msg_class is MessageClass.ERROR
    assert response.method == Method.ALLOCATE
    assert response.get(Attr.ERROR_CODE)[0] == 401
    assert response.get(Attr.REALM) == REALM
    assert response.get(Attr.NONCE)
    assert response.integrity_offset is None
    assert not result.of(AuthFailed)  # a first request without credentials is no failure
    assert not result.of(OpenRelay)


def test_core_auth_401_echoes_the_transaction_id() -> None:
    harness = Harness()
    tid = new_tid()
    response = harness.send(build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], tid=tid), UDP_TUPLE).response
    assert response.transaction_id == tid


def test_core_auth_realm_in_challenge_follows_config() -> None:
    harness = Harness(make_config(authentication_realm="example.org"))
    response = harness.send(build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]), UDP_TUPLE).response
    assert response.get(Attr.REALM) == "example.org"


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param(Attr.USERNAME, id="no-username"),
        pytest.param(Attr.REALM, id="no-realm"),
        pytest.param(Attr.NONCE, id="no-nonce"),
    ],
)
def test_core_auth_integrity_without_username_realm_or_nonce_gets_400(missing: Attr) -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    assert client.nonce is not None
    present = {Attr.USERNAME: "alice", Attr.REALM: REALM, Attr.NONCE: client.nonce}
    del present[missing]
    attrs = [(Attr.REQUESTED_TRANSPORT, 17), *present.items()]
    result = client.send_raw(build(Method.ALLOCATE, attrs, key=client.key))
    assert result.error_code == 400
    assert result.response.integrity_offset is None
    assert not result.of(OpenRelay)


def test_core_auth_good_credentials_allocate() -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.response.msg_class is MessageClass.SUCCESS
    assert client.five_tuple in harness.core.allocations


def test_core_auth_stale_nonce_gets_438_with_a_fresh_nonce() -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    old_nonce = client.nonce
    harness.advance(harness.config.nonce_lifetime + 1)
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    response = result.response
    assert result.error_code == 438
    assert response.get(Attr.REALM) == REALM
    assert response.get(Attr.NONCE) not in (None, old_nonce)
    assert response.integrity_offset is None
    assert result.one(AuthFailed) == AuthFailed(client.five_tuple, 438, "alice", "stale_nonce")
    # the fresh nonce is accepted
    client.learn(response)
    retry = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert retry.response.msg_class is MessageClass.SUCCESS


def test_core_auth_nonce_still_fresh_at_exactly_its_lifetime() -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    harness.advance(harness.config.nonce_lifetime)
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.response.msg_class is MessageClass.SUCCESS


def test_core_auth_stale_nonce_beats_wrong_password() -> None:
    """reTurn checks the nonce before the user and the HMAC (docs/compatibility.md "Authentication")."""
    harness = Harness()
    client = harness.client("alice", "wrong")
    client.challenge()
    harness.advance(harness.config.nonce_lifetime + 1)
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.error_code == 438


def test_core_auth_nonce_lifetime_follows_config() -> None:
    harness = Harness(make_config(nonce_lifetime=30))
    client = harness.client()
    client.challenge()
    harness.advance(31)
    assert client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])).error_code == 438


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param("AAAAAAAAAAAAAAAA", id="zero-mac"),
        pytest.param("not a nonce at all", id="garbage"),
        pytest.param("1700000000:0123456789abcdef0123456789abcdef", id="reTurn-format"),
        pytest.param("\u00e9t\u00e9", id="non-ascii"),
        pytest.param("", id="empty"),
        pytest.param(NonceSigner(b"another secret", 3600).issue(1000.0), id="other-secret"),
    ],
)
def test_core_auth_forged_nonce_gets_438(nonce: str) -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    client.nonce = nonce
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.error_code == 438
    assert result.response.get(Attr.NONCE) not in (None, nonce)
    assert not harness.core.allocations


def test_core_auth_nonce_is_not_bound_to_the_client_address() -> None:
    """A NAT rebinding between the 401 and the retry must not fail (auth.py NonceSigner docstring)."""
    harness = Harness()
    first = harness.client(client=("203.0.113.10", 40000))
    first.challenge()
    second = harness.client(client=("203.0.113.99", 41000))
    second.realm, second.nonce = first.realm, first.nonce
    result = second.send_raw(second.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.response.msg_class is MessageClass.SUCCESS


def test_core_auth_unknown_user_gets_401() -> None:
    harness = Harness()
    client = harness.client("mallory", "secret")
    client.challenge()
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.error_code == 401
    response = result.response
    assert response.get(Attr.REALM) == REALM
    assert response.get(Attr.NONCE)
    assert response.integrity_offset is None
    assert result.one(AuthFailed) == AuthFailed(client.five_tuple, 401, "mallory", "unknown_user")


def test_core_auth_wrong_password_gets_401() -> None:
    harness = Harness()
    client = harness.client("alice", "not-the-password")
    client.challenge()
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.error_code == 401
    assert result.response.integrity_offset is None
    assert result.one(AuthFailed).code == 401
    assert not harness.core.allocations


@pytest.mark.parametrize(
    "offset", [pytest.param(19, id="transaction-id"), pytest.param(27, id="requested-transport-rffu")]
)
def test_core_auth_byte_flipped_under_integrity_gets_401(offset: int) -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    data = bytearray(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    data[offset] ^= 0x01
    result = client.send_raw(bytes(data))
    assert result.error_code == 401
    assert result.one(AuthFailed).username == "alice"
    assert not harness.core.allocations


def test_core_auth_user_is_looked_up_in_the_request_realm() -> None:
    calls: list[tuple[str, str]] = []
    database = UserDB(
        {
            ("alice", REALM): long_term_key("alice", REALM, "secret"),
            ("alice", "other.example"): long_term_key("alice", "other.example", "elsewhere"),
        }
    )

    def lookup(username: str, realm: str) -> bytes | None:
        calls.append((username, realm))
        return database.lookup(username, realm)

    harness = Harness(users=lookup)
    client = harness.client("alice", "elsewhere", realm="other.example")
    result = client.allocate()
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert calls == [("alice", "other.example")]
    assert verify_integrity(response, long_term_key("alice", "other.example", "elsewhere"))
    assert client.allocation.realm == "other.example"


def test_core_auth_user_lookup_can_be_swapped() -> None:
    harness = Harness()
    client = harness.client("carol", "pw")
    client.challenge()
    assert client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])).error_code == 401
    harness.core.set_user_lookup(UserDB.from_passwords({"carol": "pw"}, REALM).lookup)
    result = client.send_raw(client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.response.msg_class is MessageClass.SUCCESS


# --------------------------------------------------------------------------- authenticated responses
RESPONSES_AFTER_AUTH = [
    pytest.param(lambda c: c.allocate(), 0, id="allocate-success"),
    pytest.param(lambda c: c.allocate(transport=132), 442, id="allocate-442"),
    pytest.param(lambda c: c.allocate(transport=None), 400, id="allocate-400"),
    pytest.param(lambda c: c.allocate((Attr.REQUESTED_ADDRESS_FAMILY, 3)), 440, id="allocate-440"),
    pytest.param(lambda c: c.allocate((0x0031, b"\x00\x00\x00\x00")), 420, id="allocate-420"),
    pytest.param(lambda c: (c.allocate(), c.allocate())[1], 437, id="allocate-437"),
    pytest.param(lambda c: (c.allocate(), c.refresh(900))[1], 0, id="refresh-success"),
    pytest.param(lambda c: (c.allocate(), c.refresh(0))[1], 0, id="refresh-delete"),
    pytest.param(lambda c: (c.allocate(), c.create_permission(("198.51.100.1", 1)))[1], 0, id="permission"),
    pytest.param(lambda c: (c.allocate(), c.create_permission(("127.0.0.1", 1)))[1], 403, id="permission-403"),
    pytest.param(lambda c: (c.allocate(), c.channel_bind(0x4000))[1], 0, id="channel-bind"),
    pytest.param(lambda c: (c.allocate(), c.channel_bind(0x3FFF))[1], 400, id="channel-bind-400"),
]


@pytest.mark.parametrize(("exchange", "code"), RESPONSES_AFTER_AUTH)
def test_core_auth_every_response_after_auth_carries_valid_integrity(exchange: Any, code: int) -> None:
    harness = Harness()
    client = harness.client()
    result = exchange(client)
    response = result.response
    assert (result.error_code or 0) == code
    assert response.integrity_offset is not None
    assert verify_integrity(response, client.key)
    assert not verify_integrity(response, long_term_key("alice", REALM, "other"))


@pytest.mark.parametrize("fingerprint", [pytest.param(True, id="with"), pytest.param(False, id="without")])
def test_core_auth_fingerprint_mirrored_on_authenticated_response(fingerprint: bool) -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    data = client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], fingerprint=fingerprint)
    response = client.send_raw(data).response
    assert response.msg_class is MessageClass.SUCCESS
    assert response.has_fingerprint is fingerprint
    assert verify_integrity(response, client.key)


@pytest.mark.parametrize("fingerprint", [pytest.param(True, id="with"), pytest.param(False, id="without")])
@pytest.mark.parametrize(
    "method", [pytest.param(Method.ALLOCATE, id="401"), pytest.param(Method.BINDING, id="binding")]
)
def test_core_auth_fingerprint_mirrored_on_unauthenticated_response(fingerprint: bool, method: Method) -> None:
    harness = Harness()
    response = harness.send(
        build(method, [(Attr.REQUESTED_TRANSPORT, 17)], fingerprint=fingerprint), UDP_TUPLE
    ).response
    assert response.has_fingerprint is fingerprint


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, "pyturn  ", id="padded-default"),
        pytest.param({"pad_software_name": False}, "pyturn", id="unpadded"),
        pytest.param({"software_name": "abcd"}, "abcd", id="already-multiple-of-4"),
        pytest.param({"software_name": ""}, None, id="disabled"),
    ],
)
def test_core_auth_software_attribute(changes: dict[str, Any], expected: str | None) -> None:
    harness = Harness(make_config(**changes))
    client = harness.client()
    binding = harness.send(build(Method.BINDING), UDP_TUPLE).response
    challenge = client.challenge().response
    success = client.allocate().response
    for response in (binding, challenge, success):
        assert response.get(Attr.SOFTWARE) == expected


# ------------------------------------------------------------------------------------------------ Binding
def test_core_auth_binding_is_answered_with_xor_mapped_address() -> None:
    harness = Harness()
    result = harness.send(build(Method.BINDING), UDP_TUPLE)
    response = result.response
    assert result.one(SendToClient).five_tuple == UDP_TUPLE
    assert response.msg_class is MessageClass.SUCCESS
    assert response.method == Method.BINDING
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert not response.has(Attr.MAPPED_ADDRESS)
    assert response.integrity_offset is None


def test_core_auth_classic_binding_is_answered_with_mapped_address() -> None:
    harness = Harness()
    tid = new_tid(classic=True)
    response = harness.send(build(Method.BINDING, tid=tid), UDP_TUPLE).response
    assert response.transaction_id == tid
    assert response.classic
    assert response.get(Attr.MAPPED_ADDRESS) == CLIENT
    assert not response.has(Attr.XOR_MAPPED_ADDRESS)


@pytest.mark.parametrize("transport", [pytest.param(t, id=t.value) for t in Transport])
def test_core_auth_binding_on_every_transport(transport: Transport) -> None:
    harness = Harness()
    five_tuple = FiveTuple(transport, ("2001:db8::5", 6000), ("2001:db8::1", 3478))
    result = harness.send(build(Method.BINDING), five_tuple)
    assert result.one(SendToClient).five_tuple == five_tuple
    assert result.response.get(Attr.XOR_MAPPED_ADDRESS) == ("2001:db8::5", 6000)


def test_core_auth_binding_is_never_authenticated() -> None:
    """A Binding with MESSAGE-INTEGRITY from an unknown key is answered, without MI (docs/compatibility.md
    "Authentication")."""
    harness = Harness()
    key = long_term_key("nobody", REALM, "x")
    attrs = [(Attr.USERNAME, "nobody"), (Attr.REALM, REALM), (Attr.NONCE, "junk")]
    result = harness.send(build(Method.BINDING, attrs, key=key), UDP_TUPLE)
    assert result.response.msg_class is MessageClass.SUCCESS
    assert result.response.integrity_offset is None
    assert not result.of(AuthFailed)


def test_core_auth_binding_with_unknown_required_attribute_gets_420() -> None:
    harness = Harness()
    result = harness.send(build(Method.BINDING, [(0x0031, b"abcd"), (0x0033, b"")]), UDP_TUPLE)
    response = result.response
    assert result.error_code == 420
    assert response.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0031, 0x0033)
    assert response.integrity_offset is None


def test_core_auth_binding_with_unknown_optional_attribute_succeeds() -> None:
    harness = Harness()
    response = harness.send(build(Method.BINDING, [(0x8031, b"abcd")]), UDP_TUPLE).response
    assert response.msg_class is MessageClass.SUCCESS


def test_core_auth_allocate_with_unknown_required_attribute_is_challenged_then_gets_420() -> None:
    harness = Harness()
    client = harness.client()
    attrs = [(Attr.REQUESTED_TRANSPORT, 17), (0x0031, b"abcd")]
    first = client.send_raw(build(Method.ALLOCATE, attrs))
    assert first.error_code == 401  # authentication comes first (docs/compatibility.md "Authentication")
    client.learn(first.response)
    result = client.send_raw(client.signed(Method.ALLOCATE, attrs))
    response = result.response
    assert result.error_code == 420
    assert response.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0031,)
    assert verify_integrity(response, client.key)
    assert not result.of(OpenRelay)
    assert not harness.core.allocations


# --------------------------------------------------------------------------------- other messages
@pytest.mark.parametrize(
    "method",
    [
        pytest.param(Method.SEND, id="send-as-request"),
        pytest.param(Method.DATA, id="data-as-request"),
        pytest.param(0x0FF, id="unassigned"),
    ],
)
def test_core_auth_unknown_method_request_gets_400(method: int) -> None:
    harness = Harness()
    before = core_state(harness)
    result = harness.send(build(method), UDP_TUPLE)
    response = result.response
    assert result.error_code == 400
    assert response.method == method
    assert response.integrity_offset is None
    assert core_state(harness) == before


def test_core_auth_shared_secret_gets_433() -> None:
    harness = Harness()
    assert harness.send(build(Method.SHARED_SECRET), UDP_TUPLE).error_code == 433


@pytest.mark.parametrize(
    ("method", "msg_class"),
    [
        pytest.param(Method.BINDING, MessageClass.SUCCESS, id="binding-success"),
        pytest.param(Method.BINDING, MessageClass.ERROR, id="binding-error"),
        pytest.param(Method.ALLOCATE, MessageClass.SUCCESS, id="allocate-success"),
        pytest.param(Method.ALLOCATE, MessageClass.ERROR, id="allocate-error"),
        pytest.param(Method.BINDING, MessageClass.INDICATION, id="binding-indication"),
        pytest.param(Method.DATA, MessageClass.INDICATION, id="data-indication"),
        pytest.param(Method.ALLOCATE, MessageClass.INDICATION, id="allocate-indication"),
    ],
)
def test_core_auth_responses_and_indications_get_no_answer(method: Method, msg_class: MessageClass) -> None:
    harness = Harness()
    before = core_state(harness)
    attrs = [(Attr.ERROR_CODE, (400, "Bad"))] if msg_class is MessageClass.ERROR else []
    assert harness.send(build(method, attrs, msg_class=msg_class), UDP_TUPLE).actions == []
    assert core_state(harness) == before


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x01\x00", id="three-bytes"),
        pytest.param(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\x00" * 11, id="short-header"),
        pytest.param(b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + b"\x00" * 12, id="length-past-end"),
        pytest.param(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\x00" * 12 + b"x", id="trailing-byte"),
    ],
)
def test_core_auth_malformed_stun_is_dropped(data: bytes) -> None:
    harness = Harness()
    assert harness.send(data, UDP_TUPLE).actions == []


def test_core_auth_no_state_kept_for_unauthenticated_requests() -> None:
    harness = Harness()
    before = core_state(harness)
    client = harness.client()
    client.challenge()  # 401
    assert client.nonce is not None
    attempts = [
        build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (Attr.REALM, REALM)], key=client.key),  # 400
        build(
            Method.ALLOCATE,
            [(Attr.USERNAME, "alice"), (Attr.REALM, REALM), (Attr.NONCE, "forged")],
            key=client.key,
        ),  # 438
        build(Method.REFRESH),  # 437
        build(Method.CREATE_PERMISSION),  # 437
        build(Method.CHANNEL_BIND),  # 437
        build(Method.BINDING),
    ]
    wrong = harness.client("alice", "wrong")
    wrong.realm, wrong.nonce = client.realm, client.nonce
    attempts.append(wrong.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))  # 401
    codes = []
    for data in attempts:
        codes.append(client.send_raw(data).error_code)
        assert core_state(harness) == before
    assert codes == [400, 438, 437, 437, 437, None, 401]


def test_core_auth_unauthenticated_answers_are_not_cached() -> None:
    """A retransmitted unauthenticated request is answered afresh (nothing stored per request)."""
    harness = Harness()
    data = build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    first = harness.send(data, UDP_TUPLE).response
    harness.advance(5)
    second = harness.send(data, UDP_TUPLE).response
    assert first.get(Attr.ERROR_CODE)[0] == second.get(Attr.ERROR_CODE)[0] == 401
    assert not harness.core.allocations  # responses are cached on allocations only


def test_core_auth_retransmitted_authenticated_request_answered_from_cache_after_nonce_expiry() -> None:
    harness = Harness(make_config(nonce_lifetime=5))
    client = harness.client()
    client.challenge()
    data = client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    first = client.send_raw(data)
    harness.advance(8)  # the nonce is stale, the cached response still there
    again = client.send_raw(data)
    assert again.sent == first.sent

