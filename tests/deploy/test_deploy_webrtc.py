"""Relay-only WebRTC data-channel calls through the handbook deployment (default peer policy), over TURN/UDP and
TURN/TCP: aiortc, and headless Chromium driven with playwright.

With iceTransportPolicy 'relay' each side gathers only its relayed candidate (198.51.100.19:<relay port>), so the
only path is A -> pyturn (A's allocation) -> pyturn (B's allocation) -> B: exactly what a browser web phone whose
two users both sit behind restrictive NATs does. The tests check that the selected candidate pair is relay/relay.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from chromium import BrowserCall, Chromium, sdp_candidates
from handbook import PORT_RANGE, TURN_PORT, USERS, Deployment
from netns import TURN_ADDRESS, require_module

pytestmark = pytest.mark.deploy

CALL_TIMEOUT = 40.0
MESSAGES = 5
TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"], ids=["turn-udp", "turn-tcp"])


def _turn_url(transport: str) -> str:
    return f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport={transport}"


def _ice_servers(username: str, transport: str) -> list[dict[str, Any]]:
    return [{"urls": [_turn_url(transport)], "username": username, "credential": USERS[username]}]


def _is_relayed_address(host: str, port: int) -> bool:
    return host == TURN_ADDRESS and PORT_RANGE[0] <= port <= PORT_RANGE[1]


# --------------------------------------------------------------------------------------------- aiortc
async def _aiortc_call(transport: str) -> dict[str, Any]:
    from aiortc import RTCPeerConnection
    from webrtc_rig import candidate_types, exchange, relay_only

    offerer, answerer = (RTCPeerConnection(relay_only(_ice_servers(username, transport))) for username in USERS)
    turn_errors = _TurnErrorLog()
    try:
        try:
            replies = await exchange(offerer, answerer)
        except (TimeoutError, ConnectionError):
            raise AssertionError(f"no data channel within the time limit (ICE {offerer.iceConnectionState} / "
                                 f"{answerer.iceConnectionState}); TURN error responses: {turn_errors.seen}") from None
        pairs = []
        for connection in (offerer, answerer):
            assert connection.sctp is not None
            ice = connection.sctp.transport.transport._connection  # aioice.Connection: no public selected pair
            pair = ice._nominated[1]
            pairs.append({"local": [pair.local_candidate.type, pair.local_candidate.host, pair.local_candidate.port],
                          "remote": [pair.remote_candidate.type, pair.remote_candidate.host,
                                     pair.remote_candidate.port]})
        assert offerer.localDescription is not None and answerer.localDescription is not None
        gathered = [sorted(candidate_types(c.localDescription.sdp)) for c in (offerer, answerer)]
        return {"replies": replies, "pairs": pairs, "gathered": gathered}
    finally:
        turn_errors.close()
        await offerer.close()
        await answerer.close()


class _TurnErrorLog(logging.Handler):
    """Collects the TURN error responses aioice logs at DEBUG, so a failed call says why (e.g. 403 Forbidden)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: set[str] = set()
        self.logger = logging.getLogger("aioice.turn")
        self.level_before = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "Class.ERROR" in text and "(401," not in text and "(438," not in text:  # challenges are normal
            method = text.split("Method.")[-1].split(",")[0].split(")")[0]
            code = text.split("'ERROR-CODE': ")[-1].split(")")[0] + ")" if "ERROR-CODE" in text else "?"
            self.seen.add(f"{method} {code}")

    def close(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)
        super().close()


@TRANSPORTS
def test_aiortc_relay_only_call(deployment: Deployment, transport: str) -> None:
    require_module("aiortc")
    log_start = len(deployment.server.log())
    result = deployment.namespace.run_async(lambda: _aiortc_call(transport), CALL_TIMEOUT)
    # Which transport reached the server: pyturn logs "allocation <client>/<transport> for '<user>' ...".
    logged = deployment.server.log()[log_start:]
    for username in USERS:
        assert re.search(rf"allocation \S+/{transport} for '{username}'", logged), logged[-2000:]
    assert result["gathered"] == [["relay"], ["relay"]]
    assert len(result["replies"]) == 20 and result["replies"][0] == "pong 0"
    for pair in result["pairs"]:
        assert pair["local"][0] == pair["remote"][0] == "relay", pair
        assert _is_relayed_address(*pair["local"][1:]) and _is_relayed_address(*pair["remote"][1:]), pair


# --------------------------------------------------------------------------------------------- Chromium
def _browser_call(chromium: Chromium, transport: str) -> dict[str, Any]:
    with BrowserCall(chromium, [_ice_servers(username, transport) for username in USERS]) as call:
        offer, answer = call.connect()
        received = call.exchange([str(number) for number in range(MESSAGES)])
        return {"received": received, "pairs": call.selected_pairs(), "offer": offer, "answer": answer}


@TRANSPORTS
def test_chromium_relay_only_call(chromium_in_namespace: Chromium, transport: str) -> None:
    result = _browser_call(chromium_in_namespace, transport)
    assert result["received"] == [[f"pong {n}" for n in range(MESSAGES)], [f"ping {n}" for n in range(MESSAGES)]]
    for sdp in (result["offer"], result["answer"]):
        candidates = sdp_candidates(sdp)
        assert candidates and all(" typ relay " in line for line in candidates), sdp
    for pair in result["pairs"]:
        assert pair is not None and pair["state"] == "succeeded", pair
        assert pair["local"]["type"] == pair["remote"]["type"] == "relay", pair
        assert pair["local"]["relayProtocol"] == transport, pair  # how this browser reached the TURN server
        assert _is_relayed_address(pair["local"]["address"], pair["local"]["port"]), pair
        assert _is_relayed_address(pair["remote"]["address"], pair["remote"]["port"]), pair
