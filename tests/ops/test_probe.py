"""`python -m pyturn.probe`: one Binding request, the mapped address printed, exit 0 only on success."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyturn.ops.probe import ProbeError, format_address, probe_udp
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Attr, MessageClass, error_response

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyturn.probe", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("probe")
    (folder / "users.txt").write_text("test:1234:reTurn:authorized\n")
    config = folder / "reTurnServer.config"
    config.write_text(
        "TurnAddress = 127.0.0.1\nTurnV6Address = ::1\nTurnPort = 0\nTlsTurnPort = 0\n"
        f"UserDatabaseFile = {folder / 'users.txt'}\nLoggingType = file\nLogFilename = {folder / 'log'}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "pyturn", str(config)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while (match := re.search(r"serving udp 127\.0\.0\.1:(\d+)", _read(folder / "log"))) is None:
            assert process.poll() is None and time.monotonic() < deadline, _read(folder / "log")
            time.sleep(0.02)
        yield int(match.group(1))
        process.send_signal(signal.SIGTERM)
        process.wait(5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("transport", [[], ["--tcp"]], ids=["udp", "tcp"])
def test_probe_running_server_prints_mapped_address(server_port: int, transport: list[str]) -> None:
    result = probe(*transport, "-t", "5", "127.0.0.1", str(server_port))
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"127\.0\.0\.1:\d+\n", result.stdout)


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("transport", [[], ["--tcp"]], ids=["udp", "tcp"])
def test_probe_closed_port_exits_non_zero(transport: list[str]) -> None:
    kind = socket.SOCK_STREAM if transport else socket.SOCK_DGRAM
    result = probe(*transport, "-t", "1", "127.0.0.1", str(free_port(kind)))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("probe: ")


def test_probe_silent_port_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        began = time.monotonic()
        result = probe("-t", "0.7", "127.0.0.1", str(silent.getsockname()[1]))
        elapsed = time.monotonic() - began
        requests = 0
        silent.settimeout(0)
        try:
            while silent.recv(2048):
                requests += 1
        except BlockingIOError:
            pass
    assert result.returncode == 1
    assert "within 0.7 s" in result.stderr
    assert elapsed < 5
    assert requests >= 2  # retransmitted (RFC 8489 §6.2.1)


@pytest.mark.parametrize("arguments", [["127.0.0.1", "0"], ["-t", "0", "127.0.0.1"], []],
                         ids=["port", "timeout", "host"])
def test_probe_bad_arguments_exit_2(arguments: list[str]) -> None:
    assert probe(*arguments).returncode == 2


def test_probe_error_response_is_a_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        fake.settimeout(5)

        def answer() -> None:
            data, sender = fake.recvfrom(2048)
            request = decode_message(data)
            fake.sendto(encode_message(error_response(request, 500, "Server Error")), sender)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(ProbeError, match="500 Server Error"):
            probe_udp("127.0.0.1", fake.getsockname()[1], timeout=5)
        thread.join(5)


def test_probe_ignores_foreign_datagrams() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        fake.settimeout(5)

        def answer() -> None:
            data, sender = fake.recvfrom(2048)
            request = decode_message(data)
            fake.sendto(b"not stun at all, just noise", sender)
            other = decode_message(data)
            other.transaction_id = bytes(12)
            fake.sendto(encode_message(other), sender)
            response = decode_message(data)
            response.msg_class = MessageClass.SUCCESS
            response.attributes = [(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.7", 4242))]
            assert response.transaction_id == request.transaction_id
            fake.sendto(encode_message(response), sender)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        assert probe_udp("127.0.0.1", fake.getsockname()[1], timeout=5) == ("192.0.2.7", 4242)
        thread.join(5)


@pytest.mark.parametrize(("address", "text"), [(("192.0.2.1", 80), "192.0.2.1:80"), (("::1", 3478), "[::1]:3478")],
                         ids=["ipv4", "ipv6"])
def test_probe_format_address(address: tuple[str, int], text: str) -> None:
    assert format_address(address) == text
