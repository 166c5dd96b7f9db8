"""The metrics endpoint of the pyturn command: `pyturn status`, and Workers = N reporting the sum of all workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    MiniTurnClient,
    free_port,
    pyturn_process,
    run_pyturn_cli,
    start_echo_peer,
    write_config,
)
from metricsclient import free_tcp_port, http_get, receive_payloads, scrape, value

from pyturn.ops.daemon import EXIT_CONFIG, EXIT_OK

RELAY_LOW = 47000
RELAY_HIGH = 47999
SLICES = ((47000, 47499), (47500, 47999))  # pyturn.ops.workers.port_slices for two workers, written out
CLIENT_ATTEMPTS = 60
READY_TIMEOUT = 10.0
EXIT_UNAVAILABLE = 69

pytestmark = pytest.mark.interop


def slice_of(port: int) -> int:
    return 0 if port <= SLICES[0][1] else 1


def wait_ready(address: tuple[str, int], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_get(address, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the metrics endpoint never became ready"
        time.sleep(0.1)


def test_status_summarises_a_running_server(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_tcp_port()
    config = write_config(tmp_path, port, extra={"MetricsPort": metrics_port})
    with pyturn_process(config, port):
        wait_ready((LOOPBACK, metrics_port))
        result = run_pyturn_cli("status", "-c", str(config), "--interval", "0.2")
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"pyturn at http://127.0.0.1:{metrics_port}: ready"
    assert any(line.startswith("allocations  0 now") for line in lines), result.stdout
    assert any("client->peer: 0 packets" in line and "bit/s" in line for line in lines), result.stdout
    assert any(line.startswith("users        1 loaded") for line in lines), result.stdout
    # Nobody listening any more: 69; MetricsPort = 0: a configuration error, 78.
    gone = run_pyturn_cli("status", "-c", str(config), "--interval", "0")
    assert gone.returncode == EXIT_UNAVAILABLE and "no answer" in gone.stderr
    off = write_config(tmp_path, port, name="off.config")
    assert run_pyturn_cli("status", str(off)).returncode == EXIT_CONFIG
    assert run_pyturn_cli("status", "--interval", "x").returncode == 64


async def test_workers_metrics_report_the_sum_of_all_workers(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_tcp_port()
    address = (LOOPBACK, metrics_port)
    config = write_config(tmp_path, port, extra={
        "Workers": 2, "AllocationPortRangeMin": RELAY_LOW, "AllocationPortRangeMax": RELAY_HIGH,
        "MetricsPort": metrics_port,
    })
    transport, _ = await start_echo_peer()
    peer = transport.get_extra_info("sockname")[:2]
    kept: dict[int, MiniTurnClient] = {}
    created = 0
    with pyturn_process(config, port):
        await asyncio.to_thread(wait_ready, address)
        try:
            for _ in range(CLIENT_ATTEMPTS):
                client = MiniTurnClient((LOOPBACK, port))
                relayed = (await client.allocate())[1]
                created += 1
                if slice_of(relayed) in kept:
                    await client.refresh(0)
                    client.close()
                    continue
                kept[slice_of(relayed)] = client
                if len(kept) == 2:
                    break
            assert len(kept) == 2, "the kernel never hashed a client to the second worker"
            for client in kept.values():  # 3 Send indications of 50 bytes through each worker, echoed back
                await client.create_permission(peer)
                for index in range(3):
                    await client.send_indication(peer, bytes([index]) * 50)
                assert len(await receive_payloads(client, 3)) == 3
            series = await scrape(address)
            status = await asyncio.to_thread(run_pyturn_cli, "status", "-c", str(config), "--interval", "0")
        finally:
            for client in kept.values():
                client.close()
            transport.close()
    assert value(series, "pyturn_workers") == 2
    assert value(series, "pyturn_workers_reporting") == 2
    assert value(series, "pyturn_ready") == 2
    assert value(series, "pyturn_allocations", transport="udp", family="ipv4") == 2
    assert value(series, "pyturn_allocations_created_total", transport="udp", family="ipv4") == created
    assert value(series, "pyturn_relay_ports", state="used") == 2
    assert value(series, "pyturn_relay_ports", state="free") == 1000 - 2  # both slices: the whole range
    for direction in ("client_to_peer", "peer_to_client"):
        assert value(series, "pyturn_relayed_packets_total", direction=direction, transport="udp") == 6
        assert value(series, "pyturn_relayed_bytes_total", direction=direction, transport="udp") == 300
    assert value(series, "pyturn_requests_total", method="create_permission") == 2
    assert status.returncode == EXIT_OK, status.stderr
    assert "workers      2 of 2 reporting, 2 ready" in status.stdout


def test_workers_metrics_survive_the_restart_of_either_worker(tmp_path: Path) -> None:
    """The master keeps the metrics socket and the socketpairs, so a restarted worker 0 serves the sum again and
    a restarted worker 1 answers worker 0 again."""
    port, metrics_port = free_port(), free_tcp_port()
    address = (LOOPBACK, metrics_port)
    config = write_config(tmp_path, port, extra={
        "Workers": 2, "AllocationPortRangeMin": RELAY_LOW, "AllocationPortRangeMax": RELAY_HIGH,
        "MetricsPort": metrics_port,
    })
    pattern = re.compile(r"worker (\d+) started \(pid (\d+),")
    with pyturn_process(config, port) as server:
        wait_ready(address)
        for index in (1, 0):
            pids = {int(worker): int(pid) for worker, pid in pattern.findall(server.log())}
            os.kill(pids[index], signal.SIGKILL)
            deadline = time.monotonic() + READY_TIMEOUT
            while {int(w): int(p) for w, p in pattern.findall(server.log())}[index] == pids[index]:
                assert time.monotonic() < deadline, f"worker {index} was not restarted"
                time.sleep(0.05)
            wait_ready(address)
            series = asyncio.run(scrape(address))
            assert value(series, "pyturn_workers_reporting") == 2
            assert value(series, "pyturn_relay_ports", state="free") == 1000
