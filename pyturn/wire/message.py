"""STUN messages (RFC 8489, RFC 5389, classic RFC 3489): methods, classes, the attribute registry and the
Message model every layer above builds and reads.

Message.attributes holds (type, value) pairs in wire order; pyturn.wire.codec produces and consumes the value
types listed in pyturn.wire.attributes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

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


class PasswordAlgorithm(IntEnum):
    """RFC 8489 §18.5: the STUN Password Algorithms registry (PASSWORD-ALGORITHM, PASSWORD-ALGORITHMS)."""

    MD5 = 0x0001
    SHA256 = 0x0002


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
    # draft-ietf-tram-turnbis codepoints of ADDITIONAL-ADDRESS-FAMILY and ADDRESS-ERROR-CODE, before RFC 8656 gave
    # them 0x8000 and 0x8001; coturn 4.6 (turnutils_uclient -Z) still sends them.
    ADDITIONAL_ADDRESS_FAMILY_OLD = 0x8032
    ADDRESS_ERROR_CODE_OLD = 0x8033
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


