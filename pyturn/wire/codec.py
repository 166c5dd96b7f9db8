"""Decoding and encoding whole STUN messages. Pure: no sockets, no clock. The decoder raises only
StunDecodeError, whatever the bytes.
"""

from __future__ import annotations

import hmac
import struct
import zlib

from pyturn.errors import StunDecodeError, StunEncodeError
from pyturn.wire.attributes import _DECODERS, _ENCODERS, _RAW_DECODE, _RAW_ENCODE, _TRAILER_ATTRS, _fail
from pyturn.wire.message import (
    _CLASSES,
    _COOKIE_BYTES,
    _FINGERPRINT_HEADER,
    _LENGTH,
    _METHODS,
    _MI_HEADER,
    _MI_SHA256_HEADER,
    _PADDING,
    _TYPE_LENGTH,
    _U32,
    FINGERPRINT_ATTR_SIZE,
    FINGERPRINT_XOR,
    HEADER_SIZE,
    MAX_UNKNOWN_REQUIRED,
    MI_SHA256_SIZE,
    MI_SIZE,
    Attr,
    Message,
    _pad_len,
    message_type,
    split_message_type,
)

# --- messages -------------------------------------------------------------------------------------


def decode_message(data: bytes, *, keep_invalid: bool = False) -> Message:
    """Parse one STUN message (RFC 8489 §5, §6.3, §14); any malformation raises StunDecodeError.

    keep_invalid=True (the server's mode): a known attribute whose value does not parse (a REQUESTED-TRANSPORT of
    the wrong length, an address of an unknown family) is recorded in Message.invalid_attributes and skipped
    instead, so the server can answer 400 once the request is authenticated. The framing, MESSAGE-INTEGRITY,
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT must still be well formed.
    """
    try:
        return _decode_message(bytes(data), keep_invalid)
    except StunDecodeError:
        raise
    except Exception as exc:  # the contract: whatever the bytes, only StunDecodeError escapes
        raise StunDecodeError(f"malformed STUN message: {exc!r}") from exc


def _decode_message(data: bytes, keep_invalid: bool) -> Message:
    size = len(data)
    if size < HEADER_SIZE:
        raise _fail(f"{size} bytes is shorter than a STUN header")
    msg_type, length = _TYPE_LENGTH.unpack_from(data)
    if msg_type & 0xC000:
        raise _fail("top two bits of a STUN message must be zero")  # RFC 8489 §5
    if length % 4:
        raise _fail(f"message length {length} is not a multiple of 4")
    if length + HEADER_SIZE != size:
        raise _fail(f"message length {length} does not match {size} received bytes")
    method, class_bits = split_message_type(msg_type)
    xor_key = data[4:20]
    transaction_id = data[8:20] if data[4:8] == _COOKIE_BYTES else xor_key
    msg = Message(_METHODS.get(method, method), _CLASSES[class_bits], transaction_id, raw=data)

    attributes = msg.attributes
    unknown_required: list[int] = []
    invalid: list[int] = []
    integrity_offset: int | None = None
    sha256_offset: int | None = None
    pos = HEADER_SIZE
    while pos < size:
        if pos + 4 > size:
            raise _fail("truncated attribute header")
        attr_type, attr_len = _TYPE_LENGTH.unpack_from(data, pos)
        value_end = pos + 4 + attr_len
        if value_end > size:
            raise _fail(f"attribute 0x{attr_type:04x} runs past the end of the message")
        # RFC 8489 §14.5-14.7: only MI-SHA256 and FINGERPRINT may follow MESSAGE-INTEGRITY, only
        # FINGERPRINT may follow MI-SHA256, nothing follows FINGERPRINT; the rest is ignored.
        if attr_type == Attr.FINGERPRINT:
            value = _DECODERS[attr_type](data[pos + 4 : value_end], xor_key)
            expected = zlib.crc32(_with_length(data, pos, pos + FINGERPRINT_ATTR_SIZE)) ^ FINGERPRINT_XOR
            if value != expected:
                raise _fail("FINGERPRINT mismatch")
            attributes.append((attr_type, value))
            msg.has_fingerprint = True
            break
        if sha256_offset is not None or (
            integrity_offset is not None and attr_type != Attr.MESSAGE_INTEGRITY_SHA256
        ):
            pos += 4 + _pad_len(attr_len)
            continue
        decoder = _DECODERS.get(attr_type)
        if decoder is None:
            decoder = _RAW_DECODE
            if attr_type < 0x8000 and len(unknown_required) < MAX_UNKNOWN_REQUIRED:
                unknown_required.append(attr_type)
        if keep_invalid and attr_type not in _TRAILER_ATTRS:
            try:
                attributes.append((attr_type, decoder(data[pos + 4 : value_end], xor_key)))
            except Exception:  # any failure of one value's decoder; the message itself is sound
                if len(invalid) < MAX_UNKNOWN_REQUIRED:
                    invalid.append(attr_type)
        else:
            attributes.append((attr_type, decoder(data[pos + 4 : value_end], xor_key)))
        if attr_type == Attr.MESSAGE_INTEGRITY:
            integrity_offset = pos
        elif attr_type == Attr.MESSAGE_INTEGRITY_SHA256:
            sha256_offset = pos
        pos += 4 + _pad_len(attr_len)

    msg.unknown_required = tuple(unknown_required)
    msg.invalid_attributes = tuple(invalid)
    msg.integrity_offset = integrity_offset
    msg.integrity_sha256_offset = sha256_offset
    return msg


def _with_length(data: bytes, end: int, covered_end: int) -> bytes:
    """data[:end] with the header length field set as if the message ended at covered_end."""
    return data[:2] + _LENGTH.pack(covered_end - HEADER_SIZE) + data[4:end]


def encode_message(
    msg: Message,
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """Serialise msg; MI, MI-SHA256 and FINGERPRINT are appended here (never taken from msg.attributes).

    Raises StunEncodeError when a value does not fit its attribute type.
    """
    tid = msg.transaction_id
    if len(tid) == 12:
        xor_key = _COOKIE_BYTES + tid
    elif len(tid) == 16:
        xor_key = bytes(tid)
    else:
        raise StunEncodeError(f"transaction id of {len(tid)} bytes (need 12, or 16 for classic)")
    if not 0 <= msg.method <= 0xFFF or not 0 <= msg.msg_class <= 3:
        raise StunEncodeError(f"method 0x{msg.method:x} / class {msg.msg_class} out of range")

    buf = bytearray(_TYPE_LENGTH.pack(message_type(msg.method, msg.msg_class), 0))
    buf += xor_key
    for attr_type, value in msg.attributes:
        if attr_type in _TRAILER_ATTRS:
            continue
        try:
            encoded = _ENCODERS.get(attr_type, _RAW_ENCODE)(value, xor_key)
            buf += _TYPE_LENGTH.pack(attr_type, len(encoded))
        except (struct.error, ValueError, TypeError, OverflowError, AttributeError) as exc:
            raise StunEncodeError(f"attribute 0x{attr_type:04x} value {value!r}: {exc}") from exc
        buf += encoded
        buf += _PADDING[len(encoded) % 4]

    if integrity_key is not None:  # RFC 8489 §14.5
        _set_length(buf, len(buf) + 4 + MI_SIZE)
        mac = hmac.digest(integrity_key, buf, "sha1")
        buf += _MI_HEADER
        buf += mac
    if integrity_sha256_key is not None:  # RFC 8489 §14.6
        _set_length(buf, len(buf) + 4 + MI_SHA256_SIZE)
        mac = hmac.digest(integrity_sha256_key, buf, "sha256")
        buf += _MI_SHA256_HEADER
        buf += mac
    if fingerprint:  # RFC 8489 §14.7
        _set_length(buf, len(buf) + FINGERPRINT_ATTR_SIZE)
        crc = zlib.crc32(buf) ^ FINGERPRINT_XOR
        buf += _FINGERPRINT_HEADER
        buf += _U32.pack(crc)
    _set_length(buf, len(buf))
    return bytes(buf)


def _set_length(buf: bytearray, message_end: int) -> None:
    length = message_end - HEADER_SIZE
    if length > 0xFFFF:
        raise StunEncodeError(f"message body of {length} bytes does not fit the 16-bit length field")
    _LENGTH.pack_into(buf, 2, length)

