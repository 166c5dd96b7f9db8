"""AuthSharedSecret, AuthSharedSecretFile and AuthSharedSecretSeparator in reTurnServer.config and YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config


def _write(tmp_path: Path, text: str, name: str = "reTurnServer.config") -> Path:
    (tmp_path / "users.txt").write_text("test:1234:reTurn:authorized\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_shared_secret_keys(tmp_path: Path) -> None:
    (tmp_path / "turn-secret").write_text("s\n")
    path = _write(tmp_path, "UserDatabaseFile = users.txt\nAuthSharedSecret = one, two ,three\n"
                            "AuthSharedSecretFile = turn-secret\nAuthSharedSecretSeparator = -\n")
    config, warnings = load_config(path)
    assert warnings == []
    assert config.auth_shared_secret == ("one", "two", "three")
    assert config.auth_shared_secret_file == str(tmp_path / "turn-secret")  # bare name: beside the config
    assert config.auth_shared_secret_separator == "-"
    described = dict(config.describe())
    assert described["AuthSharedSecret"] == "****"
    assert "one" not in "".join(value for _, value in config.describe())


def test_config_shared_secret_defaults(tmp_path: Path) -> None:
    config, _ = load_config(_write(tmp_path, "UserDatabaseFile = users.txt\n"))
    assert (config.auth_shared_secret, config.auth_shared_secret_file, config.auth_shared_secret_separator) == (
        (), "", ":")
    assert dict(config.describe())["AuthSharedSecret"] == ""
    assert not config.uses_shared_secrets


@pytest.mark.parametrize("secret_line", ["AuthSharedSecret = s3cret\n", "AuthSharedSecretFile = turn-secret\n"])
def test_config_shared_secret_makes_the_user_file_optional(tmp_path: Path, secret_line: str) -> None:
    (tmp_path / "turn-secret").write_text("s\n")
    config, _ = load_config(_write(tmp_path, "UserDatabaseFile =\n" + secret_line))
    assert not config.user_database_file and config.uses_shared_secrets


def test_config_without_users_or_secrets_still_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UserDatabaseFile"):
        load_config(_write(tmp_path, "UserDatabaseFile =\nAuthSharedSecret =\n"))


def test_config_unreadable_secret_file_is_refused_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_write(tmp_path, "UserDatabaseFile = users.txt\nAuthSharedSecretFile = absent\n"))
    assert refused.value.line == 2 and "AuthSharedSecretFile" in refused.value.message


def test_config_digit_separator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AuthSharedSecretSeparator"):
        load_config(_write(tmp_path, "UserDatabaseFile = users.txt\nAuthSharedSecretSeparator = 0\n"))


def test_config_shared_secrets_as_a_yaml_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "UserDatabaseFile: users.txt\nAuthSharedSecret: [new-secret, old-secret]\n",
                  name="pyturn.yaml")
    config, _ = load_config(path)
    assert config.auth_shared_secret == ("new-secret", "old-secret")


def test_config_shared_secret_error_messages_never_show_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_write(tmp_path, "UserDatabaseFile = users.txt\nAuthSharedSecret = hunter2\n"
                                     "AuthSharedSecret = again\n"))
    assert "hunter2" not in str(refused.value) and "again" not in str(refused.value)
