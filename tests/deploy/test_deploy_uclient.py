"""coturn's turnutils_uclient through the handbook deployment (default peer policy): to turnutils_peer on another
host, and client to client (-y: each client's allocation relays to the next one's relayed address; -T: the same
over RFC 6062 TCP allocations).

coturn 4.6's turnutils_uclient picks ChannelBind numbers anywhere in 0x4000-0x7FFF (RFC 5766 §11, and reTurn takes
them); pyturn follows RFC 8656 §12 (0x4000-0x4FFF) unless LegacyChannelNumbers = true. That one key is added to the
handbook's lines here, in a deployment of this module's own, so the other modules run the handbook lines as they are.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from handbook import TURN_PORT, USERS, Deployment
from interop import parse_uclient
from netns import PEER_ADDRESS, TURN_ADDRESS, Namespace, require_tool

from pyturn.wire.message import Address

pytestmark = pytest.mark.deploy

WAIT = 5.0
UCLIENT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def deployment_config_changes() -> dict[str, object]:
    return {"LegacyChannelNumbers": "true"}


def _uclient(namespace: Namespace, *arguments: str) -> Any:
    tool = require_tool("turnutils_uclient")
    user, password = next(iter(USERS.items()))
    completed = namespace.run(tool, "-u", user, "-w", password, "-p", str(TURN_PORT), *arguments, TURN_ADDRESS,
                              timeout=UCLIENT_TIMEOUT)
    return parse_uclient(completed.stdout + completed.stderr)


@pytest.mark.parametrize("transport", [[], ["-t"]], ids=["udp", "tcp"])
def test_uclient_to_a_peer_host_loses_nothing(deployment: Deployment, transport: list[str]) -> None:
    peer_host = deployment.peer_host
    peer = peer_host.popen(require_tool("turnutils_peer"), "-L", PEER_ADDRESS, "-p", "3480")
    try:
        _wait_udp_listener(peer_host, (PEER_ADDRESS, 3480))
        report = _uclient(deployment.namespace, *transport, "-e", PEER_ADDRESS, "-r", "3480", "-n", "50", "-m", "2",
                          "-l", "170")
    finally:
        peer_host.stop(peer)
    # -m 2 with a peer: one RTP/RTCP pair of sessions, each sending -n messages.
    assert (report.sent, report.received, report.lost) == (100, 100, 0), report.output[-3000:]


@pytest.mark.parametrize("transport", [[], ["-t"]], ids=["udp", "tcp"])
def test_uclient_client_to_client_loses_nothing(deployment: Deployment, transport: list[str]) -> None:
    # -y: the clients' allocations relay to each other, the headline case of a TURN server.
    report = _uclient(deployment.namespace, "-y", *transport, "-n", "50", "-m", "2", "-l", "170")
    assert report.sent == report.received > 0, report.output[-3000:]
    assert report.lost == 0, report.output[-3000:]


def test_uclient_tcp_relay_client_to_client_loses_nothing(deployment: Deployment) -> None:
    # -T: RFC 6062 TCP allocations (implies -t -y); one client's Connect reaches the next one's relayed address,
    # which sends it a ConnectionAttempt; the default peer policy admits relay-range ports of the server only.
    report = _uclient(deployment.namespace, "-T", "-n", "50", "-m", "2", "-l", "170")
    assert report.sent == report.received > 0, report.output[-3000:]
    assert (report.lost, report.send_dropped) == (0, 0), report.output[-3000:]


def _wait_udp_listener(namespace: Namespace, address: Address, timeout: float = WAIT) -> None:
    """Until something holds address (a bind there fails), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        with namespace.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(address)
            except OSError:
                return
        assert time.monotonic() < deadline, f"nothing listens on {address}"
        time.sleep(0.05)


