"""`pyturn credentials` and `pyturn dns-records`, run as the operator runs them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from interop import python_module_available, run_pyturn_cli

from pyturn.ops.cli import main

SECRET = "zone-secret-7d2b"


def _config(tmp_path: Path, **keys: object) -> Path:
    (tmp_path / "users.txt").write_text("test:1234:reTurn:authorized\n")
    values: dict[str, object] = {"TurnAddress": "192.0.2.10", "TurnV6Address": "2001:db8::10",
                                 "UserDatabaseFile": "users.txt", "TurnPort": 3479, "TlsTurnPort": 443}
    values.update(keys)
    path = tmp_path / "reTurnServer.config"
    path.write_text("".join(f"{key} = {value}\n" for key, value in values.items()))
    return path


def _hmac(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


# ------------------------------------------------------------------------------------------ credentials
def test_credentials_from_a_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secrets"
    secret_file.write_text(f"# newest first\n{SECRET}\nolder-secret\n")
    before = int(time.time())
    completed = run_pyturn_cli("credentials", "--secret-file", str(secret_file), "--user", "bob", "--ttl", "600")
    assert completed.returncode == 0, completed.stderr
    fields = dict(line.split(": ", 1) for line in completed.stdout.splitlines())
    expiry, user = fields["username"].split(":")
    assert user == "bob" and before + 600 <= int(expiry) <= int(time.time()) + 600
    assert fields["password"] == _hmac(SECRET, fields["username"])
    assert SECRET not in completed.stdout + completed.stderr


def test_credentials_json_ice_servers_from_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path, AuthSharedSecret=f"{SECRET}, retired", AuthSharedSecretSeparator="-")
    completed = run_pyturn_cli("credentials", "-c", str(config), "--json", "--host", "turn.falcot.com")
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    (entry,) = document["iceServers"]
    assert entry["urls"] == ["turn:turn.falcot.com:3479?transport=udp", "turn:turn.falcot.com:3479?transport=tcp",
                             "turns:turn.falcot.com:443?transport=tcp"]
    assert entry["username"].isdigit()  # no --user: EXPIRY alone
    assert entry["credential"] == _hmac(SECRET, entry["username"])
    assert document["ttl"] == 86400
    assert SECRET not in completed.stdout


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ([], 64),  # no secret at all
        (["--secret-file", "{missing}"], 66),
        (["--secret-file", "{empty}"], 66),
        (["--secret-file", "{secrets}", "--json"], 64),  # no URIs
        (["--secret-file", "{secrets}", "--ttl", "0"], 64),
        (["-c", "{missing}"], 78),
        (["--help"], 0),
    ],
)
def test_credentials_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str],
                                code: int) -> None:
    (tmp_path / "secrets").write_text(f"{SECRET}\n")
    (tmp_path / "empty").write_text("\n")
    filled = [arg.format(missing=tmp_path / "absent", empty=tmp_path / "empty", secrets=tmp_path / "secrets")
              for arg in arguments]
    assert main(["credentials", *filled]) == code
    assert SECRET not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ dns-records
def _zone(text: str, origin: str) -> object:
    python_module_available("dns")
    import dns.zone

    return dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)


def test_dns_records_parse_as_a_zone_and_match_the_ports(tmp_path: Path) -> None:
    config = _config(tmp_path)
    completed = run_pyturn_cli("dns-records", "-c", str(config), "--domain", "falcot.com", "--host", "turn-server")
    assert completed.returncode == 0, completed.stderr
    zone = _zone(completed.stdout, "falcot.com.")
    import dns.rdataclass
    import dns.rdatatype

    def records(name: str, kind: str) -> list[object]:
        node = zone.get_node(name)  # type: ignore[attr-defined]
        assert node is not None, f"{name} missing:\n{completed.stdout}"
        rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(kind))
        assert rdataset is not None, f"{name} {kind} missing:\n{completed.stdout}"
        return list(rdataset)

    host = "turn-server.falcot.com."
    assert [str(a) for a in records(host, "A")] == ["192.0.2.10"]
    assert [str(a) for a in records(host, "AAAA")] == ["2001:db8::10"]
    expected_ports = {"_stun._udp": 3479, "_stun._tcp": 3479, "_turn._udp": 3479, "_turn._tcp": 3479,
                      "_stuns._tcp": 443, "_turns._tcp": 443}
    for service, port in expected_ports.items():
        (srv,) = records(f"{service}.falcot.com.", "SRV")
        assert (srv.port, str(srv.target)) == (port, host)  # type: ignore[attr-defined]
    naptrs = sorted(records("falcot.com.", "NAPTR"), key=lambda r: r.order)  # type: ignore[attr-defined]
    assert [(r.flags, r.service, str(r.replacement)) for r in naptrs] == [  # type: ignore[attr-defined]
        (b"S", b"RELAY:turn.udp", "_turn._udp.falcot.com."),
        (b"S", b"RELAY:turn.tcp", "_turn._tcp.falcot.com."),
        (b"S", b"RELAY:turn.tls", "_turns._tcp.falcot.com."),
    ]


def test_dns_records_without_tls_have_no_turns_records(tmp_path: Path) -> None:
    config = _config(tmp_path, TlsTurnPort=0, TurnV6Address="")
    completed = run_pyturn_cli("dns-records", "-c", str(config), "--domain", "falcot.com")
    assert completed.returncode == 0, completed.stderr
    _zone(completed.stdout, "falcot.com.")
    assert "_turns" not in completed.stdout and "turn.tls" not in completed.stdout
    assert "AAAA" not in completed.stdout
    assert "turn\tIN\tA\t192.0.2.10" in completed.stdout


def test_dns_records_wildcard_address_needs_address_option(tmp_path: Path) -> None:
    config = _config(tmp_path, TurnAddress="0.0.0.0", TurnV6Address="::")
    refused = run_pyturn_cli("dns-records", "-c", str(config), "--domain", "falcot.com")
    assert refused.returncode == 78 and "--address" in refused.stderr
    given = run_pyturn_cli("dns-records", "-c", str(config), "--domain", "falcot.com", "--address", "198.51.100.7")
    assert given.returncode == 0 and "\tA\t198.51.100.7" in given.stdout
    external = _config(tmp_path, TurnAddress="0.0.0.0", ExternalAddress="203.0.113.5")
    assert "\tA\t203.0.113.5" in run_pyturn_cli("dns-records", "-c", str(external), "--domain", "x.org").stdout


def test_dns_records_usage_errors() -> None:
    assert main(["dns-records", "--domain", "falcot.com"]) == 64  # -c is required
    assert main(["dns-records", "--help"]) == 0
