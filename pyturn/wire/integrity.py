"""MESSAGE-INTEGRITY (RFC 8489 §14.5), MESSAGE-INTEGRITY-SHA256 (§14.6) checks, the long-term keys (§9.2.2,
§18.5.1), USERHASH (§14.4) and the part of OpaqueString (RFC 8265 §4.2) they need: the one copy of each.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

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


def has_integrity(msg: Message) -> bool:
    """Whether the message carries MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 (RFC 8489 §9.2.4, first check)."""
    return msg.integrity_offset is not None or msg.integrity_sha256_offset is not None


def verify_message_integrity(msg: Message, key: bytes) -> bool:
    """RFC 8489 §9.2.4: MESSAGE-INTEGRITY-SHA256 when the message has it, else MESSAGE-INTEGRITY."""
    if msg.integrity_sha256_offset is not None:
        return verify_integrity_sha256(msg, key)
    return verify_integrity(msg, key)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password), RFC 8489 §9.2.2 (no SASLprep: reTurn does none, nor do browsers)."""
    joined = f"{username}:{realm}:{password}".encode("utf-8", "surrogateescape")
    return hashlib.md5(joined, usedforsecurity=False).digest()


# RFC 8265 §4.2 / RFC 8264 §9: code points the FreeformClass disallows, as far as unicodedata can tell them:
# controls, format characters (soft hyphen, zero-width joiners), surrogates (undecodable bytes), private use and
# unassigned code points.
_DISALLOWED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn"))


def opaque_string(text: str) -> str | None:
    """OpaqueString (RFC 8265 §4.2.2): non-ASCII spaces mapped to U+0020, then NFC; None for a string the profile
    rejects (empty, or a disallowed code point; the disallowed set is approximated by Unicode general categories).

    ASCII text without controls comes back unchanged, so every password a browser or a TURN REST service uses
    keeps its meaning.
    """
    if text.isascii():
        if not text or not text.isprintable():
            return None
        return text
    mapped = "".join(" " if unicodedata.category(char) == "Zs" else char for char in text)
    normalized = unicodedata.normalize("NFC", mapped)
    if not normalized or any(unicodedata.category(char) in _DISALLOWED_CATEGORIES for char in normalized):
        return None
    return normalized


def long_term_key_sha256(username: str, realm: str, password: str) -> bytes | None:
    """SHA-256(username ":" OpaqueString(realm) ":" OpaqueString(password)), RFC 8489 §18.5.1.2; None when
    OpaqueString rejects the realm or the password (that user then has the MD5 key only)."""
    prepared_realm = opaque_string(realm)
    prepared_password = opaque_string(password)
    if prepared_realm is None or prepared_password is None:
        return None
    joined = f"{username}:{prepared_realm}:{prepared_password}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(joined).digest()


def userhash(username: str, realm: str) -> bytes | None:
    """USERHASH = SHA-256(OpaqueString(username) ":" OpaqueString(realm)), RFC 8489 §14.4; None when OpaqueString
    rejects either."""
    prepared_username = opaque_string(username)
    prepared_realm = opaque_string(realm)
    if prepared_username is None or prepared_realm is None:
        return None
    return hashlib.sha256(f"{prepared_username}:{prepared_realm}".encode()).digest()
