"""pyturn.config: reTurnServer.config grammar, conversions, includes, overrides, YAML (docs/compatibility.md)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from ipaddress import ip_network
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pyturn.config import KEYS, Config, ConfigWarning, Kind, format_value
from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config, parse_overrides

SAMPLE = Path(__file__).resolve().parents[2] / "conf" / "reTurnServer.config"
MAIN = "reTurnServer.config"


class Case(NamedTuple):
    files: dict[str, str]  # relative path -> text; "{dir}"/"{cfg}" in expectations are filled in
    overrides: tuple[str, ...] = ()
    expect: dict[str, Any] = {}  # a NamedTuple default, never mutated
    warnings: tuple[str, ...] = ()  # exactly these, in order
    error: str | None = None
    main: str = MAIN
    add_users: bool = True  # append "UserDatabaseFile = users.txt" unless the case sets it itself


def text(body: str, **kwargs: Any) -> Case:
    return Case({MAIN: body}, **kwargs)


def yaml_case(body: str, **kwargs: Any) -> Case:
    return Case({"reTurnServer.yaml": body}, main="reTurnServer.yaml", **kwargs)


CASES: dict[str, Case] = {
    # --- grammar (docs/compatibility.md "Grammar")
    "key-names-case-insensitive": text("tURNpORT = 3479", expect={"turn_port": 3479}),
    "blank-and-comment-lines-ignored": text(
        "\n   \n# TurnPort = 1\n  \t# x\nTurnPort = 3479\n", expect={"turn_port": 3479}
    ),
    "hash-inside-value-is-text": text("AuthenticationRealm = a #b", expect={"authentication_realm": "a #b"}),
    "trailing-space-kept-for-strings": text(
        "AuthenticationRealm = realm  \t", expect={"authentication_realm": "realm  \t"}
    ),
    "trailing-space-stripped-for-numbers": text("TurnPort = 3479  ", expect={"turn_port": 3479}),
    "crlf-line-endings": text(
        "AuthenticationRealm = r\r\nTurnPort = 3479\r\n",
        expect={"authentication_realm": "r", "turn_port": 3479},
    ),
    "no-spaces-around-equals": text("TurnPort=3479", expect={"turn_port": 3479}),
    "tabs-around-equals": text("\tTurnPort\t=\t3479", expect={"turn_port": 3479}),
    "empty-string-value-overrides-default": text("SoftwareName =", expect={"software_name": ""}),
    "text-before-equals-warns": text(
        "TurnPort junk = 3479",
        expect={"turn_port": 3479},
        warnings=("{cfg}:1: text 'junk' between TurnPort and '=' ignored",),
    ),
    "line-without-equals-fatal": text(
        "# ok\nTurnPort 3479", error="{cfg}:2: expected 'Name = Value', got 'TurnPort 3479'"
    ),
    "line-without-name-fatal": text("= 5", error="{cfg}:1: missing key name before '='"),
    "duplicate-key-any-case-fatal": text(
        "TurnPort = 1\nturnport = 2", error="{cfg}:2: duplicate key 'turnport' (first set at {cfg}:1)"
    ),
    "unknown-key-warns": text("Frobnicate = 1", warnings=("{cfg}:1: unknown key 'Frobnicate' ignored",)),
    "obsolete-key-warns": text(
        "LongTermAuthUsername = bob",
        warnings=("{cfg}:1: obsolete key 'LongTermAuthUsername' ignored; users come from UserDatabaseFile",),
    ),
    "invalid-utf8-fatal": text("SoftwareName = \udcff", error="{cfg}:1: line is not valid UTF-8"),
    # --- booleans (docs/compatibility.md "Values")
    **{
        f"bool-true-{word}": text(f"Daemonize = {word}", expect={"daemonize": True})
        for word in ("1", "true", "On", "ENABLE")
    },
    **{
        f"bool-false-{word}": text(f"PadSoftwareName = {word}", expect={"pad_software_name": False})
        for word in ("0", "False", "off", "disable")
    },
    "bool-invalid-keeps-default-false": text(
        "Daemonize = maybe",
        expect={"daemonize": False},
        warnings=("{cfg}:1: Daemonize: invalid boolean 'maybe' (use true or false), keeping false",),
    ),
    "bool-invalid-keeps-default-true": text(
        "PadSoftwareName = yes",
        expect={"pad_software_name": True},
        warnings=("{cfg}:1: PadSoftwareName: invalid boolean 'yes' (use true or false), keeping true",),
    ),
    # --- ports and integers (docs/compatibility.md "Values")
    "port-zero-allowed": text("TurnPort = 0", expect={"turn_port": 0}),
    "port-out-of-range-fatal": text(
        "TurnPort = 70000", error="{cfg}:1: TurnPort: 70000 is out of range 0..65535"
    ),
    "port-negative-fatal": text(
        "TlsTurnPort = -1", error="{cfg}:1: TlsTurnPort: -1 is out of range 0..65535"
    ),
    "port-garbage-fatal": text("TurnPort = abc", error="{cfg}:1: TurnPort: 'abc' is not a port number"),
    "port-empty-fatal": text("AltStunPort =", error="{cfg}:1: AltStunPort: '' is not a port number"),
    "port-trailing-text-warns": text(
        "TurnPort = 3479 #x",
        expect={"turn_port": 3479},
        warnings=("{cfg}:1: TurnPort: trailing text ' #x' after 3479 ignored",),
    ),
    "ushort-truncated-like-reTurn": text(
        "UserDatabaseCheckInterval = 70000",
        expect={"user_database_check_interval": 4464},
        warnings=(
            "{cfg}:1: UserDatabaseCheckInterval: 70000 does not fit in 16 bits; using 4464 as reTurn does",
        ),
    ),
    "ushort-garbage-reads-zero": text(
        "UserDatabaseCheckInterval = abc",
        expect={"user_database_check_interval": 0},
        warnings=("{cfg}:1: UserDatabaseCheckInterval: 'abc' is not a number, using 0 as reTurn does",),
    ),
    "ulong-garbage-fatal-where-zero-unusable": text(
        "NonceLifetime = abc", error="{cfg}:1: NonceLifetime: 'abc' is not a number"
    ),
    "ulong-zero-fatal-where-unusable": text(
        "MaxAllocationLifetime = 0", error="{cfg}:1: MaxAllocationLifetime: must be at least 1, got 0"
    ),
    "ulong-negative-reads-zero": text(
        "MaxAllocationsPerUser = -3",
        expect={"max_allocations_per_user": 0},
        warnings=("{cfg}:1: MaxAllocationsPerUser: negative value -3, using 0 as reTurn does",),
    ),
    "ulong-large": text("LogFileMaxBytes = 10000000000", expect={"log_file_max_bytes": 10_000_000_000}),
    "count-workers-zero": text("Workers = 0", expect={"workers": 0}),
    "count-workers-negative-fatal": text(
        "Workers = -1", error="{cfg}:1: Workers: must be at least 0, got -1"
    ),
    "count-garbage-fatal": text(
        "MaxAllocations = 5 #x", error="{cfg}:1: MaxAllocations: '5 #x' is not a whole number"
    ),
    "count-socket-buffers": text(
        "ListenerReceiveBuffer = 8388608\nListenerSendBuffer = 0\nRelayReceiveBuffer = 262144\nRelaySendBuffer = 65536",
        expect={"listener_receive_buffer": 8388608, "listener_send_buffer": 0, "relay_receive_buffer": 262144,
                "relay_send_buffer": 65536},
    ),
    "count-socket-buffer-negative-fatal": text(
        "RelayReceiveBuffer = -1", error="{cfg}:1: RelayReceiveBuffer: must be at least 0, got -1"
    ),
    "count-socket-buffer-garbage-fatal": text(
        "ListenerReceiveBuffer = 4M", error="{cfg}:1: ListenerReceiveBuffer: '4M' is not a whole number"
    ),
    "count-tcp-auth-timeout-zero-fatal": text(
        "TcpAuthTimeout = 0", error="{cfg}:1: TcpAuthTimeout: must be at least 1, got 0"
    ),
    # --- addresses
    "ipv4-address": text("TurnAddress = 192.0.2.1", expect={"turn_address": "192.0.2.1"}),
    "ipv4-key-rejects-ipv6": text(
        "TurnAddress = ::1", error="{cfg}:1: TurnAddress: '::1' is not an IPv4 address"
    ),
    "ipv4-key-rejects-empty": text(
        "AltStunAddress =", error="{cfg}:1: AltStunAddress: '' is not an IPv4 address"
    ),
    "ipv6-zero-normalised": text("TurnV6Address = ::0", expect={"turn_v6_address": "::"}),
    "ipv6-normalised": text("TurnV6Address = 2001:DB8:0::1 ", expect={"turn_v6_address": "2001:db8::1"}),
    "ipv6-key-rejects-ipv4": text(
        "TurnV6Address = 127.0.0.1", error="{cfg}:1: TurnV6Address: '127.0.0.1' is not an IPv6 address"
    ),
    "optional-address-empty": text(
        "RelayAddress =\nExternalV6Address =", expect={"relay_address": "", "external_v6_address": ""}
    ),
    "optional-address-set": text("ExternalAddress = 203.0.113.5", expect={"external_address": "203.0.113.5"}),
    "optional-address-wrong-family-fatal": text(
        "RelayV6Address = 10.0.0.1", error="{cfg}:1: RelayV6Address: '10.0.0.1' is not an IPv6 address"
    ),
    # --- peer networks
    "cidr-list": text(
        "AllowedPeerAddresses = 127.0.0.0/8, ::1/128,10.1.2.3",
        expect={
            "allowed_peer_addresses": (
                ip_network("127.0.0.0/8"),
                ip_network("::1/128"),
                ip_network("10.1.2.3/32"),
            )
        },
    ),
    "cidr-empty-list": text("DeniedPeerAddresses =", expect={"denied_peer_addresses": ()}),
    "cidr-malformed-fatal": text(
        "DeniedPeerAddresses = 10.0.0.0/33",
        error="{cfg}:1: DeniedPeerAddresses: '10.0.0.0/33' is not a network in CIDR form "
        "('10.0.0.0/33' does not appear to be an IPv4 or IPv6 network)",
    ),
    "cidr-host-bits-fatal": text(
        "AllowedPeerAddresses = 10.0.0.1/8",
        error="{cfg}:1: AllowedPeerAddresses: '10.0.0.1/8' is not a network in CIDR form "
        "(10.0.0.1/8 has host bits set)",
    ),
    "cidr-empty-entry-fatal": text(
        "DeniedPeerAddresses = 10.0.0.0/8,,192.168.0.0/16",
        error="{cfg}:1: DeniedPeerAddresses: empty entry in the list",
    ),
    # --- logging keys (docs/compatibility.md "Logging")
    "log-level-prefix-and-case": text("LogLevel = log_debug", expect={"log_level": "DEBUG"}),
    "log-level-unknown-means-debug": text(
        "LogLevel = LOUD",
        expect={"log_level": "DEBUG"},
        warnings=("{cfg}:1: LogLevel: unknown level 'LOUD', using DEBUG as reTurn does",),
    ),
    "log-level-empty-means-default": text("LogLevel =", expect={"log_level": "INFO"}),
    "logging-level-fallback": text("LoggingLevel = err", expect={"log_level": "ERR"}),
    "log-level-beats-logging-level": text(
        "LoggingLevel = ERR\nLogLevel = NOTICE", expect={"log_level": "NOTICE"}
    ),
    "log-level-beats-logging-level-any-order": text(
        "LogLevel = NOTICE\nLoggingLevel = ERR", expect={"log_level": "NOTICE"}
    ),
    "empty-log-level-falls-back": text("LogLevel =\nLoggingLevel = ERR", expect={"log_level": "ERR"}),
    "logging-type-case-insensitive": text("LoggingType = FILE", expect={"logging_type": "file"}),
    "logging-type-other-means-syslog": text(
        "LoggingType = journald",
        expect={"logging_type": "syslog"},
        warnings=("{cfg}:1: LoggingType: unknown type 'journald', using syslog as reTurn does",),
    ),
    "syslog-facility": text("SyslogFacility = LOG_LOCAL3", expect={"syslog_facility": "LOG_LOCAL3"}),
    "syslog-facility-case-sensitive": text(
        "SyslogFacility = log_local3",
        expect={"syslog_facility": "LOG_DAEMON"},
        warnings=("{cfg}:1: SyslogFacility: unknown facility 'log_local3', using LOG_DAEMON",),
    ),
    "log-structure-json": text(
        "LogMessageStructure = json_cee", expect={"log_message_structure": "JSON_CEE"}
    ),
    "log-structure-unknown-warns": text(
        "LogMessageStructure = xml",
        expect={"log_message_structure": "Unstructured"},
        warnings=(
            "{cfg}:1: LogMessageStructure: unknown value 'xml' (use Unstructured or JSON_CEE), "
            "using Unstructured",
        ),
    ),
    # --- file names (docs/compatibility.md "File names")
    "user-file-bare-name-beside-config": text(
        "UserDatabaseFile = users.txt", expect={"user_database_file": "{dir}/users.txt"}
    ),
    "bare-tls-name-beside-config": text(
        "TlsServerCertificateFilename = x.pem", expect={"tls_server_certificate_filename": "{dir}/x.pem"}
    ),
    "name-with-slash-kept": text(
        "TlsServerCertificateFilename = certs/x.pem\nTlsTempDhFilename = /etc/dh.pem",
        expect={"tls_server_certificate_filename": "certs/x.pem", "tls_temp_dh_filename": "/etc/dh.pem"},
    ),
    "default-names-beside-config": text(
        "",
        expect={
            "tls_server_certificate_filename": "{dir}/server.pem",
            "tls_temp_dh_filename": "{dir}/dh2048.pem",
            "log_filename": "{dir}/reTurnServer.log",
            "tls_server_private_key_filename": "",
        },
    ),
    "pid-file-never-resolved": text("PidFile = x.pid", expect={"pid_file": "x.pid"}),
    "log-filename-fallback-resolved": text(
        "LoggingFilename = old.log", expect={"log_filename": "{dir}/old.log"}
    ),
    "user-file-missing-fatal": Case(
        {MAIN: "TurnPort = 3479"},
        add_users=False,
        error="{cfg}: Missing user database option (UserDatabaseFile)",
    ),
    "user-file-empty-fatal": text(
        "UserDatabaseFile =", error="{cfg}:1: Missing user database option (UserDatabaseFile)"
    ),
    "user-file-unreadable-fatal": text(
        "UserDatabaseFile = nope.txt", error="{cfg}:1: UserDatabaseFile: cannot read '{dir}/nope.txt'"
    ),
    # --- semantic checks
    "port-range-inverted-fatal": text(
        "AllocationPortRangeMin = 50000\nAllocationPortRangeMax = 40000",
        error="{cfg}:1: AllocationPortRangeMin 50000 is greater than AllocationPortRangeMax 40000",
    ),
    "default-lifetime-above-max-warns": text(
        "TurnPort = 3479\nDefaultAllocationLifetime = 4000",
        expect={"default_allocation_lifetime": 4000},
        warnings=(
            "{cfg}:2: DefaultAllocationLifetime 4000 is greater than MaxAllocationLifetime 3600: "
            "like reTurn, small requests get the default and large ones the maximum",
        ),
    ),
    # --- include
    "include-beside-config": Case(
        {MAIN: "include = extra.config", "extra.config": "TurnPort = 4000"}, expect={"turn_port": 4000}
    ),
    "include-case-insensitive-keyword": Case(
        {MAIN: "INCLUDE = extra.config", "extra.config": "TurnPort = 4000"}, expect={"turn_port": 4000}
    ),
    "include-subfolder-resolves-its-names": Case(
        {MAIN: "include = sub/tls.config", "sub/tls.config": "TlsServerCertificateFilename = cert.pem"},
        expect={"tls_server_certificate_filename": "{dir}/sub/cert.pem"},
    ),
    "include-yaml-from-config": Case(
        {MAIN: "include = extra.yaml", "extra.yaml": "TurnPort: 4000"}, expect={"turn_port": 4000}
    ),
    "include-duplicate-across-files-fatal": Case(
        {MAIN: "TurnPort = 1\ninclude = extra.config", "extra.config": "\nturnPort = 2"},
        error="{dir}/extra.config:2: duplicate key 'turnPort' (first set at {cfg}:1)",
    ),
    "include-error-carries-included-line": Case(
        {MAIN: "include = extra.config", "extra.config": "# x\nTurnPort = x"},
        error="{dir}/extra.config:2: TurnPort: 'x' is not a port number",
    ),
    "include-missing-fatal": text(
        "include = missing.config",
        error="{cfg}:1: include: cannot find 'missing.config' "
        "(looked in: {dir}/missing.config, missing.config)",
    ),
    "include-loop-fatal": Case(
        {MAIN: "include = a.config", "a.config": "include = reTurnServer.config"},
        error="{dir}/a.config:1: include: 'reTurnServer.config' is already being read (include loop)",
    ),
    # --- command-line overrides (docs/compatibility.md "Command line")
    "override-beats-file": text(
        "TurnPort = 3479", overrides=("--TurnPort=4000",), expect={"turn_port": 4000}
    ),
    **{
        f"override-spelling-{arg}": text("", overrides=(arg,), expect={"turn_port": 4000})
        for arg in ("-TurnPort=4000", "--turnport:4000", "/TurnPort=4000", "-/-TurnPort=4000")
    },
    "override-value-keeps-separators": text(
        "", overrides=("--AuthenticationRealm:a=b:c",), expect={"authentication_realm": "a=b:c"}
    ),
    "override-ipv6-after-equals": text(
        "", overrides=("--TurnV6Address=::1",), expect={"turn_v6_address": "::1"}
    ),
    "override-bare-name-beside-config": text(
        "", overrides=("--UserDatabaseFile=other.txt",), expect={"user_database_file": "{dir}/other.txt"}
    ),
    "override-supplies-user-file": Case(
        {MAIN: "TurnPort = 3479"},
        add_users=False,
        overrides=("--UserDatabaseFile=users.txt",),
        expect={"user_database_file": "{dir}/users.txt"},
    ),
    "override-duplicate-fatal": text(
        "",
        overrides=("--TurnPort=1", "--turnport=2"),
        error="<command line>:2: duplicate key 'turnport' (also argument 1)",
    ),
    "override-without-dash-fatal": text(
        "", overrides=("TurnPort=1",), error="<command line>:1: expected --Name=Value, got 'TurnPort=1'"
    ),
    "override-without-separator-fatal": text(
        "",
        overrides=("--LogLevel=DEBUG", "--TurnPort"),
        error="<command line>:2: expected --Name=Value, got '--TurnPort'",
    ),
    "override-bad-value-fatal": text(
        "", overrides=("--TurnPort=abc",), error="<command line>:1: TurnPort: 'abc' is not a port number"
    ),
    "override-unknown-warns": text(
        "", overrides=("--Bogus=1",), warnings=("<command line>:1: unknown key 'Bogus' ignored",)
    ),
    "override-include-ignored": text(
        "",
        overrides=("--include=x.config",),
        warnings=("<command line>:1: include is only read from config files; ignored",),
    ),
    # --- YAML
    "yaml-mapping": yaml_case(
        "turnport: 4000\nDaemonize: yes\nSoftwareName: 'x '\nAllowedPeerAddresses:\n  - 127.0.0.0/8\n"
        "  - ::1/128\nUserDatabaseFile: users.txt\n",
        expect={
            "turn_port": 4000,
            "daemonize": True,
            "software_name": "x ",
            "allowed_peer_addresses": (ip_network("127.0.0.0/8"), ip_network("::1/128")),
            "user_database_file": "{dir}/users.txt",
        },
    ),
    "yaml-null-is-empty": yaml_case(
        "SoftwareName: ~\nRunAsUser:\n", expect={"software_name": "", "run_as_user": ""}
    ),
    "yaml-error-has-line": yaml_case(
        "# c\nTurnPort: 70000\n", error="{cfg}:2: TurnPort: 70000 is out of range 0..65535"
    ),
    "yaml-unknown-key-has-line": yaml_case(
        "\nBogus: 1\n", warnings=("{cfg}:2: unknown key 'Bogus' ignored",)
    ),
    "yaml-duplicate-fatal": yaml_case(
        "TurnPort: 1\nturnport: 2\n", error="{cfg}:2: duplicate key 'turnport' (first set at {cfg}:1)"
    ),
    "yaml-list-for-scalar-key-fatal": yaml_case(
        "TurnPort: [1, 2]\n", error="{cfg}:1: TurnPort: a list is only allowed for the peer address keys"
    ),
    "yaml-nested-mapping-fatal": yaml_case(
        "TurnPort: {a: 1}\n", error="{cfg}:1: TurnPort: expected a single value, got a mapping"
    ),
    "yaml-not-a-mapping-fatal": yaml_case(
        "- TurnPort\n",
        add_users=False,
        error="{cfg}:1: a YAML config must be a mapping of reTurn key names to values",
    ),
    "yaml-syntax-error-fatal": yaml_case(
        "TurnPort: [1\n",
        add_users=False,
        error="{cfg}:2: invalid YAML: expected ',' or ']', but got '<stream end>'",
    ),
}


def _fill(value: Any, tmp_path: Path, main: str) -> Any:
    if isinstance(value, str):
        return value.format(dir=str(tmp_path), cfg=str(tmp_path / main))
    return value


def _materialise(case: Case, tmp_path: Path) -> str:
    for name in ("users.txt", "other.txt"):
        (tmp_path / name).write_text("alice:secret:reTurn:authorized\n")
    mentions_users = any("userdatabasefile" in body.lower() for body in case.files.values()) or any(
        "userdatabasefile" in arg.lower() for arg in case.overrides
    )
    for name, body in case.files.items():
        if name == case.main and not mentions_users and case.add_users:
            body += (
                "\nUserDatabaseFile: users.txt"
                if name.endswith(".yaml")
                else "\nUserDatabaseFile = users.txt"
            )
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body.encode("utf-8", "surrogateescape"))
    return str(tmp_path / case.main)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_config_rule(case: Case, tmp_path: Path) -> None:
    path = _materialise(case, tmp_path)
    if case.error is not None:
        with pytest.raises(ConfigError) as raised:
            load_config(path, case.overrides)
        assert str(raised.value) == _fill(case.error, tmp_path, case.main)
        return
    config, warnings = load_config(path, case.overrides)
    assert [str(w) for w in warnings] == [_fill(w, tmp_path, case.main) for w in case.warnings]
    for field, expected in case.expect.items():
        assert getattr(config, field) == _fill(expected, tmp_path, case.main), field


def test_config_error_carries_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / MAIN
    path.write_text("UserDatabaseFile = users.txt\nTurnPort = x\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert (raised.value.path, raised.value.line) == (str(path), 2)


def test_config_missing_file_fatal(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file: No such file or directory"):
        load_config(tmp_path / "absent.config")


def test_config_include_falls_back_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "users.txt").write_text("")
    (tmp_path / "etc" / MAIN).write_text("UserDatabaseFile = users.txt\ninclude = local.config\n")
    (tmp_path / "local.config").write_text("TurnPort = 4000\n")
    monkeypatch.chdir(tmp_path)
    config, warnings = load_config(tmp_path / "etc" / MAIN)
    assert (config.turn_port, warnings) == (4000, [])


def test_config_include_prefers_config_folder_over_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "users.txt").write_text("")
    (tmp_path / "etc" / MAIN).write_text("UserDatabaseFile = users.txt\ninclude = local.config\n")
    (tmp_path / "etc" / "local.config").write_text("TurnPort = 4001\n")
    (tmp_path / "local.config").write_text("TurnPort = 4000\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(tmp_path / "etc" / MAIN)[0].turn_port == 4001


def test_config_relative_config_path_resolves_names_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "users.txt").write_text("")
    (tmp_path / "conf" / MAIN).write_text("UserDatabaseFile = users.txt\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(os.path.join("conf", MAIN))[0].user_database_file == os.path.join("conf", "users.txt")


def test_config_yaml_equivalent_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("")
    (tmp_path / "a.config").write_text(
        "TurnAddress = 192.0.2.1\nTurnPort = 3479\nDaemonize = on\nAllowedPeerAddresses = 127.0.0.0/8, ::1\n"
        "LogLevel = debug\nUserDatabaseFile = users.txt\nTlsServerCertificateFilename = c.pem\n"
    )
    (tmp_path / "a.yaml").write_text(
        "TurnAddress: 192.0.2.1\nTurnPort: 3479\nDaemonize: true\n"
        "AllowedPeerAddresses: [127.0.0.0/8, '::1']\n"
        "LogLevel: debug\nUserDatabaseFile: users.txt\nTlsServerCertificateFilename: c.pem\n"
    )
    from_config = load_config(tmp_path / "a.config")
    from_yaml = load_config(tmp_path / "a.yaml")
    assert from_config == from_yaml
    assert from_config[0].daemonize and from_config[0].turn_port == 3479


def test_config_defaults_argument_is_the_base(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("")
    (tmp_path / MAIN).write_text("UserDatabaseFile = users.txt\nDaemonize = maybe\n")
    config, warnings = load_config(tmp_path / MAIN, defaults=Config(daemonize=True, workers=4))
    assert (config.daemonize, config.workers) == (True, 4)
    assert [w.message for w in warnings] == [
        "Daemonize: invalid boolean 'maybe' (use true or false), keeping true"
    ]


def test_config_defaults_match_reTurn() -> None:
    config = Config()
    assert (
        config.turn_port,
        config.tls_turn_port,
        config.nonce_lifetime,
        config.allocation_port_range_min,
        config.allocation_port_range_max,
        config.default_allocation_lifetime,
        config.max_allocation_lifetime,
        config.authentication_realm,
        config.user_database_file,
    ) == (3478, 5349, 3600, 49152, 65535, 600, 3600, "reTurn", None)


def test_config_replace_returns_changed_copy() -> None:
    config = Config()
    changed = config.replace(turn_port=0)
    assert (config.turn_port, changed.turn_port) == (3478, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.turn_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("password", "shown"), [("resip", "****"), ("", "")], ids=["set", "empty"])
def test_config_describe_masks_secrets(password: str, shown: str) -> None:
    described = dict(Config(tls_private_key_password=password).describe())
    assert described["TlsPrivateKeyPassword"] == shown
    assert "resip" not in str(Config(tls_private_key_password="resip").describe())


def test_config_describe_lists_every_field_once() -> None:
    config = Config(allowed_peer_addresses=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
    described = config.describe()
    names = [name for name, _ in described]
    assert len(names) == len(set(names)) == len(dataclasses.fields(Config))
    assert dict(described)["AllowedPeerAddresses"] == "127.0.0.0/8, ::1/128"
    assert dict(described)["PadSoftwareName"] == "true"
    assert dict(described)["UserDatabaseFile"] == ""


def test_config_keys_cover_every_field() -> None:
    assert {spec.field for spec in KEYS.values()} == {f.name for f in dataclasses.fields(Config)}
    assert all(key == spec.name.lower() for key, spec in KEYS.items())


@pytest.mark.parametrize(
    ("warning", "shown"),
    [
        (ConfigWarning("a.config", 3, "m"), "a.config:3: m"),
        (ConfigWarning("a.config", 0, "m"), "a.config: m"),
    ],
    ids=["with-line", "without-line"],
)
def test_config_warning_str(warning: ConfigWarning, shown: str) -> None:
    assert str(warning) == shown


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), {}),
        (
            ("--TurnPort=1", "-LogLevel:DEBUG", "/Realm=a:b"),
            {"turnport": "1", "loglevel": "DEBUG", "realm": "a:b"},
        ),
        (("--SoftwareName=",), {"softwarename": ""}),
    ],
    ids=["none", "spellings", "empty-value"],
)
def test_parse_overrides_maps_lowercase_names(args: tuple[str, ...], expected: dict[str, str]) -> None:
    assert parse_overrides(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--TurnPort=1", "--TURNPORT=2"), "<command line>:2: duplicate key 'TURNPORT' (also argument 1)"),
        (("config.file",), "<command line>:1: expected --Name=Value, got 'config.file'"),
        (("--=1",), "<command line>:1: missing key name in '--=1'"),
    ],
    ids=["duplicate", "positional", "no-name"],
)
def test_parse_overrides_rejects(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_overrides(args)
    assert str(raised.value) == message


def test_config_sample_loads_without_warnings(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / MAIN)
    (tmp_path / "users.txt").write_text("alice:secret:reTurn:authorized\n")
    config, warnings = load_config(tmp_path / MAIN)
    assert warnings == []
    assert config == Config(
        turn_address="127.0.0.1",
        turn_v6_address="::1",
        turn_port=3478,
        tls_turn_port=0,
        user_database_file=str(tmp_path / "users.txt"),
        user_database_hashed_passwords=False,
        allowed_peer_addresses=(ip_network("127.0.0.0/8"), ip_network("::1/128")),
        logging_type="cout",
        log_level="INFO",
        tls_server_certificate_filename=str(tmp_path / "server.pem"),
        tls_temp_dh_filename=str(tmp_path / "dh2048.pem"),
        log_filename=str(tmp_path / "reTurnServer.log"),
        legacy_channel_numbers=True,
    )


def test_config_sample_documents_every_key_with_its_default() -> None:
    sample = SAMPLE.read_text()
    active = dict(re.findall(r"^([A-Za-z0-9]+) = (.*)$", sample, re.MULTILINE))
    commented = dict(re.findall(r"^# ([A-Za-z0-9]+) =[ ]?(.*)$", sample, re.MULTILINE))
    for spec in KEYS.values():
        if spec.fallback_for is not None:
            assert spec.name in sample
            continue
        if spec.name in active:
            assert spec.name not in commented, spec.name
            continue
        assert spec.name in commented, f"{spec.name} missing from the sample config"
        assert commented[spec.name] == format_value(spec.default), spec.name
    assert not [line for line in sample.splitlines() if line != line.rstrip()]


def test_config_kinds_all_exercised() -> None:
    assert {spec.kind for spec in KEYS.values()} == set(Kind)


@pytest.mark.requires((SAMPLE.parent / "users.txt").is_file(), "conf/users.txt not present")
def test_config_sample_loads_in_place() -> None:
    config, warnings = load_config(SAMPLE)
    assert warnings == []
    assert config.user_database_file == str(SAMPLE.parent / "users.txt")


def test_config_empty_turn_v6_address_disables_ipv6_listeners(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("test:1234:reTurn:authorized\n")
    path = tmp_path / "reTurnServer.config"
    path.write_text("UserDatabaseFile = users.txt\nTurnV6Address =\n")
    config, warnings = load_config(path)
    assert config.turn_v6_address == ""
    assert warnings == []
