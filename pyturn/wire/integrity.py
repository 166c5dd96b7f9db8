"""MESSAGE-INTEGRITY (RFC 8489 §14.5), MESSAGE-INTEGRITY-SHA256 (§14.6) checks and the long-term key (§9.2.2).
"""

from __future__ import annotations

import hashlib
import hmac

from pyturn.wire.codec import _with_length
from pyturn.wire.message import _LENGTH, MI_SIZE, Message


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

