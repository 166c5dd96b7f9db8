"""Drain and redirection on loopback: two in-process servers sharing a NonceSecretFile, and the pyturn command
drained by `pyturn drain` (SIGUSR1 through the PidFile), by SIGUSR1 with Workers = 2, and cut short by SIGTERM.

127.0.0.1 and 127.0.0.2 are both loopback on Linux; the deployment-shaped version with two addresses in a network
namespace is tests/deploy/test_deploy_scaling.py.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    PASSWORD,
    USERNAME,
    MiniTurnClient,
    TurnRequestFailed,
    free_port,
    run_pyturn_cli,
    start_echo_peer,
    stop_process,
    wait_for_binding,
    write_config,
)
from metricsclient import free_tcp_port, http_get

from pyturn.server import Server, loopback_config
from pyturn.wire.message import Attr, Method

SECOND = "127.0.0.2"
SECRET = "a nonce secret both instances share\n"
EXIT_WAIT = 15.0


def _second_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((SECOND, 0))
    except OSError:
        return False
    return True


def _free_udp(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Server, Server]]:
    (tmp_path / "nonce.secret").write_text(SECRET)
    second_port = _free_udp(SECOND)
    shared = str(tmp_path / "nonce.secret")
    first = Server(loopback_config(alternate_servers=((SECOND, second_port),), nonce_secret_file=shared),
                   users={USERNAME: PASSWORD}, transports=("udp",))
    second = Server(loopback_config(turn_address=SECOND, turn_port=second_port,
                                    alternate_servers=((LOOPBACK, 9),), nonce_secret_file=shared),
                    users={USERNAME: PASSWORD}, transports=("udp",))
    async with first, second:
        await first.start_metrics(LOOPBACK, 0)
        yield first, second


@pytest.mark.requires(_second_loopback(), "127.0.0.2 is not a local address here")
async def test_draining_server_redirects_and_old_allocation_keeps_flowing(pair: tuple[Server, Server]) -> None:
    first, second = pair
    transport, echo = await start_echo_peer()
    peer = transport.get_extra_info("sockname")[:2]
    try:
        with MiniTurnClient(first.addresses["udp"][0]) as old, MiniTurnClient(first.addresses["udp"][0]) as new:
            await old.allocate(lifetime=600)
            await old.create_permission(peer)
            assert first.metrics is not None
            assert (await asyncio.to_thread(http_get, first.metrics.address, "/readyz"))[0] == 200
            first.drain()
            assert (await asyncio.to_thread(http_get, first.metrics.address, "/readyz"))[0] == 503
            assert (await asyncio.to_thread(http_get, first.metrics.address, "/healthz"))[0] == 200
            # A new client is sent to the second instance and needs no new 401 there (shared nonce secret).
            relayed = await new.allocate(follow_redirect=True)
            assert new.redirected_from == first.addresses["udp"][0]
            assert new.server == second.addresses["udp"][0]
            assert new.challenges == 1  # the first 401 at instance 1 only
            assert relayed[0] == SECOND and second.allocation_count() == 1
            # The old allocation on the draining instance refreshes and relays.
            assert await old.refresh(600) == 600
            await old.send_indication(peer, b"still flowing")
            data = await old.receive(2.0)
            assert b"still flowing" in data
            assert not await first.wait_drained(0.2)
            assert await old.refresh(0) == 0
            assert await first.wait_drained(2.0)
    finally:
        transport.close()
    assert echo.seen


@pytest.mark.requires(_second_loopback(), "127.0.0.2 is not a local address here")
async def test_redirected_client_is_not_redirected_back(pair: tuple[Server, Server]) -> None:
    first, second = pair
    first.drain()
    second.drain()  # second's own alternate is instance 1 (127.0.0.1:9 here): the loop guard answers 508
    with MiniTurnClient(first.addresses["udp"][0]) as client, pytest.raises(TurnRequestFailed) as refused:
        await client.allocate(follow_redirect=True)
    assert refused.value.code == 508
    assert client.redirected_from == first.addresses["udp"][0]
    assert not refused.value.response.has(Attr.ALTERNATE_SERVER)


async def test_nonce_secret_reload_keeps_the_old_secret_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "nonce.secret"
    path.write_text(SECRET)
    async with Server(loopback_config(nonce_secret_file=str(path)), users={USERNAME: PASSWORD},
                      transports=("udp",)) as server:
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            await client.allocate()
            path.write_text("short\n")
            assert not server.reload_nonce_secret()
            await client.request(Method.CREATE_PERMISSION, (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9)))
            assert client.challenges == 1  # the nonce signed with the kept secret is still fresh
            path.write_text("an entirely different shared secret\n")
            assert server.reload_nonce_secret()
            await client.request(Method.CREATE_PERMISSION, (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9)))
            assert client.challenges == 2  # 438: the old secret is no longer accepted


def _start(config: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(config.parent / f"pyturn-{port}.log", "wb")  # noqa: SIM115  # closed with the process
    process = subprocess.Popen([sys.executable, "-m", "pyturn", "-c", str(config)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=config.parent)
    log.close()
    try:
        wait_for_binding(LOOPBACK, port, 10.0, process)
    except AssertionError:
        stop_process(process)
        raise AssertionError((config.parent / f"pyturn-{port}.log").read_text()) from None
    return process


def _wait_exit(process: subprocess.Popen[bytes], timeout: float = EXIT_WAIT) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        raise AssertionError(f"pyturn did not exit within {timeout} s") from None


@pytest.mark.interop
async def test_pyturn_drain_command_exits_0_after_the_last_allocation(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_tcp_port()
    config = write_config(tmp_path, port, extra={"MetricsPort": metrics_port, "PidFile": tmp_path / "pyturn.pid"})
    process = _start(config, port)
    try:
        with MiniTurnClient((LOOPBACK, port)) as old, MiniTurnClient((LOOPBACK, port)) as new:
            await old.allocate(lifetime=600)
            drained = await asyncio.to_thread(run_pyturn_cli, "drain", "-c", str(config))
            assert drained.returncode == 0, drained.stderr
            assert "draining" in drained.stdout
            deadline = time.monotonic() + 5
            while (await asyncio.to_thread(http_get, (LOOPBACK, metrics_port), "/readyz"))[0] != 503:
                assert time.monotonic() < deadline, "/readyz never turned 503"
                await asyncio.sleep(0.05)
            with pytest.raises(TurnRequestFailed) as refused:
                await new.allocate()  # no AlternateServers: 508
            assert refused.value.code == 508
            assert await old.refresh(600) == 600
            assert process.poll() is None
            assert await old.refresh(0) == 0
        assert await asyncio.to_thread(_wait_exit, process) == 0
    finally:
        stop_process(process)
    assert "drained" in (tmp_path / f"pyturn-{port}.log").read_text()


@pytest.mark.interop
async def test_drain_timeout_ends_the_drain_with_exit_0(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, extra={"DrainTimeout": 1})
    process = _start(config, port)
    try:
        with MiniTurnClient((LOOPBACK, port)) as client:
            await client.allocate(lifetime=600)
            started = time.monotonic()
            process.send_signal(signal.SIGUSR1)
            assert await asyncio.to_thread(_wait_exit, process) == 0
            assert 0.9 <= time.monotonic() - started < 10
    finally:
        stop_process(process)
    assert "DrainTimeout (1 s) reached with 1 allocations left" in (tmp_path / f"pyturn-{port}.log").read_text()


@pytest.mark.interop
async def test_sigterm_during_a_drain_stops_at_once(tmp_path: Path) -> None:
    port = free_port()
    process = _start(write_config(tmp_path, port), port)
    try:
        with MiniTurnClient((LOOPBACK, port)) as client:
            await client.allocate(lifetime=600)
            process.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.3)
            assert process.poll() is None  # still draining: one allocation left
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(_wait_exit, process) == 0
            assert time.monotonic() - started < 5
    finally:
        stop_process(process)


@pytest.mark.interop
def test_workers_master_forwards_sigusr1_and_exits_when_all_workers_have(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, extra={"Workers": 2, "AllocationPortRangeMin": 47000,
                                                 "AllocationPortRangeMax": 47999})
    process = _start(config, port)
    try:
        process.send_signal(signal.SIGUSR1)
        assert _wait_exit(process) == 0
    finally:
        stop_process(process)
    log = (tmp_path / f"pyturn-{port}.log").read_text()
    assert "draining 2 workers" in log and "every worker has exited" in log
    assert "restarting" not in log


def test_drain_command_errors(tmp_path: Path) -> None:
    port = free_port()
    no_pid = write_config(tmp_path, port)
    assert run_pyturn_cli("drain", "-c", str(no_pid)).returncode == 78
    stale = write_config(tmp_path, port, extra={"PidFile": tmp_path / "gone.pid"}, name="stale.config")
    (tmp_path / "gone.pid").write_text("999999\n")
    result = run_pyturn_cli("drain", "-c", str(stale))
    assert result.returncode == 1 and "no running pyturn" in result.stderr
    missing = write_config(tmp_path, port, extra={"PidFile": tmp_path / "none.pid"}, name="missing.config")
    assert run_pyturn_cli("drain", "-c", str(missing)).returncode == 66


@pytest.mark.requires(_second_loopback(), "127.0.0.2 is not a local address here")
async def test_capacity_redirects_max_allocations_and_bitrate(tmp_path: Path) -> None:
    alternate = (SECOND, _free_udp(SECOND))  # nothing needs to listen there: the client only reads the 300
    config = loopback_config(alternate_servers=(alternate,), max_allocations=2, max_relayed_bitrate=80_000)
    transport, _ = await start_echo_peer()
    peer = transport.get_extra_info("sockname")[:2]
    try:
        async with Server(config, users={USERNAME: PASSWORD}, transports=("udp",)) as server:
            target = server.addresses["udp"][0]
            with MiniTurnClient(target) as busy, MiniTurnClient(target) as other, MiniTurnClient(target) as third:
                await busy.allocate()
                await busy.create_permission(peer)
                async def stream() -> None:  # 1000 bytes every 10 ms each way: ~1.6 Mbit/s, over 80 kbit/s
                    while True:
                        await busy.send_indication(peer, b"x" * 1000)
                        await asyncio.sleep(0.01)

                sender = asyncio.create_task(stream())
                try:
                    await asyncio.sleep(2.2)  # the bitrate is measured once a tick (1 s)
                    with pytest.raises(TurnRequestFailed) as redirected:
                        await other.allocate()
                finally:
                    sender.cancel()
                assert redirected.value.code == 300
                assert redirected.value.response.get(Attr.ALTERNATE_SERVER) == alternate
                await asyncio.sleep(2.2)  # quiet ticks: accepted again
                await other.allocate()
                with pytest.raises(TurnRequestFailed) as full:
                    await third.allocate()  # MaxAllocations = 2 reached
                assert full.value.code == 300
                assert full.value.response.get(Attr.ALTERNATE_SERVER) == alternate
    finally:
        transport.close()
