"""Relay-only WebRTC data-channel calls through the handbook deployment (default peer policy), over TURN/UDP and
TURN/TCP: aiortc, and headless Chromium driven with playwright.

With iceTransportPolicy 'relay' each side gathers only its relayed candidate (198.51.100.19:<relay port>), so the
only path is A -> pyturn (A's allocation) -> pyturn (B's allocation) -> B: exactly what a browser web phone whose
two users both sit behind restrictive NATs does. The tests check that the selected candidate pair is relay/relay.
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from handbook import PORT_RANGE, TURN_PORT, USERS, Deployment
from netns import TURN_ADDRESS, require_module, require_tool

pytestmark = pytest.mark.deploy

CALL_TIMEOUT = 40.0
MESSAGES = 5
TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"], ids=["turn-udp", "turn-tcp"])


def _turn_url(transport: str) -> str:
    return f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport={transport}"


def _is_relayed_address(host: str, port: int) -> bool:
    return host == TURN_ADDRESS and PORT_RANGE[0] <= port <= PORT_RANGE[1]


# --------------------------------------------------------------------------------------------- aiortc
async def _aiortc_call(transport: str) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection
    from webrtccall import candidate_types, exchange

    def relay_only(username: str) -> RTCConfiguration:
        server = RTCIceServer(urls=_turn_url(transport), username=username, credential=USERS[username])
        return RTCConfiguration(iceServers=[server], iceTransportPolicy=RTCIceTransportPolicy.RELAY)

    (caller, _), (callee, _) = USERS.items()
    offerer, answerer = RTCPeerConnection(relay_only(caller)), RTCPeerConnection(relay_only(callee))
    turn_errors = _TurnErrorLog()
    try:
        try:
            replies = await exchange(offerer, answerer)
        except TimeoutError:
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
CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright never downloads a browser here
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
BROWSER_TIMEOUT_MS = 20_000
CHROMIUM_LOG_MODULES = "turn_port=1,basic_port_allocator=1,p2p_transport_channel=1"


@dataclass
class Chromium:
    browser: Any
    log: Path

    def webrtc_log(self, lines: int = 20) -> str:
        """The TURN client's lines (allocations, permissions, their error codes) of Chromium's log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        kept = [line for line in text.splitlines() if "turn_port.cc" in line and "Ignoring STUN" not in line]
        return "\n".join(kept[-lines:])

# One RTCPeerConnection per page. Every promise the test awaits is raced against a timer, so no evaluate() can
# hang: playwright's evaluate has no timeout of its own.
PAGE_SCRIPT = """
window.call = (() => {
  const state = {received: [], open: false, errors: []};
  let pc = null, channel = null;
  const bounded = (promise, ms, what) => Promise.race([promise, new Promise((_, reject) =>
      setTimeout(() => reject(new Error(what + ' timed out')), ms))]);
  const gathered = () => bounded(new Promise(resolve => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
  }), __TIMEOUT_MS__, 'ICE gathering');
  const attach = c => {
      channel = c;
      c.onopen = () => { state.open = true; };
      c.onmessage = event => state.received.push(event.data);
  };
  return {
    state,
    start(iceServers) {
      pc = new RTCPeerConnection({iceServers, iceTransportPolicy: 'relay'});
      pc.onicecandidateerror = e => state.errors.push(`${e.errorCode} ${e.errorText} ${e.url}`);
      pc.ondatachannel = event => attach(event.channel);
    },
    async offer() {
      attach(pc.createDataChannel('chat'));
      await pc.setLocalDescription(await pc.createOffer());
      await gathered();
      return pc.localDescription.sdp;
    },
    async answer(sdp) {
      await pc.setRemoteDescription({type: 'offer', sdp});
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered();
      return pc.localDescription.sdp;
    },
    async accept(sdp) { await pc.setRemoteDescription({type: 'answer', sdp}); },
    send(text) { channel.send(text); },
    async selectedPair() {
      const stats = await bounded(pc.getStats(), __TIMEOUT_MS__, 'getStats');
      const byId = new Map([...stats.values()].map(report => [report.id, report]));
      const transport = [...stats.values()].find(report => report.type === 'transport');
      const pair = byId.get(transport && transport.selectedCandidatePairId);
      if (!pair) return null;
      const describe = c => ({type: c.candidateType, address: c.address, port: c.port,
                              relayProtocol: c.relayProtocol || null});
      return {local: describe(byId.get(pair.localCandidateId)), remote: describe(byId.get(pair.remoteCandidateId)),
              state: pair.state};
    },
    close() { pc && pc.close(); },
  };
})();
""".replace("__TIMEOUT_MS__", str(BROWSER_TIMEOUT_MS))


@pytest.fixture(scope="module")
def chromium_in_namespace(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """Chromium launched by playwright through a wrapper that runs it inside the deployment's namespace.

    playwright talks to the browser over a pipe (--remote-debugging-pipe), so nothing of it needs the network.
    """
    require_module("playwright")
    require_tool(CHROMIUM)
    from playwright.sync_api import sync_playwright

    directory = tmp_path_factory.mktemp("chromium")
    wrapper = directory / "chromium-in-netns"
    log = directory / "chromium.log"  # WebRTC's own account of ICE and TURN, quoted when a call fails
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {deployment.namespace.name} {CHROMIUM} "$@" '
                       f'--enable-logging=stderr --vmodule={CHROMIUM_LOG_MODULES} 2>>{log}\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    with sync_playwright() as playwright:
        # launch() gives the browser a fresh temporary --user-data-dir of its own and deletes it afterwards.
        browser = playwright.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_FLAGS, headless=True,
                                             timeout=BROWSER_TIMEOUT_MS)
        try:
            yield Chromium(browser, log)
        finally:
            browser.close()


def _browser_call(chromium: Chromium, transport: str) -> dict[str, Any]:
    try:
        return _call_between_pages(chromium.browser, transport)
    except Exception as error:
        raise AssertionError(f"{error}\n--- Chromium's WebRTC log ---\n{chromium.webrtc_log()}") from None


def _call_between_pages(browser: Any, transport: str) -> dict[str, Any]:
    contexts = [browser.new_context() for _ in USERS]  # two users, nothing shared between them
    try:
        pages = []
        for context, (username, password) in zip(contexts, USERS.items(), strict=True):
            page = context.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            page.evaluate(PAGE_SCRIPT)
            page.evaluate("servers => call.start(servers)",
                          [{"urls": [_turn_url(transport)], "username": username, "credential": password}])
            pages.append(page)
        caller, callee = pages
        offer = caller.evaluate("call.offer()")  # signalling: through this test
        answer = callee.evaluate("sdp => call.answer(sdp)", offer)
        caller.evaluate("sdp => call.accept(sdp)", answer)
        try:
            for page in pages:
                page.wait_for_function("call.state.open")
        except Exception as error:
            errors = [page.evaluate("call.state.errors") for page in pages]
            raise AssertionError(f"the data channel did not open: {error}; ICE candidate errors: {errors}") from None
        for number in range(MESSAGES):
            caller.evaluate("n => call.send('ping ' + n)", number)
            callee.evaluate("n => call.send('pong ' + n)", number)
        for page in pages:
            page.wait_for_function(f"call.state.received.length >= {MESSAGES}")
        return {
            "received": [page.evaluate("call.state.received") for page in pages],
            "pairs": [page.evaluate("call.selectedPair()") for page in pages],
            "offer": offer,
            "answer": answer,
        }
    finally:
        for context in contexts:
            context.close()


@TRANSPORTS
def test_chromium_relay_only_call(chromium_in_namespace: Chromium, transport: str) -> None:
    result = _browser_call(chromium_in_namespace, transport)
    assert result["received"] == [[f"pong {n}" for n in range(MESSAGES)], [f"ping {n}" for n in range(MESSAGES)]]
    for sdp in (result["offer"], result["answer"]):
        candidates = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay " in line for line in candidates), sdp
    for pair in result["pairs"]:
        assert pair is not None and pair["state"] == "succeeded", pair
        assert pair["local"]["type"] == pair["remote"]["type"] == "relay", pair
        assert pair["local"]["relayProtocol"] == transport, pair  # how this browser reached the TURN server
        assert _is_relayed_address(pair["local"]["address"], pair["local"]["port"]), pair
        assert _is_relayed_address(pair["remote"]["address"], pair["remote"]["port"]), pair
