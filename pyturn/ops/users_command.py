"""`pyturn users add|passwd|delete|list FILE [USER] --realm REALM`: edit a user file without apache2-utils.

Lines are written the way Apache htdigest writes them (``user:realm:HA1``), which pyturn reads beside reTurn's
own ``login:password:realm:state`` lines whatever UserDatabaseHashedPasswords says (reTurn itself does not read
htdigest lines). Users are matched exactly as the server parses lines, in both formats. Every line the command
does not change is kept byte for byte, including lines it cannot parse. The file is replaced
atomically: a temporary file in the same directory, flushed, given the old mode and owner, then renamed over it.
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from collections.abc import Sequence

from pyturn.core.userdb import htdigest_line, user_line_identity
from pyturn.ops.daemon import EXIT_OK, EXIT_USAGE
from pyturn.ops.subcommands import EXIT_CANT_CREATE, EXIT_NO_INPUT, EXIT_REFUSED, CommandParser

DEFAULT_REALM = "reTurn"  # AuthenticationRealm's default
NEW_FILE_MODE = 0o640  # HA1 keys are password equivalents for this realm: not world-readable

RELOAD_REMINDER = (
    "pyturn re-reads the user file on SIGHUP (systemctl reload pyturn, or kill -HUP with its PID), and by "
    "itself within UserDatabaseCheckInterval seconds when that is not 0.\n"
)


class _Refused(Exception):
    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="pyturn users",
        description="Add, change, delete or list users of a pyturn/reTurn user file (htdigest lines).",
        epilog="exit codes: 0 done, 1 refused (user exists / unknown / passwords differ), 64 usage, "
               "66 file unreadable, 73 file not writable",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="add|passwd|delete|list",
                                    parser_class=CommandParser)
    for action, text in (("add", "add a user (refused if it exists)"),
                         ("passwd", "change the password of an existing user"),
                         ("delete", "remove a user")):
        sub = actions.add_parser(action, help=text, description=text)
        sub.add_argument("file", metavar="FILE")
        sub.add_argument("user", metavar="USER")
        sub.add_argument("--realm", default=DEFAULT_REALM, help=f"the AuthenticationRealm (default {DEFAULT_REALM})")
        if action != "delete":
            sub.add_argument("--password-stdin", action="store_true",
                             help="read the password from the first line of standard input")
    listing = actions.add_parser("list", help="list the users (never their keys)", description="list the users")
    listing.add_argument("file", metavar="FILE")
    listing.add_argument("--realm", help="only this realm")
    return parser


def _check_name(what: str, value: str) -> None:
    if not value:
        raise _Refused(f"empty {what}", EXIT_USAGE)
    if ":" in value or any(char in value for char in "\r\n\t") or value != value.strip(" "):
        raise _Refused(f"the {what} {value!r} cannot contain ':', tabs, line breaks or surrounding spaces",
                       EXIT_USAGE)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass("New password: ")
            again = getpass.getpass("Re-type new password: ")
        except (EOFError, KeyboardInterrupt):
            raise _Refused("no password given") from None
        if password != again:
            raise _Refused("the passwords differ; nothing changed")
    if not password:
        raise _Refused("empty password; nothing changed", EXIT_USAGE)
    return password


def _read_lines(path: str, *, missing_ok: bool) -> list[bytes]:
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise _Refused(f"cannot read {path}: no such file", EXIT_NO_INPUT) from None
    except OSError as error:
        raise _Refused(f"cannot read {path}: {error.strerror or error}", EXIT_NO_INPUT) from None
    return data.splitlines(keepends=True) if data else []


def _identity(line: bytes) -> tuple[str, str] | None:
    text = line.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    return user_line_identity(text)


def _replace_atomically(path: str, lines: list[bytes]) -> None:
    """Temp file + rename in the file's own directory; the old file's mode and owner are kept."""
    target = os.path.realpath(path)  # a symlinked user file keeps its link: the file it points to is replaced
    directory = os.path.dirname(target) or "."
    try:
        previous: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        previous = None
    try:
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.")
    except OSError as error:
        raise _Refused(f"cannot write in {directory}: {error.strerror or error}", EXIT_CANT_CREATE) from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.writelines(lines)
            stream.flush()
            os.fsync(stream.fileno())
        if previous is not None:
            os.chmod(temporary, previous.st_mode & 0o7777)
            if (previous.st_uid, previous.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.chown(temporary, previous.st_uid, previous.st_gid)
                except PermissionError:
                    raise _Refused(f"cannot give the new {path} its owner back (run as root or as the owner)",
                                   EXIT_CANT_CREATE) from None
        else:
            os.chmod(temporary, NEW_FILE_MODE)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _ends_line(lines: list[bytes]) -> list[bytes]:
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"  # a last line without its end must not merge with the line appended after it
    return lines


def _change(action: str, path: str, user: str, realm: str, from_stdin: bool) -> str:
    _check_name("user name", user)
    _check_name("realm", realm)
    lines = _read_lines(path, missing_ok=action == "add")
    matching = [index for index, line in enumerate(lines) if _identity(line) == (user, realm)]
    if action == "add" and matching:
        raise _Refused(f"user {user!r} already exists in realm {realm!r} (use passwd to change its password)")
    if action in ("passwd", "delete") and not matching:
        raise _Refused(f"no user {user!r} in realm {realm!r} in {path}")
    if action == "delete":
        kept = [line for index, line in enumerate(lines) if index not in matching]
        _replace_atomically(path, kept)
        return f"deleted user {user} (realm {realm}) from {path}\n"
    new_line = htdigest_line(user, realm, _read_password(from_stdin)).encode("utf-8", "surrogateescape")
    if action == "add":
        _replace_atomically(path, [*_ends_line(lines), new_line])
        return f"added user {user} (realm {realm}) to {path}\n"
    # passwd: the first line of the user becomes the new one, any later duplicate goes (the last line would win).
    first = matching[0]
    changed = [new_line if index == first else line for index, line in enumerate(lines)
               if index == first or index not in matching]
    _replace_atomically(path, changed)
    return f"changed the password of user {user} (realm {realm}) in {path}\n"


def _list(path: str, realm: str | None) -> str:
    shown = []
    for line in _read_lines(path, missing_ok=False):
        identity = _identity(line)
        if identity is not None and (realm is None or identity[1] == realm):
            user, user_realm = (part.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                                for part in identity)
            shown.append(f"{user}\t{user_realm}\n")
    return "".join(shown)


def main(argv: Sequence[str]) -> int:
    arguments = _parser().parse_args(list(argv))
    try:
        if arguments.action == "list":
            sys.stdout.write(_list(arguments.file, arguments.realm))
            return EXIT_OK
        message = _change(arguments.action, arguments.file, arguments.user, arguments.realm,
                          getattr(arguments, "password_stdin", False))
    except _Refused as refused:
        sys.stderr.write(f"pyturn users: {refused}\n")
        return refused.code
    sys.stdout.write(message)
    sys.stderr.write(RELOAD_REMINDER)
    return EXIT_OK
