"""Fixtures shared by the end-to-end (interop) tests; helpers live in tests/support/interop.py."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from interop import (  # tests/support is on sys.path (pyproject: [tool.pytest.ini_options] pythonpath)
    LOOPBACK,
    PASSWORD,
    USERNAME,
    PyturnProcess,
    free_port,
    pyturn_process,
    write_config,
)
from requirements import require

from pyturn.config import Config


def pytest_runtest_setup(item: pytest.Item) -> None:
    """@pytest.mark.requires(condition, reason): skip locally, fail under CI (tests/support/requirements.py)."""
    for mark in item.iter_markers(name="requires"):
        require(*mark.args, **mark.kwargs)


@pytest.fixture
def loopback_config() -> Config:
    """An in-process Config on 127.0.0.1, ephemeral port, loopback peers allowed, no 401 rate limit."""
    return Config(
        turn_address=LOOPBACK,
        turn_v6_address="",
        turn_port=0,
        tls_turn_port=0,
        allowed_peer_addresses=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        unauthenticated_rate_limit=0,
        user_database_check_interval=0,
    )


@pytest.fixture
async def inprocess_server(loopback_config: Config) -> AsyncIterator[object]:
    from pyturn.server import Server

    async with Server(loopback_config, users={USERNAME: PASSWORD}) as server:
        yield server


@pytest.fixture
def pyturn_subprocess(tmp_path: Path) -> Iterator[PyturnProcess]:
    """pyturn as `python -m pyturn -c CONFIG` on a free port, answering Bindings."""
    port = free_port()
    config = write_config(tmp_path, port)
    with pyturn_process(config, port) as server:
        yield server
