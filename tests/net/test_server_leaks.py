"""Starting and stopping many embedded servers in one process leaves no sockets, tasks or threads behind."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import threading
from pathlib import Path

import pytest
from aioice.turn import create_turn_endpoint

import pyturn
from pyturn import AllocationDeleted
from pyturn.testing import self_signed_certificate, server_ssl_context

pytestmark = pytest.mark.requires(sys.platform.startswith("linux"), "counts /proc/self/fd")

SERVERS = 50
USERS = {"leak": "check"}
WAIT = 5.0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def _allocate_and_leave(server: pyturn.Server, kind: str, trust: ssl.SSLContext | None = None) -> None:
    """An aioice allocation with a channel. Over TCP and TLS the client's connection is still open when the
    server closes, and the server must release its side anyway."""
    turn, sink = await create_turn_endpoint(
        Sink, server.addresses[kind][0], "leak", "check", ssl=trust, transport="udp" if kind == "udp" else "tcp"
    )
    turn.sendto(b"x", ("127.0.0.1", 9))
    await server.wait_for_event(pyturn.ChannelBound, timeout=WAIT)
    if kind == "udp":
        turn.close()
        await asyncio.wait_for(sink.closed.wait(), WAIT)
        await server.wait_for_event(AllocationDeleted, timeout=WAIT)
    else:
        await server.close()  # the server goes first: its side of the TCP connection must be released
        turn.close()
        await asyncio.wait_for(sink.closed.wait(), WAIT)


async def test_server_leaks_nothing_after_many_starts_and_stops(tmp_path: Path) -> None:
    certificate, key = self_signed_certificate(tmp_path)
    context = server_ssl_context(certificate, key)
    trust = ssl.create_default_context(cafile=str(certificate))
    await asyncio.sleep(0)  # let anything the fixtures scheduled settle before counting
    fds_before = _open_fds()
    tasks_before = asyncio.all_tasks()
    threads_before = set(threading.enumerate())
    for number in range(SERVERS):
        async with pyturn.Server(users=USERS, ssl_context=context) as server:
            if number % 10 == 1:
                await _allocate_and_leave(server, "udp")
            elif number % 10 == 2:
                await _allocate_and_leave(server, "tcp")
            elif number % 10 == 3:
                await _allocate_and_leave(server, "tls", trust)
        assert server.allocation_count() == 0
    assert asyncio.all_tasks() == tasks_before
    assert set(threading.enumerate()) == threads_before
    assert _open_fds() == fds_before


def test_threaded_server_leaks_nothing_after_many_starts_and_stops() -> None:
    fds_before = _open_fds()
    threads_before = set(threading.enumerate())
    for _ in range(SERVERS):
        with pyturn.run_in_thread(users=USERS) as server:
            assert server.turn_uris()
    assert set(threading.enumerate()) == threads_before
    assert _open_fds() == fds_before
