"""The recipes of docs/testing.md, each one run as written there: the pytest fixtures, impairment and faults.

Keep the code blocks of docs/testing.md and these tests in step (the page names each test).
"""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest
from requirements import require_module

aiortc = require_module("aiortc")

from webrtc_rig import peer_pair  # noqa: E402

import pyturn  # noqa: E402
from pyturn import AllocationDeleted  # noqa: E402
from pyturn.testing import TurnServerFactory, TurnServerFixture  # noqa: E402


# ------------------------------------------------------------------------- recipe: loss and delay
@pytest.mark.turn_server(impairment=pyturn.Impairment(loss=0.1, delay=0.05, seed=1), impairment_direction="to_peer")
async def test_recipe_data_channel_through_loss_and_delay(turn_server: TurnServerFixture) -> None:
    async with peer_pair(turn_server.ice_servers(transports=("udp",))) as pinger:
        await pinger.connect(timeout=60)  # ICE, DTLS and SCTP set up through the lossy path too
        assert await pinger.burst(20, timeout=60) == [f"pong {n}" for n in range(20)]  # all, in order
    impairment = turn_server.impairment
    assert impairment is not None
    assert impairment.dropped > 0 and impairment.delayed > 0  # live statistics of the marker's impairment


async def test_recipe_impairment_for_one_block(turn_server: TurnServerFixture) -> None:
    async with peer_pair(turn_server.ice_servers(transports=("udp",))) as pinger:
        await pinger.connect()
        with turn_server.impaired(pyturn.Impairment(delay=0.2), direction="to_client") as active:
            (round_trip,) = await pinger.round_trips(1)
        assert round_trip >= 0.4  # the ping and the pong each reach their client 200 ms late
        assert active.delayed >= 2
        (round_trip,) = await pinger.round_trips(1)
        assert round_trip < 0.2  # removed at the end of the block


# --------------------------------------------------------------------------- recipe: ICE restart
async def test_recipe_forced_ice_restart(turn_servers: TurnServerFactory) -> None:
    # aiortc 1.16 cannot restart ICE (no restartIce(), no iceRestart offer option, RTCIceTransport.start() runs
    # once): an application re-creates its peer connections instead, here onto a second TURN server.
    first, second = turn_servers(), turn_servers()
    async with peer_pair(first.ice_servers(transports=("udp",))) as pinger:
        await pinger.connect()
        assert await pinger.burst(3) == ["pong 0", "pong 1", "pong 2"]
        assert first.expire_allocations() == 2  # both peers' allocations, as if their lifetime ran out
        assert {event.reason for event in first.events if isinstance(event, AllocationDeleted)} == {"expired"}
        pinger.channel.send("ping into the void")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pinger.pongs.get(), 1.0)  # the relayed path is gone
    async with peer_pair(second.ice_servers(transports=("udp",))) as pinger:
        await pinger.connect()
        assert await pinger.burst(3) == ["pong 0", "pong 1", "pong 2"]
    assert first.allocation_count() == 0
    # Each peer's deleting Refresh met the expired allocation: one signed 437 each, taken at once (no retransmission).
    assert first.server.call(lambda server: server.core.stats.error_responses[("refresh", 437)]) == 2
    assert len(second.server.call(lambda server: server.ended_allocations)) == 2  # closed with the connections


# ------------------------------------------------------------------------------ recipe: failover
async def test_recipe_failover_to_the_second_server(turn_servers: TurnServerFactory) -> None:
    primary, backup = turn_servers(), turn_servers()
    primary.fail_next("ALLOCATE", 508)  # the primary is full: the first Allocate gets 508 (signed)
    for servers in (primary, backup):
        try:
            async with peer_pair(servers.ice_servers(transports=("udp",))) as pinger:
                await pinger.connect()
                replies = await pinger.burst(3)
            break
        except ConnectionError:  # no relayed candidate, so ICE failed: try the next server
            continue
    else:
        pytest.fail("no TURN server worked")
    assert servers is backup and replies == ["pong 0", "pong 1", "pong 2"]
    assert primary.allocation_count() == 0
    assert primary.server.call(lambda server: server.core.stats.error_responses[("allocate", 508)]) == 1


def test_recipe_turn_servers_share_one_user(turn_servers: TurnServerFactory) -> None:
    first, second = turn_servers(), turn_servers(transports=("tcp",), lifetime=60)
    assert (first.username, first.password) == (second.username, second.password) == (
        turn_servers.username, turn_servers.password)
    assert first.addresses["udp"] != second.addresses["tcp"] and not second.addresses["udp"]
    assert turn_servers.servers == [first, second]


def test_recipe_page_names_tests_that_exist() -> None:
    root = Path(__file__).resolve().parents[2]
    named = set(re.findall(r"`(tests/[a-z_/]+\.py)::([a-z_0-9]+)`", (root / "docs" / "testing.md").read_text()))
    assert len(named) >= 6
    for path, name in named:
        functions = {node.name for node in ast.walk(ast.parse((root / path).read_text()))
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert name in functions, f"docs/testing.md names {path}::{name}, which does not exist"
