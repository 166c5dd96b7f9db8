"""Lifecycle hooks and an event record, so a test rig can see what the server did without reading its logs.

The core reports what happens as events (pyturn.core: AllocationCreated, AllocationRefreshed, AllocationDeleted,
PermissionInstalled, ChannelBound, AuthFailed). A Server keeps the latest of them in an EventLog and calls the
matching Hooks callable for each. Callbacks run on the server's event loop, inside the packet handler: keep them
short and never block. An exception in a callback is logged and swallowed, so a faulty hook cannot stop the relay.
Pure: no sockets, no clock.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyturn.core.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationRefreshed,
    AuthFailed,
    ChannelBound,
    Event,
    PermissionInstalled,
)

__all__ = ["EVENTS_KEPT", "AllocationEnded", "EventLog", "Hooks", "RelayedBytes"]

log = logging.getLogger(__name__)

EVENTS_KEPT = 10_000
"""How many of the latest events a Server keeps; older ones are dropped so a long-running server stays small."""


@dataclass(frozen=True, slots=True)
class RelayedBytes:
    """Payload bytes relayed through allocations: client -> peer and peer -> client (no STUN/ChannelData headers)."""

    to_peer: int = 0
    to_client: int = 0

    def __add__(self, other: RelayedBytes) -> RelayedBytes:
        return RelayedBytes(self.to_peer + other.to_peer, self.to_client + other.to_client)

    @classmethod
    def of_relay(cls, handle: Any) -> RelayedBytes:
        """The counters of one relay socket (pyturn.net.relay.RelayEndpoint counts what it sends and receives)."""
        return cls(int(getattr(handle, "bytes_to_peer", 0)), int(getattr(handle, "bytes_to_client", 0)))


AllocationEnded = AllocationDeleted
"""The name this event had in the hooks before the core's and the hooks' shapes were one (kept for existing code)."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """Optional callables the Server calls as things happen; leave any of them None.

    Each receives the event of its name as the core reported it; on_allocation_deleted's AllocationDeleted carries
    the byte counts of the allocation's relay socket.
    """

    on_allocation_created: Callable[[AllocationCreated], None] | None = None
    on_allocation_refreshed: Callable[[AllocationRefreshed], None] | None = None
    on_allocation_deleted: Callable[[AllocationDeleted], None] | None = None
    on_permission: Callable[[PermissionInstalled], None] | None = None
    on_channel: Callable[[ChannelBound], None] | None = None
    on_auth_failure: Callable[[AuthFailed], None] | None = None


def _call(callback: Callable[[Any], None], argument: object) -> None:
    try:
        callback(argument)
    except Exception:
        log.exception("%r failed on %r", callback, argument)


class EventLog:
    """Records the core's events, calls the hooks and sums the bytes of deleted allocations.

    A Server passes it to the adapter as its event sink. ``listeners`` are extra callables (the Server's
    ``on_event`` argument, waiters of ``Server.wait_for_event``) called with every event.
    """

    def __init__(self, hooks: Hooks | None = None, *, keep: int = EVENTS_KEPT) -> None:
        self.hooks = hooks if hooks is not None else Hooks()
        self.events: deque[Event] = deque(maxlen=keep)
        self.ended: deque[AllocationDeleted] = deque(maxlen=keep)
        self.listeners: list[Callable[[Event], None]] = []
        self.finished = RelayedBytes()

    def __call__(self, event: Event) -> None:
        hooks = self.hooks
        self.events.append(event)
        if isinstance(event, AllocationCreated):
            if hooks.on_allocation_created is not None:
                _call(hooks.on_allocation_created, event)
        elif isinstance(event, AllocationDeleted):
            self.finished += RelayedBytes(event.bytes_to_peer, event.bytes_to_client)
            self.ended.append(event)
            if hooks.on_allocation_deleted is not None:
                _call(hooks.on_allocation_deleted, event)
        elif isinstance(event, AllocationRefreshed):
            if hooks.on_allocation_refreshed is not None:
                _call(hooks.on_allocation_refreshed, event)
        elif isinstance(event, PermissionInstalled):
            if hooks.on_permission is not None:
                _call(hooks.on_permission, event)
        elif isinstance(event, ChannelBound):
            if hooks.on_channel is not None:
                _call(hooks.on_channel, event)
        elif isinstance(event, AuthFailed) and hooks.on_auth_failure is not None:
            _call(hooks.on_auth_failure, event)
        for listener in list(self.listeners):
            _call(listener, event)

    def relayed_bytes(self, live_relays: Iterable[Any] = ()) -> RelayedBytes:
        """Bytes of every deleted allocation plus the current counters of the relays still open."""
        total = self.finished
        for relay in live_relays:
            total += RelayedBytes.of_relay(relay)
        return total
