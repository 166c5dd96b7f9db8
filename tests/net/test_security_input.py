"""Malformed input sent to a real running server (docs/security.md cases 1-10).

An in-process pyturn.server.Server on 127.0.0.1 gets one bad datagram or stream chunk at a time. After each the
server must still be up, must have answered nothing or the RFC error, must hold no new state, and must still
answer a valid Binding. The Binding doubles as a barrier: the server reads one socket in order, so whatever the
bad datagram caused has arrived before the Binding's answer; no test sleeps to prove silence.

The codec-level versions of these cases (every malformation raising StunDecodeError) are in tests/wire/test_stun.py and
tests/wire/test_stun_properties.py; the TCP/TLS framing limits also in tests/interop/test_interop_tcp_tls.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyturn.config import Config
from pyturn.server import Server
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

USERS = {"u": "p"}
MAGIC_COOKIE = 0x2112A442
WAIT = 3.0
SUCCESS = "success"  # expectation: a success response
ANY = "any"  # expectation: nothing or an error (the codec's choice); only survival is asserted


# ------------------------------------------------------------------------------------------ builders
def header(msg_type: int, length: int, tid: bytes | None = None, cookie: int = MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI", msg_type, length, cookie) + (tid or os.urandom(12))


def tlv(attr: int, value: bytes, *, pad: bool = True) -> bytes:
    padding = bytes(-len(value) % 4) if pad else b""
    return struct.pack("!HH", attr, len(value)) + value + padding


def raw(body: bytes, msg_type: int = 0x0001) -> bytes:
    """A request (Binding unless told) carrying `body` as attributes, the length field set to match."""
    return header(msg_type, len(body)) + body


def message(method: int, attrs: list[tuple[int, Any]], msg_class: MessageClass = MessageClass.REQUEST,
            *, key: bytes | None = None, fingerprint: bool = False) -> bytes:
    return encode_message(Message(method, msg_class, os.urandom(12), list(attrs)), integrity_key=key,
                          fingerprint=fingerprint)


def signed_with_tail(tail: bytes) -> bytes:
    """A Binding with MESSAGE-INTEGRITY (any key: Bindings are not authenticated) followed by `tail`."""
    data = bytearray(message(Method.BINDING, [], key=b"k" * 16))
    data += tail
    struct.pack_into("!H", data, 2, len(data) - 20)
    return bytes(data)


def credentials(username: str = "u", realm: str = "reTurn", nonce: str = "AAAAAAAAAAAAAAAA") -> list[bytes]:
    return [tlv(Attr.USERNAME, username.encode()), tlv(Attr.REALM, realm.encode()), tlv(Attr.NONCE, nonce.encode())]


def allocate_with(*attrs: bytes) -> bytes:
    """An Allocate with the given raw attributes and a MESSAGE-INTEGRITY of zeros (it never verifies)."""
    body = tlv(Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])) + b"".join(attrs)
    body += tlv(Attr.MESSAGE_INTEGRITY, bytes(20))
    return raw(body, 0x0003)


def text_attr(attr: int, size: int) -> bytes:
    return tlv(attr, b"x" * size)


def bad_fingerprint() -> bytes:
    data = bytearray(message(Method.BINDING, [], fingerprint=True))
    data[-1] ^= 0xFF
    return bytes(data)


def xor_peer(family: int, address: bytes) -> bytes:
    return tlv(Attr.XOR_PEER_ADDRESS, struct.pack("!BBH", 0, family, 0x1234) + address)


GOOD_BINDING = message(Method.BINDING, [])
ZEROS_LOW = struct.pack("!HH", Attr.SOFTWARE, 3) + b"abc"  # 7 bytes: odd length, padding missing

# (id, datagram, expectation): None = no answer, an int = that error code, SUCCESS or ANY.
CASES: list[tuple[str, bytes, Any]] = [
    # case 1: short, zero-filled, wrong top bits, bad lengths
    ("empty", b"", None),
    ("one-byte", b"\x00", None),
    ("header-19-bytes", GOOD_BINDING[:19], None),
    ("zero-filled-20", bytes(20), 400),  # a classic (no cookie) request of method 0: unknown method -> 400
    ("zero-filled-548", bytes(548), None),
    ("zero-filled-1500", bytes(1500), None),
    ("top-bit-set", b"\x80" + GOOD_BINDING[1:], None),
    ("top-two-bits-set", b"\xc0" + GOOD_BINDING[1:], None),
    ("second-bit-set", b"\x40" + GOOD_BINDING[1:], None),
    ("ones-1500", b"\xff" * 1500, None),
    ("classic-no-cookie-binding", header(0x0001, 0, cookie=0x01020304), SUCCESS),  # RFC 3489 stays served
    ("length-not-multiple-of-4", header(0x0001, 2) + b"\0\0", None),
    ("length-beyond-datagram", header(0x0001, 8) + tlv(Attr.PRIORITY, bytes(4))[:4], None),
    ("length-short-of-datagram", header(0x0001, 4) + tlv(Attr.PRIORITY, bytes(4)), None),
    ("trailing-bytes", GOOD_BINDING + bytes(4), None),
    # case 2: attribute lengths
    ("attr-runs-past-end", raw(struct.pack("!HH", Attr.SOFTWARE, 0xFFFF) + b"abcd"), None),
    ("attr-lengths-summing-past-uint16", raw(struct.pack("!HH", 0x8022, 0xFFF8) + bytes(8)
                                             + struct.pack("!HH", 0x8022, 0x0010) + bytes(16)), None),
    ("cut-attribute-header-length-mismatch", raw(b"\x80\x22\x00\x00" + b"\x80\x22"[:2] + b"\0\0")[:-2], None),
    ("zero-length-lifetime", allocate_with(tlv(Attr.LIFETIME, b"")), None),
    ("zero-length-xor-peer", raw(tlv(Attr.XOR_PEER_ADDRESS, b""), 0x0008), None),
    ("zero-length-requested-transport", raw(tlv(Attr.REQUESTED_TRANSPORT, b""), 0x0003), None),
    ("odd-length-padding-missing", raw(ZEROS_LOW + tlv(Attr.PRIORITY, bytes(4)) + b"\0"), ANY),
    # case 3: misaligned attributes (headers at odd offsets once padding is missing)
    ("misaligned-after-odd-attr", raw(struct.pack("!HH", 0x8022, 1) + b"a" + tlv(Attr.PRIORITY, bytes(4))[:7]),
     ANY),
    ("misaligned-xor-peer", raw(struct.pack("!HH", 0x8022, 1) + b"a" + xor_peer(1, bytes(4))[:7], 0x0008),
     ANY),
    # case 4: oversized fields at 763 / 764 bytes; ERROR-CODE < 4; bad address families
    ("username-763", allocate_with(text_attr(Attr.USERNAME, 763), *credentials()[1:]), 438),
    ("username-764", allocate_with(text_attr(Attr.USERNAME, 764), *credentials()[1:]), None),
    ("realm-763", allocate_with(credentials()[0], text_attr(Attr.REALM, 763), credentials()[2]), 438),
    ("realm-764", allocate_with(credentials()[0], text_attr(Attr.REALM, 764), credentials()[2]), None),
    ("nonce-763", allocate_with(*credentials()[:2], text_attr(Attr.NONCE, 763)), 438),
    ("nonce-764", allocate_with(*credentials()[:2], text_attr(Attr.NONCE, 764)), None),
    ("software-763", raw(text_attr(Attr.SOFTWARE, 763)), SUCCESS),
    ("software-764", raw(text_attr(Attr.SOFTWARE, 764)), None),
    ("error-code-3-bytes", raw(tlv(Attr.ERROR_CODE, b"\0\0\x04")), None),
    ("error-code-in-request-ignored", raw(tlv(Attr.ERROR_CODE, b"\0\0\x04\x00bad")), SUCCESS),
    ("family-3", raw(xor_peer(3, bytes(4)), 0x0008), None),
    ("family-0", raw(xor_peer(0, bytes(4)), 0x0008), None),
    ("ipv6-family-ipv4-length", raw(xor_peer(2, bytes(4)), 0x0008), None),
    ("ipv4-family-ipv6-length", raw(xor_peer(1, bytes(16)), 0x0008), None),
    ("mapped-address-family-3", raw(tlv(Attr.MAPPED_ADDRESS, b"\0\x03\0\x01\x01\x02\x03\x04")), None),
    # case 5: unknown attributes
    ("unknown-required-in-binding", raw(tlv(0x0055, b"x")), 420),
    ("unknown-optional-in-binding", raw(tlv(0xC055, b"x")), SUCCESS),
    ("unknown-required-in-send", message(Method.SEND, [(Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9)),
                                                       (Attr.DATA, b"x"), (0x0055, b"")],
                                         MessageClass.INDICATION), None),
    # case 6: after MESSAGE-INTEGRITY; bad FINGERPRINT
    ("unknown-required-after-integrity", signed_with_tail(tlv(0x0055, b"x")), SUCCESS),
    ("bad-fingerprint", bad_fingerprint(), None),
    ("fingerprint-3-bytes", raw(tlv(Attr.FINGERPRINT, bytes(3))), None),
    # case 7: duplicates
    ("duplicate-software", raw(tlv(Attr.SOFTWARE, b"one") + tlv(Attr.SOFTWARE, b"two")), SUCCESS),
    ("duplicate-unknown-required", raw(tlv(0x0055, b"a") + tlv(0x0055, b"b")), 420),
    # case 8: wrong classes and methods
    ("allocate-indication", message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], MessageClass.INDICATION),
     None),
    ("refresh-indication", message(Method.REFRESH, [], MessageClass.INDICATION), None),
    ("create-permission-indication", message(Method.CREATE_PERMISSION, [], MessageClass.INDICATION), None),
    ("channel-bind-indication", message(Method.CHANNEL_BIND, [], MessageClass.INDICATION), None),
    ("data-indication-from-client", message(Method.DATA, [(Attr.DATA, b"x")], MessageClass.INDICATION), None),
    ("binding-success-response", message(Method.BINDING, [(Attr.XOR_MAPPED_ADDRESS, ("127.0.0.1", 9))],
                                         MessageClass.SUCCESS), None),
    ("binding-error-response", message(Method.BINDING, [(Attr.ERROR_CODE, (400, "x"))], MessageClass.ERROR), None),
    ("allocate-success-response", message(Method.ALLOCATE, [], MessageClass.SUCCESS), None),
    ("allocate-error-response", message(Method.ALLOCATE, [(Attr.ERROR_CODE, (401, "x"))], MessageClass.ERROR),
     None),
    ("send-as-request", message(Method.SEND, [(Attr.DATA, b"x")]), 400),
    ("unknown-method-request", message(0x0FF, []), 400),
    ("unknown-method-indication", message(0x0FF, [], MessageClass.INDICATION), None),
    # case 9: ChannelData
    ("channel-0x3fff", struct.pack("!HH", 0x3FFF, 4) + b"data", None),
    ("channel-0x4000-unknown-five-tuple", struct.pack("!HH", 0x4000, 4) + b"data", None),
    ("channel-0x4fff-unknown-five-tuple", struct.pack("!HH", 0x4FFF, 4) + b"data", None),
    ("channel-0x5000", struct.pack("!HH", 0x5000, 4) + b"data", None),
    ("channel-0x8000", struct.pack("!HH", 0x8000, 4) + b"data", None),
    ("channel-length-beyond-payload", struct.pack("!HH", 0x4000, 400) + b"data", None),
    ("channel-header-only", struct.pack("!HH", 0x4000, 0), None),
]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
async def server(loopback_config: Config) -> AsyncIterator[Server]:
    async with Server(loopback_config, users=USERS) as running:
        yield running


@pytest.fixture
def client() -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


async def exchange(sock: socket.socket, address: tuple[str, int], bad: bytes) -> list[bytes]:
    """Send `bad`, then a Binding; return what arrived before the Binding's answer (which must come)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, bad, address)
    tid = os.urandom(12)
    await loop.sock_sendto(sock, encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid)), address)
    before: list[bytes] = []
    deadline = loop.time() + WAIT
    while True:
        remaining = deadline - loop.time()
        assert remaining > 0, f"no Binding answer after the bad datagram; got {before!r}"
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), remaining)
        if len(data) >= 20 and data[8:20] == tid:
            assert decode_message(data).msg_class is MessageClass.SUCCESS
            return before
        before.append(data)


def assert_no_state(server: Server) -> None:
    core = server.core
    assert core is not None
    assert server.allocation_count() == 0
    assert not core.state.pending
    assert all(not table for table in core.route_table.listeners())


# ------------------------------------------------------------------------------------------------ UDP
@pytest.mark.parametrize(("data", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_security_input_udp_datagram_answered_per_rfc_and_server_survives(
    server: Server, client: socket.socket, data: bytes, expected: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="pyturn"):
        answers = await exchange(client, server.addresses["udp"][0], data)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "internal error while parsing"
    if expected is None:
        assert answers == []
    elif expected == ANY:
        assert len(answers) <= 1
        if answers:
            assert decode_message(answers[0]).msg_class is not MessageClass.SUCCESS or data[0] & 0xC0 == 0
    elif expected == SUCCESS:
        assert len(answers) == 1
        assert decode_message(answers[0]).msg_class is MessageClass.SUCCESS
    else:
        assert len(answers) == 1
        response = decode_message(answers[0])
        assert response.msg_class is MessageClass.ERROR
        assert response.get(Attr.ERROR_CODE)[0] == expected
        if expected == 420:
            assert set(response.get(Attr.UNKNOWN_ATTRIBUTES)) == {0x0055}  # a duplicate may be listed twice
    assert_no_state(server)


async def test_security_input_every_case_back_to_back_on_one_server(server: Server, client: socket.socket) -> None:
    """All malformed datagrams in a burst from one source: still alive, still no state, Binding answered."""
    loop = asyncio.get_running_loop()
    address = server.addresses["udp"][0]
    for _ in range(5):
        for _, data, _ in CASES:
            await loop.sock_sendto(client, data, address)
    while True:  # drain the answers the valid-but-refused cases earned
        try:
            await asyncio.wait_for(loop.sock_recv(client, 65536), 0.2)
        except TimeoutError:
            break
    assert await exchange(client, address, b"") == []
    assert_no_state(server)


async def test_security_input_duplicate_requested_transport_first_wins(server: Server) -> None:
    from interop import MiniTurnClient, TurnRequestFailed

    with MiniTurnClient(server.addresses["udp"][0], "u", "p") as turn:
        with pytest.raises(TurnRequestFailed) as refused:
            await turn.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 99), (Attr.REQUESTED_TRANSPORT, 17))
        assert refused.value.code == 442
    with MiniTurnClient(server.addresses["udp"][0], "u", "p") as turn:
        response = await turn.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17), (Attr.REQUESTED_TRANSPORT, 6))
        assert response.msg_class is MessageClass.SUCCESS


async def test_security_input_unbound_channel_data_with_allocation_is_dropped(server: Server) -> None:
    from interop import MiniTurnClient

    with MiniTurnClient(server.addresses["udp"][0], "u", "p") as turn:
        await turn.allocate()
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(turn.sock, struct.pack("!HH", 0x4001, 4) + b"data", turn.server)
        await asyncio.sleep(0.05)
        assert server.relayed_bytes().to_peer == 0
        assert server.allocation_count() == 1


async def test_security_input_long_username_reaches_401_after_challenge(server: Server) -> None:
    """USERNAME of 763 bytes (the largest a receiver must parse, RFC 8489 §14.3) is parsed and refused 401."""
    from interop import MiniTurnClient, TurnRequestFailed

    with MiniTurnClient(server.addresses["udp"][0], "x" * 763, "p") as turn:
        with pytest.raises(TurnRequestFailed) as refused:
            await turn.allocate()
        assert refused.value.code == 401
    assert long_term_key("x" * 763, "reTurn", "p")  # the key derivation copes with it too


# ------------------------------------------------------------------------------------------ TCP / TLS
async def tcp_binding_works(address: tuple[str, int]) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
    try:
        tid = os.urandom(12)
        writer.write(encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid)))
        await writer.drain()
        data = await asyncio.wait_for(reader.readexactly(20), WAIT)
        length = struct.unpack("!H", data[2:4])[0]
        data += await asyncio.wait_for(reader.readexactly(length), WAIT)
        return decode_message(data).transaction_id == tid
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> tuple[bool, bytes]:
    """(closed by the server within timeout, bytes received before)."""
    received = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while (remaining := deadline - loop.time()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
            if not chunk:
                return True, received
            received += chunk
    except (ConnectionError, TimeoutError) as error:
        return not isinstance(error, TimeoutError), received
    return False, received


STREAM_CASES = [
    # case 4 / 9: a 64 KiB frame (ChannelData of 65535 bytes, 65540 with padding) is beyond any relayable size
    pytest.param(struct.pack("!HH", 0x4000, 0xFFFF) + bytes(0xFFFF), 0.0, id="64KiB-channel-data-frame"),
    pytest.param(header(0x0001, 0xFFFC) + bytes(0xFFFC), 0.0, id="64KiB-stun-frame"),
    pytest.param(b"\xff" * 4096, 0.0, id="garbage-ones"),
    # case 10: HTTP on the STUN port reads as a ChannelData header announcing ~21 KB: never answered, closed by
    # TcpAuthTimeout; so is a TLS ClientHello on the plain TCP port and a slowloris partial frame.
    pytest.param(b"GET / HTTP/1.1\r\nHost: turn\r\n\r\n", 1.0, id="http-get"),
    pytest.param(bytes.fromhex("16030100a5010000a10303") + os.urandom(32), 1.0, id="tls-client-hello-on-tcp"),
    pytest.param(GOOD_BINDING[:19], 1.0, id="slowloris-partial-header"),
    pytest.param(struct.pack("!HH", 0x4000, 400) + b"data", 1.0, id="channel-length-desynchronises-stream"),
]


@pytest.mark.parametrize(("chunk", "auth_timeout"), [p.values for p in STREAM_CASES],
                         ids=[p.id for p in STREAM_CASES])
async def test_security_input_tcp_garbage_is_closed_without_answer(
    loopback_config: Config, chunk: bytes, auth_timeout: float, caplog: pytest.LogCaptureFixture
) -> None:
    config = loopback_config.replace(tcp_auth_timeout=1)
    async with Server(config, users=USERS) as server:
        address = server.addresses["tcp"][0]
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
        try:
            with caplog.at_level(logging.ERROR, logger="pyturn"):
                writer.write(chunk)
                await writer.drain()
                closed, received = await closed_within(reader, auth_timeout + 2.0)
        finally:
            writer.close()
        assert closed, "the server kept the connection"
        assert received == b""
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert await tcp_binding_works(address)
        udp = server.addresses["udp"][0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        try:
            assert await exchange(sock, udp, b"") == []
        finally:
            sock.close()
        assert_no_state(server)
