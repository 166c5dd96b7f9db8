"""TURN over TLS on port 443 in the handbook deployment (handbook §11.8.5): `TlsTurnPort = 443` on the server's
public address 198.51.100.19, bound as root before the privilege drop, serving as `nobody`, and a TLS allocation
that relays to the other client's relay and to a peer host (coturn's client, ALPN stun.turn offered by pyturn).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from certs import make_ca, write_server_files
from handbook import USERS, Deployment
from interop import parse_uclient
from netns import PEER_ADDRESS, TURN_ADDRESS, Namespace, require_tool

pytestmark = pytest.mark.deploy

UCLIENT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def deployment_config_changes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    files = write_server_files(make_ca(), tmp_path_factory.mktemp("tls443"), common_name="turn.falcot.com")
    return {
        "TlsTurnPort": 443,
        "TlsServerCertificateFilename": files.certificate,
        "TlsServerPrivateKeyFilename": files.key or "",
        "TlsTempDhFilename": "",
        "RunAsUser": "nobody",
        "LegacyChannelNumbers": "true",  # coturn 4.6's client picks channels up to 0x7FFF (RFC 5766)
    }


def _uclient(namespace: Namespace, *arguments: str) -> Any:
    user, password = next(iter(USERS.items()))
    completed = namespace.run(require_tool("turnutils_uclient"), "-t", "-S", "-u", user, "-w", password,
                              "-p", "443", *arguments, TURN_ADDRESS, timeout=UCLIENT_TIMEOUT)
    return parse_uclient(completed.stdout + completed.stderr)


def _handshake(deployment: Deployment) -> tuple[str | None, str | None]:
    def connect() -> tuple[str | None, str | None]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["stun.turn"])
        with socket.create_connection((TURN_ADDRESS, 443), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="turn.falcot.com") as tls:
            return tls.version(), tls.selected_alpn_protocol()

    return deployment.namespace.call(connect, timeout=10)


def test_tls_443_is_served_as_an_unprivileged_user(deployment: Deployment) -> None:
    status = Path(f"/proc/{deployment.server.process.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"65534"}, status  # bound 198.51.100.19:443 as root, serving as nobody
    version, alpn = _handshake(deployment)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert alpn == "stun.turn"  # RFC 7443: what an ALPN-routing proxy in front of 443 matches on


def test_tls_443_allocation_relays_to_a_peer_host(deployment: Deployment) -> None:
    peer_host = deployment.peer_host
    peer = peer_host.popen(require_tool("turnutils_peer"), "-L", PEER_ADDRESS, "-p", "3480")
    try:
        report = _uclient(deployment.namespace, "-e", PEER_ADDRESS, "-r", "3480", "-n", "50", "-m", "2", "-l", "170")
    finally:
        peer_host.stop(peer)
    assert (report.sent, report.received, report.lost) == (100, 100, 0), report.output[-3000:]


def test_tls_443_clients_relay_to_each_other(deployment: Deployment) -> None:
    report = _uclient(deployment.namespace, "-y", "-n", "50", "-m", "2", "-l", "170")
    assert report.sent == report.received > 0, report.output[-3000:]
    assert report.lost == 0, report.output[-3000:]
