"""Data on the slow path. From clients: Send indications (RFC 8656 §11.2) and ChannelData that missed the
adapter's route table (RFC 8656 §12.3), both dropped, never answered, when anything is wrong. From peers: the
datagrams the relay socket could not send on a bound channel, as Data indications (RFC 8656 §11.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyturn.core.actions import Action, SendToClient, SendToPeer
from pyturn.core.allocation import FiveTuple, Transport, family_of
from pyturn.errors import StunDecodeError
from pyturn.wire.codec import encode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

if TYPE_CHECKING:
    from pyturn.core.state import CoreState


def handle_send(state: CoreState, indication: Message, five_tuple: FiveTuple, now: float) -> list[Action]:
    """RFC 8656 §11.2/§11.3: Send indications are never answered; anything wrong drops them."""
    allocation = state.allocations.get(five_tuple)
    if allocation is None or indication.unknown_required or indication.invalid_attributes:
        return []
    peer = indication.get(Attr.XOR_PEER_ADDRESS)
    data = indication.get(Attr.DATA)
    if peer is None or data is None or not allocation.has_family(family_of(peer[0])):
        return []
    if not allocation.has_permission(peer[0], now) or not state.policy.allows(peer[0], peer[1]):
        return []
    state.route_table.learn(allocation, peer)
    # RFC 8656 §11.3: DONT-FRAGMENT asks for DF on this datagram. A relay bound for an Allocate with DONT-FRAGMENT
    # sets it on everything already; otherwise the adapter sets it for this one, or drops the datagram when it
    # cannot (as if DONT-FRAGMENT were an unknown comprehension-required attribute).
    dont_fragment = not allocation.dont_fragment and indication.has(Attr.DONT_FRAGMENT)
    return [SendToPeer(allocation.handle_for(peer[0]), peer, data, dont_fragment)]


def handle_channel_data(state: CoreState, data: bytes, five_tuple: FiveTuple, now: float) -> list[Action]:
    allocation = state.allocations.get(five_tuple)
    if allocation is None:
        return []
    try:
        channel, payload = decode_channel_data(data)
    except StunDecodeError:
        return []
    binding = allocation.channels.get(channel)
    if binding is None or binding.expires <= now or not allocation.has_permission(binding.peer[0], now):
        return []
    return [SendToPeer(allocation.handle_for(binding.peer[0]), binding.peer, payload)]


def handle_peer_data(state: CoreState, handle: Any, data: bytes, peer: Address, now: float) -> list[Action]:
    """A datagram a peer sent to the relay socket `handle` (RFC 8656 §11.3 and §12.4)."""
    allocation = state.by_handle.get(handle)
    if allocation is None or not allocation.has_permission(peer[0], now):
        return []  # RFC 8656 §9: no permission, no relaying
    if not state.policy.allows(peer[0], peer[1]):
        return []  # a permission for one of our IPs admits only other relays (relay-range ports)
    five_tuple = allocation.five_tuple
    channel = allocation.channel_for_peer.get(peer)
    if channel is not None:
        pad = five_tuple.transport is not Transport.UDP and state.config.tcp_channel_data_padding
        return [SendToClient(five_tuple, encode_channel_data(channel, data, pad=pad))]
    state.route_table.learn(allocation, peer)
    tid = state.data_tid_prefix + next(state.data_tids).to_bytes(8, "big")
    indication = Message(Method.DATA, MessageClass.INDICATION, tid)
    indication.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data)
    return [SendToClient(five_tuple, encode_message(indication))]
