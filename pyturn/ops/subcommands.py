"""`pyturn users|credentials|dns-records|drain ...`: the operator's helper commands, beside the server itself.

Exit codes (README "Command line"): 0 done; 1 refused (the user exists / does not exist, passwords differ);
64 usage error; 66 an input file cannot be read; 73 the user file cannot be written; 78 configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_REFUSED = 1
EXIT_NO_INPUT = 66  # sysexits.h EX_NOINPUT
EXIT_CANT_CREATE = 73  # sysexits.h EX_CANTCREAT

COMMANDS = ("users", "credentials", "dns-records", "drain")


class CommandParser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE) like the server's own command line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")


def run_subcommand(name: str, argv: Sequence[str]) -> int:
    from pyturn.ops import credentials_command, dns_records, drain_command, users_command

    commands: dict[str, Callable[[Sequence[str]], int]] = {
        "users": users_command.main,
        "credentials": credentials_command.main,
        "dns-records": dns_records.main,
        "drain": drain_command.main,
    }
    try:
        return commands[name](argv)
    except SystemExit as leaving:  # argparse's --help and usage errors: main() returns the code instead
        return leaving.code if isinstance(leaving.code, int) else 0 if leaving.code is None else 64
