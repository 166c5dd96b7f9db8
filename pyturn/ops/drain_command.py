"""`pyturn drain -c CONFIG [--wait]`: tell the running instance to drain (SIGUSR1 to the PID in its PidFile).

Draining (docs/scaling.md) stops new allocations (300 to AlternateServers, or 508), keeps relaying and refreshing
the existing ones, turns /readyz to 503, and the process exits 0 once the last allocation ends or after
DrainTimeout. ``--wait`` returns only when the process is gone (systemd ExecStop, a Kubernetes preStop hook).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence

from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config
from pyturn.ops.daemon import EXIT_CONFIG, EXIT_OK, _read_pid, is_pyturn_process
from pyturn.ops.subcommands import EXIT_NO_INPUT, EXIT_REFUSED, CommandParser

POLL = 0.5  # seconds between checks that the drained process is gone
GRACE = 10  # seconds --wait allows beyond DrainTimeout (closing sockets, a slow last tick)


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="pyturn drain",
        description="Make the pyturn named by the configuration's PidFile drain: no new allocations, existing "
                    "ones keep flowing, exit 0 when the last ends or after DrainTimeout.",
        epilog="exit codes: 0 signalled (and with --wait: exited), 1 not running or still running after the "
               "wait, 64 usage, 66 PidFile unreadable, 78 configuration error (or no PidFile)",
    )
    parser.add_argument("-c", "--config", metavar="CONFIG", default="reTurnServer.config",
                        help="the running instance's configuration (its PidFile)")
    parser.add_argument("--wait", action="store_true", help="return once the process has exited")
    parser.add_argument("--timeout", type=int, metavar="SECONDS",
                        help="with --wait: give up after this long (default: DrainTimeout + 10)")
    return parser


def main(argv: Sequence[str]) -> int:
    arguments = _parser().parse_args(argv)
    try:
        config, _ = load_config(arguments.config)
    except ConfigError as error:
        sys.stderr.write(f"pyturn drain: {error}\n")
        return EXIT_CONFIG
    if not config.pid_file:
        sys.stderr.write(f"pyturn drain: {arguments.config} sets no PidFile: signal the process with SIGUSR1\n")
        return EXIT_CONFIG
    try:
        with open(config.pid_file, "rb") as stream:
            pid = _read_pid(stream.read(32))
    except OSError as error:
        sys.stderr.write(f"pyturn drain: cannot read PidFile {config.pid_file}: {error.strerror or error}\n")
        return EXIT_NO_INPUT
    if pid is None or not is_pyturn_process(pid):
        sys.stderr.write(f"pyturn drain: no running pyturn in PidFile {config.pid_file}\n")
        return EXIT_REFUSED
    os.kill(pid, signal.SIGUSR1)
    sys.stdout.write(f"pyturn drain: pid {pid} is draining (DrainTimeout {config.drain_timeout} s)\n")
    if not arguments.wait:
        return EXIT_OK
    timeout = arguments.timeout if arguments.timeout is not None else config.drain_timeout + GRACE
    deadline = time.monotonic() + timeout
    while is_pyturn_process(pid):
        if time.monotonic() >= deadline:
            sys.stderr.write(f"pyturn drain: pid {pid} still running after {timeout} s\n")
            return EXIT_REFUSED
        time.sleep(POLL)
    sys.stdout.write(f"pyturn drain: pid {pid} has exited\n")
    return EXIT_OK
