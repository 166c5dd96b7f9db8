"""STUN and TURN attribute value codecs, one pair per attribute type.

Value types (what decode_message produces and encode_message consumes):

  address attributes (MAPPED/XOR-MAPPED/XOR-PEER/XOR-RELAYED/ALTERNATE-SERVER/...)   Address (host, port)
  USERNAME, PASSWORD, REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN    str (utf-8, surrogateescape)
  ERROR-CODE                                                     (code, reason)
  ADDRESS-ERROR-CODE (also 0x8033)                               (family, code, reason)
  UNKNOWN-ATTRIBUTES                                             tuple[int, ...]
  LIFETIME, BANDWIDTH, PRIORITY, CHANGE-REQUEST, CONNECTION-ID,
  FINGERPRINT, ICE-CONTROLLED, ICE-CONTROLLING                   int
  CHANNEL-NUMBER, RESPONSE-PORT (top 16 bits); REQUESTED-TRANSPORT,
  REQUESTED-/ADDITIONAL-ADDRESS-FAMILY (top byte, also 0x8032)    int
  EVEN-PORT                                                      bool (the R bit)
  DONT-FRAGMENT, USE-CANDIDATE                                   True
  RESERVATION-TOKEN, USERHASH, DATA, PADDING, MESSAGE-INTEGRITY(-SHA256)   bytes
  PASSWORD-ALGORITHM                                             (algorithm, params)
  PASSWORD-ALGORITHMS                                            tuple[(algorithm, params), ...]
  any other type                                                 bytes, as received
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pyturn.errors import StunDecodeError
from pyturn.wire.message import (
    _ADDRESS_ERROR_HEAD,
    _ADDRESS_HEAD,
    _ERROR_HEAD,
    _PADDING,
    _PORT_XOR,
    _TYPE_LENGTH,
    _U8_PAD3,
    _U16_PAD2,
    _U32,
    _U64,
    MAGIC_COOKIE,
    MAX_TEXT_BYTES,
    MI_SIZE,
    Address,
    Attr,
    _pad_len,
)

# --- attribute value codecs -----------------------------------------------------------------------
# A decoder gets the value bytes and the 16 header bytes after the length field (the XOR key);
# an encoder gets the Python value and the same key. Decoders raise StunDecodeError or let
# struct/ValueError escape (decode_message converts those); encoders raise anything (converted to
# StunEncodeError).

_Decoder = Callable[[bytes, bytes], Any]
_Encoder = Callable[[Any, bytes], bytes]


def _fail(what: str) -> StunDecodeError:
    return StunDecodeError(what)


def _decode_address_parts(value: bytes) -> tuple[int, int, bytes]:
    family, port = _ADDRESS_HEAD.unpack_from(value)
    if family == 1:
        if len(value) != 8:
            raise _fail(f"IPv4 address attribute of length {len(value)}")
    elif family == 2:
        if len(value) != 20:
            raise _fail(f"IPv6 address attribute of length {len(value)}")
    else:
        raise _fail(f"unknown address family {family}")
    return family, port, value[4:]


def _ipv4_text(packed_int: int) -> str:
    return f"{packed_int >> 24}.{(packed_int >> 16) & 255}.{(packed_int >> 8) & 255}.{packed_int & 255}"


def _ipv6_text(packed: bytes) -> str:
    return ipaddress.IPv6Address(packed).compressed


@lru_cache(maxsize=1024)
def _parse_host(host: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(host)
    return (1, ip.packed) if ip.version == 4 else (2, ip.packed)


def _decode_address(value: bytes, _key: bytes) -> Address:
    family, port, packed = _decode_address_parts(value)
    if family == 1:
        return _ipv4_text(_U32.unpack(packed)[0]), port
    return _ipv6_text(packed), port


def _encode_address(value: Address, _key: bytes) -> bytes:
    host, port = value
    family, packed = _parse_host(host)
    return _ADDRESS_HEAD.pack(family, port) + packed


def _xor16(data: bytes, key: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(16, "big")


def _decode_xor_address(value: bytes, key: bytes) -> Address:
    # RFC 8489 §14.2. IPv4 is XORed with the magic cookie even in a classic message (as reTurn
    # does); IPv6 with the 16 bytes after the length field, which there are the classic tid.
    family, port, packed = _decode_address_parts(value)
    port ^= _PORT_XOR
    if family == 1:
        return _ipv4_text(_U32.unpack(packed)[0] ^ MAGIC_COOKIE), port
    return _ipv6_text(_xor16(packed, key)), port


def _encode_xor_address(value: Address, key: bytes) -> bytes:
    host, port = value
    family, packed = _parse_host(host)
    head = _ADDRESS_HEAD.pack(family, port ^ _PORT_XOR)
    if family == 1:
        return head + _U32.pack(_U32.unpack(packed)[0] ^ MAGIC_COOKIE)
    return head + _xor16(packed, key)


def _decode_text(value: bytes, _key: bytes) -> str:
    if len(value) > MAX_TEXT_BYTES:
        raise _fail(f"text attribute of {len(value)} bytes")
    return value.decode("utf-8", "surrogateescape")


def _encode_text(value: str, _key: bytes) -> bytes:
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_TEXT_BYTES:
        raise ValueError(f"text attribute of {len(encoded)} bytes (max {MAX_TEXT_BYTES})")
    return encoded


def _check_error_code(error_class: int, number: int) -> int:
    if not 3 <= error_class <= 6 or number > 99:
        raise _fail(f"error code class {error_class} number {number}")
    return error_class * 100 + number


def _decode_error_code(value: bytes, key: bytes) -> tuple[int, str]:
    # RFC 8489 §14.8: 21 reserved bits, class (3 bits), number (8 bits), reason phrase
    if len(value) < 4:
        raise _fail("ERROR-CODE shorter than 4 bytes")
    error_class, number = _ERROR_HEAD.unpack_from(value)
    return _check_error_code(error_class & 0x07, number), _decode_text(value[4:], key)


def _split_code(code: int) -> tuple[int, int]:
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} outside 300..699")
    return divmod(code, 100)


def _encode_error_code(value: tuple[int, str], key: bytes) -> bytes:
    code, reason = value
    return _ERROR_HEAD.pack(*_split_code(code)) + _encode_text(reason, key)


def _decode_address_error_code(value: bytes, key: bytes) -> tuple[int, int, str]:
    # RFC 8656 §18.13 (from RFC 6156 §4): family (8 bits), reserved, class (3 bits), number, reason
    if len(value) < 4:
        raise _fail("ADDRESS-ERROR-CODE shorter than 4 bytes")
    family, error_class, number = _ADDRESS_ERROR_HEAD.unpack_from(value)
    return family, _check_error_code(error_class & 0x07, number), _decode_text(value[4:], key)


def _encode_address_error_code(value: tuple[int, int, str], key: bytes) -> bytes:
    family, code, reason = value
    return _ADDRESS_ERROR_HEAD.pack(family, *_split_code(code)) + _encode_text(reason, key)


def _decode_unknown_attributes(value: bytes, _key: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise _fail("UNKNOWN-ATTRIBUTES of odd length")
    return struct.unpack(f"!{len(value) // 2}H", value)


def _encode_unknown_attributes(value: tuple[int, ...], _key: bytes) -> bytes:
    return struct.pack(f"!{len(value)}H", *value)


def _fixed(size: int, name: str) -> Callable[[bytes], None]:
    def check(value: bytes) -> None:
        if len(value) != size:
            raise _fail(f"{name} of length {len(value)}, expected {size}")

    return check


def _struct_codec(packer: struct.Struct, name: str) -> tuple[_Decoder, _Encoder]:
    check = _fixed(packer.size, name)

    def decode(value: bytes, _key: bytes) -> int:
        check(value)
        result: int = packer.unpack(value)[0]
        return result

    def encode(value: int, _key: bytes) -> bytes:
        return packer.pack(value)

    return decode, encode


def _bytes_codec(name: str, sizes: range | None = None) -> tuple[_Decoder, _Encoder]:
    def decode(value: bytes, _key: bytes) -> bytes:
        if sizes is not None and len(value) not in sizes:
            raise _fail(f"{name} of length {len(value)}")
        return value

    def encode(value: bytes, _key: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"{name} needs bytes, got {type(value).__name__}")
        if sizes is not None and len(value) not in sizes:
            raise ValueError(f"{name} of length {len(value)}")
        return bytes(value)

    return decode, encode


def _decode_even_port(value: bytes, _key: bytes) -> bool:
    if len(value) != 1:
        raise _fail(f"EVEN-PORT of length {len(value)}")
    return bool(value[0] & 0x80)


def _encode_even_port(value: bool, _key: bytes) -> bytes:
    return b"\x80" if value else b"\x00"


def _decode_flag(value: bytes, _key: bytes) -> bool:
    if value:
        raise _fail(f"zero-length attribute of length {len(value)}")
    return True


def _encode_flag(_value: bool, _key: bytes) -> bytes:
    return b""


def _decode_algorithm_list(value: bytes) -> list[tuple[int, bytes]]:
    # RFC 8489 §14.11/14.12: algorithm (16), parameters length (16), parameters padded to 4 bytes
    algorithms = []
    pos, end = 0, len(value)
    while pos < end:
        if pos + 4 > end:
            raise _fail("truncated password algorithm")
        algorithm, params_len = _TYPE_LENGTH.unpack_from(value, pos)
        params_end = pos + 4 + params_len
        if params_end > end:
            raise _fail("password algorithm parameters overrun")
        algorithms.append((algorithm, value[pos + 4 : params_end]))
        pos = pos + 4 + _pad_len(params_len)
    return algorithms


def _decode_password_algorithm(value: bytes, _key: bytes) -> tuple[int, bytes]:
    algorithms = _decode_algorithm_list(value)
    if len(algorithms) != 1:
        raise _fail("PASSWORD-ALGORITHM must hold exactly one algorithm")
    return algorithms[0]


def _encode_algorithm(algorithm: int, params: bytes, pad: bool) -> bytes:
    encoded = _TYPE_LENGTH.pack(algorithm, len(params)) + bytes(params)
    return encoded + _PADDING[len(params) % 4] if pad else encoded


def _encode_password_algorithm(value: tuple[int, bytes], _key: bytes) -> bytes:
    algorithm, params = value
    return _encode_algorithm(algorithm, params, pad=False)


def _decode_password_algorithms(value: bytes, _key: bytes) -> tuple[tuple[int, bytes], ...]:
    return tuple(_decode_algorithm_list(value))


def _encode_password_algorithms(value: tuple[tuple[int, bytes], ...], _key: bytes) -> bytes:
    return b"".join(_encode_algorithm(algorithm, params, pad=True) for algorithm, params in value)


_U32_CODEC = _struct_codec(_U32, "32-bit attribute")
_U64_CODEC = _struct_codec(_U64, "64-bit attribute")
_U16_TOP_CODEC = _struct_codec(_U16_PAD2, "16-bit attribute")
_U8_TOP_CODEC = _struct_codec(_U8_PAD3, "8-bit attribute")
_ADDRESS_CODEC = (_decode_address, _encode_address)
_XOR_ADDRESS_CODEC = (_decode_xor_address, _encode_xor_address)
_TEXT_CODEC = (_decode_text, _encode_text)
_FLAG_CODEC = (_decode_flag, _encode_flag)

_CODECS: dict[int, tuple[_Decoder, _Encoder]] = {
    Attr.MAPPED_ADDRESS: _ADDRESS_CODEC,
    Attr.RESPONSE_ADDRESS: _ADDRESS_CODEC,
    Attr.SOURCE_ADDRESS: _ADDRESS_CODEC,
    Attr.CHANGED_ADDRESS: _ADDRESS_CODEC,
    Attr.REFLECTED_FROM: _ADDRESS_CODEC,
    Attr.ALTERNATE_SERVER: _ADDRESS_CODEC,
    Attr.RESPONSE_ORIGIN: _ADDRESS_CODEC,
    Attr.OTHER_ADDRESS: _ADDRESS_CODEC,
    Attr.XOR_MAPPED_ADDRESS: _XOR_ADDRESS_CODEC,
    Attr.XOR_MAPPED_ADDRESS_OLD: _XOR_ADDRESS_CODEC,
    Attr.XOR_PEER_ADDRESS: _XOR_ADDRESS_CODEC,
    Attr.XOR_RELAYED_ADDRESS: _XOR_ADDRESS_CODEC,
    Attr.USERNAME: _TEXT_CODEC,
    Attr.PASSWORD: _TEXT_CODEC,
    Attr.REALM: _TEXT_CODEC,
    Attr.NONCE: _TEXT_CODEC,
    Attr.SOFTWARE: _TEXT_CODEC,
    Attr.ALTERNATE_DOMAIN: _TEXT_CODEC,
    Attr.ERROR_CODE: (_decode_error_code, _encode_error_code),
    Attr.ADDRESS_ERROR_CODE: (_decode_address_error_code, _encode_address_error_code),
    Attr.ADDRESS_ERROR_CODE_OLD: (_decode_address_error_code, _encode_address_error_code),
    Attr.UNKNOWN_ATTRIBUTES: (_decode_unknown_attributes, _encode_unknown_attributes),
    Attr.LIFETIME: _U32_CODEC,
    Attr.BANDWIDTH: _U32_CODEC,
    Attr.PRIORITY: _U32_CODEC,
    Attr.CHANGE_REQUEST: _U32_CODEC,
    Attr.CONNECTION_ID: _U32_CODEC,
    Attr.FINGERPRINT: _U32_CODEC,
    Attr.CHANNEL_NUMBER: _U16_TOP_CODEC,
    Attr.RESPONSE_PORT: _U16_TOP_CODEC,
    Attr.REQUESTED_TRANSPORT: _U8_TOP_CODEC,
    Attr.REQUESTED_ADDRESS_FAMILY: _U8_TOP_CODEC,
    Attr.ADDITIONAL_ADDRESS_FAMILY: _U8_TOP_CODEC,
    Attr.ADDITIONAL_ADDRESS_FAMILY_OLD: _U8_TOP_CODEC,
    Attr.EVEN_PORT: (_decode_even_port, _encode_even_port),
    Attr.DONT_FRAGMENT: _FLAG_CODEC,
    Attr.USE_CANDIDATE: _FLAG_CODEC,
    Attr.RESERVATION_TOKEN: _bytes_codec("RESERVATION-TOKEN", range(8, 9)),
    Attr.ICE_CONTROLLED: _U64_CODEC,
    Attr.ICE_CONTROLLING: _U64_CODEC,
    Attr.USERHASH: _bytes_codec("USERHASH", range(32, 33)),
    Attr.DATA: _bytes_codec("DATA"),
    Attr.PADDING: _bytes_codec("PADDING"),
    Attr.MESSAGE_INTEGRITY: _bytes_codec("MESSAGE-INTEGRITY", range(MI_SIZE, MI_SIZE + 1)),
    Attr.MESSAGE_INTEGRITY_SHA256: _bytes_codec("MESSAGE-INTEGRITY-SHA256", range(16, 33, 4)),
    Attr.PASSWORD_ALGORITHM: (_decode_password_algorithm, _encode_password_algorithm),
    Attr.PASSWORD_ALGORITHMS: (_decode_password_algorithms, _encode_password_algorithms),
}
_DECODERS: dict[int, _Decoder] = {attr: codec[0] for attr, codec in _CODECS.items()}
_ENCODERS: dict[int, _Encoder] = {attr: codec[1] for attr, codec in _CODECS.items()}
_RAW_DECODE, _RAW_ENCODE = _bytes_codec("attribute")
# Appended by encode_message itself, so never copied from msg.attributes.
_TRAILER_ATTRS = frozenset((Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT))

