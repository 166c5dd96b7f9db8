"""TURN over TCP and TLS (RFC 8656 §12.5, RFC 7443): real clients (aioice, coturn's turnutils_uclient) and a raw
stream client built on pyturn.wire for framing, limits, TLS key layouts, ALPN and certificate reload.

Everything runs on 127.0.0.1 with ephemeral ports; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from certs import CertificateAuthority, ServerFiles, make_ca, write_server_files
from interop import (
    LOOPBACK,
    PASSWORD,
    USERNAME,
    free_port,
    free_udp_port_pair,
    python_module_available,
    pyturn_process,
    run_uclient,
    start_echo_peer,
    turnutils_peer,
    wait_until,
    write_config,
)
from streamclient import StreamTurnClient

from pyturn.config import Config
from pyturn.errors import PyturnError
from pyturn.net.tls import TlsSetupError, make_server_context
from pyturn.server import Server
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import decode_channel_data, encode_channel_data
from pyturn.wire.message import Address, Message, MessageClass, Method

WAIT = 5.0
CHANNEL = 0x4000


# ------------------------------------------------------------------------------------------- helpers
async def closed_by_server(client: StreamTurnClient, timeout: float = WAIT) -> bool:
    """True when the server ends the stream within timeout (EOF or reset)."""
    try:
        while True:
            chunk = await asyncio.wait_for(client.reader.read(65536), timeout)
            if not chunk:
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.received.put_nowait((data, addr))


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca()


@pytest.fixture
def server_files(ca: CertificateAuthority, tmp_path: Path) -> ServerFiles:
    return write_server_files(ca, tmp_path)


def client_context(ca: CertificateAuthority, tmp_path: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.pem")))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def tls_config(base: Config, files: ServerFiles, **changes: Any) -> Config:
    values: dict[str, Any] = {
        "tls_turn_port": free_port(ipv6=False),
        "tls_server_certificate_filename": str(files.certificate),
        "tls_server_private_key_filename": str(files.key) if files.key is not None else "",
        "tls_private_key_password": files.password,
        "tls_temp_dh_filename": "",
    }
    values.update(changes)
    return base.replace(**values)


@pytest.fixture
async def echo_peer() -> AsyncIterator[Address]:
    transport, _ = await start_echo_peer()
    address = transport.get_extra_info("sockname")
    yield (address[0], address[1])
    transport.close()


# ------------------------------------------------------------------------------------------- aioice
@pytest.mark.interop
@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
async def test_aioice_stream_allocates_and_relays(
    secure: bool, loopback_config: Config, server_files: ServerFiles, ca: CertificateAuthority, tmp_path: Path,
    echo_peer: Address,
) -> None:
    python_module_available("aioice")
    from aioice.turn import create_turn_endpoint

    config = tls_config(loopback_config, server_files) if secure else loopback_config
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        kind = "tls" if secure else "tcp"
        address = server.addresses[kind][0]
        context = client_context(ca, tmp_path) if secure else None
        transport, collector = await asyncio.wait_for(
            create_turn_endpoint(Collector, address, USERNAME, PASSWORD, ssl=context, transport="tcp"), WAIT
        )
        try:
            assert server.allocation_count() == 1
            # 1..4 bytes cover every ChannelData padding length; 171 is coturn's usual size.
            for payload in (b"a", b"ab", b"abc", b"abcd", os.urandom(171)):
                transport.sendto(payload, echo_peer)
                data, source = await asyncio.wait_for(collector.received.get(), WAIT)
                assert (data, source) == (payload, echo_peer)
        finally:
            transport.close()
        await wait_until(lambda: server.allocation_count() == 0)


# --------------------------------------------------------------------------------- turnutils_uclient
@pytest.mark.interop
@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_uclient_stream_relays_without_loss(secure: bool, server_files: ServerFiles, tmp_path: Path) -> None:
    port = free_port()
    tls_port = free_port()
    config = write_config(tmp_path, port, extra={
        "TlsTurnPort": tls_port,
        "TlsServerCertificateFilename": server_files.certificate,
        "TlsServerPrivateKeyFilename": server_files.key,
        "TlsTempDhFilename": "",
    })
    peer_port = free_udp_port_pair()
    with pyturn_process(config, port) as server, turnutils_peer(peer_port):
        arguments = ["-t", "-n", "200", "-m", "5", "-l", "170", "-e", LOOPBACK, "-r", str(peer_port),
                     "-u", USERNAME, "-w", PASSWORD]
        if secure:
            arguments += ["-S", "-p", str(tls_port)]  # -t -S = TLS; -S alone would be DTLS
        else:
            arguments += ["-p", str(port)]
        report = run_uclient([*arguments, LOOPBACK])
        log = server.log()
    assert report.lost == 0, report.output[-3000:]
    assert report.sent == report.received > 0
    assert ("/tls" if secure else "/tcp") in log


# ------------------------------------------------------------------------------------- raw framing
@pytest.mark.parametrize("padding", [True, False], ids=["padded", "unpadded"])
async def test_stream_channel_data_round_trips_with_configured_padding(
    padding: bool, loopback_config: Config, echo_peer: Address
) -> None:
    config = loopback_config.replace(tcp_channel_data_padding=padding)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tcp"][0], padding=padding)
        try:
            await client.allocate_with_channel(echo_peer)
            for size in (1, 2, 3, 4, 5, 170):
                payload = os.urandom(size)
                await client.write(encode_channel_data(CHANNEL, payload, pad=padding))
                # Read exactly the expected bytes: padding present or absent exactly as configured.
                expected = encode_channel_data(CHANNEL, payload, pad=padding)
                assert await asyncio.wait_for(client.reader.readexactly(len(expected)), WAIT) == expected
            # Nothing stray after the last frame: the next frame is the Binding answer.
            assert (await client.binding()).msg_class is MessageClass.SUCCESS
        finally:
            await client.close()


async def test_stream_many_messages_in_one_segment(loopback_config: Config, echo_peer: Address) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tcp"][0])
        try:
            await client.allocate_with_channel(echo_peer)
            payloads = [os.urandom(size) for size in (1, 7, 30, 4, 99)]
            binding = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
            burst = b"".join(encode_channel_data(CHANNEL, p, pad=True) for p in payloads) + encode_message(binding)
            await client.write(burst)
            echoed: list[bytes] = []
            answered = False
            while len(echoed) < len(payloads) or not answered:
                frame = await client.next_frame()
                if frame[0] & 0xC0 == 0x40:
                    echoed.append(decode_channel_data(frame)[1])
                else:
                    answered = decode_message(frame).transaction_id == binding.transaction_id
            assert echoed == payloads
        finally:
            await client.close()


async def test_stream_message_split_over_many_segments(loopback_config: Config, echo_peer: Address) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tcp"][0])
        # TCP_NODELAY and a loop turn per byte: the server sees the frames arrive one byte per segment.
        client.writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await client.allocate_with_channel(echo_peer)
            payload = os.urandom(33)
            frame = encode_channel_data(CHANNEL, payload, pad=True)
            binding = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
            for byte in frame + encode_message(binding):
                await client.write(bytes([byte]))
                await asyncio.sleep(0)
            assert decode_channel_data(await client.next_frame()) == (CHANNEL, payload)
            assert decode_message(await client.next_frame()).transaction_id == binding.transaction_id
        finally:
            await client.close()


async def test_stream_allocation_dies_with_connection(loopback_config: Config, echo_peer: Address) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tcp"][0])
        await client.allocate_with_channel(echo_peer)
        assert server.allocation_count() == 1
        await client.close()
        await wait_until(lambda: server.allocation_count() == 0)


@pytest.mark.parametrize(
    "header",
    [bytes([0x40, 0x00, 0xFF, 0xFF]), bytes([0x00, 0x01, 0xFF, 0xFC])],
    ids=["channel-data-65535", "stun-65532"],
)
async def test_stream_oversized_frame_closes_connection(header: bytes, loopback_config: Config) -> None:
    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tcp"][0])
        try:
            await client.write(header)
            assert await closed_by_server(client)
        finally:
            await client.close()


async def test_stream_without_allocation_closed_after_auth_timeout(loopback_config: Config) -> None:
    config = loopback_config.replace(tcp_auth_timeout=1)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        idle = await StreamTurnClient.connect(server.addresses["tcp"][0])
        talking = await StreamTurnClient.connect(server.addresses["tcp"][0])
        try:
            assert (await talking.binding()).msg_class is MessageClass.SUCCESS  # a Binding is no allocation
            assert await closed_by_server(idle, timeout=3.0)
            assert await closed_by_server(talking, timeout=3.0)
        finally:
            await idle.close()
            await talking.close()


async def test_stream_with_allocation_outlives_auth_timeout(loopback_config: Config, echo_peer: Address) -> None:
    config = loopback_config.replace(tcp_auth_timeout=1)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tcp"][0])
        try:
            await client.allocate_with_channel(echo_peer)
            assert not await closed_by_server(client, timeout=1.5)
            assert server.allocation_count() == 1
        finally:
            await client.close()


# ------------------------------------------------------------------------------------------------ TLS
@pytest.mark.parametrize(
    ("key_in_certificate", "password"),
    [(False, ""), (False, "s3cret pass"), (True, ""), (True, "s3cret pass")],
    ids=["separate-key", "encrypted-key", "key-in-cert", "encrypted-key-in-cert"],
)
async def test_tls_loads_key_layouts_and_relays(
    key_in_certificate: bool, password: str, ca: CertificateAuthority, tmp_path: Path, loopback_config: Config,
    echo_peer: Address,
) -> None:
    files = write_server_files(ca, tmp_path, key_in_certificate=key_in_certificate, password=password)
    config = tls_config(loopback_config, files)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        client = await StreamTurnClient.connect(server.addresses["tls"][0], context=client_context(ca, tmp_path))
        try:
            tls = client.writer.get_extra_info("ssl_object")
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert int(tls.getpeercert()["serialNumber"], 16) == files.serial
            await client.allocate_with_channel(echo_peer)
            await client.write(encode_channel_data(CHANNEL, b"over tls", pad=True))
            assert decode_channel_data(await client.next_frame()) == (CHANNEL, b"over tls")
        finally:
            await client.close()


@pytest.mark.parametrize("password", ["", "wrong"], ids=["no-password", "wrong-password"])
def test_tls_encrypted_key_without_right_password_is_refused(
    password: str, ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = write_server_files(ca, tmp_path, password="right")
    config = Config(tls_server_certificate_filename=str(files.certificate),
                    tls_server_private_key_filename=str(files.key), tls_private_key_password=password)
    with pytest.raises(TlsSetupError):
        make_server_context(config)  # refused at once: never a terminal prompt for the passphrase


async def test_tls_unusable_certificate_fails_startup(tmp_path: Path, loopback_config: Config) -> None:
    (tmp_path / "broken.pem").write_text("not a certificate\n")
    config = loopback_config.replace(tls_turn_port=free_port(ipv6=False),
                                     tls_server_certificate_filename=str(tmp_path / "broken.pem"))
    with pytest.raises(PyturnError):
        async with Server(config, users={USERNAME: PASSWORD}):
            pass


def test_tls_missing_dh_file_only_warns(
    server_files: ServerFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tls_config(Config(), server_files, tls_temp_dh_filename=str(tmp_path / "absent-dh2048.pem"))
    with caplog.at_level(logging.WARNING, logger="pyturn.net.tls"):
        context = make_server_context(config)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert any("absent-dh2048.pem" in record.getMessage() and record.levelno == logging.WARNING
               for record in caplog.records)


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(["stun.turn"], "stun.turn"), (["stun.nat-discovery"], "stun.nat-discovery"),
     (["h2", "stun.turn"], "stun.turn"), (None, None), (["h2"], None)],
    ids=["turn", "nat-discovery", "turn-among-others", "no-alpn", "foreign-only"],
)
async def test_tls_alpn_negotiation(
    offered: list[str] | None, selected: str | None, server_files: ServerFiles, ca: CertificateAuthority,
    tmp_path: Path, loopback_config: Config,
) -> None:
    async with Server(tls_config(loopback_config, server_files), users={USERNAME: PASSWORD}) as server:
        context = client_context(ca, tmp_path, offered)
        client = await StreamTurnClient.connect(server.addresses["tls"][0], context=context)
        try:
            assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == selected
            assert (await client.binding()).msg_class is MessageClass.SUCCESS
        finally:
            await client.close()


async def test_tls_rejects_versions_below_1_2(
    server_files: ServerFiles, ca: CertificateAuthority, tmp_path: Path, loopback_config: Config
) -> None:
    async with Server(tls_config(loopback_config, server_files), users={USERNAME: PASSWORD}) as server:
        context = client_context(ca, tmp_path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # really offer 1.1, whatever the local OpenSSL policy
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await StreamTurnClient.connect(server.addresses["tls"][0], context=context)


async def test_tls_reload_serves_new_certificate_to_new_connections(
    ca: CertificateAuthority, tmp_path: Path, loopback_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    first = write_server_files(ca, tmp_path)
    async with Server(tls_config(loopback_config, first), users={USERNAME: PASSWORD}) as server:
        address = server.addresses["tls"][0]
        context = client_context(ca, tmp_path)

        async def served_serial() -> int:
            client = await StreamTurnClient.connect(address, context=context)
            try:
                return int(client.writer.get_extra_info("ssl_object").getpeercert()["serialNumber"], 16)
            finally:
                await client.close()

        established = await StreamTurnClient.connect(address, context=context)
        try:
            assert await served_serial() == first.serial
            second = write_server_files(ca, tmp_path)  # same file names, new certificate and key
            assert server.reload_tls() is True
            assert await served_serial() == second.serial
            # ALPN survives the swap, and the connection made before the reload keeps working.
            assert (await established.binding()).msg_class is MessageClass.SUCCESS

            # A broken replacement: the reload fails loudly and the certificate in service stays.
            second.certificate.write_text("garbage\n")
            with caplog.at_level(logging.ERROR, logger="pyturn.net.tls"):
                assert server.reload_tls() is False
            assert any("not reloaded" in record.getMessage() for record in caplog.records)
            assert await served_serial() == second.serial
        finally:
            await established.close()


async def test_tls_reload_with_context_given_in_code(
    server_files: ServerFiles, ca: CertificateAuthority, tmp_path: Path, loopback_config: Config
) -> None:
    context = make_server_context(tls_config(Config(), server_files))
    async with Server(loopback_config, users={USERNAME: PASSWORD}, ssl_context=context) as server:
        address = server.addresses["tls"][0]
        assert server.reload_tls() is False  # nothing to re-read: the caller owns the files
        newer = write_server_files(ca, tmp_path, stem="newer")
        assert server.reload_tls(make_server_context(tls_config(Config(), newer))) is True
        client = await StreamTurnClient.connect(address, context=client_context(ca, tmp_path))
        try:
            assert int(client.writer.get_extra_info("ssl_object").getpeercert()["serialNumber"], 16) == newer.serial
        finally:
            await client.close()


async def test_tls_silent_handshake_is_dropped(
    server_files: ServerFiles, loopback_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pyturn.net.listeners.HANDSHAKE_TIMEOUT", 0.3)
    config = tls_config(loopback_config, server_files, tcp_auth_timeout=0)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        host, port = server.addresses["tls"][0]
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)  # plain TCP, no hello
        try:
            assert await asyncio.wait_for(reader.read(), 3.0) == b""
        except ConnectionError:
            pass  # a reset is just as closed
        finally:
            writer.close()


def test_tls_sighup_reloads_certificate_in_cli(server_files: ServerFiles, ca: CertificateAuthority,
                                               tmp_path: Path) -> None:
    port, tls_port = free_port(), free_port()
    config = write_config(tmp_path, port, extra={
        "TlsTurnPort": tls_port,
        "TlsServerCertificateFilename": server_files.certificate,
        "TlsServerPrivateKeyFilename": server_files.key,
        "TlsTempDhFilename": "",
    })
    context = client_context(ca, tmp_path)

    def served_serial() -> int:
        with socket.create_connection((LOOPBACK, tls_port), timeout=WAIT) as raw, \
                context.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
            return int(tls.getpeercert()["serialNumber"], 16)

    with pyturn_process(config, port) as server:
        assert served_serial() == server_files.serial
        renewed = write_server_files(ca, tmp_path)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while served_serial() != renewed.serial:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
