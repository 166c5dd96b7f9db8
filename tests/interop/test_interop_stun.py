"""STUN Binding against pyturn as a subprocess, with independent clients (aioice, coturn, the classic stun client)."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    PyturnProcess,
    free_port,
    free_udp_port_pair,
    python_module_available,
    pyturn_process,
    require_tool,
    run_pyturn_cli,
    run_uclient,
    stop_process,
    turnutils_peer,
    wait_for_binding,
    write_config,
)

import pyturn

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "conf" / "reTurnServer.config"


class _StunSender(asyncio.DatagramProtocol):
    """Carries aioice's own STUN Transaction (retransmissions and all) over a datagram endpoint."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.transaction: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # selector transports skip the ABC

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from aioice import stun

        message = stun.parse_message(data)
        if self.transaction is not None:
            self.transaction.response_received(message, addr)  # type: ignore[attr-defined]

    def send_stun(self, message: object, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)  # type: ignore[call-overload]


async def test_interop_aioice_binding_gets_xor_mapped_address(pyturn_subprocess: PyturnProcess) -> None:
    python_module_available("aioice")
    from aioice import stun

    loop = asyncio.get_running_loop()
    transport, sender = await loop.create_datagram_endpoint(_StunSender, local_addr=(LOOPBACK, 0))
    try:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        transaction = stun.Transaction(request, (LOOPBACK, pyturn_subprocess.port), sender, retransmissions=3)
        sender.transaction = transaction
        response, source = await asyncio.wait_for(transaction.run(), 5.0)
        local = transport.get_extra_info("sockname")
    finally:
        transport.close()
    assert response.message_class == stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == (LOOPBACK, local[1])
    assert source == (LOOPBACK, pyturn_subprocess.port)


def test_interop_turnutils_stunclient_prints_reflexive_address(pyturn_subprocess: PyturnProcess) -> None:
    tool = require_tool("turnutils_stunclient")
    result = subprocess.run([tool, "-p", str(pyturn_subprocess.port), LOOPBACK], capture_output=True, text=True,
                            timeout=20)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", output), output


def test_interop_classic_stun_client_reports_open(pyturn_subprocess: PyturnProcess) -> None:
    # Debian's stun-client 0.97 takes host[:port]; its -p option is the local (source) port.
    tool = require_tool("stun")
    result = subprocess.run([tool, f"{LOOPBACK}:{pyturn_subprocess.port}"], capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert "could not reach" not in output, output
    assert "Primary: Open" in output, output


def test_interop_demo_config_answers_binding_within_one_second(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pyturn", "-c", str(DEMO_CONFIG), f"--TurnPort={port}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for_binding(LOOPBACK, port, timeout=5.0, process=process)
        elapsed = time.monotonic() - started
    finally:
        stop_process(process)
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    assert elapsed < 1.0, f"first Binding answered {elapsed:.2f} s after exec\n{output}"
    assert process.returncode == 0, output


def test_interop_readme_demo_uclient_example_relays_without_loss(tmp_path: Path) -> None:
    # The README's "Try it with coturn's client tools" lines, against the demo configuration as shipped.
    for name in ("reTurnServer.config", "users.txt"):  # a copy: the server's log goes beside its config
        shutil.copy(DEMO_CONFIG.parent / name, tmp_path / name)
    port, peer_port = free_port(), free_udp_port_pair()
    demo = tmp_path / "reTurnServer.config"
    with turnutils_peer(peer_port), pyturn_process(demo, port, f"--TurnPort={port}", cwd=tmp_path):
        report = run_uclient(["-e", LOOPBACK, "-r", str(peer_port), "-u", "test", "-w", "1234", "-n", "100",
                              "-p", str(port), LOOPBACK], timeout=60)
    assert report.sent == report.received > 0, report.output[-3000:]
    assert report.lost == 0, report.output[-3000:]


def test_interop_second_server_on_same_port_fails_to_start(pyturn_subprocess: PyturnProcess, tmp_path: Path) -> None:
    other = tmp_path / "second"
    other.mkdir()
    config = write_config(other, pyturn_subprocess.port)
    result = run_pyturn_cli("-c", str(config), cwd=other)
    assert result.returncode == 71, result.stdout + result.stderr


def test_interop_server_refuses_udp_port_held_with_reuseaddr(tmp_path: Path) -> None:
    # Linux lets two UDP sockets that both set SO_REUSEADDR share a port; the newer one then gets the datagrams.
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((LOOPBACK, port))
        config = write_config(tmp_path, port)
        result = run_pyturn_cli("-c", str(config), cwd=tmp_path, timeout=5.0)  # a server that starts hangs here
    assert result.returncode == 71, result.stdout + result.stderr


def test_interop_check_config_prints_keys_and_exits_zero(tmp_path: Path) -> None:
    config = write_config(tmp_path, 3478)
    result = run_pyturn_cli("-c", str(config), "--check-config", "--TurnPort=3479")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^TurnPort = 3479$", result.stdout, re.M), result.stdout
    assert re.search(r"^TurnAddress = 127\.0\.0\.1$", result.stdout, re.M), result.stdout
    assert re.search(r"^UserDatabaseFile = ", result.stdout, re.M), result.stdout


@pytest.mark.parametrize(
    ("line", "value"),
    [(2, "TurnPort = notanumber"), (3, "AllowedPeerAddresses = 10.0.0.0/33"), (2, "no equals sign here")],
    ids=["bad-port", "bad-network", "no-equals"],
)
def test_interop_broken_config_exits_nonzero_with_file_and_line(tmp_path: Path, line: int, value: str) -> None:
    config = tmp_path / "broken.config"
    lines = ["TurnAddress = 127.0.0.1", "TurnPort = 3478", "UserDatabaseFile = users.txt"]
    lines[line - 1] = value
    config.write_text("\n".join(lines) + "\n")
    (tmp_path / "users.txt").write_text("alice:pw:reTurn:authorized\n")
    result = run_pyturn_cli("-c", str(config), "--check-config")
    assert result.returncode != 0
    assert f"{config}:{line}:" in result.stderr, result.stderr


def test_interop_version_prints_version() -> None:
    result = run_pyturn_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pyturn {pyturn.__version__}"
