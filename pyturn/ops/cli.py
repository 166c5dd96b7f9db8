"""`pyturn -c FILE` / `pyturn FILE [--Key=Value ...]`: reTurnServer's command line, signals and exit codes.

Exit codes (documented in README): 0 clean stop; 64 usage error; 78 configuration error; 71 start-up failure
(a port in use, an address not available, unusable TLS files, a failed privilege drop); 75 already running
(PidFile names a live pyturn). Process plumbing (PID file, daemonizing, RunAsUser, sd_notify) is in pyturn.ops.daemon.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from pyturn import __version__
from pyturn.config import Config, ConfigWarning
from pyturn.errors import ConfigError, PyturnError, UserDBError
from pyturn.files.configfile import load_config
from pyturn.ops.daemon import (
    EXIT_ALREADY_RUNNING,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_STARTUP,
    EXIT_USAGE,
    PidFile,
    ServiceError,
    StartupReport,
    absolute_paths,
    daemonize,
    drop_privileges,
    notify_ready,
    notify_reloading,
    notify_status,
    notify_stopping,
)
from pyturn.ops.logsetup import NOTICE, configure_logging, log_file_descriptors, reopen_log_files
from pyturn.ops.subcommands import COMMANDS as HELPER_COMMANDS
from pyturn.ops.subcommands import run_subcommand

log = logging.getLogger("pyturn")

__all__ = ["EXIT_ALREADY_RUNNING", "EXIT_CONFIG", "EXIT_OK", "EXIT_STARTUP", "EXIT_USAGE", "main", "run"]
DEFAULT_CONFIG = "reTurnServer.config"  # reTurn opens this in the current directory when no file is given

USAGE = f"""usage: pyturn [-c] [CONFIG] [--Key=Value ...] [--check-config] [--version] [-h]
       pyturn status [-c CONFIG] [--interval SECONDS]   (a running server's metrics, summarised)
       pyturn users add|passwd|delete|list FILE [USER] [--realm REALM] [--password-stdin]
       pyturn credentials [-c CONFIG] [--secret-file FILE] [--user NAME] [--ttl SECONDS] [--json]
       pyturn dns-records -c CONFIG --domain DOMAIN [--host NAME]
       pyturn drain [-c CONFIG] [--wait]   (SIGUSR1 to the running instance: drain, then exit 0)

pyturn {__version__}: a STUN/TURN server that reads reSIProcate reTurn's configuration.

  CONFIG             reTurnServer.config (or a .yaml mapping of the same keys);
                     default: ./{DEFAULT_CONFIG}
  -c CONFIG          the same, as an option
  --Key=Value        override any configuration key (reTurn syntax; also --Key:Value)
  --check-config     print the effective configuration (secrets masked) and exit
  --version          print the version and exit
  -h, --help         this text

  status, users, credentials, dns-records, drain: subcommands, see `pyturn COMMAND --help`
                     (a config file with one of these names: write ./users or -c users)

exit codes: 0 clean stop, 64 usage error, 78 configuration error, 71 start-up failure,
            75 already running (PidFile)
"""


class UsageError(Exception):
    pass


def _status(argv: Sequence[str]) -> int:
    from pyturn.ops import status

    return status.main(argv)


# `pyturn NAME ...`: a first argument naming a subcommand runs it instead of a server.
SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "status": _status,
    **{name: functools.partial(run_subcommand, name) for name in HELPER_COMMANDS},  # users, credentials, dns-records
}


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
        elif index == 1 and not argument.startswith("-"):
            config_path = argument  # reTurn: a first argument not starting with '-' is the file, '/etc/...' too
        elif argument.startswith("/") and config_path is None and not any(sep in argument for sep in "=:"):
            config_path = argument  # `pyturn --check-config /etc/reTurn/reTurnServer.config`: a path, no Key=Value
        elif argument.startswith(("-", "/")):
            overrides.append(argument)  # reTurn strips leading '-' and '/': --Key=Value, -Key=Value, /Key=Value
        elif config_path is None:
            config_path = argument
        else:
            raise UsageError(f"unexpected argument {argument!r}: the configuration file is {config_path!r}")
    return (config_path or DEFAULT_CONFIG), overrides, check


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SUBCOMMANDS:
        return SUBCOMMANDS[arguments[0]](arguments[1:])
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
        pid_file = PidFile.acquire(config.pid_file) if config.pid_file else None
    except ServiceError as error:
        sys.stderr.write(f"pyturn: {error}\n")
        return error.exit_code
    try:
        return _start(config, warnings, pid_file)
    finally:
        if pid_file is not None:
            pid_file.release()


def _start(config: Config, warnings: list[ConfigWarning], pid_file: PidFile | None) -> int:
    """reTurn's order (docs/compatibility.md "Start-up"): daemonize, PID file, logging, then serve."""
    report = None
    if config.daemonize:
        config = absolute_paths(config)
        report = daemonize()
    try:
        if pid_file is not None:
            pid_file.write()
        configure_logging(config)
    except ServiceError as error:
        return _failed(report, error.exit_code, str(error))
    except (OSError, ConfigError) as error:
        return _failed(report, EXIT_CONFIG, f"cannot set up logging: {error}")
    _log_warnings(warnings)
    if config.daemonize and os.environ.get("NOTIFY_SOCKET"):
        log.warning("Daemonize = true under a systemd Type=notify unit: pass --Daemonize=false")
    try:
        return run(config, pid_file=pid_file, report=report)
    finally:
        if report is not None:
            report.send(EXIT_STARTUP, "start-up ended without a result")


def _failed(report: StartupReport | None, code: int, message: str) -> int:
    """A start-up failure: told on stderr (and to the waiting parent when daemonized)."""
    sys.stderr.write(f"pyturn: {message}\n")
    if report is not None:
        report.send(code, message)
    return code


def _log_warnings(warnings: list[ConfigWarning]) -> None:
    for warning in warnings:
        log.warning("%s", warning)


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(config: Config, *, pid_file: PidFile | None = None, report: StartupReport | None = None) -> int:
    """Serve until SIGINT/SIGTERM/SIGQUIT; SIGHUP reopens the log file and reloads the users.

    With Workers other than 1 this process becomes the master of worker processes (pyturn.ops.workers).
    """
    from pyturn.ops.workers import run_workers, worker_count
    from pyturn.server import ephemeral_overlap

    overlap = ephemeral_overlap(config.allocation_port_range_min, config.allocation_port_range_max)
    if overlap is not None:
        log.warning("%s", overlap)
    if worker_count(config) > 1:
        return run_workers(config, _worker_main, report)
    _event_loop_policy()
    try:
        return asyncio.run(_serve(config, pid_file, report))
    except KeyboardInterrupt:
        return EXIT_OK


def _worker_main(
    config: Config,
    secret: bytes,
    report: StartupReport,
    listen_sockets: list[socket.socket],
    relay_ports: tuple[int, int],
) -> int:
    """One worker process: a whole server on its slice of the relay ports, sharing the ports by SO_REUSEPORT
    through the listening sockets the master bound for it."""
    _event_loop_policy()
    return asyncio.run(_serve(
        config, None, report, secret=secret, reuse_port=True, listen_sockets=listen_sockets, relay_ports=relay_ports
    ))


async def _serve(
    config: Config,
    pid_file: PidFile | None,
    report: StartupReport | None,
    *,
    secret: bytes | None = None,
    reuse_port: bool = False,
    listen_sockets: list[socket.socket] | None = None,
    relay_ports: tuple[int, int] | None = None,
) -> int:
    from pyturn.server import Server, StartupError

    def fail(code: int, message: str) -> int:
        log.error("%s", message)
        if report is not None:
            report.send(code, message)
        return code

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(signum, stop.set)
    try:
        # A service has no test asserting on its events: keep none (memory stays flat under churn).
        server = Server(
            config, secret=secret, reuse_port=reuse_port, listen_sockets=listen_sockets or (), keep_events=0,
            relay_ports=relay_ports,
        )
    except (UserDBError, PyturnError) as error:
        return fail(EXIT_CONFIG, f"cannot load users: {error}")
    try:
        await server.start()
    except (StartupError, OSError, PyturnError) as error:
        return fail(EXIT_STARTUP, f"start-up failed: {error}")
    try:
        # docs/compatibility.md "Start-up": after every listener is bound, hand the open files over, then switch user.
        owned_files = [*log_file_descriptors(), *([pid_file.fd] if pid_file is not None else [])]
        identity = drop_privileges(config.run_as_user, config.run_as_group, chown_fds=owned_files)
    except ServiceError as error:
        await server.close()
        return fail(error.exit_code, str(error))
    if identity is not None:
        log.info("running as user %s (uid %d, gid %d)", identity.user, identity.uid, identity.gid)
    loop.add_signal_handler(signal.SIGHUP, _on_hangup, server)
    drains: list[asyncio.Task[None]] = []
    loop.add_signal_handler(signal.SIGUSR1, _on_drain, server, stop, drains)
    serving = ", ".join(
        f"{kind} {host}:{port}" for kind, addresses in server.addresses.items() for host, port in addresses
    )
    log.log(NOTICE, "pyturn %s serving %s", __version__, serving)
    notify_ready(f"serving {serving}")
    if report is not None:
        report.send(EXIT_OK)
    try:
        await stop.wait()
    finally:
        notify_stopping()
        log.info("stopping")
        for task in drains:
            task.cancel()
        await server.close()
    return EXIT_OK


def _on_drain(server: object, stop: asyncio.Event, drains: list[asyncio.Task[None]]) -> None:
    """SIGUSR1 (`pyturn drain`): stop taking allocations, exit 0 once the last one ends or after DrainTimeout.
    SIGTERM meanwhile still stops at once."""
    from pyturn.server import Server

    assert isinstance(server, Server)
    if server.draining:
        return
    server.drain()
    timeout = server.config.drain_timeout
    notify_status(f"draining: {server.allocation_count()} allocations left, at most {timeout} s")

    async def drain_then_stop() -> None:
        if await server.wait_drained(float(timeout)):
            log.log(NOTICE, "drained: the last allocation has ended")
        else:
            log.warning("DrainTimeout (%d s) reached with %d allocations left: stopping", timeout,
                        server.allocation_count())
        stop.set()

    drains.append(asyncio.get_running_loop().create_task(drain_then_stop()))


def _on_hangup(server: object) -> None:
    from pyturn.server import Server

    assert isinstance(server, Server)
    notify_reloading()
    log.info("SIGHUP: reopening log files, reloading users and re-reading the host's addresses")
    reopen_log_files()
    server.refresh_addresses()
    server.reload_users()
    server.reload_tls()
    server.reload_nonce_secret()
    notify_ready()


if __name__ == "__main__":
    raise SystemExit(main())
