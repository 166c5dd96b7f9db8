"""STUN Binding over TCP (RFC 8489 §6.2.2): framing across split and coalesced writes, through real sockets."""

from __future__ import annotations

import asyncio
import os

import pytest
from interop import LOOPBACK

from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import StreamFramer
from pyturn.wire.message import Attr, Message, MessageClass, Method

pytestmark = pytest.mark.interop

IO_TIMEOUT = 5.0


def _binding(transaction_id: bytes) -> bytes:
    return encode_message(Message(Method.BINDING, MessageClass.REQUEST, transaction_id), fingerprint=True)


async def _read_messages(reader: asyncio.StreamReader, count: int) -> list[Message]:
    framer = StreamFramer(channel_padding=True)
    messages: list[Message] = []
    while len(messages) < count:
        chunk = await asyncio.wait_for(reader.read(4096), IO_TIMEOUT)
        assert chunk, f"server closed the connection after {len(messages)} of {count} responses"
        messages += [decode_message(frame) for frame in framer.feed(chunk)]
    return messages


async def _connect(server: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.addresses["tcp"][0]  # type: ignore[attr-defined]
    return await asyncio.wait_for(asyncio.open_connection(host, port), IO_TIMEOUT)


async def test_tcp_binding_request_split_into_single_byte_writes(inprocess_server: object) -> None:
    reader, writer = await _connect(inprocess_server)
    try:
        transaction_id = os.urandom(12)
        for byte in _binding(transaction_id):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.002)
        (response,) = await _read_messages(reader, 1)
        local = writer.get_extra_info("sockname")
    finally:
        writer.close()
    assert response.msg_class is MessageClass.SUCCESS
    assert response.transaction_id == transaction_id
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == (LOOPBACK, local[1])


async def test_tcp_binding_three_coalesced_requests_get_three_responses(inprocess_server: object) -> None:
    reader, writer = await _connect(inprocess_server)
    try:
        transaction_ids = [os.urandom(12) for _ in range(3)]
        writer.write(b"".join(_binding(tid) for tid in transaction_ids))
        await writer.drain()
        responses = await _read_messages(reader, 3)
        with pytest.raises(TimeoutError):  # nothing more than the three answers
            await asyncio.wait_for(reader.read(4096), 0.2)
    finally:
        writer.close()
    assert [r.transaction_id for r in responses] == transaction_ids
    assert all(r.msg_class is MessageClass.SUCCESS for r in responses)
