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
    tcp: bool = False  # RFC 6062 §5.1: a listening TCP socket instead of a UDP one (never reserve_next/reserved)


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


@dataclass(frozen=True, slots=True)
class ConnectPeer:
    """RFC 6062 §5.2: open a TCP connection from the relayed address of relay `handle` to `peer`, then call
    ``tcp_relays.peer_connected`` or ``peer_connect_failed`` with `connection_id`. Read nothing from it until a
    BindDataConnection joins it to a client data connection."""

    connection_id: int
    handle: Any
    peer: Address


@dataclass(frozen=True, slots=True)
class AcceptPeer:
    """RFC 6062 §5.3: keep the connection `connection` a peer made to relay `handle` as `connection_id`; read
    nothing from it until a BindDataConnection joins it."""

    connection_id: int
    handle: Any
    connection: Any


@dataclass(frozen=True, slots=True)
class RefusePeer:
    """RFC 6062 §5.3: close the connection a peer made to a relayed address at once (no permission, caps)."""

    connection: Any


@dataclass(frozen=True, slots=True)
class BindDataConnection:
    """RFC 6062 §5.4: from now on the client's stream `five_tuple` and peer connection `connection_id` carry
    each other's bytes as they are, after the ConnectionBind response already queued on the stream."""

    connection_id: int
    five_tuple: FiveTuple


@dataclass(frozen=True, slots=True)
class ClosePeerConnection:
    """Close peer connection `connection_id` (or abandon its connect) and the client data connection joined to it."""

    connection_id: int


TcpRelayAction = ConnectPeer | AcceptPeer | RefusePeer | BindDataConnection | ClosePeerConnection
Action = SendToClient | SendFrom | OpenRelay | CloseRelay | SendToPeer | ReleasePort | TcpRelayAction | Event


class RelayFailure(Enum):
    PORT_IN_USE = "port in use"
    FAMILY_UNAVAILABLE = "address family unavailable"
    DONT_FRAGMENT = "DF cannot be set"  # the socket option failed: the relay is not kept
    OTHER = "bind failed"

