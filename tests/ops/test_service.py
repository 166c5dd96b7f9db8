"""pyturn as a service: PID file, exit codes, signals, RunAsUser, Daemonize, sd_notify, the systemd unit.

Integration tests start `python -m pyturn` in a subprocess on 127.0.0.1 with an ephemeral port and bound
every wait.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from requirements import require

from pyturn.ops import daemon as service
from pyturn.ops.daemon import AlreadyRunning, PidFile, ServiceError, resolve_identity, sd_notify

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
SERVING = re.compile(r"serving udp 127\.0\.0\.1:(\d+)")


def write_config(tmp_path: Path, **keys: object) -> Path:
    users = tmp_path / "users.txt"
    users.write_text("test:1234:reTurn:authorized\n")
    settings: dict[str, object] = {
        "TurnAddress": "127.0.0.1",
        "TurnV6Address": "::1",
        "TurnPort": 0,
        "TlsTurnPort": 0,
        "UserDatabaseFile": str(users),
        "UserDatabaseCheckInterval": 0,
        "LoggingType": "cerr",
        "LogLevel": "INFO",
    }
    settings.update(keys)
    path = tmp_path / "reTurnServer.config"
    path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
    return path


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Pyturn:
    """`python -m pyturn CONFIG` with stderr collected by a thread."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyturn", str(config), *args],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_serving(self) -> int:
        """The UDP port, once the server logged that it is serving."""
        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"pyturn exited with {self.process.returncode}:\n{self.output}")
            return SERVING.search(self.output) is not None
        wait_for(serving, START_TIMEOUT, "pyturn to serve")
        match = SERVING.search(self.output)
        assert match is not None
        return int(match.group(1))

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def servers() -> Iterator[list[Pyturn]]:
    started: list[Pyturn] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def start(servers: list[Pyturn]) -> Callable[..., Pyturn]:
    def starter(config: Path, *args: str, env: dict[str, str] | None = None) -> Pyturn:
        server = Pyturn(config, *args, env=env)
        servers.append(server)
        return server
    return starter


def run_pyturn(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyturn", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=START_TIMEOUT)


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def status_ids(pid: int) -> dict[str, list[int]]:
    ids = {}
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            name, _, value = line.partition(":")
            if name in ("Uid", "Gid", "Groups"):
                ids[name] = [int(number) for number in value.split()]
    return ids


# ------------------------------------------------------------------------------------------ exit codes


def test_service_sigterm_exits_zero_within_two_seconds(tmp_path: Path, start: Callable[..., Pyturn]) -> None:
    server = start(write_config(tmp_path))
    server.wait_serving()
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(5) == 0
    assert time.monotonic() - began < 2.0
    assert "stopping" in server.output


def test_service_sigint_exits_zero(tmp_path: Path, start: Callable[..., Pyturn]) -> None:
    server = start(write_config(tmp_path))
    server.wait_serving()
    server.process.send_signal(signal.SIGINT)
    assert server.wait_exit(5) == 0
    assert "Traceback" not in server.output


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_service_port_in_use_exits_71(tmp_path: Path, kind: socket.SocketKind) -> None:
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            busy.listen()
        port = busy.getsockname()[1]
        if kind == socket.SOCK_STREAM:  # the UDP side must be free for the server to reach the TCP bind
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    pytest.skip("the UDP port of the same number is taken")
        result = run_pyturn(write_config(tmp_path, TurnPort=port))
    assert result.returncode == service.EXIT_STARTUP, result.stderr
    assert "start-up failed" in result.stderr


def test_service_bad_config_exits_78(tmp_path: Path) -> None:
    result = run_pyturn(write_config(tmp_path, TurnPort="not-a-port"))
    assert result.returncode == service.EXIT_CONFIG


def test_service_usage_error_exits_64(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pyturn", "-c"], cwd=REPO, capture_output=True, text=True,
                            timeout=START_TIMEOUT)
    assert result.returncode == service.EXIT_USAGE


# -------------------------------------------------------------------------------------------- PID file


def test_service_pid_file_appears_and_disappears(tmp_path: Path, start: Callable[..., Pyturn]) -> None:
    pid_path = tmp_path / "pyturn.pid"
    server = start(write_config(tmp_path, PidFile=pid_path))
    server.wait_serving()
    assert pid_path.read_text() == f"{server.pid}\n"
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(5) == 0
    assert not pid_path.exists()


def test_service_second_instance_with_same_pid_file_exits_75(tmp_path: Path, start: Callable[..., Pyturn]) -> None:
    pid_path = tmp_path / "pyturn.pid"
    first = start(write_config(tmp_path, PidFile=pid_path))
    first.wait_serving()
    second = run_pyturn(tmp_path / "reTurnServer.config")
    assert second.returncode == service.EXIT_ALREADY_RUNNING
    assert "already running" in second.stderr
    assert str(first.pid) in second.stderr
    assert pid_path.read_text() == f"{first.pid}\n"  # the refused instance leaves the file alone
    assert first.process.poll() is None


def test_service_stale_pid_file_is_replaced(tmp_path: Path, start: Callable[..., Pyturn]) -> None:
    pid_path = tmp_path / "pyturn.pid"
    with subprocess.Popen(["sleep", "30"]) as other:  # alive, but not a pyturn process
        try:
            pid_path.write_text(f"{other.pid}\n")
            server = start(write_config(tmp_path, PidFile=pid_path))
            server.wait_serving()
            assert pid_path.read_text() == f"{server.pid}\n"
        finally:
            other.kill()


def test_pid_file_acquire_twice_raises_already_running(tmp_path: Path) -> None:
    path = str(tmp_path / "x.pid")
    first = PidFile.acquire(path)
    try:
        first.write()
        with pytest.raises(AlreadyRunning) as caught:
            PidFile.acquire(path)
        assert caught.value.exit_code == service.EXIT_ALREADY_RUNNING
        assert caught.value.pid == os.getpid()
    finally:
        first.release()
    assert not os.path.exists(path)
    PidFile.acquire(path).release()  # free again; never written, so nothing to remove


def test_pid_file_release_keeps_a_file_that_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    pid_file = PidFile.acquire(str(path))
    pid_file.write()
    path.write_text("1\n")
    pid_file.release()
    assert path.read_text() == "1\n"


def test_pid_file_in_missing_folder_raises_service_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        PidFile.acquire(str(tmp_path / "missing" / "x.pid"))
    assert caught.value.exit_code == service.EXIT_STARTUP


def test_pid_file_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep\n")
    (tmp_path / "x.pid").symlink_to(target)
    with pytest.raises(ServiceError):
        PidFile.acquire(str(tmp_path / "x.pid"))
    assert target.read_text() == "keep\n"


# ------------------------------------------------------------------------------------------ privileges


def test_resolve_identity_empty_group_is_primary_group() -> None:
    identity = resolve_identity("root")
    assert (identity.uid, identity.gid) == (0, 0)


@pytest.mark.parametrize(("user", "group"), [("no-such-user-pyturn", ""), ("root", "no-such-group-pyturn")],
                         ids=["user", "group"])
def test_resolve_identity_unknown_name_raises(user: str, group: str) -> None:
    with pytest.raises(ServiceError):
        resolve_identity(user, group)


def test_drop_privileges_without_user_does_nothing() -> None:
    assert service.drop_privileges("") is None


@pytest.mark.requires(os.geteuid() == 0, "needs root to switch users")
def test_service_run_as_user_drops_privileges(tmp_path: Path, start: Callable[..., Pyturn]) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    pid_path = tmp_path / "pyturn.pid"
    log_path = tmp_path / "pyturn.log"
    config = write_config(tmp_path, RunAsUser="nobody", PidFile=pid_path)
    server = start(config, "--LoggingType=file", f"--LogFilename={log_path}")
    wait_for(lambda: log_path.exists() and "serving" in log_path.read_text(), START_TIMEOUT, "serving")
    ids = status_ids(server.pid)
    assert ids["Uid"] == [nobody.pw_uid] * 4
    assert ids["Gid"] == [nobody.pw_gid] * 4
    assert 0 not in ids["Groups"]
    assert pid_path.stat().st_uid == nobody.pw_uid
    assert log_path.stat().st_uid == nobody.pw_uid
    assert "running as user nobody" in log_path.read_text()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(5) == 0
    assert not pid_path.exists() or pid_path.read_text() == ""  # the folder is root's: emptied, not removed


@pytest.mark.requires(os.geteuid() == 0, "needs root to switch users")
def test_service_run_as_unknown_user_exits_71(tmp_path: Path) -> None:
    result = run_pyturn(write_config(tmp_path, RunAsUser="no-such-user-pyturn"))
    assert result.returncode == service.EXIT_STARTUP
    assert "no such user" in result.stderr


# ------------------------------------------------------------------------------------------- Daemonize


def test_service_daemonize_forks_and_writes_pid_file(tmp_path: Path) -> None:
    pid_path = tmp_path / "pyturn.pid"
    log_path = tmp_path / "pyturn.log"
    config = write_config(tmp_path, Daemonize="true", PidFile=pid_path, LoggingType="file", LogFilename=log_path)
    started = subprocess.Popen([sys.executable, "-m", "pyturn", str(config)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = started.communicate(timeout=START_TIMEOUT)
    finally:
        if started.poll() is None:
            started.kill()
    assert started.returncode == 0, stderr
    daemon = int(pid_path.read_text())
    try:
        assert daemon != started.pid
        assert not process_gone(daemon)
        assert os.getsid(daemon) != os.getsid(0)  # a new session, no controlling terminal
        assert os.readlink(f"/proc/{daemon}/cwd") == "/"
        assert os.readlink(f"/proc/{daemon}/fd/0") == os.devnull
        assert "serving" in log_path.read_text()
        os.kill(daemon, signal.SIGTERM)
        wait_for(lambda: process_gone(daemon), 5.0, "the daemon to stop")
        wait_for(lambda: not pid_path.exists(), 5.0, "the PID file to go")
    finally:
        if not process_gone(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_service_daemonize_reports_start_up_failure(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        config = write_config(tmp_path, Daemonize="true", TurnPort=busy.getsockname()[1],
                              PidFile=tmp_path / "pyturn.pid")
        result = run_pyturn(config)
    assert result.returncode == service.EXIT_STARTUP
    assert "start-up failed" in result.stderr
    wait_for(lambda: not (tmp_path / "pyturn.pid").exists(), 5.0, "the PID file to go")


# ------------------------------------------------------------------------------------------- sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    if len(str(path)) >= 100:
        pytest.skip("tmp_path too long for an AF_UNIX socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(START_TIMEOUT)
        yield sock, str(path)


def test_service_notify_socket_gets_ready_reloading_then_stopping(
    tmp_path: Path, start: Callable[..., Pyturn], notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    server = start(write_config(tmp_path), env={"NOTIFY_SOCKET": path})
    ready = sock.recv(4096).decode().split("\n")
    assert ready[0] == "READY=1"
    assert any(line.startswith("STATUS=serving udp 127.0.0.1:") for line in ready)
    server.process.send_signal(signal.SIGHUP)
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert sock.recv(4096).decode() == "READY=1"
    server.process.send_signal(signal.SIGTERM)
    assert sock.recv(4096).decode() == "STOPPING=1"
    assert server.wait_exit(5) == 0


def test_sd_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pyturn-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1", "STATUS=x")
        assert sock.recv(100) == b"READY=1\nSTATUS=x"


def test_sd_notify_without_socket_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify("READY=1")


# -------------------------------------------------------------------------------------------- packaging


def test_service_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze is not installed")
    assert analyze is not None
    unit = (REPO / "conf" / "pyturn.service").read_text()
    assert "Type=notify" in unit
    # verify insists that ExecStart's program exists; pyturn need not be installed for this test
    (tmp_path / "pyturn.service").write_text(unit.replace("/usr/local/bin/pyturn", "/bin/true"))
    result = subprocess.run([analyze, "verify", str(tmp_path / "pyturn.service")], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "pyturn.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_service_daemonize_keeps_relative_file_names_working(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("test:1234:reTurn:authorized\n")
    (tmp_path / "reTurnServer.config").write_text(
        "TurnAddress = 127.0.0.1\nTurnV6Address = ::1\nTurnPort = 0\nTlsTurnPort = 0\nUserDatabaseFile = users.txt\n"
        "Daemonize = true\nPidFile = pyturn.pid\nLoggingType = file\nLogFilename = pyturn.log\n"
    )
    result = subprocess.run([sys.executable, "-m", "pyturn", "reTurnServer.config"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=START_TIMEOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    daemon = int((tmp_path / "pyturn.pid").read_text())
    try:
        assert "serving" in (tmp_path / "pyturn.log").read_text()
    finally:
        os.kill(daemon, signal.SIGTERM)
        wait_for(lambda: process_gone(daemon), 5.0, "the daemon to stop")
    wait_for(lambda: not (tmp_path / "pyturn.pid").exists(), 5.0, "the PID file to go")
