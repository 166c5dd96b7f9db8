"""The TCP/TLS driver of the shared TURN test client (tests/support/turnsession.py): one long-term-credential
client over one stream (tests/interop/test_interop_tcp_tls.py, tests/net/test_relay_expiry.py,
tests/net/test_metrics.py)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from interop import PASSWORD, USERNAME
from turnsession import (
    REQUESTED_TRANSPORT_UDP,
    ClientSession,
    Outgoing,
    SessionField,
    channel_data,
    response_to,
    run_exchange_async,
)

from pyturn.wire.framing import StreamFramer
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

WAIT = 5.0
CHANNEL = 0x4000


class StreamTurnClient:
    """A long-term-credential TURN client over one TCP or TLS stream, for framing tests.

    Frames are split with pyturn.wire.framing.StreamFramer using the same padding rule as the server under test.
    Frames that arrive while a request waits and are not its response are dropped.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        padding: bool = True,
        username: str = USERNAME,
        password: str = PASSWORD,
        rfc8489: bool = False,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.padding = padding
        self.framer = StreamFramer(channel_padding=padding)
        self.frames: list[bytes] = []
        self.session = ClientSession(username, password, rfc8489=rfc8489)

    username = SessionField("username")
    realm = SessionField("realm")
    nonce = SessionField("nonce")

    @property
    def key(self) -> bytes | None:
        return self.session.key if self.session.can_sign else None

    @classmethod
    async def connect(
        cls,
        address: Address,
        *,
        padding: bool = True,
        context: ssl.SSLContext | None = None,
        username: str = USERNAME,
        password: str = PASSWORD,
        rfc8489: bool = False,
    ) -> StreamTurnClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address[0], address[1], ssl=context), WAIT
        )
        return cls(reader, writer, padding=padding, username=username, password=password, rfc8489=rfc8489)

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

    async def transmit(self, outgoing: Outgoing) -> Message:
        """Write a request and read frames until its response (a stream needs no retransmission, RFC 8489 §6.2.2)."""
        await self.write(outgoing.data)
        while True:
            response = response_to(await self.next_frame(), outgoing.transaction_id)
            if response is not None:
                return response

    async def transact(self, request: Message) -> Message:
        """The request as given, signed when credentials are known, no retry."""
        outgoing = self.session.outgoing(request.method, request.attributes, tid=request.transaction_id)
        return await self.transmit(outgoing)

    async def request(self, method: int, *attributes: tuple[int, Any]) -> Message:
        """An authenticated request: on 401/438 learns realm and nonce and sends it once more; must succeed."""
        response = await run_exchange_async(self.session.exchange(method, attributes), self.transmit)
        assert response is not None
        assert response.msg_class is MessageClass.SUCCESS, response.get(Attr.ERROR_CODE)
        assert self.session.verify(response), "success response not signed"
        return response

    async def allocate(self, *extra: tuple[int, Any]) -> Address:
        response = await self.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, REQUESTED_TRANSPORT_UDP), *extra)
        relayed: Address = response.get(Attr.XOR_RELAYED_ADDRESS)
        return relayed

    async def channel_bind(self, channel: int, peer: Address) -> None:
        await self.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer))

    async def allocate_with_channel(self, peer: Address, channel: int = CHANNEL) -> Address:
        relayed = await self.allocate()
        await self.channel_bind(channel, peer)
        return relayed

    async def send_channel_data(self, channel: int, payload: bytes) -> None:
        """One ChannelData message, padded to 4 bytes when the client pads (RFC 8656 §12.5)."""
        await self.write(channel_data(channel, payload, pad=self.padding))

    async def binding(self) -> Message:
        return await self.transmit(self.session.outgoing(Method.BINDING))
