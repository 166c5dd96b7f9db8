"""coturn as the comparison server and coturn's client tools as an independent load generator.

* turnserver is started in the foreground with explicit flags (no config file, no CLI, no TLS/DTLS, loopback
  only, log to a file in the run's temporary folder) and is always stopped by the caller (ManagedProcess).
* turnutils_peer is the UDP echo peer of turnutils_uclient.
* turnutils_uclient (coturn 4.6.1) is driven with -m/-n/-l/-z and its output parsed (docs/benchmarking.md
"turnutils_uclient output").
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

TURNSERVER = "turnserver"
UCLIENT = "turnutils_uclient"
PEER = "turnutils_peer"


def available() -> bool:
    return shutil.which(TURNSERVER) is not None


def tools_available() -> bool:
    return shutil.which(UCLIENT) is not None and shutil.which(PEER) is not None


def version() -> str | None:
    if not available():
        return None
    try:
        result = subprocess.run([TURNSERVER, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (result.stdout.strip() or result.stderr.strip()).splitlines()[0] if result.stdout or result.stderr else None


class ManagedProcess:
    """A child process in its own process group; stop() ends exactly that group (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, command: Sequence[str], *, stdout: Any = subprocess.DEVNULL,
                 stderr: Any = subprocess.DEVNULL, stdin: Any = subprocess.DEVNULL,
                 preexec: Callable[[], None] | None = None, text: bool = False, cwd: str | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.process = subprocess.Popen(
            self.command, stdout=stdout, stderr=stderr, stdin=stdin, start_new_session=True,
            preexec_fn=preexec, text=text, bufsize=1 if text else -1, cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 3.0) -> int | None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return self.process.returncode


def server_command(*, port: int, min_port: int, max_port: int, log_file: str, username: str, password: str,
                   realm: str, workdir: str, extra: Sequence[str] = ()) -> list[str]:
    """turnserver in the foreground on 127.0.0.1 with long-term credentials, loopback peers and no TLS/DTLS.

    Its PID file and (unused) SQLite user database go to workdir, never to /var.
    """
    return [
        TURNSERVER, "-n", "--no-cli",
        "--listening-ip", "127.0.0.1", "--listening-port", str(port),
        "--relay-ip", "127.0.0.1", "--min-port", str(min_port), "--max-port", str(max_port),
        "--lt-cred-mech", "--user", f"{username}:{password}", "--realm", realm,
        "--allow-loopback-peers", "--no-tls", "--no-dtls",
        "--log-file", log_file, "--simple-log", "--no-stdout-log",
        "--pidfile", os.path.join(workdir, f"turnserver-{port}.pid"), "--db", os.path.join(workdir, "turndb"),
        *extra,
    ]


def peer_command(port: int) -> list[str]:
    return [PEER, "-L", "127.0.0.1", "-p", str(port)]


def uclient_command(*, server_port: int, peer_port: int, username: str, password: str,
                    args: Sequence[str]) -> list[str]:
    """turnutils_uclient with the scenario's load flags (-m -n -l -z -c -s ...) towards 127.0.0.1."""
    return [
        "stdbuf", "-oL", "-eL", UCLIENT, *args,
        "-e", "127.0.0.1", "-r", str(peer_port), "-X",
        "-u", username, "-w", password, "-p", str(server_port), "127.0.0.1",
    ]


_PROGRESS = re.compile(r"start_mclient: msz=(\d+), tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
_FINAL_MSGS = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
_FINAL_BYTES = re.compile(r"tot_send_bytes ~ (\d+), tot_recv_bytes ~ (\d+)")
_TRANSMIT = re.compile(r"Total transmit time is (\d+)")
_CONNECT = re.compile(r"Total connect time is (\d+)")
_LOST = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\), total send dropped (\d+)")
_RTT = re.compile(r"Average round trip delay ([\d.]+) ms; min = (\d+) ms, max = (\d+) ms")


@dataclass
class UclientOutput:
    sent: int = 0
    received: int = 0
    send_bytes: int = 0
    recv_bytes: int = 0
    transmit_seconds: int | None = None
    connect_seconds: int | None = None
    lost: int | None = None
    lost_pct: float | None = None
    send_dropped: int | None = None
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    finished: bool = False
    # (arrival time, sent, received) of every progress line, for a transmit time finer than whole seconds
    progress: list[tuple[float, int, int]] | None = None

    def measured_window(self) -> tuple[float, int, int] | None:
        """(seconds, sent, received) between the first progress line with traffic and the last that moved."""
        points = [p for p in (self.progress or []) if p[1] > 0 or p[2] > 0]
        if len(points) < 2:
            return None
        last_change = points[-1]
        for point in reversed(points):
            if point[1:] != points[-1][1:]:
                break
            last_change = point
        first = points[0]
        seconds = last_change[0] - first[0]
        if seconds <= 0:
            return None
        return seconds, last_change[1] - first[1], last_change[2] - first[2]


def parse_uclient(lines: Sequence[tuple[float, str]]) -> UclientOutput:
    output = UclientOutput(progress=[])
    assert output.progress is not None
    for arrived, line in lines:
        match = _PROGRESS.search(line)
        if match:
            output.progress.append((arrived, int(match.group(2)), int(match.group(3))))
            output.sent, output.received = int(match.group(2)), int(match.group(3))
            continue
        match = _FINAL_MSGS.search(line)
        if match:
            output.sent, output.received = int(match.group(1)), int(match.group(2))
            output.finished = True
        match = _FINAL_BYTES.search(line)
        if match:
            output.send_bytes, output.recv_bytes = int(match.group(1)), int(match.group(2))
        match = _TRANSMIT.search(line)
        if match:
            output.transmit_seconds = int(match.group(1))
        match = _CONNECT.search(line)
        if match:
            output.connect_seconds = int(match.group(1))
        match = _LOST.search(line)
        if match:
            output.lost, output.lost_pct, output.send_dropped = (
                int(match.group(1)), float(match.group(2)), int(match.group(3)))
        match = _RTT.search(line)
        if match:
            output.rtt_avg_ms, output.rtt_max_ms = float(match.group(1)), float(match.group(3))
    return output
