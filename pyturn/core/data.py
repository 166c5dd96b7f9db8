"""Client data on the slow path: Send indications (RFC 8656 §11.2) and ChannelData that missed the adapter's route
table (RFC 8656 §12.3). Both are dropped, never answered, when anything is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyturn.core.actions import (
    Action,
    SendToPeer,
)
from pyturn.core.allocation import (
    FiveTuple,
    family_of,
)
from pyturn.errors import StunDecodeError
from pyturn.wire.framing import decode_channel_data
from pyturn.wire.message import Attr, Message

if TYPE_CHECKING:
    from pyturn.core.dispatch import TurnServerCore

def handle_send(core: TurnServerCore, indication: Message, five_tuple: FiveTuple, now: float) -> list[Action]:
    """RFC 8656 §11.2/§11.3: Send indications are never answered; anything wrong drops them."""
    allocation = core._allocations.get(five_tuple)
    if allocation is None or indication.unknown_required or indication.invalid_attributes:
        return []
    peer = indication.get(Attr.XOR_PEER_ADDRESS)
    data = indication.get(Attr.DATA)
    if peer is None or data is None or family_of(peer[0]) != allocation.family:
        return []
    if not allocation.has_permission(peer[0], now) or not core.policy.allows(peer[0], peer[1]):
        return []
    core.route_table.learn(allocation, peer)
    # RFC 8656 §11.3: DONT-FRAGMENT asks for DF on this datagram. A relay bound for an Allocate with DONT-FRAGMENT
    # sets it on everything already; otherwise the adapter sets it for this one, or drops the datagram when it
    # cannot (as if DONT-FRAGMENT were an unknown comprehension-required attribute).
    dont_fragment = not allocation.dont_fragment and indication.has(Attr.DONT_FRAGMENT)
    return [SendToPeer(allocation.relay_handle, peer, data, dont_fragment)]


def handle_channel_data(core: TurnServerCore, data: bytes, five_tuple: FiveTuple, now: float) -> list[Action]:
    allocation = core._allocations.get(five_tuple)
    if allocation is None:
        return []
    try:
        channel, payload = decode_channel_data(data)
    except StunDecodeError:
        return []
    binding = allocation.channels.get(channel)
    if binding is None or binding.expires <= now or not allocation.has_permission(binding.peer[0], now):
        return []
    return [SendToPeer(allocation.relay_handle, binding.peer, payload)]
