"""pyturn.Server: the listeners, the core and the timers of one server, as an async context manager.

The library owns no process state: no signal handlers, no logging configuration, no sys.exit. start() and
close() are idempotent. The CLI (pyturn.cli) wraps this with signals, PID file and exit codes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pyturn.allocation import Transport
from pyturn.auth import UserLookup
from pyturn.config import Config
from pyturn.core import Event, TurnServerCore
from pyturn.errors import PyturnError, UserDBError
from pyturn.stun import Address
from pyturn.transport import Runtime, UdpListener, bind_udp, start_stream_listener
from pyturn.userdb import UserDB, load_user_file

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0
Users = Mapping[str, str] | UserDB | UserLookup


class StartupError(PyturnError):
    """A listener could not be opened (port in use, address not available, TLS files unusable)."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    loaded: bool
    users: int
    problems: list[str] = field(default_factory=list)


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class Server:
    """A running pyturn server.

    ``config`` is a Config (built in code or by load_config). ``users`` is optional: a mapping
    {username: password} (in the config's realm), a UserDB, or a lookup callable (username, realm) -> HA1
    key or None. Without it the config's UserDatabaseFile is read. ``on_event`` receives the core's events
    (allocation created/refreshed/deleted, permission, channel, auth failure).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        users: Users | None = None,
        on_event: Callable[[Event], None] | None = None,
        secret: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config if config is not None else Config()
        self._on_event = on_event
        self._secret = secret
        self._ssl_context = ssl_context
        self._reuse_port = reuse_port
        self._users_from_file = users is None
        self._user_db: UserDB | None = None
        self._lookup = self._initial_lookup(users)
        self.core: TurnServerCore | None = None
        self._runtime: Runtime | None = None
        self._udp: list[UdpListener] = []
        self._streams: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._user_file_mtime: float | None = None
        self._started = False
        self._closed = False
        self.addresses: dict[str, list[Address]] = {"udp": [], "tcp": [], "tls": []}

    # ----------------------------------------------------------------------------------------- users
    def _initial_lookup(self, users: Users | None) -> UserLookup:
        if users is None:
            if not self.config.user_database_file:
                raise PyturnError("no users: pass users=... or set UserDatabaseFile")
            result = self._load_user_file()
            if not result.loaded:
                raise UserDBError("; ".join(result.problems) or "no valid user in the user file")
            assert self._user_db is not None
            return self._user_db.lookup
        if isinstance(users, UserDB):
            self._user_db = users
            return users.lookup
        if isinstance(users, Mapping):
            self._user_db = UserDB.from_passwords(users, self.config.authentication_realm)
            return self._user_db.lookup
        return users

    def _load_user_file(self) -> ReloadResult:
        path = self.config.user_database_file
        assert path
        try:
            mtime = os.stat(path).st_mtime
            db, problems = load_user_file(path, hashed=self.config.user_database_hashed_passwords)
        except (OSError, UserDBError) as error:
            log.error("user file %s not reloaded, the old users stay in force: %s", path, error)
            return ReloadResult(False, len(self._user_db or ()), [str(error)])
        messages = [str(problem) for problem in problems]
        for message in messages:
            log.warning("%s", message)
        if len(db) == 0:
            log.error("user file %s has no valid user; the old users stay in force", path)
            return ReloadResult(False, len(self._user_db or ()), messages)
        if self.config.authentication_realm not in db.realms():
            log.warning("no user in %s has the realm %r", path, self.config.authentication_realm)
        self._user_db = db
        self._user_file_mtime = mtime
        log.info("loaded %d users from %s", len(db), path)
        return ReloadResult(True, len(db), messages)

    def reload_users(self, users: Users | None = None) -> ReloadResult:
        """Swap in new users (given, or re-read from the user file). A failed reload keeps the old users."""
        if users is not None:
            self._lookup = self._initial_lookup(users)
            result = ReloadResult(True, len(self._user_db) if self._user_db is not None else 0)
        elif self._users_from_file:
            result = self._load_user_file()
            if result.loaded:
                assert self._user_db is not None
                self._lookup = self._user_db.lookup
        else:
            return ReloadResult(False, 0, ["users were given in code; pass users= to reload them"])
        if self.core is not None:
            self.core.set_user_lookup(self._lookup)
        return result

    # --------------------------------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self.core = TurnServerCore(self.config, users=self._lookup, secret=self._secret)
        self._runtime = Runtime(self.core, loop, self._on_event)
        try:
            await self._open_listeners()
        except BaseException:
            await self.close()
            raise
        self.core.set_server_addresses({address[0] for addresses in self.addresses.values() for address in addresses})
        self._tasks.append(loop.create_task(self._ticker()))
        if self._users_from_file and self.config.user_database_check_interval > 0:
            self._tasks.append(loop.create_task(self._watch_user_file()))

    async def _open_listeners(self) -> None:
        config = self.config
        hosts = [config.turn_address]
        if config.turn_v6_address:
            if _has_ipv6():
                hosts.append(config.turn_v6_address)
            else:
                log.warning("IPv6 is not available on this host: serving IPv4 only")
        port = config.turn_port
        for host in hosts:
            port = self._open_udp(host, port)
            await self._open_stream(host, port, Transport.TCP, None)
        if config.tls_turn_port or self._ssl_context is not None:
            context = self._ssl_context
            if context is None:
                from pyturn.tls import make_server_context

                context = make_server_context(config)
            tls_port = config.tls_turn_port
            for host in hosts:
                tls_port = await self._open_stream(host, tls_port, Transport.TLS, context)
        if config.alt_stun_port:
            self._open_alternate(port)

    def _open_udp(self, host: str, port: int) -> int:
        assert self._runtime is not None
        try:
            sock = bind_udp(host, port, reuse_port=self._reuse_port)
        except OSError as error:
            raise StartupError(f"cannot listen on UDP {host}:{port}: {error.strerror or error}") from error
        listener = UdpListener(self._runtime, sock)
        self._udp.append(listener)
        self.addresses["udp"].append(listener.address)
        return listener.address[1]

    async def _open_stream(self, host: str, port: int, kind: Transport, context: ssl.SSLContext | None) -> int:
        assert self._runtime is not None
        try:
            server = await start_stream_listener(
                self._runtime, host, port, kind, ssl_context=context,
                auth_timeout=float(self.config.tcp_auth_timeout), reuse_port=self._reuse_port,
            )
        except OSError as error:
            raise StartupError(
                f"cannot listen on {kind.value.upper()} {host}:{port}: {error.strerror or error}"
            ) from error
        self._streams.append(server)
        bound = server.sockets[0].getsockname()
        self.addresses[kind.value].append((bound[0], bound[1]))
        return int(bound[1])

    def _open_alternate(self, primary_port: int) -> None:
        """RFC 3489 / RFC 5780: three more UDP sockets, A1:P2, A2:P1, A2:P2 (reTurn.md §4.1)."""
        assert self.core is not None
        config = self.config
        primary_host = config.turn_address
        other_host = config.alt_stun_address
        other_port = config.alt_stun_port
        self._open_udp(primary_host, other_port)
        self._open_udp(other_host, primary_port)
        self._open_udp(other_host, other_port)
        self.core.set_alternate((primary_host, primary_port), (other_host, other_port))

    async def _ticker(self) -> None:
        assert self._runtime is not None and self.core is not None
        runtime, core = self._runtime, self.core
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                runtime.dispatch(core.tick(runtime.now()))
            except Exception:
                log.exception("timer tick failed")

    async def _watch_user_file(self) -> None:
        """UserDatabaseCheckInterval: reload when the file's mtime changed (reTurn.md §3.3)."""
        path = self.config.user_database_file
        assert path
        while True:
            await asyncio.sleep(self.config.user_database_check_interval)
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            if mtime != self._user_file_mtime:
                self.reload_users()

    async def close(self) -> None:
        """Close listeners, free every allocation and stop the timers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.core is not None and self._runtime is not None:
            self._runtime.dispatch(self.core.close_all())
        for listener in self._udp:
            listener.close()
        self._udp.clear()
        for server in self._streams:
            server.close()
        if self._runtime is not None:
            for stream in list(self._runtime.streams.values()):
                stream.close()
            for relay in list(self._runtime.relays):
                relay.close()
        for server in self._streams:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except (TimeoutError, Exception):
                pass
        self._streams.clear()

    # ------------------------------------------------------------------------------------------ queries
    def allocation_count(self) -> int:
        return len(self.core.allocations) if self.core is not None else 0

    def __repr__(self) -> str:
        return f"<pyturn.Server {self.addresses}>"

    def _state(self) -> dict[str, Any]:
        return {"started": self._started, "closed": self._closed}
