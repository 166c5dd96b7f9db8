"""reTurnServer's command line (docs/compatibility.md "Command line"): first argument = file, then --Key=Value /
-Key=Value / /Key=Value."""

from __future__ import annotations

import pytest

from pyturn.ops.cli import DEFAULT_CONFIG, UsageError, parse_arguments


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param([], (DEFAULT_CONFIG, [], False), id="default-file-in-cwd"),
        pytest.param(["/etc/reTurn/reTurnServer.config", "--Daemonize=false"],
                     ("/etc/reTurn/reTurnServer.config", ["--Daemonize=false"], False), id="debian-unit-form"),
        pytest.param(["reTurnServer.config", "-LogLevel:DEBUG", "/TurnPort=3479"],
                     ("reTurnServer.config", ["-LogLevel:DEBUG", "/TurnPort=3479"], False), id="all-prefixes"),
        pytest.param(["-c", "a.config", "--TurnPort=1"], ("a.config", ["--TurnPort=1"], False), id="dash-c"),
        pytest.param(["--check-config", "a.yaml"], ("a.yaml", [], True), id="check-config-first"),
        pytest.param(["--TurnPort=1"], (DEFAULT_CONFIG, ["--TurnPort=1"], False), id="override-only"),
        pytest.param(["--check-config", "/etc/reTurn/reTurnServer.config"],
                     ("/etc/reTurn/reTurnServer.config", [], True), id="check-config-then-absolute-path"),
        pytest.param(["--check-config", "/etc/reTurn/reTurnServer.config", "/TurnPort=3479"],
                     ("/etc/reTurn/reTurnServer.config", ["/TurnPort=3479"], True), id="absolute-path-then-slash-key"),
    ],
)
def test_cli_parse_arguments(argv: list[str], expected: tuple[str, list[str], bool]) -> None:
    assert parse_arguments(argv) == expected


@pytest.mark.parametrize("argv", [["a.config", "b.config"], ["-c"]], ids=["two-files", "dash-c-without-file"])
def test_cli_parse_arguments_refuses(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_arguments(argv)


def test_cli_first_argument_users_credentials_dns_records_selects_a_helper_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pyturn.ops.cli import main

    assert main(["users"]) == 64  # an action is required
    assert main(["credentials", "--help"]) == 0
    assert "pyturn credentials" in capsys.readouterr().out
    assert main(["dns-records", "--help"]) == 0
    # A configuration file that happens to be called "users" is still reachable as a path.
    assert parse_arguments(["./users"]) == ("./users", [], False)
    assert parse_arguments(["-c", "users"]) == ("users", [], False)
