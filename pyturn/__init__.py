"""pyturn: a pure-Python STUN/TURN relay server, drop-in for reSIProcate's reTurn, embeddable in asyncio."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "PyturnError",
    "Server",
    "StunDecodeError",
    "TurnError",
    "UserDB",
    "UserDBError",
    "__version__",
    "load_config",
]

from pyturn.config import Config, load_config
from pyturn.errors import ConfigError, PyturnError, StunDecodeError, TurnError, UserDBError
from pyturn.userdb import UserDB

if TYPE_CHECKING:
    from pyturn.server import Server


def __getattr__(name: str) -> Any:
    # Server pulls in asyncio and sockets; importing it lazily keeps `import pyturn` cheap for the pure core.
    if name == "Server":
        from pyturn.server import Server

        return Server
    raise AttributeError(name)
