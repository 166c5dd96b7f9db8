"""When and where an Allocate is sent to another instance: 300 Try Alternate (RFC 8489 §10, RFC 8656 §7.2).

Sans-IO: the adapter tells the core whether the instance is draining or over its bitrate and which addresses are
its own; this module only chooses. The rules (docs/scaling.md "Redirection"):

* An Allocate is redirected when the instance drains, holds MaxAllocations, has no relay port left, or relays more
  than MaxRelayedBitrate; without a usable alternate it gets 508 (Insufficient Capacity) as before.
* The alternate is the first AlternateServers entry of the client's address family that is not one of this
  instance's own listening addresses (a configuration shared by every instance names them all).
* TLS clients are sent to the alternate's IP on this instance's TlsTurnPort (instances are configured alike) and
  get ALTERNATE-DOMAIN (RFC 8489 §14.16) when AlternateDomain is set; without it a client checks the alternate's
  certificate against the original server's name (RFC 8489 §10).
* Loop guard: the 300 carries a nonce MACed as "redirected" (pyturn.core.auth.NonceState). An instance sharing the
  NonceSecretFile that receives an Allocate authenticated with such a nonce never redirects it again: a client
  is moved at most once, and a full cluster answers 508 instead of bouncing it around. Clients that drop the
  nonce still stop by RFC 8489 §10's own rule (never follow a redirect to a server already tried).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyturn.core.actions import Action
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.auth import Credentials, NonceState
from pyturn.core.events import AllocationRedirected
from pyturn.core.transactions import error_response_for, reply
from pyturn.errors import TurnError
from pyturn.wire.message import Address, Attr, Message

if TYPE_CHECKING:
    from pyturn.core.state import CoreState


class Capacity:
    """Why an Allocate cannot be served here; the values are log and metric labels."""

    DRAINING = "draining"
    MAX_ALLOCATIONS = "max_allocations"
    PORTS_EXHAUSTED = "ports_exhausted"
    BITRATE = "bitrate"


@dataclass(frozen=True, slots=True)
class Redirection:
    """ALTERNATE-SERVER (and ALTERNATE-DOMAIN, for TLS) of one 300 answer."""

    server: Address
    domain: str | None


@dataclass(frozen=True, slots=True)
class Alternates:
    """The configured alternates and this instance's own listening addresses (never a target)."""

    servers: tuple[Address, ...] = ()
    domain: str = ""
    tls_port: int = 0
    own: frozenset[Address] = field(default_factory=frozenset)

    def with_own(self, own: Iterable[Address]) -> Alternates:
        return Alternates(self.servers, self.domain, self.tls_port, frozenset(own))

    def choose(self, client: Address, transport: Transport) -> Redirection | None:
        """The redirection for a client at `client` over `transport`, or None when no alternate fits."""
        v6 = ":" in client[0]
        for host, port in self.servers:
            if (":" in host) != v6:
                continue
            if transport is Transport.TLS:
                if not self.tls_port:
                    continue
                port = self.tls_port
            if (host, port) in self.own:
                continue  # RFC 8489 §10 redirects elsewhere: naming ourselves would only loop
            domain = (self.domain or None) if transport is Transport.TLS else None
            return Redirection((host, port), domain)
        return None


def own_addresses(listening: Iterable[Address], interface_ips: Iterable[str]) -> set[Address]:
    """Every (IP, port) clients can reach this instance at: a wildcard listener counts for each interface IP of its
    family, a listener bound to one IP only for that IP (two instances on one host share the interfaces)."""
    ips = list(interface_ips)
    own: set[Address] = set()
    for host, port in listening:
        if host in ("0.0.0.0", "::"):
            v6 = host == "::"
            own.update((ip, port) for ip in ips if (":" in ip) == v6)
        own.add((host, port))
    return own


def capacity_reason(state: CoreState) -> str | None:
    """Why a new allocation is not taken here (Capacity), or None. The port pool is checked when a port is taken."""
    if state.draining:
        return Capacity.DRAINING
    limit = state.config.max_allocations
    if limit and len(state.allocations) + len(state.pending) >= limit:
        return Capacity.MAX_ALLOCATIONS
    if state.over_bitrate:
        return Capacity.BITRATE
    return None


def redirect(
    state: CoreState, request: Message, five_tuple: FiveTuple, credentials: Credentials, reason: str, now: float
) -> list[Action]:
    """RFC 8489 §10: 300 Try Alternate naming another instance, authenticated with the request's key so an off-path
    attacker cannot forge it; 508 (RFC 8656 §7.2) when no alternate fits or the client was already redirected once
    (the loop guard). Without AlternateServers it raises the plain 508 of a server that knows no other."""
    alternates = state.alternates
    if not alternates.servers:
        raise TurnError(508, "Insufficient Capacity")
    target = alternates.choose(five_tuple.client, five_tuple.transport)
    nonce = request.get(Attr.NONCE)
    if target is None or (nonce is not None and state.nonces.check(nonce, now) is NonceState.REDIRECTED):
        response = error_response_for(request, TurnError(508, "Insufficient Capacity"))
        response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
        return [reply(state, request, response, five_tuple, credentials.key),
                AllocationRedirected(five_tuple, None, reason)]
    response = error_response_for(request, TurnError(300, "Try Alternate"))
    response.add(Attr.ALTERNATE_SERVER, target.server)
    if target.domain is not None:
        response.add(Attr.ALTERNATE_DOMAIN, target.domain)
    # REALM and a nonce marked "redirected": clients that take them (libwebrtc does) need no 401 round trip at an
    # instance sharing NonceSecretFile, and that instance will not redirect them again.
    response.add(Attr.REALM, credentials.realm)
    response.add(Attr.NONCE, state.nonces.issue(now, redirected=True))
    return [reply(state, request, response, five_tuple, credentials.key),
            AllocationRedirected(five_tuple, target.server, reason)]
