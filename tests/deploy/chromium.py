"""Headless Chromium (Debian's /usr/bin/chromium, driven by playwright) inside a deployment's network namespace,
and a two-user WebRTC call between two of its pages whose signalling goes through the test.

playwright talks to the browser over a pipe (--remote-debugging-pipe), so nothing of it needs the network; the
wrapper script runs the browser under ``ip netns exec``. Chromium's WebRTC skips loopback interfaces, so the
namespace needs its addresses on a LAN device (netns.Namespace(lan=True)).
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns import Namespace, require_module, require_tool

Address = tuple[str, int]

CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright never downloads a browser here
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
BROWSER_TIMEOUT_MS = 20_000
CHROMIUM_LOG_MODULES = "turn_port=1,basic_port_allocator=1,p2p_transport_channel=1"
ICE_UP = ("connected", "completed")
ICE_DOWN = ("disconnected", "failed")


@dataclass
class Chromium:
    browser: Any
    log: Path

    def webrtc_log(self, lines: int = 20) -> str:
        """The TURN client's lines (allocations, permissions, their error codes) of Chromium's log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        kept = [line for line in text.splitlines() if "turn_port.cc" in line and "Ignoring STUN" not in line]
        return "\n".join(kept[-lines:])


@contextlib.contextmanager
def chromium_in(namespace: Namespace, directory: Path) -> Iterator[Chromium]:
    """Chromium launched by playwright through a wrapper that runs it inside `namespace`; closed at exit."""
    require_module("playwright")
    require_tool(CHROMIUM)
    from playwright.sync_api import sync_playwright

    wrapper = directory / "chromium-in-netns"
    log = directory / "chromium.log"  # WebRTC's own account of ICE and TURN, quoted when a call fails
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {namespace.name} {CHROMIUM} "$@" '
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


# One RTCPeerConnection per page, relay-only. Every promise the test awaits is raced against a timer, so no
# evaluate() can hang: playwright's evaluate has no timeout of its own.
PAGE_SCRIPT = """
window.call = (() => {
  const state = {received: [], open: false, errors: [], iceStates: []};
  let pc = null, channel = null;
  const bounded = (promise, ms, what) => Promise.race([promise, new Promise((_, reject) =>
      setTimeout(() => reject(new Error(what + ' timed out')), ms))]);
  // Resolves on the next change of the gathering state to 'complete' (an ICE restart gathers anew from
  // 'complete'); register it before setLocalDescription.
  const nextGathering = () => bounded(new Promise(resolve => {
      const check = () => {
          if (pc.iceGatheringState !== 'complete') return;
          pc.removeEventListener('icegatheringstatechange', check);
          resolve();
      };
      pc.addEventListener('icegatheringstatechange', check);
  }), __TIMEOUT_MS__, 'ICE gathering');
  const attach = c => {
      channel = c;
      c.onopen = () => { state.open = true; };
      c.onmessage = event => state.received.push(event.data);
  };
  const localDescription = async () => {
      const gathered = nextGathering();
      await pc.setLocalDescription();  // the offer or the answer the signalling state calls for
      await gathered;
      return pc.localDescription.sdp;
  };
  return {
    state,
    start(iceServers) {
      pc = new RTCPeerConnection({iceServers, iceTransportPolicy: 'relay'});
      pc.onicecandidateerror = e => state.errors.push(`${e.errorCode} ${e.errorText} ${e.url}`);
      pc.oniceconnectionstatechange = () => state.iceStates.push(pc.iceConnectionState);
      pc.ondatachannel = event => attach(event.channel);
    },
    iceState() { return pc.iceConnectionState; },
    async offer() {
      attach(pc.createDataChannel('chat'));
      return localDescription();
    },
    async answer(sdp) {
      await pc.setRemoteDescription({type: 'offer', sdp});
      return localDescription();
    },
    async accept(sdp) { await pc.setRemoteDescription({type: 'answer', sdp}); },
    // JSEP: restartIce() makes the next offer carry new ICE credentials; the answerer restarts on that offer.
    async restart() {
      pc.restartIce();
      return localDescription();
    },
    useServers(iceServers) { pc.setConfiguration({iceServers, iceTransportPolicy: 'relay'}); },
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


def sdp_candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


class BrowserCall:
    """Two users, each on a page of a browser context of its own, calling each other with relay-only ICE and a
    data channel. The caller offers; the SDP goes through this object (the test is the signalling server).
    Failures quote Chromium's WebRTC log."""

    def __init__(self, chromium: Chromium, ice_servers: Sequence[Sequence[dict[str, Any]]]) -> None:
        self.chromium = chromium
        self.contexts: list[Any] = []
        self.pages: list[Any] = []
        try:
            for servers in ice_servers:
                context = chromium.browser.new_context()  # nothing shared between the two users
                self.contexts.append(context)
                page = context.new_page()
                page.set_default_timeout(BROWSER_TIMEOUT_MS)
                page.evaluate(PAGE_SCRIPT)
                page.evaluate("servers => call.start(servers)", list(servers))
                self.pages.append(page)
        except BaseException:
            self.hang_up()
            raise

    def __enter__(self) -> BrowserCall:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.hang_up()

    def hang_up(self) -> None:
        """Close both peer connections (each TURN client releases its allocation: Refresh, LIFETIME 0), then
        the pages. Safe to call twice."""
        for page in self.pages:
            with contextlib.suppress(Exception):
                page.evaluate("call.close()")
        self.pages.clear()
        for context in self.contexts:
            context.close()
        self.contexts.clear()

    def _failure(self, message: str) -> AssertionError:
        return AssertionError(f"{message}\n--- Chromium's WebRTC log ---\n{self.chromium.webrtc_log()}")

    @property
    def caller(self) -> Any:
        return self.pages[0]

    @property
    def callee(self) -> Any:
        return self.pages[1]

    def connect(self) -> tuple[str, str]:
        """Offer, answer, and wait until the data channel is open on both sides; the two SDPs."""
        try:
            offer = self.caller.evaluate("call.offer()")
            answer = self.callee.evaluate("sdp => call.answer(sdp)", offer)
            self.caller.evaluate("sdp => call.accept(sdp)", answer)
            for page in self.pages:
                page.wait_for_function("call.state.open")
        except Exception as error:
            errors = [page.evaluate("call.state.errors") for page in self.pages]
            raise self._failure(f"the data channel did not open: {error}; ICE candidate errors: {errors}") from None
        return offer, answer

    def restart_ice(self) -> tuple[str, str]:
        """The caller's restartIce() and the renegotiation it needs; the new offer and answer."""
        offer = self.caller.evaluate("call.restart()")
        answer = self.callee.evaluate("sdp => call.answer(sdp)", offer)
        self.caller.evaluate("sdp => call.accept(sdp)", answer)
        return offer, answer

    def use_servers(self, ice_servers: Sequence[Sequence[dict[str, Any]]]) -> None:
        """setConfiguration() with other ICE servers on each page (used from the next ICE restart on)."""
        for page, servers in zip(self.pages, ice_servers, strict=True):
            page.evaluate("servers => call.useServers(servers)", list(servers))

    def wait_for_ice(self, states: Sequence[str], timeout_ms: int = BROWSER_TIMEOUT_MS) -> None:
        """Until both pages' iceConnectionState is one of `states` (bounded)."""
        for page in self.pages:
            try:
                page.wait_for_function("states => states.includes(call.iceState())", arg=list(states),
                                       timeout=timeout_ms)
            except Exception as error:
                raise self._failure(f"ICE did not reach {list(states)}: {error}; "
                                    f"ICE states: {self.ice_states()}") from None

    def exchange(self, texts: Sequence[str]) -> list[list[str]]:
        """The caller sends 'ping <text>' for each text, the callee 'pong <text>'; what each page received
        (the caller's pongs, the callee's pings), once all of it arrived."""
        before = [len(page.evaluate("call.state.received")) for page in self.pages]
        for text in texts:
            self.caller.evaluate("t => call.send('ping ' + t)", text)
            self.callee.evaluate("t => call.send('pong ' + t)", text)
        try:
            for page, count in zip(self.pages, before, strict=True):
                page.wait_for_function(f"call.state.received.length >= {count + len(texts)}")
        except Exception as error:
            raise self._failure(f"the messages did not arrive: {error}; ICE states: {self.ice_states()}") from None
        return [page.evaluate("call.state.received")[count:] for page, count in zip(self.pages, before, strict=True)]

    def selected_pairs(self) -> list[dict[str, Any] | None]:
        return [page.evaluate("call.selectedPair()") for page in self.pages]

    def relay_pairs(self, pairs: Sequence[dict[str, Any] | None] | None = None) -> list[tuple[Address, Address]]:
        """(local, remote) relayed (address, port) of each page's selected pair, checked to be a working
        relay/relay pair."""
        found = []
        for pair in self.selected_pairs() if pairs is None else pairs:
            assert pair is not None and pair["state"] == "succeeded", pair
            assert pair["local"]["type"] == pair["remote"]["type"] == "relay", pair
            found.append(((pair["local"]["address"], pair["local"]["port"]),
                          (pair["remote"]["address"], pair["remote"]["port"])))
        return found

    def ice_states(self) -> list[list[str]]:
        """Each page's iceConnectionState changes so far."""
        return [page.evaluate("call.state.iceStates") for page in self.pages]
