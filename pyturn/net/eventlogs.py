"""Log lines a server writes from the core's events, rate-limited so that a misbehaving client or a full
instance cannot flood the log. They keep the logger ``pyturn.server`` they were always written to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyturn.core.auth import EXPIRED
from pyturn.core.events import AllocationRedirected, AuthFailed, Event
from pyturn.net.sockets import uri_host

log = logging.getLogger("pyturn.server")

EXPIRED_LOG_INTERVAL = 10.0  # seconds between "expired credentials" lines beyond the first (log floods)


class ExpiredCredentialsLog:
    """Logs refusals of expired shared-secret credentials: the first at once, then one line per interval with
    the count, so a client retrying stale credentials cannot flood the log. Never logs a secret or a password."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, AuthFailed) or event.reason != EXPIRED:
            return
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < EXPIRED_LOG_INTERVAL:
            return
        client = event.five_tuple.client
        log.warning("expired credentials: username %r from %s:%d refused (%d since the last such line)",
                    event.username, client[0], client[1], self._unlogged)
        self._unlogged = 0
        self._logged_at = now


class RedirectLog:
    """Logs Allocates sent elsewhere (300) or refused for capacity (508): the first at once, then one line per
    interval with the counts, so a full or draining instance under load does not flood the log."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._logged_at: float | None = None
        self._redirected = 0
        self._refused = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, AllocationRedirected):
            return
        if event.alternate is None:
            self._refused += 1
        else:
            self._redirected += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < EXPIRED_LOG_INTERVAL:
            return
        client = event.five_tuple.client
        if event.alternate is None:
            outcome = "refused with 508"
        else:
            outcome = f"redirected to {uri_host(event.alternate[0])}:{event.alternate[1]}"
        log.info("allocation for %s:%d/%s %s (%s); since the last such line: %d redirected, %d refused",
                 client[0], client[1], event.five_tuple.transport.value, outcome, event.reason,
                 self._redirected, self._refused)
        self._redirected = self._refused = 0
        self._logged_at = now
