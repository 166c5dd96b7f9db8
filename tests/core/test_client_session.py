"""The shared test client's sans-IO core (tests/support/turnsession.py): the long-term-credential dance of
RFC 8489 §9.2 written once for every driver, checked against a real TurnServerCore."""

from __future__ import annotations

from collections.abc import Callable

from turnclient import CLIENT, SERVER, Harness
from turnsession import ClientSession, Outgoing, channel_data, error_code, message, relayed_payload, run_exchange

from pyturn.core.actions import SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.wire.codec import decode_message
from pyturn.wire.message import Attr, Message, MessageClass, Method


def _transmitter(harness: Harness, sent: list[Message]) -> Callable[[Outgoing], Message | None]:
    five_tuple = FiveTuple(Transport.UDP, CLIENT, SERVER)

    def transmit(outgoing: Outgoing) -> Message | None:
        sent.append(decode_message(outgoing.data))
        assert sent[-1].transaction_id == outgoing.transaction_id
        replies = harness.send(outgoing.data, five_tuple).of(SendToClient)
        return decode_message(replies[0].data) if replies else None

    return transmit


def test_client_session_answers_the_401_challenge_once_and_signs_the_retry() -> None:
    harness = Harness()
    session = ClientSession("alice", "secret")
    sent: list[Message] = []
    response = run_exchange(session.exchange(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                            _transmitter(harness, sent))
    assert response is not None and response.msg_class is MessageClass.SUCCESS
    assert session.verify(response)
    assert [message.has(Attr.MESSAGE_INTEGRITY) for message in sent] == [False, True]
    assert sent[0].transaction_id != sent[1].transaction_id
    assert (session.realm, sent[1].get(Attr.USERNAME)) == ("reTurn", "alice")


def test_client_session_retries_a_stale_nonce_once_with_the_new_one() -> None:
    harness = Harness()
    session = ClientSession("alice", "secret")
    transmit = _transmitter(harness, [])
    run_exchange(session.exchange(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]), transmit)
    session.nonce = "AAAAAAAAAAAAAAAA"
    sent: list[Message] = []
    response = run_exchange(session.exchange(Method.REFRESH, [(Attr.LIFETIME, 600)]),
                            _transmitter(harness, sent))
    assert response is not None and response.get(Attr.LIFETIME) == 600
    assert [message.get(Attr.NONCE) == "AAAAAAAAAAAAAAAA" for message in sent] == [True, False]


def test_client_session_gives_up_after_one_retry_with_a_wrong_password() -> None:
    harness = Harness()
    session = ClientSession("alice", "wrong")
    sent: list[Message] = []
    response = run_exchange(session.exchange(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                            _transmitter(harness, sent))
    assert error_code(response) == 401 and len(sent) == 2


def test_relayed_payload_reads_channel_data_and_data_indications_only() -> None:
    assert relayed_payload(channel_data(0x4000, b"abc", pad=True)) == b"abc"
    data = message(Method.DATA, [(Attr.XOR_PEER_ADDRESS, ("198.51.100.7", 5000)), (Attr.DATA, b"xyz")],
                   msg_class=MessageClass.INDICATION)
    assert relayed_payload(data) == b"xyz"
    assert relayed_payload(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12)) is None  # a Binding request
