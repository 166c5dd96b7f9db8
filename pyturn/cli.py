"""`pyturn -c FILE` / `pyturn FILE [--Key=Value ...]`: reTurnServer's command line, signals and exit codes.

Exit codes (documented in README): 0 clean stop; 64 usage error; 78 configuration error; 71 start-up failure
(a port in use, an address not available, unusable TLS files, a failed privilege drop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from pyturn import __version__
from pyturn.config import Config, ConfigWarning, load_config
from pyturn.errors import ConfigError, PyturnError, UserDBError
from pyturn.logsetup import configure_logging

log = logging.getLogger("pyturn")

EXIT_OK = 0
EXIT_USAGE = 64
EXIT_STARTUP = 71
EXIT_CONFIG = 78
DEFAULT_CONFIG = "reTurnServer.config"  # reTurn opens this in the current directory when no file is given

USAGE = f"""usage: pyturn [-c] [CONFIG] [--Key=Value ...] [--check-config] [--version] [-h]

pyturn {__version__}: a STUN/TURN server that reads reSIProcate reTurn's configuration.

  CONFIG             reTurnServer.config (or a .yaml mapping of the same keys);
                     default: ./{DEFAULT_CONFIG}
  -c CONFIG          the same, as an option
  --Key=Value        override any configuration key (reTurn syntax; also --Key:Value)
  --check-config     print the effective configuration (secrets masked) and exit
  --version          print the version and exit
  -h, --help         this text

exit codes: 0 clean stop, 64 usage error, 78 configuration error, 71 start-up failure
"""


class UsageError(Exception):
    pass


def parse_arguments(argv: Sequence[str]) -> tuple[str, list[str], bool]:
    """Returns (config path, reTurn-style overrides, check_config)."""
    config_path: str | None = None
    overrides: list[str] = []
    check = False
    index = 0
    while index < len(argv):
        argument = argv[index]
        index += 1
        if argument in ("-c", "--config"):
            if index >= len(argv):
                raise UsageError(f"{argument} needs a file name")
            config_path = argv[index]
            index += 1
        elif argument.startswith("--config="):
            config_path = argument.split("=", 1)[1]
        elif argument == "--check-config":
            check = True
        elif not argument.startswith(("-", "/")) or (config_path is None and not overrides and os.path.exists(argument)
                                                     and argument.startswith("/") and "=" not in argument):
            if config_path is not None:
                raise UsageError(f"unexpected argument {argument!r}: the configuration file is {config_path!r}")
            config_path = argument
        else:
            overrides.append(argument)
    return (config_path or DEFAULT_CONFIG), overrides, check


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(a.lower() in ("-h", "--help", "-?", "--?", "/?") for a in arguments):
        sys.stdout.write(USAGE)
        return EXIT_OK
    if "--version" in arguments:
        sys.stdout.write(f"pyturn {__version__}\n")
        return EXIT_OK
    try:
        config_path, overrides, check = parse_arguments(arguments)
    except UsageError as error:
        sys.stderr.write(f"pyturn: {error}\n{USAGE}")
        return EXIT_USAGE
    try:
        config, warnings = load_config(config_path, overrides)
    except ConfigError as error:
        sys.stderr.write(f"pyturn: {error}\n")
        return EXIT_CONFIG
    if check:
        for warning in warnings:
            sys.stderr.write(f"warning: {warning}\n")
        for key, value in config.describe():
            sys.stdout.write(f"{key} = {value}\n")
        return EXIT_OK
    try:
        configure_logging(config)
    except (OSError, ConfigError) as error:
        sys.stderr.write(f"pyturn: cannot set up logging: {error}\n")
        return EXIT_CONFIG
    _log_warnings(warnings)
    return run(config)


def _log_warnings(warnings: list[ConfigWarning]) -> None:
    for warning in warnings:
        log.warning("%s", warning)


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(config: Config) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM; SIGHUP reloads the users."""
    _event_loop_policy()
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:
        return EXIT_OK


async def _serve(config: Config) -> int:
    from pyturn.server import Server, StartupError

    loop = asyncio.get_running_loop()
    try:
        server = Server(config)
    except (UserDBError, PyturnError) as error:
        log.error("cannot load users: %s", error)
        return EXIT_CONFIG
    try:
        await server.start()
    except (StartupError, OSError, PyturnError) as error:
        log.error("start-up failed: %s", error)
        return EXIT_STARTUP
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_hangup, server)
    log.info("pyturn %s serving %s", __version__, ", ".join(
        f"{kind} {host}:{port}" for kind, addresses in server.addresses.items() for host, port in addresses
    ))
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await server.close()
    return EXIT_OK


def _on_hangup(server: object) -> None:
    from pyturn.logsetup import reopen_log_files
    from pyturn.server import Server

    assert isinstance(server, Server)
    reopen_log_files()
    server.reload_users()


if __name__ == "__main__":
    raise SystemExit(main())
