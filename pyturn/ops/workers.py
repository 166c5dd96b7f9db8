"""`Workers = N`: N server processes share TurnPort through SO_REUSEPORT (docs/architecture.md "Workers").

The kernel keeps one client's 5-tuple on one worker (UDP flows hash to one socket; a TCP connection belongs to
the worker that accepted it), so each worker runs an ordinary, independent Server:

* each owns a slice of AllocationPortRangeMin..Max, so their relay ports never collide;
* all share one nonce secret, so a nonce issued by one worker is good at another, and so is a RESERVATION-TOKEN
  (its MAC): the issuing worker holds the reserved port with SO_REUSEPORT, so the redeeming one can bind it too
  and take its traffic over (Runtime._hold_reserved in pyturn.net.runtime);
* each reads the same user file; SIGHUP is forwarded to every worker;
* a worker that dies is restarted on its own slice without disturbing the others.

The master checks that every port is free before it forks (SO_REUSEPORT would otherwise let a second pyturn
join the group silently), then binds each worker's listening sockets itself and keeps them open. The kernel
picks a socket of the group by the flow's hash modulo the group's size and index in it; a worker that closed its
own sockets on death would leave the group and reshuffle it (Linux moves the last member into the hole), so the
restarted worker would rejoin at another index and flows, with their allocations, would land on the wrong
worker. Held by the master, a dead worker's sockets stay in place (datagrams wait in their buffers) and its
successor takes them over. The master waits for every worker to report ready, forwards signals and reaps and
restarts workers.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyturn.config import Config
from pyturn.net.metrics_workers import worker_metrics_sockets
from pyturn.net.sockets import bind_stream, bind_udp, has_ipv6
from pyturn.ops.daemon import (
    EXIT_OK,
    EXIT_STARTUP,
    StartupReport,
    notify_ready,
    notify_reloading,
    notify_stopping,
)

log = logging.getLogger(__name__)

READY_TIMEOUT = 15.0  # seconds for every worker to bind and report
STOP_TIMEOUT = 2.0  # SIGTERM to SIGKILL for workers that do not leave
RESTART_DELAY = 1.0  # a worker that dies within this long of its start is restarted after this pause
_MASTER_SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1}


# (worker config, nonce secret, start-up report, listening sockets, the whole relay port range) -> exit code
WorkerMain = Callable[[Config, bytes, StartupReport, list[socket.socket], tuple[int, int]], int]
"""Runs one worker to completion in the forked child: (its config, the shared secret, its ready channel, its
listening sockets, bound by the master)."""


def worker_count(config: Config) -> int:
    return config.workers or os.cpu_count() or 1


def port_slices(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """Split the relay range into `count` contiguous slices, each starting on an even port (EVEN-PORT pairs)."""
    size = (high - low + 1) // count
    size -= size % 2
    if size < 2:
        raise ValueError(f"the relay port range {low}-{high} is too small for {count} workers")
    slices = [(low + index * size, low + (index + 1) * size - 1) for index in range(count)]
    slices[-1] = (slices[-1][0], high)
    return slices


def _listen_hosts(config: Config) -> list[str]:
    return [config.turn_address] + ([config.turn_v6_address] if config.turn_v6_address and has_ipv6() else [])


def claim_ports(config: Config) -> Config:
    """Bind every listening address once without SO_REUSEPORT, so a port held by anything (another pyturn
    included) is an error here, then release them for the workers. Port 0 becomes the port the kernel chose."""
    hosts = _listen_hosts(config)
    ports = {"turn_port": config.turn_port, "tls_turn_port": config.tls_turn_port}
    plan = [("turn_port", socket.SOCK_DGRAM), ("turn_port", socket.SOCK_STREAM)]
    if config.tls_turn_port:
        plan.append(("tls_turn_port", socket.SOCK_STREAM))
    if config.alt_stun_port:
        plan.append(("alt_stun_port", socket.SOCK_DGRAM))
    ports["alt_stun_port"] = config.alt_stun_port
    held: list[socket.socket] = []
    try:
        for key, kind in plan:
            for host in hosts if key != "alt_stun_port" else [config.turn_address]:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, kind)
                held.append(sock)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, ports[key]))
                except OSError as error:
                    kind_name = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                    raise OSError(error.errno, f"cannot listen on {kind_name} {host}:{ports[key]}: "
                                               f"{error.strerror}") from error
                ports[key] = sock.getsockname()[1]
    finally:
        for sock in held:
            sock.close()
    return config.replace(**ports)


def bind_listeners(config: Config) -> list[socket.socket]:
    """One worker's TURN (UDP and TCP) and TLS listening sockets with SO_REUSEPORT, on the ports claim_ports
    resolved. The alternate STUN sockets are left to the worker (Binding only: no state to keep on a worker)."""
    plan = [("UDP", config.turn_port), ("TCP", config.turn_port)]
    if config.tls_turn_port:
        plan.append(("TCP", config.tls_turn_port))
    sockets: list[socket.socket] = []
    try:
        for host in _listen_hosts(config):
            for kind, port in plan:
                try:
                    bind = bind_udp if kind == "UDP" else bind_stream
                    sockets.append(bind(host, port, reuse_port=True))
                except OSError as error:
                    raise OSError(error.errno, f"cannot listen on {kind} {host}:{port}: {error.strerror}") from error
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass(slots=True)
class _Worker:
    index: int
    config: Config
    sockets: list[socket.socket]
    pid: int = 0
    started: float = 0.0


class WorkerPool:
    """The master side: fork, watch, forward signals, restart."""

    def __init__(self, config: Config, secret: bytes, worker_main: WorkerMain) -> None:
        self.secret = secret
        self.worker_main = worker_main
        low, high = config.allocation_port_range_min, config.allocation_port_range_max
        self.relay_ports = (low, high)
        slices = port_slices(low, high, worker_count(config))
        self.workers: list[_Worker] = []
        self.stopping = False
        self.draining = False  # SIGUSR1 (docs/scaling.md): workers drain and exit; none is restarted
        # MetricsPort: worker 0 serves the sum over all workers (pyturn.net.metrics_workers).
        metrics_sockets = worker_metrics_sockets(config, len(slices))
        try:
            for index, (lo, hi) in enumerate(slices):
                worker_config = config.replace(
                    allocation_port_range_min=lo, allocation_port_range_max=hi,
                    # MaxRelayedBitrate is the instance's: each worker measures its own share (docs/scaling.md).
                    max_relayed_bitrate=-(-config.max_relayed_bitrate // len(slices)),
                )
                self.workers.append(_Worker(index, worker_config, bind_listeners(config) + metrics_sockets[index]))
        except BaseException:
            self.close_sockets()
            for sockets in metrics_sockets:
                for sock in sockets:
                    sock.close()
            raise

    def close_sockets(self) -> None:
        for worker in self.workers:
            for sock in worker.sockets:
                sock.close()

    def _spawn(self, worker: _Worker) -> int:
        """Fork one worker; returns the read end of its ready channel."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            status = EXIT_STARTUP
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                for signum in _MASTER_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                os.environ.pop("NOTIFY_SOCKET", None)  # systemd hears from the master only
                for other in self.workers:
                    if other is not worker:
                        for sock in other.sockets:
                            sock.close()
                status = self.worker_main(
                    worker.config, self.secret, StartupReport(write_end), worker.sockets, self.relay_ports
                )
            except BaseException:
                log.exception("worker %d failed", worker.index)
            finally:
                logging.shutdown()
                os._exit(status)
        os.close(write_end)
        worker.pid = pid
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d, relay ports %d-%d)", worker.index, pid,
                 worker.config.allocation_port_range_min, worker.config.allocation_port_range_max)
        return read_end

    def start(self) -> str | None:
        """Fork every worker and wait until each reports; returns None, or why start-up failed."""
        channels = {self._spawn(worker): worker for worker in self.workers}
        deadline = time.monotonic() + READY_TIMEOUT
        failure: str | None = None
        while channels and failure is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = "workers did not report ready in time"
                break
            readable, _, _ = select.select(list(channels), [], [], remaining)
            for fd in readable:
                worker = channels.pop(fd)
                message = os.read(fd, 4096).decode("utf-8", "replace")
                os.close(fd)
                code, _, text = message.partition(" ")
                if code != str(EXIT_OK):
                    failure = f"worker {worker.index}: {text or 'exited during start-up'}"
        for fd in channels:
            os.close(fd)
        if failure is not None:
            self.stop()
        return failure

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT/SIGQUIT (signals must be blocked by the caller before start())."""
        while True:
            info = signal.sigtimedwait(_MASTER_SIGNALS, 1.0)
            if info is None:
                continue
            if info.si_signo == signal.SIGCHLD:
                self._reap_and_restart()
                if self.draining and not any(worker.pid for worker in self.workers):
                    log.info("drained: every worker has exited")
                    notify_stopping()
                    return EXIT_OK
            elif info.si_signo == signal.SIGUSR1:
                if not self.draining:
                    self.draining = True
                    log.warning("SIGUSR1: draining %d workers", len(self.workers))
                    self._forward(signal.SIGUSR1)
            elif info.si_signo == signal.SIGHUP:
                notify_reloading()
                from pyturn.ops.logsetup import reopen_log_files

                reopen_log_files()
                self._forward(signal.SIGHUP)
                notify_ready()
            else:
                notify_stopping()
                self.stop()
                return EXIT_OK

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.pid:
                try:
                    os.kill(worker.pid, signum)
                except ProcessLookupError:
                    pass

    def _reap_and_restart(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue
            worker.pid = 0
            if self.stopping or self.draining:
                continue
            log.error("worker %d (pid %d) died with status %d; restarting it", worker.index, pid,
                      os.waitstatus_to_exitcode(status))
            if time.monotonic() - worker.started < RESTART_DELAY:
                time.sleep(RESTART_DELAY)  # a worker that dies at once is not restarted in a tight loop
            fd = self._spawn(worker)
            os.close(fd)  # a restarted worker's readiness is not waited for: the others keep serving

    def stop(self) -> None:
        self.stopping = True
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(worker.pid for worker in self.workers) and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.02)
                continue
            for worker in self.workers:
                if worker.pid == pid:
                    worker.pid = 0
        self._forward(signal.SIGKILL)
        for worker in self.workers:
            if worker.pid:
                try:
                    os.waitpid(worker.pid, 0)
                except ChildProcessError:
                    pass
                worker.pid = 0
        self.close_sockets()


def run_workers(config: Config, worker_main: WorkerMain, report: StartupReport | None) -> int:
    """The master: claim the ports, fork the workers, serve until told to stop."""
    try:
        config = claim_ports(config)
        pool = WorkerPool(config, os.urandom(32), worker_main)
    except (OSError, ValueError) as error:
        message = f"start-up failed: {error}"
        log.error("%s", message)
        if report is not None:
            report.send(EXIT_STARTUP, message)
        return EXIT_STARTUP
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _MASTER_SIGNALS)
    try:
        failure = pool.start()
        if failure is not None:
            log.error("start-up failed: %s", failure)
            if report is not None:
                report.send(EXIT_STARTUP, failure)
            return EXIT_STARTUP
        log.info("%d workers serving on port %d", len(pool.workers), config.turn_port)
        notify_ready(f"{len(pool.workers)} workers serving")
        if report is not None:
            report.send(EXIT_OK)
        return pool.run()
    finally:
        pool.stop()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
