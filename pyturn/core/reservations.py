"""RESERVATION-TOKEN (RFC 8656 §7.2, §14.9): issuing, redeeming and releasing the odd port an EVEN-PORT (R bit)
allocation holds for its pair.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING

from pyturn.core.actions import Action, ReleasePort
from pyturn.core.allocation import RESERVATION_LIFETIME
from pyturn.core.timers import DeadlineKind
from pyturn.errors import TurnError

if TYPE_CHECKING:
    from pyturn.core.state import CoreState

_TOKEN_BODY = struct.Struct("!HHB")  # relay port, issue time (seconds, mod 2**16), address family
_TOKEN_MAC = 3  # bytes of MAC in the 8-byte token: forging one only names a port, it authorises nothing


@dataclass(slots=True)
class Reservation:
    port: int
    expires: float
    family: int


def issue_token(state: CoreState, port: int, family: int, now: float) -> bytes:
    """RFC 8656 §14.9 RESERVATION-TOKEN: port, issue time, family and a MAC, so any worker sharing the secret
    can check a token another worker issued (SO_REUSEPORT may hash the RTCP allocation to another worker)."""
    body = _TOKEN_BODY.pack(port, int(now) & 0xFFFF, family)
    return body + hmac.new(state.secret, b"token" + body, sha256).digest()[:_TOKEN_MAC]


def reserve(state: CoreState, port: int, family: int, now: float) -> bytes:
    """Hold `port` for the RESERVATION-TOKEN returned, for 30 s (RFC 8656 §7.2); the tick releases it unredeemed."""
    token = issue_token(state, port, family, now)
    state.reservations[token] = Reservation(port, now + RESERVATION_LIFETIME, family)
    state.deadlines.push(now + RESERVATION_LIFETIME, DeadlineKind.RESERVATION, None, token)
    return token


def redeem(state: CoreState, token: bytes, now: float) -> tuple[int, int]:
    """The (port, address family) a RESERVATION-TOKEN holds, or 508 for a forged, expired or used token."""
    size = _TOKEN_BODY.size
    if len(token) != size + _TOKEN_MAC or not hmac.compare_digest(
        token[size:], hmac.new(state.secret, b"token" + token[:size], sha256).digest()[:_TOKEN_MAC]
    ):
        raise TurnError(508, "Insufficient Capacity")
    port: int
    issued: int
    family: int
    port, issued, family = _TOKEN_BODY.unpack(token[:size])
    if (int(now) - issued) & 0xFFFF > RESERVATION_LIFETIME:
        raise TurnError(508, "Insufficient Capacity")
    reservation = state.reservations.get(token)
    if reservation is not None:
        if reservation.expires <= now:
            raise TurnError(508, "Insufficient Capacity")  # lapsed: the tick releases it and its socket
        del state.reservations[token]
        state.deadlines.note_stale()
        return reservation.port, family  # the port is held by the pool since the even allocation
    config = state.config
    if config.allocation_port_range_min <= port <= config.allocation_port_range_max:
        raise TurnError(508, "Insufficient Capacity")  # ours, and already redeemed or released
    # Issued by another worker (another slice of the range): its bind tells whether the port is still free.
    return port, family


def release_reservation(state: CoreState, port: int) -> list[Action]:
    """The reserving allocation went away: its unredeemed reservation goes too (RFC 8656 §7.2)."""
    for token, reservation in list(state.reservations.items()):
        if reservation.port == port:
            del state.reservations[token]
            state.deadlines.note_stale()
            state.ports.release(port)
            return [ReleasePort(reservation.family, port)]
    return []
