"""CreatePermission (RFC 8656 §9) and ChannelBind (RFC 8656 §11.2, §12), and the owner and peer checks they share
with Refresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyturn.core.actions import Action
from pyturn.core.allocation import (
    CHANNEL_LIFETIME,
    CHANNEL_MAX,
    CHANNEL_MIN,
    PERMISSION_LIFETIME,
    Allocation,
    ChannelBinding,
    FiveTuple,
    family_of,
)
from pyturn.core.auth import Credentials
from pyturn.core.events import ChannelBound, PermissionInstalled
from pyturn.core.transactions import reply, success_response
from pyturn.errors import TurnError
from pyturn.wire.message import Address, Attr, Message

if TYPE_CHECKING:
    from pyturn.core.state import CoreState

LEGACY_CHANNEL_MAX = 0x7FFF  # RFC 5766 §11's top channel number (LegacyChannelNumbers)


def create_permission(
    state: CoreState,
    request: Message,
    five_tuple: FiveTuple,
    credentials: Credentials,
    allocation: Allocation | None,
    now: float,
) -> list[Action]:
    """RFC 8656 §9.2: every XOR-PEER-ADDRESS is checked before any permission is installed."""
    assert allocation is not None
    check_owner(allocation, credentials)
    peers = request.get_all(Attr.XOR_PEER_ADDRESS)
    if not peers:
        raise TurnError(400, "Bad Request")
    for peer in peers:
        # A permission covers every port of the IP (RFC 8656 §9): the port is checked when data flows.
        check_peer(state, allocation, peer, port=None)
    cap = state.config.max_permissions_per_allocation
    if cap and len(allocation.permissions.keys() | {peer[0] for peer in peers}) > cap:
        raise TurnError(508, "Insufficient Capacity")  # docs/security.md "Permission and channel caps"
    actions: list[Action] = []
    for peer in peers:
        if install_permission(state, allocation, peer[0], now):
            actions.append(PermissionInstalled(five_tuple, peer[0]))
    state.route_table.sync(allocation, now)
    return [reply(state, request, success_response(request), five_tuple, credentials.key), *actions]


def channel_bind(
    state: CoreState,
    request: Message,
    five_tuple: FiveTuple,
    credentials: Credentials,
    allocation: Allocation | None,
    now: float,
) -> list[Action]:
    """RFC 8656 §11.2 (channel numbers 0x4000-0x4FFF, RFC 8656 §12)."""
    assert allocation is not None
    check_owner(allocation, credentials)
    channel = request.get(Attr.CHANNEL_NUMBER)
    peer = request.get(Attr.XOR_PEER_ADDRESS)
    if channel is None or peer is None:
        raise TurnError(400, "Bad Request")
    if not CHANNEL_MIN <= channel <= (LEGACY_CHANNEL_MAX if state.config.legacy_channel_numbers else CHANNEL_MAX):
        raise TurnError(400, "Bad Request")
    check_peer(state, allocation, peer, port=peer[1])
    bound = allocation.channels.get(channel)
    if bound is not None and bound.peer != peer:
        raise TurnError(400, "Bad Request")  # channel bound to another peer
    if bound is None and any(binding.peer == peer for binding in allocation.channels.values()):
        raise TurnError(400, "Bad Request")  # peer bound to another channel (at most a few dozen to scan)
    config = state.config
    if bound is None and config.max_channels_per_allocation and (
        len(allocation.channels) >= config.max_channels_per_allocation
    ):
        raise TurnError(508, "Insufficient Capacity")
    if (
        config.max_permissions_per_allocation
        and peer[0] not in allocation.permissions
        and len(allocation.permissions) >= config.max_permissions_per_allocation
    ):
        raise TurnError(508, "Insufficient Capacity")
    actions: list[Action] = []
    if bound is None:
        bound = ChannelBinding(channel, peer, now + CHANNEL_LIFETIME)
        allocation.channels[channel] = bound
        actions.append(ChannelBound(five_tuple, channel, peer))
        state.schedule_peers(allocation, bound.expires)
    else:
        bound.expires = now + CHANNEL_LIFETIME  # the scheduled PEERS entry fires early and is pushed again
    # §11.2: binding a channel installs or refreshes the permission for the peer's IP.
    if install_permission(state, allocation, peer[0], now):
        actions.append(PermissionInstalled(five_tuple, peer[0]))
    state.route_table.sync(allocation, now)
    return [reply(state, request, success_response(request), five_tuple, credentials.key), *actions]


def check_owner(allocation: Allocation, credentials: Credentials) -> None:
    # RFC 8656 §5 / reTurn: later requests must use the allocation's username and key -> 441.
    if credentials.username != allocation.username or credentials.key != allocation.key:
        raise TurnError(441, "Wrong Credentials")


def check_peer(state: CoreState, allocation: Allocation, peer: Address, *, port: int | None) -> None:
    """443 for a family the allocation has no relay of, 403 for a peer the policy refuses (RFC 8656 §9.2 and
    §11.2); a dual allocation (RFC 8656 §7.2) takes peers of both families."""
    if not allocation.has_family(family_of(peer[0])):
        raise TurnError(443, "Peer Address Family Mismatch")  # RFC 6156 §5
    policy = state.policy
    if not (policy.allows_permission(peer[0]) if port is None else policy.allows(peer[0], port)):
        raise TurnError(403, "Forbidden")


def install_permission(state: CoreState, allocation: Allocation, ip: str, now: float) -> bool:
    new = ip not in allocation.permissions
    allocation.permissions[ip] = now + PERMISSION_LIFETIME
    if new:  # a refresh keeps the scheduled PEERS entry, which is pushed again when it fires early
        state.schedule_peers(allocation, now + PERMISSION_LIFETIME)
    return new
