"""User files -> an immutable snapshot of long-term keys {(username, realm): HA1}.

Two line formats are accepted, detected line by line:

* reTurn's ``login:password:realm:state`` (docs/compatibility.md "User file"), with the password in plain text or, when
the
  server runs with ``UserDatabaseHashedPasswords = true``, as the 32-hex-digit HA1;
* Apache htdigest's ``user:realm:HA1`` (what ``htdigest`` writes), always hashed.

HA1 = MD5(username ":" realm ":" password) is the RFC 8489 §9.2.2 long-term key (16 raw bytes). A line with the
password in plain text also gives the SHA-256 key of RFC 8489 §18.5.1.2; htdigest lines and hashed passwords hold
the MD5 key only, so those users stay on MD5 (docs/compatibility.md "RFC 8489 authentication").
Parsing is pure; pyturn.files.userfile.load_user_file reads the file. A bad line never raises: it is
reported as a :class:`UserProblem` and skipped. Problem messages never contain passwords or HA1 values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from pyturn.core.auth import KeyCandidates
from pyturn.wire.integrity import long_term_key, long_term_key_sha256, userhash

__all__ = [
    "UserDB",
    "UserProblem",
    "UserState",
    "htdigest_line",
    "parse_user_lines",
    "user_line_identity",
]

_HEX_HA1 = re.compile(r"[0-9A-Fa-f]{32}")
# docs/compatibility.md "User file": login, password and realm end at ':' or a space (not a tab);
# whitespace after ':' is skipped.
_FIELD_END = ": "
_SKIPPED_AFTER_COLON = " \t"
# docs/compatibility.md "User file": the state ends at space, tab, CR or LF.
_STATE_END = re.compile(r"[ \t\r\n]")


class UserState(Enum):
    """The fourth field of a reTurn user line (compared case-insensitively)."""

    AUTHORIZED = "authorized"
    RESTRICTED = "restricted"  # loaded exactly like AUTHORIZED, as reTurn does
    REFUSED = "refused"  # the line is skipped


@dataclass(frozen=True, slots=True)
class UserProblem:
    """One line of a user file that was skipped or that deserves a warning."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _shown(text: str) -> str:
    """A user or realm name made safe to print: undecodable bytes become \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class UserDB:
    """An immutable snapshot of long-term keys, looked up by the exact (username, realm) pair.

    ``sha256_keys`` holds the RFC 8489 §18.5.1.2 keys of the users whose password was known; the USERHASH index
    (RFC 8489 §14.4) is built with the snapshot. Calling the snapshot is ``lookup`` (a PlainUserLookup).
    """

    __slots__ = ("_by_hash", "_keys", "_realms", "_sha256_keys")

    _keys: Mapping[tuple[str, str], bytes]
    _sha256_keys: Mapping[tuple[str, str], bytes]
    _by_hash: Mapping[bytes, tuple[str, str]]
    _realms: frozenset[str]

    def __init__(
        self,
        keys: Mapping[tuple[str, str], bytes] | None = None,
        sha256_keys: Mapping[tuple[str, str], bytes] | None = None,
    ) -> None:
        copied = {(username, realm): bytes(ha1) for (username, realm), ha1 in (keys or {}).items()}
        self._keys = MappingProxyType(copied)
        self._sha256_keys = MappingProxyType(
            {user: bytes(key) for user, key in (sha256_keys or {}).items() if user in copied}
        )
        by_hash = {}
        for username, realm in copied:
            hashed = userhash(username, realm)
            if hashed is not None:
                by_hash[hashed] = (username, realm)
        self._by_hash = MappingProxyType(by_hash)
        self._realms = frozenset(realm for _, realm in copied)

    @classmethod
    def from_passwords(cls, passwords: Mapping[str, str], realm: str) -> UserDB:
        """Build a snapshot from plain-text passwords, all in one realm (handy for test rigs)."""
        keys = {(user, realm): long_term_key(user, realm, password) for user, password in passwords.items()}
        sha256 = {(user, realm): long_term_key_sha256(user, realm, password) for user, password in passwords.items()}
        return cls(keys, {user: key for user, key in sha256.items() if key is not None})

    def lookup(self, username: str, realm: str) -> bytes | None:
        """The 16-byte HA1 of the user, or None. Exact, case-sensitive comparison (docs/compatibility.md "User
        lookup")."""
        return self._keys.get((username, realm))

    __call__ = lookup

    @property
    def serves_sha256(self) -> bool:
        """Whether any user has a SHA-256 key (the core then offers PASSWORD-ALGORITHMS, pyturn.core.auth)."""
        return bool(self._sha256_keys)

    @property
    def finds_userhash(self) -> bool:
        return bool(self._by_hash)

    def sha256_keys_at(self, username: str, realm: str, now: float) -> KeyCandidates:
        """The SHA-256 key of the user (RFC 8489 §18.5.1.2), none for an unknown or MD5-only user."""
        key = self._sha256_keys.get((username, realm))
        return KeyCandidates((key,)) if key is not None else KeyCandidates()

    def user_for_hash(self, hashed: bytes) -> tuple[str, str] | None:
        """The (username, realm) whose USERHASH this is (RFC 8489 §14.4), or None."""
        return self._by_hash.get(hashed)

    def realms(self) -> frozenset[str]:
        return self._realms

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._keys)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserDB):
            return NotImplemented
        return dict(self._keys) == dict(other._keys) and dict(self._sha256_keys) == dict(other._sha256_keys)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # Never show the keys themselves.
        return f"UserDB({len(self._keys)} users, realms={sorted(self._realms)!r})"


@dataclass(frozen=True, slots=True)
class _Entry:
    username: str
    realm: str
    ha1: bytes
    sha256: bytes | None = None  # RFC 8489 §18.5.1.2, when the line holds the password itself


class _LineRejected(Exception):
    """Internal: the line is skipped for the reason given (never leaves this module)."""


class _LineRefused(Exception):
    """Internal: a reTurn line with state 'refused' (skipped without a problem)."""

    def __init__(self, username: str, realm: str) -> None:
        super().__init__(username, realm)
        self.username = username
        self.realm = realm


def _take_field(line: str, pos: int, name: str) -> tuple[str, int]:
    """Read one of login/password/realm starting at pos; return it and the position after its ':'."""
    end = pos
    while end < len(line) and line[end] not in _FIELD_END:
        end += 1
    colon = line.find(":", end)
    if colon < 0:
        raise _LineRejected(
            f"missing ':' after the {name} field (expected login:password:realm:state or user:realm:HA1)"
        )
    value = line[pos:end]
    pos = colon + 1
    while pos < len(line) and line[pos] in _SKIPPED_AFTER_COLON:
        pos += 1
    return value, pos


def _hex_ha1(field: str, what: str) -> bytes:
    if len(field) != 32:
        raise _LineRejected(f"{what} must be an HA1 of exactly 32 hex digits (has {len(field)} characters)")
    if not _HEX_HA1.fullmatch(field):
        raise _LineRejected(f"{what} must be an HA1 of 32 hex digits (contains non-hex characters)")
    return bytes.fromhex(field)


def _require_names(username: str, realm: str) -> None:
    if not username:
        raise _LineRejected("empty user name")
    if not realm:
        raise _LineRejected("empty realm")


def _parse_htdigest(line: str) -> _Entry:
    username, realm, ha1_field = line.split(":")
    ha1_field = ha1_field.rstrip(" \t")
    if not _HEX_HA1.fullmatch(ha1_field):
        raise _LineRejected(
            "3-field line is neither htdigest user:realm:HA1 (the third field must be 32 hex digits) "
            "nor reTurn login:password:realm:state"
        )
    _require_names(username, realm)
    return _Entry(username, realm, bytes.fromhex(ha1_field))


def _parse_return_line(line: str, *, hashed: bool) -> _Entry:
    """docs/compatibility.md "User file": login:password:realm:state."""
    login, pos = _take_field(line, 0, "login")
    password, pos = _take_field(line, pos, "password")
    realm, pos = _take_field(line, pos, "realm")
    state_end = _STATE_END.search(line, pos)
    state_text = line[pos : state_end.start() if state_end else len(line)]
    if not state_text:
        raise _LineRejected("missing state (expected authorized, restricted or refused)")
    try:
        state = UserState(state_text.lower())
    except ValueError:
        # The value is not echoed: on a line with its fields in the wrong order it could be a password.
        raise _LineRejected("unknown state (expected authorized, restricted or refused)") from None
    _require_names(login, realm)
    if state is UserState.REFUSED:
        raise _LineRefused(login, realm)
    if hashed:
        return _Entry(login, realm, _hex_ha1(password, "with hashed passwords the password field"))
    return _Entry(login, realm, long_term_key(login, realm, password), long_term_key_sha256(login, realm, password))


def _parse_line(line: str, *, hashed: bool) -> _Entry | None:
    """None for blank and comment lines; raises _LineRejected / _LineRefused for skipped lines."""
    line = line.rstrip("\r\n").lstrip(" \t")
    if not line.strip() or line.startswith("#"):
        return None
    # A reTurn line needs three ':' separators, so exactly two can only be htdigest (or a mistake).
    if line.count(":") == 2:
        return _parse_htdigest(line)
    return _parse_return_line(line, hashed=hashed)


def user_line_identity(line: str) -> tuple[str, str] | None:
    """The (username, realm) a user-file line is about, parsed exactly as the server parses it (refused lines
    included); None for blank, comment and unparsable lines."""
    try:
        entry = _parse_line(line, hashed=False)
    except _LineRefused as refused:
        return refused.username, refused.realm
    except _LineRejected:
        return None
    return None if entry is None else (entry.username, entry.realm)


def htdigest_line(username: str, realm: str, password: str) -> str:
    """``user:realm:HA1`` as Apache htdigest writes it (HA1 in lower-case hex), with its line end."""
    return f"{username}:{realm}:{long_term_key(username, realm, password).hex()}\n"


def parse_user_lines(lines: Iterable[str], *, source: str, hashed: bool) -> tuple[UserDB, list[UserProblem]]:
    """Parse user-file lines (with or without their line endings) into a snapshot and the problems found.

    ``source`` names the file in problems. ``hashed`` is reTurn's UserDatabaseHashedPasswords; it only affects
    4-field lines (htdigest lines always carry an HA1).
    """
    keys: dict[tuple[str, str], bytes] = {}
    sha256_keys: dict[tuple[str, str], bytes] = {}
    line_of: dict[tuple[str, str], int] = {}
    problems: list[UserProblem] = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = _parse_line(line, hashed=hashed)
        except _LineRejected as rejected:
            problems.append(UserProblem(source, number, f"{rejected}; line skipped"))
            continue
        except _LineRefused as refused:
            earlier = line_of.get((refused.username, refused.realm))
            if earlier is not None:
                # reTurn skips refused lines; it does not revoke an entry loaded earlier. Say so, since an
                # operator adding a 'refused' line below an existing one probably expects the opposite.
                who = f"user {_shown(refused.username)} in realm {_shown(refused.realm)}"
                problems.append(
                    UserProblem(
                        source,
                        number,
                        f"{who} is refused here but stays loaded from line {earlier} "
                        "(refused lines are skipped and revoke nothing)",
                    )
                )
            continue
        if entry is None:
            continue
        key = (entry.username, entry.realm)
        earlier = line_of.get(key)
        if earlier is not None:
            problems.append(
                UserProblem(
                    source,
                    number,
                    f"duplicate user {_shown(entry.username)} in realm {_shown(entry.realm)} "
                    f"(line {number} wins over line {earlier})",
                )
            )
        keys[key] = entry.ha1
        if entry.sha256 is not None:
            sha256_keys[key] = entry.sha256
        else:
            sha256_keys.pop(key, None)  # a later htdigest line for the same user wins with its MD5 key only
        line_of[key] = number
    return UserDB(keys, sha256_keys), problems


def _split_lines(text: str) -> list[str]:
    # Only LF (optionally preceded by CR) ends a line; str.splitlines would also split on \f, \x1c, U+2028...
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines

