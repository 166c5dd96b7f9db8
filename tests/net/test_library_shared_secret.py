"""pyturn.Server(shared_secret=...) and reload_users with secrets, in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from interop import MiniTurnClient, TurnRequestFailed

import pyturn
from pyturn.core.sharedsecret import SecretFileError
from pyturn.errors import PyturnError
from pyturn.server import Server, loopback_config


async def _allocates(server: Server, username: str, password: str) -> bool:
    try:
        with MiniTurnClient(server.addresses["udp"][0], username, password) as client:
            await client.allocate()
            await client.refresh(0)
    except TurnRequestFailed as refused:
        assert refused.code == 401
        return False
    return True


async def test_library_shared_secret_beside_users_and_the_auth_failure_reason() -> None:
    failures: list[pyturn.AuthFailed] = []
    hooks = pyturn.Hooks(on_auth_failure=failures.append)
    async with Server(users={"alice": "pw"}, shared_secret=["new", b"old"], hooks=hooks,
                      transports=("udp",)) as server:
        assert await _allocates(server, "alice", "pw")
        assert await _allocates(server, *pyturn.rest_credentials("new", "bob"))
        assert await _allocates(server, *pyturn.rest_credentials(b"old"))
        assert not await _allocates(server, *pyturn.rest_credentials("new", "bob", ttl=10, now=1_000_000))
        assert [failure.reason for failure in failures] == ["expired_credentials"]
        assert server.relayed_bytes().to_peer == 0


async def test_library_reload_keeps_secrets_and_rereads_the_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text("first\n")
    config = loopback_config(auth_shared_secret_file=str(secret_file), auth_shared_secret=("inline",))
    async with Server(config, users={"alice": "pw"}, transports=("udp",)) as server:
        secret_file.write_text("second\n")
        result = server.reload_users()
        assert result.loaded and result.secrets == 2
        assert await _allocates(server, *pyturn.rest_credentials("second"))
        assert await _allocates(server, *pyturn.rest_credentials("inline"))
        assert not await _allocates(server, *pyturn.rest_credentials("first"))
        secret_file.write_text("")
        failed = server.reload_users()
        assert not failed.loaded and failed.secrets == 2 and "holds no secret" in failed.problems[0]
        assert await _allocates(server, *pyturn.rest_credentials("second"))
        assert await _allocates(server, "alice", "pw")  # users given in code are untouched by the file reload


def test_library_without_users_or_secrets_is_refused() -> None:
    with pytest.raises(PyturnError, match="shared_secret"):
        Server()


def test_library_empty_secret_file_is_refused_at_construction(tmp_path: Path) -> None:
    (tmp_path / "turn-secret").write_text("# nothing\n")
    with pytest.raises(SecretFileError):
        Server(loopback_config(auth_shared_secret_file=str(tmp_path / "turn-secret")))


def test_library_ice_servers_with_rest_credentials() -> None:
    server = Server(shared_secret="s")
    username, password = pyturn.rest_credentials("s", "carol")
    assert server.ice_servers(username, password) == [{"urls": [], "username": username, "credential": password}]


async def test_library_expired_credentials_log_is_throttled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="pyturn")
    async with Server(shared_secret="s", transports=("udp",)) as server:
        stale = pyturn.rest_credentials("s", "late", ttl=10, now=1_000_000)
        for _ in range(20):
            assert not await _allocates(server, *stale)
    lines = [record.getMessage() for record in caplog.records if "expired credentials" in record.getMessage()]
    assert len(lines) == 1 and stale[0] in lines[0]
    assert all(stale[1] not in record.getMessage() for record in caplog.records)
