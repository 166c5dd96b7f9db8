"""Chromium restarts ICE through an embedded pyturn the test steers: after expire_allocations(), and onto a second
server when the first one goes away (docs/testing.md "A forced ICE restart", "Failover between two TURN servers").

aiortc cannot restart ICE (docs/testing.md), so the browser shows it: two pages in one headless Chromium, relay-only,
a data channel between them, the SDP carried by the test. The servers come from the `turn_servers` factory but are
started inside the deployment's namespace (conftest.py `namespaced_turn_servers`): Chromium ignores loopback
interfaces, so a server on 127.0.0.1 would get no request from it.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from chromium import ICE_DOWN, ICE_UP, Address, BrowserCall, Chromium, sdp_candidates
from handbook import Deployment
from netns import ALT_STUN_ADDRESS, TURN_ADDRESS, udp_binding

from pyturn import AllocationCreated
from pyturn.testing import TurnServerFixture
from pyturn.wire.message import Attr

pytestmark = pytest.mark.deploy

DOWN_TIMEOUT_MS = 40_000  # "disconnected" came after about 6 s here; "failed" at consent expiry, 30 s (RFC 7675 §5.1)
NEW_PAIR_TIMEOUT = 20.0


def _ice_servers(server: TurnServerFixture) -> list[list[dict[str, Any]]]:
    return [server.ice_servers(transports=("udp",))] * 2  # both users share the factory's generated one


def _relayed(server: TurnServerFixture, after: int = 0) -> set[Address]:
    """The relayed addresses of the allocations the server created (from its `after`-th event on)."""
    return {tuple(event.relayed) for event in server.events[after:] if isinstance(event, AllocationCreated)}


def _local_relays(call: BrowserCall) -> list[Address]:
    """Each page's relayed candidate in its selected pair (checked to be a working relay/relay pair)."""
    return [local for local, _ in call.relay_pairs()]


def _wait_for_new_pairs(call: BrowserCall, old: list[Address]) -> list[Address]:
    """After a restart ICE reports 'connected' as soon as a pair works; wait (bounded) until both pages have
    selected a working one on other relayed candidates than before."""
    deadline = time.monotonic() + NEW_PAIR_TIMEOUT
    while True:
        pairs = call.selected_pairs()
        if all(pair is not None and pair["state"] == "succeeded" and
               (pair["local"]["address"], pair["local"]["port"]) not in old for pair in pairs):
            return [local for local, _ in call.relay_pairs(pairs)]
        assert time.monotonic() < deadline, (pairs, old, call.ice_states())
        time.sleep(0.2)


def test_namespaced_turn_servers_serve_inside_the_namespace(
    deployment: Deployment, namespaced_turn_servers: Callable[..., TurnServerFixture]
) -> None:
    server = namespaced_turn_servers()
    ((host, port),) = server.addresses["udp"]
    assert host == TURN_ADDRESS
    with deployment.namespace.socket() as probe:
        answer = udp_binding(probe, (host, port), 2.0)
    assert answer is not None and answer.get(Attr.XOR_MAPPED_ADDRESS)[0] == TURN_ADDRESS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, pytest.raises(OSError) as refused:
        outside.bind((TURN_ADDRESS, 0))  # the host's own namespace has no such address: the server's is the netns
    assert refused.value.errno == errno.EADDRNOTAVAIL
    assert server.allocation_count() == 0 and server.expire_allocations() == 0  # steered from this thread


def test_chromium_ice_restart_after_expire_allocations(
    chromium_in_namespace: Chromium, namespaced_turn_servers: Callable[..., TurnServerFixture]
) -> None:
    server = namespaced_turn_servers()
    with BrowserCall(chromium_in_namespace, _ice_servers(server)) as call:
        call.connect()
        assert call.exchange(["before"]) == [["pong before"], ["ping before"]]
        before = _local_relays(call)
        assert set(before) <= _relayed(server), (before, server.events)

        mark = len(server.events)
        started = time.monotonic()
        assert server.expire_allocations() == 2  # both users' allocations, as if their lifetime ran out
        call.wait_for_ice(ICE_DOWN, DOWN_TIMEOUT_MS)  # the browsers notice: their checks go unanswered
        noticed = time.monotonic() - started

        offer, answer = call.restart_ice()  # the caller's restartIce(); the callee restarts on the new offer
        for sdp in (offer, answer):
            assert sdp_candidates(sdp) and all(" typ relay " in line for line in sdp_candidates(sdp)), sdp
        call.wait_for_ice(ICE_UP)
        after = _wait_for_new_pairs(call, before)
        created = _relayed(server, mark)
        assert len(created) >= 2 and set(after) <= created, (after, created)  # NEW allocations carry the call
        assert call.exchange(["after"]) == [["pong after"], ["ping after"]]  # the same data channel
        print(f"ICE down {noticed:.1f} s after expire_allocations(); states {call.ice_states()}")


def test_chromium_ice_restart_fails_over_to_the_second_server(
    chromium_in_namespace: Chromium, namespaced_turn_servers: Callable[..., TurnServerFixture]
) -> None:
    primary = namespaced_turn_servers(TURN_ADDRESS)
    backup = namespaced_turn_servers(ALT_STUN_ADDRESS)  # another address of the same host: another server
    with BrowserCall(chromium_in_namespace, _ice_servers(primary)) as call:
        call.connect()
        assert call.exchange(["before"]) == [["pong before"], ["ping before"]]
        before = _local_relays(call)
        assert {address for address, _ in before} == {TURN_ADDRESS}

        primary.server.stop()  # the primary goes away (its allocations with it)
        call.wait_for_ice(ICE_DOWN, DOWN_TIMEOUT_MS)
        call.use_servers(_ice_servers(backup))  # setConfiguration() with the backup, then restart ICE
        call.restart_ice()
        call.wait_for_ice(ICE_UP)
        after = _wait_for_new_pairs(call, before)
        assert {address for address, _ in after} == {ALT_STUN_ADDRESS}
        assert set(after) <= _relayed(backup) and len(_relayed(backup)) >= 2
        assert call.exchange(["after"]) == [["pong after"], ["ping after"]]
