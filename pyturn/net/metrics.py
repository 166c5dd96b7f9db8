"""Prometheus metrics of a running Server, read from its state at scrape time, and /healthz and /readyz.

Nothing here runs per packet: the core counts requests, errors and authentication failures in a CoreStats, the
relay loops add relayed datagrams and bytes to RelayCounters once per wake-up (pyturn.core.stats), and the
collector below turns those plain integers and the live tables (allocations, permissions, channels, streams,
the port pool) into metric families when /metrics is asked for. No label carries a username, an address or a
port: label values come from fixed sets (transport, family, direction, method, error code, reason).

With Workers = N the worker that holds the metrics socket asks every other worker for its samples over a
socketpair the master made (pyturn.net.metrics_workers) and serves their sum.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pyturn.core.allocation import Transport
from pyturn.core.ratelimit import TokenBucket
from pyturn.core.stats import AUTH_FAILURE_REASONS, RelayCounter
from pyturn.net.http_endpoint import HttpEndpoint, Response
from pyturn.net.metrics_workers import SampleAnswerer, WorkerSum, render_sum
from pyturn.net.sockets import LISTEN_BACKLOG

if TYPE_CHECKING:
    from pyturn.server import Server

FAMILIES = {1: "ipv4", 2: "ipv6"}
REQUEST_METHODS = ("binding", "allocate", "refresh", "create_permission", "channel_bind")  # always published
TRANSPORT_NAMES = tuple(kind.value for kind in Transport)
SCRAPES_PER_SECOND = 20  # /metrics renders allowed per second (a burst of as many): a bound on scrape floods
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"


class ServerCollector(Collector):
    """Metric families of one Server (one process), computed from its state when collected."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        core = server.core
        runtime = server.runtime
        yield from self._allocations(server)
        yield from self._relayed(runtime.relayed_to_peer if runtime is not None else {},
                                 runtime.relayed_to_client if runtime is not None else {})
        stats = core.stats if core is not None else None
        requests = CounterMetricFamily("pyturn_requests", "STUN requests received, by method", labels=["method"])
        counted = dict.fromkeys(REQUEST_METHODS, 0)
        counted.update(stats.requests if stats is not None else {})
        for name, count in counted.items():
            requests.add_metric([name], count)
        yield requests
        errors = CounterMetricFamily("pyturn_error_responses", "STUN error responses sent, by method and code",
                                     labels=["method", "code"])
        for (method, code), count in sorted((stats.error_responses if stats is not None else {}).items()):
            errors.add_metric([method, str(code)], count)
        yield errors
        failures = CounterMetricFamily("pyturn_auth_failures",
                                       "authenticated requests refused, and error answers withheld by the rate limit, "
                                       "by reason", labels=["reason"])
        for reason in AUTH_FAILURE_REASONS:
            failures.add_metric([reason], stats.auth_failures.get(reason, 0) if stats is not None else 0)
        yield failures
        yield from self._connections(server)
        yield from self._ports(server)
        yield from self._users(server)

    @staticmethod
    def _allocations(server: Server) -> Iterator[Metric]:
        core = server.core
        now: dict[tuple[str, str], int] = {(t, f): 0 for t in TRANSPORT_NAMES for f in FAMILIES.values()}
        permissions = channels = 0
        if core is not None:
            for five_tuple, allocation in core.allocations.items():
                key = (five_tuple.transport.value, FAMILIES.get(allocation.family, "ipv4"))
                now[key] += 1
                permissions += len(allocation.permissions)
                channels += len(allocation.channels)
        current = GaugeMetricFamily("pyturn_allocations", "allocations now, by client transport and relay family",
                                    labels=["transport", "family"])
        for (transport, family), count in now.items():
            current.add_metric([transport, family], count)
        yield current
        created = CounterMetricFamily("pyturn_allocations_created", "allocations created, by client transport and "
                                      "relay family", labels=["transport", "family"])
        made = core.stats.allocations_created if core is not None else {}
        for transport, family in now:
            created.add_metric([transport, family], made.get((transport, 2 if family == "ipv6" else 1), 0))
        yield created
        yield GaugeMetricFamily("pyturn_permissions", "permissions (peer IPs) installed now", value=permissions)
        yield GaugeMetricFamily("pyturn_channels", "channel bindings now", value=channels)

    @staticmethod
    def _relayed(to_peer: Mapping[Transport, RelayCounter], to_client: Mapping[Transport, RelayCounter]
                 ) -> Iterator[Metric]:
        packets = CounterMetricFamily("pyturn_relayed_packets", "datagrams relayed, by direction and client "
                                      "transport", labels=["direction", "transport"])
        octets = CounterMetricFamily("pyturn_relayed_bytes", "payload bytes relayed (no STUN or ChannelData "
                                     "headers), by direction and client transport", labels=["direction", "transport"])
        for direction, counters in (("client_to_peer", to_peer), ("peer_to_client", to_client)):
            for kind in Transport:
                counter = counters.get(kind) or RelayCounter()
                packets.add_metric([direction, kind.value], counter.packets)
                octets.add_metric([direction, kind.value], counter.octets)
        yield packets
        yield octets

    @staticmethod
    def _connections(server: Server) -> Iterator[Metric]:
        runtime = server.runtime
        open_now = {Transport.TCP: 0, Transport.TLS: 0}
        if runtime is not None:
            for five_tuple in runtime.streams:
                open_now[five_tuple.transport] = open_now.get(five_tuple.transport, 0) + 1
        streams = GaugeMetricFamily("pyturn_stream_connections", "TCP and TLS client connections now",
                                    labels=["transport"])
        for kind, count in open_now.items():
            streams.add_metric([kind.value], count)
        yield streams
        yield CounterMetricFamily("pyturn_stream_connections_refused", "TCP/TLS connections refused by "
                                  "MaxTcpConnections, MaxTcpConnectionsPerSource or the file-descriptor budget",
                                  value=runtime.refused_streams if runtime is not None else 0)
        yield CounterMetricFamily("pyturn_relay_sockets_refused", "relay sockets refused for want of file "
                                  "descriptors (508)", value=runtime.refused_relays if runtime is not None else 0)

    @staticmethod
    def _ports(server: Server) -> Iterator[Metric]:
        config = server.config
        size = config.allocation_port_range_max - config.allocation_port_range_min + 1
        used = server.core.ports.in_use if server.core is not None else 0
        ports = GaugeMetricFamily("pyturn_relay_ports", "relay ports of AllocationPortRangeMin..Max, used "
                                  "(allocated or reserved) and free", labels=["state"])
        ports.add_metric(["used"], used)
        ports.add_metric(["free"], max(size - used, 0))
        yield ports

    @staticmethod
    def _users(server: Server) -> Iterator[Metric]:
        reloads = server.reload_stats
        counted = CounterMetricFamily("pyturn_user_reloads", "user reloads (SIGHUP, UserDatabaseCheckInterval, "
                                      "reload_users()), by result", labels=["result"])
        counted.add_metric(["success"], reloads.successes)
        counted.add_metric(["failure"], reloads.failures)
        yield counted
        yield GaugeMetricFamily("pyturn_user_reload_last_success_timestamp_seconds", "when the users in force were "
                                "loaded (Unix time)", value=reloads.last_success)
        yield GaugeMetricFamily("pyturn_users", "users in the user database in force", value=server.user_count())
        yield GaugeMetricFamily("pyturn_ready", "1 when listeners are bound, users loaded and not draining",
                                value=1 if server.ready else 0)


def server_registry(server: Server) -> CollectorRegistry:
    """A registry with the Server's collector and the process collector (CPU, memory, file descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)
    return registry


class MetricsEndpoint:
    """The HTTP listener of one Server: /metrics (Prometheus text), /healthz and /readyz.

    With `total` (worker 0 of Workers = N) /metrics serves the sum over the workers and /readyz needs every
    worker ready.
    """

    def __init__(self, server: Server, registry: CollectorRegistry, total: WorkerSum | None = None) -> None:
        self.server = server
        self.registry = registry
        self.total = total
        self._scrapes = TokenBucket(SCRAPES_PER_SECOND, SCRAPES_PER_SECOND, time.monotonic())
        self.http = HttpEndpoint({METRICS_PATH: self.metrics, HEALTH_PATH: self.health, READY_PATH: self.readiness})

    @property
    def address(self) -> tuple[str, int]:
        return self.http.address

    def _allowed(self) -> bool:
        return self._scrapes.allow(1, time.monotonic())

    async def metrics(self) -> Response:
        if not self._allowed():
            return Response(429, b"too many scrapes\n")
        if self.total is not None:
            return Response(200, await render_sum(self.total), CONTENT_TYPE_LATEST)
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    async def health(self) -> Response:
        return Response(200, b"ok\n")

    async def readiness(self) -> Response:
        ready = self.server.ready
        if ready and self.total is not None:
            if not self._allowed():
                return Response(429, b"too many requests\n")
            await self.total.gather()
            ready = self.total.all_ready()
        if ready:
            return Response(200, b"ready\n")
        return Response(503, b"not ready\n")

    async def close(self) -> None:
        await self.http.close()


async def open_metrics_endpoint(server: Server, sock: socket.socket,
                                channels: Sequence[socket.socket] = ()) -> MetricsEndpoint:
    """Serve the Server's metrics on a bound TCP socket; `channels` lead to the other workers, whose samples
    are then added in."""
    registry = server_registry(server)
    total = WorkerSum(registry, channels, len(channels) + 1) if channels else None
    endpoint = MetricsEndpoint(server, registry, total)
    try:
        sock.listen(LISTEN_BACKLOG)
        await endpoint.http.start(sock)
    except BaseException:
        sock.close()
        raise
    return endpoint


def answer_metrics_requests(server: Server, channels: Sequence[socket.socket]) -> list[SampleAnswerer]:
    """A worker whose metrics worker 0 serves: answer its requests on `channels`."""
    registry = server_registry(server)
    loop = asyncio.get_running_loop()
    return [SampleAnswerer(loop, channel, registry) for channel in channels]
