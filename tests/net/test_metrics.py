"""The metrics endpoint (pyturn.net.metrics): /metrics scraped with a real HTTP client while relaying, /healthz,
/readyz, bad input on the HTTP listener, the Grafana dashboard's metric names, MetricsAddress/MetricsPort."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from interop import PASSWORD, USERNAME, MiniTurnClient, TurnRequestFailed, start_echo_peer
from metricsclient import free_tcp_port, http_get, receive_payloads, scrape, value

from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config
from pyturn.net import http_endpoint
from pyturn.server import Server
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import StreamFramer, encode_channel_data
from pyturn.wire.integrity import long_term_key
from pyturn.wire.message import Attr, Message, MessageClass, Method

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-pyturn.json"
WAIT = 5.0
CHANNEL = 0x4000
@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server(users={USERNAME: PASSWORD}) as running:
        await running.start_metrics("127.0.0.1", 0)
        yield running


def metrics_address(server: Server) -> tuple[str, int]:
    assert server.metrics is not None
    return server.metrics.address


async def test_metrics_count_exactly_the_packets_relayed_each_way(server: Server) -> None:
    transport, _ = await start_echo_peer()
    peer = transport.get_extra_info("sockname")[:2]
    address = metrics_address(server)
    try:
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            await client.allocate()
            await client.create_permission(peer)
            # 5 Send indications of 100 bytes (the core's path); the echo comes back as 5 Data indications.
            for index in range(5):
                await client.send_indication(peer, bytes([index]) * 100)
            assert len(await receive_payloads(client, 5)) == 5
            first = await scrape(address)
            for direction in ("client_to_peer", "peer_to_client"):
                assert value(first, "pyturn_relayed_packets_total", direction=direction, transport="udp") == 5
                assert value(first, "pyturn_relayed_bytes_total", direction=direction, transport="udp") == 500
            # A channel, then 7 ChannelData of 200 bytes each way (the fast paths), scraped while in flight too.
            await client.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, peer))
            loop = asyncio.get_running_loop()
            during = asyncio.ensure_future(scrape(address))
            for index in range(7):
                await loop.sock_sendto(client.sock, encode_channel_data(CHANNEL, bytes([index]) * 200), client.server)
            assert len(await receive_payloads(client, 7)) == 7
            assert value(await during, "pyturn_relayed_packets_total", direction="client_to_peer",
                         transport="udp") <= 12
            last = await scrape(address)
    finally:
        transport.close()
    for direction in ("client_to_peer", "peer_to_client"):
        assert value(last, "pyturn_relayed_packets_total", direction=direction, transport="udp") == 12
        assert value(last, "pyturn_relayed_bytes_total", direction=direction, transport="udp") == 5 * 100 + 7 * 200
        for other in ("tcp", "tls"):
            assert value(last, "pyturn_relayed_packets_total", direction=direction, transport=other) == 0
    assert value(last, "pyturn_allocations", transport="udp", family="ipv4") == 1
    assert value(last, "pyturn_allocations_created_total", transport="udp", family="ipv4") == 1
    assert value(last, "pyturn_permissions") == 1
    assert value(last, "pyturn_channels") == 1
    # Allocate twice (401 challenge, then signed), CreatePermission and ChannelBind once each.
    assert value(last, "pyturn_requests_total", method="allocate") == 2
    assert value(last, "pyturn_requests_total", method="create_permission") == 1
    assert value(last, "pyturn_requests_total", method="channel_bind") == 1
    assert value(last, "pyturn_error_responses_total", method="allocate", code="401") == 1
    assert value(last, "pyturn_relay_ports", state="used") == 1
    assert value(last, "pyturn_relay_ports", state="free") == 65535 - 49152
    assert value(last, "pyturn_ready") == 1
    assert value(last, "process_cpu_seconds_total") > 0


async def test_metrics_auth_failures_by_reason(server: Server) -> None:
    address = metrics_address(server)
    target = server.addresses["udp"][0]
    with MiniTurnClient(target, USERNAME, "wrong password") as client, pytest.raises(TurnRequestFailed):
        await client.allocate()
    with MiniTurnClient(target, "mallory", PASSWORD) as client, pytest.raises(TurnRequestFailed):
        await client.allocate()
    with MiniTurnClient(target) as client:
        await client.allocate()  # learns the realm and a nonce
        client.nonce = "AAAAAAAAAAAAAAAA"  # not one the server issued: 438, then a retry with a fresh one
        await client.create_permission(("127.0.0.1", 9))
    series = await scrape(address)
    assert value(series, "pyturn_auth_failures_total", reason="bad_integrity") == 1
    assert value(series, "pyturn_auth_failures_total", reason="unknown_user") == 1
    assert value(series, "pyturn_auth_failures_total", reason="stale_nonce") == 1
    assert value(series, "pyturn_auth_failures_total", reason="expired_credentials") == 0
    assert value(series, "pyturn_error_responses_total", method="create_permission", code="438") == 1


async def test_metrics_labels_never_carry_a_username_address_or_port(server: Server) -> None:
    with MiniTurnClient(server.addresses["udp"][0]) as client:
        await client.allocate()
    text = (await asyncio.to_thread(http_get, metrics_address(server), "/metrics"))[1]
    labels = set(re.findall(r'(\w+)="', text))
    assert labels <= {"transport", "family", "direction", "method", "code", "reason", "state", "result"}
    assert USERNAME not in text and "127.0.0.1" not in text


async def test_healthz_and_readyz(server: Server) -> None:
    address = metrics_address(server)
    assert await asyncio.to_thread(http_get, address, "/healthz") == (200, "ok\n")
    assert (await asyncio.to_thread(http_get, address, "/readyz"))[0] == 200
    server.draining = True
    assert (await asyncio.to_thread(http_get, address, "/readyz"))[0] == 503
    assert (await asyncio.to_thread(http_get, address, "/healthz"))[0] == 200
    server.draining = False
    assert (await asyncio.to_thread(http_get, address, "/readyz"))[0] == 200
    assert (await asyncio.to_thread(http_get, address, "/nothing"))[0] == 404


async def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = WAIT) -> bytes:
    """Send raw bytes, return everything the listener answers until it closes (bounded by `timeout`)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        return b""
    finally:
        writer.transport.abort()


@pytest.mark.parametrize(("request_bytes", "status"), [
    pytest.param(b"\x00\xff garbage \r\n\r\n", b"400", id="garbage"),
    pytest.param(b"GET /metrics HTTP/2.0\r\n\r\n", b"400", id="http2"),
    pytest.param(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"405", id="post"),
    pytest.param(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"400", id="huge-header"),
    pytest.param(b"GET metrics HTTP/1.1\r\n\r\n", b"400", id="no-slash"),
])
async def test_http_listener_answers_bad_requests_with_an_error(server: Server, request_bytes: bytes,
                                                                 status: bytes) -> None:
    answer = await raw_exchange(metrics_address(server), request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:100]


async def test_http_listener_head_gets_headers_only(server: Server) -> None:
    answer = await raw_exchange(metrics_address(server), b"HEAD /metrics HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head and body == b""


async def relay_round_trips(client: MiniTurnClient, peer: tuple[str, int], count: int) -> list[float]:
    """`count` Send-indication echoes through the relay, one at a time; each one's round-trip time."""
    times = []
    for index in range(count):
        started = time.monotonic()
        await client.send_indication(peer, index.to_bytes(4, "big") * 8)
        assert len(await receive_payloads(client, 1)) == 1
        times.append(time.monotonic() - started)
        await asyncio.sleep(0.01)
    return times


async def test_bad_http_input_never_affects_relaying(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_endpoint, "HEAD_TIMEOUT", 1.0)
    address = metrics_address(server)
    transport, _ = await start_echo_peer()
    peer = transport.get_extra_info("sockname")[:2]

    async def slow_client() -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        try:
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            return await asyncio.wait_for(reader.read(), WAIT)
        except ConnectionError:
            return b""
        finally:
            writer.transport.abort()

    async def idle_clients(count: int) -> list[bytes]:
        connections = [await asyncio.open_connection(*address) for _ in range(count)]
        try:
            return [await asyncio.wait_for(reader.read(), WAIT) for reader, _ in connections]
        finally:
            for _, writer in connections:
                writer.transport.abort()

    async def garbage_flood() -> None:
        for _ in range(50):
            await raw_exchange(address, bytes(range(256)) * 40 + b"\r\n\r\n")

    try:
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            await client.allocate()
            await client.create_permission(peer)
            quiet = await relay_round_trips(client, peer, 20)
            attack = asyncio.gather(slow_client(), idle_clients(24), garbage_flood())
            noisy = await relay_round_trips(client, peer, 40)
            slow_answer, idle_answers, _ = await attack
            assert slow_answer == b""  # dropped after HEAD_TIMEOUT without a word
            assert all(answer == b"" for answer in idle_answers)
            assert server.metrics is not None and server.metrics.http.refused > 0  # beyond MAX_CONNECTIONS
            series = await scrape(address)  # the listener serves again once the attack is over
    finally:
        transport.close()
    assert value(series, "pyturn_relayed_packets_total", direction="client_to_peer", transport="udp") == 60
    assert value(series, "pyturn_relayed_packets_total", direction="peer_to_client", transport="udp") == 60
    assert max(noisy) < 0.5, f"round trips under attack up to {max(noisy):.3f} s (quiet: {max(quiet):.3f} s)"


async def test_metrics_scrape_flood_is_limited(server: Server) -> None:
    answers = [await raw_exchange(metrics_address(server), b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(40)]
    statuses = {answer[9:12] for answer in answers}
    assert statuses == {b"200", b"429"}


async def test_server_opens_the_configured_metrics_port_and_refuses_a_taken_one() -> None:
    from pyturn.server import StartupError, loopback_config

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(StartupError, match="metrics"):
            async with Server(loopback_config(metrics_port=taken), users={USERNAME: PASSWORD}):
                pass
    async with Server(loopback_config(metrics_port=free_tcp_port()), users={USERNAME: PASSWORD}) as running:
        assert running.metrics is not None
        assert (await asyncio.to_thread(http_get, running.metrics.address, "/readyz"))[0] == 200
    async with Server(users={USERNAME: PASSWORD}) as running:
        assert running.metrics is None  # MetricsPort 0: no listener


def test_config_metrics_keys(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("alice:pw:reTurn:authorized\n")
    path = tmp_path / "reTurnServer.config"
    path.write_text("UserDatabaseFile = users.txt\n")
    config, _ = load_config(path)
    assert (config.metrics_address, config.metrics_port) == ("127.0.0.1", 0)
    path.write_text("UserDatabaseFile = users.txt\nMetricsAddress = ::1\nMetricsPort = 9641\n")
    config, _ = load_config(path)
    assert (config.metrics_address, config.metrics_port) == ("::1", 9641)
    path.write_text("UserDatabaseFile = users.txt\nMetricsAddress = localhost\n")
    with pytest.raises(ConfigError, match=r"reTurnServer.config:2: MetricsAddress"):
        load_config(path)
    path.write_text("UserDatabaseFile = users.txt\nMetricsPort = 70000\n")
    with pytest.raises(ConfigError, match=r":2: "):
        load_config(path)


# ------------------------------------------------------------------------------------------- dashboard
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
                "unless", "inf", "nan"}


def promql_metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names
    (inside {...} or by/without (...)), durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):  # not the exponent of 1e6
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def dashboard_expressions(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, item in node.items():
            if key == "expr" and isinstance(item, str):
                found.append(item)
            else:
                found.extend(dashboard_expressions(item))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_expressions(item))
    return found


def test_promql_metric_names_parser() -> None:
    expression = 'sum by (direction) (rate(pyturn_relayed_bytes_total{job="$job", transport=~"udp|tcp"}[5m])) * 8'
    assert promql_metric_names(expression) == {"pyturn_relayed_bytes_total"}
    assert promql_metric_names("pyturn_relay_ports{state='used'} / ignoring(state) sum(pyturn_relay_ports)") == {
        "pyturn_relay_ports"}
    assert promql_metric_names("sum(process_resident_memory_bytes) / 1e6") == {"process_resident_memory_bytes"}


async def test_dashboard_queries_only_metrics_pyturn_exports(server: Server) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 8
    queried = set().union(*(promql_metric_names(expression) for expression in expressions))
    with MiniTurnClient(server.addresses["udp"][0]) as client:
        await client.allocate()  # some traffic, so that series appearing with their first event (401) exist
    exported = {name for name, _ in await scrape(metrics_address(server))}
    assert queried, "no metric names found in the dashboard"
    assert queried <= exported, f"the dashboard queries metrics pyturn does not export: {queried - exported}"
    panels = " ".join(panel.get("title", "") for panel in dashboard["panels"]).lower()
    for topic in ("allocations", "relayed", "error", "auth", "port"):
        assert topic in panels, topic



class StreamTurnClient:
    """Just enough TURN over TCP for counting: long-term credentials, framed with pyturn.wire.framing.StreamFramer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = StreamFramer()
        self.frames: list[bytes] = []
        self.nonce: str | None = None
        self.realm: str | None = None

    async def frame(self) -> bytes:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            assert data, "the server closed the connection"
            self.frames.extend(self.framer.feed(data))
        return self.frames.pop(0)

    async def request(self, method: int, *attributes: tuple[int, Any]) -> Message:
        for _ in range(2):
            message = Message(method, MessageClass.REQUEST, os.urandom(12), list(attributes))
            key = None
            if self.nonce is not None:
                assert self.realm is not None
                message.add(Attr.USERNAME, USERNAME).add(Attr.REALM, self.realm).add(Attr.NONCE, self.nonce)
                key = long_term_key(USERNAME, self.realm, PASSWORD)
            self.writer.write(encode_message(message, integrity_key=key))
            response = decode_message(await self.frame())
            if response.msg_class is MessageClass.SUCCESS:
                return response
            self.nonce, self.realm = response.get(Attr.NONCE), response.get(Attr.REALM)
        raise AssertionError(f"request 0x{method:x} failed: {response.get(Attr.ERROR_CODE)}")


async def test_metrics_count_tcp_relaying_exactly(server: Server) -> None:
    transport, _ = await start_echo_peer()
    peer = transport.get_extra_info("sockname")[:2]
    reader, writer = await asyncio.open_connection(*server.addresses["tcp"][0])
    try:
        client = StreamTurnClient(reader, writer)
        await client.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, 17))
        await client.request(Method.CHANNEL_BIND, (Attr.CHANNEL_NUMBER, CHANNEL), (Attr.XOR_PEER_ADDRESS, peer))
        # 9 ChannelData frames of 101 bytes (padded to 4, RFC 8656 §12.5) in one write: one read, one batch.
        writer.write(b"".join(encode_channel_data(CHANNEL, bytes([index]) * 101, pad=True) for index in range(9)))
        echoes = [await client.frame() for _ in range(9)]
        assert all(len(frame) == 4 + 101 for frame in echoes)
        series = await scrape(metrics_address(server))
    finally:
        writer.transport.abort()
        transport.close()
    for direction in ("client_to_peer", "peer_to_client"):
        assert value(series, "pyturn_relayed_packets_total", direction=direction, transport="tcp") == 9
        assert value(series, "pyturn_relayed_bytes_total", direction=direction, transport="tcp") == 909
        assert value(series, "pyturn_relayed_packets_total", direction=direction, transport="udp") == 0
    assert value(series, "pyturn_allocations", transport="tcp", family="ipv4") == 1
    assert value(series, "pyturn_stream_connections", transport="tcp") == 1
