"""Logging keys (docs/compatibility.md "Logging"): LoggingType, levels, reTurn's line format, JSON_CEE, file rotation,
SIGHUP reopen."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyturn.config import Config
from pyturn.ops.logsetup import (
    NOTICE,
    STACK,
    JsonCeeFormatter,
    ReTurnFileHandler,
    ReTurnFormatter,
    configure_logging,
    expand_log_filename,
    level_for,
    level_name,
    log_file_descriptors,
    reopen_log_files,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0
LINE = re.compile(
    r"^(?P<level>[A-Z]+) \| (?P<time>\d{8}-\d{6}\.\d{3}) \| (?P<app>[^|]+) \| (?P<logger>[\w.]+) \| [0-9a-f]+ \| "
    r"(?P<where>[\w.]+:\d+) \| (?P<message>.*)$"
)


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def record(message: str = "hello %s", args: tuple[object, ...] = ("world",), level: int = logging.INFO,
           exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("pyturn.server", level, "/x/server.py", 42, message, args, exc_info)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("name", "level"),
    [("NONE", logging.CRITICAL + 10), ("EMERG", logging.CRITICAL), ("alert", logging.CRITICAL),
     ("LOG_CRIT", logging.CRITICAL), ("ERR", logging.ERROR), ("log_warning", logging.WARNING), ("NOTICE", NOTICE),
     ("Info", logging.INFO), ("DEBUG", logging.DEBUG), ("STACK", STACK), ("bogus", logging.DEBUG)],
    ids=lambda value: str(value),
)
def test_level_for_reTurn_names(name: str, level: int) -> None:
    assert level_for(name) == level


@pytest.mark.parametrize(
    ("level", "name"),
    [(logging.CRITICAL, "CRIT"), (logging.ERROR, "ERR"), (logging.WARNING, "WARNING"), (NOTICE, "NOTICE"),
     (logging.INFO, "INFO"), (logging.DEBUG, "DEBUG"), (STACK, "STACK")],
    ids=["crit", "err", "warning", "notice", "info", "debug", "stack"],
)
def test_level_name_prints_reTurn_names(level: int, name: str) -> None:
    assert level_name(level) == name


# -------------------------------------------------------------------------------------------- formatters


def test_formatter_writes_reTurn_fields() -> None:
    line = ReTurnFormatter().format(record())
    match = LINE.match(line)
    assert match is not None, line
    assert match["level"] == "INFO"
    assert match["app"] == "pyturn"
    assert match["logger"] == "pyturn.server"
    assert match["where"] == "server.py:42"
    assert match["message"] == "hello world"


def test_formatter_shows_instance_name() -> None:
    match = LINE.match(ReTurnFormatter("edge1").format(record()))
    assert match is not None
    assert match["app"] == "pyturn[edge1]"


def test_formatter_for_syslog_drops_level_time_and_app() -> None:
    line = ReTurnFormatter(for_syslog=True).format(record())
    assert line.startswith("pyturn.server | ")
    assert line.endswith(" | server.py:42 | hello world")


def test_formatter_appends_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        line = ReTurnFormatter().format(record(exc_info=sys.exc_info()))
    assert "RuntimeError: boom" in line


def test_json_cee_formatter_writes_one_object() -> None:
    document = json.loads(JsonCeeFormatter("edge1").format(record(level=logging.WARNING)))
    assert document["level"] == "WARNING"
    assert document["message"] == "hello world"
    assert document["logger"] == "pyturn.server"
    assert document["instance"] == "edge1"
    assert document["pid"] == os.getpid()
    assert document["line"] == 42
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", document["timestamp"])


def test_json_cee_formatter_for_syslog_has_cee_cookie() -> None:
    line = JsonCeeFormatter(for_syslog=True).format(record())
    assert line.startswith("@cee: {")
    assert json.loads(line.removeprefix("@cee: "))["message"] == "hello world"


def test_expand_log_filename_placeholders() -> None:
    started = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert expand_log_filename("/var/log/p-{pid}-{timestamp}.log", started) == \
        f"/var/log/p-{os.getpid()}-20260102-030405.log"


# ------------------------------------------------------------------------------------------ file handler


def write_lines(handler: logging.Handler, count: int) -> None:
    for number in range(count):
        handler.handle(record("line %d", (number,)))


def test_file_handler_rotates_by_lines_to_old(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    handler = ReTurnFileHandler(str(path), max_lines=3)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        write_lines(handler, 7)
    finally:
        handler.close()
    assert (tmp_path / "x.log.old").read_text() == "line 3\nline 4\nline 5\n"
    assert path.read_text() == "line 6\n"


def test_file_handler_rotates_by_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("0123456789\n")  # an existing file counts towards the size
    handler = ReTurnFileHandler(str(path), max_bytes=20)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        write_lines(handler, 3)
    finally:
        handler.close()
    assert (tmp_path / "x.log.old").read_text() == "0123456789\nline 0\nline 1\n"
    assert path.read_text() == "line 2\n"


def test_file_handler_keep_all_uses_timestamped_names(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    handler = ReTurnFileHandler(str(path), max_lines=1, keep_all=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        write_lines(handler, 3)
    finally:
        handler.close()
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "x.log")
    assert len(kept) == 3
    assert all(re.fullmatch(r"x\.log_\d{8}-\d{6}(\.\d+)?", name) for name in kept), kept
    assert not (tmp_path / "x.log.old").exists()


def test_reopen_log_files_follows_a_moved_file(tmp_path: Path, root_logging: logging.Logger) -> None:
    path = tmp_path / "x.log"
    configure_logging(Config(logging_type="file", log_filename=str(path)))
    logging.getLogger("pyturn.test").info("before")
    path.rename(tmp_path / "x.log.1")
    reopen_log_files()
    logging.getLogger("pyturn.test").info("after")
    assert "before" in (tmp_path / "x.log.1").read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()
    assert len(log_file_descriptors()) == 1


# ----------------------------------------------------------------------------------------------- syslog


def test_syslog_uses_facility_and_tag(tmp_path: Path, root_logging: logging.Logger) -> None:
    address = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as fake_dev_log:
        fake_dev_log.bind(address)
        fake_dev_log.settimeout(5)
        config = Config(logging_type="syslog", syslog_facility="LOG_LOCAL3", logging_instance_name="edge1")
        configure_logging(config, syslog_address=address)
        logging.getLogger("pyturn.test").warning("to syslog")
        datagram = fake_dev_log.recv(4096).decode()
    local3, warning = 19, 4
    assert datagram.startswith(f"<{local3 * 8 + warning}>pyturn[{os.getpid()}]: pyturn[edge1] | pyturn.test | ")
    assert datagram.endswith("| to syslog")


def test_syslog_json_cee_has_cee_cookie(tmp_path: Path, root_logging: logging.Logger) -> None:
    address = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as fake_dev_log:
        fake_dev_log.bind(address)
        fake_dev_log.settimeout(5)
        configure_logging(Config(logging_type="syslog", log_message_structure="JSON_CEE"), syslog_address=address)
        logging.getLogger("pyturn.test").log(NOTICE, "noticed")
        datagram = fake_dev_log.recv(4096).decode()
    daemon, notice = 3, 5
    prefix = f"<{daemon * 8 + notice}>pyturn[{os.getpid()}]: @cee: "
    assert datagram.startswith(prefix)
    assert json.loads(datagram.removeprefix(prefix))["message"] == "noticed"


def test_syslog_without_dev_log_falls_back_to_stderr(
    tmp_path: Path, root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(Config(logging_type="syslog"), syslog_address=str(tmp_path / "absent"))
    logging.getLogger("pyturn.test").warning("still seen")
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "still seen" in err


def test_level_none_silences_everything(root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Config(logging_type="cerr", log_level="NONE"))
    logging.getLogger("pyturn.test").critical("hidden")
    assert "hidden" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ the server, end to end


def write_config(tmp_path: Path, **keys: object) -> Path:
    users = tmp_path / "users.txt"
    users.write_text("test:1234:reTurn:authorized\n")
    settings: dict[str, object] = {
        "TurnAddress": "127.0.0.1", "TurnV6Address": "::1", "TurnPort": 0, "TlsTurnPort": 0,
        "UserDatabaseFile": str(users), "UserDatabaseCheckInterval": 0, "LogLevel": "INFO",
    }
    settings.update(keys)
    path = tmp_path / "reTurnServer.config"
    path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
    return path


def wait_for_text(read: object, needle: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + TIMEOUT
    while True:
        text = read() if callable(read) else ""
        if needle in text:
            return str(text)
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen (exit {process.poll()}): {text}")
        time.sleep(0.02)


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("logging_type", ["cout", "cerr", "file"])
def test_server_logging_type_writes_where_asked(tmp_path: Path, logging_type: str) -> None:
    log_path = tmp_path / "server-{pid}.log"
    config = write_config(tmp_path, LoggingType=logging_type, LogFilename=log_path, LoggingInstanceName="t1")
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "pyturn", str(config)], cwd=REPO, stdout=out, stderr=err)
    try:
        file_path = tmp_path / f"server-{process.pid}.log"
        target = {"cout": stdout_path, "cerr": stderr_path, "file": file_path}[logging_type]
        text = wait_for_text(lambda: read_or_empty(target), "serving", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    serving = next(line for line in text.splitlines() if "serving" in line)
    match = LINE.match(serving)
    assert match is not None, serving
    assert (match["level"], match["app"]) == ("NOTICE", "pyturn[t1]")
    others = {stdout_path, stderr_path, file_path} - {target}
    assert all("serving" not in read_or_empty(path) for path in others)


def test_server_json_cee_lines_parse(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    config = write_config(tmp_path, LoggingType="file", LogFilename=log_path, LogMessageStructure="JSON_CEE")
    process = subprocess.Popen([sys.executable, "-m", "pyturn", str(config)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_text(lambda: read_or_empty(log_path), "serving", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    documents = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(documents) >= 3
    assert all(document["pid"] == process.pid for document in documents)
    assert any("serving" in document["message"] for document in documents)
    assert documents[-1]["message"] == "stopping"


def test_server_sighup_reopens_rotated_log(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    config = write_config(tmp_path, LoggingType="file", LogFilename=log_path)
    process = subprocess.Popen([sys.executable, "-m", "pyturn", str(config)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_text(lambda: read_or_empty(log_path), "serving", process)
        rotated = tmp_path / "server.log.1"
        log_path.rename(rotated)
        process.send_signal(signal.SIGHUP)
        wait_for_text(lambda: read_or_empty(log_path), "loaded 1 users", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert "serving" in rotated.read_text()
    assert "stopping" not in rotated.read_text()
    assert "stopping" in log_path.read_text()


def test_server_rotates_by_log_file_max_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    config = write_config(tmp_path, LoggingType="file", LogFilename=log_path, LogFileMaxLines=2)
    process = subprocess.Popen([sys.executable, "-m", "pyturn", str(config)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_text(lambda: read_or_empty(log_path) + read_or_empty(tmp_path / "server.log.old"), "serving",
                      process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert len((tmp_path / "server.log.old").read_text().splitlines()) == 2
    assert len(log_path.read_text().splitlines()) <= 2
