"""Two pyturn instances in one network namespace (198.51.100.19 and 198.51.100.20), sharing a NonceSecretFile and
one AlternateServers list that names both (each skips itself): docs/scaling.md's zero-downtime upgrade.

Instance 1 is drained with `pyturn drain`; a new call's clients get an authenticated 300 naming instance 2, follow it
and complete a relay-only call through instance 2, while the call that started on instance 1 keeps flowing until it
ends; instance 1 then exits 0. Shown with the project's own test client (which keeps the 300's NONCE, so it needs no
new 401 at instance 2) and with headless Chromium, whose TURN client follows 300 redirects.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chromium import BrowserCall, Chromium
from interop import MiniTurnClient
from metricsclient import http_get
from netns import ALT_STUN_ADDRESS, TURN_ADDRESS, Namespace, PyturnServer, pyturn_in, require_root_netns, write_config

from pyturn.wire.codec import decode_message
from pyturn.wire.message import Attr, MessageClass, Method

pytestmark = pytest.mark.deploy

FIRST, SECOND = TURN_ADDRESS, ALT_STUN_ADDRESS
PORT = 3478
METRICS_PORT = 9641
RELAYS = (40000, 40999)
REALM = "example.net"
USERS = {"alice": "wonderland", "bob": "builder"}
SCENARIO_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 10.0
MESSAGES = 5


@dataclass
class Site:
    """What chromium_in_namespace needs of a deployment: its namespace."""

    namespace: Namespace


@pytest.fixture(scope="module")
def deployment() -> Iterator[Site]:
    require_root_netns()
    with Namespace(lan=True) as namespace:  # lan: Chromium ignores loopback interfaces (see netns.Namespace)
        yield Site(namespace)


@dataclass
class Pair:
    first: PyturnServer
    second: PyturnServer
    first_config: Path

    def drain_first(self) -> None:
        completed = subprocess.run([sys.executable, "-m", "pyturn", "drain", "-c", str(self.first_config)],
                                   capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        assert completed.returncode == 0, completed.stderr

    def wait_first_exit(self) -> int:
        try:
            return self.first.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"instance 1 did not exit:\n{self.first.log()[-3000:]}") from None


def _instance(directory: Path, address: str, secret: Path, drain_timeout: int) -> Path:
    directory.mkdir()
    (directory / "users.txt").write_text("".join(f"{user}:{password}:{REALM}:authorized\n"
                                                 for user, password in USERS.items()))
    return write_config(directory, {
        "TurnAddress": address, "TurnV6Address": "", "TurnPort": PORT, "TlsTurnPort": 0,
        "AuthenticationRealm": REALM, "UserDatabaseFile": directory / "users.txt", "UserDatabaseCheckInterval": 0,
        "AlternateServers": f"{FIRST}:{PORT}, {SECOND}:{PORT}",  # the same list on both: each skips itself
        "NonceSecretFile": secret, "DrainTimeout": drain_timeout,
        "AllocationPortRangeMin": RELAYS[0], "AllocationPortRangeMax": RELAYS[1],
        "MetricsAddress": address, "MetricsPort": METRICS_PORT, "PidFile": directory / "pyturn.pid",
        "LoggingType": "cout", "LogLevel": "INFO",
    })


@contextlib.contextmanager
def instance_pair(namespace: Namespace, directory: Path, drain_timeout: int = 60) -> Iterator[Pair]:
    secret = directory / "nonce.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    first_config = _instance(directory / "one", FIRST, secret, drain_timeout)
    second_config = _instance(directory / "two", SECOND, secret, drain_timeout)
    with pyturn_in(namespace, first_config, (FIRST, PORT)) as first, \
            pyturn_in(namespace, second_config, (SECOND, PORT)) as second:
        yield Pair(first, second, first_config)


# ------------------------------------------------------------------------------------- the project's client
def _data(packet: bytes) -> bytes | None:
    if len(packet) < 20 or packet[0] & 0xC0:
        return None
    message = decode_message(packet)
    if message.method != Method.DATA or message.msg_class is not MessageClass.INDICATION:
        return None
    data: bytes | None = message.get(Attr.DATA)
    return data


class Call:
    """Two clients relayed by one instance, each permitted to the other's relayed address (relay only)."""

    def __init__(self, server: tuple[str, int]) -> None:
        (alice, alice_password), (bob, bob_password) = USERS.items()
        self.a, self.b = MiniTurnClient(server, alice, alice_password), MiniTurnClient(server, bob, bob_password)
        self.relayed: dict[MiniTurnClient, tuple[str, int]] = {}

    async def connect(self, *, follow_redirect: bool = False) -> None:
        for client in (self.a, self.b):
            self.relayed[client] = await client.allocate(lifetime=600, follow_redirect=follow_redirect)
        await self.a.create_permission(self.relayed[self.b])
        await self.b.create_permission(self.relayed[self.a])

    async def exchange(self, count: int = MESSAGES) -> int:
        arrived = 0
        for index in range(count):
            await self.a.send_indication(self.relayed[self.b], f"media {index}".encode())
            with contextlib.suppress(TimeoutError):
                while True:
                    payload = _data(await self.b.receive(1.0))
                    if payload is not None and payload.startswith(b"media"):
                        arrived += 1
                        break
        return arrived

    async def hang_up(self) -> None:
        for client in (self.a, self.b):
            assert await client.refresh(0) == 0
            client.close()


def test_project_client_follows_the_redirect_while_the_old_call_drains(deployment: Site, tmp_path: Path) -> None:
    namespace = deployment.namespace
    with instance_pair(namespace, tmp_path) as pair:

        async def scenario() -> dict[str, Any]:
            readyz = (FIRST, METRICS_PORT)
            assert http_get(readyz, "/readyz")[0] == 200
            old = Call((FIRST, PORT))
            await old.connect()
            before = await old.exchange()
            pair.drain_first()
            deadline = time.monotonic() + 5
            while http_get(readyz, "/readyz")[0] != 503:  # blocking, in this thread: it is in the namespace
                assert time.monotonic() < deadline, "/readyz never turned 503"
            new = Call((FIRST, PORT))
            await new.connect(follow_redirect=True)
            result = {
                "before": before,
                "servers": [new.a.server, new.b.server],
                "from": [new.a.redirected_from, new.b.redirected_from],
                "challenges": [new.a.challenges, new.b.challenges],
                "relayed": sorted(new.relayed.values()),
                "new": await new.exchange(),
                "old": await old.exchange(),  # the old call still flows after the drain began
                "refreshed": await old.a.refresh(600),
                "running": pair.first.process.poll() is None,
                "second_ready": http_get((SECOND, METRICS_PORT), "/readyz")[0],
            }
            await old.hang_up()
            result["still"] = await new.exchange(1)
            await new.hang_up()
            return result

        result = namespace.run_async(scenario, SCENARIO_TIMEOUT)
        assert result["before"] == MESSAGES
        assert result["servers"] == [(SECOND, PORT)] * 2
        assert result["from"] == [(FIRST, PORT)] * 2
        assert result["challenges"] == [1, 1]  # the 401 at instance 1 only: instance 2 took the 300's nonce
        for host, port in result["relayed"]:
            assert host == SECOND and RELAYS[0] <= port <= RELAYS[1]
        assert result["new"] == MESSAGES
        assert result["old"] == MESSAGES
        assert result["refreshed"] == 600
        assert result["running"], "instance 1 left before its last call ended"
        assert result["second_ready"] == 200
        assert result["still"] == 1  # instance 1 leaving does not touch instance 2's call
        assert pair.wait_first_exit() == 0
        log = pair.first.log()
        assert "redirected to 198.51.100.20:3478 (draining)" in log
        assert "drained: the last allocation has ended" in log
        assert pair.second.process.poll() is None


# ------------------------------------------------------------------------------------------------ Chromium
def _browser_call(chromium: Chromium, turn_url: str) -> BrowserCall:
    """Two pages, each a user with a relay-only RTCPeerConnection to `turn_url` (chromium.py)."""
    return BrowserCall(chromium, [[{"urls": [turn_url], "username": username, "credential": password}]
                                  for username, password in USERS.items()])


def _relay_hosts(call: BrowserCall) -> list[tuple[str, str]]:
    """(local, remote) relayed addresses of each page's selected candidate pair."""
    return [(local[0], remote[0]) for local, remote in call.relay_pairs()]


def _exchange(call: BrowserCall, tag: str) -> None:
    texts = [f"{tag} {number}" for number in range(MESSAGES)]
    assert call.exchange(texts) == [[f"pong {text}" for text in texts], [f"ping {text}" for text in texts]]


def test_chromium_follows_the_redirect_while_the_old_call_drains(chromium_in_namespace: Chromium,
                                                                 deployment: Site, tmp_path: Path) -> None:
    turn_url = f"turn:{FIRST}:{PORT}?transport=udp"
    with instance_pair(deployment.namespace, tmp_path) as pair:
        old = _browser_call(chromium_in_namespace, turn_url)
        new: BrowserCall | None = None
        try:
            old.connect()
            assert _relay_hosts(old) == [(FIRST, FIRST)] * 2
            _exchange(old, "before")
            pair.drain_first()
            pair.first.wait_for_log("draining")
            new = _browser_call(chromium_in_namespace, turn_url)  # the same URL: instance 1 sends it on
            new.connect()
            assert _relay_hosts(new) == [(SECOND, SECOND)] * 2
            _exchange(new, "new")
            _exchange(old, "after")
            assert pair.first.process.poll() is None
            old.hang_up()
            assert pair.wait_first_exit() == 0
            _exchange(new, "still")
        finally:
            old.hang_up()  # safe twice
            if new is not None:
                new.hang_up()
        log = pair.first.log()
        assert "redirected to 198.51.100.20:3478 (draining)" in log
        assert "drained: the last allocation has ended" in log
