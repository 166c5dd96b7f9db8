"""`python -m pyturn.ops.manpage DIR`: writes the pyturn(8) and reTurnServer.config(5) manual pages into DIR.

The key list of reTurnServer.config(5) comes from pyturn.config.KEYS, so the manual cannot drift from the parser.
SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog) dates the pages, for reproducible builds.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pyturn import __version__
from pyturn.config import KEYS, KeySpec, Kind, format_value
from pyturn.ops.daemon import EXIT_ALREADY_RUNNING, EXIT_CONFIG, EXIT_OK, EXIT_STARTUP, EXIT_USAGE

__all__ = ["config_page", "main", "server_page", "write_pages"]

CONFIG_FILE = "/etc/reTurn/reTurnServer.config"
USER_FILE = "/etc/reTurn/users.txt"

_NOTES = {  # a sentence the one-line help in KEYS leaves out
    "turnv6address": "When the host has no IPv6, pyturn warns and serves IPv4 only.",
    "userdatabasefile": "It must be readable at start-up; see USER FILE below.",
    "pidfile": "A second instance with the same PidFile refuses to start (exit status 75).",
    "loggingtype": "Any other value also means syslog.",
    "runasuser": "pyturn binds its sockets first, then switches; without RunAsUser it keeps its user.",
}


def escape(text: str) -> str:
    """Text safe inside a roff line: backslashes and hyphens escaped, no request character at the start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch and epoch.isdigit()
              else datetime.datetime.now(datetime.UTC))
    return moment.strftime("%Y-%m-%d")


def _header(name: str, section: int, summary: str) -> list[str]:
    return [
        f'.TH "{name.upper()}" "{section}" "{_date()}" "pyturn {__version__}" "pyturn"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
    ]


def _paragraphs(*texts: str) -> list[str]:
    lines: list[str] = []
    for text in texts:
        lines += [".PP", escape(text)]
    return lines


def _tagged(items: Iterable[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    for tag, text in items:
        lines += [".TP", f"\\fB{escape(tag)}\\fR", escape(text)]
    return lines


def server_page() -> str:
    """pyturn(8): the command line, signals, exit statuses and files."""
    lines = _header("pyturn", 8, "STUN/TURN relay server that reads reTurn's configuration")
    lines += [
        ".SH SYNOPSIS",
        "\\fBpyturn\\fR [\\fB\\-c\\fR] [\\fICONFIG\\fR] [\\fB\\-\\-\\fR\\fIKey\\fR\\fB=\\fR\\fIValue\\fR ...] "
        "[\\fB\\-\\-check\\-config\\fR] [\\fB\\-\\-version\\fR] [\\fB\\-h\\fR]",
        ".SH DESCRIPTION",
    ]
    lines += _paragraphs(
        "pyturn is a STUN (RFC 8489, RFC 5389, RFC 3489) and TURN (RFC 8656, RFC 5766, RFC 6156) server written "
        "in Python. It reads the configuration file and user file of reSIProcate's reTurnServer, so an existing "
        "reTurn installation keeps its files unchanged.",
        f"The Debian package runs it as the systemd service pyturn.service on {CONFIG_FILE}. pyturn binds its "
        "ports as root and then switches to RunAsUser and RunAsGroup from that file (return:return in the "
        "packaged configuration).",
    )
    lines.append(".SH OPTIONS")
    lines += _tagged([
        ("CONFIG", "The configuration file (a file ending in .yaml or .yml holds the same keys as a YAML "
                   "mapping); default: reTurnServer.config in the current directory."),
        ("-c CONFIG", "The same, as an option."),
        ("--Key=Value", "Override any configuration key, as reTurnServer does (also --Key:Value)."),
        ("--check-config", "Print the effective configuration with secrets masked, and exit."),
        ("--version", "Print the version and exit."),
        ("-h, --help", "Print a short help text and exit."),
    ])
    lines.append(".SH SIGNALS")
    lines += _tagged([
        ("SIGHUP", "Reload the user file and reopen the log file (logrotate sends it)."),
        ("SIGTERM, SIGINT", "Stop cleanly."),
    ])
    lines.append(".SH EXIT STATUS")
    lines += _tagged([
        (str(EXIT_OK), "Stopped cleanly."),
        (str(EXIT_USAGE), "Usage error on the command line."),
        (str(EXIT_STARTUP), "Start-up failure: a port in use, an address not available, unusable TLS files, "
                            "a failed switch of user."),
        (str(EXIT_ALREADY_RUNNING), "Already running: PidFile names a live pyturn."),
        (str(EXIT_CONFIG), "Configuration error, reported as file:line: what is wrong."),
    ])
    lines.append(".SH FILES")
    lines += _tagged([
        (CONFIG_FILE, "The configuration, see reTurnServer.config(5)."),
        (USER_FILE, "The users (UserDatabaseFile)."),
        ("/var/log/reTurnServer/", "Log files when LoggingType = file, rotated by /etc/logrotate.d/pyturn."),
        ("/run/reTurnServer/", "The PID file's directory."),
    ])
    lines += [".SH SEE ALSO", "\\fBreTurnServer.config\\fR(5), \\fBsystemctl\\fR(1), \\fBhtdigest\\fR(1)"]
    return "\n".join(lines) + "\n"


def _default_text(spec: KeySpec) -> str:
    text = format_value(spec.default)
    return f"Default: {text}." if text else "Default: empty."


def config_page() -> str:
    """reTurnServer.config(5): the syntax, every key of pyturn.config.KEYS, and the user file."""
    lines = _header("reTurnServer.config", 5, "configuration file of pyturn and reTurnServer")
    lines.append(".SH DESCRIPTION")
    lines += _paragraphs(
        "One setting per line, Name = Value. Names are case-insensitive. A line whose first non-blank character "
        "is # is a comment; elsewhere # is part of the value. Values keep their trailing spaces and are not "
        "quoted. A key may appear only once, across included files too.",
        "include = other.config reads another file in place; a relative name is looked up beside the including "
        "file first, then relative to the current directory.",
        "Booleans are true/false, on/off, 1/0 or enable/disable. File names without a / (UserDatabaseFile, the "
        "Tls*Filename keys, LogFilename) are read from the folder of the configuration file; PidFile is always "
        "used as given. Every key can also be given on the command line as --Key=Value.",
        "A file ending in .yaml or .yml holds the same keys as a YAML mapping; the peer address keys may then be "
        "lists.",
    )
    lines.append(".SH KEYS")
    for spec in KEYS.values():
        words = [spec.help[:1].upper() + spec.help[1:] + ".", _NOTES.get(spec.name.lower(), ""),
                 f"Type: {_kind_text(spec)}.", _default_text(spec)]
        lines += [".TP", f"\\fB{escape(spec.name)}\\fR", escape(" ".join(word for word in words if word))]
    lines.append(".SH USER FILE")
    lines += _paragraphs(
        "UserDatabaseFile names a text file with one user per line; blank lines and lines starting with # are "
        "ignored. Two formats are read, line by line:",
    )
    lines += _tagged([
        ("login:password:realm:state", "reTurn's format. state is authorized, restricted or refused (a refused "
                                       "line is skipped). With UserDatabaseHashedPasswords = true the password "
                                       "column holds the 32-hex-digit HA1, MD5(login:realm:password)."),
        ("user:realm:HA1", "Apache htdigest format, always hashed; made with htdigest(1)."),
    ])
    lines += _paragraphs(
        "The realm must be what clients send, normally AuthenticationRealm. The file is reloaded on SIGHUP and "
        "when its modification time changes (UserDatabaseCheckInterval). Keep it readable only by the server.",
    )
    lines += [".SH FILES", f"\\fI{escape(CONFIG_FILE)}\\fR, \\fI{escape(USER_FILE)}\\fR",
              ".SH SEE ALSO", "\\fBpyturn\\fR(8), \\fBhtdigest\\fR(1)"]
    return "\n".join(lines) + "\n"


def _kind_text(spec: KeySpec) -> str:
    if spec.kind in (Kind.COUNT, Kind.ULONG):
        return f"integer, at least {spec.minimum}"
    names = {Kind.PATH: "file name", Kind.PLAIN_PATH: "file name", Kind.PORT: "port (0..65535)",
             Kind.USHORT: "integer 0..65535", Kind.BOOL: "boolean"}
    return names.get(spec.kind, str(spec.kind.value))


def write_pages(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("pyturn.8", server_page()), ("reTurnServer.config.5", config_page())):
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1 or arguments[0].startswith("-"):
        sys.stderr.write("usage: python -m pyturn.ops.manpage DIRECTORY\n")
        return EXIT_USAGE
    for path in write_pages(Path(arguments[0])):
        sys.stdout.write(f"{path}\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
