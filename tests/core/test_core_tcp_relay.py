"""TCP allocations (RFC 6062) in the sans-IO core, on a fake clock: Allocate, Connect, ConnectionBind,
ConnectionAttempt, the 30 s timers, the caps, and every error code the RFC gives them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from turnclient import PEER, Harness, Result, TurnClient, build, make_config

from pyturn.core.actions import (
    AcceptPeer,
    BindDataConnection,
    ClosePeerConnection,
    CloseRelay,
    ConnectPeer,
    OpenRelay,
    RefusePeer,
    SendToClient,
)
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.events import DataConnectionBound
from pyturn.wire.codec import decode_message
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Address, Attr, MessageClass, Method

# The RFC's numbers, written here rather than imported from the code under test.
TCP = 6  # RFC 6062 §6.1: REQUESTED-TRANSPORT for TCP
CONNECT = 0x000A  # RFC 6062 §6.1 methods
CONNECTION_BIND = 0x000B
CONNECTION_ATTEMPT = 0x000C
CONNECTION_ID = 0x002A  # RFC 6062 §6.2.1
TIMEOUT = 30.0  # RFC 6062 §5.2, §5.3
CONTROL: Address = ("203.0.113.10", 40000)
DATA: Address = ("203.0.113.10", 40001)
PEER2: Address = ("198.51.100.8", 6000)


def tcp_client(harness: Harness, transport: Transport = Transport.TCP, *, client: Address = CONTROL,
               username: str = "alice") -> TurnClient:
    return harness.client(username, client=client, transport=transport)


def tcp_allocation(harness: Harness, *peers: Address, transport: Transport = Transport.TCP,
                   family: int | None = None) -> TurnClient:
    """A TCP allocation with permissions for `peers`."""
    client = tcp_client(harness, transport)
    extra = [(Attr.REQUESTED_ADDRESS_FAMILY, family)] if family else []
    result = client.allocate((Attr.LIFETIME, 3600), *extra, transport=TCP)
    assert result.response.msg_class is MessageClass.SUCCESS, result.error_code
    if peers:
        assert client.create_permission(*peers).error_code is None
    return client


def connect(client: TurnClient, peer: Address = PEER) -> Result:
    return client.request(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer)])


def connected(harness: Harness, client: TurnClient, peer: Address = PEER) -> int:
    """Connect, let the fake adapter's connect succeed; the CONNECTION-ID of the success response."""
    started = connect(client, peer).one(ConnectPeer)
    result = Result(harness.core.tcp_relays.peer_connected(started.connection_id, harness.now))
    response = result.response
    assert response.method == CONNECT and response.msg_class is MessageClass.SUCCESS
    connection_id: int = response.get(CONNECTION_ID)
    assert connection_id == started.connection_id
    return connection_id


def bind(harness: Harness, connection_id: int | None, *, client: Address = DATA, username: str = "alice",
         transport: Transport = Transport.TCP) -> Result:
    data = harness.client(username, client=client, transport=transport)
    attrs: list[tuple[int, Any]] = [] if connection_id is None else [(Attr.CONNECTION_ID, connection_id)]
    return data.request(Method.CONNECTION_BIND, attrs)


def accepted(harness: Harness, client: TurnClient, peer: Address = PEER, socket: Any = "socket") -> Result:
    return Result(harness.core.tcp_relays.peer_accepted(client.handle, socket, peer, harness.now))


def tick_at(harness: Harness, seconds: float) -> Result:
    harness.advance(seconds)
    return harness.tick()


# ----------------------------------------------------------------------------------- Allocate (§5.1)
@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_tcp_allocate_on_stream_gets_tcp_relay(transport: Transport) -> None:
    harness = Harness()
    client = tcp_client(harness, transport)
    result = client.allocate(transport=TCP)
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert result.one(OpenRelay).tcp is True
    assert client.allocation.tcp is True
    assert response.has(Attr.XOR_RELAYED_ADDRESS)
    assert not response.has(Attr.RESERVATION_TOKEN)  # §5.1 item 5


def test_udp_allocate_over_tcp_stays_udp() -> None:
    harness = Harness()
    client = tcp_client(harness)
    result = client.allocate(transport=17)
    assert result.one(OpenRelay).tcp is False
    assert client.allocation.tcp is False


def test_tcp_allocate_from_udp_client_gets_400() -> None:
    # RFC 6062 §5.1 item 2: "If the client connection transport is not TCP or TLS ... 400 (Bad Request)".
    harness = Harness()
    client = tcp_client(harness, Transport.UDP)
    result = client.allocate(transport=TCP)
    assert result.error_code == 400
    assert not result.of(OpenRelay)
    assert not harness.core.allocations


@pytest.mark.parametrize("attribute", [
    (Attr.DONT_FRAGMENT, True), (Attr.EVEN_PORT, False), (Attr.RESERVATION_TOKEN, b"12345678"),
], ids=["dont-fragment", "even-port", "reservation-token"])
def test_tcp_allocate_with_udp_only_attribute_gets_400(attribute: tuple[int, Any]) -> None:
    # RFC 6062 §5.1 item 3.
    harness = Harness()
    result = tcp_client(harness).allocate(attribute, transport=TCP)
    assert result.error_code == 400
    assert not result.of(OpenRelay)


def test_other_transport_gets_442_and_tcp_too_when_disabled() -> None:
    # RFC 6062 §5.1 item 1: neither UDP nor TCP -> 442; TcpRelay = false answers TCP as before (RFC 8656 §7.2).
    assert tcp_client(Harness()).allocate(transport=99).error_code == 442
    disabled = Harness(config=make_config(tcp_relay=False))
    assert tcp_client(disabled).allocate(transport=TCP).error_code == 442


# ------------------------------------------------------------------------------------ Connect (§5.2)
def test_connect_opens_peer_connection_and_answers_with_connection_id() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    result = connect(client)
    started = result.one(ConnectPeer)
    assert started.peer == PEER and started.handle is client.handle
    assert not result.of(SendToClient)  # answered once the connect is done
    answer = Result(harness.core.tcp_relays.peer_connected(started.connection_id, harness.now))
    response = answer.response
    assert response.method == 0x000A and response.msg_class is MessageClass.SUCCESS
    assert response.get(0x002A) == started.connection_id
    assert verify_integrity(response, client.key)
    assert answer.one(SendToClient).five_tuple == client.five_tuple


def test_connection_ids_differ() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER, PEER2)
    assert connected(harness, client, PEER) != connected(harness, client, PEER2)


def test_connect_without_permission_gets_403() -> None:
    harness = Harness()
    client = tcp_allocation(harness)
    result = connect(client)
    assert result.error_code == 403
    assert not result.of(ConnectPeer)


@pytest.mark.parametrize("peer", [
    ("127.0.0.1", 80), ("0.0.0.0", 80), ("10.0.0.1", 22), ("169.254.169.254", 80), ("192.168.1.1", 80),
    ("100.64.0.1", 80), ("224.0.0.1", 80), ("255.255.255.255", 80),
])
def test_connect_to_denied_ipv4_gets_403(peer: Address) -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    assert connect(client, peer).error_code == 403


@pytest.mark.parametrize("peer", [
    ("::ffff:127.0.0.1", 80),  # IPv4-mapped
    ("::ffff:0:127.0.0.1", 80),  # IPv4-translated
    ("::127.0.0.1", 80),  # IPv4-compatible
    ("64:ff9b::7f00:1", 80),  # NAT64 well-known prefix
    ("64:ff9b:1::a9fe:a9fe", 80),  # NAT64 local-use prefix, 169.254.169.254
    ("2002:7f00:1::", 80),  # 6to4 of 127.0.0.1
    ("2002:a00:1::1", 22),  # 6to4 of 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", 80),  # Teredo (client 127.0.0.1)
    ("::1", 80), ("::", 80), ("fe80::1", 80), ("fc00::1", 80),
])
def test_connect_to_denied_ipv6_spelling_gets_403(peer: Address) -> None:
    # The RFC 6062 Connect path checks every spelling as CreatePermission does (docs/security.md "Peer policy").
    harness = Harness()
    client = tcp_allocation(harness, family=2)
    assert client.allocation.family == 2
    assert connect(client, peer).error_code == 403


def test_connect_to_other_family_gets_443() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    assert connect(client, ("2001:db8::1", 80)).error_code == 443


@pytest.mark.parametrize("stage", ["connecting", "pending", "bound"])
def test_second_connect_to_same_peer_gets_446(stage: str) -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    if stage == "connecting":
        assert connect(client).of(ConnectPeer)
    else:
        connection_id = connected(harness, client)
        if stage == "bound":
            assert bind(harness, connection_id).error_code is None
    result = connect(client)
    assert result.error_code == 446
    assert result.response.get(Attr.ERROR_CODE)[1] == "Connection Already Exists"
    assert connect(client, (PEER[0], PEER[1] + 1)).of(ConnectPeer)  # another port of the peer is another peer


def test_connect_failure_gets_447() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    started = connect(client).one(ConnectPeer)
    result = Result(harness.core.tcp_relays.peer_connect_failed(started.connection_id, harness.now))
    assert result.error_code == 447
    assert result.response.method == 0x000A
    assert connect(client).of(ConnectPeer)  # the peer may be tried again


def test_connect_not_done_in_30_s_gets_447() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    started = connect(client).one(ConnectPeer)
    assert not tick_at(harness, 29.0).actions
    result = tick_at(harness, 1.0)
    assert result.error_code == 447
    assert result.one(ClosePeerConnection).connection_id == started.connection_id
    # The adapter's late success is refused: the connection is closed.
    late = harness.core.tcp_relays.peer_connected(started.connection_id, harness.now)
    assert late == [ClosePeerConnection(started.connection_id)]


def test_connect_checks() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    assert client.request(Method.CONNECT).error_code == 400  # no XOR-PEER-ADDRESS
    udp = harness.client(client=("203.0.113.11", 1), transport=Transport.TCP)
    assert udp.allocate(transport=17).error_code is None
    assert udp.create_permission(PEER).error_code is None
    assert connect(udp).error_code == 400  # Connect on a UDP allocation
    nobody = harness.client(client=("203.0.113.12", 1), transport=Transport.TCP)
    assert connect(nobody).error_code == 437  # no allocation on this connection
    bob = harness.client("bob", client=CONTROL, transport=Transport.TCP)
    assert connect(bob).error_code == 441  # not the allocation's credentials


# ------------------------------------------------------------------------------- ConnectionBind (§5.4)
def test_connection_bind_joins_data_connection() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    connection_id = connected(harness, client)
    result = bind(harness, connection_id)
    response = result.response
    assert response.method == 0x000B and response.msg_class is MessageClass.SUCCESS
    data_tuple = FiveTuple(Transport.TCP, DATA, client.five_tuple.server)
    assert result.one(BindDataConnection) == BindDataConnection(connection_id, data_tuple)
    assert result.one(DataConnectionBound) == DataConnectionBound(client.five_tuple, connection_id, PEER, data_tuple)
    # The response goes out before the stream turns raw.
    assert isinstance(result.actions[0], SendToClient) and isinstance(result.actions[1], BindDataConnection)
    assert not tick_at(harness, 60.0).of(ClosePeerConnection)  # bound: no timer
    assert bind(harness, connection_id, client=("203.0.113.10", 40002)).error_code == 400  # not pending any more


def test_connection_bind_errors() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    connection_id = connected(harness, client)
    assert bind(harness, None).error_code == 400  # no CONNECTION-ID
    assert bind(harness, connection_id ^ 1).error_code == 400  # no such connection
    assert bind(harness, connection_id, transport=Transport.UDP).error_code == 400  # §5.4: not TCP or TLS
    on_control = client.request(Method.CONNECTION_BIND, [(Attr.CONNECTION_ID, connection_id)])
    assert on_control.error_code == 400  # the control connection is not a data connection
    assert bind(harness, connection_id, username="bob").error_code == 441  # another user's connection
    assert bind(harness, connection_id).error_code is None  # still pending after all that


def test_connection_bind_needs_authentication() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    connection_id = connected(harness, client)
    data = FiveTuple(Transport.TCP, DATA, client.five_tuple.server)
    raw = harness.core.handle_client(
        build(Method.CONNECTION_BIND, [(Attr.CONNECTION_ID, connection_id)]), data, harness.now
    )
    assert Result(raw).error_code == 401
    assert not Result(raw).of(BindDataConnection)


def test_connected_but_unbound_closes_after_30_s() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    connection_id = connected(harness, client)
    assert not tick_at(harness, 29.0).actions
    assert tick_at(harness, 1.0).actions == [ClosePeerConnection(connection_id)]
    assert bind(harness, connection_id).error_code == 400
    assert connect(client).of(ConnectPeer)  # the peer is free again


# --------------------------------------------------------------------------- peer-initiated (§5.3)
def test_peer_connection_with_permission_sends_connection_attempt() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    result = accepted(harness, client)
    adopted = result.one(AcceptPeer)
    assert adopted.connection == "socket" and adopted.handle is client.handle
    send = result.one(SendToClient)
    assert send.five_tuple == client.five_tuple
    indication = decode_message(send.data)
    assert indication.method == 0x000C and indication.msg_class is MessageClass.INDICATION
    assert indication.get(Attr.XOR_PEER_ADDRESS) == PEER
    assert indication.get(0x002A) == adopted.connection_id
    assert bind(harness, adopted.connection_id).one(BindDataConnection).connection_id == adopted.connection_id


def test_peer_connection_without_permission_is_refused() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    assert accepted(harness, client, PEER2).actions == [RefusePeer("socket")]
    assert accepted(harness, client, ("127.0.0.1", 5000)).actions == [RefusePeer("socket")]
    harness.advance(300.0)  # RFC 8656 §9: the permission has lapsed
    assert accepted(harness, client).actions == [RefusePeer("socket")]


def test_peer_connection_not_bound_in_30_s_is_closed() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER)
    connection_id = accepted(harness, client).one(AcceptPeer).connection_id
    harness.advance(29.5)
    assert not harness.tick().actions
    assert tick_at(harness, 0.5).actions == [ClosePeerConnection(connection_id)]
    assert bind(harness, connection_id).error_code == 400


def test_peer_connection_to_udp_or_gone_allocation_is_refused() -> None:
    harness = Harness()
    assert harness.core.tcp_relays.peer_accepted(object(), "socket", PEER, harness.now) == [RefusePeer("socket")]


# ----------------------------------------------------------------------------------------------- caps
def test_per_allocation_cap() -> None:
    harness = Harness(config=make_config(max_tcp_relay_connections_per_allocation=2))
    client = tcp_allocation(harness, PEER, PEER2)
    connected(harness, client, PEER)
    accepted(harness, client, PEER2).one(AcceptPeer)
    assert connect(client, (PEER[0], 1)).error_code == 508
    assert accepted(harness, client, (PEER2[0], 7)).actions == [RefusePeer("socket")]
    other = tcp_allocation_at(harness, ("203.0.113.20", 1), PEER)
    assert connect(other).of(ConnectPeer)  # the cap is per allocation


def test_global_cap() -> None:
    harness = Harness(config=make_config(max_tcp_relay_connections=1))
    client = tcp_allocation(harness, PEER, PEER2)
    connected(harness, client, PEER)
    other = tcp_allocation_at(harness, ("203.0.113.20", 1), PEER)
    assert connect(other).error_code == 508
    assert accepted(harness, other).actions == [RefusePeer("socket")]


def tcp_allocation_at(harness: Harness, address: Address, *peers: Address) -> TurnClient:
    client = tcp_client(harness, client=address)
    assert client.allocate(transport=TCP).error_code is None
    assert client.create_permission(*peers).error_code is None
    return client


# --------------------------------------------------------------------------------- closes (§5.5)
def _three_connections(harness: Harness) -> tuple[TurnClient, set[int]]:
    client = tcp_allocation(harness, PEER, PEER2)
    bound = connected(harness, client, PEER)
    assert bind(harness, bound).error_code is None
    pending = accepted(harness, client, PEER2).one(AcceptPeer).connection_id
    connecting = connect(client, (PEER[0], 9)).one(ConnectPeer).connection_id
    return client, {bound, pending, connecting}


def _closed(result: Result) -> set[int]:
    return {close.connection_id for close in result.of(ClosePeerConnection)}


def test_refresh_zero_closes_every_connection() -> None:
    harness = Harness()
    client, ids = _three_connections(harness)
    result = client.refresh(0)
    assert _closed(result) == ids
    assert result.of(CloseRelay)
    assert len(harness.core.tcp_relays) == 0


def test_control_connection_closed_closes_every_connection() -> None:
    harness = Harness()
    client, ids = _three_connections(harness)
    assert _closed(Result(harness.core.connection_closed(client.five_tuple, harness.now))) == ids
    assert len(harness.core.tcp_relays) == 0


def test_expiry_closes_every_connection() -> None:
    harness = Harness()
    _, ids = _three_connections(harness)
    result = tick_at(harness, 3600.0)
    assert ids <= _closed(result)
    assert len(harness.core.tcp_relays) == 0


def test_data_connection_closed_closes_peer_connection_and_back() -> None:
    harness = Harness()
    client = tcp_allocation(harness, PEER, PEER2)
    first = connected(harness, client, PEER)
    assert bind(harness, first).error_code is None
    data = FiveTuple(Transport.TCP, DATA, client.five_tuple.server)
    assert harness.core.connection_closed(data, harness.now) == [ClosePeerConnection(first)]
    assert client.five_tuple in harness.core.allocations  # the allocation stays
    second = connected(harness, client, PEER2)
    assert harness.core.tcp_relays.peer_closed(second, harness.now) == [ClosePeerConnection(second)]
    assert len(harness.core.tcp_relays) == 0


# ------------------------------------------------------------------------------ any order of events
_STEPS = st.lists(st.tuples(
    st.sampled_from(["connect", "connected", "failed", "accept", "bind", "peer-closed", "data-closed", "tick",
                     "refresh-0", "control-closed", "reallocate"]),
    st.integers(0, 3),
), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_STEPS)
def test_any_order_of_events_keeps_the_tables_consistent(steps: list[tuple[str, int]]) -> None:
    """Whatever the adapter reports in whatever order, the core's tables agree with each other, every connection
    belongs to a live TCP allocation, and nothing is left once the allocation is gone."""
    harness = Harness(config=make_config(max_tcp_relay_connections_per_allocation=3))
    peers = [(PEER[0], 5000 + n) for n in range(4)]
    client = tcp_allocation(harness, PEER)
    relays = harness.core.tcp_relays
    known: list[int] = []
    data_port = 41000
    for step, n in steps:
        if client.five_tuple not in harness.core.allocations:
            if step != "reallocate":
                continue
            client = tcp_allocation(harness, PEER)
        if step == "connect":
            known += [a.connection_id for a in connect(client, peers[n]).of(ConnectPeer)]
        elif step == "accept":
            known += [a.connection_id for a in accepted(harness, client, peers[n]).of(AcceptPeer)]
        elif known:
            connection_id = known[n % len(known)]
            if step == "connected":
                relays.peer_connected(connection_id, harness.now)
            elif step == "failed":
                relays.peer_connect_failed(connection_id, harness.now)
            elif step == "bind":
                data_port += 1
                bind(harness, connection_id, client=(DATA[0], data_port))
            elif step == "peer-closed":
                relays.peer_closed(connection_id, harness.now)
            elif step == "data-closed":
                for five_tuple, connection in list(relays.by_client.items()):
                    if connection.connection_id == connection_id:
                        harness.core.connection_closed(five_tuple, harness.now)
        if step == "tick":
            tick_at(harness, 15.0)
        elif step == "refresh-0":
            client.refresh(0)
        elif step == "control-closed":
            harness.core.connection_closed(client.five_tuple, harness.now)
        live = set(harness.core.allocations.values())
        assert all(connection.allocation in live and connection.allocation.tcp for connection in relays.by_id.values())
        assert all(relays.by_id.get(c.connection_id) is c for c in relays.by_client.values())
        assert len(relays.by_client) == sum(1 for c in relays.by_id.values() if c.client is not None)
        assert len(relays) <= 3
    harness.core.close_all()
    assert len(relays) == 0 and not relays.by_client
