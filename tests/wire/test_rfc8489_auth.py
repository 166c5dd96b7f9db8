"""RFC 8489 authentication on the wire: the Appendix B.1 sample request, USERHASH, the SHA-256 long-term key,
OpaqueString (RFC 8265 §4.2) and the password-algorithm attributes (§14.11, §14.12)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyturn.errors import StunDecodeError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.integrity import (
    long_term_key,
    long_term_key_sha256,
    opaque_string,
    userhash,
    verify_integrity,
    verify_integrity_sha256,
    verify_message_integrity,
)
from pyturn.wire.message import Attr, Message, MessageClass, Method

# RFC 8489 Appendix B.1 as corrected by verified erratum 6268: the RFC as published gives a message length of
# 0x9c for 0x88 bytes of attributes and no PASSWORD-ALGORITHM; the erratum adds PASSWORD-ALGORITHM SHA-256 (00 02,
# no parameters) before MESSAGE-INTEGRITY-SHA256, sets the length to 0x90 and gives the HMAC below.
B1_REQUEST = bytes.fromhex(
    "00010090"  # Binding request, message length 144
    "2112a442"  # magic cookie
    "78ad3433c6ad72c029da412e"  # transaction id
    "001e0020"  # USERHASH, 32 bytes
    "4a3cf38fef6992bda952c6780417da0f"
    "24819415569e60b205c46e41407f1704"
    "00150029"  # NONCE, 41 bytes and 3 of padding
    "6f624d61744a6f73324141414366"  # obMatJos2AAACf
    "2f2f3439396b39353464364f4c33346f4c39465354767936347341"  # //499k954d6OL34oL9FSTvy64sA
    "000000"
    "0014000b"  # REALM, 11 bytes and 1 of padding
    "6578616d706c652e6f726700"  # example.org
    "001d0004"  # PASSWORD-ALGORITHM
    "00020000"  # SHA-256, no parameters
    "001c0020"  # MESSAGE-INTEGRITY-SHA256
    "b5c7bf005b6c52a21c51c5e892f81924"
    "136296cb927c43149309278cc6518e65"
)
B1_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # マトリックス, unaffected by OpaqueString
B1_REALM = "example.org"
# "The<U+00AD>M<U+00AA>tr<U+2168>" before, "TheMatrIX" after processing, as B.1 says. That mapping is SASLprep's
# (RFC 4013, inherited from RFC 5769): OpaqueString disallows U+00AD and keeps U+00AA and U+2168 under NFC.
B1_PASSWORD_RAW = "The\u00adM\u00aatr\u2168"
B1_PASSWORD = "TheMatrIX"
B1_NONCE = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"


def test_b1_sample_request_decodes() -> None:
    request = decode_message(B1_REQUEST)
    assert request.method == Method.BINDING and request.msg_class is MessageClass.REQUEST
    assert request.get(Attr.NONCE) == B1_NONCE
    assert request.get(Attr.REALM) == B1_REALM
    assert request.get(Attr.PASSWORD_ALGORITHM) == (0x0002, b"")
    assert request.integrity_offset is None and request.integrity_sha256_offset == 128


def test_b1_userhash_is_sha256_of_username_and_realm() -> None:
    request = decode_message(B1_REQUEST)
    assert request.get(Attr.USERHASH) == userhash(B1_USERNAME, B1_REALM)
    assert userhash(B1_USERNAME, B1_REALM) == bytes.fromhex(
        "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    )


def test_b1_message_integrity_sha256_verifies_with_the_sha256_key() -> None:
    request = decode_message(B1_REQUEST)
    key = long_term_key_sha256(B1_USERNAME, B1_REALM, B1_PASSWORD)
    assert key == hashlib.sha256(f"{B1_USERNAME}:{B1_REALM}:{B1_PASSWORD}".encode()).digest()
    assert verify_integrity_sha256(request, key)
    assert verify_message_integrity(request, key)
    assert not verify_integrity(request, key)  # no MESSAGE-INTEGRITY in it
    assert not verify_integrity_sha256(request, long_term_key(B1_USERNAME, B1_REALM, B1_PASSWORD))
    assert not verify_integrity_sha256(request, long_term_key_sha256(B1_USERNAME, B1_REALM, "thematrix"))


def test_b1_rebuilt_byte_for_byte() -> None:
    message = Message(Method.BINDING, MessageClass.REQUEST, bytes.fromhex("78ad3433c6ad72c029da412e"))
    message.add(Attr.USERHASH, userhash(B1_USERNAME, B1_REALM)).add(Attr.NONCE, B1_NONCE)
    message.add(Attr.REALM, B1_REALM).add(Attr.PASSWORD_ALGORITHM, (0x0002, b""))
    key = long_term_key_sha256(B1_USERNAME, B1_REALM, B1_PASSWORD)
    assert encode_message(message, integrity_sha256_key=key) == B1_REQUEST


def test_b1_as_published_does_not_decode() -> None:
    # The published length (0x9c) overruns the bytes that follow it: malformed, dropped (RFC 8489 §6.3).
    published = bytearray(B1_REQUEST[:120] + B1_REQUEST[128:132] + bytes(32))
    published[2:4] = b"\x00\x9c"
    with pytest.raises(StunDecodeError):
        decode_message(bytes(published))


def test_b1_raw_password_is_not_an_opaque_string() -> None:
    assert opaque_string(B1_PASSWORD_RAW) is None  # U+00AD SOFT HYPHEN is disallowed (RFC 8264 §9.13)
    assert long_term_key_sha256(B1_USERNAME, B1_REALM, B1_PASSWORD_RAW) is None


# --- OpaqueString (RFC 8265 §4.2) ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("pass", "pass"),
        ("correct horse battery staple", "correct horse battery staple"),
        ("Tr0ub4dor&3 ", "Tr0ub4dor&3 "),
        ("caf\u0065\u0301", "caf\u00e9"),  # NFC
        ("no\u00a0break\u3000space", "no break space"),  # non-ASCII spaces -> U+0020
        ("\u30de\u30c8\u30ea\u30c3\u30af\u30b9", "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"),
        ("\u2168", "\u2168"),  # not NFKC: ROMAN NUMERAL NINE stays
    ],
)
def test_opaque_string_maps(text: str, prepared: str) -> None:
    assert opaque_string(text) == prepared


@pytest.mark.parametrize("text", ["", "tab\there", "nul\x00", "zero\u200bwidth", "soft\u00adhyphen", "\udcff"])
def test_opaque_string_rejects(text: str) -> None:
    assert opaque_string(text) is None


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
def test_opaque_string_is_identity_on_printable_ascii(text: str) -> None:
    assert opaque_string(text) == text
    assert long_term_key_sha256("u", "r", text) == hashlib.sha256(f"u:r:{text}".encode()).digest()


@given(st.text())
def test_opaque_string_is_idempotent(text: str) -> None:
    prepared = opaque_string(text)
    if prepared is not None:
        assert opaque_string(prepared) == prepared


def test_sha256_key_of_user_realm_pass() -> None:
    # RFC 8489 §18.5.1.2 with the §9.2.2 example credentials: 32 bytes, SHA-256 of 'user:realm:pass'.
    assert long_term_key_sha256("user", "realm", "pass") == hashlib.sha256(b"user:realm:pass").digest()
    assert long_term_key("user", "realm", "pass") == bytes.fromhex("8493fbc53ba582fb4c044c456bdc40eb")


# --- PASSWORD-ALGORITHM(S) (RFC 8489 §14.11, §14.12) ------------------------------------------------------------
def test_password_algorithms_round_trip() -> None:
    message = Message(Method.ALLOCATE, MessageClass.ERROR, bytes(12))
    message.add(Attr.PASSWORD_ALGORITHMS, ((0x0002, b""), (0x0001, b"")))
    data = encode_message(message)
    assert data[20:] == bytes.fromhex("80020008" "00020000" "00010000")
    assert decode_message(data).get(Attr.PASSWORD_ALGORITHMS) == ((2, b""), (1, b""))


@given(st.binary(max_size=40))
def test_password_algorithms_any_value_decodes_or_is_invalid(value: bytes) -> None:
    raw = bytearray(encode_message(Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12))))
    body = bytes.fromhex("8002") + len(value).to_bytes(2, "big") + value + bytes(-len(value) % 4)
    raw[2:4] = len(body).to_bytes(2, "big")
    decoded = decode_message(bytes(raw) + body, keep_invalid=True)
    assert decoded.has(Attr.PASSWORD_ALGORITHMS) != (Attr.PASSWORD_ALGORITHMS in decoded.invalid_attributes)
