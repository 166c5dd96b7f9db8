"""Allocation state: 5-tuples, allocations, permissions and channel bindings (RFC 8656 §2-§3).

Pure bookkeeping: no sockets, no clock. Times are absolute deadlines in the caller's clock (`now: float`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from pyturn.wire.message import Address

PERMISSION_LIFETIME = 300.0  # RFC 8656 §9: permissions last 300 s (reTurn: fixed)
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12: channel bindings last 10 minutes (reTurn: fixed)
# RFC 8656 §12: channel numbers 0x4000-0x4FFF; 0x5000-0xFFFF are reserved (RFC 7983 demultiplexing uses the
# first byte), so ChannelBind outside gets 400 (§11.2) and ChannelData outside is never relayed.
FAMILY_IPV4 = 1  # RFC 8656 §14.1 address family values (REQUESTED-ADDRESS-FAMILY)
FAMILY_IPV6 = 2
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
RESERVATION_LIFETIME = 30.0  # RFC 8656 §7.2: a reserved port is held for about 30 s


def family_of(host: str) -> int:
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class FiveTuple(NamedTuple):
    """Client transport, client address, server address (RFC 8656 §2: the 5-tuple names an allocation)."""

    transport: Transport
    client: Address
    server: Address


@dataclass(slots=True, eq=False)
class ChannelBinding:
    channel: int
    peer: Address
    expires: float


@dataclass(slots=True, eq=False)
class Allocation:
    """One allocation. Hashes by identity; the route dicts are shared with the transport adapter's fast path."""

    five_tuple: FiveTuple
    username: str
    realm: str
    key: bytes
    relay_handle: Any
    relayed: Address
    expires: float
    dont_fragment: bool = False
    # RFC 8489 §18.5 password algorithm `key` was derived with (1 MD5, 2 SHA-256); later requests use the same key.
    algorithm: int = 1
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, ChannelBinding] = field(default_factory=dict)
    # Fast path views kept in step with the two tables above: peer -> channel number for the live bindings
    # whose peer still has a permission (used by the adapter for peer -> client ChannelData).
    channel_for_peer: dict[Address, int] = field(default_factory=dict)
    # Fast path view for Send and Data indications: peer -> its encoded XOR-PEER-ADDRESS, for the IPv4 peers the
    # core relayed an indication to or from whose IP still has a permission (pyturn.core.routes, learn()).
    peer_attributes: dict[Address, bytes] = field(default_factory=dict)
    reserved_port: int | None = None
    tcp: bool = False  # a TCP relayed address (RFC 6062): peers reach it with Connect and ConnectionAttempt
    # The deadlines of this allocation's entries in the deadline heap: its own (a Refresh may move `expires`
    # either way) and the one for its permissions and channels together (inf while it has neither).
    scheduled: float = 0.0
    peers_scheduled: float = float("inf")
    # Answers to this 5-tuple's recent requests: transaction id -> (keep until, bytes), oldest first.
    responses: dict[bytes, tuple[float, bytes]] = field(default_factory=dict)
    # RFC 8656 §7.2 dual allocation (ADDITIONAL-ADDRESS-FAMILY): the IPv6 relay next to the IPv4 one of
    # `relay_handle` / `relayed`. Both live and die with the allocation, under one lifetime.
    extra_handle: Any = None
    extra_relayed: Address | None = None

    @property
    def family(self) -> int:
        """The family of the first relay (the only one unless the allocation is dual)."""
        return 2 if ":" in self.relayed[0] else 1

    def has_family(self, family: int) -> bool:
        """Whether a relay of this family (RFC 8656 §14.1 value) belongs to the allocation (443 otherwise)."""
        return family == self.family or (self.extra_relayed is not None and family == family_of(self.extra_relayed[0]))

    def handle_for(self, peer_host: str) -> Any:
        """The relay socket that sends to a peer: the one of the peer's family (RFC 8656 §7.2, dual allocations)."""
        if self.extra_relayed is not None and family_of(peer_host) != self.family:
            return self.extra_handle
        return self.relay_handle

    def relays(self) -> list[tuple[Any, Address]]:
        """(handle, relayed address) of each relay: one, or two for a dual allocation."""
        first = [(self.relay_handle, self.relayed)]
        return first if self.extra_relayed is None else [*first, (self.extra_handle, self.extra_relayed)]

    def has_permission(self, ip: str, now: float) -> bool:
        expires = self.permissions.get(ip)
        return expires is not None and expires > now

    def next_peer_expiry(self) -> float:
        """The earliest deadline among the permissions and channel bindings (inf when there are none)."""
        first = min(self.permissions.values(), default=float("inf"))
        for binding in self.channels.values():
            if binding.expires < first:
                first = binding.expires
        return first

