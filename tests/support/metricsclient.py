"""Reading a server's metrics in tests: /metrics and /healthz over a real HTTP client, parsed with prometheus-client's
parser (tests/net/test_metrics.py, tests/ops/test_metrics_cli.py)."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request

from interop import MiniTurnClient
from prometheus_client.parser import text_string_to_metric_families

from pyturn.wire.codec import decode_message
from pyturn.wire.message import Attr, MessageClass, Method

WAIT = 5.0
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    try:
        with _OPENER.open(f"http://{address[0]}:{address[1]}{path}", timeout=WAIT) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


async def scrape(address: tuple[str, int]) -> Series:
    """GET /metrics in a thread (urllib, a real HTTP client), parsed by prometheus-client's parser."""
    status, text = await asyncio.to_thread(http_get, address, "/metrics")
    assert status == 200, text
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


async def receive_payloads(client: MiniTurnClient, count: int) -> list[bytes]:
    """`count` relayed payloads (Data indications or ChannelData) the client receives, within WAIT."""
    payloads: list[bytes] = []
    deadline = time.monotonic() + WAIT
    while len(payloads) < count:
        packet = await client.receive(max(deadline - time.monotonic(), 0.01))
        if packet[0] & 0xC0 == 0x40:
            payloads.append(packet[4:4 + int.from_bytes(packet[2:4], "big")])
        elif packet[0] & 0xC0 == 0:
            message = decode_message(packet)
            if message.method == Method.DATA and message.msg_class is MessageClass.INDICATION:
                payloads.append(message.get(Attr.DATA))
    return payloads


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
