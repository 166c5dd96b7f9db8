"""`pyturn status [-c CONFIG] [--interval SECONDS]`: a short human summary of a running server's metrics.

Reads MetricsAddress and MetricsPort from the configuration, scrapes /metrics twice `--interval` seconds apart
(rates from the difference) and asks /readyz. Exit codes (README): 0 ready; 1 reachable but not ready (503);
69 no answer from the endpoint; 78 configuration error (MetricsPort = 0 included); 64 usage error.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config
from pyturn.ops.daemon import EXIT_CONFIG, EXIT_OK, EXIT_USAGE

EXIT_NOT_READY = 1
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE
DEFAULT_CONFIG = "reTurnServer.config"
DEFAULT_INTERVAL = 1.0
HTTP_TIMEOUT = 5.0

USAGE = """usage: pyturn status [-c] [CONFIG] [--interval SECONDS] [--url URL]

Summarises the metrics of the pyturn whose MetricsAddress/MetricsPort CONFIG sets
(default: ./reTurnServer.config). --interval: seconds between the two scrapes the
rates come from (default 1; 0 = one scrape, totals only). --url: the endpoint's base
URL instead (http://HOST:PORT).

exit codes: 0 ready, 1 not ready (/readyz 503), 69 endpoint unreachable,
            78 configuration error (or MetricsPort = 0), 64 usage error
"""

# No proxy: the endpoint is on this host or a management network, never behind an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


class _Usage(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Scrape:
    at: float
    series: Series

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (sample, sample_labels), value in self.series.items()
                   if sample == name and wanted <= sample_labels)

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (sample, sample_labels), value in self.series.items():
            if sample == name:
                key = dict(sample_labels).get(label, "")
                out[key] = out.get(key, 0.0) + value
        return out

    def has(self, name: str) -> bool:
        return any(sample == name for sample, _ in self.series)


def parse_scrape(text: str, at: float) -> Scrape:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Scrape(at, series)


def _get(url: str) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=HTTP_TIMEOUT) as answer:
            return int(answer.status), answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode("utf-8", "replace")


def _parse_arguments(argv: Sequence[str]) -> tuple[str, float, str | None]:
    config = DEFAULT_CONFIG
    interval = DEFAULT_INTERVAL
    url: str | None = None
    index = 0
    while index < len(argv):
        argument = argv[index]
        index += 1
        if argument in ("-c", "--config", "--interval", "--url"):
            if index >= len(argv):
                raise _Usage(f"{argument} needs a value")
            value = argv[index]
            index += 1
            if argument == "--interval":
                try:
                    interval = float(value)
                except ValueError:
                    raise _Usage(f"--interval: {value!r} is not a number of seconds") from None
                if not 0 <= interval <= 60:
                    raise _Usage("--interval: between 0 and 60 seconds")
            elif argument == "--url":
                url = value.rstrip("/")
            else:
                config = value
        elif not argument.startswith("-"):
            config = argument
        else:
            raise _Usage(f"unknown option {argument!r}")
    return config, interval, url


def _rate(value: float, unit: str) -> str:
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def summary(first: Scrape, last: Scrape, ready: bool, base: str) -> list[str]:
    """The lines `pyturn status` prints (rates when the scrapes are apart in time, totals always)."""
    elapsed = last.at - first.at
    lines = [f"pyturn at {base}: {'ready' if ready else 'NOT READY'}"]
    by_transport = last.by("pyturn_allocations", "transport")
    ipv6 = last.total("pyturn_allocations", family="ipv6")
    lines.append(
        f"allocations  {last.total('pyturn_allocations'):.0f} now "
        f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(by_transport.items()))}; ipv6 {ipv6:.0f}), "
        f"{last.total('pyturn_allocations_created_total'):.0f} created; "
        f"{last.total('pyturn_permissions'):.0f} permissions, {last.total('pyturn_channels'):.0f} channels"
    )
    for direction, arrow in (("client_to_peer", "client->peer"), ("peer_to_client", "peer->client")):
        octets = last.total("pyturn_relayed_bytes_total", direction=direction)
        packets = last.total("pyturn_relayed_packets_total", direction=direction)
        text = f"relayed      {arrow}: {packets:.0f} packets, {_rate(octets, 'B')} in total"
        if elapsed > 0:
            bits = (octets - first.total("pyturn_relayed_bytes_total", direction=direction)) * 8 / elapsed
            rate = (packets - first.total("pyturn_relayed_packets_total", direction=direction)) / elapsed
            text += f"; now {_rate(bits, 'bit/s')}, {rate:.0f} packets/s"
        lines.append(text)
    lines.append(f"relay ports  {last.total('pyturn_relay_ports', state='used'):.0f} used, "
                 f"{last.total('pyturn_relay_ports', state='free'):.0f} free")
    streams = last.by("pyturn_stream_connections", "transport")
    lines.append(f"connections  {', '.join(f'{k} {v:.0f}' for k, v in sorted(streams.items()))}; "
                 f"{last.total('pyturn_stream_connections_refused_total'):.0f} refused")
    codes = last.by("pyturn_error_responses_total", "code")
    failures = {k: v for k, v in last.by("pyturn_auth_failures_total", "reason").items() if v}
    lines.append(
        f"requests     {last.total('pyturn_requests_total'):.0f}; errors {sum(codes.values()):.0f}"
        + (f" ({', '.join(f'{k}: {v:.0f}' for k, v in sorted(codes.items()))})" if codes else "")
        + f"; auth failures {sum(failures.values()):.0f}"
        + (f" ({', '.join(f'{k} {v:.0f}' for k, v in sorted(failures.items()))})" if failures else "")
    )
    last_good = last.total("pyturn_user_reload_last_success_timestamp_seconds")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last_good)) if last_good else "never"
    lines.append(
        f"users        {last.total('pyturn_users'):.0f} loaded; reloads "
        f"{last.total('pyturn_user_reloads_total', result='success'):.0f} ok, "
        f"{last.total('pyturn_user_reloads_total', result='failure'):.0f} failed; last good load {when}"
    )
    if last.has("pyturn_workers"):
        lines.append(f"workers      {last.total('pyturn_workers_reporting'):.0f} of "
                     f"{last.total('pyturn_workers'):.0f} reporting, {last.total('pyturn_ready'):.0f} ready")
    return lines


def main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if any(argument in ("-h", "--help") for argument in argv):
        out.write(USAGE)
        return EXIT_OK
    try:
        config_path, interval, base = _parse_arguments(argv)
    except _Usage as error:
        err.write(f"pyturn status: {error}\n{USAGE}")
        return EXIT_USAGE
    if base is None:
        try:
            config, _ = load_config(config_path)
        except ConfigError as error:
            err.write(f"pyturn status: {error}\n")
            return EXIT_CONFIG
        if not config.metrics_port:
            err.write(f"pyturn status: MetricsPort is 0 in {config_path}: the server opens no metrics endpoint\n")
            return EXIT_CONFIG
        host = config.metrics_address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        base = f"http://{f'[{host}]' if ':' in host else host}:{config.metrics_port}"
    try:
        scrapes = []
        for attempt in range(2 if interval > 0 else 1):
            if attempt:
                time.sleep(interval)
            status, text = _get(base + "/metrics")
            if status != 200:
                err.write(f"pyturn status: {base}/metrics answered {status}\n")
                return EXIT_UNAVAILABLE
            scrapes.append(parse_scrape(text, time.monotonic()))
        ready_status, _ = _get(base + "/readyz")
    except (OSError, ValueError) as error:
        err.write(f"pyturn status: no answer from {base}: {error}\n")
        return EXIT_UNAVAILABLE
    ready = ready_status == 200
    for line in summary(scrapes[0], scrapes[-1], ready, base):
        out.write(line + "\n")
    return EXIT_OK if ready else EXIT_NOT_READY
