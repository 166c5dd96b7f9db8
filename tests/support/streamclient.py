"""A long-term-credential TURN client over one TCP or TLS stream (tests/interop/test_interop_tcp_tls.py and
tests/net/test_relay_expiry.py)."""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

from interop import PASSWORD, USERNAME

from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import StreamFramer
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

WAIT = 5.0
CHANNEL = 0x4000


class StreamTurnClient:
    """A long-term-credential TURN client over one TCP or TLS stream, for framing tests.

    Frames are split with pyturn.wire.framing.StreamFramer using the same padding rule as the server under test.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, padding: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.padding = padding
        self.framer = StreamFramer(channel_padding=padding)
        self.frames: list[bytes] = []
        self.key: bytes | None = None
        self.realm = ""
        self.nonce = ""

    @classmethod
    async def connect(
        cls, address: Address, *, padding: bool = True, context: ssl.SSLContext | None = None
    ) -> StreamTurnClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address[0], address[1], ssl=context), WAIT
        )
        return cls(reader, writer, padding=padding)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)
        except (OSError, TimeoutError, ssl.SSLError):
            pass

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_frame(self, timeout: float = WAIT) -> bytes:
        while not self.frames:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise ConnectionError("server closed the stream")
            self.frames.extend(self.framer.feed(chunk))
        return self.frames.pop(0)

    async def transact(self, request: Message) -> Message:
        if self.key is not None:
            request.add(Attr.USERNAME, USERNAME).add(Attr.REALM, self.realm).add(Attr.NONCE, self.nonce)
            await self.write(encode_message(request, integrity_key=self.key, fingerprint=True))
        else:
            await self.write(encode_message(request, fingerprint=True))
        while True:
            frame = await self.next_frame()
            if frame[0] & 0xC0 == 0:
                response = decode_message(frame)
                if response.transaction_id == request.transaction_id:
                    return response

    async def request(self, method: int, *attributes: tuple[int, Any]) -> Message:
        response = await self.transact(Message(method, MessageClass.REQUEST, os.urandom(12), list(attributes)))
        if response.msg_class is MessageClass.ERROR and response.get(Attr.ERROR_CODE)[0] in (401, 438):
            self.realm = response.get(Attr.REALM)
            self.nonce = response.get(Attr.NONCE)
            self.key = long_term_key(USERNAME, self.realm, PASSWORD)
            response = await self.transact(Message(method, MessageClass.REQUEST, os.urandom(12), list(attributes)))
        assert response.msg_class is MessageClass.SUCCESS, response.get(Attr.ERROR_CODE)
        return response

    async def allocate_with_channel(self, peer: Address, channel: int = CHANNEL) -> Address:
        response = await self.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17))
        await self.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer))
        relayed: Address = response.get(Attr.XOR_RELAYED_ADDRESS)
        return relayed

    async def binding(self) -> Message:
        return await self.transact(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
