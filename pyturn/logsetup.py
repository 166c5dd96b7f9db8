"""Logging set-up from reTurn's logging keys (the CLI's job; the library never configures logging)."""

from __future__ import annotations

import logging
import sys

from pyturn.config import Config

# reTurn's level names (reTurn.md §2.2) -> logging levels.
LEVELS = {
    "NONE": logging.CRITICAL + 10,
    "EMERG": logging.CRITICAL,
    "ALERT": logging.CRITICAL,
    "CRIT": logging.CRITICAL,
    "ERR": logging.ERROR,
    "WARNING": logging.WARNING,
    "NOTICE": logging.INFO,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "STACK": logging.DEBUG,
}


def level_for(name: str) -> int:
    name = name.upper()
    if name.startswith("LOG_"):
        name = name[4:]
    return LEVELS.get(name, logging.DEBUG)


def configure_logging(config: Config) -> None:
    logging_type = config.logging_type.lower()
    if logging_type == "cerr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    elif logging_type == "file":
        handler = logging.FileHandler(config.log_filename)
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s | %(asctime)s | pyturn | %(name)s | %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_for(config.log_level))


def reopen_log_files() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
