"""The adapter's answer to OpenRelay (RFC 8656 §7.2, the end of Allocate): a bound relay socket becomes the
allocation and its success response; a failed bind tries the next port, redirects, or answers the error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyturn.core.actions import Action, CloseRelay, OpenRelay, RelayFailure, ReleasePort
from pyturn.core.allocate import PendingAllocation, open_relay, relay_host
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
    """The relay socket of OpenRelay(token) is bound at `bound`: create the allocation and answer the Allocate (a
    dual Allocate first asks for its IPv6 relay)."""
    pending = state.pending.pop(token, None)
    if pending is None:
        return [CloseRelay(handle)]
    five_tuple = pending.five_tuple
    if five_tuple in state.allocations:  # only an adapter that binds asynchronously could get here
        pending.release_ports(state.ports)
        held = [ReleasePort(pending.family, bound[1] + 1)] if pending.reserve_next else []
        return [CloseRelay(handle), *held, *_forget_first(state, pending)]
    reservation_token: bytes | None = None
    if pending.reserve_next:
        reservation_token = reserve(state, bound[1] + 1, pending.family, now)
    config = state.config
    external = config.external_v6_address if pending.family == FAMILY_IPV6 else config.external_address
    relayed = (external, bound[1]) if external else bound
    policy = state.policy
    if bound[0] not in policy.relay_addresses and bound[0] not in policy.host_addresses:
        learn_relay_address(state, bound[0])  # once per IP: a new policy also drops the learned Send routes
    if pending.first is not None:
        first_handle, first_relayed = pending.first
        return _create(state, pending, first_handle, first_relayed, now, extra=(handle, relayed))
    if pending.additional_family is not None:
        # RFC 8656 §7.2 step 9: the IPv4 relay is bound; the IPv6 one is asked for next (one OpenRelay at a time,
        # so the adapter contract stays as it is). Without a port for it, IPv4 alone is granted.
        second = _open_second_relay(state, pending, handle, relayed, now)
        if second is not None:
            return [second]
        return _create(state, pending, handle, relayed, now, address_error=(FAMILY_IPV6, 508, "Insufficient Capacity"))
    return _create(state, pending, handle, relayed, now, reservation_token=reservation_token)


def _create(
    state: CoreState,
    pending: PendingAllocation,
    handle: Any,
    relayed: Address,
    now: float,
    *,
    extra: tuple[Any, Address] | None = None,
    reservation_token: bytes | None = None,
    address_error: tuple[int, int, str] | None = None,
) -> list[Action]:
    """The allocation of `pending` with its relay (and the second one of a dual allocation), and its answer."""
    five_tuple = pending.five_tuple
    credentials = pending.credentials
    allocation = Allocation(
        five_tuple=five_tuple,
        username=credentials.username,
        realm=credentials.realm,
        key=credentials.key,
        algorithm=credentials.algorithm,
        relay_handle=handle,
        relayed=relayed,
        expires=now + pending.lifetime,
        dont_fragment=pending.dont_fragment,
        reserved_port=relayed[1] + 1 if reservation_token is not None else None,
        tcp=pending.tcp,
    )
    if extra is not None:
        allocation.extra_handle, allocation.extra_relayed = extra
        state.by_handle[extra[0]] = allocation
    state.allocations[five_tuple] = allocation
    state.by_handle[handle] = allocation
    user = (credentials.username, credentials.realm)
    state.per_user[user] = state.per_user.get(user, 0) + 1
    allocation.scheduled = allocation.expires
    state.deadlines.push(allocation.expires, DeadlineKind.ALLOCATION, allocation)
    state.stats.allocation_created(five_tuple.transport.value, allocation.family)
    # RFC 8656 §7.2: the success response carries XOR-RELAYED-ADDRESS (two for a dual allocation), LIFETIME, the
    # RESERVATION-TOKEN of a reserved pair, ADDRESS-ERROR-CODE for a family asked for but not granted, and
    # XOR-MAPPED-ADDRESS.
    response = success_response(pending.request)
    for _, address in allocation.relays():
        response.add(Attr.XOR_RELAYED_ADDRESS, address)
    response.add(Attr.LIFETIME, pending.lifetime)
    if reservation_token is not None:
        response.add(Attr.RESERVATION_TOKEN, reservation_token)
    if address_error is not None:
        # Answered at the codepoint the request used (coturn 4.6's draft 0x8032 gets the draft 0x8033).
        legacy = not pending.request.has(Attr.ADDITIONAL_ADDRESS_FAMILY)
        response.add(Attr.ADDRESS_ERROR_CODE_OLD if legacy else Attr.ADDRESS_ERROR_CODE, address_error)
    response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
    return [
        reply(state, pending.request, response, five_tuple, credentials.key),
        AllocationCreated(five_tuple, credentials.username, relayed, pending.lifetime,
                          extra[1] if extra is not None else None),
    ]


def _open_second_relay(
    state: CoreState, pending: PendingAllocation, handle: Any, relayed: Address, now: float
) -> OpenRelay | None:
    """Keep the bound IPv4 relay in `pending` and ask for the IPv6 one; None when no port is free."""
    port = state.ports.take(now, even=False, with_next=False)
    if port is None:
        return None
    pending.first = (handle, relayed)
    pending.family = FAMILY_IPV6
    pending.host = relay_host(state, FAMILY_IPV6, pending.five_tuple)
    pending.port = port
    pending.attempts = 1
    pending.even = False
    return open_relay(state, pending)


def _forget_first(state: CoreState, pending: PendingAllocation) -> list[Action]:
    """The IPv4 relay a dual Allocate holds while its IPv6 one is opened, closed (the Allocate is abandoned)."""
    if pending.first is None:
        return []
    handle, relayed = pending.first
    state.ports.release(relayed[1])
    return [CloseRelay(handle)]


def _grant_first_alone(
    state: CoreState, pending: PendingAllocation, code: int, reason: str, now: float
) -> list[Action]:
    """RFC 8656 §7.2 step 9: the IPv6 relay of a dual Allocate cannot be had; IPv4 alone, with ADDRESS-ERROR-CODE."""
    assert pending.first is not None
    handle, relayed = pending.first
    return _create(state, pending, handle, relayed, now, address_error=(FAMILY_IPV6, code, reason))


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
        if pending.first is not None:  # every port tried for the IPv6 relay of a dual Allocate
            return _grant_first_alone(state, pending, 508, "Insufficient Capacity", now)
        if not pending.from_reservation and state.alternates.servers:  # another instance may have ports left
            return redirect(state, pending.request, pending.five_tuple, pending.credentials,
                            Capacity.PORTS_EXHAUSTED, now)
        error = TurnError(508, "Insufficient Capacity")
    else:
        pending.release_ports(ports)
        if pending.first is not None:
            if failure is RelayFailure.FAMILY_UNAVAILABLE:
                return _grant_first_alone(state, pending, 440, "Address Family not Supported", now)
            return _grant_first_alone(state, pending, 508, "Insufficient Capacity", now)
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
