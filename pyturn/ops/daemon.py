"""Process plumbing for running pyturn as a service: PID file, daemonizing, privilege drop, systemd notify.

reTurn's order is kept (docs/compatibility.md "Start-up"): already-running check, daemonize, logging, bind listeners,
drop
privileges. Differences from reTurn, on purpose:
* The PID file is written whenever PidFile is set (reTurn: only when daemonizing), holds "<pid>\\n", is locked
  with flock() for the life of the process and is removed on exit.
* "Already running" exits with 75 (EX_TEMPFAIL), not 0, so a supervisor can tell it from a clean stop.
* Daemonizing is a double fork with setsid(); the original process waits until the server is serving (or has
  failed) and exits with the server's start-up status instead of exiting 0 straight away.
* A failed privilege drop exits with 71 (EX_OSERR), not 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pyturn.config import Config
from pyturn.errors import PyturnError

# sysexits.h values; README documents them.
EXIT_OK = 0
EXIT_USAGE = 64  # EX_USAGE
EXIT_STARTUP = 71  # EX_OSERR: a port in use, unusable TLS files, a failed privilege drop
EXIT_ALREADY_RUNNING = 75  # EX_TEMPFAIL
EXIT_CONFIG = 78  # EX_CONFIG


class ServiceError(PyturnError):
    """A process-level step failed; exit_code is the status the process should end with."""

    def __init__(self, message: str, exit_code: int = EXIT_STARTUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AlreadyRunning(ServiceError):
    """PidFile names a live pyturn process."""

    def __init__(self, path: str, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process holds its lock"
        super().__init__(f"already running ({who}, PidFile {path})", EXIT_ALREADY_RUNNING)
        self.pid = pid


# ------------------------------------------------------------------------------------------------ PID file


def _read_pid(data: bytes) -> int | None:
    text = data.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_pyturn_process(pid: int) -> bool:
    """True when pid is alive and looks like pyturn: its command line names pyturn, or (when the command
    line cannot be read) /proc/<pid>/exe is our own executable, as reTurn checks."""
    if pid == os.getpid():
        return False  # a stale file from an earlier life of this pid (e.g. PID 1 in a restarted container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            arguments = stream.read().split(b"\0")
        return any(b"pyturn" in argument for argument in arguments)
    except OSError:
        pass
    try:
        return os.path.samefile(f"/proc/{pid}/exe", "/proc/self/exe")
    except OSError:
        return False


class PidFile:
    """An exclusively locked PID file. acquire() before daemonizing, write() in the final process,
    release() on exit (removes the file, or empties it when the directory is no longer writable)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self._written = False

    @classmethod
    def acquire(cls, path: str) -> PidFile:
        """Lock path (creating it). AlreadyRunning when another live pyturn holds it; a stale file is reused.
        ServiceError (exit 71) when it cannot be opened."""
        path = os.path.abspath(path)  # release() may run after daemonize() moved to "/"
        for _attempt in range(3):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise ServiceError(f"cannot open PidFile {path}: {error.strerror or error}") from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(os.pread(fd, 32, 0))
                os.close(fd)
                raise AlreadyRunning(path, pid) from None
            except OSError:
                pass  # a file system without flock: fall back to the /proc check alone
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
            except OSError:
                same_file = False
            if not same_file:  # the previous owner removed the file between our open and our lock
                os.close(fd)
                continue
            pid = _read_pid(os.pread(fd, 32, 0))
            if pid is not None and is_pyturn_process(pid):
                os.close(fd)
                raise AlreadyRunning(path, pid)
            return cls(path, fd)
        raise ServiceError(f"cannot lock PidFile {path}: it keeps being replaced")

    def write(self) -> None:
        """Record the current process's pid ("<pid>\\n"), replacing whatever the file held."""
        data = f"{os.getpid()}\n".encode("ascii")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
        except OSError as error:
            raise ServiceError(f"cannot write PidFile {self.path}: {error.strerror or error}") from error
        self._written = True

    def release(self) -> None:
        """Remove the file if it still holds our pid; close the lock. Safe to call twice."""
        if self.fd < 0:
            return
        try:
            if self._written and _read_pid(os.pread(self.fd, 32, 0)) == os.getpid():
                try:
                    os.unlink(self.path)
                except PermissionError:
                    os.ftruncate(self.fd, 0)  # privileges dropped and the folder is root's: leave it empty
                except FileNotFoundError:
                    pass
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


# ------------------------------------------------------------------------------------------- daemonizing


@dataclass(slots=True)
class StartupReport:
    """The daemon's channel back to the process that started it (None outside daemon mode)."""

    fd: int

    def send(self, exit_code: int, message: str = "") -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, f"{exit_code} {message}".encode("utf-8", "replace")[:4000])
        os.close(self.fd)
        self.fd = -1


def daemonize() -> StartupReport:
    """Double fork + setsid + chdir("/") + umask(022) + stdio to /dev/null. Returns in the daemon only.

    The original process stays until the daemon reports through StartupReport.send(): it prints the
    daemon's failure message (if any) to stderr and exits with the daemon's status, or with 71 when the
    daemon died without reporting. Call before the event loop starts and before log files are opened.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_end)
        os.waitpid(child, 0)  # the intermediate process exits at once; reap it
        os._exit(_wait_for_daemon(read_end))
    os.close(read_end)
    os.setsid()  # leave the controlling terminal and the caller's process group
    if os.fork() > 0:
        os._exit(EXIT_OK)  # the session leader goes, so the daemon can never reacquire a terminal
    os.chdir("/")
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if null > 2:
        os.close(null)
    os.set_inheritable(write_end, False)
    return StartupReport(write_end)


_PATH_FIELDS = ("user_database_file", "tls_server_certificate_filename", "tls_server_private_key_filename",
                "tls_temp_dh_filename", "log_filename", "pid_file")


def absolute_paths(config: Config) -> Config:
    """The config with every relative file name made absolute: daemonize() moves to "/" before they are read."""
    changes = {name: os.path.abspath(value) for name in _PATH_FIELDS
               if isinstance(value := getattr(config, name), str) and value and not os.path.isabs(value)}
    return config.replace(**changes) if changes else config


def _wait_for_daemon(read_end: int) -> int:
    chunks = []
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    report = b"".join(chunks).decode("utf-8", "replace")
    code_text, _, message = report.partition(" ")
    if not code_text.isdigit():
        sys.stderr.write("pyturn: the daemon exited during start-up (see its log)\n")
        return EXIT_STARTUP
    if message:
        sys.stderr.write(f"pyturn: {message}\n")
    return int(code_text)


# ---------------------------------------------------------------------------------------- privilege drop


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    uid: int
    gid: int


def resolve_identity(user: str, group: str = "") -> Identity:
    """RunAsUser / RunAsGroup -> ids. Names or numbers; empty group = the user's primary group."""
    try:
        entry = pwd.getpwnam(user)
        uid, primary_gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    except KeyError:
        if not user.isdigit():
            raise ServiceError(f"RunAsUser: no such user {user!r}") from None
        uid, name = int(user), user
        try:
            primary_gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            primary_gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            if not group.isdigit():
                raise ServiceError(f"RunAsGroup: no such group {group!r}") from None
            gid = int(group)
    elif primary_gid >= 0:
        gid = primary_gid
    else:
        raise ServiceError(f"RunAsUser: uid {uid} has no passwd entry; set RunAsGroup as well")
    return Identity(name, uid, gid)


def drop_privileges(user: str, group: str = "", *, chown_fds: Iterable[int] = ()) -> Identity | None:
    """Switch to RunAsUser/RunAsGroup after the listeners are bound (docs/compatibility.md "Start-up").

    Hands the open files in chown_fds (PID file, log file) to the new owner first, then initgroups, setgid,
    setuid. Nothing happens when user is empty or when we already run as that user and group. Returns the
    identity switched to, or None. ServiceError (exit 71) when the switch is impossible or incomplete.
    """
    if not user:
        return None
    identity = resolve_identity(user, group)
    if os.getuid() == os.geteuid() == identity.uid and os.getgid() == os.getegid() == identity.gid:
        return None
    if os.geteuid() != 0:
        raise ServiceError(
            f"cannot switch to user {identity.user} (uid {identity.uid}, gid {identity.gid}): "
            f"running as uid {os.geteuid()}, only root can switch users"
        )
    try:
        for fd in chown_fds:
            os.fchown(fd, identity.uid, identity.gid)
        if identity.user.isdigit() and not _has_passwd_entry(identity.uid):
            os.setgroups([identity.gid])
        else:
            os.initgroups(identity.user, identity.gid)
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as error:
        raise ServiceError(
            f"cannot switch to user {identity.user} (uid {identity.uid}, gid {identity.gid}): "
            f"{error.strerror or error}"
        ) from error
    if identity.uid != 0 and _can_regain_root():
        raise ServiceError(f"switched to user {identity.user} but could become root again; refusing to run")
    return identity


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


# ---------------------------------------------------------------------------------------- systemd notify


def sd_notify(*states: str) -> bool:
    """Send sd_notify(3) state lines ("READY=1", ...) to $NOTIFY_SOCKET; False when there is none.

    The variable stays set so that later notifications (RELOADING=1, STOPPING=1) reach systemd too. A name
    starting with '@' is in the abstract namespace.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock and other address families are not used for services started by systemd
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode("utf-8"), address)
    except OSError:
        return False
    return True


def notify_ready(status: str = "") -> None:
    sd_notify("READY=1", *((f"STATUS={status}",) if status else ()))


def notify_reloading() -> None:
    """systemd >= 253 wants the monotonic clock beside RELOADING=1; older versions ignore it."""
    sd_notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def notify_stopping() -> None:
    sd_notify("STOPPING=1")


def notify_status(status: str) -> None:
    """A free-form line `systemctl status` shows (e.g. how a drain is going)."""
    sd_notify(f"STATUS={status}")
