"""What the core reports happened, for hooks, logs and metrics: one shape per event.

Events travel in the same list as actions; an adapter hands them to its event sink and does nothing else with
them (docs/architecture.md "Sans-IO contract").
"""

from __future__ import annotations

from dataclasses import dataclass

from pyturn.core.allocation import FiveTuple
from pyturn.wire.message import Address


@dataclass(frozen=True, slots=True)
class AllocationCreated:
    five_tuple: FiveTuple
    username: str
    relayed: Address
    lifetime: int
    also_relayed: Address | None = None  # the IPv6 relay of a dual allocation (RFC 8656 §7.2)


@dataclass(frozen=True, slots=True)
class AllocationRefreshed:
    five_tuple: FiveTuple
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationDeleted:
    """An allocation that was deleted, with what its relay socket relayed over its whole life.

    ``reason``: "refresh" (the client sent LIFETIME 0), "expired", "closed" (its TCP/TLS connection closed) or
    "shutdown" (the server closed). The core leaves the byte counts at 0: it never sees the relayed bytes. The
    asyncio adapter fills them in from the relay socket it closed (pyturn.net.runtime) before any hook sees the event.
    """

    five_tuple: FiveTuple
    username: str
    relayed: Address | None
    reason: str
    bytes_to_peer: int = 0
    bytes_to_client: int = 0


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


@dataclass(frozen=True, slots=True)
class DataConnectionBound:
    """RFC 6062 §5.4: the TCP allocation of `five_tuple` relays between `peer` and the client data connection
    `data_connection`, joined by a ConnectionBind for `connection_id`."""

    five_tuple: FiveTuple
    connection_id: int
    peer: Address
    data_connection: FiveTuple


Event = (AllocationCreated | AllocationRefreshed | AllocationDeleted | PermissionInstalled | ChannelBound | AuthFailed
         | AllocationRedirected | DataConnectionBound)
