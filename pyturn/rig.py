"""What a test rig does to a running `Server` and reads from it (docs/testing.md): impair or pause the relayed
media, fail or expire things on purpose, drop connections, and the record of the core's events.

`RigControls` is a mixin of `pyturn.server.Server`; it uses only the attributes declared on it below.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from pyturn.core.dispatch import TurnServerCore
from pyturn.core.events import AllocationDeleted, Event
from pyturn.core.impairment import ActiveImpairment, Impairment
from pyturn.errors import PyturnError
from pyturn.hooks import AllocationEnded, EventLog, RelayedBytes
from pyturn.net.runtime import Runtime
from pyturn.net.shaping import RelayImpairments
from pyturn.wire.message import Method

EventType = TypeVar("EventType")


class RigControls:
    """Test-rig controls and records of a server (mixed into pyturn.Server)."""

    # Set by the Server: its core and adapters' runtime (None before start()), whether it was closed, its events.
    core: TurnServerCore | None
    _runtime: Runtime | None
    _closed: bool
    _event_log: EventLog

    # ------------------------------------------------------------------------------------- controls
    def _running(self) -> tuple[TurnServerCore, Runtime]:
        if self.core is None or self._runtime is None or self._closed:
            raise PyturnError("the server is not running: start() it first")
        return self.core, self._runtime

    def _impairments(self) -> RelayImpairments:
        _, runtime = self._running()
        if runtime.impairments is None:
            controller = RelayImpairments(runtime)
            self._event_log.listeners.append(controller.on_event)
        impairments: RelayImpairments = runtime.impairments
        return impairments

    def impair(self, impairment: Impairment | None, *, direction: str = "both",
               username: str | None = None) -> ActiveImpairment | None:
        """Impair the relayed media of `username`'s allocations (or everyone's) in `direction` ("both",
        "to_peer", "to_client"), including allocations created later; returns the live statistics.

        One impairment per username (None = everyone's, used where no username has its own); a new one replaces
        it. ``impair(None)`` removes them all, ``impair(None, username=...)`` that user's. STUN is never impaired.
        """
        return self._impairments().impair(impairment, direction, username)

    @contextlib.contextmanager
    def impaired(self, impairment: Impairment, *, direction: str = "both",
                 username: str | None = None) -> Iterator[ActiveImpairment]:
        """``with server.impaired(Impairment(...)) as stats:`` impairs the relay for the block only."""
        active = self.impair(impairment, direction=direction, username=username)
        assert active is not None
        try:
            yield active
        finally:
            self.remove_impairment(active)

    def remove_impairment(self, active: ActiveImpairment) -> None:
        """Take `active` (what impair() returned) out of force, unless another impairment replaced it."""
        if self._runtime is not None and self._runtime.impairments is not None and not self._closed:
            self._impairments().remove(active)

    def pause_relay(self) -> None:
        """Drop every relayed datagram, both ways, while STUN and TURN requests are still answered."""
        self._impairments().pause()

    def resume_relay(self) -> None:
        """End pause_relay(): relaying (and any impairment in force) resumes."""
        self._impairments().resume()

    def expire_allocations(self, username: str | None = None) -> int:
        """Delete `username`'s allocations (or all) as if their lifetime had run out; returns how many went.

        The core deletes them as its timer would (AllocationDeleted with reason "expired", hooks called)."""
        core, runtime = self._running()
        actions = core.expire_allocations(runtime.now(), username)
        runtime.dispatch(actions)
        return sum(1 for action in actions if isinstance(action, AllocationDeleted))

    def fail_next(self, method: Method | int | str, code: int, count: int = 1) -> None:
        """The next `count` authenticated requests of `method` ("ALLOCATE", "REFRESH", "CREATE_PERMISSION",
        "CHANNEL_BIND" or a pyturn.Method) are answered with error `code`, signed with the user's key."""
        core, _ = self._running()
        core.faults.add(method, code, count)

    def expire_nonces(self) -> None:
        """Make every nonce issued so far stale: each client's next authenticated request gets 438."""
        core, _ = self._running()
        core.expire_nonces()

    def close_connections(self, username: str | None = None) -> int:
        """Drop (RST) the TCP/TLS client connections (of `username`'s allocations, or all); returns how many.

        Their allocations die with them (RFC 8656 §7), as when a client's connection breaks."""
        core, runtime = self._running()
        dropped = 0
        for five_tuple, stream in list(runtime.streams.items()):
            allocation = core.allocations.get(five_tuple)
            if username is not None and (allocation is None or allocation.username != username):
                continue
            if stream.transport is not None:
                stream.transport.abort()
                dropped += 1
        return dropped

    # -------------------------------------------------------------------------------------- records
    @property
    def events(self) -> list[Event]:
        """The core's latest events (up to pyturn.hooks.EVENTS_KEPT), oldest first."""
        return list(self._event_log.events)

    @property
    def ended_allocations(self) -> list[AllocationEnded]:
        """Every deleted allocation (the latest EVENTS_KEPT) with the bytes it relayed each way."""
        return list(self._event_log.ended)

    def relayed_bytes(self) -> RelayedBytes:
        """Payload bytes relayed so far in each direction, by deleted and live allocations together."""
        return self._event_log.relayed_bytes(self._runtime.relays if self._runtime is not None else ())

    async def wait_for_event(
        self, kind: type[EventType], *, where: Callable[[EventType], bool] | None = None, timeout: float = 5.0
    ) -> EventType:
        """The first recorded event of type ``kind`` (for which ``where`` is true), waiting for it if needed.

        Raises TimeoutError when none arrives within ``timeout`` seconds.
        """

        def matching(event: object) -> EventType | None:
            if isinstance(event, kind) and (where is None or where(event)):
                return event
            return None

        for event in self._event_log.events:
            found = matching(event)
            if found is not None:
                return found
        arrived: asyncio.Future[EventType] = asyncio.get_running_loop().create_future()

        def listener(event: Event) -> None:
            found = matching(event)
            if found is not None and not arrived.done():
                arrived.set_result(found)

        self._event_log.listeners.append(listener)
        try:
            return await asyncio.wait_for(arrived, timeout)
        finally:
            self._event_log.listeners.remove(listener)
