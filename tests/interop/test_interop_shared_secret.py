"""Shared-secret (TURN REST) credentials end to end: coturn's turnutils_uclient computes them itself (-W), a real
`pyturn` process checks them; expiry, rotation and SIGHUP reloads of AuthSharedSecretFile."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    MiniTurnClient,
    PyturnProcess,
    TurnRequestFailed,
    free_port,
    free_udp_port_pair,
    pyturn_process,
    run_pyturn_cli,
    run_uclient,
    turnutils_peer,
    write_config,
)

import pyturn

pytestmark = pytest.mark.interop

SECRET = "first-secret-5c1f"
ROTATED = "second-secret-9a0e"
RELOAD_TIMEOUT = 5.0
UCLIENT_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PyturnProcess, int, Path]]:
    """pyturn with AuthSharedSecretFile (one secret) and AuthSharedSecret (another), plus a turnutils_peer."""
    directory: Path = tmp_path_factory.mktemp("shared-secret")
    secret_file = directory / "turn-secrets"
    secret_file.write_text(f"# managed by the test\n{SECRET}\n")
    port = free_port()
    peer_port = free_udp_port_pair()
    config = write_config(directory, port, extra={"AuthSharedSecretFile": secret_file, "AuthSharedSecret": ROTATED})
    with turnutils_peer(peer_port), pyturn_process(config, port) as server:
        yield server, peer_port, secret_file


async def _allocate(server: PyturnProcess, username: str, password: str) -> tuple[str, int]:
    with MiniTurnClient((LOOPBACK, server.port), username, password) as client:
        relayed = await client.allocate()
        await client.refresh(0)
        return relayed


async def _eventually_allocates(server: PyturnProcess, username: str, password: str) -> tuple[str, int]:
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        try:
            return await _allocate(server, username, password)
        except TurnRequestFailed as failure:
            if failure.code != 401 or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("secret", [SECRET, ROTATED], ids=["secret-from-file", "secret-from-config"])
def test_interop_shared_secret_uclient_relays_with_zero_loss(
    secret_server: tuple[PyturnProcess, int, Path], secret: str
) -> None:
    server, peer_port, _ = secret_server
    report = run_uclient([
        "-e", LOOPBACK, "-r", str(peer_port), "-u", "uclient", "-W", secret, "-p", str(server.port),
        "-n", "500", "-m", "4", "-l", "170", LOOPBACK,
    ], timeout=UCLIENT_TIMEOUT)
    assert (report.sent, report.received, report.lost) == (2000, 2000, 0), report.output[-3000:]
    assert report.send_dropped == 0


def test_interop_shared_secret_uclient_with_a_wrong_secret_relays_nothing(
    secret_server: tuple[PyturnProcess, int, Path],
) -> None:
    server, peer_port, _ = secret_server
    with pytest.raises(AssertionError):  # no final report: every Allocate was refused
        run_uclient(["-e", LOOPBACK, "-r", str(peer_port), "-u", "uclient", "-W", "not-the-secret",
                     "-p", str(server.port), "-n", "10", "-m", "1", "-l", "170", LOOPBACK], timeout=UCLIENT_TIMEOUT)


async def test_interop_shared_secret_expired_username_gets_401_and_is_logged(
    secret_server: tuple[PyturnProcess, int, Path],
) -> None:
    server, _, _ = secret_server
    username, password = pyturn.rest_credentials(SECRET, "late", ttl=60, now=time.time() - 3600)
    with pytest.raises(TurnRequestFailed) as refused:
        await _allocate(server, username, password)
    assert refused.value.code == 401
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while "expired credentials" not in server.log():
        assert time.monotonic() < deadline, server.log()
        await asyncio.sleep(0.05)
    assert username in server.log()
    assert SECRET not in server.log() and password not in server.log()


async def test_interop_shared_secret_library_helper_credentials_allocate(
    secret_server: tuple[PyturnProcess, int, Path],
) -> None:
    server, _, _ = secret_server
    for secret in (SECRET, ROTATED):
        relayed = await _allocate(server, *pyturn.rest_credentials(secret, "helper", ttl=300))
        assert relayed[0] == LOOPBACK


async def test_interop_shared_secret_sighup_swaps_the_secret_file_and_a_bad_file_keeps_it(tmp_path: Path) -> None:
    secret_file = tmp_path / "turn-secrets"
    secret_file.write_text(f"{SECRET}\n")
    port = free_port()
    config = write_config(tmp_path, port, extra={"AuthSharedSecretFile": secret_file})
    with pyturn_process(config, port) as server:
        old = pyturn.rest_credentials(SECRET, "old", ttl=300)
        new = pyturn.rest_credentials(ROTATED, "new", ttl=300)
        assert (await _allocate(server, *old))[0] == LOOPBACK
        with pytest.raises(TurnRequestFailed):
            await _allocate(server, *new)

        secret_file.write_text(f"{ROTATED}\n")
        server.signal(signal.SIGHUP)
        assert (await _eventually_allocates(server, *new))[0] == LOOPBACK
        with pytest.raises(TurnRequestFailed) as refused:
            await _allocate(server, *old)
        assert refused.value.code == 401

        secret_file.write_text("# every secret removed by mistake\n\n")
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while "old secrets stay in force" not in server.log():
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.05)
        assert (await _allocate(server, *new))[0] == LOOPBACK
        assert server.process.poll() is None
        log = server.log()
        assert "loaded 1 shared secrets" in log
        assert SECRET not in log and ROTATED not in log


async def test_interop_shared_secret_only_config_needs_no_user_file(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, extra={"UserDatabaseFile": "", "AuthSharedSecret": SECRET})
    with pyturn_process(config, port) as server:
        assert (await _allocate(server, *pyturn.rest_credentials(SECRET)))[0] == LOOPBACK
        with pytest.raises(TurnRequestFailed):
            await _allocate(server, "alice", "wonderland")  # the users.txt beside it is not read


def test_interop_shared_secret_check_config_masks_the_secrets(tmp_path: Path) -> None:
    secret_file = tmp_path / "turn-secrets"
    secret_file.write_text(f"{ROTATED}\n")
    config = write_config(tmp_path, free_port(), extra={"AuthSharedSecret": f"{SECRET}, other",
                                                        "AuthSharedSecretFile": secret_file})
    completed = run_pyturn_cli(str(config), "--check-config")
    assert completed.returncode == 0, completed.stderr
    assert "AuthSharedSecret = ****\n" in completed.stdout
    assert f"AuthSharedSecretFile = {secret_file}\n" in completed.stdout
    assert "AuthSharedSecretSeparator = :\n" in completed.stdout
    assert SECRET not in completed.stdout + completed.stderr and ROTATED not in completed.stdout


def test_interop_shared_secret_empty_secret_file_stops_start_up(tmp_path: Path) -> None:
    secret_file = tmp_path / "turn-secrets"
    secret_file.write_text("\n")
    config = write_config(tmp_path, free_port(), extra={"AuthSharedSecretFile": secret_file})
    completed = run_pyturn_cli(str(config))
    assert completed.returncode == 78, completed.stdout + completed.stderr
    assert "holds no secret" in completed.stdout + completed.stderr


async def test_interop_shared_secret_file_change_is_picked_up_by_the_mtime_poll(tmp_path: Path) -> None:
    from pyturn.server import Server, loopback_config

    secret_file = tmp_path / "turn-secrets"
    secret_file.write_text(f"{SECRET}\n")
    config = loopback_config(auth_shared_secret_file=str(secret_file), user_database_check_interval=1)
    async with Server(config, transports=("udp",)) as server:
        address = server.addresses["udp"][0]
        with MiniTurnClient(address, *pyturn.rest_credentials(SECRET, ttl=300)) as client:
            await client.allocate()
        secret_file.write_text(f"{ROTATED}\n")
        stamp = time.time() + 5  # a distinct mtime even on a coarse-grained file system
        os.utime(secret_file, (stamp, stamp))
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            try:
                with MiniTurnClient(address, *pyturn.rest_credentials(ROTATED, ttl=300)) as client:
                    await client.allocate()
                break
            except TurnRequestFailed:
                assert time.monotonic() < deadline, "the new secret file was not picked up"
                await asyncio.sleep(0.1)
        with pytest.raises(TurnRequestFailed), MiniTurnClient(address, *pyturn.rest_credentials(SECRET)) as client:
            await client.allocate()
