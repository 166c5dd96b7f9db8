"""The host's own IP addresses, for the peer policy (docs/security.md "Peer policy").

Read from the operating system with ifaddr (the interface enumeration aioice and aiortc use too), at start-up and
on SIGHUP, by the adapter: the core only ever receives the resulting sets.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import ifaddr

from pyturn.config import Config
from pyturn.core.policy import PeerPolicy, Verdict

log = logging.getLogger(__name__)

WILDCARDS = ("0.0.0.0", "::", "")
_BUILTIN = PeerPolicy()  # the built-in denies alone


def interface_addresses() -> set[str]:
    """Every IP address configured on this host's interfaces (IPv6 without scope); empty if they cannot be read."""
    found: set[str] = set()
    try:
        adapters = ifaddr.get_adapters()
    except (OSError, ValueError) as error:
        log.warning("cannot list the host's addresses, only configured ones are treated as the server's: %s", error)
        return found
    for adapter in adapters:
        for entry in adapter.ips:
            ip = entry.ip[0] if isinstance(entry.ip, tuple) else entry.ip
            try:
                found.add(str(ipaddress.ip_address(ip.split("%", 1)[0])))
            except ValueError:
                continue
    return found


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None  # unset ("") or a wildcard resolved elsewhere


@dataclass(frozen=True, slots=True)
class ServerAddresses:
    """``relay``: IPs where this server's relays can be reached; ``host``: every other address of the host."""

    relay: frozenset[str]
    host: frozenset[str]


def server_addresses(config: Config, listening: Iterable[str], interfaces: Iterable[str]) -> ServerAddresses:
    """Sort the server's IPs into relay and host addresses.

    Relays bind on RelayAddress / RelayV6Address when set, else on the listening IP of their family, and a
    wildcard listener binds them on the interface address towards the client: so with a wildcard and no
    RelayAddress every interface address is a relay address. ExternalAddress / ExternalV6Address are what
    clients are told, so they are relay addresses too. Everything else the host has (other interfaces, the
    RFC 5780 alternate address) is a host address.
    """
    interfaces = set(interfaces)
    listening = list(listening)
    relay: set[str] = set()
    host: set[str] = set(interfaces)
    for configured, v6 in ((config.relay_address, False), (config.relay_v6_address, True)):
        ip = _ip(configured)
        if ip is not None:
            relay.add(ip)
            continue
        family_listeners = [address for address in listening if (":" in address) == v6]
        if any(address in WILDCARDS for address in family_listeners):
            # Loopback and link-local interface addresses stay denied: a relay there serves only local clients.
            relay.update(
                address for address in interfaces
                if (":" in address) == v6 and _BUILTIN.verdict(address) is not Verdict.DENIED
            )
        relay.update(ip for ip in map(_ip, family_listeners) if ip is not None and ip not in WILDCARDS)
    for external in (config.external_address, config.external_v6_address):
        ip = _ip(external)
        if ip is not None:
            relay.add(ip)
    host.update(ip for ip in map(_ip, listening) if ip is not None and ip not in WILDCARDS)
    alternate = _ip(config.alt_stun_address)
    if alternate is not None and alternate not in WILDCARDS:
        host.add(alternate)
    return ServerAddresses(frozenset(relay), frozenset(host - relay))
