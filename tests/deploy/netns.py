"""Deployment-shaped test rigs: a private network namespace with documentation addresses on it.

A :class:`Namespace` is created with ``ip netns add`` under a unique name, gets ``lo`` up and the handbook's
addresses (RFC 5737 198.51.100.0/24 and RFC 3849 2001:db8::/32: documentation ranges, never routed), and is
always deleted again, whatever happens inside the ``with`` block. Nothing here sends a packet outside the
namespace: servers and tools run under ``ip netns exec``, Python clients run in a thread that joined the
namespace with setns(2) (a network namespace is a per-thread attribute, and a socket stays in the namespace it
was created in), and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ptyrun import run_on_pty  # tests/ptyrun.py
from requirements import require  # tests/requirements.py

from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Message, MessageClass, Method

T = TypeVar("T")

TURN_ADDRESS = "198.51.100.19"
ALT_STUN_ADDRESS = "198.51.100.20"
TURN_V6_ADDRESS = "2001:db8:1000:2000::19"
PEER_ADDRESS = "198.51.100.30"  # a peer host that is not the server (turnutils_peer), see Namespace.add_host
DEFAULT_ADDRESSES = (f"{TURN_ADDRESS}/32", f"{ALT_STUN_ADDRESS}/32", f"{TURN_V6_ADDRESS}/128")

LAN_DEVICE = "turn0"
COMMAND_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
READY_TIMEOUT = 10.0
_CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns only exists from Python 3.12 on
_NETNS_DIR = Path("/run/netns")


def unavailable(message: str) -> None:
    """Skip the test locally; fail it under CI (tests/requirements.py's rule, shared by the whole suite)."""
    require(False, message)


def require_root_netns() -> None:
    """Root and a working `ip netns` are needed to build a deployment."""
    if os.geteuid() != 0:
        unavailable("deployment tests need root (network namespaces)")
    if shutil.which("ip") is None:
        unavailable("`ip` (iproute2) is not installed")
    try:
        listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as error:
        unavailable(f"`ip netns` does not work here: {error}")
        return
    _remove_stale(listed.stdout)


_OUR_NAME = re.compile(r"^pyturn-(\d+)-[0-9a-f]{8}\b", re.M)


def _remove_stale(listing: str) -> None:
    """Delete namespaces an earlier test run left behind when it was killed (its process is gone)."""
    for match in _OUR_NAME.finditer(listing):
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "delete", match.group(0)], capture_output=True, timeout=COMMAND_TIMEOUT)
        except PermissionError:
            pass  # alive


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
        raise AssertionError("unreachable")
    return path


def require_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        unavailable(f"python package {name} is not installed")


def _run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({path}): {os.strerror(code)}")
    finally:
        os.close(fd)


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after timeout; always reaped."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout)


class Namespace:
    """A uniquely named network namespace, deleted on exit together with every process started in it."""

    def __init__(self, addresses: Iterable[str] = DEFAULT_ADDRESSES, *, lan: bool = False) -> None:
        self.name = f"pyturn-{os.getpid()}-{secrets.token_hex(4)}"
        self.addresses: list[str] = []
        self.initial_addresses = list(addresses)
        # lo carrying the addresses is enough for the kernel and for most clients, but Chromium's WebRTC skips
        # loopback interfaces when it looks for networks and then gathers no candidate at all (no request reaches
        # the TURN server). With lan=True the addresses are also put on LAN_DEVICE, one end of a veth pair whose
        # both ends stay in this namespace (a `dummy` device would do, but not every kernel has that module).
        # Traffic between local addresses still goes through lo, whichever device carries them.
        self.lan = lan
        self.processes: list[subprocess.Popen[Any]] = []
        self.hosts: list[Namespace] = []  # other hosts linked to this one (add_host), closed with it
        self.created = False

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> Namespace:
        try:
            _run(["ip", "netns", "add", self.name])
            self.created = True
            atexit.register(self.close)  # a safety net should the interpreter stop before __exit__
            self.ip("link", "set", "lo", "up")
            if self.lan:
                self.ip("link", "add", LAN_DEVICE, "type", "veth", "peer", "name", f"{LAN_DEVICE}-peer")
                self.ip("link", "set", f"{LAN_DEVICE}-peer", "up")
                self.ip("link", "set", LAN_DEVICE, "up")
            for address in self.initial_addresses:
                self.add_address(address)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started here (and anything else still running in the namespace), then delete it."""
        for host in reversed(self.hosts):
            host.close()
        self.hosts.clear()
        for process in reversed(self.processes):
            stop_process(process)
        self.processes.clear()
        if not self.created:
            return
        with contextlib.suppress(Exception):
            leftovers = _run(["ip", "netns", "pids", self.name]).stdout.split()
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for _ in range(20):  # `ip netns delete` can race with a process that is still exiting
            try:
                _run(["ip", "netns", "delete", self.name])
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(0.1)
        self.created = (_NETNS_DIR / self.name).exists()
        if not self.created:
            atexit.unregister(self.close)

    # ------------------------------------------------------------------ configuration
    def ip(self, *arguments: str) -> str:
        return _run(["ip", "-n", self.name, *arguments]).stdout

    def add_address(self, address: str) -> None:
        """Another address of this host (a /32 or /128 unless a prefix is given); a peer belongs on add_host."""
        if "/" not in address:
            address += "/128" if ":" in address else "/32"
        extra = ["nodad"] if ":" in address else []  # no duplicate address detection: usable at once
        for device in ("lo", LAN_DEVICE) if self.lan else ("lo",):
            self.ip("addr", "add", address, "dev", device, *extra)
        self.addresses.append(address)

    def add_host(self, address: str) -> Namespace:
        """Another host with one IPv4 address, in a namespace of its own, on a veth link to this one.

        A server counts every address of its own host as its own (never a peer), so a peer must live on a
        different host, as in a real deployment. Both sides route the other's addresses over the link; no
        other address is reachable from either.
        """
        host = Namespace(addresses=())
        host.__enter__()
        self.hosts.append(host)
        link = f"host{len(self.hosts)}"
        _run(["ip", "-n", self.name, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", host.name])
        self.ip("link", "set", link, "up")
        host.ip("link", "set", "eth0", "up")
        host.ip("addr", "add", f"{address}/32", "dev", "eth0")
        self.ip("route", "add", f"{address}/32", "dev", link)
        for own in self.addresses:
            if ":" not in own:
                host.ip("route", "add", own, "dev", "eth0")
        return host

    # ------------------------------------------------------------------ processes
    def command(self, *argv: str | os.PathLike[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *(str(part) for part in argv)]

    def run(self, *argv: str | os.PathLike[str], timeout: float = COMMAND_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to completion (bounded); output captured as text."""
        try:
            return subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as error:
            out = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else (error.stdout or "")
            raise AssertionError(f"{' '.join(map(str, argv))} ran over {timeout} s:\n{out[-4000:]}") from None

    def popen(self, *argv: str | os.PathLike[str], **options: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace; it is stopped when the namespace closes at the latest."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(*argv), **options)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
        stop_process(process, timeout)
        if process in self.processes:
            self.processes.remove(process)

    # ------------------------------------------------------------------ Python inside the namespace
    def call(self, function: Callable[[], T], timeout: float) -> T:
        """Run function in a new thread that joined the namespace; its result, or its exception re-raised.

        Threads that function starts are in the namespace too (a new thread inherits its creator's), so a
        pyturn.ThreadedServer started here serves inside it and stays controllable from any thread."""
        outcome: list[Any] = []

        def body() -> None:
            try:
                _setns(_NETNS_DIR / self.name)
                outcome.append((True, function()))
            except BaseException as error:  # handed to the caller
                outcome.append((False, error))

        thread = threading.Thread(target=body, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"code inside namespace {self.name} ran over {timeout} s")
        ok, value = outcome[0]
        if not ok:
            raise value
        result: T = value
        return result

    def run_async(self, coroutine: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        """asyncio.run(coroutine()) inside the namespace, bounded by timeout."""

        async def bounded() -> T:
            return await asyncio.wait_for(coroutine(), timeout)

        return self.call(lambda: asyncio.run(bounded()), timeout + 5.0)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket that lives in the namespace (usable from any thread)."""
        return self.call(lambda: socket.socket(family, kind), COMMAND_TIMEOUT)


# ---------------------------------------------------------------------------------------------- STUN probe
def udp_binding(sock: socket.socket, server: tuple[str, int], timeout: float) -> Message | None:
    """One Binding over a UDP socket; the success response, or None on timeout / ICMP refusal."""
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        sock.sendto(encode_message(request), server)
        while time.monotonic() < deadline:
            data = sock.recv(2048)
            response = decode_message(data)
            if response.transaction_id == request.transaction_id:
                return response
    except OSError:
        return None
    return None


# -------------------------------------------------------------------------------------------- pyturn
@dataclass
class PyturnServer:
    namespace: Namespace
    process: subprocess.Popen[bytes]
    config: Path
    log_path: Path
    startup_seconds: float = 0.0
    address: tuple[str, int] = (TURN_ADDRESS, 3478)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_for_log(self, text: str, timeout: float = READY_TIMEOUT, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log()[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.05)


def write_config(directory: Path, keys: Mapping[str, object], name: str = "reTurnServer.config") -> Path:
    path = directory / name
    path.write_text("".join(f"{key} = {value}\n" for key, value in keys.items()))
    return path


@contextlib.contextmanager
def pyturn_in(namespace: Namespace, config: Path, address: tuple[str, int] = (TURN_ADDRESS, 3478), *,
              ready_timeout: float = READY_TIMEOUT) -> Iterator[PyturnServer]:
    """`python -m pyturn -c CONFIG` inside the namespace until it answers a Binding on address; SIGTERM at exit."""
    log_path = config.parent / "pyturn.log"
    with open(log_path, "wb") as log_file:
        process = namespace.popen(sys.executable, "-m", "pyturn", "-c", config, stdout=log_file,
                                  stderr=subprocess.STDOUT, cwd=config.parent)
    server = PyturnServer(namespace, process, config, log_path, address=address)
    try:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        started = time.monotonic()
        with namespace.socket(family, socket.SOCK_DGRAM) as probe:
            while udp_binding(probe, address, 0.1) is None:
                if process.poll() is not None or time.monotonic() - started > ready_timeout:
                    raise AssertionError(f"pyturn did not answer a Binding on {address} within {ready_timeout} s "
                                         f"(exit code {process.poll()}):\n{server.log()[-4000:]}")
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        namespace.stop(process)


# ------------------------------------------------------------------------------------------- htdigest
@dataclass
class Htdigest:
    """Debian's `htdigest` (apache2-utils), which reads the password twice from the terminal."""

    path: str = field(default_factory=lambda: require_tool("htdigest"))
    timeout: float = COMMAND_TIMEOUT

    def add(self, users_file: Path, realm: str, username: str, password: str) -> None:
        """Add (or change) a user; creates the file when it does not exist yet (htdigest -c)."""
        argv = [self.path, *([] if users_file.exists() else ["-c"]), str(users_file), realm, username]
        status, transcript = run_on_pty(argv, [password, password], timeout=self.timeout)  # New / Re-type
        if status != 0:
            raise AssertionError(f"htdigest exited with {status}: {transcript}")

    def remove(self, users_file: Path, realm: str, username: str) -> None:
        """htdigest cannot delete a user: drop its `user:realm:` line, as an operator's editor would."""
        prefix = f"{username}:{realm}:"
        lines = users_file.read_text().splitlines(keepends=True)
        users_file.write_text("".join(line for line in lines if not line.startswith(prefix)))
