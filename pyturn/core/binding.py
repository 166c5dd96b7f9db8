"""Binding (RFC 8489 §7.3.1), with the RFC 3489 / RFC 5780 alternate-address behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyturn.core.actions import Action, SendFrom
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.transactions import (
    encode_response,
    error_response_for,
    reply,
    success_response,
    unknown_attributes_response,
)
from pyturn.errors import TurnError
from pyturn.wire.message import Attr, Message

if TYPE_CHECKING:
    from pyturn.core.state import CoreState

CHANGE_IP = 0x04  # RFC 5780 §7.2 CHANGE-REQUEST flags
CHANGE_PORT = 0x02


def handle_binding(state: CoreState, request: Message, five_tuple: FiveTuple) -> list[Action]:
    """RFC 8489 §7.3.1 Binding, with RFC 3489 / RFC 5780 alternate-address behaviour (docs/compatibility.md "Alternate
    address")."""
    client = five_tuple.client
    if request.invalid_attributes:
        return []  # unauthenticated: a malformed Binding stays unanswered (RFC 8489 §6.3)
    if request.unknown_required:
        return [reply(state, request, unknown_attributes_response(request), five_tuple, None)]
    if state.alternate is None and not request.classic and request.has(Attr.CHANGE_REQUEST):
        # RFC 5780 §6.1: without an alternate address CHANGE-REQUEST cannot be honoured -> 420. Classic RFC 3489
        # clients get their answer with the flag ignored, as reTurn does.
        response = error_response_for(request, TurnError(420, "Unknown Attribute"))
        response.add(Attr.UNKNOWN_ATTRIBUTES, (Attr.CHANGE_REQUEST,))
        return [reply(state, request, response, five_tuple, None)]
    response = success_response(request)
    # RFC 3489 clients (no magic cookie) only understand MAPPED-ADDRESS.
    response.add(Attr.MAPPED_ADDRESS if request.classic else Attr.XOR_MAPPED_ADDRESS, client)
    alternate = state.alternate
    if alternate is None or five_tuple.transport is not Transport.UDP or ":" in five_tuple.server[0]:
        return [reply(state, request, response, five_tuple, None)]
    (primary_ip, primary_port), (other_ip, other_port) = alternate
    here_ip, here_port = five_tuple.server
    if here_ip not in (primary_ip, other_ip) or here_port not in (primary_port, other_port):
        return [reply(state, request, response, five_tuple, None)]
    swap_ip = other_ip if here_ip == primary_ip else primary_ip
    swap_port = other_port if here_port == primary_port else primary_port
    flags = request.get(Attr.CHANGE_REQUEST, 0)
    source = (swap_ip if flags & CHANGE_IP else here_ip, swap_port if flags & CHANGE_PORT else here_port)
    changed = (swap_ip, swap_port)
    destination = client
    if request.classic:
        response.add(Attr.SOURCE_ADDRESS, source).add(Attr.CHANGED_ADDRESS, changed)
        target = request.get(Attr.RESPONSE_ADDRESS)
        # RESPONSE-ADDRESS is honoured only towards the requester's own IP: no reflection to third parties.
        if target is not None and target[0] == client[0]:
            destination = target
            response.add(Attr.REFLECTED_FROM, client)
    else:
        response.add(Attr.RESPONSE_ORIGIN, source).add(Attr.OTHER_ADDRESS, changed)
        port = request.get(Attr.RESPONSE_PORT)
        if port is not None:
            destination = (client[0], port)  # RFC 5780 §7.5: same IP, another port
    data = encode_response(state, request, response, None)
    return [SendFrom(source, destination, data)]
