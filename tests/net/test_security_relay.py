"""Relay abuse and SSRF (docs/security.md cases 21-28, 33).

Peer-policy cases run through the sans-IO core only: nothing is ever sent to the addresses under test. For each
denied spelling the control-plane answer is checked (403 on CreatePermission and on ChannelBind) and a Send
indication towards it must produce no SendToPeer action (a silent drop, RFC 8656 §11.2). The one end-to-end test
(case 33) runs on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_network
from typing import Any

import pytest
from interop import LOOPBACK, PASSWORD, USERNAME, MiniTurnClient, TurnRequestFailed
from turnclient import Harness, Result, TurnClient, build, make_config

from pyturn.config import Config
from pyturn.core.actions import SendToClient, SendToPeer
from pyturn.core.events import PermissionInstalled
from pyturn.server import Server
from pyturn.wire.codec import decode_message
from pyturn.wire.message import Attr, MessageClass, Method

FAMILY_IPV4 = 1
FAMILY_IPV6 = 2
CHANNEL = 0x4000
PUBLIC_V4 = ("198.51.100.7", 5000)  # TEST-NET-2: allowed by default, the harness's stand-in for a public peer
PUBLIC_V6 = ("2001:db8::7", 5000)

# Denied by the built-in list whatever the configuration (docs/security.md cases 21-25).
BUILTIN_DENIED = [
    pytest.param("127.0.0.1", id="21-loopback"),
    pytest.param("127.255.255.254", id="21-loopback-top"),
    pytest.param("::1", id="21-v6-loopback"),
    pytest.param("0.0.0.0", id="22-unspecified"),
    pytest.param("0.1.2.3", id="22-this-network"),
    pytest.param("::", id="22-v6-unspecified"),
    pytest.param("::ffff:127.0.0.1", id="23-v4-mapped-loopback"),
    pytest.param("::ffff:0.0.0.0", id="23-v4-mapped-unspecified"),
    pytest.param("::127.0.0.1", id="23-v4-compatible-loopback"),
    pytest.param("64:ff9b::7f00:1", id="23-nat64-loopback"),
    pytest.param("2002:7f00:1::", id="23-6to4-loopback"),
    pytest.param("2002:808:808::1", id="23-6to4-any"),
    pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", id="23-teredo"),
    pytest.param("169.254.169.254", id="24-metadata"),
    pytest.param("169.254.0.1", id="24-link-local"),
    pytest.param("::ffff:169.254.169.254", id="24-v4-mapped-metadata"),
    pytest.param("fe80::1", id="24-v6-link-local"),
    pytest.param("224.0.0.1", id="25-multicast"),
    pytest.param("240.0.0.1", id="25-reserved"),
    pytest.param("255.255.255.255", id="25-broadcast"),
    pytest.param("ff02::1", id="25-v6-multicast"),
]

# Allowed by default (private networks are where enterprise PBXs live), denied once the operator lists the IANA
# special-purpose ranges in DeniedPeerAddresses, as eturnal's `recommended` profile does (case 25).
OPERATOR_DENIED_NETWORKS = tuple(ip_network(network) for network in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15",
    "192.0.2.0/24", "203.0.113.0/24", "fc00::/7",
))
OPERATOR_DENIED = [
    pytest.param("10.0.0.1", id="25-rfc1918-10"),
    pytest.param("172.16.0.1", id="25-rfc1918-172"),
    pytest.param("192.168.1.1", id="25-rfc1918-192"),
    pytest.param("100.64.0.1", id="25-cgnat"),
    pytest.param("192.0.0.8", id="25-ietf-protocol"),
    pytest.param("198.18.0.1", id="25-benchmarking"),
    pytest.param("192.0.2.1", id="25-test-net-1"),
    pytest.param("203.0.113.1", id="25-test-net-3"),
    pytest.param("::ffff:10.0.0.1", id="25-v4-mapped-rfc1918"),
    pytest.param("64:ff9b::a00:1", id="25-nat64-rfc1918"),
    pytest.param("fd00:ec2::254", id="24-aws-v6-metadata"),
    pytest.param("fc00::1", id="25-ula"),
]


def _family(ip: str) -> int:
    return FAMILY_IPV6 if ":" in ip else FAMILY_IPV4


def _allocated(harness: Harness, family: int, **kwargs: Any) -> TurnClient:
    client = harness.client(**kwargs)
    result = client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, family), (Attr.LIFETIME, 3600))
    assert result.response.msg_class is MessageClass.SUCCESS
    return client


def _assert_refused_everywhere(harness: Harness, client: TurnClient, peer: tuple[str, int], code: int) -> None:
    """CreatePermission and ChannelBind get `code`; a Send indication is dropped; no permission appears."""
    permission = client.create_permission(peer)
    assert permission.error_code == code
    assert not permission.of(PermissionInstalled)
    channel = client.channel_bind(CHANNEL, peer)
    assert channel.error_code == code
    assert not client.allocation.permissions and not client.allocation.channels
    send = client.send_indication(b"probe", peer)
    assert send.actions == []
    assert not send.of(SendToPeer)
    # A peer datagram claiming to come from there is not relayed either (RFC 8656 §9).
    assert harness.peer(client.handle, b"reply", peer).actions == []


def _peer(ip: str) -> tuple[str, int]:
    return (ip, 80)


@pytest.mark.parametrize("ip", BUILTIN_DENIED)
def test_security_relay_builtin_denied_peer_is_refused_on_every_path(ip: str) -> None:
    harness = Harness()
    client = _allocated(harness, _family(ip))
    _assert_refused_everywhere(harness, client, _peer(ip), 403)


@pytest.mark.parametrize("ip", BUILTIN_DENIED)
def test_security_relay_denied_peer_of_the_other_family_gets_443_before_the_acl(ip: str) -> None:
    harness = Harness()
    other = FAMILY_IPV4 if _family(ip) == FAMILY_IPV6 else FAMILY_IPV6
    client = _allocated(harness, other)
    _assert_refused_everywhere(harness, client, _peer(ip), 443)


@pytest.mark.parametrize("ip", OPERATOR_DENIED)
def test_security_relay_operator_denied_peer_is_refused_on_every_path(ip: str) -> None:
    harness = Harness(make_config(denied_peer_addresses=OPERATOR_DENIED_NETWORKS))
    client = _allocated(harness, _family(ip))
    _assert_refused_everywhere(harness, client, _peer(ip), 403)


@pytest.mark.parametrize("ip", OPERATOR_DENIED)
def test_security_relay_private_ranges_allowed_by_default(ip: str) -> None:
    harness = Harness()
    client = _allocated(harness, _family(ip))
    assert client.create_permission(_peer(ip)).error_code is None


# The harness's server listens on 192.0.2.1:3478 and relays on 192.0.2.1:50000-50999 (tests/support/turnclient.py).
# Its own addresses are peers only on relay-range ports: other allocations' relays (RFC 8656 §9: relay-to-relay
# between two clients of one server, the WebRTC relay/relay candidate pair), never its listeners or other
# services of the host (case 26).
OWN_ADDRESS_DENIED = [
    pytest.param(("192.0.2.1", 3478), id="listening-port"),
    pytest.param(("192.0.2.1", 3479), id="alternate-port"),
    pytest.param(("192.0.2.1", 22), id="ssh"),
    pytest.param(("192.0.2.1", 49999), id="just-below-range"),
    pytest.param(("192.0.2.1", 51000), id="just-above-range"),
    pytest.param(("192.0.2.50", 443), id="relay-address-outside-range"),
    pytest.param(("203.0.113.77", 5432), id="external-address-outside-range"),
]
OWN_ADDRESS_SPELLINGS = [
    pytest.param(("::ffff:192.0.2.1", 50010), id="v4-mapped-in-range"),
    pytest.param(("::ffff:192.0.2.1", 3478), id="v4-mapped-listener"),
    pytest.param(("::ffff:0:192.0.2.1", 50010), id="v4-translated-in-range"),
    pytest.param(("::192.0.2.1", 50010), id="v4-compatible-in-range"),
    pytest.param(("64:ff9b::c000:201", 50010), id="nat64-in-range"),
    pytest.param(("64:ff9b::c000:201", 3478), id="nat64-listener"),
    pytest.param(("2002:c000:201::1", 50010), id="6to4-in-range"),
]


def _own_address_harness() -> Harness:
    harness = Harness()
    harness.core.set_server_addresses({"192.0.2.1", "192.0.2.50", "203.0.113.77"}, {"192.0.2.2"})
    return harness


@pytest.mark.parametrize(
    "peer",
    [pytest.param(("192.0.2.1", 50000), id="range-start"), pytest.param(("192.0.2.1", 50999), id="range-end"),
     pytest.param(("192.0.2.50", 50500), id="relay-address"), pytest.param(("203.0.113.77", 50002), id="external")],
)
def test_security_relay_own_address_on_a_relay_port_is_allowed_everywhere(peer: tuple[str, int]) -> None:
    harness = _own_address_harness()
    client = _allocated(harness, FAMILY_IPV4)
    assert client.create_permission(peer).error_code is None
    assert client.channel_bind(CHANNEL, peer).error_code is None
    assert client.send_indication(b"to another relay", peer).of(SendToPeer)
    assert harness.peer(client.handle, b"from another relay", peer).of(SendToClient)


@pytest.mark.parametrize("peer", OWN_ADDRESS_DENIED)
def test_security_relay_own_address_outside_the_relay_range_is_refused(peer: tuple[str, int]) -> None:
    # A permission names an IP only (RFC 8656 §9), so it is installed; everything that names the port is refused.
    harness = _own_address_harness()
    client = _allocated(harness, FAMILY_IPV4)
    assert client.create_permission(peer).error_code is None
    assert client.channel_bind(CHANNEL, peer).error_code == 403
    assert not client.allocation.channels
    assert client.send_indication(b"probe", peer).actions == []
    assert harness.peer(client.handle, b"reply", peer).actions == []


@pytest.mark.parametrize("peer", OWN_ADDRESS_SPELLINGS)
def test_security_relay_own_address_in_another_spelling_is_refused_on_every_port(peer: tuple[str, int]) -> None:
    harness = _own_address_harness()
    client = _allocated(harness, FAMILY_IPV6)
    _assert_refused_everywhere(harness, client, peer, 403)


@pytest.mark.parametrize("port", [50010, 3478, 80])
def test_security_relay_host_address_is_refused_on_every_port(port: int) -> None:
    # Another address of the host that no relay binds to (an internal interface, the RFC 5780 alternate address).
    harness = _own_address_harness()
    client = _allocated(harness, FAMILY_IPV4)
    _assert_refused_everywhere(harness, client, ("192.0.2.2", port), 403)


def test_security_relay_two_clients_of_one_server_relay_to_each_other() -> None:
    # No set_server_addresses at all: the relay IP is learned from the bound relay socket.
    harness = Harness()
    alice = _allocated(harness, FAMILY_IPV4)
    bob = _allocated(harness, FAMILY_IPV4, username="bob", client=("203.0.113.11", 40000))
    assert alice.relayed[0] == bob.relayed[0] == "192.0.2.1"
    assert bob.create_permission(alice.relayed).error_code is None
    assert alice.channel_bind(CHANNEL, bob.relayed).error_code is None
    to_bob = alice.send_indication(b"hello bob", bob.relayed).one(SendToPeer)
    assert (to_bob.peer, to_bob.data) == (bob.relayed, b"hello bob")
    # Bob's relay receives it from Alice's relay: Bob's permission for Alice's relay IP lets it through.
    delivered = harness.peer(bob.handle, b"hello bob", alice.relayed).one(SendToClient)
    assert delivered.five_tuple.client == ("203.0.113.11", 40000)
    assert harness.peer(bob.handle, b"from the listener", ("192.0.2.1", 3478)).actions == []


def test_security_relay_loopback_relay_learned_from_a_bound_relay_stays_denied() -> None:
    # A wildcard listener binds a local client's relay on 127.0.0.1: that does not open loopback to everyone.
    harness = Harness()
    local = harness.client(client=("127.0.0.1", 40000), server=("127.0.0.1", 3478))
    assert local.allocate().response.msg_class is MessageClass.SUCCESS
    assert local.relayed[0] == "127.0.0.1"
    assert not harness.core.policy.allows("127.0.0.1", local.relayed[1])
    remote = _allocated(harness, FAMILY_IPV4)
    assert remote.channel_bind(CHANNEL, local.relayed).error_code == 403


def test_security_relay_multi_address_permission_with_one_denied_installs_nothing() -> None:
    # Case 27: all XOR-PEER-ADDRESSes are checked before any permission is installed (RFC 8656 §9.2).
    harness = Harness()
    client = _allocated(harness, FAMILY_IPV4)
    result = client.create_permission(PUBLIC_V4, ("198.51.100.9", 1), ("::ffff:127.0.0.1", 9))
    assert result.error_code in (403, 443)
    assert not client.allocation.permissions
    assert client.send_indication(b"x", PUBLIC_V4).actions == []


def test_security_relay_allow_list_beats_deny_only_inside_the_allowed_range() -> None:
    # Case 27: an allow inside a denied range works, the rest of the denied range stays denied.
    harness = Harness(make_config(allowed_peer_addresses=(ip_network("127.0.0.2/32"),)))
    client = _allocated(harness, FAMILY_IPV4)
    assert client.create_permission(("127.0.0.2", 9)).error_code is None
    assert client.create_permission(("127.0.0.1", 9)).error_code == 403


def test_security_relay_permission_is_per_ip_not_port() -> None:
    # Case 28: one permission covers every port of the peer IP, in both directions, and nothing else.
    harness = Harness()
    client = _allocated(harness, FAMILY_IPV4)
    assert client.create_permission(PUBLIC_V4).error_code is None
    other_port = (PUBLIC_V4[0], 6000)
    assert client.send_indication(b"out", other_port).actions == [SendToPeer(client.handle, other_port, b"out")]
    inbound = harness.peer(client.handle, b"in", other_port).one(SendToClient)
    assert decode_message(inbound.data).get(Attr.XOR_PEER_ADDRESS) == other_port
    neighbour = ("198.51.100.8", PUBLIC_V4[1])
    assert client.send_indication(b"out", neighbour).actions == []
    assert harness.peer(client.handle, b"in", neighbour).actions == []


def test_security_relay_send_before_create_permission_is_dropped() -> None:
    harness = Harness()
    client = _allocated(harness, FAMILY_IPV4)
    assert client.send_indication(b"x", PUBLIC_V4).actions == []


def test_security_relay_send_with_duplicate_peer_address_uses_the_first() -> None:
    # Case 7: coturn 4.16.0 made a duplicate XOR-PEER-ADDRESS in Send first-wins; so is pyturn's.
    harness = Harness()
    client = _allocated(harness, FAMILY_IPV4)
    client.create_permission(PUBLIC_V4)
    attrs = [(Attr.XOR_PEER_ADDRESS, PUBLIC_V4), (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9)), (Attr.DATA, b"x")]
    result = client.send_raw(build(Method.SEND, attrs, msg_class=MessageClass.INDICATION))
    assert result.actions == [SendToPeer(client.handle, PUBLIC_V4, b"x")]
    attrs = [(Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9)), (Attr.XOR_PEER_ADDRESS, PUBLIC_V4), (Attr.DATA, b"x")]
    assert client.send_raw(build(Method.SEND, attrs, msg_class=MessageClass.INDICATION)).actions == []


def test_security_relay_channel_data_to_denied_peer_impossible_without_binding() -> None:
    # ChannelData only ever goes to a peer a successful ChannelBind named; a refused bind leaves no route.
    harness = Harness()
    client = _allocated(harness, FAMILY_IPV4)
    assert client.channel_bind(CHANNEL, ("127.0.0.1", 9)).error_code == 403
    assert client.send_raw(bytes([0x40, 0x00, 0x00, 0x04]) + b"data").actions == []
    assert harness.core.routes(client.five_tuple.transport, client.five_tuple.server) == {}


def test_security_relay_ipv6_allocation_refuses_v4_mapped_public_peer_as_v4() -> None:
    # ::ffff:198.51.100.7 is an IPv4 peer in disguise: it may not reach a v4 permission through a v6 relay.
    harness = Harness()
    client = _allocated(harness, FAMILY_IPV6)
    result: Result = client.create_permission(PUBLIC_V6)
    assert result.error_code is None
    assert client.send_indication(b"x", ("::ffff:198.51.100.7", 5000)).actions == []


# ----------------------------------------------------------------------------------------- end to end
async def test_security_relay_port_is_no_reflector_for_unpermitted_peers(loopback_config: Config) -> None:
    """Case 33: datagrams a non-permitted peer sends to a relay port reach nobody; a permitted one's do."""
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            relayed = await client.allocate()
            loop = asyncio.get_running_loop()
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stranger.setblocking(False)
            stranger.bind((LOOPBACK, 0))
            try:
                for _ in range(20):
                    await loop.sock_sendto(stranger, b"reflect me", relayed)
                with pytest.raises(TimeoutError):
                    await client.receive(0.3)
                assert stranger_received_nothing(stranger)
                # Sanity: once permitted, the same peer's datagram arrives as a Data indication.
                await client.create_permission(stranger.getsockname())
                await loop.sock_sendto(stranger, b"now permitted", relayed)
                data = await client.receive(2.0)
                message = decode_message(data)
                assert message.method == Method.DATA and message.get(Attr.DATA) == b"now permitted"
            finally:
                stranger.close()


def stranger_received_nothing(sock: socket.socket) -> bool:
    try:
        sock.recv(2048)
    except BlockingIOError:
        return True
    return False


async def test_security_relay_refused_peer_over_real_server_gets_403(loopback_config: Config) -> None:
    """The loopback test rig allows 127.0.0.0/8 only: 169.254.169.254 stays refused end to end (nothing sent)."""
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            await client.allocate()
            with pytest.raises(TurnRequestFailed) as refused:
                await client.create_permission(("169.254.169.254", 80))
            assert refused.value.code == 403
            await client.send_indication(("169.254.169.254", 80), b"dropped")
            await client.send_indication(("127.0.0.1", 9), b"no permission: dropped")
            await asyncio.sleep(0.1)
        assert server.relayed_bytes().to_peer == 0


async def test_security_relay_server_knows_its_relay_and_external_addresses(loopback_config: Config) -> None:
    # Case 26: besides the listeners, the relay bind address and the advertised external address are the server:
    # peers there only on relay-range ports, in their own spelling only.
    config = loopback_config.replace(relay_address="127.0.0.1", external_address="203.0.113.77",
                                     allowed_peer_addresses=())
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        assert server.core is not None
        policy = server.core.policy
        assert {"127.0.0.1", "203.0.113.77"} <= policy.relay_addresses
        assert policy.allows("203.0.113.77", 50000)
        assert policy.allows("127.0.0.1", 65535)
        assert not policy.allows("203.0.113.77", 3478)
        assert not policy.allows("127.0.0.1", server.addresses["udp"][0][1])
        assert not policy.allows_permission("::ffff:203.0.113.77")
