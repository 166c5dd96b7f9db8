"""The keys of many-instance deployments (docs/scaling.md): AlternateServers, AlternateDomain, MaxRelayedBitrate,
DrainTimeout and NonceSecretFile; bad values stop start-up with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config
from pyturn.files.noncesecret import NonceSecretError, load_nonce_secret

SECRET = "0123456789abcdef0123456789abcdef"


def _write(tmp_path: Path, body: str, name: str = "reTurnServer.config") -> Path:
    (tmp_path / "users.txt").write_text("test:1234:reTurn:authorized\n")
    path = tmp_path / name
    path.write_text("UserDatabaseFile = users.txt\n" + body)
    return path


def test_alternate_servers_ipv4_and_bracketed_ipv6(tmp_path: Path) -> None:
    path = _write(tmp_path, "AlternateServers = 198.51.100.20:3478, [2001:db8::20]:3479\n"
                            "AlternateDomain = turn.example.net\nMaxRelayedBitrate = 800000000\nDrainTimeout = 120\n")
    config, warnings = load_config(path)
    assert warnings == []
    assert config.alternate_servers == (("198.51.100.20", 3478), ("2001:db8::20", 3479))
    assert config.alternate_domain == "turn.example.net"
    assert config.max_relayed_bitrate == 800_000_000
    assert config.drain_timeout == 120
    described = dict(config.describe())
    assert described["AlternateServers"] == "198.51.100.20:3478, [2001:db8::20]:3479"


def test_scaling_defaults(tmp_path: Path) -> None:
    config, _ = load_config(_write(tmp_path, ""))
    assert config.alternate_servers == ()
    assert config.drain_timeout == 3600
    assert config.max_relayed_bitrate == 0
    assert config.nonce_secret_file == ""


def test_alternate_servers_yaml_list(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("test:1234:reTurn:authorized\n")
    path = tmp_path / "pyturn.yaml"
    path.write_text("UserDatabaseFile: users.txt\n"
                    "AlternateServers:\n  - 198.51.100.20:3478\n  - '[2001:db8::20]:3478'\n")
    config, _ = load_config(path)
    assert config.alternate_servers == (("198.51.100.20", 3478), ("2001:db8::20", 3478))


@pytest.mark.parametrize(("value", "words"), [
    ("turn.example.net:3478", "not an IP address"),
    ("198.51.100.20", "not IP:port"),
    ("2001:db8::20:3478", "not IP:port"),
    ("198.51.100.20:70000", "out of range"),
    ("198.51.100.20:0", "out of range"),
    ("[198.51.100.20]:3478", "brackets"),
    ("198.51.100.20:3478,,198.51.100.21:3478", "empty entry"),
    ("0.0.0.0:3478", "wildcard"),
])
def test_alternate_servers_errors_name_file_and_line(tmp_path: Path, value: str, words: str) -> None:
    path = _write(tmp_path, f"TurnPort = 3478\nAlternateServers = {value}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.path == str(path)
    assert raised.value.line == 3
    assert words in raised.value.message


def test_drain_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, "DrainTimeout = 0\n"))
    assert raised.value.line == 2


def test_nonce_secret_file_loads(tmp_path: Path) -> None:
    (tmp_path / "nonce.secret").write_text(f"# rotated 2026-12\n{SECRET}\n\n{SECRET[::-1]}\n")
    config, _ = load_config(_write(tmp_path, "NonceSecretFile = nonce.secret\n"))
    assert config.nonce_secret_file == str(tmp_path / "nonce.secret")
    assert load_nonce_secret(config.nonce_secret_file) == [SECRET.encode(), SECRET[::-1].encode()]


def test_nonce_secret_file_short_secret_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "nonce.secret").write_text(f"{SECRET}\n# next\nxyzzy\n")
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, "NonceSecretFile = nonce.secret\n"))
    assert raised.value.path == str(tmp_path / "nonce.secret")
    assert raised.value.line == 3
    assert "xyzzy" not in str(raised.value)  # the secret itself is never shown


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_nonce_secret_file_unusable_names_the_config_line(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "nonce.secret").write_text(content)
    path = _write(tmp_path, "\nNonceSecretFile = nonce.secret\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert (raised.value.path, raised.value.line) == (str(path), 3)
    assert raised.value.message.startswith("NonceSecretFile:")


def test_nonce_secret_error_carries_line(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"\xef\xbb\xbfabc\n")
    with pytest.raises(NonceSecretError) as raised:
        load_nonce_secret(tmp_path / "s")
    assert raised.value.line == 1
