"""Shared-secret (TURN REST) credentials in the sans-IO core, with a fake Unix-time clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from turnclient import REALM, Harness, make_config

import pyturn
from pyturn.core.actions import OpenRelay
from pyturn.core.events import AuthFailed
from pyturn.core.sharedsecret import SecretFileError, SharedSecrets, UsersAndSecrets, rest_password, username_expiry
from pyturn.core.userdb import UserDB
from pyturn.files.secretfile import load_secret_file

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the fake clock's Unix time
SECRET = "north-wind"
OTHER_SECRET = "south-wind"


def _harness(*secrets: str, separator: str = ":", users: dict[str, str] | None = None) -> Harness:
    file_users = UserDB.from_passwords(users or {}, REALM).lookup
    lookup = UsersAndSecrets(file_users, SharedSecrets(secrets, realm=REALM, separator=separator))
    harness = Harness(make_config(), users=lookup)
    harness.now = NOW
    return harness


def test_sharedsecret_password_is_base64_hmac_sha1_of_the_username() -> None:
    expected = base64.b64encode(hmac.new(b"north-wind", b"1767229200:bob", hashlib.sha1).digest()).decode()
    assert rest_password(SECRET, "1767229200:bob") == expected
    assert len(expected) == 28  # 20 bytes of SHA-1 in base64


def test_sharedsecret_library_helper_username_and_password() -> None:
    username, password = pyturn.rest_credentials(SECRET, "bob", ttl=3600, now=NOW)
    assert username == "1767229200:bob"
    assert password == rest_password(SECRET, username)
    assert pyturn.rest_credentials(SECRET, now=NOW)[0] == "1767312000"  # 86400 s by default, no name


@pytest.mark.parametrize(
    ("username", "separator", "expiry"),
    [
        ("1767229200", ":", 1767229200),
        ("1767229200:bob", ":", 1767229200),
        ("1767229200:@bob:matrix.example.org", ":", 1767229200),  # Synapse: the rest holds ':' again
        ("1767229200-bob", "-", 1767229200),
        ("bob:1767229200", ":", None),
        ("", ":", None),
        (":bob", ":", None),
        ("\uff11\uff12\uff13", ":", None),  # non-ASCII digits are not a Unix time
        ("9" * 21, ":", None),
    ],
)
def test_sharedsecret_username_expiry(username: str, separator: str, expiry: int | None) -> None:
    assert username_expiry(username, separator) == expiry


def test_sharedsecret_valid_credentials_allocate() -> None:
    harness = _harness(SECRET)
    username, password = pyturn.rest_credentials(SECRET, "bob", ttl=600, now=NOW)
    result = harness.client(username, password).allocate()
    assert result.of(OpenRelay) and result.error_code is None


def test_sharedsecret_expired_username_gets_401_and_an_expired_auth_failure() -> None:
    harness = _harness(SECRET)
    username, password = pyturn.rest_credentials(SECRET, "bob", ttl=600, now=NOW - 601)
    result = harness.client(username, password).allocate()
    assert result.error_code == 401
    failure = result.one(AuthFailed)
    assert (failure.code, failure.username, failure.reason) == (401, username, "expired_credentials")
    assert SECRET not in repr(failure)


def test_sharedsecret_expiry_equal_to_now_is_refused() -> None:
    harness = _harness(SECRET)
    username, password = pyturn.rest_credentials(SECRET, ttl=0, now=NOW)
    assert harness.client(username, password).allocate().error_code == 401


def test_sharedsecret_expired_username_with_a_wrong_password_is_no_expiry() -> None:
    harness = _harness(SECRET)
    username, _ = pyturn.rest_credentials(SECRET, "bob", ttl=600, now=NOW - 601)
    result = harness.client(username, "not the password").allocate()
    assert result.error_code == 401
    assert result.one(AuthFailed).reason == "bad_integrity"


def test_sharedsecret_allocation_expires_with_its_credentials() -> None:
    harness = _harness(SECRET)
    username, password = pyturn.rest_credentials(SECRET, "bob", ttl=120, now=NOW)
    client = harness.client(username, password)
    assert client.allocate().error_code is None
    harness.advance(60)
    assert client.refresh(600).error_code is None
    harness.advance(61)
    assert client.refresh(600).error_code == 401


@pytest.mark.parametrize("issued_with", [SECRET, OTHER_SECRET])
def test_sharedsecret_rotation_accepts_any_listed_secret(issued_with: str) -> None:
    harness = _harness(SECRET, OTHER_SECRET)
    username, password = pyturn.rest_credentials(issued_with, "bob", now=NOW)
    assert harness.client(username, password).allocate().error_code is None


def test_sharedsecret_unlisted_secret_is_refused() -> None:
    harness = _harness(SECRET)
    username, password = pyturn.rest_credentials("retired", "bob", now=NOW)
    result = harness.client(username, password).allocate()
    assert result.error_code == 401
    assert result.one(AuthFailed).reason == "bad_integrity"


def test_sharedsecret_username_not_of_the_rest_form_is_an_unknown_user() -> None:
    result = _harness(SECRET).client("bob", "whatever").allocate()
    assert (result.error_code, result.one(AuthFailed).reason) == (401, "unknown_user")


def test_sharedsecret_failures_are_counted_for_the_metrics() -> None:
    harness = _harness(SECRET)
    harness.client(*pyturn.rest_credentials(SECRET, ttl=10, now=NOW - 20)).allocate()
    harness.client(*pyturn.rest_credentials("retired", now=NOW)).allocate()
    failures = harness.core.stats.auth_failures
    assert (failures["expired_credentials"], failures["bad_integrity"]) == (1, 1)


def test_sharedsecret_custom_separator() -> None:
    harness = _harness(SECRET, separator="-")
    username, password = pyturn.rest_credentials(SECRET, "bob", now=NOW, separator="-")
    assert username.endswith("-bob")
    assert harness.client(username, password).allocate().error_code is None


def test_sharedsecret_user_file_wins_over_the_secret() -> None:
    # A file user whose name looks like a REST username uses the file's password, never the computed one.
    username, computed = pyturn.rest_credentials(SECRET, "bob", now=NOW)
    harness = _harness(SECRET, users={username: "file password"})
    assert harness.client(username, "file password").allocate().error_code is None
    assert _harness(SECRET, users={username: "file password"}).client(username, computed).allocate().error_code == 401


def test_sharedsecret_plain_file_users_still_work_beside_secrets() -> None:
    harness = _harness(SECRET, users={"alice": "secret"})
    assert harness.client("alice", "secret").allocate().error_code is None


def test_sharedsecret_other_realm_is_refused() -> None:
    username, password = pyturn.rest_credentials(SECRET, "bob", now=NOW)
    harness = _harness(SECRET)
    assert harness.client(username, password, realm="elsewhere").allocate().error_code == 401


def test_sharedsecret_unix_offset_translates_the_core_clock() -> None:
    # The server's core runs on the loop's monotonic clock; the adapter supplies the offset to Unix time.
    secrets = SharedSecrets([SECRET], realm=REALM, unix_offset=NOW - 50.0)
    username, _ = pyturn.rest_credentials(SECRET, ttl=10, now=NOW)
    assert not secrets.keys_at(username, REALM, 59.0).expired  # Unix time NOW + 9
    assert secrets.keys_at(username, REALM, 60.0).expired


def test_sharedsecret_repr_hides_secrets() -> None:
    assert SECRET not in repr(SharedSecrets([SECRET], realm=REALM))
    assert SECRET not in repr(UsersAndSecrets(None, SharedSecrets([SECRET], realm=REALM)))


def test_sharedsecret_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_bytes(b"\xef\xbb\xbf# rotated 2026-01\n  first  \n\nsecond\r\n")
    assert load_secret_file(path) == [b"first", b"second"]


@pytest.mark.parametrize("content", [b"", b"# only a comment\n\n  \n"])
def test_sharedsecret_file_without_secret_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "secrets"
    path.write_bytes(content)
    with pytest.raises(SecretFileError, match="holds no secret"):
        load_secret_file(path)


def test_sharedsecret_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="cannot read"):
        load_secret_file(tmp_path / "absent")
