"""Amplification (docs/security.md cases 30-32): every answer an unauthenticated sender can trigger stays within
3x the request, measured with the smallest valid request; the per-source 401 limit holds."""

from __future__ import annotations

import random
from ipaddress import ip_network

import pytest

from pyturn.config import Config
from pyturn.core.actions import SendFrom, SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.dispatch import TurnServerCore
from pyturn.core.userdb import UserDB
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Attr, Message, MessageClass, Method

SERVER = ("192.0.2.1", 3478)
CLIENT_V4 = ("203.0.113.9", 40000)
CLIENT_V6 = ("2001:db8::9", 40000)
TID = bytes(range(12))
AMPLIFICATION_LIMIT = 3  # unauthenticated answers at most 3x the request (the limit this suite holds the server to)


def _core(**changes: object) -> TurnServerCore:
    config = Config(allowed_peer_addresses=(ip_network("198.51.100.0/24"),), **changes)  # type: ignore[arg-type]
    users = UserDB.from_passwords({"alice": "secret"}, "reTurn")
    return TurnServerCore(config, users=users.lookup, secret=b"s" * 32, rng=random.Random(1))


def _request(method: int, *attributes: tuple[int, object], classic: bool = False) -> bytes:
    message = Message(method, MessageClass.REQUEST, bytes(range(16)) if classic else TID)
    for attr, value in attributes:
        message.add(attr, value)
    return encode_message(message)


def _answer_size(core: TurnServerCore, data: bytes, client: tuple[str, int] = CLIENT_V4) -> int:
    actions = core.handle_client(data, FiveTuple(Transport.UDP, client, SERVER), 1000.0)
    sent = [action for action in actions if isinstance(action, SendToClient | SendFrom)]
    assert len(sent) == 1, actions
    return len(sent[0].data)


# (id, request bytes, client, config changes): the smallest request that reaches each unauthenticated answer.
CASES = [
    ("binding-ipv4", _request(Method.BINDING), CLIENT_V4, {}),
    ("binding-ipv6", _request(Method.BINDING), CLIENT_V6, {}),
    ("binding-classic", _request(Method.BINDING, classic=True), CLIENT_V4, {}),
    ("binding-420-unknown-attribute", _request(Method.BINDING, (0x7F00, b"")), CLIENT_V4, {}),
    ("allocate-401", _request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17)), CLIENT_V4, {}),
    ("allocate-401-ipv6", _request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17)), CLIENT_V6, {}),
    ("refresh-437", _request(Method.REFRESH), CLIENT_V4, {}),
    ("create-permission-437", _request(Method.CREATE_PERMISSION), CLIENT_V4, {}),
    ("channel-bind-437", _request(Method.CHANNEL_BIND), CLIENT_V4, {}),
    ("unknown-method-400", _request(0x0FF), CLIENT_V4, {}),
    ("shared-secret-433", _request(Method.SHARED_SECRET), CLIENT_V4, {}),
    ("long-software-name-401", _request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17)), CLIENT_V4,
     {"software_name": "a very long software name that would blow the budget"}),
]


@pytest.mark.parametrize(("request_bytes", "client", "changes"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_security_unauthenticated_answer_within_three_times_request(
    request_bytes: bytes, client: tuple[str, int], changes: dict[str, object]
) -> None:
    size = _answer_size(_core(**changes), request_bytes, client)
    assert size <= AMPLIFICATION_LIMIT * len(request_bytes), (size, len(request_bytes))


@pytest.mark.parametrize(("flags", "classic"), [(0, False), (6, False), (0, True), (6, True)],
                         ids=["5780-none", "5780-change-both", "3489-none", "3489-change-both"])
def test_security_alternate_address_binding_within_three_times_request(flags: int, classic: bool) -> None:
    core = _core()
    core.set_alternate(SERVER, ("192.0.2.2", 3479))
    attributes = [(Attr.CHANGE_REQUEST, flags)] if flags else []
    request = _request(Method.BINDING, *attributes, classic=classic)
    assert _answer_size(core, request) <= AMPLIFICATION_LIMIT * len(request)


def test_security_software_kept_when_the_budget_allows() -> None:
    request = _request(Method.BINDING, (Attr.SOFTWARE, "a client that says who it is"))
    actions = _core().handle_client(request, FiveTuple(Transport.UDP, CLIENT_V4, SERVER), 1000.0)
    assert decode_message(actions[0].data).get(Attr.SOFTWARE) == "pyturn  "  # type: ignore[union-attr]


def test_security_401_rate_limit_per_source_ip() -> None:
    core = _core(unauthenticated_rate_limit=10)
    request = _request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17))

    def answered(client: tuple[str, int], now: float) -> bool:
        return bool(core.handle_client(request, FiveTuple(Transport.UDP, client, SERVER), now))

    # The budget is per IP, whatever the port: 10 answers, then silence within the same second.
    results = [answered(("203.0.113.5", 1000 + n), 50.0) for n in range(30)]
    assert results.count(True) == 10
    # Other sources are unaffected.
    assert answered(("203.0.113.6", 1000), 50.0)
    # Loopback sources cannot be spoofed from outside, so they are not limited (test rigs allocate in bursts).
    assert all(answered(("127.0.0.1", 1000 + n), 50.0) for n in range(30))
    # The bucket refills with time.
    assert answered(("203.0.113.5", 1000), 51.0)


def test_security_401_rate_limit_off_and_tcp_unaffected() -> None:
    request = _request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17))
    off = _core(unauthenticated_rate_limit=0)
    assert all(off.handle_client(request, FiveTuple(Transport.UDP, ("203.0.113.5", n), SERVER), 5.0)
               for n in range(1, 50))
    limited = _core(unauthenticated_rate_limit=1)
    assert all(limited.handle_client(request, FiveTuple(Transport.TCP, ("203.0.113.5", n), SERVER), 5.0)
               for n in range(1, 50))


def test_security_rate_limiter_memory_is_bounded_under_spoofed_flood() -> None:
    core = _core(unauthenticated_rate_limit=10)
    request = _request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17))
    for n in range(5000):
        source = (f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 9)
        core.handle_client(request, FiveTuple(Transport.UDP, source, SERVER), 7.0)
    core.tick(9.0)
    assert len(core.state.limiter or ()) == 0


def amplification_table() -> list[tuple[str, int, int, float]]:
    """(case, request bytes, answer bytes, ratio) for SECURITY.md; `python -m tests.test_security_amplification`."""
    rows = []
    for name, request, client, changes in CASES:
        size = _answer_size(_core(**changes), request, client)
        rows.append((name, len(request), size, size / len(request)))
    return rows


if __name__ == "__main__":
    for name, request_size, answer_size, ratio in amplification_table():
        print(f"| {name} | {request_size} | {answer_size} | {ratio:.2f}x |")
