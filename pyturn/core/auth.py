"""Long-term credentials (RFC 8489 §9.2, RFC 8656 §5) with stateless nonces, in reTurn's check order.

Pure: the secret and the current time are passed in. Nothing is stored per unauthenticated request.
"""

from __future__ import annotations

import base64
import enum
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Protocol, cast, runtime_checkable

from pyturn.core.stats import BAD_INTEGRITY, EXPIRED_CREDENTIALS, STALE_NONCE, UNKNOWN_USER
from pyturn.errors import TurnError
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Attr, Message

PlainUserLookup = Callable[[str, str], "bytes | None"]
"""(username, realm) -> the 16-byte long-term key (HA1), or None for an unknown user."""

EXPIRED = EXPIRED_CREDENTIALS
"""Challenge.failure (and AuthFailed.reason) of credentials that verify but whose time is over."""


@dataclass(frozen=True, slots=True)
class KeyCandidates:
    """What a TimedUserLookup knows about a username: the keys to try, in order, and whether it has expired.

    No keys = unknown user. Several keys = several secrets in force (rotation): the first key whose
    MESSAGE-INTEGRITY verifies is the user's. ``expired`` refuses the user even when a key verifies.
    """

    keys: tuple[bytes, ...] = ()
    expired: bool = False


@runtime_checkable
class TimedUserLookup(Protocol):
    """A user source whose answer depends on the time (shared-secret credentials carry their expiry).

    The core passes the ``now`` it was given, so the lookup reads no clock and stays testable with a fake one.
    """

    def keys_at(self, username: str, realm: str, now: float) -> KeyCandidates: ...


UserLookup = PlainUserLookup | TimedUserLookup
"""What the core accepts: a plain (username, realm) -> key callable, or an object with ``keys_at``.

An object that has ``keys_at`` is asked through it even when it is also callable.
"""

_TIMESTAMP = struct.Struct("!I")
_MAC_BYTES = 6  # 48 bits: a nonce only saves a round trip, MESSAGE-INTEGRITY is what authenticates


class NonceState(enum.Enum):
    """What a fresh nonce says besides its age (NonceSigner.check)."""

    FRESH = "fresh"
    REDIRECTED = "redirected"  # issued with a 300 redirect: the client came from a peer instance (pyturn.core.redirect)


_REDIRECTED_DOMAIN = b"redirected"  # MAC domain of the nonces sent with a 300: same size, unforgeable flag


class NonceSigner:
    """Issues and checks stateless nonces: base64(timestamp || truncated HMAC(secret, timestamp)).

    16 characters on the wire keeps 401/438 answers small (amplification, docs/security.md "Amplification").
    Nonces are not bound to the client's address or port (a NAT rebinding must not turn into a hard failure).

    Several secrets: the first signs, every one is accepted (NonceSecretFile rotation, pyturn.files.noncesecret).
    A nonce sent with a 300 redirect is MACed in another domain, so the instance the client is sent to can tell,
    without any state, that it was redirected (the loop guard of pyturn.core.redirect).
    """

    __slots__ = ("_lifetime", "_secrets")

    def __init__(self, secret: bytes | Sequence[bytes], lifetime: float) -> None:
        self._secrets: tuple[bytes, ...] = (secret,) if isinstance(secret, bytes) else tuple(secret)
        if not self._secrets:
            raise ValueError("a NonceSigner needs at least one secret")
        self._lifetime = lifetime

    def set_secrets(self, secrets: Sequence[bytes]) -> None:
        """Swap the secrets (NonceSecretFile reloaded); nonces signed by a dropped secret become stale (438)."""
        if secrets:
            self._secrets = tuple(secrets)

    @staticmethod
    def _mac(secret: bytes, stamp: bytes) -> bytes:
        return hmac.new(secret, stamp, sha256).digest()[:_MAC_BYTES]

    def issue(self, now: float, *, redirected: bool = False) -> str:
        stamp = _TIMESTAMP.pack(int(now) & 0xFFFFFFFF)
        signed = _REDIRECTED_DOMAIN + stamp if redirected else stamp
        return base64.urlsafe_b64encode(stamp + self._mac(self._secrets[0], signed)).decode("ascii")

    def check(self, nonce: str, now: float) -> NonceState | None:
        """The state of a nonce one of the secrets signed less than `lifetime` seconds ago, else None.

        A nonce from another process (without a shared NonceSecretFile), a forged one, or an expired one is not
        fresh: all three are answered with 438 and a new nonce (RFC 8489 §9.2.4), so a client recovers after a
        server restart.
        """
        try:
            raw = base64.b64decode(nonce.encode("ascii", "strict"), altchars=b"-_", validate=True)
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) != _TIMESTAMP.size + _MAC_BYTES:
            return None
        stamp, mac = raw[: _TIMESTAMP.size], raw[_TIMESTAMP.size :]
        issued: int = _TIMESTAMP.unpack(stamp)[0]
        if (int(now) - issued) & 0xFFFFFFFF > self._lifetime:
            return None
        for secret in self._secrets:
            if hmac.compare_digest(mac, self._mac(secret, stamp)):
                return NonceState.FRESH
            if hmac.compare_digest(mac, self._mac(secret, _REDIRECTED_DOMAIN + stamp)):
                return NonceState.REDIRECTED
        return None

    def is_fresh(self, nonce: str, now: float) -> bool:
        """True for a nonce one of the secrets signed less than `lifetime` seconds ago (see check())."""
        return self.check(nonce, now) is not None


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    realm: str
    key: bytes


class Challenge(TurnError):
    """A TurnError whose response must carry REALM and a fresh NONCE (401, 438); `failure` names the cause for
    the metrics and the adapter's log (one of pyturn.core.stats.AUTH_FAILURE_REASONS, "" for a first request without
    credentials); it never goes on the wire."""

    def __init__(self, code: int, reason: str, failure: str = "") -> None:
        super().__init__(code, reason)
        self.failure = failure


def authenticate(
    request: Message, *, realm: str, nonces: NonceSigner, lookup: UserLookup, now: float
) -> Credentials:
    """Checks in reTurn's order (docs/compatibility.md "Authentication"); raises Challenge or TurnError, returns the
    credentials."""
    # RFC 8489 §9.2.4 step 1: no MESSAGE-INTEGRITY -> 401 with REALM and NONCE.
    if request.integrity_offset is None:
        raise Challenge(401, "Unauthorized")
    username = request.get(Attr.USERNAME)
    if username is None:
        raise TurnError(400, "Bad Request")
    request_realm = request.get(Attr.REALM)
    if request_realm is None:
        raise TurnError(400, "Bad Request")
    nonce = request.get(Attr.NONCE)
    if nonce is None:
        raise TurnError(400, "Bad Request")
    # The nonce is checked before the user and the HMAC, as reTurn does: a stale nonce gets 438 even
    # with a wrong password (RFC 8489 §9.2.4 step 3 allows either order).
    if not nonces.is_fresh(nonce, now):
        raise Challenge(438, "Stale Nonce", STALE_NONCE)
    # getattr, not isinstance(lookup, TimedUserLookup): a runtime Protocol check costs ~17 µs per request.
    keys_at = getattr(lookup, "keys_at", None)
    if keys_at is not None:
        candidates: KeyCandidates = keys_at(username, request_realm, now)
        for key in candidates.keys:
            if verify_integrity(request, key):
                if candidates.expired:
                    # The right password for a username whose EXPIRY has passed (draft-uberti-behave-turn-rest-00
                    # §2.2): refused like a wrong one, but the log can tell the operator why.
                    raise Challenge(401, "Unauthorized", EXPIRED)
                return Credentials(username, request_realm, key)
        raise Challenge(401, "Unauthorized", BAD_INTEGRITY if candidates.keys else UNKNOWN_USER)
    plain_key = cast(PlainUserLookup, lookup)(username, request_realm)
    if plain_key is None:
        raise Challenge(401, "Unauthorized", UNKNOWN_USER)
    if not verify_integrity(request, plain_key):
        raise Challenge(401, "Unauthorized", BAD_INTEGRITY)
    return Credentials(username, request_realm, plain_key)
