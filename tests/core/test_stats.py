"""What the sans-IO core counts for the metrics (pyturn.core.stats.CoreStats), driven with a fake clock."""

from __future__ import annotations

from turnclient import PEER, Harness, build, make_config

from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.stats import AUTH_FAILURE_REASONS, CoreStats, method_name
from pyturn.wire.message import Attr, Method


def test_core_counts_requests_errors_and_allocations() -> None:
    harness = Harness()
    client = harness.client()
    assert client.allocate().error_code is None  # 401 challenge, then the signed Allocate
    client.create_permission(PEER)
    client.channel_bind(0x4000)
    stats = harness.core.stats
    assert stats.requests == {"allocate": 2, "create_permission": 1, "channel_bind": 1}
    assert stats.error_responses == {("allocate", 401): 1}
    assert stats.allocations_created == {("udp", 1): 1}
    assert not any(stats.auth_failures.values())  # a first request without credentials is no failure


def test_core_counts_authentication_failures_by_reason() -> None:
    harness = Harness()
    harness.client("alice", "not her password").allocate()
    harness.client("mallory", "whatever", client=("203.0.113.11", 40000)).allocate()
    stale = harness.client(client=("203.0.113.12", 40000))
    stale.challenge()
    stale.nonce = "AAAAAAAAAAAAAAAA"
    stale.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])  # 438, then retried with a fresh nonce
    failures = harness.core.stats.auth_failures
    assert failures["bad_integrity"] == 1
    assert failures["unknown_user"] == 1
    assert failures["stale_nonce"] == 1
    assert harness.core.stats.error_responses[("allocate", 438)] == 1


def test_core_counts_answers_withheld_by_the_rate_limit() -> None:
    harness = Harness(make_config(unauthenticated_rate_limit=1))
    client = harness.client()
    answered = 0
    for _ in range(5):  # within one second of the fake clock: the limiter withholds 401s beyond its burst
        answered += len(client.send_raw(build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])).actions)
    stats = harness.core.stats
    assert 1 <= answered < 5
    assert stats.error_responses[("allocate", 401)] == answered
    assert stats.auth_failures["rate_limited"] == 5 - answered


def test_unknown_methods_and_reasons_fall_into_other() -> None:
    stats = CoreStats()
    stats.request(0x0FF)
    stats.error_response(0x0FF, 400)
    stats.auth_failure("something new")
    assert stats.requests == {"other": 1}
    assert stats.error_responses == {("other", 400): 1}
    assert stats.auth_failures["other"] == 1
    assert set(stats.auth_failures) == set(AUTH_FAILURE_REASONS)
    assert method_name(Method.ALLOCATE) == "allocate"


def test_core_counts_tcp_allocations_by_transport() -> None:
    harness = Harness()
    harness.client(transport=Transport.TCP).allocate()
    assert harness.core.stats.allocations_created == {("tcp", 1): 1}
    assert FiveTuple(Transport.TCP, ("203.0.113.10", 40000), ("192.0.2.1", 3478)) in harness.core.allocations
