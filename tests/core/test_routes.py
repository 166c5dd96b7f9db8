"""The adapter contract of the fast-path route tables (pyturn.core.routes, docs/architecture.md "Adapter contract").

An adapter fetches ``core.routes(transport, server)`` once per listener or connection and an allocation's
``channel_for_peer`` once per relay socket, then reads them on every packet. These tests hold the core to that:
the same dict objects for good, mutated in place, an entry exactly for a live channel with a live permission.
"""

from __future__ import annotations

from typing import Any

from turnclient import CLIENT, PEER, SERVER, Harness, TurnClient

from pyturn.core.allocation import Transport
from pyturn.core.routes import RouteTable
from pyturn.wire.message import Attr, MessageClass

OTHER_PEER = ("198.51.100.8", 6000)


def _allocated(harness: Harness, **kwargs: Any) -> TurnClient:
    client = harness.client(**kwargs)
    assert client.allocate((Attr.LIFETIME, 3600)).response.msg_class is MessageClass.SUCCESS
    return client


def test_routes_listener_table_is_one_object_for_the_life_of_the_core() -> None:
    harness = Harness()
    table = harness.core.routes(Transport.UDP, SERVER)  # fetched before any allocation, as a listener does
    assert harness.core.routes(Transport.UDP, SERVER) is table
    client = _allocated(harness)
    client.channel_bind(0x4001)
    assert table[(CLIENT, 0x4001)] == (client.handle, PEER)
    client.refresh(0)  # the allocation goes: its entries go, the table stays
    assert table == {}
    assert harness.core.routes(Transport.UDP, SERVER) is table


def test_routes_tables_of_listening_addresses_are_separate() -> None:
    harness = Harness()
    client = _allocated(harness)
    client.channel_bind(0x4001)
    assert harness.core.routes(Transport.UDP, ("192.0.2.2", 3478)) == {}
    assert harness.core.routes(Transport.TCP, SERVER) == {}


def test_routes_channel_for_peer_is_mutated_in_place_never_rebound() -> None:
    harness = Harness()
    client = _allocated(harness)
    peers = client.allocation.channel_for_peer  # fetched once, as a relay endpoint does
    client.channel_bind(0x4001)
    client.channel_bind(0x4002, OTHER_PEER)
    assert peers == {PEER: 0x4001, OTHER_PEER: 0x4002}
    client.channel_bind(0x4001)  # a refresh rewrites the entries in the same dict
    assert client.allocation.channel_for_peer is peers
    harness.advance(601.0)  # past the 600 s channel lifetime (RFC 8656 §12) and the 300 s permission
    harness.tick()
    assert client.allocation.channel_for_peer is peers
    assert peers == {}


def test_routes_entry_lasts_until_the_tick_after_expiry() -> None:
    harness = Harness()
    table = harness.core.routes(Transport.UDP, SERVER)
    client = _allocated(harness)
    client.channel_bind(0x4001)
    harness.advance(299.0)
    harness.tick()
    assert (CLIENT, 0x4001) in table
    harness.advance(2.0)  # the permission (300 s) has lapsed: the tick removes the route
    harness.tick()
    assert (CLIENT, 0x4001) not in table
    assert client.allocation.channel_for_peer == {}


def test_routes_entry_needs_a_live_permission_for_the_peer_ip() -> None:
    harness = Harness()
    table = harness.core.routes(Transport.UDP, SERVER)
    client = _allocated(harness)
    client.channel_bind(0x4001)
    harness.advance(200.0)
    client.create_permission(PEER)  # the permission now lasts to t=500, the channel to t=600
    harness.advance(250.0)
    harness.tick()
    assert table[(CLIENT, 0x4001)] == (client.handle, PEER)
    harness.advance(60.0)  # t=510: the channel is still bound, its permission lapsed
    harness.tick()
    assert (CLIENT, 0x4001) not in table


def test_routes_route_table_alone() -> None:
    routes = RouteTable()
    table = routes.for_listener(Transport.UDP, SERVER)
    assert routes.for_listener(Transport.UDP, SERVER) is table
    assert list(routes.listeners()) == [table]
