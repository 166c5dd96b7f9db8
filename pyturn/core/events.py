"""What the core reports happened, for hooks, logs and metrics: one shape per event.

Events travel in the same list as actions; an adapter hands them to its event sink and does nothing else with
them (docs/architecture.md "Sans-IO contract").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyturn.core.allocation import FiveTuple
from pyturn.wire.message import Address


@dataclass(frozen=True, slots=True)
class AllocationCreated:
    five_tuple: FiveTuple
    username: str
    relayed: Address
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationRefreshed:
    five_tuple: FiveTuple
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationDeleted:
    five_tuple: FiveTuple
    reason: str  # "refresh", "expired", "closed", "shutdown"
    handle: Any


@dataclass(frozen=True, slots=True)
class PermissionInstalled:
    five_tuple: FiveTuple
    ip: str


@dataclass(frozen=True, slots=True)
class ChannelBound:
    five_tuple: FiveTuple
    channel: int
    peer: Address


@dataclass(frozen=True, slots=True)
class AuthFailed:
    five_tuple: FiveTuple
    code: int
    username: str | None
    reason: str = ""  # why (pyturn.core.stats.AUTH_FAILURE_REASONS, e.g. "expired_credentials"); never the secret


@dataclass(frozen=True, slots=True)
class AllocationRedirected:
    """An Allocate this instance did not take (pyturn.core.redirect): answered 300 naming `alternate`, or 508 when
    `alternate` is None; `reason` is a pyturn.core.redirect.Capacity value."""

    five_tuple: FiveTuple
    alternate: Address | None
    reason: str


Event = (AllocationCreated | AllocationRefreshed | AllocationDeleted | PermissionInstalled | ChannelBound | AuthFailed
         | AllocationRedirected)
