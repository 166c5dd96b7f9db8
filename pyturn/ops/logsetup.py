"""Logging set-up from reTurn's logging keys (docs/compatibility.md "Logging"). The CLI's job: the library never
configures logging.

LoggingType: cout, cerr, file, or syslog (config.py turns any other word into syslog).
Line format, unstructured: ``LEVEL | YYYYMMDD-HHMMSS.mmm | pyturn[instance] | logger | thread | file:line | message``
as reTurn writes it (level names EMERG..STACK, local time); syslog lines drop level, time and app name because
syslog records them. LogMessageStructure = JSON_CEE: one JSON object per line, after "@cee: " for syslog.
LogFilename takes ``{pid}`` and ``{timestamp}``; LogFileMaxLines / LogFileMaxBytes rotate the file to
``<name>.old`` (or ``<name>_<timestamp>`` with KeepAllLogFiles); reopen_log_files() follows logrotate's moves.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Any

from pyturn.config import Config

APP_NAME = "pyturn"
DEV_LOG = "/dev/log"

# Two levels Python lacks, placed where syslog puts them.
NOTICE = (logging.INFO + logging.WARNING) // 2
STACK = logging.DEBUG // 2
DISABLED = logging.CRITICAL + 10

# reTurn's level names (docs/compatibility.md "Logging") -> logging levels.
LEVELS = {
    "NONE": DISABLED,
    "EMERG": logging.CRITICAL,
    "ALERT": logging.CRITICAL,
    "CRIT": logging.CRITICAL,
    "ERR": logging.ERROR,
    "WARNING": logging.WARNING,
    "NOTICE": NOTICE,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "STACK": STACK,
}

_SYSLOG_PRIORITIES = {"CRITICAL": "crit", "ERROR": "err", "WARNING": "warning", "NOTICE": "notice", "INFO": "info",
                      "DEBUG": "debug", "STACK": "debug"}

logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(STACK, "STACK")


def level_for(name: str) -> int:
    """A reTurn level name (any case, optional LOG_ prefix) -> logging level; unknown names mean DEBUG."""
    name = name.upper().removeprefix("LOG_")
    return LEVELS.get(name, logging.DEBUG)


def level_name(level: int) -> str:
    """A logging level -> the reTurn name printed in log lines."""
    if level >= logging.CRITICAL:
        return "CRIT"
    if level >= logging.ERROR:
        return "ERR"
    if level >= logging.WARNING:
        return "WARNING"
    if level >= NOTICE:
        return "NOTICE"
    if level >= logging.INFO:
        return "INFO"
    if level >= logging.DEBUG:
        return "DEBUG"
    return "STACK"


def app_label(instance: str) -> str:
    return f"{APP_NAME}[{instance}]" if instance else APP_NAME


def expand_log_filename(name: str, started: float | None = None) -> str:
    """LogFilename placeholders: {pid} -> the process id, {timestamp} -> the start time YYYYMMDD-HHMMSS."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started if started is not None else time.time()))
    return name.replace("{pid}", str(os.getpid())).replace("{timestamp}", stamp)


# ------------------------------------------------------------------------------------------------ formatters


def _local_time(created: float) -> str:
    """reTurn's YYYYMMDD-HHMMSS.mmm in local time."""
    milliseconds = int((created % 1) * 1000)
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(created))}.{milliseconds:03d}"


class ReTurnFormatter(logging.Formatter):
    """reTurn's " | "-separated line; for syslog without level, time and app name (docs/compatibility.md "Logging")."""

    def __init__(self, instance: str = "", *, for_syslog: bool = False) -> None:
        super().__init__()
        self.app = app_label(instance)
        self.instance = instance
        self.for_syslog = for_syslog

    def format(self, record: logging.LogRecord) -> str:
        fields = []
        if not self.for_syslog:
            fields += [level_name(record.levelno), _local_time(record.created), self.app]
        elif self.instance:
            fields.append(self.app)
        fields += [record.name, f"{record.thread or 0:x}", f"{record.filename}:{record.lineno}",
                   _message_with_details(self, record)]
        return " | ".join(fields)


class JsonCeeFormatter(logging.Formatter):
    """LogMessageStructure = JSON_CEE: one JSON object per line; "@cee: " in front for syslog (CEE/lumberjack)."""

    def __init__(self, instance: str = "", *, for_syslog: bool = False) -> None:
        super().__init__()
        self.instance = instance
        self.prefix = "@cee: " if for_syslog else ""

    def format(self, record: logging.LogRecord) -> str:
        created = time.localtime(record.created)
        offset = time.strftime("%z", created)
        document: dict[str, Any] = {
            "timestamp": f"{time.strftime('%Y-%m-%dT%H:%M:%S', created)}.{int((record.created % 1) * 1000):03d}"
                         f"{offset[:3]}:{offset[3:]}",
            "level": level_name(record.levelno),
            "app": APP_NAME,
            "pid": record.process if record.process is not None else os.getpid(),
            "logger": record.name,
            "thread": record.thread or 0,
            "file": record.filename,
            "line": record.lineno,
            "message": record.getMessage(),
        }
        if self.instance:
            document["instance"] = self.instance
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return self.prefix + json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _message_with_details(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info:
        message = f"{message}\n{formatter.formatException(record.exc_info)}"
    if record.stack_info:
        message = f"{message}\n{formatter.formatStack(record.stack_info)}"
    return message


# -------------------------------------------------------------------------------------------------- handlers


class ReTurnFileHandler(logging.Handler):
    """LoggingType = file: appends lines; rotates after max_lines lines written since the file was opened or when
    the file reaches max_bytes (0 = never), renaming it to <name>.old (replacing an older one) or, with
    keep_all, to <name>_<YYYYMMDD-HHMMSS>. reopen() starts a new file after an outside move (logrotate)."""

    def __init__(self, path: str, *, max_lines: int = 0, max_bytes: int = 0, keep_all: bool = False) -> None:
        super().__init__()
        self.path = path
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.keep_all = keep_all
        self.lines = 0
        self.bytes = 0
        self.fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.lines = 0
        self.bytes = os.fstat(fd).st_size
        return fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            data = text.encode("utf-8", "backslashreplace")
            self._write_all(data)
            self.lines += text.count("\n")
            self.bytes += len(data)
            if (self.max_lines and self.lines >= self.max_lines) or (self.max_bytes and self.bytes >= self.max_bytes):
                self._rotate()
        except Exception:
            self.handleError(record)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def _rotated_name(self) -> str:
        if not self.keep_all:
            return f"{self.path}.old"
        base = f"{self.path}_{time.strftime('%Y%m%d-%H%M%S')}"
        candidate, counter = base, 1
        while os.path.lexists(candidate):
            candidate = f"{base}.{counter}"
            counter += 1
        return candidate

    def _rotate(self) -> None:
        try:
            os.replace(self.path, self._rotated_name())
        except OSError as error:
            # e.g. the log folder is not writable after the privilege drop: keep writing to the same file
            self.max_lines = self.max_bytes = 0
            _report(f"cannot rotate log file {self.path}, rotation disabled: {error.strerror or error}")
            return
        self._swap()

    def _swap(self) -> None:
        try:
            new_fd = self._open()
        except OSError as error:
            _report(f"cannot reopen log file {self.path}, still writing to the old one: {error.strerror or error}")
            return
        old_fd, self.fd = self.fd, new_fd
        os.close(old_fd)

    def reopen(self) -> None:
        """Close and reopen the file by name (SIGHUP after logrotate moved it)."""
        self.acquire()
        try:
            self._swap()
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        finally:
            self.release()
        super().close()


class ReTurnSysLogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler with reTurn's levels (NOTICE, STACK) and the "pyturn[pid]: " tag."""

    append_nul = False

    def mapPriority(self, levelName: str) -> str:
        return _SYSLOG_PRIORITIES.get(levelName, "warning")


def _report(message: str) -> None:
    """A problem of the logging set-up itself, told on stderr (the log may be what is broken)."""
    try:
        sys.stderr.write(f"pyturn: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _syslog_handler(config: Config, address: str | tuple[str, int] | None) -> logging.Handler | None:
    facility_name = config.syslog_facility.upper().removeprefix("LOG_").lower()
    facilities = logging.handlers.SysLogHandler.facility_names
    facility = facilities.get(facility_name, logging.handlers.SysLogHandler.LOG_DAEMON)
    target = address if address is not None else DEV_LOG
    if isinstance(target, str) and not os.path.exists(target):
        _report(f"LoggingType = syslog but {target} does not exist: logging to stderr instead")
        return None
    try:
        handler = ReTurnSysLogHandler(address=target, facility=facility)
    except OSError as error:
        _report(f"cannot reach syslog at {target}: {error.strerror or error}; logging to stderr instead")
        return None
    handler.ident = f"{APP_NAME}[{os.getpid()}]: "
    return handler


def configure_logging(config: Config, *, syslog_address: str | tuple[str, int] | None = None) -> None:
    """Install the one root handler the logging keys describe, replacing any earlier one.

    syslog_address overrides /dev/log (a unix socket path or (host, port) for UDP). Raises OSError when the
    log file cannot be opened.
    """
    logging_type = config.logging_type.lower()
    for_syslog = False
    handler: logging.Handler
    if logging_type == "cout":
        handler = logging.StreamHandler(sys.stdout)
    elif logging_type == "cerr":
        handler = logging.StreamHandler(sys.stderr)
    elif logging_type == "file":
        handler = ReTurnFileHandler(
            expand_log_filename(config.log_filename),
            max_lines=config.log_file_max_lines,
            max_bytes=config.log_file_max_bytes,
            keep_all=config.keep_all_log_files,
        )
    else:
        syslog = _syslog_handler(config, syslog_address)
        for_syslog = syslog is not None
        handler = syslog if syslog is not None else logging.StreamHandler(sys.stderr)
    if config.log_message_structure == "JSON_CEE":
        handler.setFormatter(JsonCeeFormatter(config.logging_instance_name, for_syslog=for_syslog))
    else:
        handler.setFormatter(ReTurnFormatter(config.logging_instance_name, for_syslog=for_syslog))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_for(config.log_level))
    logging.raiseExceptions = False  # a broken log pipe must not print tracebacks for every line


def file_handlers() -> list[ReTurnFileHandler]:
    return [handler for handler in logging.getLogger().handlers if isinstance(handler, ReTurnFileHandler)]


def log_file_descriptors() -> list[int]:
    """Open log files, for handing them to RunAsUser before the privilege drop."""
    return [handler.fd for handler in file_handlers() if handler.fd >= 0]


def reopen_log_files() -> None:
    """SIGHUP: reopen log files by name, so that a file moved away by logrotate is replaced."""
    for handler in file_handlers():
        handler.reopen()
