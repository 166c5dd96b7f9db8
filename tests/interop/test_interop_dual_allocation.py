"""Dual allocations with an independent client: coturn's `turnutils_uclient -Z` (RFC 8656 ADDITIONAL-ADDRESS-FAMILY)
allocates an IPv4 and an IPv6 relay from pyturn in one Allocate and relays to its peer without loss."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from interop import (
    LOOPBACK,
    PASSWORD,
    USERNAME,
    free_port,
    free_udp_port_pair,
    has_ipv6,
    parse_uclient,
    pyturn_process,
    require_tool,
    turnutils_peer,
    write_config,
)
from requirements import require

pytestmark = pytest.mark.interop

UCLIENT_TIMEOUT = 90.0


def test_interop_uclient_dual_allocation_gets_both_families_and_relays(tmp_path: Path) -> None:
    require(has_ipv6(), "no IPv6 loopback on this host")
    tool = require_tool("turnutils_uclient")
    port = free_port()
    peer_port = free_udp_port_pair()
    config = write_config(tmp_path, port)
    with turnutils_peer(peer_port), pyturn_process(config, port) as server:
        completed = subprocess.run(
            [tool, "-Z", "-v", "-e", LOOPBACK, "-r", str(peer_port), "-u", USERNAME, "-w", PASSWORD,
             "-p", str(port), "-n", "50", "-m", "2", "-l", "170", LOOPBACK],
            capture_output=True, text=True, timeout=UCLIENT_TIMEOUT,
        )
        log = server.log()
    output = completed.stdout + completed.stderr
    # coturn 4.6 sends ADDITIONAL-ADDRESS-FAMILY at its draft codepoint 0x8032 and prints only the first relayed
    # address; the server log names both relays of each allocation.
    assert re.search(r"relay addr: 127\.0\.0\.1:\d+", output), output[-3000:]
    allocations = len(re.findall(r"for 'alice' relayed at 127\.0\.0\.1:\d+", log))
    assert allocations >= 2
    assert len(re.findall(r"also relayed at \[::1\]:\d+ \(dual allocation\)", log)) == allocations, log[-3000:]
    report = parse_uclient(output)
    assert report.sent == report.received == 2 * 50, output[-3000:]
    assert report.lost == 0
    assert "Traceback" not in log
