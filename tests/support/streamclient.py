"""The TCP/TLS driver of the shared TURN test client (tests/support/turnsession.py): one long-term-credential
client over one stream (tests/interop/test_interop_tcp_tls.py, tests/net/test_relay_expiry.py,
tests/net/test_metrics.py), and the RFC 6062 client steps: TCP Allocate, Connect, ConnectionAttempt and
ConnectionBind on a new data connection (tests/net/test_tcp_relay.py)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from interop import PASSWORD, USERNAME
from turnsession import (
    REQUESTED_TRANSPORT_TCP,
    REQUESTED_TRANSPORT_UDP,
    ClientSession,
    Outgoing,
    SessionField,
    channel_data,
    response_to,
    run_exchange_async,
)

from pyturn.wire.codec import decode_message
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

    # ------------------------------------------------------------------------------ RFC 6062 TCP allocations
    async def allocate_tcp(self, *extra: tuple[int, Any]) -> Address:
        """RFC 6062 §4.1: an Allocate for a TCP relayed address."""
        response = await self.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, REQUESTED_TRANSPORT_TCP), *extra)
        relayed: Address = response.get(Attr.XOR_RELAYED_ADDRESS)
        return relayed

    async def create_permission(self, *peers: Address) -> None:
        await self.request(Method.CREATE_PERMISSION, *((Attr.XOR_PEER_ADDRESS, peer) for peer in peers))

    async def connect_request(self, peer: Address) -> Message:
        """RFC 6062 §4.3: a Connect, whatever the answer."""
        outgoing = self.session.outgoing(Method.CONNECT, [(Attr.XOR_PEER_ADDRESS, peer)])
        return await self.transmit(outgoing)

    async def connect_peer(self, peer: Address) -> int:
        """RFC 6062 §4.3: a Connect that must succeed; its CONNECTION-ID."""
        response = await self.request(Method.CONNECT, (Attr.XOR_PEER_ADDRESS, peer))
        connection_id: int = response.get(Attr.CONNECTION_ID)
        return connection_id

    async def connection_attempt(self, timeout: float = WAIT) -> tuple[int, Address]:
        """RFC 6062 §4.4: the next ConnectionAttempt indication: (CONNECTION-ID, XOR-PEER-ADDRESS)."""
        while True:
            frame = await self.next_frame(timeout)
            if frame[0] & 0xC0:
                continue
            message = decode_message(frame)
            if message.method == Method.CONNECTION_ATTEMPT and message.msg_class is MessageClass.INDICATION:
                return message.get(Attr.CONNECTION_ID), message.get(Attr.XOR_PEER_ADDRESS)

    async def data_connection(
        self, address: Address, connection_id: int, *, context: ssl.SSLContext | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """RFC 6062 §4.4: a new connection to the server with this client's credentials, bound to `connection_id`
        by a ConnectionBind; from then on the stream carries the peer's bytes as they are. The response is read
        byte by byte from its header, so nothing of the peer's data that follows it is taken for a frame."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address[0], address[1], ssl=context), WAIT)
        response = await bind_data_connection(reader, writer, self.session, connection_id)
        assert response.msg_class is MessageClass.SUCCESS, response.get(Attr.ERROR_CODE)
        assert self.session.verify(response), "ConnectionBind success not signed"
        return reader, writer


async def bind_data_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: ClientSession, connection_id: int | None
) -> Message:
    """Send a ConnectionBind (signed with the session's credentials) and read exactly its response."""
    attributes = [] if connection_id is None else [(Attr.CONNECTION_ID, connection_id)]
    outgoing = session.outgoing(Method.CONNECTION_BIND, attributes)
    writer.write(outgoing.data)
    await writer.drain()
    header = await asyncio.wait_for(reader.readexactly(20), WAIT)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[2:4], "big")), WAIT)
    response = decode_message(header + body)
    assert response.transaction_id == outgoing.transaction_id
    return response
