"""pyturn.Server: the listeners, the core and the timers of one server, as an async context manager.

The library owns no process state: no signal handlers, no logging configuration, no sys.exit. start() and
close() are idempotent. The CLI (pyturn.ops.cli) wraps this with signals, PID file and exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pyturn.config import Config
from pyturn.core.allocation import Transport
from pyturn.core.auth import EXPIRED, UserLookup
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.events import AllocationDeleted, AllocationRedirected, AuthFailed, Event
from pyturn.core.impairment import ActiveImpairment, Impairment
from pyturn.core.redirect import own_addresses
from pyturn.core.sharedsecret import SecretFileError, SharedSecrets, UsersAndSecrets
from pyturn.core.stats import ReloadStats
from pyturn.core.userdb import UserDB
from pyturn.errors import PyturnError, UserDBError
from pyturn.files.noncesecret import NonceSecretError, load_nonce_secret
from pyturn.files.secretfile import load_secret_file
from pyturn.files.userfile import load_user_file
from pyturn.hooks import EVENTS_KEPT, AllocationEnded, EventLog, Hooks, RelayedBytes
from pyturn.net.localaddrs import interface_addresses, server_addresses
from pyturn.net.runtime import Runtime
from pyturn.net.shaping import RelayImpairments
from pyturn.net.sockets import bind_stream, bind_udp, has_ipv6
from pyturn.net.stream import make_stream_factory, start_stream_listener
from pyturn.net.tls import HANDSHAKE_TIMEOUT, ReloadableContext, make_server_context
from pyturn.net.udp import UdpListener
from pyturn.wire.message import Address, Method

if TYPE_CHECKING:
    from pyturn.net.metrics import MetricsEndpoint
    from pyturn.net.metrics_workers import SampleAnswerer

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0
EPHEMERAL_PORT_ATTEMPTS = 20  # TurnPort 0: ports tried until one is free for both UDP and TCP
STREAM_CLOSE_GRACE = 0.5  # seconds close() lets TCP/TLS connections shut down cleanly before aborting them
Users = Mapping[str, str] | UserDB | UserLookup
SharedSecret = str | bytes | Sequence[str | bytes]
EXPIRED_LOG_INTERVAL = 10.0  # seconds between "expired credentials" lines beyond the first (log floods)
TRANSPORTS = ("udp", "tcp", "tls")
EventType = TypeVar("EventType")


class StartupError(PyturnError):
    """A listener could not be opened (port in use, address not available, TLS files unusable)."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    loaded: bool
    users: int
    problems: list[str] = field(default_factory=list)
    secrets: int = 0  # shared secrets in force after the reload


class _ExpiredCredentialsLog:
    """Logs refusals of expired shared-secret credentials: the first at once, then one line per interval with
    the count, so a client retrying stale credentials cannot flood the log. Never logs a secret or a password."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, AuthFailed) or event.reason != EXPIRED:
            return
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < EXPIRED_LOG_INTERVAL:
            return
        client = event.five_tuple.client
        log.warning("expired credentials: username %r from %s:%d refused (%d since the last such line)",
                    event.username, client[0], client[1], self._unlogged)
        self._unlogged = 0
        self._logged_at = now


class _RedirectLog:
    """Logs Allocates sent elsewhere (300) or refused for capacity (508): the first at once, then one line per
    interval with the counts, so a full or draining instance under load does not flood the log."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._logged_at: float | None = None
        self._redirected = 0
        self._refused = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, AllocationRedirected):
            return
        if event.alternate is None:
            self._refused += 1
        else:
            self._redirected += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < EXPIRED_LOG_INTERVAL:
            return
        client = event.five_tuple.client
        if event.alternate is None:
            outcome = "refused with 508"
        else:
            outcome = f"redirected to {_uri_host(event.alternate[0])}:{event.alternate[1]}"
        log.info("allocation for %s:%d/%s %s (%s); since the last such line: %d redirected, %d refused",
                 client[0], client[1], event.five_tuple.transport.value, outcome, event.reason,
                 self._redirected, self._refused)
        self._redirected = self._refused = 0
        self._logged_at = now


EPHEMERAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_overlap(low: int, high: int, source: Path = EPHEMERAL_PORT_RANGE) -> str | None:
    """A warning when the relay range low..high overlaps the kernel's ephemeral (local) port range.

    Any process's unbound or connect()ed socket may then take a relay port. pyturn skips such ports (a bind that
    fails moves on to the next one), but a relay range outside the ephemeral range is never contended."""
    try:
        first, last = (int(field) for field in source.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return None  # not Linux, or unreadable: nothing to compare with
    if low > last or first > high:
        return None
    return (f"the relay port range AllocationPortRangeMin..Max = {low}-{high} overlaps the kernel's ephemeral port "
            f"range {first}-{last} ({source}): other processes' sockets can hold relay ports, which are then "
            f"skipped; a relay range outside {first}-{last} avoids the contention")


def loopback_config(**overrides: Any) -> Config:
    """A Config for embedding: 127.0.0.1 only, ephemeral ports, loopback peers allowed, no file watching.

    This is what ``Server()`` uses when given no config. Loopback peers are normally refused (an open relay into
    the host); a test rig relays between clients on the same machine, so 127.0.0.0/8 and ::1 are allowed. The
    401 rate limit is off because every test client comes from 127.0.0.1. Any Config field can be overridden.
    """
    values: dict[str, Any] = {
        "turn_address": "127.0.0.1",
        "turn_v6_address": "",
        "turn_port": 0,
        "tls_turn_port": 0,
        "allowed_peer_addresses": (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        "allocation_port_range_min": 49152,
        "allocation_port_range_max": 65535,
        "user_database_check_interval": 0,
        "unauthenticated_rate_limit": 0,
    }
    values.update(overrides)
    return Config(**values)


def _uri_host(host: str) -> str:
    """RFC 7065 §3.1 host: IPv6 literals in brackets; a wildcard bind is reached through loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _release_streams(runtime: Runtime) -> None:
    """Wait briefly for closing TCP/TLS connections (a TLS close_notify needs the client's answer), then abort
    the rest, so that close() returns with every socket released."""
    deadline = runtime.loop.time() + STREAM_CLOSE_GRACE
    while runtime.streams and runtime.loop.time() < deadline:
        await asyncio.sleep(0.01)
    for stream in list(runtime.streams.values()):
        if stream.transport is not None:
            stream.transport.abort()
    if runtime.streams:
        await asyncio.sleep(0)  # abort() runs connection_lost, which releases the socket, on the next iteration


def _listen_key(kind: int, host: str, port: int) -> tuple[int, str, int]:
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return int(kind), host, int(port)


class Server:
    """A running pyturn server.

    ``config`` is a Config (built in code or by load_config) and is used exactly as given; without one the
    server uses ``loopback_config()`` (127.0.0.1, ephemeral ports, loopback peers allowed). ``users`` is
    optional: a mapping {username: password} (in the config's realm), a UserDB, or a lookup callable
    (username, realm) -> HA1 key or None. Without it the config's UserDatabaseFile is read.

    ``hooks`` (pyturn.hooks.Hooks) and ``on_event`` receive the core's events (allocation created/refreshed/
    deleted, permission, channel, auth failure) on the server's loop; ``events``, ``ended_allocations`` and
    ``relayed_bytes()`` keep them for later assertions. ``transports`` limits the listeners to some of "udp",
    "tcp", "tls" (TLS also needs TlsTurnPort or ``ssl_context``).

    ``relay_ports`` is the whole relay port range when ``config`` holds only a slice of it (pyturn.ops.workers): on
    the server's own addresses, peers are allowed on those ports only (docs/security.md "Peer policy").

    ``listen_sockets`` are already bound listening sockets (UDP, or TCP in listen state) that the server uses
    instead of binding the same type, address and port itself (pyturn.ops.workers binds them in the master, so a
    restarted worker takes over its predecessor's place in the SO_REUSEPORT group).

    ``shared_secret`` (one secret or several) accepts TURN REST credentials (pyturn.rest_credentials), in addition
    to the config's AuthSharedSecret and AuthSharedSecretFile; a username known from ``users`` or the user file
    uses that password.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        users: Users | None = None,
        on_event: Callable[[Event], None] | None = None,
        hooks: Hooks | None = None,
        transports: Collection[str] = TRANSPORTS,
        secret: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        listen_sockets: Collection[socket.socket] = (),
        keep_events: int = EVENTS_KEPT,
        relay_ports: tuple[int, int] | None = None,
        shared_secret: SharedSecret | None = None,
    ) -> None:
        self.config = config if config is not None else loopback_config()
        # The whole relay range, where the server's own addresses are valid peers (other allocations' relays);
        # a worker's config holds only its slice of it.
        self._relay_ports = relay_ports
        # AF_UNIX socketpairs among them link the workers' metrics (pyturn.net.metrics_workers).
        self._metrics_channels = [sock for sock in listen_sockets if sock.family == socket.AF_UNIX]
        self._listen_sockets = {
            _listen_key(sock.type, *sock.getsockname()[:2]): sock
            for sock in listen_sockets if sock.family != socket.AF_UNIX
        }
        unknown = set(transports) - set(TRANSPORTS)
        if unknown:
            raise PyturnError(f"unknown transports {sorted(unknown)}: choose among {TRANSPORTS}")
        self._transports = frozenset(transports)
        self._event_log = EventLog(hooks, keep=keep_events)
        if on_event is not None:
            self._event_log.listeners.append(on_event)
        self._passwords: dict[str, str] = {}
        self._secret = secret
        self._ssl_context = ssl_context
        self._tls: ReloadableContext | None = None
        self._reuse_port = reuse_port
        self._users_from_file = users is None
        self._user_db: UserDB | None = None
        self._user_file_mtime: float | None = None  # set by the first load, before the watcher compares with it
        self._event_log.listeners.append(_ExpiredCredentialsLog(time.monotonic))
        self._event_log.listeners.append(_RedirectLog(time.monotonic))
        given: list[str | bytes] = (
            [] if shared_secret is None
            else [shared_secret] if isinstance(shared_secret, str | bytes) else list(shared_secret)
        )
        self._inline_secrets: list[str | bytes] = [*self.config.auth_shared_secret, *given]
        self._file_secrets: list[bytes] = []
        self._secret_file_mtime: float | None = None
        self._shared_secrets = SharedSecrets((), realm=self.config.authentication_realm,
                                             separator=self.config.auth_shared_secret_separator,
                                             unix_offset=time.time() - time.monotonic())
        if self.config.auth_shared_secret_file:
            result = self._load_secret_file()
            if result.problems:
                raise SecretFileError("; ".join(result.problems))
        self._shared_secrets = self._shared_secrets.with_secrets([*self._inline_secrets, *self._file_secrets])
        self._users: UserLookup | None = self._initial_lookup(users)
        self.reload_stats = ReloadStats()
        self._lookup = self._combined_lookup()
        self.reload_stats.last_success = time.time()
        self._draining = False
        self._nonce_secrets: list[bytes] = []
        if self.config.nonce_secret_file:
            self._nonce_secrets = load_nonce_secret(self.config.nonce_secret_file)  # NonceSecretError: fatal
        self._relayed_octets = 0  # MaxRelayedBitrate: relayed payload bytes at the last tick
        self.metrics: MetricsEndpoint | None = None
        self._metrics_answerers: list[SampleAnswerer] = []
        self.core: TurnServerCore | None = None
        self._runtime: Runtime | None = None
        self._udp: list[UdpListener] = []
        self._streams: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self.addresses: dict[str, list[Address]] = {"udp": [], "tcp": [], "tls": []}

    # ----------------------------------------------------------------------------------------- users
    def _initial_lookup(self, users: Users | None) -> UserLookup | None:
        self._passwords = {}  # only users given as a mapping have passwords ice_servers() can hand out
        if users is None:
            if not self.config.user_database_file:
                if self._shared_secrets:
                    return None  # shared-secret credentials only
                raise PyturnError("no users: pass users=... or shared_secret=..., or set UserDatabaseFile")
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
            self._passwords = dict(users)
            return self._user_db.lookup
        return users

    def _combined_lookup(self) -> UserLookup:
        if not self._shared_secrets:
            assert self._users is not None
            return self._users
        return UsersAndSecrets(self._users, self._shared_secrets)

    def _load_secret_file(self) -> ReloadResult:
        """AuthSharedSecretFile: on failure the secrets in force stay (and the error never shows a secret)."""
        path = self.config.auth_shared_secret_file
        try:
            mtime = os.stat(path).st_mtime
            secrets = load_secret_file(path)
        except (OSError, SecretFileError) as error:
            log.error("shared-secret file %s not reloaded, the old secrets stay in force: %s", path,
                      error.strerror if isinstance(error, OSError) else error)
            return ReloadResult(False, 0, [str(error)], secrets=len(self._shared_secrets))
        self._file_secrets = secrets
        self._secret_file_mtime = mtime
        self._shared_secrets = self._shared_secrets.with_secrets([*self._inline_secrets, *secrets])
        log.info("loaded %d shared secrets from %s", len(secrets), path)
        return ReloadResult(True, 0, secrets=len(self._shared_secrets))

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
        """Swap in new users (given, or re-read from the user file) and re-read AuthSharedSecretFile.

        A failed reload keeps the old users (or secrets). ``loaded`` is false when either failed.
        """
        secret_result = self._load_secret_file() if self.config.auth_shared_secret_file else None
        if users is not None:
            self._users = self._initial_lookup(users)
            result = ReloadResult(True, len(self._user_db) if self._user_db is not None else 0)
        elif self._users_from_file and self.config.user_database_file:
            result = self._load_user_file()
            if result.loaded:
                assert self._user_db is not None
                self._users = self._user_db.lookup
        elif secret_result is not None:
            result = ReloadResult(True, len(self._user_db) if self._user_db is not None else 0)
        else:
            return ReloadResult(False, 0, ["users were given in code; pass users= to reload them"],
                                secrets=len(self._shared_secrets))
        if secret_result is not None:
            result = ReloadResult(result.loaded and secret_result.loaded, result.users,
                                  [*result.problems, *secret_result.problems])
        result = dataclasses.replace(result, secrets=len(self._shared_secrets))
        self._lookup = self._combined_lookup()
        if result.loaded:
            self.reload_stats.successes += 1
            self.reload_stats.last_success = time.time()
        else:
            self.reload_stats.failures += 1
        if self.core is not None:
            self.core.set_user_lookup(self._lookup)
        return result

    def reload_tls(self, ssl_context: ssl.SSLContext | None = None) -> bool:
        """New TLS connections use `ssl_context`, or the certificate and key re-read from the config's files
        (SIGHUP). Established connections keep theirs. A failed reload logs an error and keeps the old one."""
        if self._tls is None:
            return False
        if ssl_context is not None:
            return self._tls.swap(ssl_context)
        if self._ssl_context is not None:
            log.error("TLS not reloaded: the SSL context was given in code; pass ssl_context= to replace it")
            return False
        return self._tls.reload(self.config)

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
        self._shared_secrets.unix_offset = time.time() - loop.time()
        self.core = TurnServerCore(self.config, users=self._lookup, secret=self._secret,
                                   nonce_secrets=self._nonce_secrets)
        self.core.draining = self._draining
        self._runtime = Runtime(self.core, loop, self._event_log)
        self._runtime.share_reserved_ports = self._reuse_port  # workers: tokens are redeemed across processes
        try:
            await self._open_listeners()
        except BaseException:
            await self.close()
            raise
        self.refresh_addresses()
        if self.config.metrics_port:
            try:
                await self._start_configured_metrics()
            except BaseException:
                await self.close()
                raise
        self._tasks.append(loop.create_task(self._ticker()))
        watches_users = self._users_from_file and bool(self.config.user_database_file)
        if (watches_users or self.config.auth_shared_secret_file) and self.config.user_database_check_interval > 0:
            self._tasks.append(loop.create_task(self._watch_user_file()))

    async def start_metrics(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Serve /metrics, /healthz and /readyz on host:port (0 = ephemeral); returns the bound address.

        start() calls this when MetricsPort is set; a test rig may call it after start() for an ephemeral port.
        """
        from pyturn.net.metrics import open_metrics_endpoint

        if self.metrics is not None:
            return self.metrics.address
        adopted = self._listen_sockets.pop(_listen_key(socket.SOCK_STREAM, host, port), None)
        try:
            sock = adopted or bind_stream(host, port)
        except OSError as error:
            raise StartupError(f"cannot listen on metrics TCP {host}:{port}: {error.strerror or error}") from error
        self.metrics = await open_metrics_endpoint(self, sock, self._metrics_channels)
        return self.metrics.address

    async def _start_configured_metrics(self) -> None:
        from pyturn.net.metrics import answer_metrics_requests

        host, port = self.config.metrics_address, self.config.metrics_port
        if self._metrics_channels and _listen_key(socket.SOCK_STREAM, host, port) not in self._listen_sockets:
            # Workers = N: another worker serves the endpoint and asks this one for its samples.
            self._metrics_answerers = answer_metrics_requests(self, self._metrics_channels)
            return
        await self.start_metrics(host, port)

    @property
    def runtime(self) -> Runtime | None:
        """The adapters' shared state (sockets, relayed counters); None before start()."""
        return self._runtime

    @property
    def draining(self) -> bool:
        """True while the server drains (docs/scaling.md): new Allocates are redirected or refused with 508,
        existing allocations keep relaying and refreshing, /readyz answers 503."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        if value and not self._draining:
            log.warning("draining: new allocations go to AlternateServers (or get 508), %d allocations stay",
                        self.allocation_count())
        self._draining = value
        if self.core is not None:
            self.core.draining = value

    def drain(self) -> None:
        """Start draining (SIGUSR1, `pyturn drain`); wait_drained() tells when the last allocation has ended."""
        self.draining = True

    async def wait_drained(self, timeout: float, poll: float = 0.5) -> bool:
        """Wait until no allocation is left (True) or `timeout` seconds have passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.allocation_count():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(poll, remaining))
        return True

    def reload_nonce_secret(self) -> bool:
        """Re-read NonceSecretFile (SIGHUP); a file that cannot be used keeps the secret in force."""
        path = self.config.nonce_secret_file
        if not path:
            return False
        try:
            secrets = load_nonce_secret(path)
        except NonceSecretError as error:
            log.error("nonce secret not reloaded, the secret in force stays: %s", error)
            return False
        self._nonce_secrets = secrets
        if self.core is not None:
            self.core.set_nonce_secrets(secrets)
        log.info("loaded %d nonce secrets from %s", len(secrets), path)
        return True

    @property
    def ready(self) -> bool:
        """Listeners bound, users loaded, not draining (what /readyz answers)."""
        users_loaded = self._user_db is None or len(self._user_db) > 0  # a lookup callable counts as loaded
        bound = bool(self._udp or self._streams)
        return self._started and not self._closed and bound and users_loaded and not self.draining

    def user_count(self) -> int:
        """Users in the database in force (0 when users come from a lookup callable)."""
        return len(self._user_db) if self._user_db is not None else 0

    def refresh_addresses(self) -> None:
        """Re-read the host's interface addresses for the peer policy (start-up and SIGHUP: an interface may have
        gained an address since). Relay addresses learned from bound relays are kept."""
        if self.core is None:
            return
        config = self.config
        listening = [host for addresses in self.addresses.values() for host, _port in addresses]
        own = server_addresses(config, [config.turn_address, config.turn_v6_address, *listening],
                               interface_addresses())
        ports = {port for addresses in self.addresses.values() for _host, port in addresses}
        ports.update(port for port in (config.turn_port, config.tls_turn_port, config.alt_stun_port) if port)
        self.core.set_server_addresses(own.relay, own.host, relay_ports=self._relay_ports, listener_ports=ports)
        # Where clients reach this instance: never an ALTERNATE-SERVER target (pyturn.core.redirect).
        bound = [address for addresses in self.addresses.values() for address in addresses]
        external = [ip for ip in (config.external_address, config.external_v6_address) if ip]
        reachable = own_addresses(bound, [*own.relay, *own.host])
        reachable.update((ip, port) for ip in external for port in ports)
        self.core.set_own_addresses(reachable)

    async def _open_listeners(self) -> None:
        config = self.config
        hosts = [config.turn_address]
        if config.turn_v6_address:
            if has_ipv6():
                hosts.append(config.turn_v6_address)
            else:
                log.warning("IPv6 is not available on this host: serving IPv4 only")
        wanted = self._transports
        port = await self._open_turn_listeners(hosts, config.turn_port)
        if "tls" in wanted and (config.tls_turn_port or self._ssl_context is not None):
            context = self._ssl_context
            if context is None:
                context = make_server_context(config)
            self._tls = ReloadableContext(context)
            tls_port = config.tls_turn_port
            for host in hosts:
                tls_port = await self._open_stream(host, tls_port, Transport.TLS, context)
        if config.alt_stun_port and "udp" in wanted:
            self._open_alternate(port)

    async def _open_turn_listeners(self, hosts: list[str], port: int) -> int:
        """UDP and TCP on one port for every host; returns the port. With port 0 the kernel picks the UDP port,
        which another socket may already hold for TCP: then what was opened here is closed and another is tried."""
        attempt = 1
        while True:
            chosen = port
            try:
                for host in hosts:
                    if "udp" in self._transports:
                        chosen = self._open_udp(host, chosen)
                    if "tcp" in self._transports:
                        chosen = await self._open_stream(host, chosen, Transport.TCP, None)
                return chosen
            except StartupError:
                if port or attempt == EPHEMERAL_PORT_ATTEMPTS:
                    raise
            attempt += 1
            for listener in self._udp:
                listener.close()
            self._udp.clear()
            for server in self._streams:
                server.close()
                await server.wait_closed()
            self._streams.clear()
            self.addresses["udp"].clear()
            self.addresses["tcp"].clear()

    def _open_udp(self, host: str, port: int) -> int:
        assert self._runtime is not None
        try:
            sock = self._listen_sockets.pop(_listen_key(socket.SOCK_DGRAM, host, port), None) or bind_udp(
                host, port, reuse_port=self._reuse_port
            )
        except OSError as error:
            raise StartupError(f"cannot listen on UDP {host}:{port}: {error.strerror or error}") from error
        listener = UdpListener(self._runtime, sock)
        self._udp.append(listener)
        self.addresses["udp"].append(listener.address)
        return listener.address[1]

    async def _open_stream(self, host: str, port: int, kind: Transport, context: ssl.SSLContext | None) -> int:
        assert self._runtime is not None
        adopted = self._listen_sockets.pop(_listen_key(socket.SOCK_STREAM, host, port), None)
        try:
            if adopted is not None:
                server = await self._runtime.loop.create_server(
                    make_stream_factory(self._runtime, kind, float(self.config.tcp_auth_timeout)), sock=adopted,
                    ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None,
                )
            else:
                server = await start_stream_listener(
                    self._runtime, host, port, kind, ssl_context=context,
                    auth_timeout=float(self.config.tcp_auth_timeout), reuse_port=self._reuse_port,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
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
        """RFC 3489 / RFC 5780: three more UDP sockets, A1:P2, A2:P1, A2:P2 (docs/compatibility.md "Alternate
        address")."""
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
                now = runtime.now()
                # REST usernames carry a Unix time; the core's clock is the loop's. Follow wall-clock steps.
                self._shared_secrets.unix_offset = time.time() - now
                self._measure_bitrate(TICK_INTERVAL)
                runtime.dispatch(core.tick(now))
            except Exception:
                log.exception("timer tick failed")

    def _measure_bitrate(self, interval: float) -> None:
        """MaxRelayedBitrate: the relayed payload rate over the last tick decides whether Allocates go elsewhere."""
        limit = self.config.max_relayed_bitrate
        if not limit or self._runtime is None or self.core is None:
            return
        runtime = self._runtime
        octets = sum(counter.octets for counter in runtime.relayed_to_peer.values())
        octets += sum(counter.octets for counter in runtime.relayed_to_client.values())
        rate = (octets - self._relayed_octets) * 8 / interval
        self._relayed_octets = octets
        over = rate > limit
        if over != self.core.over_bitrate:
            log.warning("relayed %.0f bit/s: new allocations %s (MaxRelayedBitrate %d)", rate,
                        "redirected" if over else "accepted again", limit)
        self.core.over_bitrate = over

    async def _watch_user_file(self) -> None:
        """UserDatabaseCheckInterval: reload when the user file's or the secret file's mtime changed."""
        watched: list[tuple[str, Callable[[], float | None]]] = []
        if self._users_from_file and self.config.user_database_file:
            watched.append((self.config.user_database_file, lambda: self._user_file_mtime))
        if self.config.auth_shared_secret_file:
            watched.append((self.config.auth_shared_secret_file, lambda: self._secret_file_mtime))
        while True:
            await asyncio.sleep(self.config.user_database_check_interval)
            changed = False
            for path, loaded_mtime in watched:
                try:
                    changed = changed or os.stat(path).st_mtime != loaded_mtime()
                except OSError:
                    continue
            if changed:
                self.reload_users()

    async def close(self) -> None:
        """Close listeners, free every allocation and stop the timers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.metrics is not None:
            await self.metrics.close()
        for answerer in self._metrics_answerers:
            answerer.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        for sock in self._listen_sockets.values():
            sock.close()
        self._listen_sockets.clear()
        if self._runtime is not None and self._runtime.impairments is not None:
            self._runtime.impairments.close()
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
            self._runtime.tcp.close_all()
            self._runtime.close_reserved()
        for server in self._streams:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except (TimeoutError, Exception):
                pass
        self._streams.clear()
        if self._runtime is not None:
            await _release_streams(self._runtime)

    # ----------------------------------------------------------------- test-rig controls (docs/testing.md)
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

    # ------------------------------------------------------------------------------------------ queries
    def allocation_count(self) -> int:
        return len(self.core.allocations) if self.core is not None else 0

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

    def turn_uris(self, transports: Collection[str] = TRANSPORTS, *, host: str | None = None) -> list[str]:
        """RFC 7065 URIs of the open listeners, UDP first: ``turn:127.0.0.1:PORT?transport=udp``,
        ``turn:...?transport=tcp`` and ``turns:...?transport=tcp`` for TLS; IPv6 hosts in brackets.

        ``transports`` picks some of "udp", "tcp", "tls"; ``host`` replaces the bound address in every URI
        (for instance a name the TLS certificate carries).
        """
        uris = []
        for kind in TRANSPORTS:
            if kind not in transports:
                continue
            scheme, protocol = ("turns", "tcp") if kind == "tls" else ("turn", kind)
            for bound_host, port in self.addresses[kind]:
                uris.append(f"{scheme}:{_uri_host(host or bound_host)}:{port}?transport={protocol}")
        return uris

    def ice_servers(
        self,
        username: str,
        password: str | None = None,
        *,
        transports: Collection[str] = TRANSPORTS,
        host: str | None = None,
    ) -> list[dict[str, Any]]:
        """``[{"urls": [...], "username": ..., "credential": ...}]``: the iceServers entry of an
        RTCConfiguration (``RTCIceServer(**entry)`` in aiortc).

        Without ``password`` it is looked up among the users given as a {username: password} mapping. aiortc
        uses only the first TURN URL it can, so pass ``transports=("tcp",)`` to make it relay over TCP.
        """
        if password is None:
            password = self._passwords.get(username)
            if password is None:
                raise PyturnError(f"no password known for {username!r}: pass password= explicitly")
        return [{"urls": self.turn_uris(transports, host=host), "username": username, "credential": password}]

    def __repr__(self) -> str:
        return f"<pyturn.Server {self.addresses}>"
