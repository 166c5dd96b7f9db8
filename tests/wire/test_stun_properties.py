"""Property tests of pyturn.wire: every attribute type round-trips; no input makes the decoders raise
anything but StunDecodeError."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyturn.errors import StunDecodeError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import StreamFramer, decode_channel_data, encode_channel_data
from pyturn.wire.integrity import verify_integrity, verify_integrity_sha256
from pyturn.wire.message import MAGIC_COOKIE, Attr, Message, MessageClass

KNOWN_TYPES = frozenset(int(a) for a in Attr)
TRAILER_TYPES = (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)

ports = st.integers(0, 0xFFFF)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: ip.compressed),
)
addresses = st.tuples(hosts, ports)
texts = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.binary(max_size=763).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
).filter(lambda text: len(text.encode("utf-8", "surrogateescape")) <= 763)
error_codes = st.tuples(st.integers(300, 699), texts)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
algorithms = st.tuples(u16, st.binary(max_size=20))

ADDRESS_ATTRS = [
    Attr.MAPPED_ADDRESS, Attr.RESPONSE_ADDRESS, Attr.SOURCE_ADDRESS, Attr.CHANGED_ADDRESS,
    Attr.REFLECTED_FROM, Attr.ALTERNATE_SERVER, Attr.RESPONSE_ORIGIN, Attr.OTHER_ADDRESS,
    Attr.XOR_MAPPED_ADDRESS, Attr.XOR_MAPPED_ADDRESS_OLD, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS,
]
TEXT_ATTRS = [Attr.USERNAME, Attr.PASSWORD, Attr.REALM, Attr.NONCE, Attr.SOFTWARE, Attr.ALTERNATE_DOMAIN]
VALUE_STRATEGIES: dict[int, st.SearchStrategy[Any]] = {
    **{attr: addresses for attr in ADDRESS_ATTRS},
    **{attr: texts for attr in TEXT_ATTRS},
    Attr.ERROR_CODE: error_codes,
    Attr.ADDRESS_ERROR_CODE: st.tuples(u8, st.integers(300, 699), texts),
    Attr.ADDRESS_ERROR_CODE_OLD: st.tuples(u8, st.integers(300, 699), texts),
    Attr.UNKNOWN_ATTRIBUTES: st.lists(u16, max_size=12).map(tuple),
    Attr.LIFETIME: u32,
    Attr.BANDWIDTH: u32,
    Attr.PRIORITY: u32,
    Attr.CHANGE_REQUEST: u32,
    Attr.CONNECTION_ID: u32,
    Attr.CHANNEL_NUMBER: u16,
    Attr.RESPONSE_PORT: u16,
    Attr.REQUESTED_TRANSPORT: u8,
    Attr.REQUESTED_ADDRESS_FAMILY: u8,
    Attr.ADDITIONAL_ADDRESS_FAMILY: u8,
    Attr.ADDITIONAL_ADDRESS_FAMILY_OLD: u8,
    Attr.EVEN_PORT: st.booleans(),
    Attr.DONT_FRAGMENT: st.just(True),
    Attr.USE_CANDIDATE: st.just(True),
    Attr.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    Attr.ICE_CONTROLLED: u64,
    Attr.ICE_CONTROLLING: u64,
    Attr.USERHASH: st.binary(min_size=32, max_size=32),
    Attr.DATA: st.binary(max_size=200),
    Attr.PADDING: st.binary(max_size=40),
    Attr.PASSWORD_ALGORITHM: algorithms,
    Attr.PASSWORD_ALGORITHMS: st.lists(algorithms, max_size=4).map(tuple),
}
# FINGERPRINT, MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256 are written by encode_message itself.
assert set(VALUE_STRATEGIES) | set(TRAILER_TYPES) == KNOWN_TYPES

unknown_attrs = st.tuples(
    st.integers(0, 0xFFFF).filter(lambda t: t not in KNOWN_TYPES), st.binary(max_size=30)
)
known_attrs = st.sampled_from(sorted(VALUE_STRATEGIES)).flatmap(
    lambda attr: st.tuples(st.just(attr), VALUE_STRATEGIES[attr])
)
attribute_pairs = st.one_of(known_attrs, unknown_attrs)
transaction_ids = st.one_of(st.binary(min_size=12, max_size=12), st.binary(min_size=16, max_size=16))
keys = st.none() | st.binary(max_size=32)
bit_flips = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=5)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(
        method=draw(st.integers(0, 0xFFF)),
        msg_class=draw(st.sampled_from(MessageClass)),
        transaction_id=draw(transaction_ids),
        attributes=draw(st.lists(attribute_pairs, max_size=8)),
    )


@st.composite
def encoded_messages(draw: st.DrawFn) -> bytes:
    return encode_message(
        draw(messages()),
        integrity_key=draw(keys),
        integrity_sha256_key=draw(keys),
        fingerprint=draw(st.booleans()),
    )


def decode_or_reject(data: bytes) -> Message | None:
    """decode_message's only allowed failure is StunDecodeError; the verifiers must not raise at all."""
    try:
        msg = decode_message(data)
    except StunDecodeError:
        return None
    verify_integrity(msg, b"key")
    verify_integrity_sha256(msg, b"key")
    return msg


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), keys, keys, st.booleans())
def test_encode_decode_round_trip(msg: Message, key: bytes | None, sha_key: bytes | None, fp: bool) -> None:
    raw = encode_message(msg, integrity_key=key, integrity_sha256_key=sha_key, fingerprint=fp)
    decoded = decode_message(raw)
    assert decoded.method == msg.method
    assert decoded.msg_class == msg.msg_class
    assert decoded.transaction_id == msg.transaction_id
    assert decoded.classic == (len(msg.transaction_id) == 16)
    assert raw[4:8] == MAGIC_COOKIE.to_bytes(4, "big") or decoded.classic
    body = [(t, v) for t, v in decoded.attributes if t not in TRAILER_TYPES]
    assert body == msg.attributes
    unknown_required = [t for t, _ in msg.attributes if t < 0x8000 and t not in KNOWN_TYPES]
    assert decoded.unknown_required == tuple(unknown_required[:16])
    assert (decoded.integrity_offset is not None) == (key is not None)
    assert (decoded.integrity_sha256_offset is not None) == (sha_key is not None)
    assert decoded.has_fingerprint == fp
    if key is not None:
        assert verify_integrity(decoded, key)
        assert not verify_integrity(decoded, key + b"!")
    if sha_key is not None:
        assert verify_integrity_sha256(decoded, sha_key)
    assert encode_message(decoded, integrity_key=key, integrity_sha256_key=sha_key, fingerprint=fp) == raw


@given(known_attrs, transaction_ids)
def test_every_attribute_type_round_trips_alone(pair: tuple[int, Any], tid: bytes) -> None:
    msg = Message(1, MessageClass.REQUEST, tid, [pair])
    assert decode_message(encode_message(msg, fingerprint=True)).attributes[0] == pair


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_decode_random_bytes_only_raises_stun_decode_error(data: bytes) -> None:
    decode_or_reject(data)


@settings(max_examples=300)
@given(st.binary(max_size=100), st.integers(0, 0xFFFF))
def test_decode_random_body_with_valid_header(body: bytes, msg_type: int) -> None:
    body = body[: len(body) // 4 * 4]
    decode_or_reject(struct.pack("!HHI", msg_type & 0x3FFF, len(body), MAGIC_COOKIE) + bytes(12) + body)


@settings(max_examples=500)
@given(st.lists(st.tuples(st.sampled_from(sorted(KNOWN_TYPES)), st.binary(max_size=40)), max_size=6),
       transaction_ids)
def test_decode_known_types_with_random_values(tlvs: list[tuple[int, bytes]], tid: bytes) -> None:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in tlvs)
    cookie = struct.pack("!I", MAGIC_COOKIE) if len(tid) == 12 else b""
    decode_or_reject(struct.pack("!HH", 0x0001, len(body)) + cookie + tid + body)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(encoded_messages(), bit_flips)
def test_decode_bit_flipped_messages(raw: bytes, flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(raw)
    for index, bit in flips:
        mutated[index % len(mutated)] ^= 1 << bit
    decode_or_reject(bytes(mutated))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(encoded_messages(), st.integers(0, 10_000))
def test_decode_truncated_messages(raw: bytes, cut: int) -> None:
    decode_or_reject(raw[: cut % len(raw)])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(encoded_messages(), u16, st.integers(0, 3))
def test_decode_messages_with_edited_lengths(raw: bytes, new_length: int, which: int) -> None:
    edited = bytearray(raw)
    if which == 0 or len(raw) < 24:
        struct.pack_into("!H", edited, 2, new_length)  # the header's length field
    else:
        struct.pack_into("!H", edited, 22, new_length)  # the first attribute's length field
        if which == 2:
            struct.pack_into("!H", edited, 2, (len(edited) - 20 + new_length) & 0xFFFC)
            edited += bytes(new_length)
    decode_or_reject(bytes(edited))


@given(st.binary(max_size=40))
def test_decode_channel_data_only_raises_stun_decode_error(data: bytes) -> None:
    try:
        channel, payload = decode_channel_data(data)
    except StunDecodeError:
        return
    assert channel >= 0x4000 and payload == data[4 : 4 + len(payload)]


@given(st.integers(0x4000, 0xFFFF), st.binary(max_size=100), st.booleans(), st.binary(max_size=5))
def test_channel_data_round_trip(channel: int, payload: bytes, pad: bool, trailing: bytes) -> None:
    encoded = encode_channel_data(channel, payload, pad=pad)
    assert len(encoded) % 4 == 0 or not pad
    assert decode_channel_data(encoded + trailing) == (channel, payload)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans(), st.integers(4, 300))
def test_stream_framer_random_chunks_only_raise_stun_decode_error(
    chunks: list[bytes], padding: bool, max_frame: int
) -> None:
    framer = StreamFramer(channel_padding=padding, max_frame=max_frame)
    try:
        for chunk in chunks:
            for frame in framer.feed(chunk):
                assert len(frame) <= max_frame
    except StunDecodeError:
        pass


frames = st.one_of(
    st.tuples(st.integers(0x4000, 0x7FFF), st.binary(max_size=50)).map(lambda cp: ("channel", cp)),
    encoded_messages().map(lambda raw: ("stun", raw)),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=6), st.booleans(), st.lists(st.integers(1, 40), max_size=30), st.data())
def test_stream_framer_reassembles_any_split(
    items: list[tuple[str, Any]], padding: bool, sizes: list[int], data: st.DataObject
) -> None:
    expected = []
    stream = b""
    for kind, item in items:
        if kind == "stun":
            expected.append(item)
            stream += item
        else:
            channel, payload = item
            expected.append(encode_channel_data(channel, payload))
            stream += encode_channel_data(channel, payload, pad=padding)
    framer = StreamFramer(channel_padding=padding)
    got: list[bytes] = []
    pos = 0
    for size in sizes:
        got += framer.feed(stream[pos : pos + size])
        pos += size
    got += framer.feed(stream[pos:])
    assert got == expected
    assert framer.buffered == 0
