"""UserDatabaseCheckInterval: a running Server re-reads its user file when the file's mtime changed, without
SIGHUP; a broken file keeps the old users (docs/compatibility.md "User reload")."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest
from interop import PASSWORD, REALM, USERNAME, MiniTurnClient, TurnRequestFailed

from pyturn.config import Config
from pyturn.server import Server

CHECK_INTERVAL = 1
PICKUP_TIMEOUT = 3.0  # the change must be seen within three polls of one second
NEW_USER = "bob"
NEW_PASSWORD = "builder"


def _user_line(username: str, password: str) -> str:
    return f"{username}:{password}:{REALM}:authorized\n"


def _bump_mtime(path: Path, seconds: float = 2.0) -> None:
    """Move the mtime forward explicitly: a rewrite within the file system's timestamp granularity may not."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + int(seconds * 1e9)))


async def _allocate(server: Server, username: str, password: str) -> tuple[str, int]:
    with MiniTurnClient(server.addresses["udp"][0], username, password) as client:
        relayed = await client.allocate()
        await client.refresh(0)
        return relayed


async def _refused(server: Server, username: str, password: str) -> bool:
    try:
        await _allocate(server, username, password)
    except TurnRequestFailed as failure:
        assert failure.code == 401
        return True
    return False


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    path.write_text(_user_line(USERNAME, PASSWORD))
    return path


@pytest.fixture
def polling_config(loopback_config: Config, users_file: Path) -> Config:
    return loopback_config.replace(user_database_file=str(users_file), user_database_check_interval=CHECK_INTERVAL)


async def test_user_polling_added_user_accepted_after_mtime_change(polling_config: Config,
                                                                    users_file: Path) -> None:
    async with Server(polling_config) as server:
        assert await _refused(server, NEW_USER, NEW_PASSWORD)

        unchanged = users_file.stat()
        with users_file.open("a") as handle:
            handle.write(_user_line(NEW_USER, NEW_PASSWORD))
        os.utime(users_file, ns=(unchanged.st_atime_ns, unchanged.st_mtime_ns))
        await asyncio.sleep(CHECK_INTERVAL * 2.5)
        assert await _refused(server, NEW_USER, NEW_PASSWORD), "re-read although the mtime did not change"

        _bump_mtime(users_file)
        changed = time.monotonic()
        while await _refused(server, NEW_USER, NEW_PASSWORD):
            assert time.monotonic() - changed < PICKUP_TIMEOUT, "the new user was not picked up"
            await asyncio.sleep(0.1)
        assert (await _allocate(server, USERNAME, PASSWORD))[0] == "127.0.0.1"


async def test_user_polling_broken_file_keeps_old_users(polling_config: Config, users_file: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyturn")
    async with Server(polling_config) as server:
        with users_file.open("a") as handle:
            handle.write(_user_line(NEW_USER, NEW_PASSWORD))
        _bump_mtime(users_file)
        changed = time.monotonic()
        while await _refused(server, NEW_USER, NEW_PASSWORD):
            assert time.monotonic() - changed < PICKUP_TIMEOUT, "the new user was not picked up"
            await asyncio.sleep(0.1)

        users_file.write_bytes(b"\x00\xff garbage without a single colon\n\n:::::\n")
        _bump_mtime(users_file, 4.0)
        changed = time.monotonic()
        while "old users stay in force" not in caplog.text:
            assert time.monotonic() - changed < PICKUP_TIMEOUT, "the broken file was not polled"
            await asyncio.sleep(0.1)

        for username, password in ((USERNAME, PASSWORD), (NEW_USER, NEW_PASSWORD)):
            assert (await _allocate(server, username, password))[0] == "127.0.0.1"
