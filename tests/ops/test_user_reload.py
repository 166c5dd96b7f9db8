"""SIGHUP re-reads the user file of a running `pyturn` process; a broken file keeps the old users (docs/compatibility.md
"User reload")."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    PASSWORD,
    REALM,
    USERNAME,
    MiniTurnClient,
    PyturnProcess,
    TurnRequestFailed,
)

pytestmark = pytest.mark.interop

RELOAD_TIMEOUT = 5.0
NEW_USER = "bob"
NEW_PASSWORD = "builder"


async def _allocate_as(server: PyturnProcess, username: str, password: str) -> tuple[str, int]:
    with MiniTurnClient((LOOPBACK, server.port), username, password) as client:
        relayed = await client.allocate()
        await client.refresh(0)
        return relayed


async def _allocate_after_reload(server: PyturnProcess, username: str, password: str) -> tuple[str, int]:
    """SIGHUP is handled asynchronously: retry while the server still answers 401, bounded."""
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        try:
            return await _allocate_as(server, username, password)
        except TurnRequestFailed as failure:
            if failure.code != 401 or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_user_reload_sighup_adds_user_and_garbage_keeps_old_users(pyturn_subprocess: PyturnProcess,
                                                                         tmp_path: Path) -> None:
    users_file = tmp_path / "users.txt"
    with pytest.raises(TurnRequestFailed) as refused:
        await _allocate_as(pyturn_subprocess, NEW_USER, NEW_PASSWORD)
    assert refused.value.code == 401

    with users_file.open("a") as handle:
        handle.write(f"{NEW_USER}:{NEW_PASSWORD}:{REALM}:authorized\n")
    pyturn_subprocess.signal(signal.SIGHUP)
    relayed = await _allocate_after_reload(pyturn_subprocess, NEW_USER, NEW_PASSWORD)
    assert relayed[0] == LOOPBACK

    users_file.write_bytes(b"\x00\xff garbage without a single colon\n\n:::::\n")
    pyturn_subprocess.signal(signal.SIGHUP)
    await _eventually(lambda: "old users stay in force" in pyturn_subprocess.log(),
                      "the rejected reload was not logged")
    for username, password in ((USERNAME, PASSWORD), (NEW_USER, NEW_PASSWORD)):
        relayed = await _allocate_as(pyturn_subprocess, username, password)
        assert relayed[0] == LOOPBACK
    assert pyturn_subprocess.process.poll() is None, "the server died on a broken user file"
