"""Workers = N: one metrics endpoint reporting the sum of every worker.

The master binds the metrics socket once and gives it to worker 0, together with one end of an AF_UNIX
SOCK_SEQPACKET socketpair per other worker; each other worker gets the other end. Like the TURN listening
sockets, the master keeps its copies, so a restarted worker takes over its predecessor's channel. On a scrape
worker 0 sends every other worker an 8-byte request id; each answers with the id and its own metrics in the
Prometheus text format, within PEER_TIMEOUT. Worker 0 parses them (prometheus_client.parser), adds them to its
own samples and serves the sum. Answers carrying an older id (a worker that was slow, or a request left over
from a restarted worker 0) are skipped. A worker that does not answer is left out of the sum and /readyz answers
503 until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pyturn.config import Config
from pyturn.net.sockets import bind_stream

log = logging.getLogger(__name__)

PEER_TIMEOUT = 1.0  # seconds a worker has to send its samples
MAX_ANSWER = 1 << 20  # bytes of one worker's metrics text
_ID_SIZE = 8
# Samples that are not added up across workers: how they combine instead.
_COMBINE = {
    "process_start_time_seconds": min,
    "process_max_fds": max,
    "pyturn_user_reload_last_success_timestamp_seconds": min,  # the oldest users in force among the workers
    "pyturn_users": max,  # every worker loads the same user file
}


def worker_metrics_sockets(config: Config, count: int) -> list[list[socket.socket]]:
    """Per worker, the extra sockets it needs for the summed endpoint: worker 0 the metrics listening socket
    and one channel per other worker, every other worker its end of that channel. Empty lists when metrics are
    off. The master keeps them all."""
    extra: list[list[socket.socket]] = [[] for _ in range(count)]
    if not config.metrics_port or count < 2:
        return extra
    try:
        extra[0].append(bind_stream(config.metrics_address, config.metrics_port))
        for index in range(1, count):
            asker, answerer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            for sock in (asker, answerer):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_ANSWER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_ANSWER)
            extra[0].append(asker)
            extra[index].append(answerer)
    except BaseException:
        for sockets in extra:
            for sock in sockets:
                sock.close()
        raise
    return extra


class SampleAnswerer:
    """A worker's side: answers each request on its channel with its registry in the text format."""

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: socket.socket, registry: CollectorRegistry) -> None:
        self.loop = loop
        self.channel = channel
        self.registry = registry
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                request = self.channel.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not request:
                self.close()  # the other end is gone for good (the master holds a copy while it lives)
                return
            if len(request) != _ID_SIZE:
                continue
            try:
                self.channel.send(request + generate_latest(self.registry))
            except OSError:
                log.debug("metrics answer to worker 0 dropped", exc_info=True)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.channel.fileno())
        except (ValueError, OSError):
            pass


class WorkerSum:
    """Worker 0's side: its own registry plus every other worker's answer, added up by series."""

    def __init__(self, registry: CollectorRegistry, channels: Iterable[socket.socket], workers: int) -> None:
        self.registry = registry
        self.channels = list(channels)
        self.workers = workers
        for channel in self.channels:
            channel.setblocking(False)
        self._lock = asyncio.Lock()
        self.reporting = 1
        self.ready_workers = 0

    async def _ask(self, channel: socket.socket) -> str | None:
        loop = asyncio.get_running_loop()
        request_id = os.urandom(_ID_SIZE)
        try:
            await loop.sock_sendall(channel, request_id)
            async with asyncio.timeout(PEER_TIMEOUT):
                while True:
                    answer = await loop.sock_recv(channel, MAX_ANSWER)
                    if not answer:
                        return None
                    if answer[:_ID_SIZE] == request_id:
                        return answer[_ID_SIZE:].decode("utf-8", "replace")
        except (TimeoutError, OSError):
            return None

    async def gather(self) -> list[Metric]:
        """Every family, summed over the workers that answered."""
        async with self._lock:  # one scrape at a time owns the channels
            answers = [await self._ask(channel) for channel in self.channels]
        own = list(self.registry.collect())
        texts = [text for text in answers if text is not None]
        merged = merge_families([own, *(text_string_to_metric_families(text) for text in texts)])
        self.reporting = 1 + len(texts)
        ready = merged.get("pyturn_ready")
        self.ready_workers = int(sum(sample.value for sample in ready.samples)) if ready is not None else 0
        workers = GaugeMetricFamily("pyturn_workers", "worker processes configured", value=self.workers)
        reporting = GaugeMetricFamily("pyturn_workers_reporting", "worker processes whose metrics are in this sum",
                                      value=self.reporting)
        return [*merged.values(), workers, reporting]

    def all_ready(self) -> bool:
        return self.reporting == self.workers and self.ready_workers == self.workers


def merge_families(sources: Iterable[Iterable[Metric]]) -> dict[str, Metric]:
    """Families of several processes combined: samples with the same name and labels added (or _COMBINE'd)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in sources:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # prometheus-client's per-series creation time: meaningless in a sum
                key = (sample.name, tuple(sorted(sample.labels.items())))
                combine = _COMBINE.get(sample.name)
                if key not in series:
                    series[key] = sample.value
                elif combine is not None:
                    series[key] = combine(series[key], sample.value)
                else:
                    series[key] += sample.value
    for name, family in merged.items():
        family.samples = [Sample(sample_name, dict(labels), value) for (sample_name, labels), value in
                          values[name].items()]
    return merged


class _Families:
    """A collector over families already gathered (what generate_latest renders)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def render_sum(total: WorkerSum) -> bytes:
    return generate_latest(_Families(await total.gather()))
