"""TCP allocations (RFC 6062) end to end on 127.0.0.1: the project's stream client (tests/support/streamclient.py)
against an in-process Server, with TCP peers of the test's own.

Both directions (Connect to a peer; a peer connecting to the relayed address), byte-exact data both ways over TCP
and TLS control connections, the 30 s timers (shortened), closes when the allocation ends, back-pressure, and the
resource limits: connection floods to a relayed address, data connections that never bind, the caps.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from certs import CertificateAuthority, make_ca, write_server_files
from interop import (
    LOOPBACK,
    LOOPBACK_V6,
    PASSWORD,
    USERNAME,
    MiniTurnClient,
    TurnRequestFailed,
    free_port,
    has_ipv6,
    wait_until,
)
from streamclient import StreamTurnClient, bind_data_connection
from turnsession import error_code

import pyturn.core.tcp_relay
import pyturn.net.tcp_relay
from pyturn.config import Config
from pyturn.core.events import DataConnectionBound
from pyturn.server import Server
from pyturn.wire.message import Address, Attr, Method

WAIT = 5.0
CONNECTION_ATTEMPT = 0x000C  # RFC 6062 §6.1


# ------------------------------------------------------------------------------------------- helpers
class EchoPeer:
    """A TCP peer on 127.0.0.1 (or `host`) that echoes (or, with `hold`, reads nothing until released)."""

    def __init__(self, *, hold: bool = False, host: str = LOOPBACK) -> None:
        self.host = host
        self.hold = asyncio.Event()
        if not hold:
            self.hold.set()
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> Address:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        address = self.server.sockets[0].getsockname()
        return (address[0], address[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.hold.wait()
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def echo_peer() -> AsyncIterator[Address]:
    peer = EchoPeer()
    address = await peer.start()
    yield address
    peer.close()


async def ends(reader: asyncio.StreamReader, timeout: float = WAIT) -> bool:
    """True when the other side closes (EOF or reset) within timeout; data before that is skipped."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
        return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    """Write payload to an echoing path and read the same number of bytes back."""
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), WAIT)


def links(server: Server) -> int:
    runtime = server.runtime
    assert runtime is not None
    return len(runtime.tcp.links)


async def control(server: Server, *peers: Address, context: ssl.SSLContext | None = None,
                  kind: str = "tcp") -> tuple[StreamTurnClient, Address]:
    client = await StreamTurnClient.connect(server.addresses[kind][0], context=context)
    relayed = await client.allocate_tcp()
    if peers:
        await client.create_permission(*peers)
    return client, relayed


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca()


# ------------------------------------------------------------------------------ client-initiated (§4.3)
@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
async def test_connect_relays_bytes_both_ways(
    secure: bool, loopback_config: Config, echo_peer: Address, ca: CertificateAuthority, tmp_path: Path
) -> None:
    config, context, kind = loopback_config, None, "tcp"
    if secure:
        files = write_server_files(ca, tmp_path)
        config = loopback_config.replace(
            tls_turn_port=free_port(ipv6=False), tls_server_certificate_filename=str(files.certificate),
            tls_server_private_key_filename=str(files.key) if files.key is not None else "",
            tls_private_key_password=files.password, tls_temp_dh_filename="",
        )
        context = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.pem")))
        kind = "tls"
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        client, relayed = await control(server, echo_peer, context=context, kind=kind)
        assert relayed[0] == LOOPBACK
        connection_id = await client.connect_peer(echo_peer)
        reader, writer = await client.data_connection(server.addresses[kind][0], connection_id, context=context)
        try:
            for size in (1, 2, 3, 20, 1500):  # 20 bytes look like a STUN header: relayed as is, not parsed
                payload = b"\x00\x01\x00\x00" + os.urandom(size) if size >= 20 else os.urandom(size)
                assert await exchange(reader, writer, payload) == payload
            bulk = os.urandom(2 * 1024 * 1024)
            assert await exchange(reader, writer, bulk) == bulk
            # The control connection still works beside the data connection.
            assert (await client.binding()).get(Attr.XOR_MAPPED_ADDRESS) is not None
        finally:
            writer.close()
            await client.close()
        await wait_until(lambda: links(server) == 0)


@pytest.mark.requires(has_ipv6(), "this host has no IPv6 loopback")
async def test_connect_over_ipv6_relay(loopback_config: Config) -> None:
    # RFC 6156 with RFC 6062: an IPv6 TCP relayed address asked for over an IPv4 control connection.
    peer = EchoPeer(host=LOOPBACK_V6)
    peer_address = await peer.start()
    config = loopback_config.replace(relay_v6_address=LOOPBACK_V6)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tcp"][0])
        try:
            relayed = await client.allocate_tcp((Attr.REQUESTED_ADDRESS_FAMILY, 2))
            assert relayed[0] == LOOPBACK_V6
            await client.create_permission(peer_address)
            connection_id = await client.connect_peer(peer_address)
            reader, writer = await client.data_connection(server.addresses["tcp"][0], connection_id)
            payload = os.urandom(100_000)
            assert await exchange(reader, writer, payload) == payload
            writer.close()
        finally:
            await client.close()
    peer.close()


async def test_connect_to_closed_port_gets_447(loopback_config: Config) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        closed = (LOOPBACK, free_port(ipv6=False))
        client, _ = await control(server, closed)
        try:
            response = await client.connect_request(closed)
            assert error_code(response) == 447
            assert response.method == 0x000A
        finally:
            await client.close()


async def test_connect_without_descriptors_to_spare_gets_447(
    loopback_config: Config, echo_peer: Address, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors (the budget the accept path checks too): no socket is opened, the Connect gets 447."""
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, _ = await control(server, echo_peer)
        try:
            assert server._runtime is not None
            monkeypatch.setattr(server._runtime, "sockets_exhausted", lambda: True)
            response = await client.connect_request(echo_peer)
            assert error_code(response) == 447
            assert links(server) == 0
        finally:
            await client.close()


async def test_connect_to_loopback_with_default_policy_gets_403(echo_peer: Address) -> None:
    config = Config(turn_address=LOOPBACK, turn_v6_address="", turn_port=0, tls_turn_port=0,
                    unauthenticated_rate_limit=0, user_database_check_interval=0)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        client, _ = await control(server)
        try:
            for peer in (echo_peer, ("::ffff:127.0.0.1", echo_peer[1])):
                code = error_code(await client.connect_request(peer))
                assert code in (403, 443)  # 443: an IPv6 spelling on an IPv4 allocation (RFC 6156 §5)
            assert error_code(await client.connect_request(echo_peer)) == 403
        finally:
            await client.close()


async def test_udp_client_tcp_allocate_gets_400(loopback_config: Config) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            with pytest.raises(TurnRequestFailed) as failed:
                await client.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 6))
            assert failed.value.code == 400  # RFC 6062 §5.1 item 2


# ------------------------------------------------------------------------------- peer-initiated (§4.4)
async def test_peer_connection_becomes_connection_attempt(loopback_config: Config) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, relayed = await control(server, (LOOPBACK, 0))
        peer_reader, peer_writer = await asyncio.open_connection(*relayed)
        try:
            peer_writer.write(b"early bytes")  # sent before the bind: held until it (RFC 6062 §5.3)
            await peer_writer.drain()
            connection_id, peer = await client.connection_attempt()
            assert peer == peer_writer.get_extra_info("sockname")[:2]
            reader, writer = await client.data_connection(server.addresses["tcp"][0], connection_id)
            bound = [event for event in server.events if isinstance(event, DataConnectionBound)]
            assert [(event.connection_id, event.peer) for event in bound] == [(connection_id, peer)]
            assert await asyncio.wait_for(reader.readexactly(11), WAIT) == b"early bytes"
            writer.write(b"to the peer")
            await writer.drain()
            assert await asyncio.wait_for(peer_reader.readexactly(11), WAIT) == b"to the peer"
            payload = os.urandom(300_000)
            peer_writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), WAIT) == payload
            # Half-close passes through: the peer's EOF reaches the client, who can still answer.
            peer_writer.write_eof()
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
            writer.write(b"last words")
            await writer.drain()
            assert await asyncio.wait_for(peer_reader.readexactly(10), WAIT) == b"last words"
            writer.close()
            assert await ends(peer_reader)
        finally:
            peer_writer.close()
            await client.close()
        await wait_until(lambda: links(server) == 0)


async def test_peer_without_permission_is_refused(loopback_config: Config) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, relayed = await control(server)  # no permission at all
        try:
            try:
                peer_reader, peer_writer = await asyncio.open_connection(*relayed)
            except ConnectionError:
                pass  # reset before the handshake was seen done
            else:
                assert await ends(peer_reader)
                peer_writer.close()
            with pytest.raises(TimeoutError):
                await client.connection_attempt(timeout=0.5)
            assert links(server) == 0
        finally:
            await client.close()


# ------------------------------------------------------------------------------------------ timers
async def test_unbound_peer_connection_closes_after_bind_timeout(
    loopback_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pyturn.core.tcp_relay, "BIND_TIMEOUT", 0.5)  # RFC 6062 §5.3's 30 s, shortened
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, relayed = await control(server, (LOOPBACK, 0))
        try:
            peer_reader, peer_writer = await asyncio.open_connection(*relayed)
            connection_id, _ = await client.connection_attempt()
            assert links(server) == 1
            assert await ends(peer_reader, timeout=3.0)  # closed by the server's timer
            peer_writer.close()
            assert links(server) == 0
            reader, writer = await asyncio.open_connection(*server.addresses["tcp"][0])
            response = await bind_data_connection(reader, writer, client.session, connection_id)
            assert error_code(response) == 400  # RFC 6062 §5.4: no such pending connection any more
            writer.close()
        finally:
            await client.close()


async def test_half_open_data_connection_is_closed(loopback_config: Config) -> None:
    # A connection that never sends its ConnectionBind (or whose ConnectionBind failed) holds nothing and is
    # closed after TcpAuthTimeout, as any connection without an allocation.
    async with Server(loopback_config.replace(tcp_auth_timeout=1), users={USERNAME: PASSWORD}) as server:
        client, _ = await control(server)
        silent_reader, silent_writer = await asyncio.open_connection(*server.addresses["tcp"][0])
        failed_reader, failed_writer = await asyncio.open_connection(*server.addresses["tcp"][0])
        try:
            response = await bind_data_connection(failed_reader, failed_writer, client.session, 12345)
            assert error_code(response) == 400
            assert await ends(silent_reader, timeout=4.0)
            assert await ends(failed_reader, timeout=4.0)
        finally:
            silent_writer.close()
            failed_writer.close()
            await client.close()


# --------------------------------------------------------------------------------- allocation end
@pytest.mark.parametrize("how", ["refresh-0", "control-closed", "expired"])
async def test_allocation_end_closes_data_connections(how: str, loopback_config: Config, echo_peer: Address) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, relayed = await control(server, echo_peer, (LOOPBACK, 0))
        connection_id = await client.connect_peer(echo_peer)
        reader, writer = await client.data_connection(server.addresses["tcp"][0], connection_id)
        assert await exchange(reader, writer, b"ping") == b"ping"
        pending_reader, pending_writer = await asyncio.open_connection(*relayed)
        await client.connection_attempt()
        assert links(server) == 2
        if how == "refresh-0":
            await client.request(Method.REFRESH, (Attr.LIFETIME, 0))
        elif how == "expired":
            assert server.expire_allocations() == 1  # as if the lifetime had run out (docs/testing.md)
        else:
            await client.close()
        assert await ends(reader)
        assert await ends(pending_reader)
        await wait_until(lambda: links(server) == 0 and server.allocation_count() == 0)
        with pytest.raises(OSError):  # the relayed address is gone
            await asyncio.open_connection(*relayed)
        writer.close()
        pending_writer.close()
        await client.close()


# ----------------------------------------------------------------------------------- back-pressure
async def test_slow_peer_pauses_client_reads(loopback_config: Config) -> None:
    peer = EchoPeer(hold=True)  # accepts and reads nothing until released
    peer_address = await peer.start()
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, _ = await control(server, peer_address)
        connection_id = await client.connect_peer(peer_address)
        reader, writer = await client.data_connection(server.addresses["tcp"][0], connection_id)
        payload = os.urandom(32 * 1024 * 1024)
        writer.write(payload)  # far more than the kernel buffers on both hops hold
        drained = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(1.0)
        runtime = server.runtime
        assert runtime is not None
        link = next(iter(runtime.tcp.links.values()))
        assert link.transport is not None
        # What the server holds towards the peer stays near the high-water mark, not the 32 MB sent.
        assert link.transport.get_write_buffer_size() < 1024 * 1024
        assert not drained.done()  # the client is held back by TCP flow control
        peer.hold.set()
        received = await asyncio.wait_for(reader.readexactly(len(payload)), 30.0)
        assert received == payload
        await asyncio.wait_for(drained, WAIT)
        writer.close()
        await client.close()
    peer.close()


async def test_closing_towards_a_peer_that_never_reads_is_bounded(
    loopback_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pyturn.net.tcp_relay, "CLOSE_GRACE", 0.3)
    peer = EchoPeer(hold=True)  # never released
    peer_address = await peer.start()
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, _ = await control(server, peer_address)
        connection_id = await client.connect_peer(peer_address)
        reader, writer = await client.data_connection(server.addresses["tcp"][0], connection_id)
        writer.write(os.urandom(8 * 1024 * 1024))
        await asyncio.sleep(0.5)
        runtime = server.runtime
        assert runtime is not None
        link = runtime.tcp.links[connection_id]
        assert link.transport is not None and link.transport.get_write_buffer_size() > 0
        sock = link.transport.get_extra_info("socket")
        await client.request(Method.REFRESH, (Attr.LIFETIME, 0))  # the allocation ends, bytes still queued
        await wait_until(lambda: sock.fileno() == -1, timeout=3.0)  # aborted after the grace period
        assert await ends(reader)
        writer.close()
        await client.close()
    peer.close()


async def test_slow_client_pauses_peer_reads(loopback_config: Config) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client, relayed = await control(server, (LOOPBACK, 0))
        _, peer_writer = await asyncio.open_connection(*relayed)
        connection_id, _ = await client.connection_attempt()
        reader, writer = await client.data_connection(server.addresses["tcp"][0], connection_id)
        payload = os.urandom(32 * 1024 * 1024)
        peer_writer.write(payload)  # the client reads nothing for now
        drained = asyncio.ensure_future(peer_writer.drain())
        await asyncio.sleep(1.0)
        runtime = server.runtime
        assert runtime is not None
        stream = next(stream for stream in runtime.streams.values() if stream.pipe is not None)
        assert stream.transport is not None
        assert stream.transport.get_write_buffer_size() < 1024 * 1024
        assert not drained.done()
        received = await asyncio.wait_for(reader.readexactly(len(payload)), 30.0)
        assert received == payload
        await asyncio.wait_for(drained, WAIT)
        writer.close()
        peer_writer.close()
        await client.close()


# --------------------------------------------------------------------------------- floods and caps
async def test_connection_flood_to_relayed_address_is_capped(loopback_config: Config) -> None:
    config = loopback_config.replace(max_tcp_relay_connections_per_allocation=8)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        client, relayed = await control(server, (LOOPBACK, 0))
        stranger, stranger_relayed = await control(server)  # no permission: every connection refused
        opened: list[asyncio.StreamWriter] = []
        try:
            for target in (relayed, stranger_relayed):
                for _ in range(100):
                    try:
                        _, peer_writer = await asyncio.wait_for(asyncio.open_connection(*target), WAIT)
                    except OSError:
                        continue  # refused in the backlog
                    opened.append(peer_writer)
            await wait_until(lambda: links(server) == 8)
            attempts = set()
            for _ in range(8):
                attempts.add((await client.connection_attempt())[0])
            assert len(attempts) == 8
            with pytest.raises(TimeoutError):
                await client.connection_attempt(timeout=0.5)
            await asyncio.sleep(0.3)
            assert links(server) == 8  # the cap holds; the rest were closed at once
            # The capped allocation can still Connect out once room is made.
            assert error_code(await client.connect_request((LOOPBACK, 9))) == 508
        finally:
            for peer_writer in opened:
                peer_writer.close()
            await client.close()
            await stranger.close()
        await wait_until(lambda: links(server) == 0)


async def test_global_cap(loopback_config: Config, echo_peer: Address) -> None:
    config = loopback_config.replace(max_tcp_relay_connections=1)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        first, _ = await control(server, echo_peer)
        second, _ = await control(server, echo_peer)
        try:
            await first.connect_peer(echo_peer)
            assert error_code(await second.connect_request(echo_peer)) == 508
        finally:
            await first.close()
            await second.close()
