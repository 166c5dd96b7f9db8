"""Run a command on a pseudo-terminal and answer its password prompts (htdigest and getpass read /dev/tty)."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from collections.abc import Sequence


def run_on_pty(argv: Sequence[str], answers: Sequence[str], *, timeout: float = 10.0,
               env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit status, everything printed). Each answer is typed after the next prompt ending in "password:"."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            os.execvpe(argv[0], list(argv), env if env is not None else dict(os.environ))
        finally:
            os._exit(127)
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                if pending and output.lower().count(b"password:") > len(answers) - len(pending):
                    os.write(fd, pending.pop(0).encode() + b"\n")
        while time.monotonic() < deadline:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                return os.waitstatus_to_exitcode(status), output.decode(errors="replace")
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"{argv[0]} did not finish within {timeout} s:\n{output.decode(errors='replace')}")
    finally:
        os.close(fd)
