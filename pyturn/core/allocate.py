"""Allocate (RFC 8656 §7.2, RFC 6156 §4.2 for the address family): the checks, the relay port, and the request to
the adapter to open the relay socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyturn.core.actions import Action, OpenRelay
from pyturn.core.allocation import FAMILY_IPV4, FAMILY_IPV6, Allocation, FiveTuple, family_of
from pyturn.core.auth import Credentials
from pyturn.core.ports import PortPool
from pyturn.core.redirect import Capacity, capacity_reason, redirect
from pyturn.core.reservations import redeem
from pyturn.core.tcp_relay import TCP_PROTOCOL, check_tcp_allocate
from pyturn.errors import TurnError
from pyturn.wire.message import Address, Attr, Message

if TYPE_CHECKING:
    from pyturn.core.state import CoreState

UDP_PROTOCOL = 17  # RFC 8656 §14.7 REQUESTED-TRANSPORT value for UDP


@dataclass(slots=True)
class PendingAllocation:
    """An Allocate that passed every check, waiting for its relay socket (OpenRelay -> relay_opened/failed)."""

    request: Message
    five_tuple: FiveTuple
    credentials: Credentials
    lifetime: int
    family: int
    host: str
    port: int
    dont_fragment: bool
    even: bool
    reserve_next: bool
    from_reservation: bool
    tcp: bool = False  # RFC 6062: a TCP relayed address
    attempts: int = 1
    # RFC 8656 §7.2 dual allocation: the IPv6 relay to open once the IPv4 one is bound, and that IPv4 relay
    # (handle, relayed address) while the IPv6 one is being opened.
    additional_family: int | None = None
    first: tuple[Any, Address] | None = None

    def release_ports(self, ports: PortPool) -> None:
        ports.release(self.port)
        if self.reserve_next:
            ports.release(self.port + 1)


def allocate(
    state: CoreState,
    request: Message,
    five_tuple: FiveTuple,
    credentials: Credentials,
    allocation: Allocation | None,
    now: float,
) -> list[Action]:
    """RFC 8656 §7.2 (and RFC 6156 §4.2 for the address family)."""
    config = state.config
    # §7.2 step 2: a 5-tuple already allocated -> 437 (a retransmission was answered from the cache).
    if allocation is not None:
        raise TurnError(437, "Allocation Mismatch")
    for waiting in state.pending.values():
        if waiting.five_tuple == five_tuple:
            if waiting.request.transaction_id == request.transaction_id:
                return []  # retransmitted while the relay is being opened: the answer is on its way
            raise TurnError(437, "Allocation Mismatch")
    # §7.2 step 3: REQUESTED-TRANSPORT must be there and be UDP, or TCP (RFC 6062 §5.1 item 1) when enabled.
    transport = request.get(Attr.REQUESTED_TRANSPORT)
    if transport is None:
        raise TurnError(400, "Bad Request")
    tcp = transport == TCP_PROTOCOL and state.config.tcp_relay
    if tcp:
        check_tcp_allocate(request, five_tuple)  # RFC 6062 §5.1 items 2 and 3: 400
    elif transport != UDP_PROTOCOL:
        raise TurnError(442, "Unsupported Transport Protocol")
    even_port = request.get(Attr.EVEN_PORT)
    token = request.get(Attr.RESERVATION_TOKEN)
    family_requested = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
    # A TCP allocation (RFC 6062) stays single: RFC 6062 defines no dual TCP relay, so the comprehension-optional
    # attribute is ignored there.
    additional = None if tcp else request.get(
        Attr.ADDITIONAL_ADDRESS_FAMILY, request.get(Attr.ADDITIONAL_ADDRESS_FAMILY_OLD)
    )
    # §7.2 step 5 / RFC 6156 §4.2: EVEN-PORT, REQUESTED- or ADDITIONAL-ADDRESS-FAMILY with RESERVATION-TOKEN -> 400.
    if token is not None and (even_port is not None or family_requested is not None or additional is not None):
        raise TurnError(400, "Bad Request")
    # §7.2 steps 6, 8 and 9: ADDITIONAL-ADDRESS-FAMILY (a dual allocation) goes with neither REQUESTED-ADDRESS-FAMILY
    # nor EVEN-PORT with the R bit, and IPv6 is its only valid value -> else 400.
    if additional is not None and (family_requested is not None or even_port or additional != FAMILY_IPV6):
        raise TurnError(400, "Bad Request")
    if family_requested is not None and family_requested not in (FAMILY_IPV4, FAMILY_IPV6):
        raise TurnError(440, "Address Family not Supported")
    # RFC 8656 §7.2 / RFC 6156 §4.2: without REQUESTED-ADDRESS-FAMILY the relay is IPv4, whichever listener
    # the client reached (reTurn gives an IPv6 relay on its IPv6 listener).
    family = family_requested or FAMILY_IPV4
    # §7.2 step 6 (RFC 8656 §7.2 "486 Allocation Quota Reached").
    user = (credentials.username, credentials.realm)
    if config.max_allocations_per_user and state.per_user.get(user, 0) >= config.max_allocations_per_user:
        raise TurnError(486, "Allocation Quota Reached")
    full = capacity_reason(state)
    if full is not None:  # draining, MaxAllocations, MaxRelayedBitrate: 300 to another instance, or 508
        return redirect(state, request, five_tuple, credentials, full, now)
    lifetime = granted_lifetime(state, request)
    reserve_next = bool(even_port)
    if token is not None:
        # RFC 8656 §7.2: the relay takes the reserved port, in the family of the allocation that reserved it.
        port: int | None
        port, family = redeem(state, token, now)
    else:
        port = state.ports.take(now, even=even_port is not None, with_next=reserve_next)
        if port is None:
            return redirect(state, request, five_tuple, credentials, Capacity.PORTS_EXHAUSTED, now)
    if port is None:
        raise TurnError(508, "Insufficient Capacity")
    pending = PendingAllocation(
        request=request,
        five_tuple=five_tuple,
        credentials=credentials,
        lifetime=lifetime,
        family=family,
        host=relay_host(state, family, five_tuple),
        port=port,
        dont_fragment=request.has(Attr.DONT_FRAGMENT),
        even=even_port is not None,
        reserve_next=reserve_next,
        from_reservation=token is not None,
        tcp=tcp,
        additional_family=additional,
    )
    return [open_relay(state, pending)]


def granted_lifetime(state: CoreState, request: Message) -> int:
    """reTurn's arithmetic (docs/compatibility.md "Lifetimes"): the default is also the floor, the maximum the cap."""
    default = state.config.default_allocation_lifetime
    maximum = state.config.max_allocation_lifetime
    requested: int | None = request.get(Attr.LIFETIME)
    if requested is None or requested <= default:
        return default
    return min(requested, maximum)


def relay_host(state: CoreState, family: int, five_tuple: FiveTuple) -> str:
    config = state.config
    configured = config.relay_v6_address if family == FAMILY_IPV6 else config.relay_address
    if configured:
        return configured
    server_host = five_tuple.server[0]
    if family_of(server_host) == family:
        return server_host  # may be a wildcard: the adapter then binds the address the client reached
    if family == FAMILY_IPV6:
        return config.turn_v6_address if family_of(config.turn_v6_address) == FAMILY_IPV6 else "::"
    return config.turn_address if family_of(config.turn_address) == FAMILY_IPV4 else "0.0.0.0"


def open_relay(state: CoreState, pending: PendingAllocation) -> OpenRelay:
    """Ask the adapter for the relay socket of `pending` (answered by relay_opened or relay_failed)."""
    token = state.add_pending(pending)
    return OpenRelay(
        token, pending.five_tuple, pending.family, pending.host, pending.port, pending.dont_fragment,
        reserve_next=pending.reserve_next, reserved=pending.from_reservation, tcp=pending.tcp,
    )
