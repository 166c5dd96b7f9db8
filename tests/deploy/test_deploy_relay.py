"""The handbook deployment with the default peer policy: relay between two clients of the server, the server's own
services refused, users added with htdigest, and RFC 5780 NAT behaviour discovery from the alternate address.

Every client runs inside the deployment's namespace (see netns.py); the server is the real `pyturn -c` process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from typing import Any

import pytest
from handbook import ALT_STUN_PORT, PORT_RANGE, REALM, TURN_PORT, USERS, Deployment
from interop import MiniTurnClient, TurnRequestFailed
from netns import ALT_STUN_ADDRESS, TURN_ADDRESS, TURN_V6_ADDRESS, require_tool
from streamclient import StreamTurnClient

from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

pytestmark = pytest.mark.deploy

WAIT = 5.0
SCENARIO_TIMEOUT = 30.0
CHANNEL_A = 0x4000  # RFC 8656 §12: channel numbers 0x4000-0x4FFF
CHANNEL_B = 0x4FFF


def _in_relay_range(relayed: Address, host: str = TURN_ADDRESS) -> bool:
    return relayed[0] == host and PORT_RANGE[0] <= relayed[1] <= PORT_RANGE[1]


async def _checked(step: str, request: Any) -> Any:
    """Await a request; a TURN error becomes an assertion naming the step and the code (403 = peer refused)."""
    try:
        return await request
    except TurnRequestFailed as failure:
        raise AssertionError(f"{step}: answered {failure.response.get(Attr.ERROR_CODE)}") from None


# ------------------------------------------------------------------------------------------ UDP clients
async def _next_udp(client: MiniTurnClient) -> bytes:
    if client.unmatched:
        return client.unmatched.pop(0)
    return await client.receive(WAIT)


def _data_indication(packet: bytes) -> tuple[Address, bytes]:
    message = decode_message(packet)
    assert (message.method, message.msg_class) == (Method.DATA, MessageClass.INDICATION), message
    return message.get(Attr.XOR_PEER_ADDRESS), message.get(Attr.DATA)


async def _relay_between_udp_clients(host: str) -> dict[str, Any]:
    (user_a, password_a), (user_b, password_b) = USERS.items()
    server = (host, TURN_PORT)
    # RFC 6156 §4.1.1: REQUESTED-ADDRESS-FAMILY 0x02 asks for an IPv6 relay (the default is IPv4 on any listener).
    family = [(Attr.REQUESTED_ADDRESS_FAMILY, 0x02)] if ":" in host else []
    with MiniTurnClient(server, user_a, password_a) as a, MiniTurnClient(server, user_b, password_b) as b:
        relayed_a = await _checked("Allocate A", a.allocate(*family))
        relayed_b = await _checked("Allocate B", b.allocate(*family))
        assert _in_relay_range(relayed_a, host) and _in_relay_range(relayed_b, host), (relayed_a, relayed_b)

        await _checked("CreatePermission A -> relayed B", a.create_permission(relayed_b))
        await _checked("CreatePermission B -> relayed A", b.create_permission(relayed_a))
        await a.send_indication(relayed_b, b"send A->B")
        assert _data_indication(await _next_udp(b)) == (relayed_a, b"send A->B")
        await b.send_indication(relayed_a, b"send B->A")
        assert _data_indication(await _next_udp(a)) == (relayed_b, b"send B->A")

        await _checked("ChannelBind A -> relayed B",
                       a.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, CHANNEL_A), (Attr.XOR_PEER_ADDRESS,
                                                                                           relayed_b)))
        await _checked("ChannelBind B -> relayed A",
                       b.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, CHANNEL_B), (Attr.XOR_PEER_ADDRESS,
                                                                                           relayed_a)))
        loop = asyncio.get_running_loop()
        payloads = [os.urandom(size) for size in (1, 2, 3, 4, 171, 1200)]
        for payload in payloads:
            await loop.sock_sendto(a.sock, encode_channel_data(CHANNEL_A, payload), server)
            assert decode_channel_data(await _next_udp(b)) == (CHANNEL_B, payload)
            await loop.sock_sendto(b.sock, encode_channel_data(CHANNEL_B, payload[::-1]), server)
            assert decode_channel_data(await _next_udp(a)) == (CHANNEL_A, payload[::-1])
        await a.refresh(0)
        await b.refresh(0)
        return {"relayed": [relayed_a, relayed_b], "messages": 2 + 2 * len(payloads)}


@pytest.mark.parametrize("host", [TURN_ADDRESS, TURN_V6_ADDRESS], ids=["ipv4", "ipv6"])
def test_two_udp_clients_relay_to_each_other(deployment: Deployment, host: str) -> None:
    result = deployment.namespace.run_async(lambda: _relay_between_udp_clients(host), SCENARIO_TIMEOUT)
    assert result["messages"] == 14


async def _channel_bind_codes(peers: list[Address]) -> list[int | None]:
    user, password = next(iter(USERS.items()))
    codes: list[int | None] = []
    with MiniTurnClient((TURN_ADDRESS, TURN_PORT), user, password) as client:
        await client.allocate()
        for number, peer in enumerate(peers):
            try:
                await client.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, CHANNEL_A + number),
                                     (Attr.XOR_PEER_ADDRESS, peer))
                codes.append(None)
            except TurnRequestFailed as failure:
                codes.append(failure.code)
        await client.refresh(0)
    return codes


def test_the_servers_own_services_stay_refused(deployment: Deployment) -> None:
    # Relay-to-relay opens the relay port range of the server's addresses, nothing else there (RFC 8656 §21.2.3).
    peers = [(TURN_ADDRESS, TURN_PORT), (TURN_ADDRESS, ALT_STUN_PORT), (ALT_STUN_ADDRESS, TURN_PORT),
             (TURN_ADDRESS, 22), (TURN_ADDRESS, PORT_RANGE[0] - 1), ("127.0.0.1", PORT_RANGE[0])]
    codes = deployment.namespace.run_async(lambda: _channel_bind_codes(peers), SCENARIO_TIMEOUT)
    assert codes == [403] * len(peers), list(zip(peers, codes, strict=True))


# ------------------------------------------------------------------------------------------ TCP clients
async def _stream_client() -> StreamTurnClient:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(TURN_ADDRESS, TURN_PORT), WAIT)
    return StreamTurnClient(reader, writer, padding=True)


async def _next_stream(client: StreamTurnClient) -> bytes:
    return await client.next_frame(WAIT)


async def _stream_request(step: str, client: StreamTurnClient, method: int, *attributes: tuple[int, Any]) -> Message:
    try:
        return await client.request(method, *attributes)
    except AssertionError as error:  # StreamTurnClient asserts success and puts the ERROR-CODE in the message
        raise AssertionError(f"{step}: answered {error}") from None


async def _relay_between_tcp_clients() -> dict[str, Any]:
    # StreamTurnClient signs as tests/interop.py's USERNAME/PASSWORD (alice), one of the handbook users here.
    a = await _stream_client()
    b = await _stream_client()
    try:
        udp = (Attr.REQUESTED_TRANSPORT, 17)  # TURN over TCP still relays UDP (RFC 8656 §5)
        relayed_a = (await _stream_request("Allocate A", a, Method.ALLOCATE, udp)).get(Attr.XOR_RELAYED_ADDRESS)
        relayed_b = (await _stream_request("Allocate B", b, Method.ALLOCATE, udp)).get(Attr.XOR_RELAYED_ADDRESS)
        assert _in_relay_range(relayed_a) and _in_relay_range(relayed_b), (relayed_a, relayed_b)

        await _stream_request("CreatePermission A -> relayed B", a, Method.CREATE_PERMISSION,
                              (Attr.XOR_PEER_ADDRESS, relayed_b))
        await _stream_request("CreatePermission B -> relayed A", b, Method.CREATE_PERMISSION,
                              (Attr.XOR_PEER_ADDRESS, relayed_a))
        send = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12),
                       [(Attr.XOR_PEER_ADDRESS, relayed_b), (Attr.DATA, b"send A->B")])
        await a.write(encode_message(send))
        assert _data_indication(await _next_stream(b)) == (relayed_a, b"send A->B")

        await _stream_request("ChannelBind A -> relayed B", a, Method.CHANNEL_BIND,
                              (Attr.CHANNEL_NUMBER, CHANNEL_A), (Attr.XOR_PEER_ADDRESS, relayed_b))
        await _stream_request("ChannelBind B -> relayed A", b, Method.CHANNEL_BIND,
                              (Attr.CHANNEL_NUMBER, CHANNEL_B), (Attr.XOR_PEER_ADDRESS, relayed_a))
        payloads = [os.urandom(size) for size in (1, 2, 3, 4, 171, 1200)]
        for payload in payloads:
            await a.write(encode_channel_data(CHANNEL_A, payload, pad=True))
            assert decode_channel_data(await _next_stream(b)) == (CHANNEL_B, payload)
            await b.write(encode_channel_data(CHANNEL_B, payload[::-1], pad=True))
            assert decode_channel_data(await _next_stream(a)) == (CHANNEL_A, payload[::-1])
        return {"relayed": [relayed_a, relayed_b], "messages": 1 + 2 * len(payloads)}
    finally:
        await a.close()
        await b.close()


def test_two_tcp_clients_relay_to_each_other(deployment: Deployment) -> None:
    result = deployment.namespace.run_async(_relay_between_tcp_clients, SCENARIO_TIMEOUT)
    assert result["messages"] == 13


# ---------------------------------------------------------------------------------------------- users
async def _allocate_as(username: str, password: str) -> int | None:
    """None when an Allocate (then a Refresh 0) succeeds, else the error code."""
    with MiniTurnClient((TURN_ADDRESS, TURN_PORT), username, password) as client:
        try:
            await client.allocate()
            await client.refresh(0)
        except TurnRequestFailed as failure:
            return failure.code
    return None


def test_htdigest_user_added_and_removed_take_effect_on_sighup(deployment: Deployment) -> None:
    namespace, server = deployment.namespace, deployment.server
    newcomer, password = "carol", "correct horse"
    assert namespace.run_async(lambda: _allocate_as(newcomer, password), SCENARIO_TIMEOUT) == 401

    deployment.htdigest.add(deployment.users_file, REALM, newcomer, password)
    assert re.search(rf"^{newcomer}:{REALM}:[0-9a-f]{{32}}$", deployment.users_file.read_text(), re.M)
    _reload(deployment, users=len(USERS) + 1)
    assert namespace.run_async(lambda: _allocate_as(newcomer, password), SCENARIO_TIMEOUT) is None

    deployment.htdigest.remove(deployment.users_file, REALM, newcomer)
    _reload(deployment, users=len(USERS))
    assert namespace.run_async(lambda: _allocate_as(newcomer, password), SCENARIO_TIMEOUT) == 401
    assert server.process.poll() is None


def _reload(deployment: Deployment, users: int) -> None:
    """SIGHUP, then wait (bounded) until the server logs that it loaded the file again: it reloads asynchronously."""
    server = deployment.server
    loaded = re.compile(r"loaded (\d+) users from ")
    before = len(loaded.findall(server.log()))
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while len(counts := loaded.findall(server.log())) <= before:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    assert int(counts[-1]) == users, server.log()[-3000:]


# ------------------------------------------------------------------------------- RFC 5780 from .20
async def _change_request(flags: int) -> tuple[Message, Address, Address]:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((TURN_ADDRESS, 0))
        sock.setblocking(False)
        request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), [(Attr.CHANGE_REQUEST, flags)])
        await loop.sock_sendto(sock, encode_message(request), (TURN_ADDRESS, TURN_PORT))
        while True:
            data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), WAIT)
            response = decode_message(data)
            if response.transaction_id == request.transaction_id:
                return response, (source[0], source[1]), sock.getsockname()


@pytest.mark.parametrize(
    ("flags", "expected_source"),
    [(0x00, (TURN_ADDRESS, TURN_PORT)), (0x02, (TURN_ADDRESS, ALT_STUN_PORT)),
     (0x04, (ALT_STUN_ADDRESS, TURN_PORT)), (0x06, (ALT_STUN_ADDRESS, ALT_STUN_PORT))],
    ids=["none", "change-port", "change-ip", "change-ip-and-port"],
)
def test_change_request_answered_from_the_alternate_address(
    deployment: Deployment, flags: int, expected_source: Address
) -> None:
    response, source, mapped = deployment.namespace.run_async(lambda: _change_request(flags), SCENARIO_TIMEOUT)
    assert response.msg_class is MessageClass.SUCCESS
    assert source == expected_source
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == mapped
    assert response.get(Attr.RESPONSE_ORIGIN) == expected_source  # RFC 5780 §7.3
    assert response.get(Attr.OTHER_ADDRESS) == (ALT_STUN_ADDRESS, ALT_STUN_PORT)  # RFC 5780 §7.4


def test_stun_client_discovers_an_open_internet(deployment: Deployment) -> None:
    tool = require_tool("stun")
    # stun 0.97 takes the server as host:port; -v prints each test's result.
    completed = deployment.namespace.run(tool, f"{TURN_ADDRESS}:{TURN_PORT}", "-v", timeout=30.0)
    text = completed.stdout + completed.stderr
    assert "Primary: Open" in text, text[-3000:]
    assert f"ChangedAddress = {ALT_STUN_ADDRESS}:{ALT_STUN_PORT}" in text, text[-3000:]
    for test in ("test I = 1", "test II = 1", "test III = 1"):
        assert test in text, text[-3000:]
