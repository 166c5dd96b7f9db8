"""Two aiortc peers open a data channel through an embedded pyturn, with relay-only ICE.

aiortc's RTCConfiguration(iceTransportPolicy=RELAY) makes aioice gather only relayed candidates and drop remote
host/srflx ones, so the only possible path is peer A -> pyturn (A's allocation) -> pyturn (B's allocation) -> peer
B. The test also checks that every local candidate is a relay candidate, so a change in aiortc that quietly fell
back to host candidates would fail here instead of passing without TURN.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from requirements import require_module

aiortc = require_module("aiortc")

from aiortc import RTCConfiguration, RTCPeerConnection  # noqa: E402
from webrtc_rig import MESSAGES, WAIT, candidate_types, exchange, relay_only  # noqa: E402

import pyturn  # noqa: E402
from pyturn import AllocationCreated, AllocationEnded, ChannelBound, Hooks, PermissionInstalled  # noqa: E402

USERNAME = "webrtc"
PASSWORD = "correct horse battery staple"


class Recorder:
    """Everything the hooks reported."""

    def __init__(self) -> None:
        self.created: list[AllocationCreated] = []
        self.ended: list[AllocationEnded] = []
        self.permissions: list[PermissionInstalled] = []
        self.channels: list[ChannelBound] = []

    def hooks(self) -> Hooks:
        return Hooks(
            on_allocation_created=self.created.append,
            on_allocation_deleted=self.ended.append,
            on_permission_installed=self.permissions.append,
            on_channel_bound=self.channels.append,
        )


@pytest.fixture
async def recorded_server() -> AsyncIterator[tuple[pyturn.Server, Recorder]]:
    recorder = Recorder()
    # The default peer policy, no allow list: the two relays reach each other because 127.0.0.1 is the server's
    # own relay address and their ports lie in the relay range (docs/security.md "Peer policy").
    config = pyturn.loopback_config(allowed_peer_addresses=())
    async with pyturn.Server(config, users={USERNAME: PASSWORD}, hooks=recorder.hooks()) as server:
        yield server, recorder


def _relay_only(server: pyturn.Server, transport: str) -> RTCConfiguration:
    # aiortc uses the first TURN URL it supports: offering only one pins the client-to-server transport.
    return relay_only(server.ice_servers(USERNAME, transports=(transport,)))


@pytest.mark.parametrize("transport", ["udp", "tcp"], ids=["turn-udp", "turn-tcp"])
async def test_webrtc_data_channel_relays_only_through_pyturn(
    recorded_server: tuple[pyturn.Server, Recorder], transport: str
) -> None:
    server, recorder = recorded_server
    offerer = RTCPeerConnection(_relay_only(server, transport))
    answerer = RTCPeerConnection(_relay_only(server, transport))
    try:
        replies = await asyncio.wait_for(exchange(offerer, answerer), WAIT)
        assert offerer.localDescription is not None and answerer.localDescription is not None
        assert candidate_types(offerer.localDescription.sdp) == {"relay"}
        assert candidate_types(answerer.localDescription.sdp) == {"relay"}
    finally:
        await offerer.close()
        await answerer.close()

    assert replies == [f"pong {number}" for number in range(MESSAGES)]
    assert len(recorder.created) >= 2
    assert {created.five_tuple.transport.value for created in recorder.created} == {transport}
    assert {created.username for created in recorder.created} == {USERNAME}
    assert recorder.permissions  # each peer's relay had to let the other's relayed address in
    live = server.relayed_bytes()
    assert live.to_peer > 0 and live.to_client > 0

    # aioice deletes its allocation (Refresh lifetime 0) on close; whatever is left goes at server close.
    await server.close()
    assert {ended.five_tuple for ended in recorder.ended} == {created.five_tuple for created in recorder.created}
    carried = [ended for ended in recorder.ended if ended.bytes_to_peer and ended.bytes_to_client]
    assert len(carried) >= 2  # both peers' allocations relayed in both directions
    total = server.relayed_bytes()
    assert total.to_peer == sum(ended.bytes_to_peer for ended in recorder.ended) >= live.to_peer
    assert total.to_client == sum(ended.bytes_to_client for ended in recorder.ended) >= live.to_client


async def test_webrtc_data_channel_with_shared_secret_credentials() -> None:
    # No users at all: both peers get TURN REST credentials from the library helper, one per peer, as a web
    # service would hand them out.
    secret = "webrtc-shared-secret"
    recorder = Recorder()
    # The default peer policy (no allow list), as in recorded_server: the relays reach each other on their own.
    config = pyturn.loopback_config(allowed_peer_addresses=())
    async with pyturn.Server(config, shared_secret=secret, hooks=recorder.hooks()) as server:

        def configuration(user: str) -> RTCConfiguration:
            username, password = pyturn.rest_credentials(secret, user, ttl=600)
            return relay_only(server.ice_servers(username, password, transports=("udp",)))

        offerer, answerer = RTCPeerConnection(configuration("caller")), RTCPeerConnection(configuration("callee"))
        try:
            replies = await asyncio.wait_for(exchange(offerer, answerer), WAIT)
            assert offerer.localDescription is not None
            assert candidate_types(offerer.localDescription.sdp) == {"relay"}
        finally:
            await offerer.close()
            await answerer.close()
        assert replies == [f"pong {number}" for number in range(MESSAGES)]
        assert {created.username.split(":", 1)[1] for created in recorder.created} == {"caller", "callee"}
        assert server.relayed_bytes().to_peer > 0
