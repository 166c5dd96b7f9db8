"""TurnServerCore: dual allocations (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY, ADDRESS-ERROR-CODE): one Allocate, an
IPv4 and an IPv6 relay; permissions, channels and data per family; Refresh of one family (§7.3)."""

from __future__ import annotations

from typing import Any

import pytest
from turnclient import CLIENT, PEER, Harness, RelayHandle, TurnClient, make_config

from pyturn.core.actions import CloseRelay, OpenRelay, RelayFailure, SendToClient, SendToPeer
from pyturn.core.events import AllocationDeleted
from pyturn.wire.codec import decode_message
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Attr, MessageClass, Method

RELAY_V6 = "2001:db8::200"
PEER_V6 = ("2001:db8::7", 6000)
IPV6 = (Attr.ADDITIONAL_ADDRESS_FAMILY, 0x02)  # RFC 8656 §14.1 family values: 0x01 IPv4, 0x02 IPv6


def dual_harness(**changes: Any) -> Harness:
    return Harness(make_config(relay_v6_address=RELAY_V6, **changes))


def dual(harness: Harness) -> TurnClient:
    client = harness.client()
    result = client.allocate(IPV6)
    assert result.response.msg_class is MessageClass.SUCCESS, result.actions
    return client


# ------------------------------------------------------------------------------------------------ Allocate
def test_dual_allocate_gets_two_relayed_addresses() -> None:
    harness = dual_harness()
    client = harness.client()
    result = client.allocate(IPV6)
    response = result.response
    opened = result.of(OpenRelay)
    assert [action.family for action in opened] == [1, 2]
    assert opened[1].host == RELAY_V6
    relayed = response.get_all(Attr.XOR_RELAYED_ADDRESS)
    assert relayed == [("192.0.2.1", opened[0].port), (RELAY_V6, opened[1].port)]
    assert response.get(Attr.LIFETIME) == 600
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert not response.has(Attr.ADDRESS_ERROR_CODE)
    assert verify_integrity(response, client.key)
    allocation = client.allocation
    assert allocation.has_family(1) and allocation.has_family(2)
    assert harness.core.allocation_for_handle(allocation.extra_handle) is allocation


@pytest.mark.parametrize(
    "attrs",
    [
        pytest.param([(Attr.ADDITIONAL_ADDRESS_FAMILY, 0x01)], id="additional-ipv4"),
        pytest.param([IPV6, (Attr.REQUESTED_ADDRESS_FAMILY, 0x01)], id="with-requested-family"),
        pytest.param([IPV6, (Attr.RESERVATION_TOKEN, b"12345678")], id="with-reservation-token"),
        pytest.param([IPV6, (Attr.EVEN_PORT, True)], id="with-even-port-r"),
    ],
)
def test_dual_allocate_bad_combinations_are_400(attrs: list[tuple[int, Any]]) -> None:
    # RFC 8656 §7.2 steps 5, 6, 8 and 9.
    harness = dual_harness()
    result = harness.client().allocate(*attrs)
    assert result.error_code == 400
    assert not result.of(OpenRelay)
    assert not harness.core.allocations


def test_dual_allocate_with_even_port_without_r() -> None:
    harness = dual_harness()
    result = harness.client().allocate(IPV6, (Attr.EVEN_PORT, False))
    assert len(result.response.get_all(Attr.XOR_RELAYED_ADDRESS)) == 2
    assert result.of(OpenRelay)[0].port % 2 == 0


def test_dual_allocate_ipv6_unavailable_grants_ipv4_with_address_error_code_440() -> None:
    harness = dual_harness()
    harness.auto_open = False
    client = harness.client()
    first = client.allocate(IPV6).one(OpenRelay)
    second = harness.settle(harness.core.relay_opened(first.token, RelayHandle(first.host, first.port),
                                                      (first.host, first.port), harness.now))
    v6 = second.one(OpenRelay)
    assert v6.family == 2 and not second.of(SendToClient)  # no answer until the second relay is settled
    result = harness.settle(harness.core.relay_failed(v6.token, RelayFailure.FAMILY_UNAVAILABLE, harness.now))
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert response.get_all(Attr.XOR_RELAYED_ADDRESS) == [(first.host, first.port)]
    assert response.get(Attr.ADDRESS_ERROR_CODE) == (0x02, 440, "Address Family not Supported")
    allocation = client.allocation
    assert not allocation.has_family(2)
    assert client.create_permission(PEER_V6).error_code == 443  # the family has no relay


def test_dual_allocate_ipv6_ports_taken_grants_ipv4_with_address_error_code_508() -> None:
    harness = dual_harness(allocation_port_range_min=50000, allocation_port_range_max=50001)
    harness.busy_ports = {50000, 50001}
    harness.auto_open = False
    client = harness.client()
    first = client.allocate(IPV6).one(OpenRelay)
    pending = harness.core.relay_opened(first.token, RelayHandle(first.host, first.port), (first.host, first.port),
                                        harness.now)
    # Every IPv6 bind fails with the port in use: the range is walked, then IPv4 alone is granted.
    result = harness.settle(pending)
    for _ in range(4):
        opens = result.of(OpenRelay)
        if not opens:
            break
        result = harness.settle(harness.core.relay_failed(opens[-1].token, RelayFailure.PORT_IN_USE, harness.now))
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert len(response.get_all(Attr.XOR_RELAYED_ADDRESS)) == 1
    assert response.get(Attr.ADDRESS_ERROR_CODE)[:2] == (0x02, 508)


# ---------------------------------------------------------------------------------- permissions and data
def test_dual_permissions_for_peers_of_both_families() -> None:
    harness = dual_harness()
    client = dual(harness)
    assert client.create_permission(PEER).error_code is None
    assert client.create_permission(PEER_V6).error_code is None
    assert set(client.allocation.permissions) == {PEER[0], PEER_V6[0]}


def test_dual_send_indication_leaves_from_the_relay_of_the_peer_family() -> None:
    harness = dual_harness()
    client = dual(harness)
    client.create_permission(PEER, PEER_V6)
    allocation = client.allocation
    (v4,) = client.send_indication(b"to v4", PEER).of(SendToPeer)
    (v6,) = client.send_indication(b"to v6", PEER_V6).of(SendToPeer)
    assert (v4.handle, v4.peer) == (allocation.relay_handle, PEER)
    assert (v6.handle, v6.peer) == (allocation.extra_handle, PEER_V6)


def test_dual_learned_send_routes_follow_the_relays() -> None:
    # The Send indication fast path learns IPv4 peers only (pyturn.wire.indications): their route names the IPv4
    # relay, and goes when that relay is dropped (RFC 8656 §7.3).
    harness = dual_harness()
    client = dual(harness)
    client.create_permission(PEER, PEER_V6)
    client.send_indication(b"to v4", PEER)
    client.send_indication(b"to v6", PEER_V6)
    allocation = client.allocation
    sends = harness.core.route_table.sends_for_listener(client.five_tuple.transport, client.five_tuple.server)
    assert list(sends.values()) == [(allocation.relay_handle, PEER)]
    client.request(Method.REFRESH, [(Attr.LIFETIME, 0), (Attr.REQUESTED_ADDRESS_FAMILY, 0x01)])
    assert not sends
    (v6,) = client.send_indication(b"still v6", PEER_V6).of(SendToPeer)
    assert v6.handle is allocation.relay_handle  # the IPv6 relay, now the allocation's only one


def test_dual_channels_route_through_the_relay_of_the_peer_family() -> None:
    harness = dual_harness()
    client = dual(harness)
    assert client.channel_bind(0x4000, PEER).error_code is None
    assert client.channel_bind(0x4001, PEER_V6).error_code is None
    allocation = client.allocation
    routes = harness.core.routes(client.five_tuple.transport, client.five_tuple.server)
    assert routes[(CLIENT, 0x4000)] == (allocation.relay_handle, PEER)
    assert routes[(CLIENT, 0x4001)] == (allocation.extra_handle, PEER_V6)
    # Data from the IPv6 peer arrives at the IPv6 relay and reaches the client on its channel.
    (sent,) = harness.peer(allocation.extra_handle, b"from v6", PEER_V6).of(SendToClient)
    assert sent.data[:2] == b"\x40\x01" and sent.data.endswith(b"from v6")


def test_dual_peer_data_needs_a_permission_on_either_relay() -> None:
    harness = dual_harness()
    client = dual(harness)
    allocation = client.allocation
    assert not harness.peer(allocation.extra_handle, b"no permission", PEER_V6).actions
    client.create_permission(PEER_V6)
    (indication,) = harness.peer(allocation.extra_handle, b"permitted", PEER_V6).of(SendToClient)
    message = decode_message(indication.data)
    assert message.method == Method.DATA and message.get(Attr.XOR_PEER_ADDRESS) == PEER_V6


# --------------------------------------------------------------------------------------- Refresh, deletion
def test_dual_refresh_one_family_to_zero_keeps_the_other() -> None:
    # RFC 8656 §7.1/§7.3: REQUESTED-ADDRESS-FAMILY in a Refresh of a dual allocation names the family it is about.
    harness = dual_harness()
    client = dual(harness)
    client.channel_bind(0x4001, PEER_V6)
    allocation = client.allocation
    extra = allocation.extra_handle
    result = client.request(Method.REFRESH, [(Attr.LIFETIME, 0), (Attr.REQUESTED_ADDRESS_FAMILY, 0x02)])
    assert result.response.msg_class is MessageClass.SUCCESS
    assert result.response.get(Attr.LIFETIME) == 0
    assert [action.handle for action in result.of(CloseRelay)] == [extra]
    assert not result.of(AllocationDeleted)
    assert harness.core.allocations[client.five_tuple] is allocation
    assert not allocation.has_family(2) and harness.core.allocation_for_handle(extra) is None
    routes = harness.core.routes(client.five_tuple.transport, client.five_tuple.server)
    assert (CLIENT, 0x4001) not in routes
    assert client.create_permission(PEER_V6).error_code == 443
    assert client.request(Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, 0x02)]).error_code == 443
    assert client.create_permission(PEER).error_code is None


def test_dual_refresh_ipv4_to_zero_keeps_the_ipv6_relay() -> None:
    harness = dual_harness()
    client = dual(harness)
    allocation = client.allocation
    first, extra = allocation.relay_handle, allocation.extra_handle
    result = client.request(Method.REFRESH, [(Attr.LIFETIME, 0), (Attr.REQUESTED_ADDRESS_FAMILY, 0x01)])
    assert [action.handle for action in result.of(CloseRelay)] == [first]
    assert allocation.relay_handle is extra and allocation.family == 2
    assert client.create_permission(PEER).error_code == 443
    assert client.create_permission(PEER_V6).error_code is None


def test_dual_refresh_without_family_applies_to_both() -> None:
    harness = dual_harness()
    client = dual(harness)
    allocation = client.allocation
    handles = {allocation.relay_handle, allocation.extra_handle}
    assert client.refresh(1200).response.get(Attr.LIFETIME) == 1200
    result = client.refresh(0)
    assert {action.handle for action in result.of(CloseRelay)} == handles
    assert result.one(AllocationDeleted).reason == "refresh"
    assert not harness.core.allocations
    assert harness.core.ports.in_use == 0


def test_dual_expiry_closes_both_relays_and_frees_both_ports() -> None:
    harness = dual_harness()
    client = dual(harness)
    allocation = client.allocation
    handles = {allocation.relay_handle, allocation.extra_handle}
    assert harness.core.ports.in_use == 2
    harness.advance(601)
    result = harness.tick()
    assert {action.handle for action in result.of(CloseRelay)} == handles
    assert result.one(AllocationDeleted).reason == "expired"
    assert harness.core.ports.in_use == 0
    assert all(harness.core.allocation_for_handle(handle) is None for handle in handles)


def test_dual_allocate_with_the_draft_codepoint_coturn_sends() -> None:
    # coturn 4.6's turnutils_uclient -Z sends ADDITIONAL-ADDRESS-FAMILY at draft-ietf-tram-turnbis' 0x8032; a
    # partial grant is then reported at the draft's ADDRESS-ERROR-CODE 0x8033.
    harness = dual_harness()
    result = harness.client().allocate((Attr.ADDITIONAL_ADDRESS_FAMILY_OLD, 0x02))
    assert [action.family for action in result.of(OpenRelay)] == [1, 2]
    assert len(result.response.get_all(Attr.XOR_RELAYED_ADDRESS)) == 2
    harness.auto_open = False
    client = harness.client(client=("203.0.113.11", 40001))
    first = client.allocate((0x8032, 0x02)).one(OpenRelay)
    second = harness.core.relay_opened(first.token, RelayHandle(first.host, first.port), (first.host, first.port),
                                       harness.now)
    (v6,) = [action for action in second if isinstance(action, OpenRelay)]
    response = harness.settle(harness.core.relay_failed(v6.token, RelayFailure.FAMILY_UNAVAILABLE,
                                                        harness.now)).response
    assert response.get(0x8033) == (0x02, 440, "Address Family not Supported")
    assert not response.has(Attr.ADDRESS_ERROR_CODE)
