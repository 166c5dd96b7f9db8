"""`pyturn users`: htdigest-compatible lines, atomic replacement, round trips with the real htdigest and server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    REALM,
    MiniTurnClient,
    TurnRequestFailed,
    free_port,
    pyturn_process,
    require_tool,
    run_pyturn_cli,
    write_config,
)
from ptyrun import run_on_pty

from pyturn.files.userfile import load_user_file

PYTURN = [sys.executable, "-m", "pyturn"]
RELOAD_TIMEOUT = 5.0


def _users(*arguments: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--password-stdin"] if password is not None else []
    return subprocess.run([*PYTURN, "users", *arguments, *extra], input=(password or "") + "\n",
                          capture_output=True, text=True, timeout=20)


def _ha1(user: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()


def test_users_add_writes_an_htdigest_line_and_reminds_of_sighup(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    completed = _users("add", str(users), "carol", "--realm", "example.org", password="s3cret")
    assert completed.returncode == 0, completed.stderr
    assert users.read_text() == f"carol:example.org:{_ha1('carol', 'example.org', 's3cret')}\n"
    assert "SIGHUP" in completed.stderr
    assert os.stat(users).st_mode & 0o777 == 0o640
    database, problems = load_user_file(users, hashed=False)
    assert problems == [] and ("carol", "example.org") in database


def test_users_keeps_unknown_lines_mode_and_other_users(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    original = (b"# operators\n"
                b"test:1234:reTurn:authorized\n"
                b"this line is not understood\n"
                b"\xff\xfe bytes that are not UTF-8\n"
                b"old:secret:reTurn:refused\n"
                b"no-newline-at-the-end:" + _ha1("no-newline-at-the-end", "reTurn", "x").encode())
    users.write_bytes(original)
    os.chmod(users, 0o604)
    assert _users("add", str(users), "dave", password="pw").returncode == 0
    data = users.read_bytes()
    assert data.startswith(original + b"\n")
    assert data.endswith(f"dave:reTurn:{_ha1('dave', 'reTurn', 'pw')}\n".encode())
    assert os.stat(users).st_mode & 0o777 == 0o604
    assert _users("passwd", str(users), "test", password="new").returncode == 0
    assert _users("delete", str(users), "dave").returncode == 0
    after = users.read_bytes().split(b"\n")
    assert after[1] == f"test:reTurn:{_ha1('test', 'reTurn', 'new')}".encode()  # in place of the old line
    assert after[0] == b"# operators" and after[2:5] == original.split(b"\n")[2:5]
    assert not any(line.startswith(b"dave:") for line in after)
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no temporary file left


def test_users_list_never_prints_keys(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"a:1234:reTurn:authorized\nb:other:{_ha1('b', 'other', 'pw')}\nnot a user\n")
    completed = _users("list", str(users))
    assert completed.returncode == 0
    assert completed.stdout == "a\treTurn\nb\tother\n"
    assert "1234" not in completed.stdout and _ha1("b", "other", "pw") not in completed.stdout
    assert _users("list", str(users), "--realm", "other").stdout == "b\tother\n"


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        (["add", "{file}", "test"], 1),  # exists already
        (["passwd", "{file}", "nobody"], 1),
        (["delete", "{file}", "nobody"], 1),
        (["delete", "{file}", "test", "--realm", "elsewhere"], 1),
        (["add", "{file}", "bad:name"], 64),
        (["list", "{missing}"], 66),
        (["frobnicate", "{file}"], 64),
        (["add", "{file}"], 64),
    ],
)
def test_users_refusals_and_exit_codes(tmp_path: Path, arguments: list[str], code: int) -> None:
    users = tmp_path / "users.txt"
    users.write_text("test:1234:reTurn:authorized\n")
    filled = [arg.format(file=users, missing=tmp_path / "absent") for arg in arguments]
    completed = _users(*filled, password="pw") if filled[0] in ("add", "passwd") else _users(*filled)
    assert completed.returncode == code, completed.stderr
    assert users.read_text() == "test:1234:reTurn:authorized\n"


def test_users_replaces_the_target_of_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real-users.txt"
    real.write_text("test:1234:reTurn:authorized\n")
    link = tmp_path / "users.txt"
    link.symlink_to(real)
    assert _users("add", str(link), "eve", password="pw").returncode == 0
    assert link.is_symlink() and "eve:reTurn:" in real.read_text()


def test_users_owner_is_kept(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("changing a file's owner needs root (CI=true)")
        pytest.skip("changing a file's owner needs root")
    users = tmp_path / "users.txt"
    users.write_text("test:1234:reTurn:authorized\n")
    os.chown(users, 65534, 65534)
    assert _users("add", str(users), "frank", password="pw").returncode == 0
    assert (os.stat(users).st_uid, os.stat(users).st_gid) == (65534, 65534)


def test_users_password_from_the_terminal_is_asked_twice(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    code, output = run_on_pty([*PYTURN, "users", "add", str(users), "gina"], ["one", "two"])
    assert code == 1 and "differ" in output
    assert not users.exists()
    code, output = run_on_pty([*PYTURN, "users", "add", str(users), "gina"], ["same", "same"])
    assert code == 0, output
    assert output.lower().count("password") >= 2
    assert users.read_text() == f"gina:reTurn:{_ha1('gina', 'reTurn', 'same')}\n"


def _htdigest() -> str:
    path = shutil.which("htdigest")
    if path is None:
        require_tool("htdigest")  # skips locally, fails under CI=true (apt-get install apache2-utils)
    assert path is not None
    return path


def test_users_htdigest_round_trip_both_ways(tmp_path: Path) -> None:
    htdigest = _htdigest()
    users = tmp_path / "users.txt"
    code, output = run_on_pty([htdigest, "-c", str(users), REALM, "henry"], ["from-htdigest"] * 2)
    assert code == 0, output
    # A line written by htdigest is listed, its password changed and the user deleted by the command ...
    assert _users("list", str(users)).stdout == f"henry\t{REALM}\n"
    assert _users("add", str(users), "ivan", "--realm", REALM, password="from-pyturn").returncode == 0
    # ... and htdigest reads the command's lines: updating ivan rewrites his line rather than adding one.
    code, output = run_on_pty([htdigest, str(users), REALM, "ivan"], ["changed-by-htdigest"] * 2)
    assert code == 0, output
    assert "Changing password" in output
    lines = users.read_text().splitlines()
    assert lines == [f"henry:{REALM}:{_ha1('henry', REALM, 'from-htdigest')}",
                     f"ivan:{REALM}:{_ha1('ivan', REALM, 'changed-by-htdigest')}"]
    assert _users("passwd", str(users), "henry", "--realm", REALM, password="again").returncode == 0
    assert users.read_text().splitlines()[0] == f"henry:{REALM}:{_ha1('henry', REALM, 'again')}"


async def _allocate(port: int, user: str, password: str) -> tuple[str, int]:
    with MiniTurnClient((LOOPBACK, port), user, password) as client:
        relayed = await client.allocate()
        await client.refresh(0)
        return relayed


async def test_users_command_with_the_real_server_add_authenticates_delete_refuses(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)  # users.txt with alice
    users = tmp_path / "users.txt"
    assert _users("add", str(users), "jane", "--realm", REALM, password="jane-pw").returncode == 0
    with pyturn_process(config, port) as server:
        assert (await _allocate(port, "jane", "jane-pw"))[0] == LOOPBACK
        assert run_pyturn_cli("users", "delete", str(users), "jane", "--realm", REALM).returncode == 0
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            try:
                await _allocate(port, "jane", "jane-pw")
            except TurnRequestFailed as refused:
                assert refused.code == 401
                break
            assert time.monotonic() < deadline, "the deleted user is still accepted"
            await asyncio.sleep(0.05)
        assert (await _allocate(port, "alice", "wonderland"))[0] == LOOPBACK  # the other user stays
