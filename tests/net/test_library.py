"""pyturn as a library: Server built in code, hooks and recorded events, TURN URIs, and the thread runner."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import warnings
from pathlib import Path

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint

import pyturn
from pyturn import (
    AllocationCreated,
    AllocationDeleted,
    AllocationEnded,
    AuthFailed,
    ChannelBound,
    Hooks,
    PermissionInstalled,
    RelayedBytes,
    UserDB,
)
from pyturn.hooks import EventLog
from pyturn.net.sockets import has_ipv6
from pyturn.server import StartupError, loopback_config
from pyturn.testing import self_signed_certificate, server_ssl_context
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

USERNAME = "alice"
PASSWORD = "wonderland"
WAIT = 5.0


class Echo(asyncio.DatagramProtocol):
    """A UDP peer that sends every datagram back."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()  # aioice calls connection_lost once its allocation is deleted

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


async def relay_echo(
    server: tuple[str, int], payloads: list[bytes], *, username: str = USERNAME, password: str = PASSWORD,
    transport: str = "udp",
) -> list[bytes]:
    """Allocate on `server` with aioice, send `payloads` to a loopback echo peer and collect the echoes."""
    loop = asyncio.get_running_loop()
    peer_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    peer = peer_transport.get_extra_info("sockname")
    turn, inbox = await create_turn_endpoint(Inbox, server, username, password, transport=transport)
    try:
        echoes = []
        for payload in payloads:
            turn.sendto(payload, peer)
            echoes.append(await asyncio.wait_for(inbox.received.get(), WAIT))
        return echoes
    finally:
        turn.close()
        peer_transport.close()
        await asyncio.wait_for(inbox.closed.wait(), WAIT)  # aioice's Refresh(lifetime 0) was answered


# ------------------------------------------------------------------------------------------- Server in code
async def test_server_without_config_binds_loopback_on_ephemeral_ports() -> None:
    async with pyturn.Server(users={USERNAME: PASSWORD}) as server:
        assert server.config == loopback_config()
        (udp_host, udp_port), = server.addresses["udp"]
        (tcp_host, tcp_port), = server.addresses["tcp"]
        assert (udp_host, tcp_host) == ("127.0.0.1", "127.0.0.1")
        assert udp_port == tcp_port != 0
        assert server.addresses["tls"] == []


async def test_server_uses_given_config_exactly() -> None:
    config = loopback_config(authentication_realm="example.org", software_name="rig")
    async with pyturn.Server(config, users={USERNAME: PASSWORD}) as server:
        assert server.config is config


def test_loopback_config_allows_loopback_peers_and_takes_overrides() -> None:
    config = loopback_config(default_allocation_lifetime=30)
    assert {str(network) for network in config.allowed_peer_addresses} == {"127.0.0.0/8", "::1/128"}
    assert (config.turn_port, config.tls_turn_port, config.turn_v6_address) == (0, 0, "")
    assert config.default_allocation_lifetime == 30


@pytest.mark.parametrize(
    ("transports", "open_kinds"),
    [(("udp",), {"udp"}), (("tcp",), {"tcp"}), (("udp", "tcp", "tls"), {"udp", "tcp", "tls"}), (("tls",), {"tls"})],
    ids=["udp-only", "tcp-only", "all", "tls-only"],
)
async def test_server_transports_choose_the_listeners(
    tmp_path: Path, transports: tuple[str, ...], open_kinds: set[str]
) -> None:
    context = server_ssl_context(*self_signed_certificate(tmp_path))
    async with pyturn.Server(users={USERNAME: PASSWORD}, transports=transports, ssl_context=context) as server:
        assert {kind for kind, bound in server.addresses.items() if bound} == open_kinds


async def test_server_retries_an_ephemeral_port_taken_for_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyturn.net.listeners as listeners_module

    real_bind_udp = listeners_module.bind_udp
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        calls: list[int] = []

        def first_on_the_taken_port(host: str, port: int, **options: bool) -> socket.socket:
            calls.append(port)
            return real_bind_udp(host, taken_port if len(calls) == 1 else port, **options)

        monkeypatch.setattr(listeners_module, "bind_udp", first_on_the_taken_port)
        async with pyturn.Server(users={USERNAME: PASSWORD}) as server:
            (_, udp_port), = server.addresses["udp"]
            (_, tcp_port), = server.addresses["tcp"]
    assert len(calls) == 2
    assert udp_port == tcp_port != taken_port


def test_server_rejects_an_unknown_transport() -> None:
    with pytest.raises(pyturn.PyturnError, match="sctp"):
        pyturn.Server(users={USERNAME: PASSWORD}, transports=("udp", "sctp"))


async def test_server_turn_uris_follow_rfc_7065(tmp_path: Path) -> None:
    context = server_ssl_context(*self_signed_certificate(tmp_path))
    async with pyturn.Server(users={USERNAME: PASSWORD}, ssl_context=context) as server:
        port = server.addresses["udp"][0][1]
        tls_port = server.addresses["tls"][0][1]
        assert server.turn_uris() == [
            f"turn:127.0.0.1:{port}?transport=udp",
            f"turn:127.0.0.1:{port}?transport=tcp",
            f"turns:127.0.0.1:{tls_port}?transport=tcp",
        ]
        assert server.turn_uris(("tls",), host="localhost") == [f"turns:localhost:{tls_port}?transport=tcp"]


@pytest.mark.requires(has_ipv6(), "no IPv6 loopback")
async def test_server_turn_uris_bracket_ipv6_hosts() -> None:
    async with pyturn.Server(loopback_config(turn_v6_address="::1"), users={USERNAME: PASSWORD}) as server:
        port = server.addresses["udp"][0][1]
        assert f"turn:[::1]:{port}?transport=udp" in server.turn_uris()
        assert f"turn:[::1]:{port}?transport=tcp" in server.turn_uris()


async def test_server_ice_servers_look_up_the_password() -> None:
    async with pyturn.Server(users={USERNAME: PASSWORD, "bob": "builder"}) as server:
        (entry,) = server.ice_servers("bob", transports=("tcp",))
        assert entry == {"urls": server.turn_uris(("tcp",)), "username": "bob", "credential": "builder"}
        with pytest.raises(pyturn.PyturnError, match="mallory"):
            server.ice_servers("mallory")


async def test_server_ice_servers_need_a_password_for_a_user_db() -> None:
    users = UserDB.from_passwords({USERNAME: PASSWORD}, "reTurn")
    async with pyturn.Server(users=users) as server:
        with pytest.raises(pyturn.PyturnError):
            server.ice_servers(USERNAME)
        assert server.ice_servers(USERNAME, PASSWORD)[0]["credential"] == PASSWORD


async def test_server_accepts_a_lookup_callable() -> None:
    asked: list[tuple[str, str]] = []

    def lookup(username: str, realm: str) -> bytes | None:
        asked.append((username, realm))
        return long_term_key(username, realm, PASSWORD) if username == USERNAME else None

    async with pyturn.Server(users=lookup) as server:
        assert await relay_echo(server.addresses["udp"][0], [b"hello"]) == [b"hello"]
    assert (USERNAME, "reTurn") in asked


async def test_server_close_is_idempotent() -> None:
    server = pyturn.Server(users={USERNAME: PASSWORD})
    await server.close()  # before start: nothing to do
    server = pyturn.Server(users={USERNAME: PASSWORD})
    await server.start()
    await server.close()
    await server.close()
    assert server.allocation_count() == 0


# --------------------------------------------------------------------------------------- hooks and events
@pytest.mark.parametrize("transport", ["udp", "tcp"], ids=["udp", "tcp"])
async def test_server_hooks_report_an_allocation_from_creation_to_deletion(transport: str) -> None:
    seen: list[object] = []
    hooks = Hooks(
        on_allocation_created=seen.append,
        on_allocation_refreshed=seen.append,
        on_allocation_deleted=seen.append,
        on_permission_installed=seen.append,
        on_channel_bound=seen.append,
        on_auth_failed=seen.append,
    )
    payloads = [b"x" * 100, b"y" * 50]
    async with pyturn.Server(users={USERNAME: PASSWORD}, hooks=hooks) as server:
        echoes = await relay_echo(server.addresses[transport][0], payloads, transport=transport)
        deleted = await server.wait_for_event(AllocationDeleted, timeout=WAIT)
    assert echoes == payloads
    assert deleted.reason == "refresh"
    created = next(event for event in seen if isinstance(event, AllocationCreated))
    assert created.username == USERNAME and created.five_tuple.transport.value == transport
    assert any(isinstance(event, PermissionInstalled) for event in seen)
    assert any(isinstance(event, ChannelBound) for event in seen)
    (ended,) = [event for event in seen if isinstance(event, AllocationEnded)]
    assert ended == AllocationEnded(created.five_tuple, USERNAME, created.relayed, "refresh", 150, 150)
    assert server.ended_allocations == [ended]
    assert server.relayed_bytes() == RelayedBytes(to_peer=150, to_client=150)
    kinds = [type(event) for event in server.events]
    assert kinds.index(AllocationCreated) < kinds.index(AllocationDeleted)


async def test_server_hooks_report_an_authentication_failure() -> None:
    failures: list[AuthFailed] = []
    async with pyturn.Server(users={USERNAME: PASSWORD}, hooks=Hooks(on_auth_failed=failures.append)) as server:
        with pytest.raises(TransactionFailed):
            await relay_echo(server.addresses["udp"][0], [b"x"], password="wrong")
    assert [(failure.code, failure.username) for failure in failures] == [(401, USERNAME)]


async def test_server_keeps_relaying_when_a_hook_raises() -> None:
    def broken(event: object) -> None:
        raise RuntimeError("hook bug")

    hooks = Hooks(on_allocation_created=broken, on_channel_bound=broken)
    async with pyturn.Server(users={USERNAME: PASSWORD}, hooks=hooks) as server:
        assert await relay_echo(server.addresses["udp"][0], [b"still"]) == [b"still"]


async def test_server_on_event_sees_every_event_next_to_the_hooks() -> None:
    events: list[object] = []
    async with pyturn.Server(users={USERNAME: PASSWORD}, on_event=events.append) as server:
        await relay_echo(server.addresses["udp"][0], [b"z"])
        await server.wait_for_event(AllocationDeleted, timeout=WAIT)
        assert events == server.events


async def test_server_wait_for_event_times_out() -> None:
    async with pyturn.Server(users={USERNAME: PASSWORD}) as server:
        with pytest.raises(TimeoutError):
            await server.wait_for_event(AllocationCreated, timeout=0.05)


async def test_server_reload_users_swaps_passwords() -> None:
    async with pyturn.Server(users={USERNAME: PASSWORD}) as server:
        result = server.reload_users({USERNAME: "new password"})
        assert result.loaded and result.users == 1
        assert server.ice_servers(USERNAME)[0]["credential"] == "new password"
        with pytest.raises(TransactionFailed):
            await relay_echo(server.addresses["udp"][0], [b"x"])
        assert await relay_echo(server.addresses["udp"][0], [b"x"], password="new password") == [b"x"]


def test_event_log_counts_bytes_of_live_and_deleted_relays() -> None:
    class Relay:
        bytes_to_peer = 10
        bytes_to_client = 4

    log = EventLog()
    assert log.relayed_bytes([Relay(), Relay()]) == RelayedBytes(20, 8)
    assert RelayedBytes(1, 2) + RelayedBytes(3, 4) == RelayedBytes(4, 6)


_FIVE_TUPLE = pyturn.FiveTuple(pyturn.Transport.UDP, ("127.0.0.1", 5000), ("127.0.0.1", 3478))
_EVENTS_OF_RENAMED_HOOKS = [
    PermissionInstalled(_FIVE_TUPLE, "127.0.0.2"),
    ChannelBound(_FIVE_TUPLE, 0x4000, ("127.0.0.2", 6000)),
    AuthFailed(_FIVE_TUPLE, 401, USERNAME),
]


def test_hooks_are_named_after_their_events_without_warnings() -> None:
    seen: list[object] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hooks = Hooks(on_permission_installed=seen.append, on_channel_bound=seen.append, on_auth_failed=seen.append)
        log = EventLog(hooks)
        for event in _EVENTS_OF_RENAMED_HOOKS:
            log(event)
    assert seen == _EVENTS_OF_RENAMED_HOOKS


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("on_permission", "on_permission_installed"),
        ("on_channel", "on_channel_bound"),
        ("on_auth_failure", "on_auth_failed"),
    ],
)
def test_hooks_old_names_still_work_with_a_deprecation_warning(old: str, new: str) -> None:
    seen: list[object] = []
    with pytest.warns(DeprecationWarning, match=f"{old}.*{new}"):
        hooks = Hooks(**{old: seen.append})
    assert getattr(hooks, new) == seen.append
    with pytest.warns(DeprecationWarning, match=f"{old}.*{new}"):
        assert getattr(hooks, old) == seen.append
    log = EventLog(hooks)
    for event in _EVENTS_OF_RENAMED_HOOKS:
        log(event)
    assert len(seen) == 1 and f"on_{_snake_case(type(seen[0]).__name__)}" == new


def _snake_case(name: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name).lstrip("_")


def test_hooks_reject_an_old_and_a_new_name_together_and_unknown_names() -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both"):
        Hooks(on_channel=print, on_channel_bound=print)
    with pytest.raises(TypeError, match="on_allocation"):
        Hooks(on_allocation=print)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ thread runner
def _stun_binding(server: tuple[str, int]) -> tuple[str, int]:
    """A raw STUN Binding over a blocking UDP socket; the XOR-MAPPED-ADDRESS of the answer."""
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(encode_message(request), server)
        answer = decode_message(sock.recv(2048))
        assert answer.msg_class is MessageClass.SUCCESS and answer.transaction_id == request.transaction_id
        mapped: tuple[str, int] = answer.get(Attr.XOR_MAPPED_ADDRESS)
        assert mapped == sock.getsockname()
        return mapped


def test_threaded_server_serves_synchronous_code() -> None:
    threads_before = set(threading.enumerate())
    created: list[AllocationCreated] = []
    with pyturn.run_in_thread(users={USERNAME: PASSWORD}, hooks=Hooks(on_allocation_created=created.append)) as server:
        assert server.turn_uris()[0].startswith("turn:127.0.0.1:")
        assert server.ice_servers(USERNAME)[0]["credential"] == PASSWORD
        udp = server.addresses["udp"][0]
        _stun_binding(udp)
        assert asyncio.run(relay_echo(udp, [b"sync"])) == [b"sync"]
        deleted = server.wait_for_event(AllocationDeleted, timeout=WAIT)
        assert deleted.reason == "refresh"
        assert [type(event) for event in server.events].count(AllocationCreated) == 1
        assert server.relayed_bytes() == RelayedBytes(4, 4)
        assert server.allocation_count() == 0
        assert server.reload_users({USERNAME: "changed"}).loaded
    assert len(created) == 1
    assert set(threading.enumerate()) == threads_before


def test_threaded_server_raises_the_startup_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        threads_before = set(threading.enumerate())
        with pytest.raises(StartupError), pyturn.run_in_thread(
            loopback_config(turn_port=port), users={USERNAME: PASSWORD}, transports=("tcp",)
        ):
            pass
    assert set(threading.enumerate()) == threads_before


def test_threaded_server_refuses_calls_after_stop() -> None:
    server = pyturn.run_in_thread(users={USERNAME: PASSWORD})
    with server:
        pass
    server.stop()  # twice is fine
    with pytest.raises(pyturn.PyturnError):
        server.allocation_count()
