"""Refresh (RFC 8656 §7.3): a new lifetime, or LIFETIME 0 to delete the allocation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyturn.core.actions import Action
from pyturn.core.allocate import granted_lifetime
from pyturn.core.allocation import Allocation, FiveTuple
from pyturn.core.auth import Credentials
from pyturn.core.deletion import delete_allocation, drop_family
from pyturn.core.events import AllocationRefreshed
from pyturn.core.permissions import check_owner
from pyturn.core.timers import DeadlineKind
from pyturn.core.transactions import reply, success_response
from pyturn.errors import TurnError
from pyturn.wire.message import Attr, Message

if TYPE_CHECKING:
    from pyturn.core.state import CoreState


def refresh(
    state: CoreState,
    request: Message,
    five_tuple: FiveTuple,
    credentials: Credentials,
    allocation: Allocation | None,
    now: float,
) -> list[Action]:
    """RFC 8656 §7.3."""
    assert allocation is not None
    check_owner(allocation, credentials)
    # RFC 8656 §7.3: a REQUESTED-ADDRESS-FAMILY the allocation has no relay of -> 443. In a dual allocation it names
    # the family the Refresh is about (§7.1): with LIFETIME 0 only that relay goes. A non-zero lifetime refreshes
    # the allocation, whose two relays share one lifetime (docs/compatibility.md "Relays").
    family = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
    if family is not None and not allocation.has_family(family):
        raise TurnError(443, "Peer Address Family Mismatch")
    response = success_response(request)
    if request.get(Attr.LIFETIME) == 0 and family is not None and allocation.extra_relayed is not None:
        closed = drop_family(state, allocation, family, now)
        response.add(Attr.LIFETIME, 0)
        return [reply(state, request, response, five_tuple, credentials.key), *closed]
    if request.get(Attr.LIFETIME) == 0:
        actions = delete_allocation(state, allocation, "refresh")
        response.add(Attr.LIFETIME, 0)
        return [reply(state, request, response, five_tuple, credentials.key), *actions]
    lifetime = granted_lifetime(state, request)
    allocation.expires = now + lifetime
    if allocation.expires < allocation.scheduled:  # a shorter lifetime: the scheduled entry would fire late
        allocation.scheduled = allocation.expires
        state.deadlines.push(allocation.expires, DeadlineKind.ALLOCATION, allocation)
        state.deadlines.note_stale()
    response.add(Attr.LIFETIME, lifetime)
    return [reply(state, request, response, five_tuple, credentials.key), AllocationRefreshed(five_tuple, lifetime)]
