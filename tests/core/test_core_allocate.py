"""TurnServerCore: Allocate (RFC 8656 §7.1-7.2), Refresh (§7.3), expiry and the relay-opening handshake."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from turnclient import CLIENT, SERVER, Harness, RelayHandle, Result, TurnClient, build, make_config, new_tid

from pyturn.core.actions import CloseRelay, OpenRelay, RelayFailure, ReleasePort, SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.events import AllocationCreated, AllocationDeleted, AllocationRefreshed
from pyturn.core.userdb import UserDB
from pyturn.wire.codec import decode_message
from pyturn.wire.integrity import long_term_key, verify_integrity
from pyturn.wire.message import Attr, MessageClass, Method


def allocated(harness: Harness, username: str = "alice", **kwargs: Any) -> TurnClient:
    client = harness.client(username, **kwargs)
    result = client.allocate()
    assert result.response.msg_class is MessageClass.SUCCESS, result.actions
    return client


def relayed_port(result: Result) -> int:
    port: int = result.response.get(Attr.XOR_RELAYED_ADDRESS)[1]
    return port


# -------------------------------------------------------------------------------------------- success
def test_core_allocate_success_response_attributes() -> None:
    harness = Harness()
    client = harness.client()
    result = client.allocate()
    response = result.response
    open_relay = result.one(OpenRelay)
    assert response.msg_class is MessageClass.SUCCESS
    assert response.method == Method.ALLOCATE
    assert response.get(Attr.XOR_RELAYED_ADDRESS) == (SERVER[0], open_relay.port)
    assert response.get(Attr.LIFETIME) == 600
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert not response.has(Attr.RESERVATION_TOKEN)
    assert verify_integrity(response, client.key)
    assert result.one(SendToClient).five_tuple == client.five_tuple


def test_core_allocate_open_relay_action() -> None:
    harness = Harness()
    client = harness.client()
    open_relay = client.allocate().one(OpenRelay)
    assert open_relay.five_tuple == client.five_tuple
    assert open_relay.family == 1
    assert open_relay.host == SERVER[0]
    assert 50000 <= open_relay.port <= 50999
    assert open_relay.dont_fragment is False


def test_core_allocate_records_the_allocation_and_event() -> None:
    harness = Harness()
    client = harness.client()
    result = client.allocate()
    allocation = client.allocation
    handle = RelayHandle(SERVER[0], result.one(OpenRelay).port)
    assert allocation.relay_handle == handle
    assert allocation.username == "alice"
    assert allocation.expires == harness.now + 600
    assert harness.core.allocation_for_handle(handle) is allocation
    created = result.one(AllocationCreated)
    assert created == AllocationCreated(client.five_tuple, "alice", allocation.relayed, 600)


def test_core_allocate_waits_for_the_adapter() -> None:
    """Nothing is answered until the adapter reports the bind (docs/architecture.md "Sans-IO contract")."""
    harness = Harness(auto_open=False)
    client = harness.client()
    result = client.allocate()
    open_relay = result.one(OpenRelay)
    assert not result.of(SendToClient)
    assert not harness.core.allocations
    follow_up = Result(harness.core.relay_opened(open_relay.token, "h", (SERVER[0], open_relay.port), harness.now))
    assert follow_up.response.msg_class is MessageClass.SUCCESS
    assert harness.core.allocation_for_handle("h") is client.allocation


def test_core_allocate_relay_opened_with_unknown_token_closes_the_socket() -> None:
    harness = Harness()
    assert harness.core.relay_opened(999, "stray", ("192.0.2.1", 50000), harness.now) == [CloseRelay("stray")]
    assert harness.core.relay_failed(999, RelayFailure.OTHER, harness.now) == []


def test_core_allocate_wildcard_bind_is_advertised_as_bound() -> None:
    """With a wildcard listener the adapter reports the concrete address it bound; that is advertised."""
    harness = Harness(auto_open=False)
    client = harness.client(server=("0.0.0.0", 3478))
    open_relay = client.allocate().one(OpenRelay)
    assert open_relay.host == "0.0.0.0"
    follow_up = harness.core.relay_opened(open_relay.token, "h", ("192.0.2.55", open_relay.port), harness.now)
    response = Result(follow_up).response
    assert response.get(Attr.XOR_RELAYED_ADDRESS) == ("192.0.2.55", open_relay.port)


def test_core_allocate_learns_a_relay_ip_once_even_a_denied_one() -> None:
    """A wildcard listener binding relays on loopback (denied unless configured): the first relay there makes it a
    host address, later ones leave the policy object alone (a new policy would drop every learned Send route)."""
    harness = Harness(auto_open=False)
    policies = []
    for number in range(3):
        client = harness.client(client=("127.0.0.1", 50000 + number), server=("0.0.0.0", 3478))
        open_relay = client.allocate().one(OpenRelay)
        Result(harness.core.relay_opened(open_relay.token, f"h{number}", ("127.0.0.1", open_relay.port), harness.now))
        policies.append(harness.core.policy)
    assert "127.0.0.1" in policies[0].host_addresses
    assert policies[1] is policies[0] and policies[2] is policies[0]


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        pytest.param(None, 600, id="absent-default"),
        pytest.param(0, 600, id="zero-default"),
        pytest.param(1, 600, id="below-default"),
        pytest.param(599, 600, id="just-below-default"),
        pytest.param(600, 600, id="default"),
        pytest.param(601, 601, id="just-above-default"),
        pytest.param(1800, 1800, id="between"),
        pytest.param(3600, 3600, id="max"),
        pytest.param(3601, 3600, id="just-above-max"),
        pytest.param(0xFFFFFFFF, 3600, id="huge"),
    ],
)
def test_core_allocate_lifetime_arithmetic(requested: int | None, granted: int) -> None:
    harness = Harness()
    client = harness.client()
    extra = [] if requested is None else [(Attr.LIFETIME, requested)]
    result = client.allocate(*extra)
    assert result.response.get(Attr.LIFETIME) == granted
    assert client.allocation.expires == harness.now + granted
    assert result.one(AllocationCreated).lifetime == granted


def test_core_allocate_lifetime_follows_config() -> None:
    harness = Harness(make_config(default_allocation_lifetime=60, max_allocation_lifetime=120))
    assert harness.client().allocate((Attr.LIFETIME, 30)).response.get(Attr.LIFETIME) == 60
    assert harness.client(client=("203.0.113.10", 2)).allocate((Attr.LIFETIME, 90)).response.get(Attr.LIFETIME) == 90
    big = harness.client(client=("203.0.113.10", 3)).allocate((Attr.LIFETIME, 900))
    assert big.response.get(Attr.LIFETIME) == 120


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("attrs", "code"),
    [
        pytest.param([], 400, id="no-requested-transport"),
        pytest.param([(Attr.REQUESTED_TRANSPORT, 6)], 400, id="tcp-from-udp"),  # RFC 6062 §5.1 item 2
        pytest.param([(Attr.REQUESTED_TRANSPORT, 132)], 442, id="sctp"),
        pytest.param([(Attr.REQUESTED_TRANSPORT, 0)], 442, id="zero"),
        pytest.param([(Attr.REQUESTED_TRANSPORT, 17), (Attr.REQUESTED_ADDRESS_FAMILY, 3)], 440, id="family-3"),
        pytest.param([(Attr.REQUESTED_TRANSPORT, 17), (Attr.RESERVATION_TOKEN, b"12345678")], 508, id="bad-token"),
        pytest.param(
            [(Attr.REQUESTED_TRANSPORT, 17), (Attr.EVEN_PORT, False), (Attr.RESERVATION_TOKEN, b"12345678")],
            400,
            id="even-port-and-token",
        ),
        pytest.param(
            [(Attr.REQUESTED_TRANSPORT, 17), (Attr.REQUESTED_ADDRESS_FAMILY, 1), (Attr.RESERVATION_TOKEN, b"1234abcd")],
            400,
            id="family-and-token",
        ),
    ],
)
def test_core_allocate_error_codes(attrs: list[tuple[int, Any]], code: int) -> None:
    harness = Harness()
    client = harness.client()
    result = client.request(Method.ALLOCATE, attrs)
    response = result.response
    assert result.error_code == code
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT  # docs/compatibility.md "Responses"
    assert verify_integrity(response, client.key)
    assert not result.of(OpenRelay)
    assert not harness.core.allocations
    assert not harness.core.state.pending
    assert harness.core.ports.in_use == 0


def test_core_allocate_second_allocate_on_same_five_tuple_gets_437() -> None:
    harness = Harness()
    client = allocated(harness)
    result = client.allocate()
    assert result.error_code == 437
    assert not result.of(OpenRelay)
    assert len(harness.core.allocations) == 1


def test_core_allocate_same_client_other_transport_is_another_allocation() -> None:
    harness = Harness()
    allocated(harness, transport=Transport.UDP)
    allocated(harness, transport=Transport.TCP)
    allocated(harness, server=("192.0.2.2", 3478))
    assert len(harness.core.allocations) == 3


def test_core_allocate_retransmission_gets_identical_cached_bytes() -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    data = client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    first = client.send_raw(data)
    harness.advance(9.9)
    again = client.send_raw(data)
    assert again.actions == [SendToClient(client.five_tuple, first.one(SendToClient).data)]
    assert len(harness.opened) == 1


def test_core_allocate_retransmitted_error_gets_identical_cached_bytes() -> None:
    harness = Harness()
    client = harness.client()
    client.challenge()
    data = client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 132)])
    first = client.send_raw(data)
    assert first.error_code == 442
    assert client.send_raw(data).sent == first.sent


def test_core_allocate_cache_is_per_five_tuple() -> None:
    """The same transaction id from another client is a new request (unlike reTurn, docs/compatibility.md
    "Retransmissions")."""
    harness = Harness()
    first = harness.client()
    first.challenge()
    tid = new_tid()
    first.send_raw(first.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], tid=tid))
    other = harness.client("bob", client=("203.0.113.77", 7000))
    other.realm, other.nonce = first.realm, first.nonce
    result = other.send_raw(other.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], tid=tid))
    assert result.response.msg_class is MessageClass.SUCCESS
    assert result.response.get(Attr.XOR_MAPPED_ADDRESS) == ("203.0.113.77", 7000)
    assert len(harness.opened) == 2


def test_core_allocate_cache_expires_after_forty_seconds_then_437() -> None:
    """RFC 8489 §6.3.1: answers are kept for 40 s (Ti = 39.5 s covers every retransmission), then forgotten."""
    harness = Harness()
    client = harness.client()
    client.challenge()
    data = client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    client.send_raw(data)
    harness.advance(39.999)
    harness.tick()
    assert client.send_raw(data).response.msg_class is MessageClass.SUCCESS  # still cached
    harness.advance(0.001)  # exactly 40 s after the response
    harness.tick()
    result = client.send_raw(data)
    assert result.error_code == 437
    assert len(harness.opened) == 1


def test_core_allocate_retransmission_while_relay_pending_is_not_437() -> None:
    """RFC 8489 §6.3.1: a retransmission gets the original answer, even one still waiting for the adapter."""
    harness = Harness(auto_open=False)
    client = harness.client()
    client.challenge()
    data = client.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    open_relay = client.send_raw(data).one(OpenRelay)
    retransmission = client.send_raw(data)
    assert not retransmission.of(OpenRelay)
    assert all(decode_message(sent).msg_class is not MessageClass.ERROR for sent in retransmission.sent)
    success = harness.core.relay_opened(open_relay.token, "h", (SERVER[0], open_relay.port), harness.now)
    later = client.send_raw(data)
    assert later.sent == [a.data for a in success if isinstance(a, SendToClient)]


def test_core_allocate_new_transaction_while_relay_pending_gets_437() -> None:
    harness = Harness(auto_open=False)
    client = harness.client()
    client.allocate()
    assert client.allocate().error_code == 437
    assert len(harness.core.state.pending) == 1


# ---------------------------------------------------------------------------------- EVEN-PORT / tokens
@pytest.mark.parametrize("seed_ports", [pytest.param(n, id=f"after-{n}") for n in range(6)])
def test_core_allocate_even_port_without_reservation(seed_ports: int) -> None:
    harness = Harness()
    for index in range(seed_ports):  # move the random start around
        allocated(harness, client=("203.0.113.50", 1000 + index))
    client = harness.client()
    result = client.allocate((Attr.EVEN_PORT, False))
    assert relayed_port(result) % 2 == 0
    assert not result.response.has(Attr.RESERVATION_TOKEN)
    assert client.allocation.reserved_port is None


def test_core_allocate_even_port_with_reservation_then_token() -> None:
    harness = Harness()
    first = harness.client()
    result = first.allocate((Attr.EVEN_PORT, True))
    port = relayed_port(result)
    token = result.response.get(Attr.RESERVATION_TOKEN)
    assert port % 2 == 0
    assert isinstance(token, bytes) and len(token) == 8
    assert first.allocation.reserved_port == port + 1
    second = harness.client("bob", client=("203.0.113.20", 5555))
    follow = second.allocate((Attr.RESERVATION_TOKEN, token))
    assert follow.response.msg_class is MessageClass.SUCCESS
    assert relayed_port(follow) == port + 1
    assert follow.one(OpenRelay).port == port + 1
    # a token is single-use
    third = harness.client(client=("203.0.113.21", 5555))
    assert third.allocate((Attr.RESERVATION_TOKEN, token)).error_code == 508


def test_core_allocate_reserved_port_is_not_handed_out_to_others() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50003))
    first = harness.client()
    port = relayed_port(first.allocate((Attr.EVEN_PORT, True)))
    ports = {port}
    for index in range(2):
        ports.add(relayed_port(harness.client(client=("203.0.113.30", index + 1)).allocate()))
    assert port + 1 not in ports
    assert len(ports) == 3
    assert harness.client(client=("203.0.113.30", 9)).allocate().error_code == 508


def test_core_allocate_reservation_keeps_the_family_of_the_reserving_allocation() -> None:
    # RFC 8656 §7.2 / RFC 6156 §4.2: the token request may not name a family, yet its relay must be the reserved
    # port in the reserving allocation's family (turnutils_uclient -x pairs RTP/RTCP this way).
    harness = Harness()
    first = harness.client().allocate((Attr.EVEN_PORT, True), (Attr.REQUESTED_ADDRESS_FAMILY, 2))
    token = first.response.get(Attr.RESERVATION_TOKEN)
    second = harness.client(client=("203.0.113.10", 40001)).allocate((Attr.RESERVATION_TOKEN, token))
    relay = second.one(OpenRelay)
    assert relay.family == 2 and relay.port == relayed_port(first) + 1
    assert ":" in second.response.get(Attr.XOR_RELAYED_ADDRESS)[0]


def test_core_allocate_reservation_token_from_another_worker_is_redeemed_by_mac() -> None:
    # Two cores sharing the secret, with separate port slices, as Workers = 2 runs them.
    issuer = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50099))
    redeemer = Harness(make_config(allocation_port_range_min=50100, allocation_port_range_max=50199))
    token = issuer.client().allocate((Attr.EVEN_PORT, True)).response.get(Attr.RESERVATION_TOKEN)
    result = redeemer.client(client=("203.0.113.10", 40001)).allocate((Attr.RESERVATION_TOKEN, token))
    assert result.response.msg_class is MessageClass.SUCCESS
    assert 50000 <= relayed_port(result) <= 50099
    forged = token[:-1] + bytes([token[-1] ^ 1])
    assert redeemer.client(client=("203.0.113.10", 40002)).allocate((Attr.RESERVATION_TOKEN, forged)).error_code == 508


def test_core_allocate_reservation_expires_after_thirty_seconds() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50001))
    result = harness.client().allocate((Attr.EVEN_PORT, True))
    token = result.response.get(Attr.RESERVATION_TOKEN)
    harness.advance(29.9)
    harness.tick()
    assert harness.core.ports.in_use == 2
    harness.advance(0.1)
    harness.tick()
    assert harness.core.ports.in_use == 1  # the reserved port went back to the pool
    late = harness.client("bob", client=("203.0.113.20", 5555))
    assert late.allocate((Attr.RESERVATION_TOKEN, token)).error_code == 508
    # and the freed odd port can now be allocated normally
    other = harness.client(client=("203.0.113.21", 5555))
    assert relayed_port(other.allocate()) == 50001


def test_core_allocate_reservation_token_refused_at_expiry_even_without_tick() -> None:
    harness = Harness()
    token = harness.client().allocate((Attr.EVEN_PORT, True)).response.get(Attr.RESERVATION_TOKEN)
    harness.advance(30)
    late = harness.client("bob", client=("203.0.113.20", 5555))
    assert late.allocate((Attr.RESERVATION_TOKEN, token)).error_code == 508


def test_core_allocate_deleting_the_even_allocation_frees_its_reservation() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50001))
    first = harness.client()
    token = first.allocate((Attr.EVEN_PORT, True)).response.get(Attr.RESERVATION_TOKEN)
    first.refresh(0)
    assert harness.core.ports.in_use == 0
    late = harness.client("bob", client=("203.0.113.20", 5555))
    assert late.allocate((Attr.RESERVATION_TOKEN, token)).error_code == 508


def test_core_allocate_even_port_reservation_needs_a_free_pair() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50003))
    harness.core.ports.claim(50001)  # as if held by other allocations
    harness.core.ports.claim(50003)
    assert harness.client().allocate((Attr.EVEN_PORT, True)).error_code == 508
    result = harness.client(client=("203.0.113.30", 1)).allocate((Attr.EVEN_PORT, False))
    assert relayed_port(result) in (50000, 50002)


# -------------------------------------------------------------------------------------- port choice
def test_core_allocate_port_range_exhausted_gets_508() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50001))
    ports = {relayed_port(harness.client(client=("203.0.113.30", n)).allocate()) for n in (1, 2)}
    assert ports == {50000, 50001}
    result = harness.client().allocate()
    assert result.error_code == 508
    assert not result.of(OpenRelay)


def test_core_allocate_port_in_use_is_retried_on_another_port() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50003))
    harness.busy_ports = {50000, 50001, 50002}
    result = harness.client().allocate()
    assert result.response.msg_class is MessageClass.SUCCESS
    assert relayed_port(result) == 50003
    tried = [action.port for action in result.of(OpenRelay)]
    assert tried[-1] == 50003
    assert len(tried) == len(set(tried))  # never the same busy port twice


def test_core_allocate_even_port_retry_stays_even() -> None:
    # EVEN-PORT R=0: a retry after a port in use must still be an even port (RFC 8656 §7.2 step 4).
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50007))
    harness.busy_ports = {50000, 50002, 50004}
    result = harness.client().allocate((Attr.EVEN_PORT, False))
    assert result.response.msg_class is MessageClass.SUCCESS
    assert relayed_port(result) == 50006
    assert all(action.port % 2 == 0 for action in result.of(OpenRelay))


def test_core_allocate_port_in_use_everywhere_gets_508() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50003))
    harness.busy_ports = {50000, 50001, 50002, 50003}
    client = harness.client()
    result = client.allocate()
    assert result.error_code == 508
    assert sorted(action.port for action in result.of(OpenRelay)) == [50000, 50001, 50002, 50003]
    assert verify_integrity(result.response, client.key)
    assert result.response.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert not harness.core.state.pending
    assert harness.core.ports.in_use == 0


def test_core_allocate_busy_ports_are_tried_again_later() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50000))
    harness.busy_ports = {50000}
    assert harness.client().allocate().error_code == 508
    harness.busy_ports = set()
    harness.advance(60)
    assert harness.client(client=("203.0.113.30", 1)).allocate().response.msg_class is MessageClass.SUCCESS


def test_core_allocate_port_in_use_everywhere_tries_each_port_once_then_508() -> None:
    """RFC 8656 §7.2: 508 only when the range is really exhausted: every port is tried, none twice."""
    harness = Harness()  # 1000 ports, all busy
    harness.busy_ports = set(range(50000, 51000))
    result = harness.client().allocate()
    assert result.error_code == 508
    assert sorted(action.port for action in result.of(OpenRelay)) == list(range(50000, 51000))


def test_core_allocate_even_port_pairs_skip_pairs_whose_odd_port_is_in_use() -> None:
    """EVEN-PORT R: a pair needs both ports; an odd port held elsewhere sends the search to the next pair, and the
    even port of that failed pair is not counted as busy."""
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50007))
    harness.busy_ports = {50001, 50003, 50005}
    result = harness.client().allocate((Attr.EVEN_PORT, True))
    assert result.response.msg_class is MessageClass.SUCCESS
    assert relayed_port(result) == 50006
    assert harness.core.allocations and harness.core.ports.in_use == 2
    assert harness.client(client=("203.0.113.30", 1)).allocate((Attr.EVEN_PORT, False)).error_code is None


def test_core_allocate_even_port_pairs_all_blocked_gets_508() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50007))
    harness.busy_ports = {50001, 50003, 50005, 50007}
    result = harness.client().allocate((Attr.EVEN_PORT, True))
    assert result.error_code == 508
    assert sorted(action.port for action in result.of(OpenRelay)) == [50000, 50002, 50004, 50006]
    assert harness.core.ports.in_use == 0


def test_core_allocate_reservation_release_and_expiry_tell_the_adapter() -> None:
    """The adapter holds the reserved odd port's socket: the core says when to let it go (ReleasePort)."""
    harness = Harness()
    first = harness.client()
    result = first.allocate((Attr.EVEN_PORT, True))
    assert result.one(OpenRelay).reserve_next
    port = relayed_port(result)
    harness.advance(30)
    assert harness.tick().of(ReleasePort) == [ReleasePort(1, port + 1)]
    second = harness.client(client=("203.0.113.30", 1))
    result = second.allocate((Attr.EVEN_PORT, True))
    port = relayed_port(result)
    assert second.refresh(0).of(ReleasePort) == [ReleasePort(1, port + 1)]
    third = harness.client(client=("203.0.113.30", 2))
    token = third.allocate((Attr.EVEN_PORT, True)).response.get(Attr.RESERVATION_TOKEN)
    redeemed = harness.client(client=("203.0.113.30", 3)).allocate((Attr.RESERVATION_TOKEN, token))
    assert redeemed.one(OpenRelay).reserved
    assert third.refresh(0).of(ReleasePort) == []  # redeemed: the socket is the new allocation's relay


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        pytest.param(RelayFailure.FAMILY_UNAVAILABLE, 440, id="family"),
        pytest.param(RelayFailure.OTHER, 508, id="other"),
    ],
)
def test_core_allocate_relay_failure_codes(failure: RelayFailure, code: int) -> None:
    harness = Harness(auto_open=False)
    client = harness.client()
    open_relay = client.allocate().one(OpenRelay)
    result = Result(harness.core.relay_failed(open_relay.token, failure, harness.now))
    assert result.error_code == code
    assert verify_integrity(result.response, client.key)
    assert harness.core.ports.in_use == 0
    assert not harness.core.allocations


def test_core_allocate_relay_failure_with_reservation_releases_both_ports() -> None:
    harness = Harness(auto_open=False)
    open_relay = harness.client().allocate((Attr.EVEN_PORT, True)).one(OpenRelay)
    assert harness.core.ports.in_use == 2
    harness.core.relay_failed(open_relay.token, RelayFailure.OTHER, harness.now)
    assert harness.core.ports.in_use == 0


def test_core_allocate_ports_are_not_sequential() -> None:
    harness = Harness()
    ports = [relayed_port(harness.client(client=("203.0.113.30", n)).allocate()) for n in range(1, 11)]
    assert len(set(ports)) == 10
    steps = {b - a for a, b in itertools.pairwise(ports)}
    assert steps != {1}
    assert ports != sorted(ports)


# ------------------------------------------------------------------------------------ address families
def test_core_allocate_requested_family_ipv6() -> None:
    harness = Harness()
    client = harness.client()
    result = client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, 2))
    open_relay = result.one(OpenRelay)
    assert open_relay.family == 2
    assert ":" in open_relay.host
    assert ":" in result.response.get(Attr.XOR_RELAYED_ADDRESS)[0]
    assert client.allocation.family == 2


def test_core_allocate_family_is_ipv4_by_default_even_on_an_ipv6_listener() -> None:
    # RFC 8656 §7.2 / RFC 6156 §4.2: no REQUESTED-ADDRESS-FAMILY means an IPv4 relay.
    harness = Harness()
    client = harness.client(client=("2001:db8::10", 4000), server=("2001:db8::1", 3478))
    open_relay = client.allocate().one(OpenRelay)
    assert open_relay.family == 1
    assert ":" not in open_relay.host


@pytest.mark.parametrize(
    ("changes", "family", "host"),
    [
        pytest.param({"relay_address": "192.0.2.200"}, 1, "192.0.2.200", id="relay-v4"),
        pytest.param({"relay_v6_address": "2001:db8::200"}, 2, "2001:db8::200", id="relay-v6"),
        pytest.param({"turn_v6_address": "2001:db8::300"}, 2, "2001:db8::300", id="turn-v6"),
        pytest.param({}, 2, "::", id="v6-wildcard"),
    ],
)
def test_core_allocate_relay_host(changes: dict[str, Any], family: int, host: str) -> None:
    harness = Harness(make_config(**changes))
    open_relay = harness.client().allocate((Attr.REQUESTED_ADDRESS_FAMILY, family)).one(OpenRelay)
    assert open_relay.host == host


def test_core_allocate_dont_fragment_accepted() -> None:
    harness = Harness()
    client = harness.client()
    result = client.allocate((Attr.DONT_FRAGMENT, True))
    assert result.response.msg_class is MessageClass.SUCCESS
    assert result.one(OpenRelay).dont_fragment is True
    assert client.allocation.dont_fragment is True


@pytest.mark.parametrize(
    ("changes", "family", "expected"),
    [
        pytest.param({"external_address": "198.18.0.1"}, 1, "198.18.0.1", id="v4"),
        pytest.param({"external_v6_address": "2001:db8::ee"}, 2, "2001:db8::ee", id="v6"),
        pytest.param({"external_v6_address": "2001:db8::ee"}, 1, SERVER[0], id="v6-only-set"),
    ],
)
def test_core_allocate_external_address_replaces_advertised_ip(
    changes: dict[str, Any], family: int, expected: str
) -> None:
    harness = Harness(make_config(**changes))
    client = harness.client()
    result = client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, family))
    port = result.one(OpenRelay).port
    assert result.response.get(Attr.XOR_RELAYED_ADDRESS) == (expected, port)
    assert client.relayed == (expected, port)


# -------------------------------------------------------------------------------------------- quotas
def test_core_allocate_max_allocations_per_user_gets_486() -> None:
    harness = Harness(make_config(max_allocations_per_user=2))
    allocated(harness, client=("203.0.113.30", 1))
    allocated(harness, client=("203.0.113.30", 2))
    client = harness.client(client=("203.0.113.30", 3))
    result = client.allocate()
    assert result.error_code == 486
    assert verify_integrity(result.response, client.key)
    allocated(harness, "bob", client=("203.0.113.30", 4))  # other users are not affected


def test_core_allocate_per_user_quota_frees_on_delete() -> None:
    harness = Harness(make_config(max_allocations_per_user=1))
    first = allocated(harness, client=("203.0.113.30", 1))
    assert harness.client(client=("203.0.113.30", 2)).allocate().error_code == 486
    first.refresh(0)
    allocated(harness, client=("203.0.113.30", 3))


def test_core_allocate_max_allocations_gets_508() -> None:
    """RFC 8656 §7.2: MaxAllocations is server-wide capacity (508 Insufficient Capacity); 486 is a user's quota."""
    harness = Harness(make_config(max_allocations=2))
    allocated(harness, client=("203.0.113.30", 1))
    allocated(harness, "bob", client=("203.0.113.30", 2))
    assert harness.client(client=("203.0.113.30", 3)).allocate().error_code == 508
    assert harness.client("bob", client=("203.0.113.30", 4)).allocate().error_code == 508


def test_core_allocate_max_allocations_counts_pending_binds() -> None:
    harness = Harness(make_config(max_allocations=1), auto_open=False)
    harness.client(client=("203.0.113.30", 1)).allocate()
    assert harness.client(client=("203.0.113.30", 2)).allocate().error_code == 508


# --------------------------------------------------------------------------------------------- Refresh
def test_core_refresh_without_allocation_gets_437_without_credentials() -> None:
    harness = Harness()
    five_tuple = FiveTuple(Transport.UDP, CLIENT, SERVER)
    result = harness.send(build(Method.REFRESH, [(Attr.LIFETIME, 600)]), five_tuple)
    assert result.error_code == 437
    assert result.response.integrity_offset is None
    assert not result.response.has(Attr.NONCE)


def test_core_refresh_without_allocation_with_credentials_gets_437() -> None:
    harness = Harness()
    assert harness.client().refresh(600).error_code == 437


# RFC 8656 §5: authenticated first, then 437; RFC 8489 §9.2.4: the answer carries MESSAGE-INTEGRITY, which clients
# check (RFC 8489 §9.2.5) and without which aioice retransmits for about 40 s.
@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda client: client.refresh(600), id="refresh"),
        pytest.param(lambda client: client.create_permission(("198.51.100.7", 0)), id="create-permission"),
        pytest.param(lambda client: client.channel_bind(0x4000), id="channel-bind"),
    ],
)
def test_core_request_after_expiry_gets_signed_437(send: Any) -> None:
    harness = Harness()
    client = allocated(harness)
    harness.advance(600)  # the allocation's 600 s lifetime runs out
    assert harness.tick().of(AllocationDeleted)
    before = len(harness.core.allocations)
    result = send(client)
    assert result.error_code == 437
    assert result.response.get(Attr.ERROR_CODE)[1] == "Allocation Mismatch"
    assert result.response.integrity_offset is not None
    assert verify_integrity(result.response, long_term_key("alice", "reTurn", "secret"))
    assert len(harness.core.allocations) == before == 0  # nothing kept for it


def test_core_signed_437_after_expire_allocations_and_not_cached() -> None:
    harness = Harness()
    client = allocated(harness)
    harness.core.expire_allocations(harness.now)
    data = client.signed(Method.REFRESH, [(Attr.LIFETIME, 600)])
    first, again = client.send_raw(data), client.send_raw(data)
    assert first.error_code == again.error_code == 437
    assert first.response.integrity_offset is not None and again.response.integrity_offset is not None


def test_core_request_without_allocation_and_wrong_password_gets_401_not_437() -> None:
    harness = Harness()
    client = allocated(harness)
    harness.core.expire_allocations(harness.now)
    wrong = harness.client("alice", "wrong")
    wrong.realm, wrong.nonce = client.realm, client.nonce
    result = wrong.send_raw(wrong.signed(Method.REFRESH, [(Attr.LIFETIME, 600)]))
    assert result.error_code == 401
    assert result.response.integrity_offset is None and result.response.has(Attr.NONCE)


def test_core_request_without_allocation_and_stale_nonce_gets_438_then_signed_437() -> None:
    harness = Harness()
    client = allocated(harness)
    harness.core.expire_allocations(harness.now)
    harness.core.expire_nonces()
    stale = client.send_raw(client.signed(Method.REFRESH, [(Attr.LIFETIME, 600)]))
    assert stale.error_code == 438
    result = client.refresh(600)  # the driver retries with the new nonce
    assert result.error_code == 437 and result.response.integrity_offset is not None


def test_core_refresh_extends_the_lifetime() -> None:
    harness = Harness()
    client = allocated(harness)
    harness.advance(500)
    result = client.refresh(1200)
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert response.get(Attr.LIFETIME) == 1200
    assert verify_integrity(response, client.key)
    assert client.allocation.expires == harness.now + 1200
    assert result.one(AllocationRefreshed) == AllocationRefreshed(client.five_tuple, 1200)
    harness.advance(600)  # past the original expiry
    assert not harness.tick().of(AllocationDeleted)
    assert client.five_tuple in harness.core.allocations


def test_core_refresh_absent_lifetime_means_default() -> None:
    harness = Harness()
    client = harness.client()
    client.allocate((Attr.LIFETIME, 3000))
    result = client.refresh()
    assert result.response.get(Attr.LIFETIME) == 600
    assert client.allocation.expires == harness.now + 600


@pytest.mark.parametrize(
    ("requested", "granted"),
    [pytest.param(1, 600, id="below"), pytest.param(2000, 2000, id="between"), pytest.param(9999, 3600, id="above")],
)
def test_core_refresh_lifetime_arithmetic(requested: int, granted: int) -> None:
    harness = Harness()
    client = allocated(harness)
    assert client.refresh(requested).response.get(Attr.LIFETIME) == granted


def test_core_refresh_zero_deletes_the_allocation() -> None:
    harness = Harness(make_config(allocation_port_range_min=50000, allocation_port_range_max=50000))
    client = allocated(harness)
    handle, relayed = client.handle, client.relayed
    result = client.refresh(0)
    response = result.response
    assert response.msg_class is MessageClass.SUCCESS
    assert response.get(Attr.LIFETIME) == 0
    assert verify_integrity(response, client.key)
    assert result.one(CloseRelay) == CloseRelay(handle)
    assert result.one(AllocationDeleted) == AllocationDeleted(client.five_tuple, "alice", relayed, "refresh")
    assert not harness.core.allocations
    assert harness.core.allocation_for_handle(handle) is None
    # the port is reusable at once, and so is the 5-tuple
    again = client.allocate()
    assert relayed_port(again) == 50000
    # a refresh after deletion: 437
    client.refresh(0)
    assert client.refresh(600).error_code == 437


def test_core_refresh_zero_retransmission_gets_437_and_deletes_nothing_twice() -> None:
    # RFC 8656 §7.3 note: a retransmitted Refresh(LIFETIME 0) after the deletion gets 437, which the client takes
    # as success; the response cache lives on the allocation and goes with it.
    harness = Harness()
    client = allocated(harness)
    data = client.signed(Method.REFRESH, [(Attr.LIFETIME, 0)])
    first = client.send_raw(data)
    assert first.response.msg_class is MessageClass.SUCCESS
    again = client.send_raw(data)
    assert again.error_code == 437
    assert not again.of(CloseRelay)


def test_core_refresh_retransmission_gets_the_cached_answer() -> None:
    harness = Harness()
    client = allocated(harness)
    data = client.signed(Method.REFRESH, [(Attr.LIFETIME, 1200)])
    first = client.send_raw(data)
    harness.advance(1)
    again = client.send_raw(data)
    assert again.sent == first.sent
    assert not again.of(AllocationRefreshed)


@pytest.mark.parametrize(
    ("username", "password", "realm"),
    [
        pytest.param("bob", "hunter2", None, id="other-user"),
        pytest.param("alice", "secret2", "other.example", id="other-key"),
    ],
)
def test_core_refresh_with_other_credentials_gets_441(username: str, password: str, realm: str | None) -> None:
    keys = {
        ("alice", "reTurn"): long_term_key("alice", "reTurn", "secret"),
        ("bob", "reTurn"): long_term_key("bob", "reTurn", "hunter2"),
        ("alice", "other.example"): long_term_key("alice", "other.example", "secret2"),
    }
    harness = Harness(users=UserDB(keys).lookup)
    owner = allocated(harness)
    intruder = harness.client(username, password, realm=realm)
    result = intruder.refresh(0)
    assert result.error_code == 441
    assert verify_integrity(result.response, intruder.key)
    assert owner.five_tuple in harness.core.allocations
    assert intruder.create_permission(("198.51.100.1", 1)).error_code == 441
    assert intruder.channel_bind(0x4000, ("198.51.100.1", 1)).error_code == 441
    assert not owner.allocation.permissions


def test_core_refresh_family_mismatch_gets_443() -> None:
    harness = Harness()
    client = allocated(harness)
    assert client.request(Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, 2)]).error_code == 443
    assert client.request(Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, 1)]).error_code is None


# ----------------------------------------------------------------------------------------------- expiry
@pytest.mark.parametrize("lifetime", [pytest.param(600, id="default"), pytest.param(1234, id="requested")])
def test_core_allocate_expires_exactly_at_its_lifetime(lifetime: int) -> None:
    harness = Harness()
    client = harness.client()
    client.allocate((Attr.LIFETIME, lifetime))
    start = harness.now
    handle, relayed = client.handle, client.relayed
    assert harness.core.next_deadline() is not None
    harness.now = start + lifetime - 0.001
    assert harness.tick().actions == []
    assert client.five_tuple in harness.core.allocations
    harness.now = start + lifetime
    result = harness.tick()
    assert result.one(CloseRelay) == CloseRelay(handle)
    assert result.one(AllocationDeleted) == AllocationDeleted(client.five_tuple, "alice", relayed, "expired")
    assert not harness.core.allocations
    assert harness.core.ports.in_use == 0
    assert harness.tick().actions == []  # deleted once


def test_core_allocate_expired_allocation_refresh_gets_437() -> None:
    harness = Harness()
    client = allocated(harness)
    harness.advance(600)
    harness.tick()
    assert client.refresh(600).error_code == 437


def test_core_allocate_late_tick_expires_everything_due() -> None:
    harness = Harness()
    clients = [allocated(harness, client=("203.0.113.30", n)) for n in range(1, 4)]
    harness.advance(5000)
    deleted = harness.tick().of(AllocationDeleted)
    assert {event.five_tuple for event in deleted} == {c.five_tuple for c in clients}


def test_core_allocate_close_all() -> None:
    harness = Harness()
    clients = [allocated(harness, client=("203.0.113.30", n)) for n in range(1, 3)]
    handles = {c.handle for c in clients}
    actions = harness.core.close_all()
    assert {a.handle for a in actions if isinstance(a, CloseRelay)} == handles
    assert {a.reason for a in actions if isinstance(a, AllocationDeleted)} == {"shutdown"}
    assert not harness.core.allocations


# -------------------------------------------------------------------------------------------------- TCP
def test_core_allocate_tcp_connection_closed_deletes_the_allocation() -> None:
    harness = Harness()
    client = allocated(harness, transport=Transport.TCP)
    handle, relayed = client.handle, client.relayed
    actions = harness.core.connection_closed(client.five_tuple, harness.now)
    assert CloseRelay(handle) in actions
    assert AllocationDeleted(client.five_tuple, "alice", relayed, "closed") in actions
    assert not harness.core.allocations
    assert harness.core.connection_closed(client.five_tuple, harness.now) == []


def test_core_allocate_tcp_allocate_is_answered_on_the_stream() -> None:
    harness = Harness()
    client = harness.client(transport=Transport.TLS)
    result = client.allocate()
    assert result.one(SendToClient).five_tuple.transport is Transport.TLS
    assert result.one(OpenRelay).five_tuple == client.five_tuple
