"""End-to-end relay benchmark on loopback: pyturn and coturn side by side, driven by separate load processes.

    python -m benchmarks.relay                          # the standard scenarios (see benchmarks/README.md)
    python -m benchmarks.relay unpaced paced-send       # scenario names (benchmarks/scenarios/NAME.yaml) or paths
    python -m benchmarks.relay smoke --servers pyturn --clients 2 --duration 1 --out /tmp/bench

Every run starts a fresh server (pyturn as `python -m pyturn -c CONFIG --Key=Value`, coturn as a foreground
`turnserver` with explicit flags), drives it with the scenario's load generator (benchmarks.loadgen processes,
or coturn's turnutils_uclient + turnutils_peer), reads the server's CPU time and memory from /proc, and stops
everything it started. When turnserver is installed each data point runs against pyturn and coturn alternately
and the summary prints the ratio pyturn/coturn of every figure. Results: results.json and relay.png in --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # types-PyYAML is a dev extra

from benchmarks import coturn, machine, procstat
from benchmarks.loadgen import probe_binding
from benchmarks.pinning import Pinning, make_pinning
from benchmarks.summary import fmt, print_summary, summarise

HERE = Path(__file__).resolve().parent
SCENARIO_DIR = HERE / "scenarios"
REPO = HERE.parent
# uclient (coturn's C client, cheap on CPU) drives first: it is the better estimate of server capacity
STANDARD = ["uclient-unpaced", "uclient-send", "unpaced", "paced-channel", "paced-send", "setup-rate", "alloc-10k",
            "sweep"]
STANDARD_MIN_ROUNDS = 5  # a headline figure needs at least this many alternating rounds (benchmarks/README.md)
LOGGING_MODES = ("default", "quiet")
USERNAME, PASSWORD, REALM = "test", "1234", "reTurn"
RELAY_PORT_MIN, RELAY_PORT_MAX = 10000, 29999  # below Linux's ephemeral range, so client sockets never collide
SERVER_START_TIMEOUT = 15.0
KINDS = ("relay", "setup", "uclient")


# ------------------------------------------------------------------------------------------------ scenarios
@dataclass
class Scenario:
    name: str
    kind: str = "relay"  # relay | setup | uclient
    description: str = ""
    servers: list[str] = field(default_factory=lambda: ["pyturn", "coturn"])
    rounds: int = 1
    clients: list[int] = field(default_factory=lambda: [10])
    transport: str = "udp"  # udp | tcp
    mode: str = "channel"  # channel | send
    payload: int = 170
    rate: float | None = None  # datagrams per second per client; None = unpaced (closed loop, `window` in flight)
    window: int = 8
    duration: float = 5.0
    warmup: float = 1.0
    drain: float = 1.0
    processes: int = 1  # load generator client processes
    echo_sockets: int = 4
    setup_concurrency: int = 64
    setup_timeout: float = 60.0
    hold: float = 1.0  # setup: seconds to wait after the last allocation before reading the server's memory
    uclient_args: list[str] = field(default_factory=list)
    timeout: float = 120.0  # hard limit of one run, whatever happens
    fd_limit: int = 65536
    pyturn_args: list[str] = field(default_factory=list)
    coturn_args: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.kind not in KINDS:
            raise SystemExit(f"scenario {self.name}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.transport not in ("udp", "tcp") or self.mode not in ("channel", "send"):
            raise SystemExit(f"scenario {self.name}: transport udp|tcp and mode channel|send")
        unknown = set(self.servers) - {"pyturn", "coturn"}
        if unknown:
            raise SystemExit(f"scenario {self.name}: unknown servers {sorted(unknown)}")


_FIELD_NAMES = {f.name for f in fields(Scenario)}


def _scenario_from(values: dict[str, Any], source: str) -> Scenario:
    unknown = set(values) - _FIELD_NAMES
    if unknown:
        raise SystemExit(f"{source}: unknown scenario keys {sorted(unknown)}")
    values = dict(values)
    if isinstance(values.get("clients"), int):
        values["clients"] = [values["clients"]]
    for key in ("uclient_args", "pyturn_args", "coturn_args"):
        if isinstance(values.get(key), str):
            values[key] = values[key].split()
    scenario = Scenario(**values)
    scenario.check()
    return scenario


def load_scenarios(reference: str) -> list[Scenario]:
    """A scenario file (path or name in benchmarks/scenarios); `variants:` entries inherit the top-level keys."""
    path = Path(reference)
    if not path.exists():
        path = SCENARIO_DIR / f"{reference}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
        raise SystemExit(f"no scenario {reference!r}; known: {', '.join(names)}")
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(document, dict):
        raise SystemExit(f"{path}: a scenario file holds a mapping")
    variants = document.pop("variants", None)
    document.setdefault("name", path.stem)
    if not variants:
        return [_scenario_from(document, str(path))]
    scenarios: list[Scenario] = []
    for variant in variants:
        merged = {**document, **variant}
        merged["name"] = f"{document['name']}/{variant.get('name', len(scenarios))}"
        scenarios.append(_scenario_from(merged, str(path)))
    return scenarios


# ------------------------------------------------------------------------------------------------ progress
class Progress:
    """One status line on stderr: rewritten in place on a terminal, at most every 2 s otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r" + text.ljust(self.width))
            self.width = len(text)
            sys.stderr.flush()
        elif force or now - self.last >= 2.0:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
            self.last = now

    def done(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r" + text.ljust(self.width) + "\n")
            self.width = 0
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


# ------------------------------------------------------------------------------------------------ processes
def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (from the ephemeral range)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


def _fd_limit_setter(limit: int) -> Callable[[], None]:
    def apply() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for new_hard in (max(hard, limit), hard):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, new_hard), new_hard))
                return
            except (ValueError, OSError):
                continue

    return apply


class LineReader:
    """Whole lines from a pipe, read with os.read so that a selector never misses buffered data."""

    def __init__(self, stream: Any) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.closed = False

    def read_lines(self) -> list[str]:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            self.closed = True
            rest, self.buffer = self.buffer, b""
            return [rest.decode("utf-8", "replace")] if rest else []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


class EventPipes:
    """JSON-lines events from several load generator processes, multiplexed with a selector."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.noise: list[str] = []

    def add(self, name: str, process: coturn.ManagedProcess) -> None:
        assert process.process.stdout is not None
        reader = LineReader(process.process.stdout)
        self.selector.register(reader.fd, selectors.EVENT_READ, (name, reader))

    def poll(self, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, _ in self.selector.select(max(0.0, timeout)):
            name, reader = key.data
            for line in reader.read_lines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    self.noise.append(line.rstrip())
                    continue
                yield name, event
            if reader.closed:
                self.selector.unregister(reader.fd)
                yield name, {"event": "eof"}

    def close(self) -> None:
        self.selector.close()


def send_command(process: coturn.ManagedProcess, command: dict[str, Any]) -> None:
    assert process.process.stdin is not None
    try:
        process.process.stdin.write(json.dumps(command) + "\n")
        process.process.stdin.flush()
    except (BrokenPipeError, OSError):
        pass


class RunFailed(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    """How every run of one invocation treats the servers (recorded in results.json meta)."""

    pinning: Pinning = field(default_factory=Pinning)
    # default: both servers at their shipped log level, to a file; quiet: pyturn WARNING, coturn to /dev/null
    logging: str = "default"
    # match: coturn --relay-threads = pyturn's Workers; auto: coturn's own default (one per CPU); or a number
    coturn_relay_threads: str = "match"

    def describe(self) -> dict[str, Any]:
        if self.logging == "default":
            logs = {"pyturn": "LogLevel not set (shipped default INFO: a line per allocation event), "
                              "LoggingType = cout, stdout to a file",
                    "coturn": "default verbosity (a line per session event), --log-file FILE --simple-log "
                              "--no-stdout-log"}
        else:
            logs = {"pyturn": "LogLevel = WARNING, LoggingType = cout, stdout to a file",
                    "coturn": "default verbosity (coturn has no quieter level), --log-file /dev/null "
                              "--no-stdout-log: lines formatted, not stored"}
        return {"pinning": self.pinning.describe(), "logging": {"mode": self.logging, **logs},
                "coturn_relay_threads": self.coturn_relay_threads}


def pyturn_workers(scenario: Scenario) -> int:
    """The Workers count of the scenario's pyturn overrides (reTurn keys are case-insensitive), default 1."""
    workers = 1
    for argument in scenario.pyturn_args:
        match = re.fullmatch(r"--workers[=:](\d+)", argument.strip(), re.IGNORECASE)
        if match:
            workers = int(match.group(1)) or (os.cpu_count() or 1)
    return workers


def coturn_thread_args(scenario: Scenario, settings: Settings) -> list[str]:
    """coturn runs one relay thread per CPU by default; for fairness it gets as many as pyturn has workers."""
    if any(a in ("-m", "--relay-threads") or a.startswith("--relay-threads=") for a in scenario.coturn_args):
        return []  # the scenario chose
    if settings.coturn_relay_threads == "auto":
        return []
    if settings.coturn_relay_threads == "match":
        return ["--relay-threads", str(pyturn_workers(scenario))]
    return ["--relay-threads", settings.coturn_relay_threads]


@dataclass
class ServerHandle:
    kind: str
    process: coturn.ManagedProcess
    port: int
    log_file: str


def start_server(kind: str, scenario: Scenario, workdir: Path, settings: Settings) -> ServerHandle:
    port = free_port()
    log_file = str(workdir / f"{kind}-{port}.log")
    preexec = _fd_limit_setter(scenario.fd_limit)
    pin = settings.pinning.server_prefix()
    if kind == "pyturn":
        users = workdir / "users.txt"
        users.write_text(f"{USERNAME}:{PASSWORD}:{REALM}:authorized\n", encoding="utf-8")
        config = workdir / "bench.config"
        config.write_text(
            "\n".join([
                "TurnAddress = 127.0.0.1", "TurnV6Address = ::1", f"TurnPort = {port}", "TlsTurnPort = 0",
                f"AuthenticationRealm = {REALM}", "UserDatabaseFile = users.txt", "UserDatabaseCheckInterval = 0",
                f"AllocationPortRangeMin = {RELAY_PORT_MIN}", f"AllocationPortRangeMax = {RELAY_PORT_MAX}",
                "AllowedPeerAddresses = 127.0.0.0/8", "UnauthenticatedRateLimit = 0",
                "LegacyChannelNumbers = true",  # turnutils_uclient picks channel numbers up to 0x7FFF (RFC 5766)
                "LoggingType = cout", *(["LogLevel = WARNING"] if settings.logging == "quiet" else []), "",
            ]),
            encoding="utf-8",
        )
        command = [*pin, sys.executable, "-m", "pyturn", "-c", str(config), *scenario.pyturn_args]
        log_handle = open(log_file, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            process = coturn.ManagedProcess("pyturn", command, stdout=log_handle, stderr=subprocess.STDOUT,
                                            preexec=preexec, cwd=str(REPO))
        finally:
            log_handle.close()
    else:
        coturn_log = log_file if settings.logging == "default" else os.devnull
        command = [*pin, *coturn.server_command(
            port=port, min_port=RELAY_PORT_MIN, max_port=RELAY_PORT_MAX, log_file=coturn_log, username=USERNAME,
            password=PASSWORD, realm=REALM, workdir=str(workdir),
            extra=[*coturn_thread_args(scenario, settings), *scenario.coturn_args])]
        process = coturn.ManagedProcess("coturn", command, preexec=preexec)
    handle = ServerHandle(kind, process, port, log_file)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if not process.alive():
            raise RunFailed(f"{kind} exited with {process.process.returncode} at start-up; log: {log_file}")
        if probe_binding("127.0.0.1", port, 0.5):
            return handle
    process.stop()
    raise RunFailed(f"{kind} did not answer a Binding request within {SERVER_START_TIMEOUT:.0f} s; log: {log_file}")


def loadgen_command(pinning: Pinning, *arguments: str) -> list[str]:
    return [*pinning.load_prefix(), sys.executable, "-m", "benchmarks.loadgen", *arguments]


def start_loadgen(name: str, arguments: Sequence[str], pipes: EventPipes, started: list[coturn.ManagedProcess],
                  fd_limit: int, pinning: Pinning) -> coturn.ManagedProcess:
    process = coturn.ManagedProcess(name, loadgen_command(pinning, *arguments), stdout=subprocess.PIPE,
                                    stdin=subprocess.PIPE, stderr=None, text=True, cwd=str(REPO),
                                    preexec=_fd_limit_setter(fd_limit))
    started.append(process)
    pipes.add(name, process)
    return process


# ------------------------------------------------------------------------------------------------ figures
def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class RunContext:
    scenario: Scenario
    server: str
    clients: int
    round: int
    workdir: Path
    progress: Progress
    settings: Settings = field(default_factory=Settings)

    def label(self) -> str:
        return f"[{self.scenario.name} {self.server} clients={self.clients} round {self.round + 1}]"


def _start_clients(
    context: RunContext,
    port: int,
    peers: list[tuple[str, int]],
    pipes: EventPipes,
    started: list[coturn.ManagedProcess],
) -> dict[str, coturn.ManagedProcess]:
    """One load generator process per client spec, all reporting on `pipes`."""
    scenario = context.scenario
    clients: dict[str, coturn.ManagedProcess] = {}
    for index, spec in enumerate(_client_specs(context, port, peers)):
        name = f"clients{index}"
        clients[name] = start_loadgen(
            name, ["clients", "--spec", json.dumps(spec), "--setup-timeout", str(scenario.setup_timeout)],
            pipes, started, scenario.fd_limit, context.settings.pinning)
    return clients


def _client_specs(context: RunContext, server_port: int, peers: list[tuple[str, int]]) -> list[dict[str, Any]]:
    scenario = context.scenario
    count = context.clients
    processes = max(1, min(scenario.processes, count))
    specs = []
    first = 0
    for index in range(processes):
        share = count // processes + (1 if index < count % processes else 0)
        specs.append({
            "server_host": "127.0.0.1", "server_port": server_port, "transport": scenario.transport,
            "mode": scenario.mode, "username": USERNAME, "password": PASSWORD, "clients": share,
            "peers": peers, "first_index": first, "payload": scenario.payload, "rate": scenario.rate,
            "window": scenario.window, "setup_concurrency": max(1, scenario.setup_concurrency // processes),
        })
        first += share
    return specs


def _wait_for(pipes: EventPipes, names: set[str], event: str, deadline: float, context: RunContext,
              on_other: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Collect `event` from every process in names (progress events update the status line)."""
    got: dict[str, dict[str, Any]] = {}
    setup_progress: dict[str, tuple[int, int]] = {}
    while set(got) != names:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunFailed(f"timed out waiting for {event!r} from {sorted(names - set(got))}")
        for name, message in pipes.poll(min(remaining, 0.5)):
            kind = message.get("event")
            if kind == event and name in names:
                got[name] = message
            elif kind == "eof" and name in names and name not in got:
                raise RunFailed(f"{name} exited before {event!r}" + (f": {pipes.noise[-3:]}" if pipes.noise else ""))
            elif kind == "progress" and message.get("phase") == "setup":
                setup_progress[name] = (int(message["done"]), int(message["total"]))
                done = sum(d for d, _ in setup_progress.values())
                total = sum(t for _, t in setup_progress.values())
                context.progress.show(f"{context.label()} set-up {done}/{total} allocations")
            elif on_other is not None:
                on_other(name, message)
    return got


def run_relay(context: RunContext, server: ServerHandle, started: list[coturn.ManagedProcess]) -> dict[str, Any]:
    scenario = context.scenario
    pipes = EventPipes()
    try:
        echo = start_loadgen("echo", ["echo", "--sockets", str(scenario.echo_sockets)], pipes, started,
                             scenario.fd_limit, context.settings.pinning)
        ports = _wait_for(pipes, {"echo"}, "ports", time.monotonic() + 15, context)["echo"]["ports"]
        peers = [("127.0.0.1", int(port)) for port in ports]
        clients = _start_clients(context, server.port, peers, pipes, started)
        ready = _wait_for(pipes, set(clients), "ready", time.monotonic() + scenario.setup_timeout + 15, context)
        allocations_ok = sum(int(r["allocations_ok"]) for r in ready.values())
        if allocations_ok == 0:
            errors = [r.get("errors") for r in ready.values()]
            raise RunFailed(f"no allocation could be set up: {errors}")
        start = time.monotonic() + 0.2
        t0 = start + scenario.warmup
        t1 = t0 + scenario.duration
        end = t1 + scenario.drain
        send_command(echo, {"cmd": "window", "t0": t0, "t1": t1})
        for process in clients.values():
            send_command(process, {"cmd": "go", "t0": t0, "t1": t1, "stop_at": t1, "end": end})
        loadgen_pids = [echo.pid, *(p.pid for p in clients.values())]
        samples: dict[str, Any] = {}
        traffic: dict[str, tuple[int, int]] = {}

        def on_progress(name: str, message: dict[str, Any]) -> None:
            if message.get("event") == "progress" and message.get("phase") == "traffic":
                traffic[name] = (int(message["sent"]), int(message["received"]))
                now = time.monotonic()
                phase = "warm-up" if now < t0 else ("measuring" if now < t1 else "draining")
                sent = sum(s for s, _ in traffic.values())
                received = sum(r for _, r in traffic.values())
                context.progress.show(
                    f"{context.label()} {phase} {max(0.0, now - t0):.1f}/{scenario.duration:.0f}s "
                    f"sent={sent} received={received}")

        for moment, label in ((t0, "start"), (t1, "end")):
            while time.monotonic() < moment:
                for name, message in pipes.poll(min(0.05, moment - time.monotonic())):
                    if message.get("event") == "eof" and name in clients:
                        raise RunFailed(f"{name} exited during the traffic phase")
                    on_progress(name, message)
            samples[label] = (procstat.sample_tree(server.process.pid), procstat.sample_many(loadgen_pids),
                              time.monotonic())
        results = _wait_for(pipes, set(clients), "result", end + 30, context, on_progress)
        send_command(echo, {"cmd": "stop"})
        echo_result = _wait_for(pipes, {"echo"}, "result", time.monotonic() + 10, context)["echo"]
        memory = procstat.sample_tree(server.process.pid)
        for process in clients.values():
            send_command(process, {"cmd": "stop"})
    finally:
        pipes.close()
    (server_start, loadgen_start, wall_start), (server_end, loadgen_end, wall_end) = samples["start"], samples["end"]
    duration = t1 - t0
    replies_in_window = sum(int(r["received_in_window"]) for r in results.values())
    relayed = int(echo_result["received_in_window"]) + replies_in_window
    sent_in_window = sum(int(r["sent_in_window"]) for r in results.values())
    replies_for_window = sum(int(r["replies_for_window"]) for r in results.values())
    rtts = sorted(v for r in results.values() for v in r["rtt_us"])
    cpu = server_end.cpu_seconds - server_start.cpu_seconds
    loss = 100.0 * (1.0 - replies_for_window / sent_in_window) if sent_in_window else None
    return {
        "figures": {
            "relayed_packets": relayed,
            "relayed_pps": _round(relayed / duration, 1),
            "mbps": _round(relayed * scenario.payload * 8 / duration / 1e6),
            "loss_pct": _round(max(0.0, loss) if loss is not None else None, 4),
            "rtt_p50_ms": _round(_ms(percentile(rtts, 0.50))),
            "rtt_p99_ms": _round(_ms(percentile(rtts, 0.99))),
            "server_cpu_s": _round(cpu),
            "server_cpu_us_per_packet": _round(cpu * 1e6 / relayed if relayed else None),
            "server_cpu_util": _round(cpu / (wall_end - wall_start)),
            "server_rss_peak_kib": memory.peak_rss_kib,
            "loadgen_cpu_util": _round((loadgen_end - loadgen_start) / (wall_end - wall_start)),
        },
        "detail": {
            "window_s": _round(duration), "allocations": allocations_ok, "sent_in_window": sent_in_window,
            "replies_for_window": replies_for_window, "peer_received_in_window": echo_result["received_in_window"],
            "client_received_in_window": replies_in_window,
            "send_failed": sum(int(r["send_failed"]) for r in results.values()),
            "foreign": sum(int(r["foreign"]) for r in results.values()),
            "rtt_samples": len(rtts), "server_processes": server_end.processes,
            "setup_errors": {k: v for r in ready.values() for k, v in r.get("errors", {}).items()},
        },
    }


def _ms(microseconds: float | None) -> float | None:
    return None if microseconds is None else microseconds / 1000.0


def run_setup(context: RunContext, server: ServerHandle, started: list[coturn.ManagedProcess]) -> dict[str, Any]:
    """Allocation set-up rate and memory per allocation: N x (Allocate, 401, Allocate, ChannelBind)."""
    scenario = context.scenario
    pipes = EventPipes()
    try:
        before = procstat.sample_tree(server.process.pid)
        peers = [("127.0.0.1", 9)]  # ChannelBind needs a peer address, not a listening peer
        clients = _start_clients(context, server.port, peers, pipes, started)
        ready = _wait_for(pipes, set(clients), "ready", time.monotonic() + scenario.setup_timeout + 15, context)
        after_setup = procstat.sample_tree(server.process.pid)
        hold_until = time.monotonic() + scenario.hold
        while time.monotonic() < hold_until:
            context.progress.show(f"{context.label()} holding {sum(int(r['allocations_ok']) for r in ready.values())}"
                                  " allocations")
            time.sleep(min(0.25, max(0.0, hold_until - time.monotonic())))
        held = procstat.sample_tree(server.process.pid)
        for process in clients.values():
            send_command(process, {"cmd": "stop"})
    finally:
        pipes.close()
    ok = sum(int(r["allocations_ok"]) for r in ready.values())
    failed = sum(int(r["allocations_failed"]) for r in ready.values())
    first = min(float(r["setup_started"]) for r in ready.values())
    last = max(float(r["setup_finished"]) for r in ready.values())
    seconds = last - first
    latencies = sorted(v for r in ready.values() for v in r["setup_latency_ms"])
    cpu = after_setup.cpu_seconds - before.cpu_seconds
    errors: dict[str, int] = {}
    for result in ready.values():
        for reason, count in result.get("errors", {}).items():
            errors[reason] = errors.get(reason, 0) + int(count)
    return {
        "figures": {
            "allocations_ok": ok,
            "allocations_failed": failed,
            "setup_rate_per_s": _round(ok / seconds if seconds > 0 else None, 1),
            "setup_p50_ms": _round(percentile(latencies, 0.50)),
            "setup_p99_ms": _round(percentile(latencies, 0.99)),
            "server_cpu_s": _round(cpu),
            "server_cpu_us_per_allocation": _round(cpu * 1e6 / ok if ok else None, 1),
            "server_rss_before_kib": before.rss_kib,
            "server_rss_held_kib": held.rss_kib,
            "server_rss_bytes_per_allocation": _round((held.rss_kib - before.rss_kib) * 1024 / ok if ok else None, 0),
            "server_rss_peak_kib": held.peak_rss_kib,
        },
        "detail": {"setup_seconds": _round(seconds), "errors": errors, "concurrency": scenario.setup_concurrency},
    }


def run_uclient(context: RunContext, server: ServerHandle, started: list[coturn.ManagedProcess]) -> dict[str, Any]:
    """The same load from coturn's turnutils_uclient and turnutils_peer (an independent client)."""
    scenario = context.scenario
    if not coturn.tools_available():
        raise RunFailed("turnutils_uclient / turnutils_peer are not installed")
    peer_port = free_port()
    load_pin = context.settings.pinning.load_prefix()
    peer = coturn.ManagedProcess("turnutils_peer", [*load_pin, *coturn.peer_command(peer_port)])
    started.append(peer)
    time.sleep(0.3)
    args = [a.replace("{clients}", str(context.clients)) for a in scenario.uclient_args]
    command = [*load_pin, *coturn.uclient_command(server_port=server.port, peer_port=peer_port, username=USERNAME,
                                                  password=PASSWORD, args=args)]
    before = procstat.sample_tree(server.process.pid)
    wall_before = time.monotonic()
    client = coturn.ManagedProcess("turnutils_uclient", command, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, preexec=_fd_limit_setter(scenario.fd_limit))
    started.append(client)
    assert client.process.stdout is not None
    lines: list[tuple[float, str]] = []
    deadline = wall_before + scenario.timeout - 10
    timed_out = False
    reader = LineReader(client.process.stdout)
    selector = selectors.DefaultSelector()
    selector.register(reader.fd, selectors.EVENT_READ)
    try:
        while not reader.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not selector.select(min(remaining, 0.5)):
                continue
            arrived = time.monotonic()
            for line in reader.read_lines():
                lines.append((arrived, line.rstrip()))
                parsed = coturn.parse_uclient(lines[-1:])
                if parsed.progress:
                    _, sent, received = parsed.progress[-1]
                    context.progress.show(f"{context.label()} uclient sent={sent} received={received}")
    finally:
        selector.close()
    after = procstat.sample_tree(server.process.pid)
    wall_after = time.monotonic()
    if timed_out:
        client.signal(signal.SIGINT)
    client.stop(grace=3.0)
    peer.stop()
    (context.workdir / f"uclient-{context.server}-{context.clients}-{context.round}.log").write_text(
        "\n".join(line for _, line in lines) + "\n", encoding="utf-8")
    output = coturn.parse_uclient(lines)
    window = output.measured_window()
    if output.finished and output.transmit_seconds:
        seconds: float | None = float(output.transmit_seconds)
        received = output.received
    elif window is not None:
        seconds, _, received = window
    else:
        seconds, received = None, output.received
    if window is not None and window[0] > 0:
        # progress-line timing is finer than the whole seconds uclient prints
        seconds, _, received_in_window = window
    else:
        received_in_window = received
    relayed = 2 * received_in_window
    cpu = after.cpu_seconds - before.cpu_seconds
    total_relayed = 2 * output.received
    loss = output.lost_pct if output.finished else (
        100.0 * (1 - output.received / output.sent) if output.sent else None)
    payload = _uclient_length(args)
    return {
        "figures": {
            "relayed_packets": total_relayed,
            "relayed_pps": _round(relayed / seconds, 1) if seconds else None,
            "mbps": _round(relayed * payload * 8 / seconds / 1e6) if seconds else None,
            "loss_pct": _round(loss, 4),
            "rtt_avg_ms": output.rtt_avg_ms,
            "rtt_max_ms": output.rtt_max_ms,
            "server_cpu_s": _round(cpu),
            "server_cpu_us_per_packet": _round(cpu * 1e6 / total_relayed) if total_relayed else None,
            "server_cpu_util": _round(cpu / (wall_after - wall_before)),
            "server_rss_peak_kib": after.peak_rss_kib,
        },
        "detail": {
            "command": " ".join(command), "finished": output.finished, "timed_out": timed_out,
            "sent": output.sent, "received": output.received, "transmit_seconds_printed": output.transmit_seconds,
            "transmit_seconds_measured": _round(window[0]) if window else None,
            "send_dropped": output.send_dropped,
        },
    }


def _uclient_length(args: Sequence[str]) -> int:
    for index, arg in enumerate(args[:-1]):
        if arg == "-l":
            return int(args[index + 1])
    return 100  # uclient's default message length


RUNNERS: dict[str, Callable[[RunContext, ServerHandle, list[coturn.ManagedProcess]], dict[str, Any]]] = {
    "relay": run_relay, "setup": run_setup, "uclient": run_uclient,
}


def run_one(context: RunContext) -> dict[str, Any]:
    scenario = context.scenario
    started: list[coturn.ManagedProcess] = []
    server: ServerHandle | None = None
    record: dict[str, Any] = {
        "scenario": scenario.name, "kind": scenario.kind, "server": context.server, "clients": context.clients,
        "round": context.round, "driver": "turnutils_uclient" if scenario.kind == "uclient" else "loadgen",
    }
    alarm_previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, scenario.timeout)
    try:
        server = start_server(context.server, scenario, context.workdir, context.settings)
        started.append(server.process)
        server_facts = {"server_threads": procstat.threads(server.process.pid),
                        "server_cpus_allowed": procstat.cpus_allowed(server.process.pid),
                        "server_command": " ".join(server.process.command)}
        record.update(RUNNERS[scenario.kind](context, server, started))
        record.setdefault("detail", {}).update(server_facts)
        record["ok"] = True
    except (RunFailed, RunTimeout, OSError) as error:
        record["ok"] = False
        record["error"] = str(error) or type(error).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, alarm_previous)
        for process in reversed(started):
            process.stop()
        if server is not None:
            record["server_log_tail"] = _tail(server.log_file, 5)
    return record


class RunTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise RunTimeout("the run exceeded its time limit")


def _tail(path: str, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip() for line in handle.readlines()[-count:]]
    except OSError:
        return []


# ------------------------------------------------------------------------------------------------ main
def method_gaps(scenarios: Sequence[Scenario], servers: dict[str, list[str]], settings: Settings) -> list[str]:
    """Why this run's figures may not be quoted as headline figures (empty: the standard method was followed)."""
    gaps = [f"{s.name}: {s.rounds} round(s), fewer than {STANDARD_MIN_ROUNDS}"
            for s in scenarios if s.rounds < STANDARD_MIN_ROUNDS]
    gaps += [f"{name}: not measured against coturn" for name, wanted in servers.items()
             if set(wanted) != {"pyturn", "coturn"}]
    if not settings.pinning.enabled:
        gaps.append("server and load generator not pinned to separate cores (--pin)")
    return gaps


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay",
                                     description="Loopback relay benchmark: pyturn vs coturn.")
    parser.add_argument("scenarios", nargs="*", help=f"names or YAML paths (default: {' '.join(STANDARD)})")
    parser.add_argument("--servers", help="comma-separated pyturn,coturn, replacing the scenario's list "
                                          "(coturn is skipped when turnserver is not installed)")
    parser.add_argument("--clients", help="override the client counts, e.g. 2 or 1,10,50")
    parser.add_argument("--duration", type=float, help="override the measurement window (seconds)")
    parser.add_argument("--warmup", type=float, help="override the warm-up (seconds)")
    parser.add_argument("--rounds", type=int, help=f"override the number of alternating rounds (a headline run "
                                                   f"needs {STANDARD_MIN_ROUNDS} or more)")
    parser.add_argument("--pin", action="store_true", help="pin the server and the load generator to separate "
                                                           "cores with taskset (see --server-cpus, --load-cpus)")
    parser.add_argument("--server-cpus", default="1", help="with --pin: the server's CPUs (default 1)")
    parser.add_argument("--load-cpus", default="0", help="with --pin: the load generator's CPUs (default 0)")
    parser.add_argument("--logging", choices=LOGGING_MODES, default="default",
                        help="default: both servers at their shipped log level, to a file; quiet: pyturn at "
                             "WARNING, coturn to /dev/null")
    parser.add_argument("--coturn-relay-threads", default="match",
                        help="match (default: as many as pyturn has Workers), auto (coturn's one per CPU) or N")
    parser.add_argument("--out", help="output folder (default: benchmarks/results/local/<timestamp>, ignored by "
                                      "git; for results to commit: benchmarks/results/YYYY-MM-DD)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw relay.png")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--list", action="store_true", help="list the scenario files and exit")
    arguments = parser.parse_args(argv)
    threads = arguments.coturn_relay_threads
    if threads not in ("match", "auto") and not (threads.isdigit()):
        parser.error("--coturn-relay-threads: match, auto or a number")
    if arguments.rounds is not None and arguments.rounds < 1:
        parser.error("--rounds: at least 1")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments_list = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(arguments_list)
    if arguments.list:
        for path in sorted(SCENARIO_DIR.glob("*.yaml")):
            for scenario in load_scenarios(str(path)):
                print(f"{scenario.name:28} {scenario.kind:8} {scenario.description}")
        return 0
    scenarios = [s for reference in (arguments.scenarios or STANDARD) for s in load_scenarios(reference)]
    overrides: dict[str, Any] = {}
    if arguments.clients:
        overrides["clients"] = [int(v) for v in arguments.clients.split(",")]
    if arguments.duration is not None:
        overrides["duration"] = arguments.duration
    if arguments.warmup is not None:
        overrides["warmup"] = arguments.warmup
    if arguments.rounds is not None:
        overrides["rounds"] = arguments.rounds
    scenarios = [replace(s, **overrides) for s in scenarios]
    settings = Settings(make_pinning(arguments.pin, arguments.server_cpus, arguments.load_cpus),
                        arguments.logging, arguments.coturn_relay_threads)
    wanted_servers = arguments.servers.split(",") if arguments.servers else None
    have_coturn = coturn.available()
    if not have_coturn:
        sys.stderr.write("turnserver is not installed: pyturn only, no ratios\n")
    servers_of = {s.name: [v for v in (wanted_servers or s.servers) if v != "coturn" or have_coturn]
                  for s in scenarios}
    out = Path(arguments.out) if arguments.out else HERE / "results" / "local" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(arguments.quiet)
    gaps = method_gaps(scenarios, servers_of, settings)
    meta = {**machine.describe(arguments_list), **settings.describe(),
            "standard_method": {"followed": not gaps, "gaps": gaps, "min_rounds": STANDARD_MIN_ROUNDS,
                                "order": "ABBA: pyturn, coturn in even rounds, coturn, pyturn in odd ones"}}
    settings.pinning.pin_this_process()  # after describe(), which counts the CPUs this process may use
    document: dict[str, Any] = {"format": 2, "meta": meta, "scenarios": [asdict(s) for s in scenarios],
                                "runs": []}
    results_path = out / "results.json"
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyturn-bench-") as temporary:
        workdir = Path(temporary)
        for scenario in scenarios:
            servers = servers_of[scenario.name]
            for round_index in range(scenario.rounds):
                for clients in scenario.clients:
                    # alternate the order every round (ABBA) so neither server always runs first
                    order = servers if round_index % 2 == 0 else list(reversed(servers))
                    for server in order:
                        context = RunContext(scenario, server, clients, round_index, workdir, progress, settings)
                        progress.show(f"{context.label()} starting", force=True)
                        record = run_one(context)
                        document["runs"].append(record)
                        progress.done(f"{context.label()} " + (_headline(record) if record["ok"]
                                                                else f"FAILED: {record.get('error')}"))
                        results_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        for log in workdir.glob("uclient-*.log"):
            shutil.copy(log, out / log.name)
    document["summary"] = summarise(document["runs"])
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["elapsed_s"] = round(time.monotonic() - began, 1)
    results_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    from benchmarks.table import render

    (out / "table.md").write_text(render(document), encoding="utf-8")
    print(f"logging: {meta['logging']['mode']} (pyturn: {meta['logging']['pyturn']}; "
          f"coturn: {meta['logging']['coturn']})")
    print(f"pinning: {_pinning_text(settings.pinning)}; coturn relay threads: {settings.coturn_relay_threads}")
    print_summary(document["summary"])
    if gaps:
        print("\nNOT a headline run (benchmarks/README.md, Method): " + "; ".join(gaps))
    print(f"\nresults: {results_path} (Markdown tables: {out / 'table.md'}), {meta['elapsed_s']:.0f} s")
    if not arguments.no_plot:
        from benchmarks.plot import plot_results

        message = plot_results(document, out / "relay.png")
        print(message)
    failed = [r for r in document["runs"] if not r.get("ok")]
    return 1 if failed and len(failed) == len(document["runs"]) else 0


def _pinning_text(pinning: Pinning) -> str:
    if not pinning.enabled:
        return "none (the scheduler places server and load on any core)"
    return f"server on CPU {pinning.server_cpus}, load generator on CPU {pinning.load_cpus} (taskset)"


def _headline(record: dict[str, Any]) -> str:
    figures = record.get("figures", {})
    keys = ("server_cpu_us_per_packet", "relayed_pps", "loss_pct", "rtt_p50_ms", "rtt_avg_ms",
            "server_cpu_us_per_allocation", "setup_rate_per_s", "server_rss_bytes_per_allocation", "allocations_ok")
    return " ".join(f"{k}={fmt(figures[k])}" for k in keys if k in figures)


if __name__ == "__main__":
    raise SystemExit(main())
