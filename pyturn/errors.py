"""The one error hierarchy of pyturn (docs/architecture.md "Errors")."""

from __future__ import annotations


class PyturnError(Exception):
    """Base class of every error pyturn raises on purpose."""


class StunDecodeError(PyturnError):
    """Bytes that are not a well-formed STUN message, ChannelData message or stream frame."""


class StunEncodeError(PyturnError, ValueError):
    """A Message that cannot be put on the wire (a caller bug: a bad value for its attribute type)."""


class TurnError(PyturnError):
    """A request that must be answered with a STUN error response (code, reason phrase)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class ConfigError(PyturnError):
    """A configuration that cannot be used; carries the file and line where it is wrong."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class UserDBError(PyturnError):
    """A user file that cannot be read at all (single bad lines are reported, not raised)."""


class StartupError(PyturnError):
    """A listener could not be opened (port in use, address not available, TLS files unusable)."""
