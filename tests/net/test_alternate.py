"""RFC 3489 / RFC 5780 alternate-address mode (AltStunAddress / AltStunPort, docs/compatibility.md "Alternate address").

The server listens on 127.0.0.1 and 127.0.0.2 (both loopback on Linux) with an ephemeral TurnPort; a raw UDP
client checks which socket each CHANGE-REQUEST combination is answered from, for classic (cookie-less) and
RFC 5389/8489 requests; Debian's `stun` client runs its NAT-discovery tests against it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from interop import LOOPBACK, USERNAME, require_tool

from pyturn.config import Config
from pyturn.server import Server
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

ALTERNATE = "127.0.0.2"
WAIT = 2.0
CHANGE_IP = 0x04
CHANGE_PORT = 0x02


def _udp_port_free_on(hosts: tuple[str, ...]) -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no UDP port free on " + ", ".join(hosts))


def _alternate_available() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((ALTERNATE, 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.requires(_alternate_available(), "127.0.0.2 is not a local address here")


@pytest.fixture
def alternate_config(loopback_config: Config) -> Config:
    return loopback_config.replace(
        alt_stun_address=ALTERNATE, alt_stun_port=_udp_port_free_on((LOOPBACK, ALTERNATE))
    )


@pytest.fixture
async def alternate_server(alternate_config: Config) -> AsyncIterator[Server]:
    async with Server(alternate_config, users={USERNAME: "x"}) as server:
        yield server


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def binding(classic: bool, *attributes: tuple[int, object]) -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, os.urandom(16 if classic else 12), list(attributes))


async def exchange(
    sock: socket.socket, request: Message, destination: Address, receiver: socket.socket | None = None
) -> tuple[Message, Address]:
    """Send from `sock`, wait (bounded) on `receiver` (default: the same socket) for the answer."""
    loop = asyncio.get_running_loop()
    receiver = receiver or sock
    await loop.sock_sendto(sock, encode_message(request), destination)
    while True:
        data, source = await asyncio.wait_for(loop.sock_recvfrom(receiver, 2048), WAIT)
        response = decode_message(data)
        if response.transaction_id == request.transaction_id:
            return response, (source[0], source[1])


def primary_and_other(server: Server) -> tuple[Address, Address]:
    primary = server.addresses["udp"][0]
    other = (server.config.alt_stun_address, server.config.alt_stun_port)
    return primary, other


async def test_alternate_sockets_use_bound_primary_port(alternate_server: Server) -> None:
    (ip1, port1), (ip2, port2) = primary_and_other(alternate_server)
    assert alternate_server.config.turn_port == 0 and port1 != 0
    assert set(alternate_server.addresses["udp"]) == {(ip1, port1), (ip1, port2), (ip2, port1), (ip2, port2)}


@pytest.mark.parametrize("classic", [True, False], ids=["rfc3489", "rfc5389"])
@pytest.mark.parametrize(
    ("flags", "change_ip", "change_port"),
    [(0, False, False), (CHANGE_PORT, False, True), (CHANGE_IP, True, False), (CHANGE_IP | CHANGE_PORT, True, True)],
    ids=["none", "port", "ip", "ip+port"],
)
async def test_alternate_change_request_answered_from_right_socket(
    classic: bool, flags: int, change_ip: bool, change_port: bool, alternate_server: Server, client: socket.socket
) -> None:
    (ip1, port1), (ip2, port2) = primary_and_other(alternate_server)
    request = binding(classic, (Attr.CHANGE_REQUEST, flags))
    response, source = await exchange(client, request, (ip1, port1))
    expected_source = (ip2 if change_ip else ip1, port2 if change_port else port1)
    assert response.msg_class is MessageClass.SUCCESS
    assert source == expected_source
    mapped = client.getsockname()
    if classic:
        assert response.get(Attr.MAPPED_ADDRESS) == mapped
        assert response.get(Attr.SOURCE_ADDRESS) == expected_source
        assert response.get(Attr.CHANGED_ADDRESS) == (ip2, port2)
        assert not response.has(Attr.RESPONSE_ORIGIN) and not response.has(Attr.OTHER_ADDRESS)
        assert not response.has(Attr.XOR_MAPPED_ADDRESS)
    else:
        assert response.get(Attr.XOR_MAPPED_ADDRESS) == mapped
        assert response.get(Attr.RESPONSE_ORIGIN) == expected_source
        assert response.get(Attr.OTHER_ADDRESS) == (ip2, port2)
        assert not response.has(Attr.SOURCE_ADDRESS) and not response.has(Attr.CHANGED_ADDRESS)


@pytest.mark.parametrize("receiving", ["A1:P1", "A1:P2", "A2:P1", "A2:P2"])
async def test_alternate_other_address_relative_to_receiving_socket(
    receiving: str, alternate_server: Server, client: socket.socket
) -> None:
    (ip1, port1), (ip2, port2) = primary_and_other(alternate_server)
    ips, ports = {"A1": ip1, "A2": ip2}, {"P1": port1, "P2": port2}
    ip_name, port_name = receiving.split(":")
    here = (ips[ip_name], ports[port_name])
    other = (ip2 if ip_name == "A1" else ip1, port2 if port_name == "P1" else port1)
    response, source = await exchange(client, binding(False), here)
    assert source == here
    assert response.get(Attr.RESPONSE_ORIGIN) == here
    assert response.get(Attr.OTHER_ADDRESS) == other
    _, source = await exchange(client, binding(False, (Attr.CHANGE_REQUEST, CHANGE_IP | CHANGE_PORT)), here)
    assert source == other


async def test_alternate_response_address_honoured_towards_requester_ip(
    alternate_server: Server, client: socket.socket
) -> None:
    primary, _ = primary_and_other(alternate_server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind((LOOPBACK, 0))
        second.setblocking(False)
        target = second.getsockname()
        request = binding(True, (Attr.RESPONSE_ADDRESS, target))
        response, _ = await exchange(client, request, primary, receiver=second)
    assert response.get(Attr.REFLECTED_FROM) == client.getsockname()


async def test_alternate_response_address_elsewhere_is_ignored(
    alternate_server: Server, client: socket.socket
) -> None:
    primary, _ = primary_and_other(alternate_server)
    request = binding(True, (Attr.RESPONSE_ADDRESS, ("127.0.0.3", 9)))  # not the requester: no reflection
    response, _ = await exchange(client, request, primary)
    assert response.get(Attr.MAPPED_ADDRESS) == client.getsockname()
    assert not response.has(Attr.REFLECTED_FROM)


async def test_alternate_response_port_sends_to_requester_ip(alternate_server: Server, client: socket.socket) -> None:
    primary, _ = primary_and_other(alternate_server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind((LOOPBACK, 0))
        second.setblocking(False)
        request = binding(False, (Attr.RESPONSE_PORT, second.getsockname()[1]))
        response, _ = await exchange(client, request, primary, receiver=second)
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == client.getsockname()


async def test_alternate_not_used_on_tcp(alternate_server: Server) -> None:
    host, port = alternate_server.addresses["tcp"][0]
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)
    try:
        request = binding(False, (Attr.CHANGE_REQUEST, CHANGE_IP | CHANGE_PORT))
        writer.write(encode_message(request))
        header = await asyncio.wait_for(reader.readexactly(20), WAIT)
        body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[2:4], "big")), WAIT)
        response = decode_message(header + body)
        assert response.msg_class is MessageClass.SUCCESS
        assert not response.has(Attr.OTHER_ADDRESS) and not response.has(Attr.RESPONSE_ORIGIN)
    finally:
        writer.close()


async def test_alternate_off_ignores_change_request(loopback_config: Config, client: socket.socket) -> None:
    async with Server(loopback_config, users={USERNAME: "x"}) as server:
        primary = server.addresses["udp"][0]
        response, source = await exchange(client, binding(True, (Attr.CHANGE_REQUEST, CHANGE_IP)), primary)
    assert source == primary
    assert not response.has(Attr.CHANGED_ADDRESS) and not response.has(Attr.SOURCE_ADDRESS)


@pytest.mark.interop
async def test_stun_client_discovers_nat_type(alternate_server: Server) -> None:
    tool = require_tool("stun")
    host, port = alternate_server.addresses["udp"][0]
    # stun 0.97 takes the server port as host:port; its -p sets the *source* port.
    process = await asyncio.create_subprocess_exec(
        tool, f"{host}:{port}", "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert "Primary: Open" in text, text[-3000:]
    assert f"ChangedAddress = {ALTERNATE}:{alternate_server.config.alt_stun_port}" in text
    for test in ("test I = 1", "test II = 1", "test III = 1"):
        assert test in text, text[-3000:]
