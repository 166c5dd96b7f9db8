"""Faults for test rigs (docs/testing.md has recipes). Pure.

* Injected request failures (``Server.fail_next``): which TURN requests get which error. The core asks
  ``take(method)`` once a request has been authenticated, so the injected error is signed with the user's key
  like any other answer to that request (RFC 8489 §9.2.4).
* ``expire_allocations`` and ``expire_nonces``: lifetimes and nonces running out on demand.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from pyturn.core.actions import Action
from pyturn.core.allocation import FiveTuple
from pyturn.core.auth import Challenge, Credentials
from pyturn.core.deletion import delete_allocation
from pyturn.core.transactions import error_response_for, refuse, reply
from pyturn.errors import TurnError
from pyturn.wire.message import Attr, Message, Method

if TYPE_CHECKING:
    from pyturn.core.state import CoreState

# The methods whose requests the core authenticates and can therefore fail on purpose (RFC 8656 §7-§11).
FAILABLE_METHODS = (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)

# Reason phrases of the error codes RFC 8489 §14.8 and RFC 8656 §17 define; others get a generic one.
REASONS = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}
GENERIC_REASON = "Injected Failure"


def method_of(method: Method | int | str) -> Method:
    """A TURN method from a Method member, its number or its name ("REFRESH", "refresh", "CHANNEL-BIND")."""
    if isinstance(method, str):
        name = method.strip().upper().replace("-", "_")
        try:
            chosen = Method[name]
        except KeyError:
            raise ValueError(f"unknown STUN method {method!r}") from None
    else:
        try:
            chosen = Method(method)
        except ValueError:
            raise ValueError(f"unknown STUN method {method!r}") from None
    if chosen not in FAILABLE_METHODS:
        names = ", ".join(m.name for m in FAILABLE_METHODS)
        raise ValueError(f"only authenticated TURN requests can be failed ({names}), not {chosen.name}")
    return chosen


def reason_for(code: int) -> str:
    return REASONS.get(code, GENERIC_REASON)


class FailureInjector:
    """Error codes queued per method: each authenticated request of that method takes the next one."""

    __slots__ = ("_queued",)

    def __init__(self) -> None:
        self._queued: dict[int, deque[int]] = {}

    def __bool__(self) -> bool:
        return bool(self._queued)

    def add(self, method: Method | int | str, code: int, count: int = 1) -> None:
        chosen = method_of(method)
        if not (isinstance(code, int) and 300 <= code <= 699):
            raise ValueError(f"a STUN error code is 300..699 (RFC 8489 §14.8), got {code!r}")
        if not (isinstance(count, int) and count >= 1):
            raise ValueError(f"count is a number of requests >= 1, got {count!r}")
        self._queued.setdefault(int(chosen), deque()).extend([code] * count)

    def take(self, method: int) -> int | None:
        """The error code the next request of `method` gets, or None to handle it normally."""
        queued = self._queued.get(method)
        if not queued:
            return None
        code = queued.popleft()
        if not queued:
            del self._queued[method]
        return code

    def pending(self, method: Method | int | str) -> int:
        return len(self._queued.get(int(method_of(method)), ()))

    def clear(self) -> None:
        self._queued.clear()


def injected_failure(
    state: CoreState, request: Message, five_tuple: FiveTuple, credentials: Credentials, code: int
) -> list[Action]:
    """The answer to an authenticated request that takes the queued error `code`."""
    error = TurnError(code, reason_for(code))
    if code in (401, 438):
        # Challenges carry REALM and a fresh NONCE and no MESSAGE-INTEGRITY (RFC 8489 §9.2.4).
        return refuse(state, request, five_tuple, Challenge(code, error.reason))
    response = error_response_for(request, error)
    if request.method == Method.ALLOCATE:
        response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
    return [reply(state, request, response, five_tuple, credentials.key)]


def expire_allocations(state: CoreState, username: str | None = None) -> list[Action]:
    """Delete the allocations (of `username`, or all) as if their lifetime had run out."""
    actions: list[Action] = []
    for allocation in list(state.allocations.values()):
        if username is None or allocation.username == username:
            actions.extend(delete_allocation(state, allocation, "expired"))
    return actions


def expire_nonces(state: CoreState, secret: bytes) -> None:
    """Sign and check nonces with the new key `secret` only: every nonce issued so far is stale, so the next
    authenticated request of each client gets 438 and a new nonce (RFC 8489 §9.2.4). Reservation tokens keep
    their key; reloading a NonceSecretFile brings its secrets back."""
    state.nonces.set_secrets([secret])
