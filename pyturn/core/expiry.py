"""What comes due on tick(): allocations whose lifetime ran out (RFC 8656 §7), permissions (§9) and channel
bindings (§12) that lapsed, unredeemed RESERVATION-TOKENs (§7.2) and cached answers (RFC 8489 §6.3.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyturn.core.actions import Action, ReleasePort
from pyturn.core.allocation import Allocation
from pyturn.core.deletion import delete_allocation
from pyturn.core.timers import DeadlineKind

if TYPE_CHECKING:
    from pyturn.core.state import CoreState


def expire_due(state: CoreState, now: float) -> list[Action]:
    """Expire every deadline due at `now`."""
    actions: list[Action] = []
    deadlines = state.deadlines
    for _, kind, owner, item in deadlines.pop_due(now):
        # pop_due only yields an object's one scheduled entry (CoreState.entry_current). A refresh moved the
        # object's own deadline, not its entry: an entry that fires early is pushed again at the new time.
        if kind is DeadlineKind.RESERVATION:
            reservation = state.reservations.pop(item)
            state.ports.release(reservation.port)
            actions.append(ReleasePort(reservation.family, reservation.port))
            continue
        allocation: Allocation = owner
        if kind is DeadlineKind.RESPONSES:
            expire_responses(state, allocation, now)
        elif kind is DeadlineKind.ALLOCATION:
            if allocation.expires > now:
                allocation.scheduled = allocation.expires
                deadlines.push(allocation.expires, kind, allocation)
            else:
                actions.extend(delete_allocation(state, allocation, "expired", entry_popped=True))
        else:
            expire_peers(state, allocation, now)
    if state.limiter is not None:
        state.limiter.prune(now)
    if state.tcp_relays.by_id:
        actions.extend(state.tcp_relays.tick(now))  # the RFC 6062 30 s timers
    return actions


def expire_peers(state: CoreState, allocation: Allocation, now: float) -> None:
    """Drop the lapsed permissions and channel bindings of one allocation; schedule its next such expiry."""
    permissions = allocation.permissions
    lapsed_ips = [ip for ip, expires in permissions.items() if expires <= now]
    for ip in lapsed_ips:
        del permissions[ip]
    lapsed = [binding for binding in allocation.channels.values() if binding.expires <= now]
    if lapsed:
        for binding in lapsed:
            del allocation.channels[binding.channel]
        state.route_table.drop_channels(allocation, lapsed)
    if lapsed or lapsed_ips:
        state.route_table.sync(allocation, now)
    allocation.peers_scheduled = allocation.next_peer_expiry()
    if allocation.peers_scheduled != float("inf"):
        state.deadlines.push(allocation.peers_scheduled, DeadlineKind.PEERS, allocation)


def expire_responses(state: CoreState, allocation: Allocation, now: float) -> None:
    """Drop the cached answers that have lapsed, so an idle allocation holds none (memory per allocation)."""
    responses = allocation.responses
    for tid in [tid for tid, (keep_until, _) in responses.items() if keep_until <= now]:
        del responses[tid]
    if not responses:
        allocation.responses = {}  # an emptied dict keeps its table; a new one does not
    else:
        first = min(keep_until for keep_until, _ in responses.values())
        state.deadlines.push(first, DeadlineKind.RESPONSES, allocation)
