"""Shared-secret ("TURN REST") credentials: a web service and the TURN server share a secret instead of users.

The scheme of draft-uberti-behave-turn-rest-00 §2.2, as coturn (``use-auth-secret``) implements it:

* username = ``EXPIRY`` or ``EXPIRY<separator>NAME``, EXPIRY the Unix time after which it is refused;
* password = base64(HMAC-SHA1(secret, username));
* the long-term key is then MD5(username ":" realm ":" password) as for any user (RFC 8489 §9.2.2), or its
  SHA-256 counterpart (RFC 8489 §18.5.1.2) when the client chose PASSWORD-ALGORITHM SHA-256.

USERHASH (RFC 8489 §14.4) cannot name such a user: the username changes with every EXPIRY, so no index can be built
ahead, and the core does not offer Username anonymity while shared secrets are in force.

The server never stores these users: it recomputes the password from the username. Several secrets may be in
force at once (rotation): credentials made with any of them are accepted. Pure: the time is an argument and no
clock is read; secrets never appear in reprs, errors or problems.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import cast

from pyturn.core.auth import KeyCandidates, PlainUserLookup, UserLookup
from pyturn.errors import PyturnError
from pyturn.wire.integrity import long_term_key, long_term_key_sha256

__all__ = [
    "DEFAULT_SEPARATOR",
    "SecretFileError",
    "SharedSecrets",
    "UsersAndSecrets",
    "parse_secret_lines",
    "rest_password",
    "rest_username",
    "username_expiry",
]

DEFAULT_SEPARATOR = ":"
_MAX_EXPIRY_DIGITS = 20  # far beyond any real Unix time; keeps a hostile USERNAME from costing a big-int parse


class SecretFileError(PyturnError):
    """A shared-secret file that cannot be used (unreadable, or without a single secret)."""


def _as_bytes(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogateescape")


def rest_username(expiry: int, user: str | None = None, separator: str = DEFAULT_SEPARATOR) -> str:
    """``EXPIRY`` or ``EXPIRY<separator>user``."""
    return f"{int(expiry)}" if not user else f"{int(expiry)}{separator}{user}"


def rest_password(secret: str | bytes, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): what the web service hands out as the TURN password."""
    mac = hmac.new(_as_bytes(secret), username.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def username_expiry(username: str, separator: str = DEFAULT_SEPARATOR) -> int | None:
    """The EXPIRY of a REST username, or None when the username is not of that form.

    The expiry is everything before the first separator (the rest, for instance a Matrix ID, may contain the
    separator again); it must be plain decimal digits.
    """
    head = username.split(separator, 1)[0] if separator else username
    if not head or len(head) > _MAX_EXPIRY_DIGITS or not head.isascii() or not head.isdigit():
        return None
    return int(head)


class SharedSecrets:
    """The secrets in force for one realm; a TimedUserLookup (pyturn.core.auth) for the core.

    ``keys_at`` gives one candidate key per secret for a REST username of ``realm``, flagged expired when its
    EXPIRY is not after the Unix time ``now + unix_offset`` (the core then answers 401 even when a key verifies).

    ``unix_offset``: the core's ``now`` is whatever clock its adapter uses (pyturn's is the event loop's
    monotonic clock), while EXPIRY is a Unix time. The adapter sets the difference (Unix time minus its clock)
    and keeps it current; the lookup itself reads no clock, so a test with a Unix-time fake clock leaves it 0.
    """

    __slots__ = ("_realm", "_secrets", "_separator", "unix_offset")

    def __init__(self, secrets: Iterable[str | bytes], *, realm: str, separator: str = DEFAULT_SEPARATOR,
                 unix_offset: float = 0.0) -> None:
        # Duplicates are dropped (order kept) so a secret listed twice is not tried twice.
        self._secrets = tuple(dict.fromkeys(_as_bytes(secret) for secret in secrets if secret))
        self._realm = realm
        self._separator = separator
        self.unix_offset = unix_offset

    def __len__(self) -> int:
        return len(self._secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    @property
    def realm(self) -> str:
        return self._realm

    @property
    def separator(self) -> str:
        return self._separator

    def with_secrets(self, secrets: Iterable[str | bytes]) -> SharedSecrets:
        return SharedSecrets(secrets, realm=self._realm, separator=self._separator, unix_offset=self.unix_offset)

    def keys_at(self, username: str, realm: str, now: float) -> KeyCandidates:
        if realm != self._realm or not self._secrets:
            return KeyCandidates()
        expiry = username_expiry(username, self._separator)
        if expiry is None:
            return KeyCandidates()
        keys = tuple(long_term_key(username, realm, rest_password(secret, username)) for secret in self._secrets)
        # draft-uberti-behave-turn-rest-00 §2.2: the credentials are valid until EXPIRY; at or after it, refused.
        return KeyCandidates(keys, expired=expiry <= now + self.unix_offset)

    @property
    def serves_sha256(self) -> bool:
        return bool(self._secrets)

    finds_userhash = False  # usernames carry their expiry: nothing to index ahead

    def sha256_keys_at(self, username: str, realm: str, now: float) -> KeyCandidates:
        """As keys_at, with the SHA-256 keys (the password is base64, so OpaqueString leaves it as it is)."""
        md5 = self.keys_at(username, realm, now)
        if not md5.keys:
            return md5
        keys = tuple(
            key
            for secret in self._secrets
            if (key := long_term_key_sha256(username, realm, rest_password(secret, username))) is not None
        )
        return KeyCandidates(keys, expired=md5.expired)

    def __repr__(self) -> str:
        return f"SharedSecrets({len(self._secrets)} secrets, realm={self._realm!r})"  # never the secrets


class UsersAndSecrets:
    """A user file (or any other lookup) first, then the shared secrets: a username the file knows uses the file."""

    __slots__ = ("secrets", "users")

    def __init__(self, users: UserLookup | None, secrets: SharedSecrets) -> None:
        self.users = users
        self.secrets = secrets

    def keys_at(self, username: str, realm: str, now: float) -> KeyCandidates:
        users = self.users
        timed = getattr(users, "keys_at", None)  # not isinstance: a runtime Protocol check is slow
        if timed is not None:
            known: KeyCandidates = timed(username, realm, now)
            if known.keys:
                return known
        elif users is not None:
            key = cast(PlainUserLookup, users)(username, realm)
            if key is not None:
                return KeyCandidates((key,))
        return self.secrets.keys_at(username, realm, now)

    @property
    def serves_sha256(self) -> bool:
        return bool(getattr(self.users, "serves_sha256", False)) or self.secrets.serves_sha256

    finds_userhash = False  # the shared-secret users cannot be found by USERHASH (module docs)

    def sha256_keys_at(self, username: str, realm: str, now: float) -> KeyCandidates:
        """A user the file knows gets the file's SHA-256 key (none for an MD5-only line); others the secrets'."""
        if self._known_to_users(username, realm, now):
            sha256_keys_at = getattr(self.users, "sha256_keys_at", None)
            return sha256_keys_at(username, realm, now) if sha256_keys_at is not None else KeyCandidates()
        return self.secrets.sha256_keys_at(username, realm, now)

    def user_for_hash(self, hashed: bytes) -> tuple[str, str] | None:
        find = getattr(self.users, "user_for_hash", None)
        found: tuple[str, str] | None = find(hashed) if find is not None else None
        return found

    def _known_to_users(self, username: str, realm: str, now: float) -> bool:
        users = self.users
        timed = getattr(users, "keys_at", None)
        if timed is not None:
            return bool(timed(username, realm, now).keys)
        return users is not None and cast(PlainUserLookup, users)(username, realm) is not None

    def __repr__(self) -> str:
        return f"UsersAndSecrets({self.users!r}, {self.secrets!r})"


def parse_secret_lines(lines: Iterable[bytes]) -> list[bytes]:
    """One secret per line; surrounding whitespace, blank lines and ``#`` comment lines are ignored."""
    secrets = []
    for raw in lines:
        line = raw.strip()
        if line and not line.startswith(b"#"):
            secrets.append(line)
    return secrets


def split_secret_list(text: str) -> Sequence[str]:
    """AuthSharedSecret's value: comma-separated secrets, whitespace around each ignored."""
    return [item.strip() for item in text.split(",") if item.strip()]
