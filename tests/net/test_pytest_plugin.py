"""The pytest plugin (pyturn.testing): the turn_server fixture and its marker, used as a test suite would.

The plugin is loaded through its pytest11 entry point (pyturn is installed), not by a conftest line.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import socket
import ssl

import pytest
from aioice.turn import create_turn_endpoint

from pyturn import AllocationCreated, AllocationDeleted
from pyturn.testing import TurnServerFixture
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Attr, Message, MessageClass, Method

pytest_plugins = ["pytester"]

WAIT = 5.0


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def _relay_once(
    turn_server: TurnServerFixture, kind: str, payload: bytes, context: ssl.SSLContext | None = None
) -> bytes:
    """Allocate with aioice over `kind` ("udp", "tcp" or "tls"), bounce `payload` off a loopback echo peer."""
    loop = asyncio.get_running_loop()
    peer_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    turn, inbox = await create_turn_endpoint(
        Inbox, turn_server.addresses[kind][0], turn_server.username, turn_server.password,
        ssl=context, transport="udp" if kind == "udp" else "tcp",
    )
    try:
        turn.sendto(payload, peer_transport.get_extra_info("sockname"))
        return await asyncio.wait_for(inbox.received.get(), WAIT)
    finally:
        turn.close()
        peer_transport.close()
        await asyncio.wait_for(inbox.closed.wait(), WAIT)


def test_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert [entry.value for entry in entry_points if entry.name == "pyturn"] == ["pyturn.testing"]


def test_turn_server_fixture_defaults_to_udp_and_tcp_on_loopback(turn_server: TurnServerFixture) -> None:
    assert turn_server.transports == ("udp", "tcp")
    assert turn_server.certificate is None
    port = turn_server.addresses["udp"][0][1]
    assert turn_server.turn_uris() == [f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"]
    assert turn_server.ice_servers() == [
        {"urls": turn_server.turn_uris(), "username": turn_server.username, "credential": turn_server.password}
    ]
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.sendto(encode_message(request), turn_server.addresses["udp"][0])
        answer = decode_message(sock.recv(2048))
        assert answer.get(Attr.XOR_MAPPED_ADDRESS) == ("127.0.0.1", sock.getsockname()[1])


async def test_turn_server_fixture_serves_async_tests(turn_server: TurnServerFixture) -> None:
    assert await _relay_once(turn_server, "udp", b"from an async test") == b"from an async test"
    created = turn_server.wait_for_event(AllocationCreated)
    assert created.username == turn_server.username
    turn_server.wait_for_event(AllocationDeleted)
    assert turn_server.ended_allocations[0].bytes_to_peer == len(b"from an async test")


@pytest.mark.turn_server(transports=("tcp",))
async def test_turn_server_marker_limits_the_transports(turn_server: TurnServerFixture) -> None:
    assert turn_server.addresses["udp"] == [] and turn_server.addresses["tls"] == []
    assert [uri.split("?")[1] for uri in turn_server.turn_uris()] == ["transport=tcp"]
    assert await _relay_once(turn_server, "tcp", b"over tcp") == b"over tcp"


@pytest.mark.turn_server(transports=("udp", "tls"), lifetime=120)
async def test_turn_server_marker_adds_tls_with_a_generated_certificate(turn_server: TurnServerFixture) -> None:
    assert turn_server.certificate is not None and turn_server.addresses["tcp"] == []
    tls_port = turn_server.addresses["tls"][0][1]
    assert turn_server.turn_uris(("tls",)) == [f"turns:127.0.0.1:{tls_port}?transport=tcp"]
    context = turn_server.client_ssl_context()  # verifies the certificate against 127.0.0.1
    assert await _relay_once(turn_server, "tls", b"over tls", context) == b"over tls"
    created = turn_server.wait_for_event(AllocationCreated)
    assert created.five_tuple.transport.value == "tls"
    assert created.lifetime == 120  # aioice asked for 600


def test_turn_server_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers", "-p", "no:asyncio")
    result.stdout.fnmatch_lines(["@pytest.mark.turn_server(transports=*"])


def test_turn_server_fixture_works_in_another_test_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_default(turn_server):
            assert turn_server.addresses["udp"] and turn_server.addresses["tcp"]

        @pytest.mark.turn_server(transports=("udp",), authentication_realm="example.org")
        def test_marked(turn_server):
            assert turn_server.realm == "example.org"
            assert turn_server.addresses["tcp"] == []

        @pytest.mark.turn_server(transports=("sctp",))
        def test_bad_transport(turn_server):
            pass
        """
    )
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*transports must be some of*"])


def test_turn_server_marker_impairment_and_turn_servers_in_another_test_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import pyturn

        @pytest.mark.turn_server(impairment=pyturn.Impairment(delay=0.01, seed=1), impairment_direction="to_client")
        def test_impaired(turn_server):
            assert turn_server.impairment is not None
            assert turn_server.impairment.to_peer is None and turn_server.impairment.to_client is not None
            turn_server.fail_next("REFRESH", 508)
            assert turn_server.expire_allocations() == 0

        @pytest.mark.turn_server(impairment_direction="sideways")
        def test_bad_direction(turn_server):
            pass

        def test_two(turn_servers):
            first, second = turn_servers(), turn_servers(transports=("tcp",))
            assert first.username == second.username and second.addresses["udp"] == []
        """
    )
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*impairment_direction is 'both', 'to_peer' or 'to_client'*"])
