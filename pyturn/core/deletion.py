"""Deleting an allocation (RFC 8656 §7: lifetime run out, Refresh with LIFETIME 0, its TCP/TLS connection closed,
shutdown): every table forgets it, its ports go back and the adapter closes its relay socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyturn.core.actions import Action, CloseRelay
from pyturn.core.allocation import Allocation, family_of
from pyturn.core.events import AllocationDeleted
from pyturn.core.reservations import release_reservation

if TYPE_CHECKING:
    from pyturn.core.state import CoreState


def delete_allocation(
    state: CoreState, allocation: Allocation, reason: str, *, entry_popped: bool = False
) -> list[Action]:
    """Forget `allocation`; `reason` ("expired", "refresh", "closed", "shutdown") goes into AllocationDeleted.
    `entry_popped`: tick() has just taken the allocation's own deadline entry off the heap."""
    five_tuple = allocation.five_tuple
    del state.allocations[five_tuple]
    # Every scheduled entry of this allocation goes stale (its own unless tick() just popped it).
    state.deadlines.note_stale(
        (allocation.peers_scheduled != float("inf")) + bool(allocation.responses) + (not entry_popped)
    )
    state.by_handle.pop(allocation.relay_handle, None)
    extra = close_extra_relay(state, allocation)
    user = (allocation.username, allocation.realm)
    remaining = state.per_user.get(user, 1) - 1
    if remaining:
        state.per_user[user] = remaining
    else:
        state.per_user.pop(user, None)
    state.route_table.drop(allocation)
    state.ports.release(allocation.relayed[1])
    released = release_reservation(state, allocation.reserved_port) if allocation.reserved_port else []
    handle = allocation.relay_handle
    # Stale deadline entries may still point at this object until the heap is compacted: hold nothing big.
    allocation.relay_handle = None
    allocation.channels.clear()
    allocation.permissions.clear()
    allocation.responses.clear()
    deleted = AllocationDeleted(five_tuple, allocation.username, allocation.relayed, reason)
    # The CloseRelay of each relay (two for a dual allocation) comes before AllocationDeleted: the adapter reports
    # their byte counts added up (docs/architecture.md "Sans-IO contract").
    # RFC 6062 §5.5: the data connections of a TCP allocation close with it.
    closed = state.tcp_relays.allocation_deleted(allocation) if allocation.tcp else []
    return [*closed, *extra, CloseRelay(handle), *released, deleted]


def close_extra_relay(state: CoreState, allocation: Allocation) -> list[Action]:
    """Forget the second relay of a dual allocation (RFC 8656 §7.2), if it has one; the CloseRelay for it."""
    handle, relayed = allocation.extra_handle, allocation.extra_relayed
    if relayed is None:
        return []
    allocation.extra_handle = allocation.extra_relayed = None
    state.by_handle.pop(handle, None)
    state.ports.release(relayed[1])
    return [CloseRelay(handle)]


def drop_family(state: CoreState, allocation: Allocation, family: int, now: float) -> list[Action]:
    """Close the relay of one family of a dual allocation (RFC 8656 §7.3, Refresh with REQUESTED-ADDRESS-FAMILY
    and LIFETIME 0); the other relay carries on alone, with the permissions and channels of its family."""
    if allocation.family == family:  # the first relay goes: the second takes its place
        assert allocation.extra_relayed is not None
        gone_handle, gone_relayed = allocation.relay_handle, allocation.relayed
        allocation.relay_handle, allocation.relayed = allocation.extra_handle, allocation.extra_relayed
        allocation.extra_handle, allocation.extra_relayed = gone_handle, gone_relayed
    closed = close_extra_relay(state, allocation)
    for ip in [ip for ip in allocation.permissions if family_of(ip) == family]:
        del allocation.permissions[ip]
    gone = [binding for binding in allocation.channels.values() if family_of(binding.peer[0]) == family]
    for binding in gone:
        del allocation.channels[binding.channel]
    state.route_table.drop_channels(allocation, gone)
    state.route_table.sync(allocation, now)
    return closed


def delete_all(state: CoreState, reason: str) -> list[Action]:
    """Delete every allocation, in creation order."""
    actions: list[Action] = []
    for allocation in list(state.allocations.values()):
        actions.extend(delete_allocation(state, allocation, reason))
    return actions
