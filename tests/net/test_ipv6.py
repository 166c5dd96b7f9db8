"""IPv6 listeners on TurnV6Address (docs/compatibility.md "Listeners"): Binding over UDP/TCP/TLS on ::1, allocations
from ::1 clients,
and the IPv4-only fallback when the host has no IPv6. Tests needing IPv6 skip without it (under CI they fail:
tests/support/requirements.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import pytest
from certs import make_ca, write_server_files
from interop import (
    LOOPBACK,
    LOOPBACK_V6,
    PASSWORD,
    USERNAME,
    MiniTurnClient,
    has_ipv6,
    python_module_available,
    start_echo_peer,
    udp_binding,
)

from pyturn.config import Config
from pyturn.server import Server
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Attr, Message, MessageClass, Method

WAIT = 5.0
needs_ipv6 = pytest.mark.requires(has_ipv6(), "this host has no IPv6 loopback")


@pytest.fixture
def dual_config(loopback_config: Config) -> Config:
    return loopback_config.replace(turn_v6_address=LOOPBACK_V6)


def _v6(addresses: list[tuple[str, int]]) -> tuple[str, int]:
    return next(address for address in addresses if ":" in address[0])


async def _stream_binding(host: str, port: int, context: ssl.SSLContext | None = None) -> Message:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), WAIT)
    try:
        request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
        writer.write(encode_message(request))
        header = await asyncio.wait_for(reader.readexactly(20), WAIT)
        body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[2:4], "big")), WAIT)
        response = decode_message(header + body)
        assert response.transaction_id == request.transaction_id
        return response
    finally:
        writer.close()


@needs_ipv6
async def test_ipv6_binding_on_every_transport(dual_config: Config, tmp_path: Path) -> None:
    ca = make_ca()
    files = write_server_files(ca, tmp_path)
    config = dual_config.replace(
        tls_turn_port=0, tls_server_certificate_filename=str(files.certificate),
        tls_server_private_key_filename=str(files.key), tls_temp_dh_filename="",
    )
    from pyturn.net.tls import make_server_context

    async with Server(config, users={USERNAME: PASSWORD}, ssl_context=make_server_context(config)) as server:
        udp, tcp, tls = (_v6(server.addresses[kind]) for kind in ("udp", "tcp", "tls"))
        assert udp[0] == tcp[0] == tls[0] == LOOPBACK_V6
        response = await asyncio.to_thread(udp_binding, *udp, 2.0)
        assert response is not None and response.get(Attr.XOR_MAPPED_ADDRESS)[0] == LOOPBACK_V6
        response = await _stream_binding(*tcp)
        assert response.get(Attr.XOR_MAPPED_ADDRESS)[0] == LOOPBACK_V6
        context = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.pem")))
        response = await _stream_binding(*tls, context=context)
        assert response.get(Attr.XOR_MAPPED_ADDRESS)[0] == LOOPBACK_V6
        # IPv4 keeps working beside it.
        assert await asyncio.to_thread(udp_binding, *server.addresses["udp"][0], 2.0) is not None


@needs_ipv6
@pytest.mark.parametrize(("family", "peer_host"), [(1, LOOPBACK), (2, LOOPBACK_V6)], ids=["relay-v4", "relay-v6"])
async def test_ipv6_udp_client_allocates_and_relays(family: int, peer_host: str, dual_config: Config) -> None:
    # REQUESTED-ADDRESS-FAMILY is always sent: without it pyturn relays in the listener's family (reTurn's way).
    peer_transport, _ = await start_echo_peer(peer_host)
    peer_address = peer_transport.get_extra_info("sockname")[:2]
    try:
        async with Server(dual_config, users={USERNAME: PASSWORD}) as server:
            with MiniTurnClient(_v6(server.addresses["udp"])) as client:
                relayed = await asyncio.wait_for(client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, family)), WAIT)
                assert (":" in relayed[0]) == (family == 2)
                await client.create_permission(peer_address)
                await client.send_indication(peer_address, b"hello over v6")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + WAIT
                while True:
                    data = await client.receive(deadline - loop.time())
                    message = decode_message(data)
                    if message.method == Method.DATA:
                        break
                assert message.get(Attr.DATA) == b"hello over v6"
                assert message.get(Attr.XOR_PEER_ADDRESS) == peer_address
                assert server.allocation_count() == 1
    finally:
        peer_transport.close()


@needs_ipv6
async def test_ipv6_aioice_tcp_client_allocates(dual_config: Config) -> None:
    python_module_available("aioice")
    from aioice.turn import create_turn_endpoint

    class Collector(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.received: asyncio.Queue[bytes] = asyncio.Queue()

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.received.put_nowait(data)

    # aioice sends no REQUESTED-ADDRESS-FAMILY, so its relay is IPv4 (RFC 8656 §7.2) even over an IPv6 listener.
    peer_transport, _ = await start_echo_peer("127.0.0.1")
    peer = peer_transport.get_extra_info("sockname")[:2]
    try:
        async with Server(dual_config, users={USERNAME: PASSWORD}) as server:
            transport, collector = await asyncio.wait_for(
                create_turn_endpoint(Collector, _v6(server.addresses["tcp"]), USERNAME, PASSWORD, transport="tcp"),
                WAIT,
            )
            try:
                transport.sendto(b"ping", peer)
                assert await asyncio.wait_for(collector.received.get(), WAIT) == b"ping"
            finally:
                transport.close()
    finally:
        peer_transport.close()


async def test_ipv6_unavailable_warns_and_serves_ipv4(
    dual_config: Config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("pyturn.server.has_ipv6", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pyturn.server"):
        async with Server(dual_config, users={USERNAME: PASSWORD}) as server:
            assert all(":" not in host for addresses in server.addresses.values() for host, _ in addresses)
            assert server.addresses["udp"][0][0] == LOOPBACK
            response = await asyncio.to_thread(udp_binding, *server.addresses["udp"][0], 2.0)
            assert response is not None
    assert any("IPv6" in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)


async def test_ipv6_empty_address_serves_ipv4_only(loopback_config: Config) -> None:
    async with Server(loopback_config.replace(turn_v6_address=""), users={USERNAME: PASSWORD}) as server:
        assert [host for host, _ in server.addresses["udp"]] == [LOOPBACK]
