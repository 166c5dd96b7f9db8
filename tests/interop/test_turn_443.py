"""TURN on port 443 (TLS, ALPN stun.turn): what the systemd unit grants, and a real `pyturn` on 127.0.0.1:443 that
drops to an unprivileged user after binding and relays for coturn's client over TLS with shared-secret credentials.

The same inside a network namespace (a public-looking address, nginx in front) is the deployment tests' job.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from certs import make_ca, write_server_files
from interop import (
    LOOPBACK,
    free_port,
    free_udp_port_pair,
    pyturn_process,
    run_uclient,
    turnutils_peer,
    write_config,
)

from pyturn.net.tls import ALPN_PROTOCOLS

UNIT = Path(__file__).resolve().parents[2] / "conf" / "pyturn.service"
SECRET = "port-443-secret"


def _unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def test_turn_443_unit_grants_only_the_low_port_capability() -> None:
    assert _unit_values("AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    (bounding,) = _unit_values("CapabilityBoundingSet")
    assert "CAP_NET_BIND_SERVICE" in bounding.split()


def test_turn_443_alpn_offers_stun_turn() -> None:
    assert "stun.turn" in ALPN_PROTOCOLS  # RFC 7443 §6, what an ALPN-routing proxy in front of 443 matches on


def _require_root_and_free_443() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("binding port 443 needs root (CI=true)")
        pytest.skip("binding port 443 needs root")
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, 443))
        except OSError:
            pytest.skip("127.0.0.1:443 is in use on this host")


def test_turn_443_tls_relay_after_privilege_drop(tmp_path: Path) -> None:
    _require_root_and_free_443()
    files = write_server_files(make_ca(), tmp_path)
    port, peer_port = free_port(), free_udp_port_pair()
    config = write_config(tmp_path, port, extra={
        "TlsTurnPort": 443,
        "TlsServerCertificateFilename": files.certificate,
        "TlsServerPrivateKeyFilename": files.key or "",
        "TlsTempDhFilename": "",
        "AuthSharedSecret": SECRET,
        "RunAsUser": "nobody",
    })
    with turnutils_peer(peer_port), pyturn_process(config, port) as server:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {"65534"}, status  # bound 443 as root, serving as nobody
        report = run_uclient(["-t", "-S", "-p", "443", "-W", SECRET, "-u", "tls443", "-e", LOOPBACK,
                              "-r", str(peer_port), "-n", "100", "-m", "2", "-l", "170", LOOPBACK], timeout=60)
        assert (report.sent, report.received, report.lost) == (200, 200, 0), report.output[-3000:]
