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

from pyturn.core.stats import BAD_INTEGRITY, EXPIRED_CREDENTIALS, MD5_ONLY_USER, STALE_NONCE, UNKNOWN_USER
from pyturn.errors import TurnError
from pyturn.wire.integrity import has_integrity, verify_message_integrity
from pyturn.wire.message import Attr, Message, PasswordAlgorithm

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

An object that has ``keys_at`` is asked through it even when it is also callable. Two optional methods add the
RFC 8489 features (the core looks for them with getattr, so any source may have them):

* ``sha256_keys_at(username, realm, now) -> KeyCandidates``: the SHA-256 keys (RFC 8489 §18.5.1.2); a source
  without it serves MD5 only;
* ``user_for_hash(userhash) -> (username, realm) | None``: USERHASH (RFC 8489 §14.4) back to the user.

``serves_sha256`` and ``finds_userhash`` (bool attributes) tell the core what to offer in its challenges.
"""


@runtime_checkable
class Sha256UserLookup(Protocol):
    """A user source that can serve SHA-256 long-term keys (RFC 8489 §18.5.1.2)."""

    serves_sha256: bool

    def sha256_keys_at(self, username: str, realm: str, now: float) -> KeyCandidates: ...


@runtime_checkable
class UserhashLookup(Protocol):
    """A user source that finds its users by USERHASH (RFC 8489 §14.4)."""

    finds_userhash: bool

    def user_for_hash(self, userhash: bytes) -> tuple[str, str] | None: ...


# RFC 8489 §9.2: the nonce cookie and the STUN Security Features (§18.1), bit 0 the most significant of 24.
NONCE_COOKIE = "obMatJos2"
FEATURE_PASSWORD_ALGORITHMS = 1 << 23
FEATURE_USERNAME_ANONYMITY = 1 << 22
_COOKIE_LENGTH = len(NONCE_COOKIE) + 4  # "the complete 13-character string" (RFC 8489 §9.2)
# What a challenge with the cookie offers, in the order of preference (RFC 8489 §9.2.4, §14.11). Neither algorithm
# has parameters (§18.5.1). The same list goes with every cookie nonce, so a stateless server knows what it sent.
OFFERED_ALGORITHMS: tuple[tuple[int, bytes], ...] = ((PasswordAlgorithm.SHA256, b""), (PasswordAlgorithm.MD5, b""))
_SUPPORTED_ALGORITHMS = frozenset((PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256))


def security_features(users: object) -> int:
    """The STUN Security Features a challenge offers for this user source (0: no cookie, RFC 5389 behaviour).

    Password algorithms only when the source can serve SHA-256 (a source of htdigest lines alone cannot, so it is
    challenged exactly as before); Username anonymity only when every user of the source can be found by USERHASH
    (shared-secret usernames carry their expiry and cannot be indexed ahead, docs/compatibility.md "RFC 8489
    authentication").
    """
    if not getattr(users, "serves_sha256", False):
        return 0
    features = FEATURE_PASSWORD_ALGORITHMS
    if getattr(users, "finds_userhash", False):
        features |= FEATURE_USERNAME_ANONYMITY
    return features


def nonce_features(nonce: str) -> int:
    """The Security Features of a nonce with the cookie (0 without); trust it only once check() accepted the nonce
    (the MAC covers the features)."""
    if len(nonce) <= _COOKIE_LENGTH or not nonce.startswith(NONCE_COOKIE):
        return 0
    try:
        raw = base64.b64decode(nonce[len(NONCE_COOKIE) : _COOKIE_LENGTH].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return 0
    return int.from_bytes(raw, "big") if len(raw) == 3 else 0

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

    def issue(self, now: float, *, redirected: bool = False, features: int = 0) -> str:
        """A nonce; with ``features`` it starts with the RFC 8489 §9.2 cookie, and the MAC covers the features, so
        a cookie cut off or altered on the way makes the nonce stale (§9.2.1 bid-down attack prevention)."""
        stamp = _TIMESTAMP.pack(int(now) & 0xFFFFFFFF)
        signed = _REDIRECTED_DOMAIN + stamp if redirected else stamp
        cookie = ""
        if features:
            feature_bytes = features.to_bytes(3, "big")
            signed = feature_bytes + signed
            cookie = NONCE_COOKIE + base64.b64encode(feature_bytes).decode("ascii")
        return cookie + base64.urlsafe_b64encode(stamp + self._mac(self._secrets[0], signed)).decode("ascii")

    def check(self, nonce: str, now: float, features: int | None = None) -> NonceState | None:
        """The state of a nonce one of the secrets signed less than `lifetime` seconds ago, else None.

        A nonce from another process (without a shared NonceSecretFile), a forged one, or an expired one is not
        fresh: all three are answered with 438 and a new nonce (RFC 8489 §9.2.4), so a client recovers after a
        server restart.
        """
        if features is None:
            features = nonce_features(nonce)
        prefix = features.to_bytes(3, "big") if features else b""
        if features:
            nonce = nonce[_COOKIE_LENGTH:]
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
            if hmac.compare_digest(mac, self._mac(secret, prefix + stamp)):
                return NonceState.FRESH
            if hmac.compare_digest(mac, self._mac(secret, prefix + _REDIRECTED_DOMAIN + stamp)):
                return NonceState.REDIRECTED
        return None

    def is_fresh(self, nonce: str, now: float, features: int | None = None) -> bool:
        """True for a nonce one of the secrets signed less than `lifetime` seconds ago (see check()); `features`,
        when the caller has them, are nonce_features(nonce)."""
        return self.check(nonce, now, features) is not None


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    realm: str
    key: bytes
    # RFC 8489 §18.5: how `key` was derived. An allocation keeps it: its later requests must use the same key.
    algorithm: int = PasswordAlgorithm.MD5


class Challenge(TurnError):
    """A TurnError whose response must carry REALM and a fresh NONCE (401, 438); `failure` names the cause for
    the metrics and the adapter's log (one of pyturn.core.stats.AUTH_FAILURE_REASONS, "" for a first request without
    credentials); it never goes on the wire."""

    def __init__(self, code: int, reason: str, failure: str = "") -> None:
        super().__init__(code, reason)
        self.failure = failure


def password_algorithm(request: Message, features: int) -> int:
    """The algorithm the request's key is derived with; TurnError(400) for a request §9.2.4 refuses.

    RFC 8489 §9.2.4, for a nonce whose cookie has the Password algorithms bit: neither PASSWORD-ALGORITHMS nor
    PASSWORD-ALGORITHM -> MD5 (RFC 5389 clients); otherwise both must be there, PASSWORD-ALGORITHMS exactly as
    offered and PASSWORD-ALGORITHM one of its entries, or 400 (a list cut short on the way is a bid-down attempt).
    A nonce without the cookie offered nothing: PASSWORD-ALGORITHM, if present, must still name a supported
    algorithm without parameters (§18.5.1), or 400.
    """
    chosen = request.get(Attr.PASSWORD_ALGORITHM)
    listed = request.get(Attr.PASSWORD_ALGORITHMS)
    if features & FEATURE_PASSWORD_ALGORITHMS:
        if chosen is None and listed is None:
            return PasswordAlgorithm.MD5
        if chosen is None or listed != OFFERED_ALGORITHMS or chosen not in listed:
            raise TurnError(400, "Bad Request")
    if chosen is None:
        return PasswordAlgorithm.MD5
    algorithm, parameters = chosen
    if algorithm not in _SUPPORTED_ALGORITHMS or parameters:
        raise TurnError(400, "Bad Request")
    return int(algorithm)


def _user_of_hash(request: Message, lookup: UserLookup, realm: str) -> str | None:
    """The user whose USERHASH (RFC 8489 §14.4) the request carries; None for an unknown hash."""
    find = getattr(lookup, "user_for_hash", None)
    found: tuple[str, str] | None = find(request.get(Attr.USERHASH)) if find is not None else None
    if found is None or found[1] != realm:
        return None
    return found[0]


def _candidates(lookup: UserLookup, username: str, realm: str, now: float, algorithm: int) -> KeyCandidates:
    if algorithm == PasswordAlgorithm.SHA256:
        sha256_keys_at = getattr(lookup, "sha256_keys_at", None)
        return sha256_keys_at(username, realm, now) if sha256_keys_at is not None else KeyCandidates()
    # getattr, not isinstance(lookup, TimedUserLookup): a runtime Protocol check costs ~17 µs per request.
    keys_at = getattr(lookup, "keys_at", None)
    if keys_at is not None:
        candidates: KeyCandidates = keys_at(username, realm, now)
        return candidates
    key = cast(PlainUserLookup, lookup)(username, realm)
    return KeyCandidates((key,)) if key is not None else KeyCandidates()


def authenticate(
    request: Message, *, realm: str, nonces: NonceSigner, lookup: UserLookup, now: float
) -> Credentials:
    """Checks in reTurn's order (docs/compatibility.md "Authentication"), with RFC 8489 §9.2.4's password
    algorithms and USERHASH; raises Challenge or TurnError, returns the credentials."""
    # RFC 8489 §9.2.4 step 1: no MESSAGE-INTEGRITY(-SHA256) -> 401 with REALM and NONCE.
    if not has_integrity(request):
        raise Challenge(401, "Unauthorized")
    # Step 2: USERNAME or USERHASH, REALM and NONCE must be there -> else 400.
    username: str | None = request.get(Attr.USERNAME)
    if username is None and not request.has(Attr.USERHASH):
        raise TurnError(400, "Bad Request")
    request_realm = request.get(Attr.REALM)
    if request_realm is None:
        raise TurnError(400, "Bad Request")
    nonce = request.get(Attr.NONCE)
    if nonce is None:
        raise TurnError(400, "Bad Request")
    # The nonce is checked before the user and the HMAC, as reTurn does: a stale nonce gets 438 even
    # with a wrong password (RFC 8489 §9.2.4 step 3 allows either order). It also comes before the password
    # algorithm checks: only a nonce this server signed tells truly what its challenge offered.
    features = nonce_features(nonce)
    if not nonces.is_fresh(nonce, now, features):
        raise Challenge(438, "Stale Nonce", STALE_NONCE)
    algorithm = password_algorithm(request, features)
    if username is None:
        username = _user_of_hash(request, lookup, request_realm)
        if username is None:
            raise Challenge(401, "Unauthorized", UNKNOWN_USER)
    candidates = _candidates(lookup, username, request_realm, now, algorithm)
    if not candidates.keys and algorithm == PasswordAlgorithm.SHA256:
        # A user with an MD5 key only (an htdigest line): known, but not with this algorithm
        # (docs/compatibility.md "RFC 8489 authentication").
        md5 = _candidates(lookup, username, request_realm, now, PasswordAlgorithm.MD5)
        raise Challenge(401, "Unauthorized", MD5_ONLY_USER if md5.keys else UNKNOWN_USER)
    for key in candidates.keys:
        if verify_message_integrity(request, key):
            if candidates.expired:
                # The right password for a username whose EXPIRY has passed (draft-uberti-behave-turn-rest-00
                # §2.2): refused like a wrong one, but the log can tell the operator why.
                raise Challenge(401, "Unauthorized", EXPIRED)
            return Credentials(username, request_realm, key, algorithm)
    raise Challenge(401, "Unauthorized", BAD_INTEGRITY if candidates.keys else UNKNOWN_USER)
