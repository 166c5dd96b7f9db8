"""pyturn.core.auth: stateless nonces and the long-term credential checks in reTurn's order."""

from __future__ import annotations

import base64

import pytest

from pyturn.core.auth import Challenge, Credentials, NonceSigner, authenticate
from pyturn.core.userdb import UserDB
from pyturn.errors import TurnError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

SECRET = b"s" * 32
LIFETIME = 3600
NOW = 1_700_000_000.25
REALM = "reTurn"
USERS = UserDB.from_passwords({"alice": "secret"}, REALM)


# ------------------------------------------------------------------------------------------- NonceSigner
def test_auth_nonce_is_fresh_when_issued() -> None:
    signer = NonceSigner(SECRET, LIFETIME)
    nonce = signer.issue(NOW)
    assert signer.is_fresh(nonce, NOW)


def test_auth_nonce_is_short_ascii() -> None:
    nonce = NonceSigner(SECRET, LIFETIME).issue(NOW)
    assert len(nonce) == 16
    assert nonce.isascii()
    assert '"' not in nonce and "\\" not in nonce  # fits in a quoted-string (RFC 8489 §14.10)


@pytest.mark.parametrize(
    ("age", "fresh"),
    [
        pytest.param(0, True, id="0"),
        pytest.param(1, True, id="1s"),
        pytest.param(LIFETIME - 1, True, id="lifetime-1"),
        pytest.param(LIFETIME, True, id="lifetime"),
        pytest.param(LIFETIME + 0.5, True, id="lifetime+0.5-same-second"),
        pytest.param(LIFETIME + 1, False, id="lifetime+1"),
        pytest.param(10 * LIFETIME, False, id="much-later"),
    ],
)
def test_auth_nonce_lifetime_boundary(age: float, fresh: bool) -> None:
    signer = NonceSigner(SECRET, LIFETIME)
    issued = 1_700_000_000.0
    assert signer.is_fresh(signer.issue(issued), issued + age) is fresh


def test_auth_nonce_from_the_future_is_stale() -> None:
    signer = NonceSigner(SECRET, LIFETIME)
    assert not signer.is_fresh(signer.issue(NOW + 10), NOW)


def test_auth_nonce_of_another_secret_is_not_fresh() -> None:
    nonce = NonceSigner(b"other", LIFETIME).issue(NOW)
    assert not NonceSigner(SECRET, LIFETIME).is_fresh(nonce, NOW)


def test_auth_nonce_shared_secret_works_across_signers() -> None:
    """Worker processes share the secret (docs/architecture.md "Workers"): one's nonce is fresh for another."""
    assert NonceSigner(SECRET, LIFETIME).is_fresh(NonceSigner(SECRET, LIFETIME).issue(NOW), NOW + 5)


def test_auth_nonce_with_tampered_timestamp_is_not_fresh() -> None:
    signer = NonceSigner(SECRET, LIFETIME)
    raw = bytearray(base64.urlsafe_b64decode(signer.issue(NOW - 10 * LIFETIME)))
    raw[0:4] = int(NOW).to_bytes(4, "big")  # claim to be issued now
    assert not signer.is_fresh(base64.urlsafe_b64encode(bytes(raw)).decode(), NOW)


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param("", id="empty"),
        pytest.param("AAAAAAAAAAAAAAAA", id="zeros"),
        pytest.param("not base64 !!!", id="not-base64"),
        pytest.param("\u00e9\u00e9\u00e9\u00e9", id="non-ascii"),
        pytest.param("QUJD", id="too-short"),
        pytest.param(base64.urlsafe_b64encode(b"x" * 20).decode(), id="too-long"),
        pytest.param("1700000000:0123456789abcdef0123456789abcdef", id="reTurn-format"),
        pytest.param("A" * 17, id="bad-padding"),
    ],
)
def test_auth_nonce_garbage_is_not_fresh(nonce: str) -> None:
    assert not NonceSigner(SECRET, LIFETIME).is_fresh(nonce, NOW)


def test_auth_nonces_differ_over_time() -> None:
    signer = NonceSigner(SECRET, LIFETIME)
    assert signer.issue(NOW) != signer.issue(NOW + 1)
    assert signer.issue(NOW) == signer.issue(NOW + 0.5)  # one-second resolution


def test_auth_nonce_survives_timestamp_wraparound() -> None:
    signer = NonceSigner(SECRET, LIFETIME)
    issued = float(2**32 - 10)
    assert signer.is_fresh(signer.issue(issued), issued + 20)


# ------------------------------------------------------------------------------------------ authenticate
def request(*attrs: tuple[int, object], key: bytes | None = None) -> Message:
    message = Message(Method.ALLOCATE, MessageClass.REQUEST, b"\x01" * 12)
    for attr, value in attrs:
        message.add(attr, value)
    return decode_message(encode_message(message, integrity_key=key))


def check(message: Message, now: float = NOW, signer: NonceSigner | None = None) -> Credentials:
    signer = signer or NonceSigner(SECRET, LIFETIME)
    return authenticate(message, realm=REALM, nonces=signer, lookup=USERS.lookup, now=now)


def signed(username: str = "alice", password: str = "secret", realm: str = REALM, nonce: str | None = None) -> Message:
    nonce = nonce if nonce is not None else NonceSigner(SECRET, LIFETIME).issue(NOW)
    key = long_term_key(username, realm, password)
    return request((Attr.USERNAME, username), (Attr.REALM, realm), (Attr.NONCE, nonce), key=key)


def test_auth_authenticate_returns_credentials() -> None:
    credentials = check(signed())
    assert credentials == Credentials("alice", REALM, long_term_key("alice", REALM, "secret"))


def test_auth_authenticate_without_integrity_is_a_401_challenge() -> None:
    with pytest.raises(Challenge) as caught:
        check(request((Attr.USERNAME, "alice")))
    assert caught.value.code == 401


@pytest.mark.parametrize("missing", [Attr.USERNAME, Attr.REALM, Attr.NONCE], ids=lambda a: a.name)
def test_auth_authenticate_missing_attribute_is_400(missing: Attr) -> None:
    nonce = NonceSigner(SECRET, LIFETIME).issue(NOW)
    attrs = {Attr.USERNAME: "alice", Attr.REALM: REALM, Attr.NONCE: nonce}
    del attrs[missing]
    with pytest.raises(TurnError) as caught:
        check(request(*attrs.items(), key=long_term_key("alice", REALM, "secret")))
    assert caught.value.code == 400
    assert not isinstance(caught.value, Challenge)


@pytest.mark.parametrize(
    ("message", "now", "code"),
    [
        pytest.param(signed(), NOW + LIFETIME + 1, 438, id="stale"),
        pytest.param(signed(nonce="forged"), NOW, 438, id="forged"),
        pytest.param(signed(password="wrong"), NOW + LIFETIME + 1, 438, id="stale-beats-password"),
        pytest.param(signed(username="mallory"), NOW, 401, id="unknown-user"),
        pytest.param(signed(password="wrong"), NOW, 401, id="wrong-password"),
        pytest.param(signed(realm="elsewhere"), NOW, 401, id="unknown-realm"),
    ],
)
def test_auth_authenticate_challenges(message: Message, now: float, code: int) -> None:
    with pytest.raises(Challenge) as caught:
        check(message, now)
    assert caught.value.code == code


def test_auth_authenticate_integrity_sha256_only_with_the_md5_key() -> None:
    # RFC 8489 §9.2.4: MESSAGE-INTEGRITY-SHA256 is checked when present; without PASSWORD-ALGORITHM the key is MD5.
    nonce = NonceSigner(SECRET, LIFETIME).issue(NOW)
    message = Message(Method.ALLOCATE, MessageClass.REQUEST, b"\x02" * 12)
    message.add(Attr.USERNAME, "alice").add(Attr.REALM, REALM).add(Attr.NONCE, nonce)
    data = encode_message(message, integrity_sha256_key=long_term_key("alice", REALM, "secret"))
    credentials = check(decode_message(data))
    assert credentials.algorithm == 0x0001
    wrong = encode_message(message, integrity_sha256_key=long_term_key("alice", REALM, "wrong"))
    with pytest.raises(Challenge) as caught:
        check(decode_message(wrong))
    assert caught.value.code == 401
