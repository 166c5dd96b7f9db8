"""pyturn.Server: the listeners, the core and the timers of one server, as an async context manager.

The library owns no process state: no signal handlers, no logging configuration, no sys.exit. start() and
close() are idempotent. The CLI (pyturn.ops.cli) wraps this with signals, PID file and exit codes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pyturn.config import Config
from pyturn.core.allocation import Transport
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.events import Event
from pyturn.core.redirect import own_addresses
from pyturn.errors import PyturnError, StartupError
from pyturn.files.noncesecret import NonceSecretError, load_nonce_secret
from pyturn.files.usersource import ReloadResult, SharedSecret, Users, UserSource
from pyturn.hooks import EVENTS_KEPT, EventLog, Hooks
from pyturn.net.eventlogs import ExpiredCredentialsLog, RedirectLog
from pyturn.net.listeners import Listeners, listen_key, release_streams
from pyturn.net.localaddrs import interface_addresses, server_addresses
from pyturn.net.runtime import Runtime
from pyturn.net.sockets import bind_stream, has_ipv6, uri_host
from pyturn.net.tls import ReloadableContext, make_server_context
from pyturn.rig import RigControls
from pyturn.wire.message import Address

if TYPE_CHECKING:
    from pyturn.net.metrics import MetricsEndpoint
    from pyturn.net.metrics_workers import SampleAnswerer

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0
TRANSPORTS = ("udp", "tcp", "tls")
# Defined beside what they describe and named here too: `from pyturn.server import ...` keeps working.
__all__ = ["TRANSPORTS", "ReloadResult", "Server", "SharedSecret", "StartupError", "Users", "ephemeral_overlap",
           "loopback_config"]


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


class Server(RigControls):
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
        self._listeners = Listeners([sock for sock in listen_sockets if sock.family != socket.AF_UNIX],
                                    reuse_port=reuse_port, auth_timeout=float(self.config.tcp_auth_timeout))
        unknown = set(transports) - set(TRANSPORTS)
        if unknown:
            raise PyturnError(f"unknown transports {sorted(unknown)}: choose among {TRANSPORTS}")
        self._transports = frozenset(transports)
        self._event_log = EventLog(hooks, keep=keep_events)
        if on_event is not None:
            self._event_log.listeners.append(on_event)
        self._secret = secret
        self._ssl_context = ssl_context
        self._tls: ReloadableContext | None = None
        self._reuse_port = reuse_port
        self._event_log.listeners.append(ExpiredCredentialsLog(time.monotonic))
        self._event_log.listeners.append(RedirectLog(time.monotonic))
        self._user_source = UserSource(self.config, users, shared_secret)
        self.reload_stats = self._user_source.stats
        self._draining = False
        self._nonce_secrets: list[bytes] = []
        if self.config.nonce_secret_file:
            self._nonce_secrets = load_nonce_secret(self.config.nonce_secret_file)  # NonceSecretError: fatal
        self._relayed_octets = 0  # MaxRelayedBitrate: relayed payload bytes at the last tick
        self.metrics: MetricsEndpoint | None = None
        self._metrics_answerers: list[SampleAnswerer] = []
        self.core: TurnServerCore | None = None
        self._runtime: Runtime | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self.addresses: dict[str, list[Address]] = self._listeners.addresses

    # ----------------------------------------------------------------------------------------- users
    def reload_users(self, users: Users | None = None) -> ReloadResult:
        """Swap in new users (given, or re-read from the user file) and re-read AuthSharedSecretFile.

        A failed reload keeps the old users (or secrets). ``loaded`` is false when either failed.
        """
        result = self._user_source.reload(users)
        if self.core is not None:
            self.core.set_user_lookup(self._user_source.lookup)
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
        self._user_source.shared_secrets.unix_offset = time.time() - loop.time()
        self.core = TurnServerCore(self.config, users=self._user_source.lookup, secret=self._secret,
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
        if self._user_source.watched and self.config.user_database_check_interval > 0:
            self._tasks.append(loop.create_task(self._watch_user_file()))

    async def start_metrics(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Serve /metrics, /healthz and /readyz on host:port (0 = ephemeral); returns the bound address.

        start() calls this when MetricsPort is set; a test rig may call it after start() for an ephemeral port.
        """
        from pyturn.net.metrics import open_metrics_endpoint

        if self.metrics is not None:
            return self.metrics.address
        adopted = self._listeners.adopt(socket.SOCK_STREAM, host, port)
        try:
            sock = adopted or bind_stream(host, port)
        except OSError as error:
            raise StartupError(f"cannot listen on metrics TCP {host}:{port}: {error.strerror or error}") from error
        self.metrics = await open_metrics_endpoint(self, sock, self._metrics_channels)
        return self.metrics.address

    async def _start_configured_metrics(self) -> None:
        from pyturn.net.metrics import answer_metrics_requests

        host, port = self.config.metrics_address, self.config.metrics_port
        if self._metrics_channels and listen_key(socket.SOCK_STREAM, host, port) not in self._listeners.adopted:
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
        bound = bool(self._listeners.udp or self._listeners.streams)
        return self._started and not self._closed and bound and self._user_source.loaded and not self.draining

    def user_count(self) -> int:
        """Users in the database in force (0 when users come from a lookup callable)."""
        return self._user_source.user_count()

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
        assert self._runtime is not None and self.core is not None
        runtime, listeners, config = self._runtime, self._listeners, self.config
        hosts = [config.turn_address]
        if config.turn_v6_address:
            if has_ipv6():
                hosts.append(config.turn_v6_address)
            else:
                log.warning("IPv6 is not available on this host: serving IPv4 only")
        wanted = self._transports
        port = await listeners.open_turn_port(runtime, hosts, config.turn_port, wanted)
        if "tls" in wanted and (config.tls_turn_port or self._ssl_context is not None):
            context = self._ssl_context
            if context is None:
                context = make_server_context(config)
            self._tls = ReloadableContext(context)
            tls_port = config.tls_turn_port
            for host in hosts:
                tls_port = await listeners.open_stream(runtime, host, tls_port, Transport.TLS, context)
        if config.alt_stun_port and "udp" in wanted:
            # RFC 3489 / RFC 5780 (docs/compatibility.md "Alternate address").
            primary, other = (config.turn_address, port), (config.alt_stun_address, config.alt_stun_port)
            listeners.open_alternate(runtime, primary, other)
            self.core.set_alternate(primary, other)

    async def _ticker(self) -> None:
        assert self._runtime is not None and self.core is not None
        runtime, core = self._runtime, self.core
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                now = runtime.now()
                # REST usernames carry a Unix time; the core's clock is the loop's. Follow wall-clock steps.
                self._user_source.shared_secrets.unix_offset = time.time() - now
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
        while True:
            await asyncio.sleep(self.config.user_database_check_interval)
            if self._user_source.changed():
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
        self._listeners.close_adopted()
        if self._runtime is not None and self._runtime.impairments is not None:
            self._runtime.impairments.close()
        if self.core is not None and self._runtime is not None:
            self._runtime.dispatch(self.core.close_all())
        self._listeners.stop()
        if self._runtime is not None:
            for stream in list(self._runtime.streams.values()):
                stream.close()
            for relay in list(self._runtime.relays):
                relay.close()
            self._runtime.tcp.close_all()
            self._runtime.close_reserved()
        await self._listeners.wait_closed()
        if self._runtime is not None:
            await release_streams(self._runtime)

    # ------------------------------------------------------------------------------------------ queries
    def allocation_count(self) -> int:
        return len(self.core.allocations) if self.core is not None else 0

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
                uris.append(f"{scheme}:{uri_host(host or bound_host)}:{port}?transport={protocol}")
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
            password = self._user_source.passwords.get(username)
            if password is None:
                raise PyturnError(f"no password known for {username!r}: pass password= explicitly")
        return [{"urls": self.turn_uris(transports, host=host), "username": username, "credential": password}]

    def __repr__(self) -> str:
        return f"<pyturn.Server {self.addresses}>"
