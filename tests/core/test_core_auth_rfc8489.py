"""TurnServerCore with RFC 8489 §9.2 authentication: the challenge's offer, SHA-256 keys, USERHASH, the bid-down
400s, answers in kind, and the users that stay on MD5 (htdigest lines)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from turnclient import CLIENT, PEER, REALM, SERVER, Harness, TurnClient, build, new_tid
from turnsession import CLIENT_SOFTWARE, message

from pyturn.core.actions import OpenRelay
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.events import AllocationCreated, AuthFailed
from pyturn.core.sharedsecret import SharedSecrets, UsersAndSecrets, rest_password
from pyturn.core.userdb import UserDB, htdigest_line, parse_user_lines
from pyturn.wire.codec import decode_message
from pyturn.wire.integrity import (
    long_term_key,
    long_term_key_sha256,
    userhash,
    verify_integrity,
    verify_integrity_sha256,
)
from pyturn.wire.message import Attr, Message, MessageClass, Method

UDP = FiveTuple(Transport.UDP, CLIENT, SERVER)
TCP = FiveTuple(Transport.TCP, CLIENT, SERVER)
OFFER = ((0x0002, b""), (0x0001, b""))  # SHA-256 first, then MD5 (RFC 8489 §18.5)
SHA256 = (0x0002, b"")
MD5 = (0x0001, b"")
# A first Allocate as clients send it: REQUESTED-TRANSPORT, SOFTWARE, FINGERPRINT.
FIRST_ALLOCATE = [(Attr.REQUESTED_TRANSPORT, 17), (Attr.SOFTWARE, CLIENT_SOFTWARE)]


def rfc8489_harness(users: Any | None = None) -> Harness:
    return Harness(users=users if users is not None else UserDB.from_passwords({"alice": "secret"}, REALM))


def challenge(harness: Harness, five_tuple: FiveTuple = UDP, attrs: Any = FIRST_ALLOCATE,
              fingerprint: bool = True) -> Message:
    response = harness.send(build(Method.ALLOCATE, attrs, fingerprint=fingerprint), five_tuple).response
    assert response.get(Attr.ERROR_CODE)[0] == 401
    return response


def client(harness: Harness, username: str = "alice", password: str = "secret",
           transport: Transport = Transport.UDP) -> TurnClient:
    turn = harness.client(username, password, transport=transport)
    turn.session.rfc8489 = True
    return turn


def signed_request(nonce: str, *attrs: tuple[int, Any], key: bytes, sha256: bool = True,
                   who: tuple[int, Any] = (Attr.USERNAME, "alice"), method: int = Method.ALLOCATE) -> bytes:
    body = [(Attr.REQUESTED_TRANSPORT, 17)] if method == Method.ALLOCATE else []
    body += [*attrs, who, (Attr.REALM, REALM), (Attr.NONCE, nonce)]
    if sha256:
        return message(method, body, tid=new_tid(), sha256_key=key, fingerprint=True)
    return build(method, body, key=key, fingerprint=True)


def sha256_key(username: str = "alice", password: str = "secret") -> bytes:
    key = long_term_key_sha256(username, REALM, password)
    assert key is not None
    return key


# --------------------------------------------------------------------------------------------- the offer
def test_rfc8489_401_offers_password_algorithms_and_the_nonce_cookie() -> None:
    response = challenge(rfc8489_harness())
    assert response.get(Attr.PASSWORD_ALGORITHMS) == OFFER
    nonce = response.get(Attr.NONCE)
    # "obMatJos2" + base64 of the 24 feature bits: bit 0 Password algorithms, bit 1 Username anonymity (§18.1).
    assert nonce.startswith("obMatJos2wAAA")
    assert base64.b64decode(nonce[9:13]) == b"\xc0\x00\x00"
    assert len(nonce) == 29 < 128  # RFC 8489 §14.10
    assert response.integrity_offset is None and response.integrity_sha256_offset is None


def test_rfc8489_offer_without_userhash_when_shared_secrets_are_in_force() -> None:
    users = UsersAndSecrets(UserDB.from_passwords({"alice": "secret"}, REALM), SharedSecrets(["s3"], realm=REALM))
    response = challenge(rfc8489_harness(users))
    assert response.get(Attr.NONCE).startswith("obMatJos2gAAA")  # Password algorithms only: 0x800000
    assert response.get(Attr.PASSWORD_ALGORITHMS) == OFFER


def test_rfc8489_htdigest_only_users_are_challenged_as_before() -> None:
    users, _ = parse_user_lines([htdigest_line("alice", REALM, "secret")], source="users", hashed=False)
    response = challenge(rfc8489_harness(users))
    assert not response.get(Attr.NONCE).startswith("obMatJos2")
    assert len(response.get(Attr.NONCE)) == 16
    assert not response.has(Attr.PASSWORD_ALGORITHMS)


def test_rfc8489_no_offer_to_classic_rfc3489_requests() -> None:
    harness = rfc8489_harness()
    data = build(Method.ALLOCATE, FIRST_ALLOCATE, tid=b"\xc1" * 16)
    response = harness.send(data, UDP).response
    assert response.get(Attr.ERROR_CODE)[0] == 401
    assert not response.has(Attr.PASSWORD_ALGORITHMS)
    assert not response.get(Attr.NONCE).startswith("obMatJos2")


def test_rfc8489_smallest_udp_request_gets_the_plain_challenge_within_3x() -> None:
    harness = rfc8489_harness()
    tiny = build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    assert len(tiny) == 28
    sent = harness.send(tiny, UDP).sent[0]
    assert len(sent) <= 3 * 28
    assert not decode_message(sent).has(Attr.PASSWORD_ALGORITHMS)
    # Over TCP nobody can forge the source: the offer always goes.
    over_tcp = decode_message(harness.send(tiny, TCP).sent[0])
    assert over_tcp.get(Attr.PASSWORD_ALGORITHMS) == OFFER


def test_rfc8489_438_offers_too() -> None:
    harness = rfc8489_harness()
    stale = "obMatJos2wAAA" + "A" * 16
    response = harness.send(signed_request(stale, (Attr.PASSWORD_ALGORITHMS, OFFER), (Attr.PASSWORD_ALGORITHM,
                                           SHA256), key=sha256_key()), UDP).response
    assert response.get(Attr.ERROR_CODE)[0] == 438
    assert response.get(Attr.PASSWORD_ALGORITHMS) == OFFER
    assert response.get(Attr.NONCE).startswith("obMatJos2wAAA")


# ------------------------------------------------------------------------------------- SHA-256 and USERHASH
def test_rfc8489_sha256_userhash_allocation_and_answers_in_kind() -> None:
    harness = rfc8489_harness()
    turn = client(harness)
    turn.challenge()
    assert turn.session.use_userhash and turn.session.algorithm == 0x0002
    result = turn.allocate()
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert response.integrity_offset is None
    assert verify_integrity_sha256(response, sha256_key())
    created = result.one(AllocationCreated)
    assert created.username == "alice"
    allocation = turn.allocation
    assert allocation.algorithm == 0x0002 and allocation.key == sha256_key()
    # RFC 8489 §9.2.4: the later requests keep the algorithm, and are answered with MESSAGE-INTEGRITY-SHA256.
    for later in (turn.create_permission(PEER), turn.channel_bind(0x4000), turn.refresh(600)):
        assert later.response.msg_class is MessageClass.SUCCESS
        assert verify_integrity_sha256(later.response, sha256_key())
        assert later.response.integrity_offset is None


def test_rfc8489_md5_request_on_a_sha256_allocation_is_441() -> None:
    harness = rfc8489_harness()
    turn = client(harness)
    turn.allocate()
    nonce = turn.nonce
    md5_refresh = build(Method.REFRESH, [(Attr.USERNAME, "alice"), (Attr.REALM, REALM), (Attr.NONCE, nonce)],
                        key=long_term_key("alice", REALM, "secret"))
    assert harness.send(md5_refresh, UDP).error_code == 441


def test_rfc8489_sha256_with_username_and_message_integrity() -> None:
    # PASSWORD-ALGORITHM SHA-256 signed with MESSAGE-INTEGRITY (HMAC-SHA1 with the 32-byte key): accepted, and the
    # answer carries MESSAGE-INTEGRITY-SHA256 since the request named a password algorithm (§9.2.4).
    harness = rfc8489_harness()
    nonce = challenge(harness).get(Attr.NONCE)
    data = signed_request(nonce, (Attr.PASSWORD_ALGORITHMS, OFFER), (Attr.PASSWORD_ALGORITHM, SHA256),
                          key=sha256_key(), sha256=False)
    response = harness.send(data, UDP).response
    assert response.msg_class is MessageClass.SUCCESS
    assert verify_integrity_sha256(response, sha256_key()) and response.integrity_offset is None


def test_rfc8489_md5_chosen_from_the_offer() -> None:
    harness = rfc8489_harness()
    nonce = challenge(harness).get(Attr.NONCE)
    md5_key = long_term_key("alice", REALM, "secret")
    data = signed_request(nonce, (Attr.PASSWORD_ALGORITHMS, OFFER), (Attr.PASSWORD_ALGORITHM, MD5), key=md5_key,
                          sha256=False)
    result = harness.send(data, UDP)
    assert result.response.msg_class is MessageClass.SUCCESS
    assert verify_integrity_sha256(result.response, md5_key)
    assert harness.core.allocations[UDP].algorithm == 0x0001


def test_rfc8489_rfc5389_client_with_a_cookie_nonce_stays_md5() -> None:
    # Neither PASSWORD-ALGORITHMS nor PASSWORD-ALGORITHM: processed as MD5, answered with MESSAGE-INTEGRITY only.
    harness = rfc8489_harness()
    nonce = challenge(harness).get(Attr.NONCE)
    md5_key = long_term_key("alice", REALM, "secret")
    response = harness.send(signed_request(nonce, key=md5_key, sha256=False), UDP).response
    assert response.msg_class is MessageClass.SUCCESS
    assert verify_integrity(response, md5_key) and response.integrity_sha256_offset is None


def test_rfc8489_unknown_userhash_is_401() -> None:
    harness = rfc8489_harness()
    nonce = challenge(harness).get(Attr.NONCE)
    data = signed_request(nonce, (Attr.PASSWORD_ALGORITHMS, OFFER), (Attr.PASSWORD_ALGORITHM, SHA256),
                          key=sha256_key(), who=(Attr.USERHASH, hashlib.sha256(b"mallory:reTurn").digest()))
    result = harness.send(data, UDP)
    assert result.error_code == 401
    assert result.one(AuthFailed).reason == "unknown_user"


def test_rfc8489_userhash_index_follows_the_snapshot() -> None:
    users = UserDB.from_passwords({"alice": "secret", "\u00e9lodie": "pw"}, REALM)
    assert users.user_for_hash(hashlib.sha256(b"alice:reTurn").digest()) == ("alice", REALM)
    assert users.user_for_hash(userhash("\u00e9lodie", REALM) or b"") == ("\u00e9lodie", REALM)
    assert users.user_for_hash(hashlib.sha256(b"alice:elsewhere").digest()) is None


# ------------------------------------------------------------------------------------------- bid-down 400s
@pytest.mark.parametrize(
    "attrs",
    [
        pytest.param([(Attr.PASSWORD_ALGORITHM, SHA256)], id="algorithm-without-list"),
        pytest.param([(Attr.PASSWORD_ALGORITHMS, OFFER)], id="list-without-algorithm"),
        pytest.param([(Attr.PASSWORD_ALGORITHMS, (SHA256,)), (Attr.PASSWORD_ALGORITHM, SHA256)], id="list-cut-short"),
        pytest.param([(Attr.PASSWORD_ALGORITHMS, (MD5, SHA256)), (Attr.PASSWORD_ALGORITHM, SHA256)],
                     id="list-reordered"),
        pytest.param([(Attr.PASSWORD_ALGORITHMS, OFFER), (Attr.PASSWORD_ALGORITHM, (0x0003, b""))],
                     id="algorithm-not-in-list"),
    ],
)
def test_rfc8489_bid_down_is_400(attrs: list[tuple[int, Any]]) -> None:
    # RFC 8489 §9.2.4: with the Password algorithms bit in the nonce cookie, PASSWORD-ALGORITHM and
    # PASSWORD-ALGORITHMS must both be there, the list as offered and the algorithm one of its entries.
    harness = rfc8489_harness()
    nonce = challenge(harness).get(Attr.NONCE)
    result = harness.send(signed_request(nonce, *attrs, key=sha256_key()), UDP)
    assert result.error_code == 400
    assert result.response.integrity_offset is None and result.response.integrity_sha256_offset is None
    assert not result.of(OpenRelay)


@pytest.mark.parametrize(
    "algorithm", [pytest.param((0x0003, b""), id="unknown"), pytest.param((0x0002, b"\x00\x01"), id="parameters")]
)
def test_rfc8489_unsupported_algorithm_with_a_plain_nonce_is_400(algorithm: tuple[int, bytes]) -> None:
    harness = rfc8489_harness()
    nonce = challenge(harness, attrs=[(Attr.REQUESTED_TRANSPORT, 17)], fingerprint=False).get(Attr.NONCE)
    assert not nonce.startswith("obMatJos2")
    data = signed_request(nonce, (Attr.PASSWORD_ALGORITHM, algorithm), key=sha256_key())
    assert harness.send(data, UDP).error_code == 400


def test_rfc8489_cookie_cut_off_the_nonce_is_stale() -> None:
    # The MAC covers the feature bits: a nonce whose cookie was removed on the way is not this server's.
    harness = rfc8489_harness()
    nonce = challenge(harness).get(Attr.NONCE)
    md5_key = long_term_key("alice", REALM, "secret")
    assert harness.send(signed_request(nonce[13:], key=md5_key, sha256=False), UDP).error_code == 438
    downgraded = "obMatJos2gAAA" + nonce[13:]  # Username anonymity bit cleared
    assert harness.send(signed_request(downgraded, key=md5_key, sha256=False), UDP).error_code == 438


# ------------------------------------------------------------------------------------------ users on MD5
def test_rfc8489_htdigest_user_stays_on_md5() -> None:
    lines = ["bob:hunter2:reTurn:authorized\n", htdigest_line("alice", REALM, "secret")]
    users, problems = parse_user_lines(lines, source="users", hashed=False)
    assert not problems
    harness = rfc8489_harness(users)
    nonce = challenge(harness).get(Attr.NONCE)
    assert nonce.startswith("obMatJos2")  # bob can do SHA-256, so it is offered
    result = harness.send(signed_request(nonce, (Attr.PASSWORD_ALGORITHMS, OFFER), (Attr.PASSWORD_ALGORITHM, SHA256),
                                         key=sha256_key()), UDP)
    assert result.error_code == 401
    assert result.one(AuthFailed).reason == "md5_only_user"
    assert result.response.get(Attr.PASSWORD_ALGORITHMS) == OFFER  # §9.2.4: a 401 for a user carries the list
    md5 = signed_request(nonce, key=long_term_key("alice", REALM, "secret"), sha256=False)
    assert harness.send(md5, UDP).response.msg_class is MessageClass.SUCCESS


def test_rfc8489_hashed_password_lines_stay_on_md5() -> None:
    line = f"alice:{long_term_key('alice', REALM, 'secret').hex()}:reTurn:authorized\n"
    users, _ = parse_user_lines([line], source="users", hashed=True)
    assert not users.serves_sha256
    assert users.sha256_keys_at("alice", REALM, 0.0).keys == ()


def test_rfc8489_shared_secret_user_with_sha256() -> None:
    users = UsersAndSecrets(None, SharedSecrets(["s3cret"], realm=REALM))
    harness = rfc8489_harness(users)
    username = f"{int(harness.now) + 3600}:carol"
    password = rest_password("s3cret", username)
    turn = client(harness, username, password)
    result = turn.allocate()
    assert result.response.msg_class is MessageClass.SUCCESS
    assert not turn.session.use_userhash
    assert verify_integrity_sha256(result.response, long_term_key_sha256(username, REALM, password) or b"")
    # A USERHASH cannot name a shared-secret user: nothing to index ahead.
    nonce = turn.nonce
    hashed = userhash(username, REALM)
    data = signed_request(nonce, (Attr.PASSWORD_ALGORITHMS, OFFER), (Attr.PASSWORD_ALGORITHM, SHA256),
                          key=long_term_key_sha256(username, REALM, password) or b"", who=(Attr.USERHASH, hashed))
    other = FiveTuple(Transport.UDP, ("203.0.113.11", 40001), SERVER)
    assert harness.send(data, other).error_code == 401


ALGORITHMS = st.sampled_from([(0x0001, b""), (0x0002, b""), (0x0003, b""), (0x0002, b"\x00\x00\x00\x01")])


@settings(max_examples=60, deadline=None)
@given(chosen=st.none() | ALGORITHMS, listed=st.none() | st.lists(ALGORITHMS, max_size=3).map(tuple))
def test_rfc8489_password_algorithm_rules_hold_for_any_combination(
    chosen: tuple[int, bytes] | None, listed: tuple[tuple[int, bytes], ...] | None
) -> None:
    harness = rfc8489_harness()
    nonce = challenge(harness).get(Attr.NONCE)
    attrs: list[tuple[int, Any]] = []
    if listed is not None:
        attrs.append((Attr.PASSWORD_ALGORITHMS, listed))
    if chosen is not None:
        attrs.append((Attr.PASSWORD_ALGORITHM, chosen))
    sha256 = chosen == SHA256
    key = sha256_key() if sha256 else long_term_key("alice", REALM, "secret")
    result = harness.send(signed_request(nonce, *attrs, key=key), UDP)
    valid = (chosen is None and listed is None) or (listed == OFFER and chosen in OFFER)
    if valid:
        assert result.response.msg_class is MessageClass.SUCCESS
        assert harness.core.allocations[UDP].algorithm == (0x0002 if sha256 else 0x0001)
    else:
        assert result.error_code == 400
