"""The fast-path layouts of Send and Data indications (pyturn.wire.indications) against the codec, the reference:
parse_send() accepts only what the codec reads as the same Send indication, and a Data indication packed from the
per-peer template is byte for byte the codec's."""

from __future__ import annotations

import struct
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyturn.errors import StunDecodeError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.indications import (
    DATA_INDICATION_HEAD,
    INDICATION_PADDING,
    data_indication_length,
    parse_send,
    peer_attribute,
)
from pyturn.wire.message import Attr, Message, MessageClass, Method

TID = bytes(range(12))
PEER = ("198.51.100.7", 5000)


def send(attrs: list[tuple[int, Any]], *, fingerprint: bool = False, tid: bytes = TID) -> bytes:
    message = Message(Method.SEND, MessageClass.INDICATION, tid)
    for attr, value in attrs:
        message.add(attr, value)
    return encode_message(message, fingerprint=fingerprint)


def test_peer_attribute_is_the_encoded_xor_peer_address_of_an_ipv4_peer() -> None:
    # RFC 8489 §14.2: port 5000 = 0x1388, ^ 0x2112 = 0x329a; 198.51.100.7 ^ 0x2112a442 = 0xe721c045
    assert peer_attribute(PEER) == bytes.fromhex("0012 0008 0001 329a e721c045")
    assert peer_attribute(("2001:db8::7", 5000)) is None  # IPv6 is XORed with the transaction id too


def test_parse_send_reads_the_usual_layout_in_either_order() -> None:
    data = send([(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"hello")])
    peer, start, end, dont_fragment = parse_send(data) or (b"", 0, 0, True)
    assert (peer, data[start:end], dont_fragment) == (peer_attribute(PEER), b"hello", False)
    data = send([(Attr.DATA, b"hello"), (Attr.XOR_PEER_ADDRESS, PEER), (Attr.DONT_FRAGMENT, True)], fingerprint=True)
    peer, start, end, dont_fragment = parse_send(data) or (b"", 0, 0, False)
    assert (peer, data[start:end], dont_fragment) == (peer_attribute(PEER), b"hello", True)


def test_parse_send_leaves_everything_else_to_the_codec() -> None:
    usual = send([(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"hello")])
    assert parse_send(usual[:-4]) is None  # truncated
    assert parse_send(b"\x00\x16" + usual[2:4] + b"\x00\x00\x00\x00" + usual[8:]) is None  # no magic cookie
    assert parse_send(send([(Attr.XOR_PEER_ADDRESS, ("2001:db8::7", 5000)), (Attr.DATA, b"x")])) is None
    assert parse_send(send([(Attr.XOR_PEER_ADDRESS, PEER), (Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"x")])) is None
    assert parse_send(send([(Attr.XOR_PEER_ADDRESS, PEER)])) is None  # no DATA
    assert parse_send(send([(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"x"), (Attr.SOFTWARE, "x")])) is None
    with_fingerprint = bytearray(send([(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"x")], fingerprint=True))
    with_fingerprint[-1] ^= 1
    assert parse_send(bytes(with_fingerprint)) is None  # a FINGERPRINT that does not match


ATTRIBUTE_CHOICES = st.sampled_from([
    "peer", "peer", "peer6", "data", "data", "df", "software", "unknown_required", "unknown_optional", "lifetime",
])


def _attribute(kind: str, payload: bytes, port: int) -> bytes:
    def tlv(kind_code: int, value: bytes) -> bytes:
        return struct.pack("!HH", kind_code, len(value)) + value + b"\x00" * (-len(value) % 4)

    if kind == "peer":
        return tlv(0x0012, struct.pack("!HHI", 1, port ^ 0x2112, 0xC6336407 ^ 0x2112A442))
    if kind == "peer6":
        return tlv(0x0012, struct.pack("!HH", 2, port ^ 0x2112) + bytes(16))
    if kind == "data":
        return tlv(0x0013, payload)
    if kind == "df":
        return tlv(0x001A, b"")
    if kind == "software":
        return tlv(0x8022, b"x")
    if kind == "unknown_required":
        return tlv(0x0031, b"")
    if kind == "unknown_optional":
        return tlv(0xC0FF, b"1234")
    return tlv(0x000D, b"\x00\x01")  # LIFETIME of the wrong length: an invalid attribute


@st.composite
def send_like(draw: st.DrawFn) -> bytes:
    """Datagrams shaped like Send indications: random attribute lists, orders, trailers, corruptions."""
    kinds = draw(st.permutations(["peer", "data", *(["df"] if draw(st.booleans()) else [])]))
    if draw(st.booleans()):  # about half are the fast path's layout before any corruption
        kinds = draw(st.lists(ATTRIBUTE_CHOICES, max_size=5)) if draw(st.booleans()) else [
            *kinds, *draw(st.lists(ATTRIBUTE_CHOICES, max_size=2))]
    payload = draw(st.binary(max_size=40))
    body = b"".join(_attribute(kind, payload, draw(st.integers(0, 0xFFFF))) for kind in kinds)
    header = struct.pack("!HHI", draw(st.sampled_from([0x0016] * 6 + [0x0017, 0x0001])), len(body), 0x2112A442)
    data = header + draw(st.binary(min_size=12, max_size=12)) + body
    if draw(st.booleans()):
        length = len(data) - 20 + 8
        covered = data[:2] + struct.pack("!H", length) + data[4:]
        data = covered + struct.pack("!HHI", 0x8028, 4, zlib.crc32(covered) ^ 0x5354554E)
    corruption = draw(st.sampled_from(["none"] * 6 + ["flip", "truncate", "length"]))
    if corruption == "flip" and data:
        index = draw(st.integers(0, len(data) - 1))
        data = data[:index] + bytes([data[index] ^ draw(st.integers(1, 255))]) + data[index + 1 :]
    elif corruption == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif corruption == "length" and len(data) >= 4:
        data = data[:2] + struct.pack("!H", draw(st.integers(0, 0xFFFF))) + data[4:]
    return data


@settings(max_examples=600, deadline=None)
@given(send_like())
def test_parse_send_accepts_only_what_the_codec_reads_as_the_same_send_indication(data: bytes) -> None:
    layout = parse_send(data)
    if layout is None:
        return  # the core decides, with the codec
    peer_bytes, start, end, dont_fragment = layout
    message = decode_message(data, keep_invalid=True)  # must not raise: the fast path took a sound message
    assert (message.method, message.msg_class) == (Method.SEND, MessageClass.INDICATION)
    assert not message.unknown_required and not message.invalid_attributes
    peer = message.get(Attr.XOR_PEER_ADDRESS)
    assert peer is not None and peer_attribute(peer) == peer_bytes
    assert message.get(Attr.DATA) == data[start:end]
    assert message.has(Attr.DONT_FRAGMENT) is dont_fragment


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1300), st.ip_addresses(v=4).map(str), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1))
def test_data_indication_from_the_template_is_the_codecs(payload: bytes, host: str, port: int, counter: int) -> None:
    prefix = b"\xa1\xb2\xc3\xd4"
    template = peer_attribute((host, port))
    assert template is not None
    size = len(payload)
    fast = DATA_INDICATION_HEAD.pack(
        0x0017, data_indication_length(size), 0x2112A442, prefix, counter, template, 0x0013, size
    ) + payload + INDICATION_PADDING[size % 4]
    reference = Message(Method.DATA, MessageClass.INDICATION, prefix + counter.to_bytes(8, "big"))
    reference.add(Attr.XOR_PEER_ADDRESS, (host, port)).add(Attr.DATA, payload)
    assert fast == encode_message(reference)


def test_parse_send_never_raises_on_garbage() -> None:
    for size in range(0, 80):
        garbage = b"\x00\x16" + bytes([size]) * size
        try:
            parse_send(garbage)
        except StunDecodeError:  # pragma: no cover - it must not raise at all
            raise AssertionError(size) from None
