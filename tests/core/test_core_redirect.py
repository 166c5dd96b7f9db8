"""300 Try Alternate (RFC 8489 §10, §14.15, §14.16; RFC 8656 §7.2) from the sans-IO core, bytes in and out.

The core redirects an authenticated Allocate while draining or at capacity, never to itself, at most once per
client (the loop guard: a nonce marked "redirected" by a peer sharing the nonce secret), and answers 508 when no
alternate fits. Literal values: ERROR-CODE 300 is class 3 number 0, ALTERNATE-SERVER is 0x8023, ALTERNATE-DOMAIN
0x8003, MESSAGE-INTEGRITY 0x0008.
"""

from __future__ import annotations

import struct

from turnclient import CLIENT, SERVER, Harness, TurnClient, make_config

from pyturn.core.allocation import Transport
from pyturn.core.events import AllocationRedirected
from pyturn.wire.integrity import verify_integrity
from pyturn.wire.message import Attr, MessageClass, Method

ALT_V4 = ("198.51.100.20", 3478)
ALT_V6 = ("2001:db8::20", 3478)
CLIENT_V6 = ("2001:db8:1::10", 40000)
SERVER_V6 = ("2001:db8::19", 3478)


def _attributes(raw: bytes) -> dict[int, bytes]:
    """Type -> value of every attribute of an encoded STUN message (first occurrence)."""
    found: dict[int, bytes] = {}
    offset = 20
    while offset + 4 <= len(raw):
        kind, length = struct.unpack_from("!HH", raw, offset)
        found.setdefault(kind, raw[offset + 4:offset + 4 + length])
        offset += 4 + length + (-length % 4)
    return found


def _plain_ipv4(value: bytes) -> tuple[str, int]:
    """ALTERNATE-SERVER is a plain (not XORed) address attribute: family, port, address."""
    family, port = struct.unpack_from("!xBH", value)
    assert family == 0x01
    return ".".join(str(b) for b in value[4:8]), port


def _redirecting(**changes: object) -> Harness:
    return Harness(config=make_config(alternate_servers=(ALT_V4, ALT_V6), **changes))


def test_draining_allocate_gets_authenticated_300_naming_the_alternate() -> None:
    harness = _redirecting()
    harness.core.draining = True
    client = harness.client()
    result = client.allocate()
    raw = result.sent[0]
    assert raw[0:2] == b"\x01\x13"  # Allocate error response
    attributes = _attributes(raw)
    assert attributes[0x0009][2:4] == b"\x03\x00"  # ERROR-CODE class 3, number 0: 300
    assert _plain_ipv4(attributes[0x8023]) == ALT_V4
    assert 0x0008 in attributes  # MESSAGE-INTEGRITY: an off-path attacker cannot forge the redirect
    response = result.response
    assert response.get(Attr.ERROR_CODE)[0] == 300
    assert verify_integrity(response, client.key)
    assert response.get(Attr.REALM) == "reTurn"
    assert response.get(Attr.NONCE)
    assert 0x8003 not in attributes  # no ALTERNATE-DOMAIN over UDP
    assert harness.core.allocations == {}
    assert result.one(AllocationRedirected) == AllocationRedirected(client.five_tuple, ALT_V4, "draining")


def test_unauthenticated_allocate_is_challenged_not_redirected() -> None:
    harness = _redirecting()
    harness.core.draining = True
    result = harness.client().challenge()
    assert result.error_code == 401
    assert not result.response.has(Attr.ALTERNATE_SERVER)


def test_max_allocations_redirects() -> None:
    harness = _redirecting(max_allocations=1)
    assert harness.client(client=("203.0.113.10", 1)).allocate().response.msg_class is MessageClass.SUCCESS
    second = harness.client(client=("203.0.113.10", 2)).allocate()
    assert second.error_code == 300
    assert second.response.get(Attr.ALTERNATE_SERVER) == ALT_V4


def test_exhausted_port_pool_redirects() -> None:
    harness = _redirecting(allocation_port_range_min=50000, allocation_port_range_max=50001)
    assert harness.client(client=("203.0.113.10", 1)).allocate().response.msg_class is MessageClass.SUCCESS
    assert harness.client(client=("203.0.113.10", 2)).allocate().response.msg_class is MessageClass.SUCCESS
    third = harness.client(client=("203.0.113.10", 3)).allocate()
    assert third.error_code == 300


def test_ports_held_by_other_processes_redirect_after_the_walk() -> None:
    harness = _redirecting(allocation_port_range_min=50000, allocation_port_range_max=50003)
    harness.busy_ports = {50000, 50001, 50002, 50003}
    result = harness.client().allocate()
    assert result.error_code == 300
    assert result.response.get(Attr.ALTERNATE_SERVER) == ALT_V4


def test_bitrate_over_limit_redirects_and_recovers() -> None:
    harness = _redirecting()
    harness.core.over_bitrate = True
    assert harness.client(client=("203.0.113.10", 1)).allocate().error_code == 300
    harness.core.over_bitrate = False
    assert harness.client(client=("203.0.113.10", 2)).allocate().response.msg_class is MessageClass.SUCCESS


def test_without_alternates_capacity_is_508() -> None:
    harness = Harness(config=make_config(max_allocations=1))
    harness.client(client=("203.0.113.10", 1)).allocate()
    assert harness.client(client=("203.0.113.10", 2)).allocate().error_code == 508
    harness = Harness()
    harness.core.draining = True
    refused = harness.client().allocate()
    assert refused.error_code == 508
    assert refused.of(AllocationRedirected) == []  # no AlternateServers: the plain 508 of before


def test_ipv6_client_gets_the_ipv6_alternate() -> None:
    harness = _redirecting()
    harness.core.draining = True
    result = harness.client(client=CLIENT_V6, server=SERVER_V6).allocate()
    assert result.error_code == 300
    assert result.response.get(Attr.ALTERNATE_SERVER) == ALT_V6


def test_no_alternate_of_the_clients_family_is_508() -> None:
    harness = Harness(config=make_config(alternate_servers=(ALT_V4,)))
    harness.core.draining = True
    assert harness.client(client=CLIENT_V6, server=SERVER_V6).allocate().error_code == 508


def test_never_redirects_to_itself() -> None:
    other = ("198.51.100.21", 3478)
    harness = Harness(config=make_config(alternate_servers=(SERVER, other)))
    harness.core.set_own_addresses([SERVER])
    harness.core.draining = True
    assert harness.client().allocate().response.get(Attr.ALTERNATE_SERVER) == other
    harness = Harness(config=make_config(alternate_servers=(SERVER,)))
    harness.core.set_own_addresses([SERVER])
    harness.core.draining = True
    assert harness.client().allocate().error_code == 508


def test_tls_client_gets_tls_port_and_alternate_domain() -> None:
    harness = _redirecting(tls_turn_port=5349, alternate_domain="turn.example.net")
    harness.core.draining = True
    result = harness.client(transport=Transport.TLS, server=(SERVER[0], 5349)).allocate()
    assert result.error_code == 300
    assert result.response.get(Attr.ALTERNATE_SERVER) == (ALT_V4[0], 5349)
    assert result.response.get(Attr.ALTERNATE_DOMAIN) == "turn.example.net"
    assert _attributes(result.sent[0])[0x8003] == b"turn.example.net"


def _follow(first: Harness, second: Harness) -> tuple[TurnClient, TurnClient]:
    """A client redirected by `first` that goes to `second` with the REALM and NONCE of the 300 (as libwebrtc)."""
    redirected = first.client()
    answer = redirected.allocate()
    assert answer.error_code == 300
    moved = second.client()
    moved.learn(answer.response)
    return redirected, moved


def test_redirected_client_needs_no_new_challenge_when_the_secret_is_shared() -> None:
    first, second = _redirecting(), _redirecting()  # Harness cores share their secret: NonceSecretFile shared
    first.core.draining = True
    _, moved = _follow(first, second)
    result = moved.send_raw(moved.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.response.msg_class is MessageClass.SUCCESS  # no 401 or 438 round trip
    assert moved.five_tuple in second.core.allocations


def test_loop_guard_redirected_client_is_not_redirected_back() -> None:
    first, second = _redirecting(), _redirecting()
    first.core.draining = True
    second.core.draining = True  # both full: the client must not bounce between them
    _, moved = _follow(first, second)
    result = moved.send_raw(moved.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.error_code == 508
    assert not result.response.has(Attr.ALTERNATE_SERVER)
    assert verify_integrity(result.response, moved.key)
    assert result.one(AllocationRedirected) == AllocationRedirected(moved.five_tuple, None, "draining")


def test_without_shared_secret_the_redirect_nonce_is_stale() -> None:
    first, second = _redirecting(), _redirecting()
    second.core.set_nonce_secrets([b"another instance's secret"])
    first.core.draining = True
    _, moved = _follow(first, second)
    result = moved.send_raw(moved.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    assert result.error_code == 438


def test_draining_keeps_existing_allocations_refreshing_and_relaying() -> None:
    harness = _redirecting()
    client = harness.client()
    assert client.allocate().response.msg_class is MessageClass.SUCCESS
    peer = ("198.51.100.7", 5000)
    client.create_permission(peer)
    harness.core.draining = True
    refreshed = client.refresh(600)
    assert refreshed.response.msg_class is MessageClass.SUCCESS
    assert refreshed.response.get(Attr.LIFETIME) == 600
    assert client.channel_bind(0x4000, peer).response.msg_class is MessageClass.SUCCESS
    assert harness.peer(client.handle, b"media", peer).sent  # peer -> client still relayed
    assert client.five_tuple.client == CLIENT


def test_rotated_nonce_secret_still_accepts_the_old_one() -> None:
    harness = _redirecting()
    client = harness.client()
    client.challenge()
    harness.core.set_nonce_secrets([b"n" * 32, b"k" * 32])  # the new one on top, the old one still accepted
    assert client.allocate().response.msg_class is MessageClass.SUCCESS
