"""Socket buffers of UDP listeners and relays (ListenerReceiveBuffer & co., docs/compatibility.md): what is asked
for is granted, forced past net.core.rmem_max when running as root, and a kernel cap is named in one warning."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from pathlib import Path

import pytest
from interop import PASSWORD, USERNAME, MiniTurnClient
from requirements import require

from pyturn.config import Config
from pyturn.net import sockets
from pyturn.net.sockets import SocketBuffers, set_buffers
from pyturn.server import Server


def _limit(name: str) -> int:
    return int(Path(f"/proc/sys/net/core/{name}").read_text(encoding="ascii"))


def _udp() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def test_zero_leaves_the_kernel_default() -> None:
    with _udp() as fresh, _udp() as sized:
        assert set_buffers(sized, SocketBuffers(0, 0)) == []
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            assert sized.getsockopt(socket.SOL_SOCKET, option) == fresh.getsockopt(socket.SOL_SOCKET, option)


def test_a_request_under_the_cap_is_granted_doubled() -> None:
    with _udp() as sock:
        assert set_buffers(sock, SocketBuffers(65536, 32768)) == []
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 131072  # Linux doubles what it is asked
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 65536


def test_root_forces_past_rmem_max() -> None:
    require(os.geteuid() == 0, "SO_RCVBUFFORCE needs root (CAP_NET_ADMIN)")
    wanted = _limit("rmem_max") + (1 << 20)
    with _udp() as sock:
        assert set_buffers(sock, SocketBuffers(wanted, 0)) == []
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * wanted


def test_without_root_the_cap_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets.os, "geteuid", lambda: 1000)
    receive, send = _limit("rmem_max") * 2, _limit("wmem_max") * 2
    with _udp() as sock:
        shortfalls = set_buffers(sock, SocketBuffers(receive, send))
    assert len(shortfalls) == 2
    assert "net.core.rmem_max" in shortfalls[0] and f"sysctl -w net.core.rmem_max={receive}" in shortfalls[0]
    assert "net.core.wmem_max" in shortfalls[1]


async def test_listener_and_relay_buffers_from_the_config(loopback_config: Config) -> None:
    config = dataclasses.replace(loopback_config, listener_receive_buffer=262144, listener_send_buffer=131072,
                                 relay_receive_buffer=98304, relay_send_buffer=65536)
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        runtime = server.runtime
        assert runtime is not None
        listener = next(iter(runtime.udp_listeners.values()))
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 524288
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 262144
        with MiniTurnClient(server.addresses["udp"][0]) as client:
            await client.allocate()
            relay = next(iter(runtime.relays))
            assert relay.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 196608
            assert relay.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 131072


async def test_a_capped_request_is_warned_about_once_per_kind(
    loopback_config: Config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sockets.os, "geteuid", lambda: 1000)  # as after a privilege drop: nothing is forced
    too_big = _limit("rmem_max") * 2
    config = dataclasses.replace(loopback_config, listener_receive_buffer=too_big, relay_receive_buffer=too_big)
    caplog.set_level(logging.WARNING, logger="pyturn.net.runtime")
    async with Server(config, users={USERNAME: PASSWORD}) as server:
        for _ in range(2):
            with MiniTurnClient(server.addresses["udp"][0]) as client:
                await client.allocate()
    lines = [record.getMessage() for record in caplog.records if "net.core.rmem_max" in record.getMessage()]
    assert [line.split(" socket ")[0] for line in lines] == ["UDP listener", "UDP relay"]
    assert f"sysctl -w net.core.rmem_max={too_big}" in lines[0]
