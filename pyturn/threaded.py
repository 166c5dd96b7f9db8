"""Run a Server on its own event loop in a daemon thread, for synchronous code and for tests on any event loop.

    with pyturn.run_in_thread(users={"alice": "secret"}) as server:
        print(server.turn_uris())

The Server object belongs to the background loop; ThreadedServer's methods hand each call to that loop and wait
for the answer, so they are safe from any thread. Hooks and ``on_event`` run on the background thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Collection, Iterator
from types import TracebackType
from typing import Any, TypeVar

from pyturn.config import Config
from pyturn.core.events import Event
from pyturn.core.impairment import ActiveImpairment, Impairment
from pyturn.errors import PyturnError
from pyturn.hooks import AllocationEnded, Hooks, RelayedBytes
from pyturn.server import TRANSPORTS, ReloadResult, Server, Users
from pyturn.wire.message import Address, Method

__all__ = ["ThreadedServer", "run_in_thread"]

T = TypeVar("T")
EventType = TypeVar("EventType")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0


class ThreadedServer:
    """A pyturn Server running in a background thread; a context manager that starts and stops it.

    Build it with :func:`run_in_thread`. ``start()`` returns once every listener is open (or raises what the
    server raised, e.g. StartupError); ``stop()`` closes the server, ends the loop and joins the thread.
    """

    def __init__(self, server: Server, *, start_timeout: float = START_TIMEOUT,
                 stop_timeout: float = STOP_TIMEOUT) -> None:
        self.server = server
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.addresses: dict[str, list[Address]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="pyturn-server", daemon=True)

    # ----------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the thread and wait (at most ``start_timeout`` s) until the server listens."""
        if self._thread.is_alive() or self._started.done():
            return
        self._thread.start()
        try:
            self._started.result(timeout=self.start_timeout)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise PyturnError(f"the server did not start within {self.start_timeout} s") from None
        except BaseException:
            self._thread.join(self.stop_timeout)
            raise
        self.addresses = {kind: list(bound) for kind, bound in self.server.addresses.items()}

    def stop(self) -> None:
        """Close the server and join its thread (at most ``stop_timeout`` s). Safe to call twice."""
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop_requested.set)
            except RuntimeError:
                pass  # the loop closed in between: the thread is ending anyway
        if self._thread.is_alive():
            self._thread.join(self.stop_timeout)
            if self._thread.is_alive():
                raise PyturnError(f"the server thread did not stop within {self.stop_timeout} s")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def _serve(self) -> None:
        self._stop_requested = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as error:
            self._started.set_exception(error)
            return
        self._started.set_result(None)
        try:
            await self._stop_requested.wait()
        finally:
            await self.server.close()

    # ------------------------------------------------------------------------------------------- queries
    def call(self, function: Callable[[Server], T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``function(server)`` on the server's loop and return its result."""
        loop = self._loop
        if loop is None or loop.is_closed() or not self._thread.is_alive():
            raise PyturnError("the server is not running")

        async def on_loop() -> T:
            return function(self.server)

        return asyncio.run_coroutine_threadsafe(on_loop(), loop).result(timeout)

    def turn_uris(self, transports: Collection[str] = TRANSPORTS, *, host: str | None = None) -> list[str]:
        """See :meth:`pyturn.Server.turn_uris`."""
        return self.server.turn_uris(transports, host=host)  # reads addresses only, fixed once started

    def ice_servers(self, username: str, password: str | None = None, *, transports: Collection[str] = TRANSPORTS,
                    host: str | None = None) -> list[dict[str, Any]]:
        """See :meth:`pyturn.Server.ice_servers`."""
        return self.call(lambda server: server.ice_servers(username, password, transports=transports, host=host))

    @property
    def events(self) -> list[Event]:
        """A snapshot of the server's recorded events."""
        return self.call(lambda server: server.events)

    @property
    def ended_allocations(self) -> list[AllocationEnded]:
        """A snapshot of the deleted allocations with their relayed bytes."""
        return self.call(lambda server: server.ended_allocations)

    def relayed_bytes(self) -> RelayedBytes:
        return self.call(lambda server: server.relayed_bytes())

    def allocation_count(self) -> int:
        return self.call(lambda server: server.allocation_count())

    def reload_users(self, users: Users | None = None) -> ReloadResult:
        return self.call(lambda server: server.reload_users(users))

    def wait_for_event(
        self, kind: type[EventType], *, where: Callable[[EventType], bool] | None = None, timeout: float = 5.0
    ) -> EventType:
        """Block until the server has recorded an event of type ``kind`` (see :meth:`pyturn.Server.wait_for_event`)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise PyturnError("the server is not running")
        waiting = asyncio.run_coroutine_threadsafe(
            self.server.wait_for_event(kind, where=where, timeout=timeout), loop
        )
        return waiting.result(timeout + 1.0)

    # ------------------------------------------------------- test-rig controls (see pyturn.Server, docs/testing.md)
    def impair(self, impairment: Impairment | None, *, direction: str = "both",
               username: str | None = None) -> ActiveImpairment | None:
        """See :meth:`pyturn.Server.impair`; the returned statistics are updated by the server's thread."""
        return self.call(lambda server: server.impair(impairment, direction=direction, username=username))

    @contextlib.contextmanager
    def impaired(self, impairment: Impairment, *, direction: str = "both",
                 username: str | None = None) -> Iterator[ActiveImpairment]:
        """See :meth:`pyturn.Server.impaired`."""
        active = self.impair(impairment, direction=direction, username=username)
        assert active is not None
        try:
            yield active
        finally:
            if self._thread.is_alive():
                self.call(lambda server: server.remove_impairment(active))

    def pause_relay(self) -> None:
        self.call(lambda server: server.pause_relay())

    def resume_relay(self) -> None:
        self.call(lambda server: server.resume_relay())

    def expire_allocations(self, username: str | None = None) -> int:
        return self.call(lambda server: server.expire_allocations(username))

    def fail_next(self, method: Method | int | str, code: int, count: int = 1) -> None:
        self.call(lambda server: server.fail_next(method, code, count))

    def expire_nonces(self) -> None:
        self.call(lambda server: server.expire_nonces())

    def close_connections(self, username: str | None = None) -> int:
        return self.call(lambda server: server.close_connections(username))

    def __repr__(self) -> str:
        return f"<pyturn.ThreadedServer {self.addresses}>"


def run_in_thread(
    config: Config | None = None,
    *,
    users: Users | None = None,
    hooks: Hooks | None = None,
    start_timeout: float = START_TIMEOUT,
    stop_timeout: float = STOP_TIMEOUT,
    **server_options: Any,
) -> ThreadedServer:
    """A ThreadedServer for ``Server(config, users=..., hooks=..., **server_options)``; use it in a ``with``.

    ``server_options`` are the other Server keyword arguments (on_event, transports, ssl_context, secret).
    Without a config the server binds 127.0.0.1 on ephemeral ports (pyturn.loopback_config()).
    """
    server = Server(config, users=users, hooks=hooks, **server_options)
    return ThreadedServer(server, start_timeout=start_timeout, stop_timeout=stop_timeout)
