"""The adapter's answer to OpenRelay (RFC 8656 §7.2, the end of Allocate): a bound relay socket becomes the
allocation and its success response; a failed bind tries the next port, redirects, or answers the error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyturn.core.actions import Action, CloseRelay, RelayFailure, ReleasePort
from pyturn.core.allocate import open_relay
from pyturn.core.allocation import FAMILY_IPV6, Allocation
from pyturn.core.events import AllocationCreated
from pyturn.core.policy import Verdict
from pyturn.core.redirect import Capacity, redirect
from pyturn.core.reservations import reserve
from pyturn.core.timers import DeadlineKind
from pyturn.core.transactions import error_response_for, reply, success_response
from pyturn.errors import TurnError
from pyturn.wire.message import Address, Attr

if TYPE_CHECKING:
    from pyturn.core.state import CoreState


def relay_opened(state: CoreState, token: int, handle: Any, bound: Address, now: float) -> list[Action]:
    """The relay socket of OpenRelay(token) is bound at `bound`: create the allocation and answer the Allocate."""
    pending = state.pending.pop(token, None)
    if pending is None:
        return [CloseRelay(handle)]
    five_tuple = pending.five_tuple
    if five_tuple in state.allocations:  # only an adapter that binds asynchronously could get here
        pending.release_ports(state.ports)
        held = [ReleasePort(pending.family, bound[1] + 1)] if pending.reserve_next else []
        return [CloseRelay(handle), *held]
    reservation_token: bytes | None = None
    if pending.reserve_next:
        reservation_token = reserve(state, bound[1] + 1, pending.family, now)
    config = state.config
    external = config.external_v6_address if pending.family == FAMILY_IPV6 else config.external_address
    relayed = (external, bound[1]) if external else bound
    if bound[0] not in state.policy.relay_addresses:
        learn_relay_address(state, bound[0])
    credentials = pending.credentials
    allocation = Allocation(
        five_tuple=five_tuple,
        username=credentials.username,
        realm=credentials.realm,
        key=credentials.key,
        relay_handle=handle,
        relayed=relayed,
        expires=now + pending.lifetime,
        dont_fragment=pending.dont_fragment,
        reserved_port=bound[1] + 1 if pending.reserve_next else None,
        tcp=pending.tcp,
    )
    state.allocations[five_tuple] = allocation
    state.by_handle[handle] = allocation
    user = (credentials.username, credentials.realm)
    state.per_user[user] = state.per_user.get(user, 0) + 1
    allocation.scheduled = allocation.expires
    state.deadlines.push(allocation.expires, DeadlineKind.ALLOCATION, allocation)
    state.stats.allocation_created(five_tuple.transport.value, pending.family)
    # RFC 8656 §7.2: the success response carries XOR-RELAYED-ADDRESS, LIFETIME, the RESERVATION-TOKEN of a
    # reserved pair, and XOR-MAPPED-ADDRESS.
    response = success_response(pending.request)
    response.add(Attr.XOR_RELAYED_ADDRESS, relayed)
    response.add(Attr.LIFETIME, pending.lifetime)
    if reservation_token is not None:
        response.add(Attr.RESERVATION_TOKEN, reservation_token)
    response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
    return [
        reply(state, pending.request, response, five_tuple, credentials.key),
        AllocationCreated(five_tuple, credentials.username, relayed, pending.lifetime),
    ]


def relay_failed(
    state: CoreState, token: int, failure: RelayFailure, now: float, *, port: int | None = None
) -> list[Action]:
    """The relay socket of OpenRelay(token) could not be bound; `port` is the one whose bind failed when it is not
    OpenRelay.port (the odd port of an EVEN-PORT pair)."""
    pending = state.pending.pop(token, None)
    if pending is None:
        return []
    ports = state.ports
    if failure is RelayFailure.PORT_IN_USE:
        busy = pending.port if port is None else port
        # Another process holds `busy`: skip it for a while, free the rest of the pair, and go on walking the
        # range from here. Every candidate is tried at most once, so 508 means the range is really exhausted
        # (RFC 8656 §7.2), however many ports other processes hold.
        ports.mark_busy(busy, now)
        for taken in (pending.port, pending.port + 1) if pending.reserve_next else (pending.port,):
            if taken != busy:
                ports.release(taken)
        if not pending.from_reservation and pending.attempts <= ports.size:
            port = ports.take(now, even=pending.even, with_next=pending.reserve_next, after=pending.port)
            if port is not None:
                pending.port = port
                pending.attempts += 1
                return [open_relay(state, pending)]
        if not pending.from_reservation and state.alternates.servers:  # another instance may have ports left
            return redirect(state, pending.request, pending.five_tuple, pending.credentials,
                            Capacity.PORTS_EXHAUSTED, now)
        error = TurnError(508, "Insufficient Capacity")
    else:
        pending.release_ports(ports)
        if failure is RelayFailure.FAMILY_UNAVAILABLE:
            error = TurnError(440, "Address Family not Supported")
        elif failure is RelayFailure.DONT_FRAGMENT:
            # RFC 8656 §7.2: a DONT-FRAGMENT the server cannot honour is treated as an unknown
            # comprehension-required attribute: 420 listing it.
            response = error_response_for(pending.request, TurnError(420, "Unknown Attribute"))
            response.add(Attr.UNKNOWN_ATTRIBUTES, (Attr.DONT_FRAGMENT,))
            response.add(Attr.XOR_MAPPED_ADDRESS, pending.five_tuple.client)
            return [reply(state, pending.request, response, pending.five_tuple, pending.credentials.key)]
        else:
            error = TurnError(508, "Insufficient Capacity")
    response = error_response_for(pending.request, error)
    response.add(Attr.XOR_MAPPED_ADDRESS, pending.five_tuple.client)
    return [reply(state, pending.request, response, pending.five_tuple, pending.credentials.key)]


def learn_relay_address(state: CoreState, ip: str) -> None:
    """A relay was bound on an IP the policy did not know as ours (a wildcard listener binds relays on the
    address towards the client): other allocations may reach relays there from now on. A built-in denied IP
    (loopback) stays denied unless it was configured: a relay bound there serves only local clients."""
    if state.policy.verdict(ip) is Verdict.DENIED:
        state.policy = state.policy.with_server_addresses(host=(ip,))
    else:
        state.policy = state.policy.with_server_addresses(relay=(ip,))
