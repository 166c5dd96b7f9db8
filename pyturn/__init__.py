"""pyturn: a pure-Python STUN/TURN relay server, drop-in for reSIProcate's reTurn, embeddable in asyncio."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AllocationCreated",
    "AllocationDeleted",
    "AllocationEnded",
    "AllocationRefreshed",
    "AuthFailed",
    "ChannelBound",
    "Config",
    "ConfigError",
    "Hooks",
    "Impairment",
    "ImpairmentStats",
    "KeyCandidates",
    "Method",
    "PermissionInstalled",
    "PyturnError",
    "RelayedBytes",
    "Server",
    "StunDecodeError",
    "ThreadedServer",
    "TimedUserLookup",
    "TurnError",
    "UserDB",
    "UserDBError",
    "__version__",
    "load_config",
    "loopback_config",
    "rest_credentials",
    "run_in_thread",
]

from pyturn.auth import KeyCandidates, TimedUserLookup
from pyturn.config import Config, load_config
from pyturn.core import (
    AllocationCreated,
    AllocationDeleted,
    AllocationRefreshed,
    AuthFailed,
    ChannelBound,
    PermissionInstalled,
)
from pyturn.credentials import rest_credentials
from pyturn.errors import ConfigError, PyturnError, StunDecodeError, TurnError, UserDBError
from pyturn.hooks import AllocationEnded, Hooks, RelayedBytes
from pyturn.impairment import Impairment, ImpairmentStats
from pyturn.stun import Method
from pyturn.userdb import UserDB

if TYPE_CHECKING:
    from pyturn.server import Server, loopback_config
    from pyturn.threaded import ThreadedServer, run_in_thread

# Server and the thread runner pull in asyncio and sockets; importing them lazily keeps `import pyturn` cheap
# for the pure core.
_LAZY = {
    "Server": "pyturn.server",
    "loopback_config": "pyturn.server",
    "ThreadedServer": "pyturn.threaded",
    "run_in_thread": "pyturn.threaded",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyturn' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
