"""RFC details, bytes in and bytes out; each test names the section it checks.

Core tests drive TurnServerCore through the fake adapter (tests/support/turnclient.py); the ones marked "production
path" run a real in-process server on loopback sockets.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import struct
from collections.abc import Iterator

import pytest
from interop import LOOPBACK, PASSWORD, USERNAME, MiniTurnClient, TurnRequestFailed
from requirements import require, require_module
from turnclient import PEER, Harness, TurnClient, make_config, new_tid

import pyturn.net.runtime
from pyturn.core.actions import OpenRelay, RelayFailure, SendToPeer
from pyturn.errors import StunDecodeError
from pyturn.server import Server, loopback_config
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Attr, Message, MessageClass, Method

MAGIC_COOKIE = 0x2112A442
ALLOCATE_REQUEST, CREATE_PERMISSION_REQUEST, CHANNEL_BIND_REQUEST = 0x0003, 0x0008, 0x0009
ALLOCATE_ERROR, CHANNEL_BIND_ERROR = 0x0113, 0x0119
REQUESTED_TRANSPORT, XOR_PEER_ADDRESS, CHANNEL_NUMBER, DONT_FRAGMENT = 0x0019, 0x0012, 0x000C, 0x001A
WAIT = 5.0


def tlv(attr: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr, len(value)) + value + b"\0" * (-len(value) % 4)


def signed_raw(client: TurnClient, msg_type: int, attributes: bytes, *, key: bytes | None = None) -> bytes:
    """A request whose attributes are raw bytes (so values can be malformed), with the client's USERNAME, REALM,
    NONCE and a MESSAGE-INTEGRITY computed here (RFC 8489 §14.5: HMAC-SHA1 over the header, length included)."""
    assert client.nonce is not None and client.realm is not None
    body = attributes + tlv(0x0006, client.username.encode()) + tlv(0x0014, client.realm.encode())
    body += tlv(0x0015, client.nonce.encode())
    header = struct.pack("!HHI12s", msg_type, len(body) + 24, MAGIC_COOKIE, new_tid())
    mac = hmac.new(key if key is not None else client.key, header + body, "sha1").digest()
    return header + body + struct.pack("!HH", 0x0008, 20) + mac


def unsigned_raw(msg_type: int, attributes: bytes) -> bytes:
    return struct.pack("!HHI12s", msg_type, len(attributes), MAGIC_COOKIE, new_tid()) + attributes


def message_type(data: bytes) -> int:
    value: int = struct.unpack_from("!H", data)[0]
    return value


def xor_peer(family: int, port: int, address: bytes) -> bytes:
    return tlv(XOR_PEER_ADDRESS, struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + address)


# ----------------------------------------------------------------- malformed known attributes -> 400
@pytest.mark.parametrize("value", [bytes([17, 0]), bytes([17, 0, 0, 0, 0, 0, 0, 0]), b""],
                         ids=["2-bytes", "8-bytes", "empty"])
def test_rfc8656_s7_2_requested_transport_of_wrong_length_gets_400(value: bytes) -> None:
    """RFC 8656 §7.2: a missing or malformed REQUESTED-TRANSPORT is rejected with 400 (Bad Request)."""
    harness = Harness()
    client = harness.client()
    client.challenge()
    result = client.send_raw(signed_raw(client, ALLOCATE_REQUEST, tlv(REQUESTED_TRANSPORT, value)))
    assert message_type(result.sent[0]) == ALLOCATE_ERROR
    assert result.error_code == 400
    assert verify_integrity(result.response, client.key)
    assert not result.of(OpenRelay) and not harness.core.allocations


def test_rfc8656_s7_2_malformed_requested_transport_unauthenticated_stays_unanswered() -> None:
    """RFC 8489 §6.3: without authentication a malformed request is dropped (no reflection of garbage)."""
    harness = Harness()
    client = harness.client()
    client.challenge()
    malformed = tlv(REQUESTED_TRANSPORT, bytes([17, 0]))
    assert client.send_raw(unsigned_raw(ALLOCATE_REQUEST, malformed)).actions == []
    wrong_key = signed_raw(client, ALLOCATE_REQUEST, malformed, key=b"\x00" * 16)
    assert client.send_raw(wrong_key).actions == []
    # the same request well formed is answered as usual (the small 401 without credentials)
    well_formed = unsigned_raw(ALLOCATE_REQUEST, tlv(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])))
    assert client.send_raw(well_formed).error_code == 401


@pytest.mark.parametrize(
    ("msg_type", "attributes"),
    [
        # RFC 8656 §9.2: "if any of these attributes are invalid, then a 400 (Bad Request) error is returned"
        pytest.param(CREATE_PERMISSION_REQUEST, xor_peer(3, 5000, bytes([198, 51, 100, 7])), id="s9.2-peer-family-3"),
        pytest.param(CREATE_PERMISSION_REQUEST, xor_peer(1, 5000, bytes(16)), id="s9.2-peer-ipv4-16-bytes"),
        # RFC 8656 §11.2: CHANNEL-NUMBER is 4 bytes (number and RFFU)
        pytest.param(CHANNEL_BIND_REQUEST, tlv(CHANNEL_NUMBER, b"\x40\x00") + xor_peer(1, 5000, bytes(4)),
                     id="s11.2-channel-number-2-bytes"),
    ],
)
def test_rfc8656_known_attribute_with_invalid_value_in_authenticated_request_gets_400(
    msg_type: int, attributes: bytes
) -> None:
    harness = Harness()
    client = harness.client()
    assert client.allocate().error_code is None
    result = client.send_raw(signed_raw(client, msg_type, attributes))
    assert message_type(result.sent[0]) == msg_type | 0x0110  # the method's error response
    assert result.error_code == 400
    assert verify_integrity(result.response, client.key)
    assert not client.allocation.permissions and not client.allocation.channels


# ------------------------------------------------------------------------------------ channel range
@pytest.mark.parametrize("channel", [0x5000, 0x6000, 0x7FFF, 0x3FFF])
def test_rfc8656_s12_channel_bind_outside_0x4000_0x4fff_gets_400(channel: int) -> None:
    """RFC 8656 §12: channel numbers are 0x4000-0x4FFF (0x5000-0xFFFF reserved); §11.2: otherwise 400."""
    harness = Harness()
    client = harness.client()
    client.allocate()
    result = client.send_raw(signed_raw(client, CHANNEL_BIND_REQUEST, tlv(CHANNEL_NUMBER, struct.pack(
        "!HH", channel, 0)) + xor_peer(1, PEER[1], bytes([198, 51, 100, 7]))))
    assert message_type(result.sent[0]) == CHANNEL_BIND_ERROR
    assert result.error_code == 400
    assert not client.allocation.channels


def test_rfc8656_s12_channel_0x4fff_is_the_last_valid_one() -> None:
    harness = Harness()
    client = harness.client()
    client.allocate()
    assert client.channel_bind(0x4FFF).error_code is None
    assert harness.send(struct.pack("!HH", 0x4FFF, 2) + b"hi", client.five_tuple).of(SendToPeer)
    # ChannelData with a reserved number is dropped, whatever is bound (RFC 8656 §12.4)
    assert harness.send(struct.pack("!HH", 0x5FFF, 2) + b"hi", client.five_tuple).actions == []


async def test_rfc8656_s12_channel_data_outside_the_range_is_not_relayed_on_the_fast_path() -> None:
    """Production path: a real server relays ChannelData 0x4000 and drops the same bytes on 0x5000."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((LOOPBACK, 0))
        peer.setblocking(False)
        async with Server(loopback_config(), users={USERNAME: PASSWORD}, transports=("udp",)) as server:
            with MiniTurnClient(server.addresses["udp"][0]) as client:
                await client.allocate()
                await client.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, 0x4000),
                                     (Attr.XOR_PEER_ADDRESS, peer.getsockname()))
                with pytest.raises(TurnRequestFailed) as refused:
                    await client.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, 0x5000),
                                         (Attr.XOR_PEER_ADDRESS, peer.getsockname()))
                assert refused.value.code == 400
                loop = asyncio.get_running_loop()
                for number in range(20):
                    channel = 0x4000 if number % 2 else 0x5000
                    client.sock.sendto(struct.pack("!HH", channel, 2) + bytes([channel >> 8, number]), client.server)
                received: list[bytes] = []
                deadline = loop.time() + 1.0
                while loop.time() < deadline and len(received) < 10:
                    try:
                        received.append(peer.recv(100))
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                try:
                    received.append(peer.recv(100))
                except BlockingIOError:
                    pass
    assert sorted(received) == [bytes([0x40, number]) for number in range(1, 20, 2)]


# ----------------------------------------------------------------------------------------- capacity
def test_rfc8656_s7_2_max_allocations_gets_508_and_the_user_quota_486() -> None:
    """RFC 8656 §7.2: 486 (Allocation Quota Reached) is per user; a server out of capacity answers 508."""
    harness = Harness(make_config(max_allocations=3, max_allocations_per_user=2))
    assert harness.client("alice", client=("203.0.113.1", 1)).allocate().error_code is None
    assert harness.client("alice", client=("203.0.113.1", 2)).allocate().error_code is None
    quota = harness.client("alice", client=("203.0.113.1", 3)).allocate()
    assert quota.error_code == 486 and message_type(quota.sent[0]) == ALLOCATE_ERROR
    assert harness.client("bob", client=("203.0.113.1", 4)).allocate().error_code is None
    full = harness.client("bob", client=("203.0.113.1", 5))  # bob is within his quota
    result = full.allocate()
    assert result.error_code == 508
    assert result.response.get(Attr.ERROR_CODE)[1] == "Insufficient Capacity"
    assert verify_integrity(result.response, full.key)


# ------------------------------------------------------------------------------- retransmissions
@pytest.mark.parametrize("later", [15.0, 31.5, 39.5])
def test_rfc8489_s6_3_1_retransmitted_allocate_gets_the_same_success(later: float) -> None:
    """RFC 8489 §6.3.1: answers are kept ~40 s (Ti = 39.5 s), so a late retransmission gets the first answer,
    not 437. With the default RTO, retransmissions come at 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s."""
    harness = Harness()
    client = harness.client()
    client.challenge()
    data = client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    first = client.send_raw(data)
    assert first.error_code is None
    harness.advance(later)
    harness.tick()
    again = client.send_raw(data)
    assert again.sent == first.sent  # byte for byte
    assert len(harness.opened) == 1


# ----------------------------------------------------------------------------------- DONT-FRAGMENT
def test_rfc8656_s7_2_dont_fragment_that_cannot_be_set_gets_420() -> None:
    """RFC 8656 §7.2: a DONT-FRAGMENT the server cannot honour is answered like an unknown comprehension-required
    attribute: 420 with UNKNOWN-ATTRIBUTES listing it. The adapter reports the failure (RelayFailure)."""
    harness = Harness(auto_open=False)
    client = harness.client()
    result = client.allocate((Attr.DONT_FRAGMENT, True))
    opening = result.one(OpenRelay)
    assert opening.dont_fragment
    failed = harness.settle(harness.core.relay_failed(opening.token, RelayFailure.DONT_FRAGMENT, harness.now))
    assert message_type(failed.sent[0]) == ALLOCATE_ERROR
    assert failed.error_code == 420
    assert failed.response.get(Attr.UNKNOWN_ATTRIBUTES) == (DONT_FRAGMENT,)
    assert verify_integrity(failed.response, client.key)
    assert not harness.core.allocations and harness.core.ports.in_use == 0


async def test_rfc8656_s7_2_dont_fragment_setsockopt_failure_gets_420_on_a_real_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Production path: the adapter's setsockopt fails (forced here), the relay socket is closed, 420 comes."""
    async with Server(loopback_config(), users={USERNAME: PASSWORD}, transports=("udp",)) as server:
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            assert await client.allocate((Attr.DONT_FRAGMENT, True))  # Linux honours DF on loopback
            await client.refresh(0)
        monkeypatch.setattr(pyturn.net.runtime, "set_dont_fragment", lambda sock, family: False)
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            with pytest.raises(TurnRequestFailed) as refused:
                await client.allocate((Attr.DONT_FRAGMENT, True))
            assert refused.value.code == 420
            assert refused.value.response.get(Attr.UNKNOWN_ATTRIBUTES) == (DONT_FRAGMENT,)
            assert await client.allocate()  # without DONT-FRAGMENT the same client is served
        assert server.allocation_count() == 1
        assert server._runtime is not None and len(server._runtime.relays) == 1


# -------------------------------------------------------------------------------- log throttling
@pytest.fixture
def tcp_client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield sock
    sock.close()


async def test_internal_error_per_datagram_is_logged_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tcp_client: socket.socket
) -> None:
    """Bad input never floods the log: a datagram or frame that makes the core raise is dropped, counted, and
    logged with its traceback at most once per interval (10 s), over UDP and TCP alike."""
    async with Server(loopback_config(), users={USERNAME: PASSWORD}, transports=("udp", "tcp")) as server:
        assert server.core is not None and server._runtime is not None

        def broken(*_: object) -> list[object]:
            raise RuntimeError("a bug one packet type triggers")

        monkeypatch.setattr(server.core, "handle_client", broken)
        binding = encode_message(Message(Method.BINDING, MessageClass.REQUEST, new_tid()))
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.ERROR, logger="pyturn"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for _ in range(50):
                    udp.sendto(binding, server.addresses["udp"][0])
            tcp_client.setblocking(False)
            await loop.sock_connect(tcp_client, server.addresses["tcp"][0])
            await loop.sock_sendall(tcp_client, binding * 50)
            deadline = loop.time() + WAIT
            while server._runtime.internal_errors.total < 100 and loop.time() < deadline:
                await asyncio.sleep(0.02)
        assert server._runtime.internal_errors.total == 100
        errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert errors[0].exc_info is not None and "a bug one packet type triggers" in caplog.text
        # the server still answers once the bug is gone
        monkeypatch.undo()
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            assert await client.allocate()


def test_decoder_keeps_the_types_of_known_attributes_that_did_not_parse() -> None:
    """The server's decoding mode records malformed known attributes instead of failing the whole message."""
    data = unsigned_raw(ALLOCATE_REQUEST, tlv(REQUESTED_TRANSPORT, bytes([17, 0])) + tlv(0x000D, bytes(4)))
    with pytest.raises(StunDecodeError):
        decode_message(data)
    message = decode_message(data, keep_invalid=True)
    assert message.invalid_attributes == (REQUESTED_TRANSPORT,)
    assert message.get(Attr.REQUESTED_TRANSPORT) is None and message.get(Attr.LIFETIME) == 0


def test_legacy_channel_numbers_accepts_the_rfc5766_range_only_when_asked() -> None:
    """LegacyChannelNumbers = true: 0x5000-0x7FFF as RFC 5766 §11 allowed (coturn's clients pick them)."""
    harness = Harness(make_config(legacy_channel_numbers=True))
    client = harness.client()
    client.allocate()
    assert client.channel_bind(0x7FFF).error_code is None
    assert harness.send(struct.pack("!HH", 0x7FFF, 2) + b"hi", client.five_tuple).of(SendToPeer)
    assert client.channel_bind(0x8000, ("198.51.100.9", 1)).error_code == 400


# ------------------------------------------------------------------------------------- test policy
@pytest.mark.parametrize("value", ["true", "1", "True", "TRUE", "yes"])
def test_require_fails_under_ci_in_any_casing(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception):
        require(False, "a tool this test needs")
    require(True, "present: nothing happens")


@pytest.mark.parametrize("value", [None, "", "0", "false", "False"])
def test_require_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        require(False, "a tool this test needs")
    with pytest.raises(pytest.skip.Exception):
        require_module("no_such_package_pyturn_tests")
