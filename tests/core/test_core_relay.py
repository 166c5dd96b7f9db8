"""TurnServerCore: permissions (RFC 8656 §9), channels (§12), Send/Data and ChannelData, RFC 5780 Binding."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
from turnclient import CLIENT, PEER, SERVER, Harness, Result, TurnClient, build, make_config, new_tid

from pyturn.core.actions import SendFrom, SendToClient, SendToPeer
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationRefreshed,
    AuthFailed,
    ChannelBound,
    PermissionInstalled,
)
from pyturn.wire.codec import decode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Attr, MessageClass, Method

# The RFC's numbers, written here rather than imported from the code under test.
PERMISSION_LIFETIME = 300.0  # RFC 8656 §9: a permission lasts 300 s
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12: a channel binding lasts 10 minutes
PEER2 = ("198.51.100.8", 6000)
PEER_SAME_IP = (PEER[0], 5001)


def allocated(harness: Harness, **kwargs: Any) -> TurnClient:
    """An allocation that outlives every permission and channel in these tests."""
    client = harness.client(**kwargs)
    assert client.allocate((Attr.LIFETIME, 3600)).response.msg_class is MessageClass.SUCCESS
    return client


# ----------------------------------------------------------------------------------- CreatePermission
def test_core_relay_create_permission_installs_permission() -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.create_permission(PEER)
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert response.method == Method.CREATE_PERMISSION
    assert verify_integrity(response, client.key)
    assert result.one(PermissionInstalled) == PermissionInstalled(client.five_tuple, PEER[0])
    assert client.allocation.permissions == {PEER[0]: harness.now + PERMISSION_LIFETIME}


def test_core_relay_create_permission_without_peer_gets_400() -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.create_permission()
    assert result.error_code == 400
    assert not result.response.has(Attr.XOR_MAPPED_ADDRESS)  # only Allocate answers carry it
    assert not client.allocation.permissions


def test_core_relay_create_permission_without_allocation_gets_437() -> None:
    harness = Harness()
    five_tuple = FiveTuple(Transport.UDP, CLIENT, SERVER)
    result = harness.send(build(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, PEER)]), five_tuple)
    assert result.error_code == 437


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(("127.0.0.1", 9), id="loopback"),
        pytest.param(("169.254.169.254", 80), id="metadata"),
        pytest.param(("0.0.0.0", 9), id="unspecified"),
        pytest.param(("224.0.0.1", 9), id="multicast"),
    ],
)
def test_core_relay_create_permission_denied_peer_gets_403(peer: tuple[str, int]) -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.create_permission(peer)
    assert result.error_code == 403
    assert verify_integrity(result.response, client.key)
    assert not client.allocation.permissions


def test_core_relay_create_permission_denied_v4_mapped_loopback_on_v6_allocation() -> None:
    harness = Harness()
    client = harness.client()
    client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, 2))
    assert client.create_permission(("::ffff:127.0.0.1", 9)).error_code == 403
    assert client.create_permission(("::1", 9)).error_code == 403
    assert client.create_permission(("2001:db8::99", 9)).error_code is None


def test_core_relay_create_permission_allowed_loopback_by_config() -> None:
    harness = Harness(make_config(allowed_peer_addresses=(ip_network("127.0.0.0/8"),)))
    client = allocated(harness)
    assert client.create_permission(("127.0.0.1", 9)).error_code is None


def test_core_relay_create_permission_denied_by_config() -> None:
    harness = Harness(make_config(denied_peer_addresses=(ip_network("198.51.100.0/24"),)))
    client = allocated(harness)
    assert client.create_permission(PEER).error_code == 403


def test_core_relay_channel_bind_to_a_server_address_outside_the_relay_range_denied() -> None:
    harness = Harness()
    harness.core.set_server_addresses({"198.51.100.7"})
    client = allocated(harness)
    assert client.create_permission(PEER).error_code is None  # an IP only: every port of it (RFC 8656 §9)
    assert client.channel_bind(0x4000, PEER).error_code == 403  # port 5000: not a relay of this server
    assert client.channel_bind(0x4000, ("198.51.100.7", 50001)).error_code is None


@pytest.mark.parametrize(
    ("family", "peer"),
    [pytest.param(1, ("2001:db8::9", 9), id="v6-peer-on-v4"), pytest.param(2, PEER, id="v4-peer-on-v6")],
)
def test_core_relay_create_permission_family_mismatch_gets_443(family: int, peer: tuple[str, int]) -> None:
    harness = Harness()
    client = harness.client()
    client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, family))
    result = client.create_permission(peer)
    assert result.error_code == 443
    assert not client.allocation.permissions


def test_core_relay_create_permission_several_peers() -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.create_permission(PEER, PEER2, PEER_SAME_IP)
    assert result.response.msg_class is MessageClass.SUCCESS
    assert set(client.allocation.permissions) == {PEER[0], PEER2[0]}
    assert [event.ip for event in result.of(PermissionInstalled)] == [PEER[0], PEER2[0]]


def test_core_relay_create_permission_one_denied_peer_fails_the_whole_request() -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.create_permission(PEER, ("127.0.0.1", 9), PEER2)
    assert result.error_code == 403
    assert not result.of(PermissionInstalled)
    assert not client.allocation.permissions


def test_core_relay_create_permission_one_mismatched_family_fails_the_whole_request() -> None:
    harness = Harness()
    client = allocated(harness)
    assert client.create_permission(PEER, ("2001:db8::9", 9)).error_code == 443
    assert not client.allocation.permissions


def test_core_relay_create_permission_refresh_extends_and_emits_no_event() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER)
    harness.advance(200)
    result = client.create_permission(PEER)
    assert not result.of(PermissionInstalled)
    assert client.allocation.permissions[PEER[0]] == harness.now + PERMISSION_LIFETIME
    harness.advance(200)  # 400 s after the first, 200 s after the refresh
    harness.tick()
    assert harness.peer(client.handle, b"x").of(SendToClient)


def test_core_relay_permission_expires_at_300_seconds() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER)
    start = harness.now
    handle = client.handle
    harness.now = start + PERMISSION_LIFETIME - 0.001
    assert harness.peer(handle, b"in").of(SendToClient)
    assert client.send_indication(b"out").of(SendToPeer)
    harness.tick()
    assert PEER[0] in client.allocation.permissions
    harness.now = start + PERMISSION_LIFETIME
    # expired even before the tick runs ...
    assert harness.peer(handle, b"in").actions == []
    assert client.send_indication(b"out").actions == []
    # ... and removed by it
    harness.tick()
    assert PEER[0] not in client.allocation.permissions
    assert harness.peer(handle, b"in").actions == []


# ------------------------------------------------------------------------------------------ ChannelBind
def test_core_relay_channel_bind_success() -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.channel_bind(0x4000)
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert response.method == Method.CHANNEL_BIND
    assert not response.has(Attr.CHANNEL_NUMBER)
    assert verify_integrity(response, client.key)
    assert result.one(ChannelBound) == ChannelBound(client.five_tuple, 0x4000, PEER)
    assert result.one(PermissionInstalled) == PermissionInstalled(client.five_tuple, PEER[0])


def test_core_relay_channel_bind_installs_permission_and_routes() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4001)
    allocation = client.allocation
    assert allocation.has_permission(PEER[0], harness.now)
    routes = harness.core.routes(Transport.UDP, SERVER)
    assert routes[(CLIENT, 0x4001)] == (client.handle, PEER)
    assert allocation.channel_for_peer[PEER] == 0x4001


@pytest.mark.parametrize(
    "attrs",
    [
        pytest.param([(Attr.XOR_PEER_ADDRESS, PEER)], id="no-channel"),
        pytest.param([(Attr.CHANNEL_NUMBER, 0x4000)], id="no-peer"),
        pytest.param([], id="neither"),
    ],
)
def test_core_relay_channel_bind_missing_attributes_gets_400(attrs: list[tuple[int, Any]]) -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.request(Method.CHANNEL_BIND, attrs)
    assert result.error_code == 400
    assert verify_integrity(result.response, client.key)
    assert not client.allocation.channels


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        pytest.param(0x0000, 400, id="0x0000"),
        pytest.param(0x3FFF, 400, id="0x3FFF"),
        pytest.param(0x4000, None, id="0x4000"),
        pytest.param(0x4FFF, None, id="0x4FFF"),
        # RFC 8656 §12: 0x5000-0xFFFF are reserved (RFC 5766 allowed up to 0x7FFF; RFC 8656 supersedes it)
        pytest.param(0x5000, 400, id="0x5000-reserved"),
        pytest.param(0x7FFF, 400, id="0x7FFF-reserved"),
        pytest.param(0x8000, 400, id="0x8000"),
        pytest.param(0xFFFF, 400, id="0xFFFF"),
    ],
)
def test_core_relay_channel_bind_channel_range(channel: int, code: int | None) -> None:
    """RFC 8656 §11.2/§12: ChannelBind outside 0x4000-0x4FFF gets 400."""
    harness = Harness()
    client = allocated(harness)
    result = client.channel_bind(channel)
    assert result.error_code == code
    assert (channel in client.allocation.channels) is (code is None)


def test_core_relay_channel_bind_channel_to_another_peer_gets_400() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000, PEER)
    assert client.channel_bind(0x4000, PEER2).error_code == 400
    assert client.channel_bind(0x4000, PEER_SAME_IP).error_code == 400  # another port is another peer
    assert client.allocation.channels[0x4000].peer == PEER
    assert PEER2[0] not in client.allocation.permissions


def test_core_relay_channel_bind_peer_to_another_channel_gets_400() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000, PEER)
    assert client.channel_bind(0x4001, PEER).error_code == 400
    assert set(client.allocation.channels) == {0x4000}


def test_core_relay_channel_bind_two_ports_of_one_ip_get_two_channels() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000, PEER)
    client.channel_bind(0x4001, PEER_SAME_IP)
    assert client.allocation.channel_for_peer == {PEER: 0x4000, PEER_SAME_IP: 0x4001}


def test_core_relay_channel_bind_denied_peer_gets_403() -> None:
    harness = Harness()
    client = allocated(harness)
    assert client.channel_bind(0x4000, ("127.0.0.1", 9)).error_code == 403
    assert not client.allocation.channels


def test_core_relay_channel_bind_family_mismatch_gets_443() -> None:
    harness = Harness()
    client = allocated(harness)
    assert client.channel_bind(0x4000, ("2001:db8::9", 9)).error_code == 443


def test_core_relay_channel_rebind_same_pair_refreshes() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000)
    harness.advance(500)
    result = client.channel_bind(0x4000)
    assert result.response.msg_class is MessageClass.SUCCESS
    assert not result.of(ChannelBound)
    assert not result.of(PermissionInstalled)  # refreshed, not new
    binding = client.allocation.channels[0x4000]
    assert binding.expires == harness.now + CHANNEL_LIFETIME
    assert client.allocation.permissions[PEER[0]] == harness.now + PERMISSION_LIFETIME
    harness.advance(200)  # 700 s after the first bind
    harness.tick()
    assert harness.core.routes(Transport.UDP, SERVER)[(CLIENT, 0x4000)] == (client.handle, PEER)


def _keep_permission(client: TurnClient, harness: Harness, until: float) -> None:
    while harness.now + 250 < until:
        harness.advance(250)
        client.create_permission(PEER)
        harness.tick()


def test_core_relay_channel_expires_at_600_seconds() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000)
    start = harness.now
    handle = client.handle
    _keep_permission(client, harness, start + CHANNEL_LIFETIME)
    harness.now = start + CHANNEL_LIFETIME - 0.001
    harness.tick()
    routes = harness.core.routes(Transport.UDP, SERVER)
    assert (CLIENT, 0x4000) in routes
    assert harness.send(encode_channel_data(0x4000, b"x"), client.five_tuple).of(SendToPeer)
    harness.now = start + CHANNEL_LIFETIME
    # the slow path refuses an expired channel before the tick ...
    assert harness.send(encode_channel_data(0x4000, b"x"), client.five_tuple).actions == []
    harness.tick()
    # ... and the tick removes it from every table
    assert (CLIENT, 0x4000) not in routes
    assert 0x4000 not in client.allocation.channels
    assert PEER not in client.allocation.channel_for_peer
    # the permission survived: peer data now comes as a Data indication
    message = decode_message(harness.peer(handle, b"hi").one(SendToClient).data)
    assert message.method == Method.DATA
    # and the channel number can be bound again, even to another peer (no quarantine in reTurn)
    assert client.channel_bind(0x4000, PEER2).error_code is None


def test_core_relay_expired_channel_leaves_no_route_behind() -> None:
    """Regression: the expired channel's fast-path entry used to survive its allocation."""
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000)
    _keep_permission(client, harness, harness.now + CHANNEL_LIFETIME)
    harness.advance(CHANNEL_LIFETIME)
    harness.tick()
    client.refresh(0)
    assert harness.core.routes(Transport.UDP, SERVER) == {}


def test_core_relay_channel_route_removed_when_permission_expires() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000)
    start = harness.now
    routes = harness.core.routes(Transport.UDP, SERVER)
    harness.now = start + PERMISSION_LIFETIME - 0.001
    harness.tick()
    assert routes[(CLIENT, 0x4000)] == (client.handle, PEER)
    harness.now = start + PERMISSION_LIFETIME
    harness.tick()
    assert (CLIENT, 0x4000) not in routes
    assert PEER not in client.allocation.channel_for_peer
    assert 0x4000 in client.allocation.channels  # the binding itself lives on
    assert harness.send(encode_channel_data(0x4000, b"x"), client.five_tuple).actions == []
    assert harness.peer(client.handle, b"x").actions == []
    # a new permission brings the route back
    client.create_permission(PEER)
    assert routes[(CLIENT, 0x4000)] == (client.handle, PEER)
    assert client.allocation.channel_for_peer[PEER] == 0x4000


def test_core_relay_routes_removed_when_allocation_deleted() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000)
    client.channel_bind(0x4001, PEER2)
    routes = harness.core.routes(Transport.UDP, SERVER)
    assert len(routes) == 2
    client.refresh(0)
    assert routes == {}


def test_core_relay_routes_are_per_listening_address() -> None:
    harness = Harness()
    udp = allocated(harness)
    tcp = allocated(harness, transport=Transport.TCP)
    udp.channel_bind(0x4000)
    tcp.channel_bind(0x4000)
    assert harness.core.routes(Transport.UDP, SERVER)[(CLIENT, 0x4000)][0] == udp.handle
    assert harness.core.routes(Transport.TCP, SERVER)[(CLIENT, 0x4000)][0] == tcp.handle


# ------------------------------------------------------------------------------------------- Send / Data
def test_core_relay_send_indication_with_permission() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER)
    result = client.send_indication(b"hello peer", PEER_SAME_IP)  # the permission covers any port
    assert result.actions == [SendToPeer(client.handle, PEER_SAME_IP, b"hello peer")]


def test_core_relay_send_indication_without_permission_is_dropped() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER2)
    assert client.send_indication(b"x", PEER).actions == []


def test_core_relay_send_indication_without_allocation_is_dropped() -> None:
    harness = Harness()
    client = harness.client()
    assert client.send_indication(b"x").actions == []


@pytest.mark.parametrize(
    "attrs",
    [
        pytest.param([(Attr.XOR_PEER_ADDRESS, PEER)], id="no-data"),
        pytest.param([(Attr.DATA, b"x")], id="no-peer"),
        pytest.param([(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"x"), (0x0031, b"")], id="unknown-required"),
        pytest.param([(Attr.XOR_PEER_ADDRESS, ("2001:db8::9", 9)), (Attr.DATA, b"x")], id="other-family"),
    ],
)
def test_core_relay_send_indication_malformed_is_dropped(attrs: list[tuple[int, Any]]) -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER)
    assert client.send_raw(build(Method.SEND, attrs, msg_class=MessageClass.INDICATION)).actions == []


def test_core_relay_send_indication_with_empty_data() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER)
    assert client.send_indication(b"").actions == [SendToPeer(client.handle, PEER, b"")]


def test_core_relay_peer_data_without_channel_is_a_data_indication() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER)
    result = harness.peer(client.handle, b"hello client")
    send = result.one(SendToClient)
    assert send.five_tuple == client.five_tuple
    message = decode_message(send.data)
    assert message.method == Method.DATA
    assert message.msg_class is MessageClass.INDICATION
    assert message.get(Attr.XOR_PEER_ADDRESS) == PEER
    assert message.get(Attr.DATA) == b"hello client"
    assert message.integrity_offset is None
    assert not message.has_fingerprint


def test_core_relay_data_indications_get_distinct_transaction_ids() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER)
    tids = {decode_message(harness.peer(client.handle, b"x").one(SendToClient).data).transaction_id for _ in range(5)}
    assert len(tids) == 5


def test_core_relay_peer_data_from_unpermitted_peer_is_dropped() -> None:
    harness = Harness()
    client = allocated(harness)
    client.create_permission(PEER2)
    assert harness.peer(client.handle, b"x", PEER).actions == []


def test_core_relay_peer_data_on_unknown_handle_is_dropped() -> None:
    harness = Harness()
    assert harness.peer(object(), b"x").actions == []


@pytest.mark.parametrize(
    ("transport", "padding", "payload", "expected_size"),
    [
        pytest.param(Transport.UDP, True, b"abcde", 9, id="udp-unpadded"),
        pytest.param(Transport.TCP, True, b"abcde", 12, id="tcp-padded"),
        pytest.param(Transport.TLS, True, b"abcde", 12, id="tls-padded"),
        pytest.param(Transport.TCP, True, b"abcd", 8, id="tcp-aligned"),
        pytest.param(Transport.TCP, False, b"abcde", 9, id="tcp-reTurn-unpadded"),
    ],
)
def test_core_relay_peer_data_with_channel_is_channel_data(
    transport: Transport, padding: bool, payload: bytes, expected_size: int
) -> None:
    harness = Harness(make_config(tcp_channel_data_padding=padding))
    client = allocated(harness, transport=transport)
    client.channel_bind(0x4abc)
    send = harness.peer(client.handle, payload).one(SendToClient)
    assert send.five_tuple == client.five_tuple
    assert len(send.data) == expected_size
    assert decode_channel_data(send.data) == (0x4ABC, payload)
    assert send.data[4 + len(payload) :] == b"\x00" * (expected_size - 4 - len(payload))


def test_core_relay_peer_data_from_other_port_of_bound_ip_is_a_data_indication() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000, PEER)
    message = decode_message(harness.peer(client.handle, b"x", PEER_SAME_IP).one(SendToClient).data)
    assert message.get(Attr.XOR_PEER_ADDRESS) == PEER_SAME_IP


def test_core_relay_channel_data_slow_path_sends_exactly_length_bytes() -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000)
    data = encode_channel_data(0x4000, b"payload") + b"\x00trailing junk"
    assert harness.send(data, client.five_tuple).actions == [SendToPeer(client.handle, PEER, b"payload")]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_channel_data(0x4001, b"x"), id="unbound-channel"),
        pytest.param(b"\x40\x00\x00\x08abc", id="shorter-than-length"),
        pytest.param(b"\x40\x00", id="half-header"),
    ],
)
def test_core_relay_channel_data_slow_path_drops_bad_frames(data: bytes) -> None:
    harness = Harness()
    client = allocated(harness)
    client.channel_bind(0x4000)
    assert harness.send(data, client.five_tuple).actions == []


def test_core_relay_channel_data_without_allocation_is_dropped() -> None:
    harness = Harness()
    five_tuple = FiveTuple(Transport.UDP, CLIENT, SERVER)
    assert harness.send(encode_channel_data(0x4000, b"x"), five_tuple).actions == []


# ------------------------------------------------------------------------------------------------ events
def test_core_relay_lifecycle_events() -> None:
    harness = Harness()
    client = harness.client()
    created = client.allocate().one(AllocationCreated)
    assert created.five_tuple == client.five_tuple
    assert created.username == "alice"
    relayed = client.relayed
    assert client.refresh(700).one(AllocationRefreshed) == AllocationRefreshed(client.five_tuple, 700)
    assert client.create_permission(PEER2).one(PermissionInstalled).ip == PEER2[0]
    bound = client.channel_bind(0x4000)
    assert bound.one(ChannelBound) == ChannelBound(client.five_tuple, 0x4000, PEER)
    assert bound.one(PermissionInstalled) == PermissionInstalled(client.five_tuple, PEER[0])
    wrong = harness.client("alice", "nope")
    wrong.realm, wrong.nonce = client.realm, client.nonce
    failed = wrong.send_raw(wrong.signed(Method.REFRESH, [(Attr.LIFETIME, 0)]))
    assert failed.one(AuthFailed) == AuthFailed(client.five_tuple, 401, "alice", "bad_integrity")
    assert client.refresh(0).one(AllocationDeleted) == AllocationDeleted(client.five_tuple, "alice", relayed, "refresh")


# ---------------------------------------------------------------------------------- RFC 5780 alternate
PRIMARY = ("127.0.0.1", 3478)
OTHER = ("127.0.0.2", 3479)
ALT_CLIENT = ("127.0.0.9", 40000)


def alternate_harness() -> Harness:
    harness = Harness()
    harness.core.set_alternate(PRIMARY, OTHER)
    return harness


def change_request(flags: int, *, classic: bool = False, here: tuple[str, int] = PRIMARY) -> Result:
    harness = alternate_harness()
    data = build(Method.BINDING, [(Attr.CHANGE_REQUEST, flags)], tid=new_tid(classic))
    return harness.send(data, FiveTuple(Transport.UDP, ALT_CLIENT, here))


@pytest.mark.parametrize(
    ("flags", "source"),
    [
        pytest.param(0x00, PRIMARY, id="none"),
        pytest.param(0x02, ("127.0.0.1", 3479), id="port"),
        pytest.param(0x04, ("127.0.0.2", 3478), id="ip"),
        pytest.param(0x06, OTHER, id="ip-and-port"),
    ],
)
@pytest.mark.parametrize("classic", [pytest.param(False, id="rfc5389"), pytest.param(True, id="rfc3489")])
def test_core_relay_binding_change_request_picks_the_source(flags: int, source: Any, classic: bool) -> None:
    result = change_request(flags, classic=classic)
    send = result.one(SendFrom)
    assert send.source == source
    assert send.destination == ALT_CLIENT
    response = decode_message(send.data)
    assert response.msg_class is MessageClass.SUCCESS
    if classic:
        assert response.get(Attr.SOURCE_ADDRESS) == source
        assert response.get(Attr.CHANGED_ADDRESS) == OTHER
        assert response.get(Attr.MAPPED_ADDRESS) == ALT_CLIENT
        assert not response.has(Attr.RESPONSE_ORIGIN)
    else:
        assert response.get(Attr.RESPONSE_ORIGIN) == source
        assert response.get(Attr.OTHER_ADDRESS) == OTHER
        assert response.get(Attr.XOR_MAPPED_ADDRESS) == ALT_CLIENT
        assert not response.has(Attr.SOURCE_ADDRESS)


@pytest.mark.parametrize(
    ("here", "flags", "source", "other"),
    [
        pytest.param(OTHER, 0x06, PRIMARY, PRIMARY, id="from-other-both"),
        pytest.param(OTHER, 0x02, ("127.0.0.2", 3478), PRIMARY, id="from-other-port"),
        pytest.param(("127.0.0.2", 3478), 0x04, PRIMARY, ("127.0.0.1", 3479), id="from-mixed-ip"),
    ],
)
def test_core_relay_binding_change_request_from_alternate_sockets(
    here: Any, flags: int, source: Any, other: Any
) -> None:
    send = change_request(flags, here=here).one(SendFrom)
    assert send.source == source
    assert decode_message(send.data).get(Attr.OTHER_ADDRESS) == other


def test_core_relay_binding_without_alternate_ignores_change_request() -> None:
    harness = Harness()
    five_tuple = FiveTuple(Transport.UDP, ALT_CLIENT, PRIMARY)
    result = harness.send(build(Method.BINDING, [(Attr.CHANGE_REQUEST, 0x06)]), five_tuple)
    assert result.one(SendToClient).five_tuple == five_tuple
    assert not result.response.has(Attr.OTHER_ADDRESS)


def test_core_relay_binding_alternate_not_used_on_tcp() -> None:
    harness = alternate_harness()
    five_tuple = FiveTuple(Transport.TCP, ALT_CLIENT, PRIMARY)
    result = harness.send(build(Method.BINDING, [(Attr.CHANGE_REQUEST, 0x06)]), five_tuple)
    assert result.one(SendToClient).five_tuple == five_tuple
    assert not result.response.has(Attr.OTHER_ADDRESS)


def test_core_relay_binding_alternate_not_used_on_other_listeners() -> None:
    harness = alternate_harness()
    five_tuple = FiveTuple(Transport.UDP, ALT_CLIENT, ("127.0.0.3", 3478))
    result = harness.send(build(Method.BINDING, [(Attr.CHANGE_REQUEST, 0x06)]), five_tuple)
    assert result.of(SendToClient)
    assert not result.of(SendFrom)


@pytest.mark.parametrize(
    ("target", "destination", "reflected"),
    [
        pytest.param(("192.0.2.99", 5000), ALT_CLIENT, False, id="other-ip-ignored"),
        pytest.param((ALT_CLIENT[0], 5000), (ALT_CLIENT[0], 5000), True, id="same-ip-honoured"),
    ],
)
def test_core_relay_binding_response_address(target: Any, destination: Any, reflected: bool) -> None:
    harness = alternate_harness()
    data = build(Method.BINDING, [(Attr.RESPONSE_ADDRESS, target)], tid=new_tid(classic=True))
    send = harness.send(data, FiveTuple(Transport.UDP, ALT_CLIENT, PRIMARY)).one(SendFrom)
    assert send.destination == destination
    response = decode_message(send.data)
    assert response.has(Attr.REFLECTED_FROM) is reflected
    if reflected:
        assert response.get(Attr.REFLECTED_FROM) == ALT_CLIENT


def test_core_relay_binding_response_port() -> None:
    harness = alternate_harness()
    data = build(Method.BINDING, [(Attr.RESPONSE_PORT, 6000)])
    send = harness.send(data, FiveTuple(Transport.UDP, ALT_CLIENT, PRIMARY)).one(SendFrom)
    assert send.destination == (ALT_CLIENT[0], 6000)
