"""`pyturn dns-records -c CONFIG --domain DOMAIN [--host NAME]`: the zone lines that let clients find this server.

* A / AAAA for the host, from ExternalAddress or TurnAddress (and their IPv6 twins), or --address/--address6;
* SRV (RFC 2782) for STUN (RFC 5389 §9: _stun._udp, _stun._tcp, _stuns._tcp) and TURN (RFC 5766 §6 / RFC 8656
  §3.1: _turn._udp, _turn._tcp, _turns._tcp), with the configured TurnPort and TlsTurnPort;
* NAPTR (RFC 5928 §4) with the "S" flag for the RELAY application: turn.udp, turn.tcp and turn.tls, pointing at
  the SRV names, so a resolver can pick the transport in the domain's order of preference.

The output is a zone-file fragment with $ORIGIN set to the domain; names are relative to it.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence

from pyturn.config import Config
from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config
from pyturn.ops.daemon import EXIT_CONFIG, EXIT_OK
from pyturn.ops.subcommands import CommandParser

DEFAULT_HOST = "turn"
DEFAULT_TTL = 3600
SRV_PRIORITY = 0
SRV_WEIGHT = 5


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="pyturn dns-records",
        description="Print the A/AAAA, SRV and NAPTR records of this configuration as zone-file lines.",
        epilog="exit codes: 0 printed, 64 usage, 78 configuration error (or no public address known)",
    )
    parser.add_argument("-c", "--config", metavar="CONFIG", required=True, help="reTurnServer.config")
    parser.add_argument("--domain", required=True, help="the zone, e.g. falcot.com")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"the server's name inside the zone (default {DEFAULT_HOST})")
    parser.add_argument("--address", help="IPv4 address of the A record (default ExternalAddress/TurnAddress)")
    parser.add_argument("--address6", help="IPv6 address of the AAAA record (default ExternalV6Address/"
                                           "TurnV6Address)")
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL, help=f"record TTL (default {DEFAULT_TTL})")
    return parser


def _public(candidates: Sequence[str], version: int) -> str | None:
    """The first candidate that is a usable, specific address of that family."""
    for text in candidates:
        if not text:
            continue
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.version == version and not address.is_unspecified:
            return str(address)
    return None


def zone_lines(config: Config, domain: str, host: str, *, address: str | None = None,
               address6: str | None = None, ttl: int = DEFAULT_TTL) -> list[str]:
    origin = domain.rstrip(".") + "."
    ipv4 = _public([address or "", config.external_address, config.turn_address], 4)
    ipv6 = _public([address6 or "", config.external_v6_address, config.turn_v6_address], 6)
    if ipv4 is None and ipv6 is None:
        raise ConfigError("TurnAddress and TurnV6Address are wildcards and no ExternalAddress is set: "
                          "pass --address (and --address6)")
    port, tls_port = config.turn_port, config.tls_turn_port
    lines = [f"$ORIGIN {origin}", f"$TTL {ttl}"]
    if ipv4 is not None:
        lines.append(f"{host}\tIN\tA\t{ipv4}")
    if ipv6 is not None:
        lines.append(f"{host}\tIN\tAAAA\t{ipv6}")
    services = [("_stun._udp", port), ("_stun._tcp", port), ("_turn._udp", port), ("_turn._tcp", port)]
    if tls_port:
        services += [("_stuns._tcp", tls_port), ("_turns._tcp", tls_port)]
    for name, service_port in services:
        lines.append(f"{name}\tIN\tSRV\t{SRV_PRIORITY} {SRV_WEIGHT} {service_port} {host}")
    relays = [("turn.udp", "_turn._udp"), ("turn.tcp", "_turn._tcp")]
    if tls_port:
        relays.append(("turn.tls", "_turns._tcp"))
    for order, (protocol, target) in enumerate(relays, start=1):
        lines.append(f'@\tIN\tNAPTR\t{order * 10} 10 "S" "RELAY:{protocol}" "" {target}')
    return lines


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    arguments = parser.parse_args(list(argv))
    if not arguments.domain.strip(".") or any(char.isspace() for char in arguments.domain + arguments.host):
        parser.error("--domain and --host must be DNS names without spaces")
    try:
        config, _warnings = load_config(arguments.config)
        lines = zone_lines(config, arguments.domain, arguments.host, address=arguments.address,
                           address6=arguments.address6, ttl=arguments.ttl)
    except ConfigError as error:
        sys.stderr.write(f"pyturn dns-records: {error}\n")
        return EXIT_CONFIG
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return EXIT_OK
