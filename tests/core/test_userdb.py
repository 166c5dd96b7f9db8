from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pyturn.core.userdb import UserDB, UserProblem, UserState, parse_user_lines
from pyturn.errors import UserDBError
from pyturn.files.userfile import load_user_file

CONF_USERS = Path(__file__).resolve().parents[2] / "conf" / "users.txt"
SECRET_PASSWORD = "s3cr3t-pw"


def ha1(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def ha1_hex(username: str, realm: str, password: str) -> str:
    return ha1(username, realm, password).hex()


TEST_USER = {("test", "reTurn"): ha1("test", "reTurn", "1234")}

# (line, hashed, expected {(user, realm): HA1}, number of problems)
LINE_CASES = [
    pytest.param("test:1234:reTurn:authorized", False, TEST_USER, 0,
                 id="plain"),
    pytest.param(f"alice:{ha1_hex('alice', 'example.org', 'pw')}:example.org:authorized", True,
                 {("alice", "example.org"): ha1("alice", "example.org", "pw")}, 0, id="hashed"),
    pytest.param(f"alice:{ha1_hex('alice', 'example.org', 'pw').upper()}:example.org:authorized", True,
                 {("alice", "example.org"): ha1("alice", "example.org", "pw")}, 0, id="hashed-uppercase-hex"),
    pytest.param(f"bob:example.org:{ha1_hex('bob', 'example.org', 'pw')}", False,
                 {("bob", "example.org"): ha1("bob", "example.org", "pw")}, 0, id="htdigest-plain-mode"),
    pytest.param(f"bob:example.org:{ha1_hex('bob', 'example.org', 'pw')}", True,
                 {("bob", "example.org"): ha1("bob", "example.org", "pw")}, 0, id="htdigest-hashed-mode"),
    pytest.param(f"bob:example.org:{ha1_hex('bob', 'example.org', 'pw').upper()}\r\n", False,
                 {("bob", "example.org"): ha1("bob", "example.org", "pw")}, 0, id="htdigest-uppercase-crlf"),
    pytest.param(f"bob:My Realm:{ha1_hex('bob', 'My Realm', 'pw')}", False,
                 {("bob", "My Realm"): ha1("bob", "My Realm", "pw")}, 0, id="htdigest-realm-with-space"),
    pytest.param("test:1234:reTurn:authorized\r\n", False, TEST_USER, 0,
                 id="crlf"),
    pytest.param("test:1234:reTurn:authorized\n", False, TEST_USER, 0,
                 id="lf"),
    pytest.param("  test: 1234:  reTurn: authorized   ", False,
                 TEST_USER, 0, id="spaces-after-colons"),
    pytest.param("test ignored:1234 ignored:reTurn ignored:authorized trailing words", False,
                 TEST_USER, 0, id="text-after-space-discarded"),
    pytest.param("test:\t1234:\treTurn:\tauthorized\t# note", False,
                 TEST_USER, 0, id="tabs-after-colons"),
    pytest.param("test:12\t34:reTurn:authorized", False,
                 {("test", "reTurn"): ha1("test", "reTurn", "12\t34")}, 0, id="tab-inside-field-kept"),
    pytest.param("test:1234:reTurn:AUTHORIZED", False, TEST_USER, 0,
                 id="state-uppercase"),
    pytest.param("test:1234:reTurn:restricted", False, TEST_USER, 0,
                 id="restricted"),
    pytest.param("test:1234:reTurn:refused", False, {}, 0, id="refused"),
    pytest.param("test:foobar:example.org:REFUSED", True, {}, 0, id="refused-debian-sample-hashed"),
    pytest.param("test:1234:reTurn:banned", False, {}, 1, id="unknown-state"),
    pytest.param("test:1234:reTurn:", False, {}, 1, id="empty-state"),
    pytest.param("test:1234:reTurn:authorized:extra", False, {}, 1, id="five-fields"),
    pytest.param("test:1234", False, {}, 1, id="two-fields"),
    pytest.param("test", False, {}, 1, id="one-field"),
    pytest.param("test:1234:reTurn", False, {}, 1, id="three-fields-not-htdigest"),
    pytest.param(":1234:reTurn:authorized", False, {}, 1, id="empty-login"),
    pytest.param("test:1234::authorized", False, {}, 1, id="empty-realm"),
    pytest.param(f":example.org:{ha1_hex('', 'example.org', 'pw')}", False, {}, 1, id="htdigest-empty-user"),
    pytest.param("bob:example.org:" + "ab" * 15, False, {}, 1, id="htdigest-short-ha1"),
    pytest.param("bob:example.org:" + "g" * 32, False, {}, 1, id="htdigest-non-hex-ha1"),
    pytest.param("alice:" + "ab" * 15 + ":example.org:authorized", True, {}, 1, id="hashed-ha1-too-short"),
    pytest.param("alice:" + "ab" * 17 + ":example.org:authorized", True, {}, 1, id="hashed-ha1-too-long"),
    pytest.param("alice:" + "zz" * 16 + ":example.org:authorized", True, {}, 1, id="hashed-ha1-non-hex-32"),
    pytest.param("alice:" + "+1" * 16 + ":example.org:authorized", True, {}, 1, id="hashed-ha1-signs-32"),
    pytest.param("", False, {}, 0, id="empty-line"),
    pytest.param("   \t  \r\n", False, {}, 0, id="blank-line"),
    pytest.param("# test:1234:reTurn:authorized", False, {}, 0, id="comment"),
    pytest.param("   # indented comment", False, {}, 0, id="indented-comment"),
    pytest.param("caf\udce9:1234:reTurn:authorized", False,
                 {("caf\udce9", "reTurn"): hashlib.md5(b"caf\xe9:reTurn:1234").digest()}, 0,
                 id="invalid-utf8-hashed-as-raw-bytes"),
    pytest.param("zoë:pässword:réalm:authorized", False,
                 {("zoë", "réalm"): ha1("zoë", "réalm", "pässword")}, 0, id="utf8-names"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "hashed", "expected", "problem_count"), LINE_CASES)
def test_parse_user_lines_single_line(
    line: str, hashed: bool, expected: dict[tuple[str, str], bytes], problem_count: int
) -> None:
    users, problems = parse_user_lines([line], source="users.txt", hashed=hashed)
    assert {key: users.lookup(*key) for key in expected} == expected
    assert len(users) == len(expected)
    assert len(problems) == problem_count
    for problem in problems:
        assert problem.path == "users.txt"
        assert problem.line == 1


@pytest.mark.parametrize(
    ("line", "hashed"),
    [
        pytest.param(f"alice:{SECRET_PASSWORD}:example.org:nope", False, id="unknown-state"),
        pytest.param(f"alice:example.org:authorized:{SECRET_PASSWORD}", False, id="password-in-state-column"),
        pytest.param(f"alice:{SECRET_PASSWORD}:example.org:authorized", True, id="hashed-bad-length"),
        pytest.param(f"alice:{(SECRET_PASSWORD * 4)[:32]}:example.org:authorized", True, id="hashed-non-hex"),
        pytest.param(f"alice:{SECRET_PASSWORD}", False, id="missing-fields"),
        pytest.param(f"alice:example.org:{SECRET_PASSWORD}", False, id="bad-htdigest"),
    ],
)
def test_parse_user_lines_problem_never_shows_secret(line: str, hashed: bool) -> None:
    _, problems = parse_user_lines([line], source="u", hashed=hashed)
    assert len(problems) == 1
    assert SECRET_PASSWORD not in str(problems[0])
    assert SECRET_PASSWORD[:4] not in problems[0].message


def test_parse_user_lines_duplicate_last_wins_with_warning() -> None:
    lines = [
        "alice:first:reTurn:authorized",
        "alice:second:other:authorized",
        "# comment",
        "alice:third:reTurn:authorized",
        "alice:reTurn:" + ha1_hex("alice", "reTurn", "fourth"),
    ]
    users, problems = parse_user_lines(lines, source="users.txt", hashed=False)
    assert users.lookup("alice", "reTurn") == ha1("alice", "reTurn", "fourth")
    assert users.lookup("alice", "other") == ha1("alice", "other", "second")
    assert [str(p) for p in problems] == [
        "users.txt:4: duplicate user alice in realm reTurn (line 4 wins over line 1)",
        "users.txt:5: duplicate user alice in realm reTurn (line 5 wins over line 4)",
    ]
    assert all("first" not in p.message and "third" not in p.message for p in problems)


def test_parse_user_lines_refused_after_loaded_keeps_user_and_warns() -> None:
    users, problems = parse_user_lines(
        ["alice:pw:reTurn:authorized", "alice:pw:reTurn:refused"], source="u", hashed=False
    )
    assert ("alice", "reTurn") in users
    assert len(problems) == 1
    assert problems[0].line == 2
    assert "refused" in problems[0].message


def test_parse_user_lines_problem_line_numbers_count_every_line() -> None:
    lines = ["", "# c", "good:pw:r:authorized", "bad line", "good2:pw:r:authorized", "worse"]
    users, problems = parse_user_lines(lines, source="conf/users.txt", hashed=False)
    assert len(users) == 2
    assert [(p.path, p.line) for p in problems] == [("conf/users.txt", 4), ("conf/users.txt", 6)]
    assert str(problems[0]).startswith("conf/users.txt:4: ")


def test_parse_user_lines_empty_input_gives_empty_db() -> None:
    users, problems = parse_user_lines([], source="u", hashed=True)
    assert len(users) == 0
    assert users.realms() == frozenset()
    assert problems == []


def test_user_problem_str_is_path_line_message() -> None:
    assert str(UserProblem("a/users.txt", 7, "bad")) == "a/users.txt:7: bad"


def test_user_state_values_are_return_keywords() -> None:
    assert {state.value for state in UserState} == {"authorized", "restricted", "refused"}


def test_userdb_lookup_is_exact_and_case_sensitive() -> None:
    users = UserDB.from_passwords({"Alice": "pw"}, "reTurn")
    assert users.lookup("Alice", "reTurn") == ha1("Alice", "reTurn", "pw")
    assert users.lookup("alice", "reTurn") is None
    assert users.lookup("Alice", "return") is None
    assert users.lookup("Alice ", "reTurn") is None


def test_userdb_copies_its_input_and_is_read_only() -> None:
    source = {("a", "r"): ha1("a", "r", "x")}
    users = UserDB(source)
    source[("b", "r")] = ha1("b", "r", "x")
    assert len(users) == 1
    assert ("a", "r") in users
    assert ("b", "r") not in users
    with pytest.raises(AttributeError):
        users.extra = 1  # type: ignore[attr-defined]


def test_userdb_realms_and_len() -> None:
    users = UserDB({("a", "r1"): b"\x00" * 16, ("a", "r2"): b"\x01" * 16, ("b", "r1"): b"\x02" * 16})
    assert len(users) == 3
    assert users.realms() == frozenset({"r1", "r2"})
    assert UserDB().realms() == frozenset()
    assert len(UserDB(None)) == 0


def test_userdb_repr_hides_keys() -> None:
    key = ha1("a", "r", "pw")
    assert key.hex() not in repr(UserDB({("a", "r"): key}))


def test_userdb_from_passwords_matches_rfc_long_term_key() -> None:
    users = UserDB.from_passwords({"user": "pass", "test": "1234"}, "reTurn")
    assert users.lookup("user", "reTurn") == hashlib.md5(b"user:reTurn:pass").digest()
    assert users.lookup("test", "reTurn") == bytes.fromhex("6078a36f89704d83763c9e174b3e87a4")
    assert len(users.lookup("user", "reTurn") or b"") == 16


def test_load_user_file_reads_crlf_and_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_bytes(
        b"# users\r\n"
        b"test:1234:reTurn:authorized\r\n"
        b"\r\n"
        b"caf\xe9:pw:reTurn:authorized\r\n"
        b"bob:reTurn:" + ha1_hex("bob", "reTurn", "pw").encode() + b"\r\n"
        b"broken\xff line\r\n"
    )
    users, problems = load_user_file(path, hashed=False)
    assert users.lookup("test", "reTurn") == ha1("test", "reTurn", "1234")
    assert users.lookup("caf\udce9", "reTurn") == hashlib.md5(b"caf\xe9:reTurn:pw").digest()
    assert users.lookup("bob", "reTurn") == ha1("bob", "reTurn", "pw")
    assert len(users) == 3
    assert [(p.path, p.line) for p in problems] == [(str(path), 6)]
    str(problems[0]).encode("utf-8")  # printable: no lone surrogates leak into messages


def test_load_user_file_accepts_str_path_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_bytes(b"\xef\xbb\xbftest:1234:reTurn:authorized\nlast:pw:reTurn:authorized")
    users, problems = load_user_file(str(path), hashed=False)
    assert problems == []
    assert set(users) == {("test", "reTurn"), ("last", "reTurn")}


def test_load_user_file_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_bytes(b"")
    users, problems = load_user_file(path, hashed=True)
    assert len(users) == 0
    assert problems == []


def test_load_user_file_missing_raises_userdberror(tmp_path: Path) -> None:
    with pytest.raises(UserDBError, match="cannot read user file") as caught:
        load_user_file(tmp_path / "absent.txt", hashed=False)
    assert isinstance(caught.value.__cause__, OSError)


def test_load_user_file_directory_raises_userdberror(tmp_path: Path) -> None:
    with pytest.raises(UserDBError):
        load_user_file(tmp_path, hashed=False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_load_user_file_unreadable_raises_userdberror(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("test:1234:reTurn:authorized\n")
    path.chmod(0)
    with pytest.raises(UserDBError):
        load_user_file(path, hashed=False)


def test_conf_users_txt_loads_without_problems() -> None:
    users, problems = load_user_file(CONF_USERS, hashed=False)
    assert problems == []
    assert users.lookup("test", "reTurn") == ha1("test", "reTurn", "1234")
    assert users.lookup("demo", "reTurn") == ha1("demo", "reTurn", "demo")
    assert len(users) == 2
    assert users.realms() == frozenset({"reTurn"})
