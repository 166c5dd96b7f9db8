"""pyturn: a pure-Python STUN/TURN relay server, drop-in for reSIProcate's reTurn, embeddable in asyncio."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AllocationCreated",
    "AllocationDeleted",
    "AllocationEnded",
    "AllocationRedirected",
    "AllocationRefreshed",
    "AuthFailed",
    "ChannelBound",
    "CloseRelay",
    "Config",
    "ConfigError",
    "DataConnectionBound",
    "Event",
    "FiveTuple",
    "Hooks",
    "Impairment",
    "ImpairmentStats",
    "KeyCandidates",
    "Method",
    "OpenRelay",
    "PermissionInstalled",
    "PyturnError",
    "RelayFailure",
    "RelayedBytes",
    "ReleasePort",
    "ReloadResult",
    "SendFrom",
    "SendToClient",
    "SendToPeer",
    "Server",
    "StartupError",
    "StunDecodeError",
    "ThreadedServer",
    "TimedUserLookup",
    "Transport",
    "TurnError",
    "TurnServerCore",
    "UserDB",
    "UserDBError",
    "__version__",
    "load_config",
    "loopback_config",
    "rest_credentials",
    "run_in_thread",
]

from pyturn.config import Config
from pyturn.core.actions import (
    Action,
    CloseRelay,
    OpenRelay,
    RelayFailure,
    ReleasePort,
    SendFrom,
    SendToClient,
    SendToPeer,
)
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.auth import KeyCandidates, TimedUserLookup
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationRedirected,
    AllocationRefreshed,
    AuthFailed,
    ChannelBound,
    DataConnectionBound,
    Event,
    PermissionInstalled,
)
from pyturn.core.impairment import Impairment, ImpairmentStats
from pyturn.core.userdb import UserDB
from pyturn.credentials import rest_credentials
from pyturn.errors import ConfigError, PyturnError, StunDecodeError, TurnError, UserDBError
from pyturn.files.configfile import load_config
from pyturn.hooks import AllocationEnded, Hooks, RelayedBytes
from pyturn.wire.message import Method

if TYPE_CHECKING:
    from pyturn.server import ReloadResult, Server, StartupError, loopback_config
    from pyturn.threaded import ThreadedServer, run_in_thread

# Server and the thread runner pull in asyncio and sockets; importing them lazily keeps `import pyturn` cheap
# for the pure core. TurnServerCore and the action and event types are what another adapter needs
# (docs/architecture.md "Sans-IO contract").
_LAZY = {
    "Server": "pyturn.server",
    "StartupError": "pyturn.server",
    "ReloadResult": "pyturn.server",
    "loopback_config": "pyturn.server",
    "ThreadedServer": "pyturn.threaded",
    "run_in_thread": "pyturn.threaded",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyturn' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
