"""Which of the host's addresses the peer policy treats as the server's relays, and which as the host's own."""

from __future__ import annotations

from pyturn.config import Config
from pyturn.net.localaddrs import interface_addresses, server_addresses

INTERFACES = {"127.0.0.1", "::1", "198.51.100.19", "10.0.0.5", "2001:db8:1000:2000::19", "fe80::1"}


def test_localaddrs_handbook_addresses_relay_on_the_turn_addresses_only() -> None:
    config = Config(turn_address="198.51.100.19", turn_v6_address="2001:DB8:1000:2000::19",
                    alt_stun_address="198.51.100.20", alt_stun_port=3479)
    own = server_addresses(config, ["198.51.100.19", "2001:db8:1000:2000::19"], INTERFACES | {"198.51.100.20"})
    assert own.relay == {"198.51.100.19", "2001:db8:1000:2000::19"}
    assert own.host == {"127.0.0.1", "::1", "10.0.0.5", "fe80::1", "198.51.100.20"}


def test_localaddrs_wildcard_listener_relays_on_every_routable_interface_address() -> None:
    config = Config(turn_address="0.0.0.0", turn_v6_address="::")
    own = server_addresses(config, ["0.0.0.0", "::"], INTERFACES)
    assert own.relay == {"198.51.100.19", "10.0.0.5", "2001:db8:1000:2000::19"}
    assert own.host == {"127.0.0.1", "::1", "fe80::1"}


def test_localaddrs_relay_and_external_addresses_are_relays_the_listener_is_not() -> None:
    config = Config(turn_address="198.51.100.19", turn_v6_address="", relay_address="10.0.0.5",
                    external_address="203.0.113.9")
    own = server_addresses(config, ["198.51.100.19"], INTERFACES)
    assert own.relay == {"10.0.0.5", "203.0.113.9"}
    assert "198.51.100.19" in own.host


def test_localaddrs_interface_addresses_include_loopback() -> None:
    found = interface_addresses()
    assert "127.0.0.1" in found
    assert all("%" not in address for address in found)
