"""The descriptor budget and connection caps, and the throttled warning their refusals are logged with.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)



# The fd budget (docs/security.md "Descriptor budget"): relay sockets and TCP/TLS connections together stay FD_RESERVE
# below the soft RLIMIT_NOFILE. The reserve covers listeners, the event loop, log files and the interpreter, plus one
# burst of connections accepted before the refused ones are closed (asyncio accepts up to 100 per wake-up), so the
# process does not reach EMFILE through its own sockets. MaxTcpConnections = 0 takes half the budget: each TCP/TLS
# client also holds a relay socket.
FD_RESERVE = 128
MIN_SOCKET_BUDGET = 32
FDS_PER_STREAM = 2
REFUSAL_LOG_INTERVAL = 10.0  # seconds between log lines about refused TCP/TLS connections
def socket_budget(soft_fd_limit: int) -> int:
    """Relay sockets plus TCP/TLS connections allowed: max(32, soft RLIMIT_NOFILE - 128); 0 when unlimited."""
    if soft_fd_limit < 0 or soft_fd_limit == resource.RLIM_INFINITY:
        return 0
    return max(MIN_SOCKET_BUDGET, soft_fd_limit - FD_RESERVE)


def derived_stream_limit(soft_fd_limit: int) -> int:
    """MaxTcpConnections = 0: max(32, soft RLIMIT_NOFILE - 128) // 2 connections; 0 (no cap) when unlimited."""
    return socket_budget(soft_fd_limit) // FDS_PER_STREAM


def stream_limit(max_tcp_connections: int) -> int:
    """The TCP/TLS connection cap in force: the configured one, or the one the fd limit allows (0 = none)."""
    if max_tcp_connections:
        return max_tcp_connections
    return derived_stream_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class ThrottledWarning:
    """Counts refusals and logs them at most once per REFUSAL_LOG_INTERVAL, never once per event."""

    __slots__ = ("level", "logged_at", "template", "total", "unlogged")

    def __init__(self, template: str, level: int = logging.WARNING) -> None:
        self.template = template  # formatted with the number of events since the last line, then `detail`
        self.level = level
        self.total = 0
        self.unlogged = 0
        self.logged_at: float | None = None

    def note(self, now: float, detail: str = "", *, exc_info: bool = False) -> None:
        """Count one event; log (with the current exception's traceback when exc_info) if the interval passed."""
        self.total += 1
        self.unlogged += 1
        if self.logged_at is None or now - self.logged_at >= REFUSAL_LOG_INTERVAL:
            log.log(self.level, self.template + "%s", self.unlogged, detail, exc_info=exc_info)
            self.unlogged = 0
            self.logged_at = now


