"""Which peers a client may relay to (RFC 8656 §9, RFC 6156 §9.1; docs/security.md "Peer policy").

A TURN server that relays anywhere is an open proxy into its own network (loopback services, cloud metadata,
the server itself). The policy checked on CreatePermission, ChannelBind, Send and on data from peers:

1. An address is considered under every spelling it has: an IPv6 address that embeds an IPv4 address
   (IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4, Teredo) is also checked as that IPv4 address,
   so ``::ffff:127.0.0.1`` cannot slip past a loopback rule (CVE-2026-27624, CVE-2020-26262).
2. If any spelling is in ``allowed``, the peer is allowed: the operator's allow list beats every deny,
   including the built-in ones (test rigs allow 127.0.0.0/8 and ::1).
3. An address on which this server's relays can be reached (``relay_addresses``: the listening IPs relays bind
   to, RelayAddress, ExternalAddress and every IP a relay was bound on), written in its own form, is *ours*:
   the peer is allowed only on a port inside the relay range (``relay_ports``), where it can only be another
   allocation's relayed transport address. Two clients of one server must be able to reach each other's relays
   (WebRTC relay-to-relay pairs); every other port there (the listeners, SSH, databases) stays refused, so
   nothing loops into the server or reaches the host's services.
4. Otherwise any spelling in :data:`BUILTIN_DENIED` or in ``denied`` denies it, and so does any spelling of the
   host's other addresses (``host_addresses``: interface addresses relays never bind to, the RFC 5780 alternate
   address) and any IPv4-in-IPv6 spelling of a relay address.
5. Everything else is allowed. Private ranges (RFC 1918, CGNAT, ULA) are allowed by default because enterprise
   PBXs live there; operators who do not need them list them in ``denied``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from pyturn.errors import ConfigError

__all__ = ["BUILTIN_DENIED", "PeerPolicy", "Verdict", "embedded_ipv4"]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

BUILTIN_DENIED: tuple[IPNetwork, ...] = (
    ip_network("0.0.0.0/8"),  # "this network" / unspecified (RFC 791, RFC 6890)
    ip_network("127.0.0.0/8"),  # loopback (RFC 1122 §3.2.1.3)
    ip_network("169.254.0.0/16"),  # link-local, incl. cloud metadata 169.254.169.254 (RFC 3927)
    ip_network("224.0.0.0/4"),  # multicast (RFC 5771)
    ip_network("240.0.0.0/4"),  # reserved, incl. limited broadcast 255.255.255.255 (RFC 1112, RFC 919)
    ip_network("::/128"),  # unspecified (RFC 4291 §2.5.2)
    ip_network("::1/128"),  # loopback (RFC 4291 §2.5.3)
    ip_network("fe80::/10"),  # link-local (RFC 4291 §2.5.6)
    ip_network("ff00::/8"),  # multicast (RFC 4291 §2.7)
    ip_network("2002::/16"),  # 6to4: RFC 6156 §9.1, MUST NOT relay to it
    ip_network("2001::/32"),  # Teredo: RFC 6156 §9.1, MUST NOT relay to it
)

_IPV4_MAPPED_PREFIX = 0xFFFF  # ::ffff:a.b.c.d, RFC 4291 §2.5.5.2 (bits 0..95 = 0:0:0:0:0:ffff)
_IPV4_TRANSLATED_PREFIX = 0xFFFF0000  # ::ffff:0:a.b.c.d, SIIT (RFC 2765 §2.1)
_NAT64_WELL_KNOWN_PREFIX = 0x0064_FF9B_0000_0000_0000_0000  # 64:ff9b::/96, RFC 6052 §2.1 (upper 96 bits)
_NAT64_LOCAL_USE_PREFIX = 0x0064_FF9B_0001  # 64:ff9b:1::/48, RFC 8215 (upper 48 bits)
_LOW_32_BITS = 0xFFFF_FFFF


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address stands for or carries, or None.

    Covered: IPv4-mapped ::ffff:a.b.c.d, IPv4-translated ::ffff:0:a.b.c.d, IPv4-compatible ::a.b.c.d
    (deprecated, RFC 4291 §2.5.5.1; :: and ::1 excluded), NAT64 64:ff9b::/96 and 64:ff9b:1::/48 (the
    local-use prefix is assumed to be used as a /96, i.e. the last 32 bits), 6to4 2002:a.b.c.d::/48
    (RFC 3056 §2) and Teredo 2001::/32 (the client's obfuscated address, RFC 4380 §4).
    """
    value = int(address)
    upper_96 = value >> 32
    low_32 = IPv4Address(value & _LOW_32_BITS)
    if upper_96 in (_IPV4_MAPPED_PREFIX, _IPV4_TRANSLATED_PREFIX):
        return low_32
    if upper_96 == 0:
        return low_32 if value > 1 else None
    if upper_96 == _NAT64_WELL_KNOWN_PREFIX or value >> 80 == _NAT64_LOCAL_USE_PREFIX:
        return low_32
    six_to_four = address.sixtofour
    if six_to_four is not None:
        return six_to_four
    teredo = address.teredo
    if teredo is not None:
        _server, client = teredo
        return client
    return None


def _spellings(address: IPAddress) -> tuple[IPAddress, ...]:
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            address = IPv6Address(int(address))
        inner = embedded_ipv4(address)
        if inner is not None:
            return (address, inner)
    return (address,)


# Networks as (prefix value, mask) integer pairs per IP version: a membership test is one AND and one compare.
_MaskTable = tuple[tuple[int, int], ...]


def _mask_table(networks: Iterable[IPNetwork], version: int) -> _MaskTable:
    return tuple(
        (int(network.network_address), int(network.netmask))
        for network in networks
        if network.version == version
    )


def _in_table(value: int, table: _MaskTable) -> bool:
    return any(value & mask == prefix for prefix, mask in table)


def _normalised_address(text: str) -> str:
    try:
        address = ip_address(text)
    except ValueError:
        raise ConfigError(f"not an IP address: {text!r}") from None
    # A dual-stack socket reports IPv4 peers and local addresses as ::ffff:a.b.c.d; store the IPv4 form.
    return str(_spellings(address)[-1])


ANSWERS_KEPT = 4096  # bounds the verdict memo; cleared whole when full (a flood of distinct peers is cheap to redo)


class Verdict(Enum):
    """What the policy says of a peer IP address."""

    ALLOWED = "allowed"
    DENIED = "denied"
    RELAY_PORTS_ONLY = "relay ports only"  # one of the server's relay addresses (rule 3)


def _normalised_addresses(addresses: Iterable[str]) -> frozenset[str]:
    return frozenset(_normalised_address(address) for address in addresses)


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Which peers may be relayed to; see the module docstring for the rules."""

    denied: tuple[IPNetwork, ...] = ()
    allowed: tuple[IPNetwork, ...] = ()
    relay_addresses: frozenset[str] = frozenset()
    host_addresses: frozenset[str] = frozenset()
    relay_ports: tuple[int, int] = (49152, 65535)  # AllocationPortRangeMin..Max (reTurn's default range)
    # The server's listening ports: never a relay, even when one lies inside the relay range (an ephemeral port).
    listener_ports: frozenset[int] = frozenset()
    _denied_v4: _MaskTable = field(init=False, repr=False, compare=False)
    _denied_v6: _MaskTable = field(init=False, repr=False, compare=False)
    _allowed_v4: _MaskTable = field(init=False, repr=False, compare=False)
    _allowed_v6: _MaskTable = field(init=False, repr=False, compare=False)
    # Verdicts already worked out, per IP string: parsing and the spelling checks cost ~20 µs, and a client asks
    # about the same few peers again and again (every ChannelBind refresh, CreatePermission and Send).
    _verdicts: dict[str, Verdict] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen dataclass: derived fields are set once, here
        set_field(self, "denied", tuple(self.denied))
        set_field(self, "allowed", tuple(self.allowed))
        relay = _normalised_addresses(self.relay_addresses)
        set_field(self, "relay_addresses", relay)
        set_field(self, "host_addresses", _normalised_addresses(self.host_addresses) - relay)
        set_field(self, "listener_ports", frozenset(self.listener_ports))
        low, high = self.relay_ports
        if not 0 < low <= high <= 65535:
            raise ConfigError(f"relay port range {low}-{high} is not a range of ports")
        every_denied = BUILTIN_DENIED + self.denied
        set_field(self, "_denied_v4", _mask_table(every_denied, 4))
        set_field(self, "_denied_v6", _mask_table(every_denied, 6))
        set_field(self, "_allowed_v4", _mask_table(self.allowed, 4))
        set_field(self, "_allowed_v6", _mask_table(self.allowed, 6))

    def with_server_addresses(
        self,
        relay: Iterable[str] = (),
        host: Iterable[str] = (),
        *,
        relay_ports: tuple[int, int] | None = None,
        listener_ports: Iterable[int] = (),
    ) -> PeerPolicy:
        """A copy that also knows these relay and host addresses and listening ports (and, if given, another
        relay port range). Raises ConfigError for a string that is not an IP address."""
        return dataclasses.replace(
            self,
            relay_addresses=self.relay_addresses | _normalised_addresses(relay),
            host_addresses=self.host_addresses | _normalised_addresses(host),
            relay_ports=relay_ports if relay_ports is not None else self.relay_ports,
            listener_ports=self.listener_ports | frozenset(listener_ports),
        )

    def verdict(self, ip: str | IPAddress) -> Verdict:
        """What the rules say of this IP. Never raises: anything unparsable is denied."""
        if isinstance(ip, str):
            verdict = self._verdicts.get(ip)
            if verdict is None:
                if len(self._verdicts) >= ANSWERS_KEPT:
                    self._verdicts.clear()
                verdict = self._verdicts[ip] = self._decide(ip)
            return verdict
        return self._decide(ip)

    def allows_permission(self, ip: str | IPAddress) -> bool:
        """Whether a permission (which covers every port of the IP, RFC 8656 §9) may be installed for this IP."""
        return self.verdict(ip) is not Verdict.DENIED

    def allows(self, ip: str | IPAddress, port: int) -> bool:
        """Whether data may go to, or come from, this transport address."""
        verdict = self.verdict(ip)
        if verdict is Verdict.ALLOWED:
            return True
        low, high = self.relay_ports
        return verdict is Verdict.RELAY_PORTS_ONLY and low <= port <= high and port not in self.listener_ports

    def _decide(self, ip: str | IPAddress) -> Verdict:
        if isinstance(ip, IPv4Address | IPv6Address):
            address: IPAddress = ip
        elif isinstance(ip, str):  # ip_address would also take ints and packed bytes: not an address string
            try:
                address = ip_address(ip)
            except ValueError:
                return Verdict.DENIED
        else:
            return Verdict.DENIED
        spellings = _spellings(address)
        for spelling in spellings:
            if _in_table(int(spelling), self._allowed_v4 if spelling.version == 4 else self._allowed_v6):
                return Verdict.ALLOWED
        if str(spellings[0]) in self.relay_addresses:
            return Verdict.RELAY_PORTS_ONLY
        for spelling in spellings:
            if _in_table(int(spelling), self._denied_v4 if spelling.version == 4 else self._denied_v6):
                return Verdict.DENIED
            text = str(spelling)
            if text in self.host_addresses or text in self.relay_addresses:
                return Verdict.DENIED
        return Verdict.ALLOWED
