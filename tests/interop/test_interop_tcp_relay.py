"""TCP allocations (RFC 6062) with an independent client: coturn's `turnutils_uclient -T`.

`-T` asks for TCP relayed addresses and implies `-y`: the clients' relays talk to each other, so one side's
Connect reaches the other side's relayed address and comes back to it as a ConnectionAttempt; every message goes
client -> data connection -> peer connection -> relayed address -> data connection -> client. No turnutils_peer
is needed (it serves UDP only). Everything runs on 127.0.0.1 with ephemeral ports; every wait is bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from certs import make_ca, write_server_files
from interop import LOOPBACK, PASSWORD, USERNAME, free_port, pyturn_process, run_uclient, write_config


@pytest.mark.interop
@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_uclient_tcp_relay_without_loss(secure: bool, tmp_path: Path) -> None:
    port = free_port()
    tls_port = free_port()
    # DEBUG: the adapter's "joined" lines show the data connections. No channels on TCP relays, so the RFC 8656
    # channel range is enough here (coturn 4.6's UDP tests need LegacyChannelNumbers).
    extra: dict[str, object] = {"LogLevel": "DEBUG", "LegacyChannelNumbers": "false"}
    if secure:
        files = write_server_files(make_ca(), tmp_path)
        extra.update({
            "TlsTurnPort": tls_port,
            "TlsServerCertificateFilename": files.certificate,
            "TlsServerPrivateKeyFilename": files.key,
            "TlsTempDhFilename": "",
        })
    config = write_config(tmp_path, port, extra=extra)
    with pyturn_process(config, port) as server:
        arguments = ["-T", "-n", "200", "-m", "5", "-l", "170", "-u", USERNAME, "-w", PASSWORD]
        arguments += ["-S", "-p", str(tls_port)] if secure else ["-p", str(port)]
        report = run_uclient([*arguments, LOOPBACK])
        log = server.log()
    assert report.lost == 0, report.output[-3000:]
    assert report.send_dropped == 0
    assert report.sent == report.received > 0
    assert "tcp relay connection" in log and "joined" in log  # RFC 6062 data connections, not a UDP relay
    assert ("/tls" if secure else "/tcp") in log
    assert "Traceback" not in log
