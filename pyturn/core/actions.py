"""What the core asks its adapter to do (docs/architecture.md "Sans-IO contract"), and the adapter's answer to a
failed relay bind.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from pyturn.core.allocation import FiveTuple
from pyturn.core.events import Event
from pyturn.wire.message import Address


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send on the client's 5-tuple (UDP: from the listener bound at five_tuple.server; TCP/TLS: its stream)."""

    five_tuple: FiveTuple
    data: bytes


@dataclass(frozen=True, slots=True)
class SendFrom:
    """UDP only: send from the listener bound at `source` to `destination` (RFC 5780 alternate address)."""

    source: Address
    destination: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenRelay:
    """Bind a UDP relay socket at (host, port); host may be a wildcard, then bind the address the client reached.

    reserve_next (EVEN-PORT with R, RFC 8656 §7.2): also bind port+1 on the same address and hold that socket for
    the RESERVATION-TOKEN; when either bind fails with EADDRINUSE, report the port that failed. reserved: `port`
    is a redeemed token's; take over the socket held for it if this process holds one, else bind it.
    """

    token: int
    five_tuple: FiveTuple
    family: int
    host: str
    port: int
    dont_fragment: bool
    reserve_next: bool = False
    reserved: bool = False


@dataclass(frozen=True, slots=True)
class ReleasePort:
    """Close the socket held for a reservation: its token expired or can no longer be redeemed."""

    family: int
    port: int


@dataclass(frozen=True, slots=True)
class CloseRelay:
    handle: Any


@dataclass(frozen=True, slots=True)
class SendToPeer:
    """Send from the relay socket `handle`; dont_fragment: with the DF bit set on this datagram, or not at all
    (RFC 8656 §11.3: a Send indication's DONT-FRAGMENT on a relay that does not set DF on everything)."""

    handle: Any
    peer: Address
    data: bytes
    dont_fragment: bool = False


Action = SendToClient | SendFrom | OpenRelay | CloseRelay | SendToPeer | ReleasePort | Event


class RelayFailure(Enum):
    PORT_IN_USE = "port in use"
    FAMILY_UNAVAILABLE = "address family unavailable"
    DONT_FRAGMENT = "DF cannot be set"  # the socket option failed: the relay is not kept
    OTHER = "bind failed"

