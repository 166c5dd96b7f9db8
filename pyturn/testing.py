"""pytest plugin: a running pyturn server for each test that asks for the ``turn_server`` fixture.

Installed with pyturn (entry point ``pytest11``), so no conftest line is needed::

    def test_call_goes_through_turn(turn_server):
        config = RTCConfiguration(iceServers=[RTCIceServer(**entry) for entry in turn_server.ice_servers()])

    @pytest.mark.turn_server(transports=("tcp", "tls"), lifetime=60)
    def test_over_tls(turn_server):
        context = turn_server.client_ssl_context()  # trusts the generated certificate

    @pytest.mark.turn_server(impairment=pyturn.Impairment(loss=0.1, delay=0.05, seed=1))
    def test_through_a_lossy_path(turn_server):
        ...
        assert turn_server.impairment.dropped > 0  # live statistics (pyturn.core.impairment.ActiveImpairment)

    def test_failover(turn_servers):
        first, second = turn_servers(), turn_servers()  # one more server per call, all with the same user

The server listens on 127.0.0.1 with ephemeral ports, relays to loopback peers and knows one generated user. It
runs on its own event loop in a background thread (pyturn.threaded), which serves sync and async tests alike:
a sync test can block on a socket without freezing the server, and an async test's event loop (whatever
pytest-asyncio's mode and loop scope) never has to host it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import secrets
import ssl
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pyturn.errors import PyturnError

if TYPE_CHECKING:
    from pyturn.core.events import Event
    from pyturn.core.impairment import ActiveImpairment, Impairment
    from pyturn.hooks import AllocationEnded, RelayedBytes
    from pyturn.threaded import ThreadedServer
    from pyturn.wire.message import Address, Method

# The plugin loads in every pytest run of every project that installs pyturn: the server modules are imported
# only when a test asks for the fixture.

__all__ = [
    "DEFAULT_TRANSPORTS",
    "TurnServerFactory",
    "TurnServerFixture",
    "self_signed_certificate",
    "server_ssl_context",
    "turn_server",
    "turn_servers",
]

MARKER = "turn_server"
DEFAULT_TRANSPORTS = ("udp", "tcp")
CERTIFICATE_HOSTS = ("127.0.0.1", "::1", "localhost")
_CERTIFICATE_VALIDITY = datetime.timedelta(days=1)

EventType = TypeVar("EventType")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(transports=('udp', 'tcp'), lifetime=None, impairment=None, impairment_direction='both', "
        "**config_fields): configure the turn_server fixture: the listeners to open (any of 'udp', 'tcp', "
        "'tls'), the lifetime in seconds every allocation gets, a pyturn.Impairment of the relayed media from the "
        "start, and any other pyturn Config field (realm via authentication_realm)",
    )


def self_signed_certificate(directory: Path, hosts: Collection[str] = CERTIFICATE_HOSTS) -> tuple[Path, Path]:
    """Write a self-signed EC P-256 certificate for ``hosts`` (IPs and DNS names) and its key; return both paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyturn test server")])
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CERTIFICATE_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / "turn-server.pem"
    key_path = directory / "turn-server.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certificate_path, key_path


def server_ssl_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the RFC 7443 ALPN names, for ``Server(ssl_context=...)``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    from pyturn.net.tls import ALPN_PROTOCOLS

    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


@dataclass
class TurnServerFixture:
    """What the ``turn_server`` fixture gives a test: the running server and a user it accepts."""

    server: ThreadedServer
    username: str
    password: str
    realm: str
    transports: tuple[str, ...]
    certificate: Path | None  # the PEM a TLS client must trust; None without the "tls" transport
    impairment: ActiveImpairment | None = None  # the marker's impairment in force (live statistics)

    @property
    def addresses(self) -> dict[str, list[Address]]:
        return self.server.addresses

    def turn_uris(self, transports: Collection[str] | None = None) -> list[str]:
        """RFC 7065 URIs of the open listeners (all of them unless ``transports`` picks some)."""
        return self.server.turn_uris(self.transports if transports is None else transports)

    def ice_servers(self, transports: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The RTCIceServer entries for the generated user; aiortc uses the first URL, so order matters."""
        chosen = self.transports if transports is None else transports
        return self.server.ice_servers(self.username, self.password, transports=chosen)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's generated certificate (needs the "tls" transport)."""
        if self.certificate is None:
            raise PyturnError('the turn_server fixture has no TLS listener: mark the test with transports=("tls",)')
        return ssl.create_default_context(cafile=str(self.certificate))

    @property
    def events(self) -> list[Event]:
        return self.server.events

    @property
    def ended_allocations(self) -> list[AllocationEnded]:
        return self.server.ended_allocations

    def relayed_bytes(self) -> RelayedBytes:
        return self.server.relayed_bytes()

    def allocation_count(self) -> int:
        return self.server.allocation_count()

    def wait_for_event(
        self, kind: type[EventType], *, where: Callable[[EventType], bool] | None = None, timeout: float = 5.0
    ) -> EventType:
        return self.server.wait_for_event(kind, where=where, timeout=timeout)

    # test-rig controls (pyturn.Server's, docs/testing.md)
    def impair(self, impairment: Impairment | None, *, direction: str = "both",
               username: str | None = None) -> ActiveImpairment | None:
        return self.server.impair(impairment, direction=direction, username=username)

    def impaired(self, impairment: Impairment, *, direction: str = "both",
                 username: str | None = None) -> contextlib.AbstractContextManager[ActiveImpairment]:
        return self.server.impaired(impairment, direction=direction, username=username)

    def pause_relay(self) -> None:
        self.server.pause_relay()

    def resume_relay(self) -> None:
        self.server.resume_relay()

    def expire_allocations(self, username: str | None = None) -> int:
        return self.server.expire_allocations(username)

    def fail_next(self, method: Method | int | str, code: int, count: int = 1) -> None:
        self.server.fail_next(method, code, count)

    def expire_nonces(self) -> None:
        self.server.expire_nonces()

    def close_connections(self, username: str | None = None) -> int:
        return self.server.close_connections(username)


@contextlib.contextmanager
def _serving(
    options: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, username: str, password: str, where: str
) -> Iterator[TurnServerFixture]:
    """One server in its thread for the lifetime of the block, configured as the marker describes."""
    from pyturn.server import TRANSPORTS, loopback_config
    from pyturn.threaded import run_in_thread

    options = dict(options)
    transports = tuple(options.pop("transports", DEFAULT_TRANSPORTS))
    unknown = set(transports) - set(TRANSPORTS)
    if not transports or unknown:
        raise pytest.UsageError(f"{where}: transports must be some of {TRANSPORTS}, got {transports}")
    impairment = options.pop("impairment", None)
    direction = options.pop("impairment_direction", "both")
    if direction not in ("both", "to_peer", "to_client"):
        raise pytest.UsageError(f"{where}: impairment_direction is 'both', 'to_peer' or 'to_client', got {direction!r}")
    lifetime = options.pop("lifetime", None)
    # default = floor and maximum = cap (docs/compatibility.md "Lifetimes"): every allocation gets exactly this
    if lifetime is not None:
        options.setdefault("default_allocation_lifetime", lifetime)
        options.setdefault("max_allocation_lifetime", lifetime)
    try:
        config = loopback_config(**options)
    except TypeError as error:
        raise pytest.UsageError(f"{where}: {error}") from error
    certificate: Path | None = None
    server_options: dict[str, Any] = {}
    if "tls" in transports:
        certificate, key = self_signed_certificate(tmp_path_factory.mktemp("pyturn-tls"))
        server_options["ssl_context"] = server_ssl_context(certificate, key)
    with run_in_thread(config, users={username: password}, transports=transports, **server_options) as server:
        active = server.impair(impairment, direction=direction) if impairment is not None else None
        yield TurnServerFixture(
            server=server,
            username=username,
            password=password,
            realm=config.authentication_realm,
            transports=transports,
            certificate=certificate,
            impairment=active,
        )


def _new_user() -> tuple[str, str]:
    return f"user-{secrets.token_hex(4)}", secrets.token_urlsafe(16)


@pytest.fixture
def turn_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TurnServerFixture]:
    """A pyturn server on 127.0.0.1 (ephemeral ports, loopback peers allowed) with one generated user.

    ``@pytest.mark.turn_server(transports=..., lifetime=..., impairment=..., **config_fields)`` changes it; TLS
    gets a freshly generated self-signed certificate for 127.0.0.1, ::1 and localhost.
    """
    marker = request.node.get_closest_marker(MARKER)
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments only")
    with _serving(options, tmp_path_factory, *_new_user(), f"@pytest.mark.{MARKER}") as fixture:
        yield fixture


class TurnServerFactory:
    """What the ``turn_servers`` fixture gives a test: call it to start one more server.

    Every server it starts knows the same generated user (``username``, ``password``), as a cluster sharing one
    user database would, so one client configuration works against any of them. Calls take the marker's
    keyword arguments (transports, lifetime, impairment, Config fields); all servers stop after the test.
    """

    def __init__(self, stack: contextlib.ExitStack, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._stack = stack
        self._tmp_path_factory = tmp_path_factory
        self.username, self.password = _new_user()
        self.servers: list[TurnServerFixture] = []

    def __call__(self, **options: Any) -> TurnServerFixture:
        fixture = self._stack.enter_context(
            _serving(options, self._tmp_path_factory, self.username, self.password, "turn_servers(...)")
        )
        self.servers.append(fixture)
        return fixture


@pytest.fixture
def turn_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnServerFactory]:
    """A factory of pyturn servers for tests that need several (failover, ICE restart onto another server)."""
    with contextlib.ExitStack() as stack:
        yield TurnServerFactory(stack, tmp_path_factory)
