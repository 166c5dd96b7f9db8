"""STUN wire codec (RFC 8489, RFC 5389, classic RFC 3489) plus TURN's ChannelData and stream framing.

Pure: no sockets, no clock. The decoder raises only StunDecodeError, whatever the bytes.

Message.attributes holds (type, value) pairs in wire order; decode_message produces and encode_message
consumes the same value types:

  address attributes (MAPPED/XOR-MAPPED/XOR-PEER/XOR-RELAYED/ALTERNATE-SERVER/...)   Address (host, port)
  USERNAME, PASSWORD, REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN    str (utf-8, surrogateescape)
  ERROR-CODE                                                     (code, reason)
  ADDRESS-ERROR-CODE                                             (family, code, reason)
  UNKNOWN-ATTRIBUTES                                             tuple[int, ...]
  LIFETIME, BANDWIDTH, PRIORITY, CHANGE-REQUEST, CONNECTION-ID,
  FINGERPRINT, ICE-CONTROLLED, ICE-CONTROLLING                   int
  CHANNEL-NUMBER, RESPONSE-PORT (top 16 bits); REQUESTED-TRANSPORT,
  REQUESTED-/ADDITIONAL-ADDRESS-FAMILY (top byte)                int
  EVEN-PORT                                                      bool (the R bit)
  DONT-FRAGMENT, USE-CANDIDATE                                   True
  RESERVATION-TOKEN, USERHASH, DATA, PADDING, MESSAGE-INTEGRITY(-SHA256)   bytes
  PASSWORD-ALGORITHM                                             (algorithm, params)
  PASSWORD-ALGORITHMS                                            tuple[(algorithm, params), ...]
  any other type                                                 bytes, as received
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any

from pyturn.errors import StunDecodeError, StunEncodeError

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20

Address = tuple[str, int]
"""(host, port) with the host as a normalised IP string: '192.0.2.1' or '2001:db8::1'."""


class Method(IntEnum):
    BINDING = 0x001
    SHARED_SECRET = 0x002
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class MessageClass(IntEnum):
    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Attr(IntEnum):
    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002
    CHANGE_REQUEST = 0x0003
    SOURCE_ADDRESS = 0x0004
    CHANGED_ADDRESS = 0x0005
    USERNAME = 0x0006
    PASSWORD = 0x0007
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    BANDWIDTH = 0x0010
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    CONNECTION_ID = 0x002A
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    XOR_MAPPED_ADDRESS_OLD = 0x8020
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
MAX_TEXT_BYTES = 763  # RFC 8489 §14.3/14.8/14.9/14.10: REALM, NONCE, SOFTWARE, reason phrases < 764 bytes
MAX_UNKNOWN_REQUIRED = 16
MI_SIZE = 20  # RFC 8489 §14.5
MI_SHA256_SIZE = 32  # RFC 8489 §14.6 (what we send; 16..32 accepted)
FINGERPRINT_ATTR_SIZE = 8

_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_PORT_XOR = MAGIC_COOKIE >> 16
_HEADER = struct.Struct("!HHI12s")
_CLASSIC_HEADER = struct.Struct("!HH16s")
_TYPE_LENGTH = struct.Struct("!HH")  # message header start and attribute header share this shape
_LENGTH = struct.Struct("!H")
_U8_PAD3 = struct.Struct("!B3x")
_U16_PAD2 = struct.Struct("!H2x")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDRESS_HEAD = struct.Struct("!xBH")
_ERROR_HEAD = struct.Struct("!2xBB")
_ADDRESS_ERROR_HEAD = struct.Struct("!BxBB")
_MI_HEADER = _TYPE_LENGTH.pack(0x0008, MI_SIZE)
_MI_SHA256_HEADER = _TYPE_LENGTH.pack(0x001C, MI_SHA256_SIZE)
_FINGERPRINT_HEADER = _TYPE_LENGTH.pack(0x8028, 4)
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by length % 4

_CLASSES = tuple(MessageClass)
_METHODS = {int(m): m for m in Method}
_KNOWN_ATTRS = frozenset(int(a) for a in Attr)


def _pad_len(length: int) -> int:
    return (length + 3) & ~3


def message_type(method: int, msg_class: int) -> int:
    """The 14-bit message type: method bits M0-M11 interleaved with class bits C0, C1 (RFC 8489 §5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((msg_class & 1) << 4)
        | ((msg_class & 2) << 7)
    )


def split_message_type(msg_type: int) -> tuple[int, int]:
    """(method, class) from a message type; the inverse of message_type."""
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    msg_class = ((msg_type >> 4) & 1) | ((msg_type >> 7) & 2)
    return method, msg_class


@dataclass(slots=True)
class Message:
    """One STUN message.

    transaction_id is 12 bytes for RFC 5389/8489 messages (magic cookie present) and 16 bytes for
    classic RFC 3489 messages (no cookie: the 16 bytes after the length are the transaction id).
    attributes keeps wire order as (type, decoded value); see the value table in the module docs.
    The decode-only fields describe what decode_message saw.
    """

    method: int
    msg_class: MessageClass
    transaction_id: bytes
    attributes: list[tuple[int, Any]] = field(default_factory=list)
    # --- filled by decode_message only ---
    raw: bytes = b""
    unknown_required: tuple[int, ...] = ()
    # Known attributes whose value did not parse (decode_message(keep_invalid=True) only); they are left out of
    # `attributes`, so a request carrying one is answered 400 instead of being read without it (RFC 8656 §7.2).
    invalid_attributes: tuple[int, ...] = ()
    integrity_offset: int | None = None
    integrity_sha256_offset: int | None = None
    has_fingerprint: bool = False

    @property
    def classic(self) -> bool:
        return len(self.transaction_id) == 16

    def get(self, attr: int, default: Any = None) -> Any:
        """Value of the first occurrence of attr (duplicates: first wins), else default."""
        for attr_type, value in self.attributes:
            if attr_type == attr:
                return value
        return default

    def get_all(self, attr: int) -> list[Any]:
        return [value for attr_type, value in self.attributes if attr_type == attr]

    def has(self, attr: int) -> bool:
        return any(attr_type == attr for attr_type, _ in self.attributes)

    def add(self, attr: int, value: Any) -> Message:
        """Append an attribute; returns self so calls chain."""
        self.attributes.append((attr, value))
        return self


def response_for(request: Message, msg_class: MessageClass) -> Message:
    """An empty response (or indication) to request: same method, same transaction id (RFC 8489 §6.3)."""
    return Message(request.method, msg_class, request.transaction_id)


def error_response(request: Message, code: int, reason: str) -> Message:
    """An error response to request carrying ERROR-CODE (code, reason) (RFC 8489 §6.3.4)."""
    return response_for(request, MessageClass.ERROR).add(Attr.ERROR_CODE, (code, reason))


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


def verify_integrity(msg: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) of a decoded message; False if absent."""
    offset = msg.integrity_offset
    raw = msg.raw
    if offset is None or len(raw) < offset + 4 + MI_SIZE:
        return False
    expected = hmac.digest(key, _with_length(raw, offset, offset + 4 + MI_SIZE), "sha1")
    return hmac.compare_digest(expected, raw[offset + 4 : offset + 4 + MI_SIZE])


def verify_integrity_sha256(msg: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6), possibly truncated to 16..32 bytes."""
    offset = msg.integrity_sha256_offset
    raw = msg.raw
    if offset is None or len(raw) < offset + 4:
        return False
    mac_len = _LENGTH.unpack_from(raw, offset + 2)[0]
    if not 16 <= mac_len <= 32 or len(raw) < offset + 4 + mac_len:
        return False
    expected = hmac.digest(key, _with_length(raw, offset, offset + 4 + mac_len), "sha256")
    return hmac.compare_digest(expected[:mac_len], raw[offset + 4 : offset + 4 + mac_len])


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password), RFC 8489 §9.2.2 (no SASLprep: reTurn does none)."""
    joined = f"{username}:{realm}:{password}".encode("utf-8", "surrogateescape")
    return hashlib.md5(joined, usedforsecurity=False).digest()


# --- ChannelData and stream framing ---------------------------------------------------------------

MIN_CHANNEL = 0x4000  # RFC 8656 §12: the first two bits of ChannelData are 01 (reTurn also takes 10/11)


def encode_channel_data(channel: int, payload: bytes, *, pad: bool = False) -> bytes:
    """ChannelData message (RFC 8656 §12.4); pad=True adds the zero padding required over TCP/TLS."""
    if not MIN_CHANNEL <= channel <= 0xFFFF or len(payload) > 0xFFFF:
        raise StunEncodeError(f"ChannelData channel 0x{channel:x} with {len(payload)} bytes")
    header = _TYPE_LENGTH.pack(channel, len(payload))
    if pad:
        return b"".join((header, payload, _PADDING[len(payload) % 4]))
    return header + payload


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    """(channel, payload) of a ChannelData message; bytes past LENGTH (padding) are ignored."""
    if len(data) < 4:
        raise _fail("ChannelData shorter than its 4-byte header")
    channel, length = _TYPE_LENGTH.unpack_from(data)
    if channel < MIN_CHANNEL:
        raise _fail(f"channel number 0x{channel:04x} is not a ChannelData channel")
    if len(data) < 4 + length:
        raise _fail(f"ChannelData of {len(data)} bytes shorter than its length {length}")
    return channel, bytes(data[4 : 4 + length])


class StreamFramer:
    """Splits a TCP/TLS byte stream into STUN messages and ChannelData frames (RFC 8656 §12.5, RFC 6062).

    channel_padding=True consumes the RFC padding after ChannelData (it is not part of the returned
    frame); False expects none, as reTurn and its client send.
    """

    __slots__ = ("_buffer", "_channel_padding", "_max_frame")

    def __init__(self, *, channel_padding: bool = True, max_frame: int = 65535 + 20) -> None:
        self._channel_padding = channel_padding
        self._max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append data; return every frame now complete, in order. Oversize -> StunDecodeError."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        available = len(buffer)
        pos = 0
        while available - pos >= 4:
            length = (buffer[pos + 2] << 8) | buffer[pos + 3]
            if buffer[pos] & 0xC0 == 0:
                frame_size = total = HEADER_SIZE + length
            else:
                frame_size = total = 4 + length
                if self._channel_padding:
                    total = 4 + _pad_len(length)
            if total > self._max_frame:
                raise _fail(f"stream frame of {total} bytes exceeds {self._max_frame}")
            if available - pos < total:
                break
            frames.append(bytes(buffer[pos : pos + frame_size]))
            pos += total
        if pos:
            del buffer[:pos]
        return frames
