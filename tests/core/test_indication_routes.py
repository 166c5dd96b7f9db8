"""The adapter contract of the indication routes (pyturn.core.routes, docs/architecture.md "Adapter contract"):
Send indications looked up by (client, XOR-PEER-ADDRESS bytes), Data indications built from a per-peer template.

An entry exists only for a peer the core relayed an indication to or from after every check, and goes with the
permission, the allocation or a change of the peer policy. The last test holds the contract to the core itself:
whatever a Send indication looks like, a route found the way the adapter finds one gives exactly what the core does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from turnclient import CLIENT, PEER, SERVER, Harness, TurnClient, build

from pyturn.core.actions import SendToClient, SendToPeer
from pyturn.core.allocation import Transport
from pyturn.core.routes import MAX_LEARNED_PEERS
from pyturn.wire.codec import decode_message
from pyturn.wire.indications import parse_send, peer_attribute
from pyturn.wire.message import Attr, MessageClass, Method

PEER_OTHER_PORT = (PEER[0], 6001)


def _allocated(harness: Harness, *extra: tuple[int, Any]) -> TurnClient:
    client = harness.client()
    assert client.allocate((Attr.LIFETIME, 3600), *extra).response.msg_class is MessageClass.SUCCESS
    return client


def _sends(harness: Harness) -> dict[Any, Any]:
    return harness.core.route_table.sends_for_listener(Transport.UDP, SERVER)


def test_a_relayed_send_indication_installs_both_routes_of_its_peer() -> None:
    harness = Harness()
    sends = _sends(harness)  # fetched before any allocation, as a listener does
    client = _allocated(harness)
    templates = client.allocation.peer_attributes
    client.create_permission(PEER)
    assert sends == {} and templates == {}
    assert client.send_indication(b"first").of(SendToPeer)
    attribute = peer_attribute(PEER)
    assert attribute == bytes.fromhex("0012 0008 0001 329a e721c045")  # 5000 ^ 0x2112, 198.51.100.7 ^ cookie
    assert sends == {(CLIENT, attribute): (client.handle, PEER)}
    assert templates == {PEER: attribute}
    assert _sends(harness) is sends and client.allocation.peer_attributes is templates


def test_a_data_indication_from_a_peer_installs_its_routes_too() -> None:
    harness = Harness()
    client = _allocated(harness)
    client.create_permission(PEER)
    harness.peer(client.handle, b"hello", PEER_OTHER_PORT).one(SendToClient)
    assert client.allocation.peer_attributes == {PEER_OTHER_PORT: peer_attribute(PEER_OTHER_PORT)}
    assert (CLIENT, peer_attribute(PEER_OTHER_PORT)) in _sends(harness)


def test_nothing_is_learned_from_a_dropped_indication() -> None:
    harness = Harness()
    client = _allocated(harness)
    assert client.send_indication(b"x").actions == []  # no permission
    assert harness.peer(client.handle, b"x").actions == []
    client.create_permission(PEER)
    assert client.send_indication(b"x", ("2001:db8::7", 5000)).actions == []  # the other family
    assert _sends(harness) == {} and client.allocation.peer_attributes == {}


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_a_stream_allocation_learns_a_data_template_but_no_send_route(transport: Transport) -> None:
    # Only the UDP listener reads the Send table; a stream's Send indications always take the slow path.
    harness = Harness()
    udp_sends = _sends(harness)
    client = harness.client(transport=transport)
    assert client.allocate((Attr.LIFETIME, 3600)).response.msg_class is MessageClass.SUCCESS
    client.create_permission(PEER)
    assert client.send_indication(b"first").of(SendToPeer)
    assert client.send_indication(b"again").of(SendToPeer)
    assert client.allocation.peer_attributes == {PEER: peer_attribute(PEER)}
    assert udp_sends == {}
    assert harness.core.route_table.sends_for_listener(transport, SERVER) == {}
    client.refresh(0)
    assert udp_sends == {}


def _learned_one(harness: Harness) -> TurnClient:
    client = _allocated(harness)
    client.create_permission(PEER)
    client.send_indication(b"x")
    assert client.allocation.peer_attributes
    return client


def test_routes_go_with_the_permission_at_the_tick_after_its_300_s() -> None:
    harness = Harness()
    client = _learned_one(harness)
    harness.advance(299.0)
    harness.tick()
    assert client.allocation.peer_attributes
    harness.advance(2.0)
    harness.tick()
    assert client.allocation.peer_attributes == {} and _sends(harness) == {}


def test_routes_go_with_the_allocation() -> None:
    harness = Harness()
    _learned_one(harness).refresh(0)
    assert _sends(harness) == {}


def test_routes_go_when_the_peer_policy_changes() -> None:
    harness = Harness()
    client = _learned_one(harness)
    harness.core.set_server_addresses(relay=("198.51.100.7",))  # the peer IP turns out to be one of ours
    assert _sends(harness) == {} and client.allocation.peer_attributes == {}
    assert client.send_indication(b"x").actions == []  # port 5000 is outside the relay range


def test_an_allocation_learns_at_most_max_learned_peers() -> None:
    harness = Harness()
    client = _allocated(harness)
    client.create_permission(PEER)
    for port in range(1, 200):
        assert client.send_indication(b"x", (PEER[0], port)).of(SendToPeer)
    assert MAX_LEARNED_PEERS == 64
    assert len(client.allocation.peer_attributes) == 64 and len(_sends(harness)) == 64


def test_data_indication_transaction_ids_come_from_the_shared_counter() -> None:
    harness = Harness()
    client = _allocated(harness)
    client.create_permission(PEER)
    core = harness.core
    first = decode_message(harness.peer(client.handle, b"x").one(SendToClient).data).transaction_id
    assert first[:4] == core.data_tid_prefix
    following = next(core.data_tids)  # the adapter's fast path takes one
    second = decode_message(harness.peer(client.handle, b"x").one(SendToClient).data).transaction_id
    assert int.from_bytes(second[4:], "big") == following + 1 == int.from_bytes(first[4:], "big") + 2


def test_dont_fragment_is_asked_for_on_a_relay_without_df() -> None:
    # RFC 8656 §11.3: the DF bit for this datagram; the adapter drops it when DF cannot be set
    harness = Harness()
    client = _allocated(harness)
    client.create_permission(PEER)
    attrs = [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DATA, b"x"), (Attr.DONT_FRAGMENT, True)]
    result = client.send_raw(build(Method.SEND, attrs, msg_class=MessageClass.INDICATION))
    assert result.actions == [SendToPeer(client.handle, PEER, b"x", True)]
    with_df = _allocated(Harness(), (Attr.DONT_FRAGMENT, True))  # the relay sets DF on everything already
    with_df.create_permission(PEER)
    result = with_df.send_raw(build(Method.SEND, attrs, msg_class=MessageClass.INDICATION))
    assert result.actions == [SendToPeer(with_df.handle, PEER, b"x", False)]


def _fast_route(harness: Harness, data: bytes, relay_sets_df: bool) -> tuple[Any, Any, bytes] | None:
    """What pyturn.net.udp's fast path does with a datagram, by the contract alone (None: the core decides)."""
    layout = parse_send(data)
    if layout is None:
        return None
    route = _sends(harness).get((CLIENT, layout[0]))
    if route is None or (layout[3] and not relay_sets_df):
        return None
    return route[0], route[1], data[layout[1] : layout[2]]


peers = st.sampled_from(
    [PEER, PEER, PEER_OTHER_PORT, ("198.51.100.8", 5000), ("198.51.100.9", 5000), ("2001:db8::7", 5000),
     ("127.0.0.1", 9)]
)
usual = st.tuples(peers, st.binary(max_size=30), st.booleans()).flatmap(
    lambda drawn: st.permutations([
        (Attr.XOR_PEER_ADDRESS, drawn[0]), (Attr.DATA, drawn[1]), *([(Attr.DONT_FRAGMENT, True)] if drawn[2] else [])
    ])
)
odd = st.lists(
    st.one_of(
        peers.map(lambda peer: (Attr.XOR_PEER_ADDRESS, peer)),
        st.binary(max_size=30).map(lambda data: (Attr.DATA, data)),
        st.just((Attr.DONT_FRAGMENT, True)),
        st.just((Attr.SOFTWARE, "x")),
        st.just((0x0031, b"")),
    ),
    max_size=5,
)
attribute_lists = st.one_of(usual, usual, usual, odd)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(attribute_lists, st.booleans()), min_size=1, max_size=8), st.booleans())
def test_a_route_found_as_the_adapter_finds_one_gives_what_the_core_gives(
    indications: list[tuple[list[tuple[int, Any]], bool]], allocate_with_df: bool
) -> None:
    harness = Harness()
    client = _allocated(harness, *([(Attr.DONT_FRAGMENT, True)] if allocate_with_df else []))
    client.create_permission(PEER, ("198.51.100.8", 1))
    for attrs, fingerprint in indications:
        data = build(Method.SEND, attrs, msg_class=MessageClass.INDICATION, fingerprint=fingerprint)
        fast = _fast_route(harness, data, allocate_with_df)
        actions = harness.core.handle_client(data, client.five_tuple, harness.now)
        if fast is not None:
            assert actions == [SendToPeer(*fast, False)]
