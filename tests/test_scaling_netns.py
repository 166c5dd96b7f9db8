"""Two pyturn instances in a network namespace with two addresses, sharing a NonceSecretFile (docs/scaling.md).

Instance 1 (198.51.100.19) is drained with `pyturn drain`; a new call's clients are answered with an authenticated
300 naming instance 2 (198.51.100.20), follow it without a new 401 round trip and complete a relay-only call
through instance 2, while the call that started on instance 1 keeps flowing until it ends; instance 1 then exits 0.
Both instances get the same AlternateServers list naming both: each skips itself.

The namespace uses RFC 5737 documentation addresses and is deleted whatever happens; the Python clients run in a
thread that joined it with setns(2) (a network namespace is a per-thread attribute). This is a minimal local rig;
the deployment rig of tests/deploy/ can replace it once it is on main.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from interop import PASSWORD, USERNAME, MiniTurnClient, udp_binding
from requirements import require
from test_metrics import http_get

from pyturn.stun import Attr, Message, MessageClass, Method, decode_message

T = TypeVar("T")
FIRST, SECOND = "198.51.100.19", "198.51.100.20"
PORT = 3478
METRICS_PORT = 9641
RELAYS = (40000, 40999)
COMMAND_TIMEOUT = 10.0
SCENARIO_TIMEOUT = 60.0
_CLONE_NEWNET = 0x40000000  # <sched.h>

pytestmark = pytest.mark.interop


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=COMMAND_TIMEOUT)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "`ip` (iproute2) is not installed")
    name = f"pyturn-i19-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        for address in (FIRST, SECOND):
            _ip("-n", name, "addr", "add", f"{address}/32", "dev", "lo")
        yield name
    finally:
        for _ in range(20):
            if subprocess.run(["ip", "netns", "delete", name], capture_output=True,
                              timeout=COMMAND_TIMEOUT).returncode == 0:
                break
            time.sleep(0.1)


def in_namespace(name: str, scenario: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run an asyncio scenario in a thread that joined the namespace; its result or exception comes back."""
    outcome: dict[str, Any] = {}

    def thread_main() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            outcome["result"] = asyncio.run(asyncio.wait_for(scenario(), timeout))
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    thread.join(timeout + 5)
    assert not thread.is_alive(), "the scenario thread did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]  # type: ignore[no-any-return]


def write_instance(directory: Path, address: str, secret_file: Path) -> Path:
    directory.mkdir()
    (directory / "users.txt").write_text(f"{USERNAME}:{PASSWORD}:reTurn:authorized\n")
    keys = {
        "TurnAddress": address, "TurnV6Address": "", "TurnPort": PORT, "TlsTurnPort": 0,
        "AlternateServers": f"{FIRST}:{PORT}, {SECOND}:{PORT}",  # the same list on both: each skips itself
        "NonceSecretFile": secret_file, "UserDatabaseFile": directory / "users.txt",
        "UserDatabaseCheckInterval": 0, "AllocationPortRangeMin": RELAYS[0], "AllocationPortRangeMax": RELAYS[1],
        "MetricsAddress": address, "MetricsPort": METRICS_PORT, "PidFile": directory / "pyturn.pid",
        "LoggingType": "cout", "LogLevel": "INFO", "UnauthenticatedRateLimit": 0,
    }
    path = directory / "reTurnServer.config"
    path.write_text("".join(f"{key} = {value}\n" for key, value in keys.items()))
    return path


async def wait_serving(address: str) -> None:
    deadline = time.monotonic() + 10
    while udp_binding(address, PORT, 0.2) is None:  # in this thread: to_thread's workers are outside the namespace
        assert time.monotonic() < deadline, f"no instance answering on {address}"
        await asyncio.sleep(0.05)


def data_payload(packet: bytes) -> bytes | None:
    """The DATA of a Data indication, else None."""
    if len(packet) < 20 or packet[0] & 0xC0:
        return None
    message: Message = decode_message(packet)
    if message.method != Method.DATA or message.msg_class is not MessageClass.INDICATION:
        return None
    data: bytes | None = message.get(Attr.DATA)
    return data


class Call:
    """Two clients relayed by the same instance, each permitted to the other's relayed address."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.a, self.b = MiniTurnClient(server), MiniTurnClient(server)
        self.relayed: dict[MiniTurnClient, tuple[str, int]] = {}
        self.received = 0

    async def connect(self, *, follow_redirect: bool = False) -> None:
        for client in (self.a, self.b):
            self.relayed[client] = await client.allocate(lifetime=600, follow_redirect=follow_redirect)
        await self.a.create_permission(self.relayed[self.b])
        await self.b.create_permission(self.relayed[self.a])

    async def exchange(self, count: int = 5) -> int:
        """Send `count` datagrams a -> b through the relays; returns how many arrived."""
        arrived = 0
        for index in range(count):
            await self.a.send_indication(self.relayed[self.b], f"media {index}".encode())
            with contextlib.suppress(TimeoutError):
                while True:
                    payload = data_payload(await self.b.receive(1.0))
                    if payload is not None and payload.startswith(b"media"):
                        arrived += 1
                        break
        self.received += arrived
        return arrived

    async def hang_up(self) -> None:
        for client in (self.a, self.b):
            assert await client.refresh(0) == 0
            client.close()


def test_drained_instance_redirects_to_its_peer_and_exits_after_the_last_call(tmp_path: Path) -> None:
    secret = tmp_path / "nonce.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    first_config = write_instance(tmp_path / "one", FIRST, secret)
    second_config = write_instance(tmp_path / "two", SECOND, secret)
    with namespace() as name:
        processes = []
        try:
            for config in (first_config, second_config):
                log = open(config.parent / "pyturn.log", "wb")  # noqa: SIM115  # the child holds it
                processes.append(subprocess.Popen(
                    ["ip", "netns", "exec", name, sys.executable, "-m", "pyturn", "-c", str(config)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=config.parent))
                log.close()
            first = processes[0]

            def drain() -> None:
                completed = subprocess.run([sys.executable, "-m", "pyturn", "drain", "-c", str(first_config)],
                                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
                assert completed.returncode == 0, completed.stderr

            async def scenario() -> dict[str, Any]:
                await wait_serving(FIRST)
                await wait_serving(SECOND)
                readyz = (FIRST, METRICS_PORT)
                assert http_get(readyz, "/readyz")[0] == 200
                old = Call((FIRST, PORT))
                await old.connect()
                assert await old.exchange() == 5
                await asyncio.to_thread(drain)
                deadline = time.monotonic() + 5
                while http_get(readyz, "/readyz")[0] != 503:
                    assert time.monotonic() < deadline, "/readyz never turned 503"
                    await asyncio.sleep(0.05)
                new = Call((FIRST, PORT))
                await new.connect(follow_redirect=True)
                moved = {
                    "servers": [new.a.server, new.b.server], "from": [new.a.redirected_from, new.b.redirected_from],
                    "challenges": [new.a.challenges, new.b.challenges],
                    "relayed": sorted(new.relayed.values()),
                }
                new_arrived = await new.exchange()
                old_arrived = await old.exchange()  # the old call still flows after the drain began
                old_refreshed = await old.a.refresh(600)
                running_before_hang_up = first.poll() is None
                await old.hang_up()
                still = await new.exchange(1)
                await new.hang_up()
                return {"moved": moved, "new": new_arrived, "old": old_arrived, "refresh": old_refreshed,
                        "running": running_before_hang_up, "still": still}

            result = in_namespace(name, scenario, SCENARIO_TIMEOUT)
            moved = result["moved"]
            assert moved["servers"] == [(SECOND, PORT), (SECOND, PORT)]
            assert moved["from"] == [(FIRST, PORT), (FIRST, PORT)]
            assert moved["challenges"] == [1, 1]  # one 401 at instance 1, none at instance 2 (shared nonce secret)
            assert all(relayed[0] == SECOND and RELAYS[0] <= relayed[1] <= RELAYS[1] for relayed in moved["relayed"])
            assert result["new"] == 5
            assert result["old"] == 5
            assert result["refresh"] == 600
            assert result["running"], "instance 1 left before its last call ended"
            assert result["still"] == 1  # instance 2's call is untouched by instance 1 leaving
            try:
                assert first.wait(15) == 0
            except subprocess.TimeoutExpired:
                raise AssertionError("instance 1 did not exit after its last allocation") from None
            assert processes[1].poll() is None  # instance 2 keeps serving
            log = (first_config.parent / "pyturn.log").read_text()
            assert "redirected to 198.51.100.20:3478 (draining)" in log
            assert "drained: the last allocation has ended" in log
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(5)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(5)
