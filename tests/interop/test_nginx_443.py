"""The README's nginx `ssl_preread` snippet for sharing port 443: run as written (addresses moved to loopback), it
sends TURN clients (ALPN stun.turn, or the TURN server name) to pyturn's TLS listener and the rest to the web site.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from certs import make_ca, write_server_files
from interop import LOOPBACK, free_port, require_tool

from pyturn.server import Server, loopback_config
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.message import Message, MessageClass, Method

pytestmark = pytest.mark.interop

README = Path(__file__).resolve().parents[2] / "README.md"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian: libnginx-mod-stream
WAIT = 5.0
WEB_GREETING = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nweb"


def _readme_snippet() -> str:
    (block,) = re.findall(r"^```nginx\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    return block


def _server_context(tmp_path: Path) -> ssl.SSLContext:
    files = write_server_files(make_ca(), tmp_path, stem="web")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.certificate, files.key)
    return context


@pytest.fixture
async def web_site(tmp_path: Path) -> AsyncIterator[int]:
    """A stand-in for the HTTPS server behind nginx: answers every TLS connection with a fixed response."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(WEB_GREETING)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, LOOPBACK, 0, ssl=_server_context(tmp_path))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def pyturn_tls(tmp_path: Path) -> AsyncIterator[int]:
    files = write_server_files(make_ca(), tmp_path, stem="turn")
    config = loopback_config(tls_turn_port=free_port(ipv6=False),
                             tls_server_certificate_filename=str(files.certificate),
                             tls_server_private_key_filename=str(files.key), tls_temp_dh_filename="")
    async with Server(config, shared_secret="unused", transports=("tls",)) as server:
        yield server.addresses["tls"][0][1]


@pytest.fixture
def nginx(tmp_path: Path, web_site: int, pyturn_tls: int) -> Iterator[int]:
    binary = require_tool("nginx")
    listen = free_port(ipv6=False)
    snippet = (_readme_snippet()
               .replace("192.0.2.10:5349", f"127.0.0.1:{pyturn_tls}")
               .replace("127.0.0.1:8443", f"127.0.0.1:{web_site}")
               .replace("listen 192.0.2.10:443;", f"listen 127.0.0.1:{listen};"))
    assert f"127.0.0.1:{listen}" in snippet and f":{pyturn_tls};" in snippet, snippet
    preamble = [f"load_module {STREAM_MODULE};"] if STREAM_MODULE.exists() else []
    preamble += ["daemon off;", f"pid {tmp_path}/nginx.pid;", "error_log stderr;", "events {}"]
    config = tmp_path / "nginx.conf"
    config.write_text("\n".join(preamble) + "\n" + snippet)
    log = (tmp_path / "nginx.log").open("wb")
    process = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(config), "-e", "stderr"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, (tmp_path / "nginx.log").read_text()
            try:
                with socket.create_connection((LOOPBACK, listen), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield listen
    finally:
        process.terminate()
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT)
        log.close()


async def _first_bytes(port: int, server_name: str, alpn: list[str] | None) -> tuple[bytes, str | None]:
    """Connect through nginx, send a STUN Binding; what came back, and the ALPN the far end selected."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # routing is under test here, not the certificates
    if alpn:
        context.set_alpn_protocols(alpn)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOOPBACK, port, ssl=context, server_hostname=server_name), WAIT)
    try:
        request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
        writer.write(encode_message(request))
        data = await asyncio.wait_for(reader.read(4096), WAIT)
        return data, writer.get_extra_info("ssl_object").selected_alpn_protocol()
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("server_name", "alpn", "reaches"),
    [
        ("www.falcot.com", ["stun.turn"], "pyturn"),  # ALPN first
        ("turn.falcot.com", None, "pyturn"),  # no ALPN (many WebRTC stacks): the TURN server's name
        ("turn.falcot.com", ["h2", "stun.turn"], "pyturn"),
        ("www.falcot.com", None, "web"),
        ("www.falcot.com", ["h2", "http/1.1"], "web"),
    ],
)
async def test_nginx_443_routes_turn_to_pyturn_and_the_rest_to_the_web(
    nginx: int, server_name: str, alpn: list[str] | None, reaches: str
) -> None:
    data, selected = await _first_bytes(nginx, server_name, alpn)
    if reaches == "web":
        assert data == WEB_GREETING
        return
    response = decode_message(data)
    assert (response.method, response.msg_class) == (Method.BINDING, MessageClass.SUCCESS)
    if alpn:
        assert selected == "stun.turn"
