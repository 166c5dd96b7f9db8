"""Send and Data indications in their fixed layouts (RFC 8656 §11), read and written without the general codec for
the adapters' relay fast path (docs/architecture.md "Adapter contract").

pyturn.wire.codec stays the reference: parse_send() recognises only a strict subset of what the codec accepts and
returns None for everything else, which then goes to the codec and the core.
"""

from __future__ import annotations

import struct
import zlib

from pyturn.wire.attributes import _encode_xor_address
from pyturn.wire.message import _COOKIE_BYTES, _TYPE_LENGTH, FINGERPRINT_XOR, MAGIC_COOKIE, Address

SEND_INDICATION_PREFIX = b"\x00\x16"
"""The first two bytes of a Send indication (method 0x006, class indication: RFC 8656 §18, RFC 8489 §5)."""
DATA_INDICATION = 0x0017
DATA = 0x0013
_XOR_PEER_ADDRESS = 0x0012
_DONT_FRAGMENT = 0x001A
_FINGERPRINT = 0x8028
PEER_ATTRIBUTE_SIZE = 12  # XOR-PEER-ADDRESS of an IPv4 peer: type, length 8, reserved, family 1, port, address
_IPV4_FAMILY = b"\x00\x01"
_CRC = struct.Struct("!I")

DATA_INDICATION_HEAD = struct.Struct("!HHI4sQ12sHH")
"""Everything of a Data indication before its payload: message type, length, magic cookie, transaction id (4-byte
prefix and 8-byte counter), the XOR-PEER-ADDRESS attribute of peer_attribute() and the DATA attribute header.
Pack it with data_indication_length(n) and follow it with the payload and INDICATION_PADDING[n % 4]."""
INDICATION_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
"""Zero bytes padding a DATA value of length n to a multiple of 4: INDICATION_PADDING[n % 4] (RFC 8489 §14)."""
_DATA_OVERHEAD = PEER_ATTRIBUTE_SIZE + 4


def data_indication_length(payload: int) -> int:
    """The STUN message length field of a Data indication carrying `payload` bytes (attributes, padding included)."""
    return _DATA_OVERHEAD + payload + (-payload & 3)


def peer_attribute(peer: Address) -> bytes | None:
    """The encoded XOR-PEER-ADDRESS attribute of an IPv4 peer, or None for IPv6.

    An IPv4 address is XORed with the magic cookie only (RFC 8489 §14.2), so the encoding is the same in every
    message: a Data indication template and a Send indication's lookup key. IPv6 is XORed with the transaction id.
    """
    if ":" in peer[0]:
        return None
    return _TYPE_LENGTH.pack(_XOR_PEER_ADDRESS, 8) + _encode_xor_address(peer, _COOKIE_BYTES)


def parse_send(data: bytes) -> tuple[bytes, int, int, bool] | None:
    """(XOR-PEER-ADDRESS attribute, payload start, payload end, DONT-FRAGMENT present) of a Send indication.

    The layout recognised: a header with the magic cookie and a length matching the datagram, then exactly one
    IPv4 XOR-PEER-ADDRESS and one DATA in either order, at most one DONT-FRAGMENT, and an optional FINGERPRINT
    last that must match (RFC 8489 §14.7). Anything else is None: the caller hands the datagram to the core.
    """
    size = len(data)
    if size < 36 or data[:2] != SEND_INDICATION_PREFIX or data[4:8] != _COOKIE_BYTES:
        return None
    if _TYPE_LENGTH.unpack_from(data)[1] != size - 20:
        return None
    peer = b""
    start = end = -1
    dont_fragment = False
    pos = 20
    unpack = _TYPE_LENGTH.unpack_from
    while pos + 4 <= size:
        kind, length = unpack(data, pos)
        if kind == _XOR_PEER_ADDRESS and length == 8 and not peer and data[pos + 4 : pos + 6] == _IPV4_FAMILY:
            peer = data[pos : pos + PEER_ATTRIBUTE_SIZE]
            pos += PEER_ATTRIBUTE_SIZE
        elif kind == DATA and start < 0:
            start = pos + 4
            end = start + length
            pos = end + (-length & 3)
        elif kind == _DONT_FRAGMENT and length == 0 and not dont_fragment:
            dont_fragment = True
            pos += 4
        elif kind == _FINGERPRINT and length == 4 and pos + 8 == size:
            if _CRC.unpack_from(data, pos + 4)[0] != zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR:
                return None
            pos += 8
        else:
            return None
    if pos != size or not peer or start < 0:
        return None
    return peer, start, end, dont_fragment


__all__ = [
    "DATA_INDICATION",
    "DATA_INDICATION_HEAD",
    "INDICATION_PADDING",
    "MAGIC_COOKIE",
    "PEER_ATTRIBUTE_SIZE",
    "SEND_INDICATION_PREFIX",
    "data_indication_length",
    "parse_send",
    "peer_attribute",
]
