from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from pyturn.core.policy import BUILTIN_DENIED, PeerPolicy, Verdict, embedded_ipv4
from pyturn.errors import ConfigError

DEFAULT = PeerPolicy()

DENIED_BY_DEFAULT = [
    pytest.param("127.0.0.1", id="loopback"),
    pytest.param("127.255.255.254", id="loopback-top"),
    pytest.param("::1", id="v6-loopback"),
    pytest.param("0:0:0:0:0:0:0:1", id="v6-loopback-long-form"),
    pytest.param("0.0.0.0", id="unspecified"),
    pytest.param("0.1.2.3", id="this-network"),
    pytest.param("::", id="v6-unspecified"),
    pytest.param("::ffff:127.0.0.1", id="v4-mapped-loopback"),
    pytest.param("::ffff:7f00:1", id="v4-mapped-loopback-hex"),
    pytest.param("::FFFF:127.0.0.1", id="v4-mapped-loopback-uppercase"),
    pytest.param("::ffff:0.0.0.0", id="v4-mapped-unspecified"),
    pytest.param("::ffff:169.254.169.254", id="v4-mapped-metadata"),
    pytest.param("::ffff:0:127.0.0.1", id="v4-translated-loopback"),
    pytest.param("::127.0.0.1", id="v4-compatible-loopback"),
    pytest.param("::0.0.0.2", id="v4-compatible-this-network"),
    pytest.param("64:ff9b::7f00:1", id="nat64-loopback"),
    pytest.param("64:ff9b::a9fe:a9fe", id="nat64-metadata"),
    pytest.param("64:ff9b:1::7f00:1", id="nat64-local-use-loopback"),
    pytest.param("2002:7f00:1::", id="6to4-loopback"),
    pytest.param("2002:808:808::1", id="6to4-public"),
    pytest.param("2001:0:4136:e378::1", id="teredo"),
    pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", id="teredo-rfc4380-example"),
    pytest.param("169.254.169.254", id="metadata"),
    pytest.param("169.254.0.1", id="link-local"),
    pytest.param("fe80::1", id="v6-link-local"),
    pytest.param("fe80::1%eth0", id="v6-link-local-scoped"),
    pytest.param("febf::1", id="v6-link-local-top"),
    pytest.param("224.0.0.1", id="multicast"),
    pytest.param("239.255.255.250", id="multicast-ssdp"),
    pytest.param("ff02::1", id="v6-multicast"),
    pytest.param("ff0e::1", id="v6-multicast-global"),
    pytest.param("255.255.255.255", id="broadcast"),
    pytest.param("240.0.0.1", id="reserved"),
]

ALLOWED_BY_DEFAULT = [
    pytest.param("8.8.8.8", id="public-v4"),
    pytest.param("2606:4700::1111", id="public-v6"),
    pytest.param("::ffff:8.8.8.8", id="v4-mapped-public"),
    pytest.param("64:ff9b::808:808", id="nat64-public"),
    pytest.param("10.0.0.1", id="rfc1918-10"),
    pytest.param("172.16.0.1", id="rfc1918-172"),
    pytest.param("192.168.1.1", id="rfc1918-192"),
    pytest.param("100.64.0.1", id="cgnat"),
    pytest.param("fd00:ec2::254", id="ula-aws-metadata"),
    pytest.param("fc00::1", id="ula"),
    pytest.param("1.0.0.1", id="public-low"),
    pytest.param("223.255.255.255", id="just-below-multicast"),
    pytest.param("126.255.255.255", id="just-below-loopback"),
    pytest.param("128.0.0.0", id="just-above-loopback"),
]

GARBAGE = [
    pytest.param("", id="empty"),
    pytest.param("localhost", id="hostname"),
    pytest.param("127.1", id="short-v4"),
    pytest.param("0x7f.0.0.1", id="hex-v4"),
    pytest.param("0177.0.0.1", id="octal-v4"),
    pytest.param("127.000.000.001", id="leading-zeros"),
    pytest.param("2130706433", id="decimal-v4"),
    pytest.param("256.1.1.1", id="octet-overflow"),
    pytest.param("[::1]", id="bracketed"),
    pytest.param("127.0.0.1:3478", id="with-port"),
    pytest.param(" 8.8.8.8", id="leading-space"),
    pytest.param("8.8.8.8\n", id="trailing-newline"),
    pytest.param("1:2:3:4:5:6:7:8:9", id="too-many-groups"),
    pytest.param("8.8.8.8/32", id="network"),
    pytest.param("\x00", id="nul"),
    pytest.param("\udcff", id="surrogate"),
]


@pytest.mark.parametrize("ip", DENIED_BY_DEFAULT)
def test_policy_default_denies_special_purpose(ip: str) -> None:
    assert DEFAULT.allows_permission(ip) is False


@pytest.mark.parametrize("ip", ALLOWED_BY_DEFAULT)
def test_policy_default_allows_public_and_private(ip: str) -> None:
    assert DEFAULT.allows_permission(ip) is True


@pytest.mark.parametrize("ip", GARBAGE)
def test_policy_garbage_is_denied_without_raising(ip: str) -> None:
    assert DEFAULT.allows_permission(ip) is False
    assert PeerPolicy(allowed=(ip_network("0.0.0.0/0"), ip_network("::/0"))).allows_permission(ip) is False


@pytest.mark.parametrize(
    "value",
    [None, 3.5, 134744072, b"\x08\x08\x08\x08", object()],
    ids=["none", "float", "int-public", "packed-public", "object"],
)
def test_policy_non_string_is_denied_without_raising(value: object) -> None:
    assert DEFAULT.allows_permission(value) is False  # type: ignore[arg-type]


def test_policy_accepts_address_objects() -> None:
    assert DEFAULT.allows_permission(IPv4Address("8.8.8.8")) is True
    assert DEFAULT.allows_permission(IPv6Address("::ffff:127.0.0.1")) is False


@pytest.mark.parametrize(
    "ip",
    [
        pytest.param("127.0.0.1", id="v4"),
        pytest.param("127.9.9.9", id="v4-other"),
        pytest.param("::ffff:127.0.0.1", id="v4-mapped"),
        pytest.param("::127.0.0.1", id="v4-compatible"),
        pytest.param("64:ff9b::7f00:1", id="nat64"),
        pytest.param("::1", id="v6-loopback"),
    ],
)
def test_policy_allow_list_overrides_builtin_deny(ip: str) -> None:
    policy = PeerPolicy(allowed=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
    assert policy.allows_permission(ip) is True


def test_policy_allow_list_keeps_other_denies() -> None:
    policy = PeerPolicy(allowed=(ip_network("127.0.0.0/8"),))
    assert policy.allows_permission("::1") is False
    assert policy.allows_permission("169.254.169.254") is False
    assert policy.allows_permission("::ffff:0.0.0.0") is False


def test_policy_allow_list_in_v6_form_matches_mapped_address() -> None:
    policy = PeerPolicy(allowed=(ip_network("::ffff:127.0.0.0/104"),))
    assert policy.allows_permission("::ffff:127.0.0.1") is True
    assert policy.allows_permission("127.0.0.1") is False


def test_policy_allow_inside_denied_range() -> None:
    policy = PeerPolicy(denied=(ip_network("10.0.0.0/8"),), allowed=(ip_network("10.1.2.0/24"),))
    assert policy.allows_permission("10.1.2.3") is True
    assert policy.allows_permission("::ffff:10.1.2.3") is True
    assert policy.allows_permission("10.1.3.1") is False


def test_policy_explicit_allow_of_6to4_range() -> None:
    policy = PeerPolicy(allowed=(ip_network("2002::/16"),))
    assert policy.allows_permission("2002:808:808::1") is True
    assert policy.allows_permission("2001:0:4136:e378::1") is False


@pytest.mark.parametrize(
    "ip",
    [
        pytest.param("10.1.2.3", id="v4"),
        pytest.param("::ffff:10.1.2.3", id="v4-mapped"),
        pytest.param("::ffff:0:10.1.2.3", id="v4-translated"),
        pytest.param("::10.1.2.3", id="v4-compatible"),
        pytest.param("64:ff9b::a01:203", id="nat64"),
        pytest.param("64:ff9b:1::a01:203", id="nat64-local-use"),
    ],
)
def test_policy_deny_list_blocks_every_spelling(ip: str) -> None:
    policy = PeerPolicy(denied=(ip_network("10.0.0.0/8"),))
    assert policy.allows_permission(ip) is False
    assert policy.allows_permission("11.0.0.1") is True


def test_policy_deny_ula_blocks_aws_v6_metadata() -> None:
    policy = PeerPolicy(denied=(ip_network("fc00::/7"),))
    assert policy.allows_permission("fd00:ec2::254") is False
    assert policy.allows_permission("2606:4700::1111") is True


def test_policy_relay_addresses_allow_only_relay_range_ports() -> None:
    policy = PeerPolicy(relay_ports=(49152, 65535)).with_server_addresses(["203.0.113.5", "2001:DB8::5"])
    assert policy.relay_addresses == frozenset({"203.0.113.5", "2001:db8::5"})
    assert policy.verdict("203.0.113.5") is Verdict.RELAY_PORTS_ONLY
    assert policy.allows_permission("203.0.113.5") is True
    assert policy.allows("203.0.113.5", 49152) is True
    assert policy.allows("203.0.113.5", 65535) is True
    assert policy.allows("203.0.113.5", 49151) is False
    assert policy.allows("203.0.113.5", 3478) is False
    assert policy.allows("2001:db8:0::5", 50000) is True
    assert policy.allows("2001:db8:0::5", 5349) is False
    assert policy.allows("203.0.113.6", 3478) is True
    assert policy.allows("2001:db8::6", 22) is True


@pytest.mark.parametrize(
    "spelling",
    ["::ffff:203.0.113.5", "::ffff:0:203.0.113.5", "::203.0.113.5", "64:ff9b::cb00:7105", "64:ff9b:1::cb00:7105",
     "2002:cb00:7105::1"],
)
def test_policy_relay_address_in_an_ipv4_in_ipv6_spelling_is_denied(spelling: str) -> None:
    policy = PeerPolicy().with_server_addresses(["203.0.113.5"])
    assert policy.verdict(spelling) is Verdict.DENIED
    assert policy.allows(spelling, 50000) is False


def test_policy_host_addresses_denied_on_every_port() -> None:
    policy = PeerPolicy().with_server_addresses(host=["10.1.2.3", "fd00::2"])
    assert policy.allows_permission("10.1.2.3") is False
    assert policy.allows("10.1.2.3", 50000) is False
    assert policy.allows("::ffff:10.1.2.3", 50000) is False
    assert policy.allows("fd00::2", 50000) is False
    assert policy.allows("10.1.2.4", 50000) is True


def test_policy_configured_loopback_relay_address_beats_the_builtin_deny_on_relay_ports() -> None:
    # TurnAddress = 127.0.0.1 (a lab server): its clients' relays live on 127.0.0.1 and reach each other.
    policy = PeerPolicy().with_server_addresses(["127.0.0.1"])
    assert policy.allows("127.0.0.1", 50000) is True
    assert policy.allows("127.0.0.1", 3478) is False
    assert policy.allows("127.0.0.2", 50000) is False
    assert policy.allows("::ffff:127.0.0.1", 50000) is False


def test_policy_relay_address_beats_an_operator_deny_on_relay_ports() -> None:
    policy = PeerPolicy(denied=(ip_network("10.0.0.0/8"),)).with_server_addresses(["10.0.0.5"])
    assert policy.allows("10.0.0.5", 50000) is True
    assert policy.allows("10.0.0.5", 5432) is False
    assert policy.allows("10.0.0.6", 50000) is False


def test_policy_server_address_in_mapped_form_is_normalised() -> None:
    policy = PeerPolicy(
        relay_addresses=frozenset({"::ffff:198.51.100.7"}), host_addresses=frozenset({"::ffff:1.2.3.4"})
    )
    assert policy.relay_addresses == frozenset({"198.51.100.7"})
    assert policy.host_addresses == frozenset({"1.2.3.4"})
    assert policy.allows("198.51.100.7", 50000) is True


def test_policy_with_server_addresses_adds_and_keeps_lists() -> None:
    base = PeerPolicy(denied=(ip_network("10.0.0.0/8"),), relay_addresses=frozenset({"198.51.100.1"}))
    policy = base.with_server_addresses(["198.51.100.2"], ["198.51.100.3"], relay_ports=(40000, 40099))
    assert policy.relay_addresses == frozenset({"198.51.100.1", "198.51.100.2"})
    assert policy.host_addresses == frozenset({"198.51.100.3"})
    assert policy.relay_ports == (40000, 40099)
    assert policy.denied == base.denied
    assert base.relay_addresses == frozenset({"198.51.100.1"})
    assert base.relay_ports == (49152, 65535)
    assert policy.allows_permission("10.0.0.1") is False
    assert policy.allows("198.51.100.1", 49152) is False


def test_policy_an_address_both_relay_and_host_counts_as_relay() -> None:
    policy = PeerPolicy().with_server_addresses(["198.51.100.1"], ["198.51.100.1"])
    assert policy.host_addresses == frozenset()
    assert policy.allows("198.51.100.1", 50000) is True


def test_policy_allow_list_overrides_server_address() -> None:
    # A test rig's server listens on 127.0.0.1 and its peers live there too (permissions are per IP).
    policy = PeerPolicy(allowed=(ip_network("127.0.0.0/8"),)).with_server_addresses(["127.0.0.1"], ["127.0.0.2"])
    assert policy.allows("127.0.0.1", 3478) is True
    assert policy.allows("127.0.0.2", 22) is True


def test_policy_with_server_addresses_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        PeerPolicy().with_server_addresses(["not-an-ip"])
    with pytest.raises(ConfigError):
        PeerPolicy(relay_ports=(50000, 49999))


def test_policy_is_frozen_and_comparable() -> None:
    policy = PeerPolicy(denied=(ip_network("10.0.0.0/8"),))
    with pytest.raises(AttributeError):
        policy.denied = ()  # type: ignore[misc]
    assert policy == PeerPolicy(denied=(ip_network("10.0.0.0/8"),))
    assert hash(policy) == hash(PeerPolicy(denied=(ip_network("10.0.0.0/8"),)))


def test_builtin_denied_includes_6to4_and_teredo() -> None:
    assert ip_network("2002::/16") in BUILTIN_DENIED
    assert ip_network("2001::/32") in BUILTIN_DENIED
    assert ip_network("10.0.0.0/8") not in BUILTIN_DENIED


@pytest.mark.parametrize(
    ("ip", "inner"),
    [
        pytest.param("::ffff:1.2.3.4", "1.2.3.4", id="mapped"),
        pytest.param("::ffff:0:1.2.3.4", "1.2.3.4", id="translated"),
        pytest.param("::1.2.3.4", "1.2.3.4", id="compatible"),
        pytest.param("64:ff9b::1.2.3.4", "1.2.3.4", id="nat64"),
        pytest.param("64:ff9b:1:abcd::1.2.3.4", "1.2.3.4", id="nat64-local-use"),
        pytest.param("2002:102:304::1", "1.2.3.4", id="6to4"),
        pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45", id="teredo-client"),
        pytest.param("::", None, id="unspecified"),
        pytest.param("::1", None, id="loopback"),
        pytest.param("2606:4700::1111", None, id="native"),
        pytest.param("64:ff9b:2::1.2.3.4", None, id="not-nat64"),
    ],
)
def test_embedded_ipv4(ip: str, inner: str | None) -> None:
    address = ip_address(ip)
    assert isinstance(address, IPv6Address)
    assert embedded_ipv4(address) == (ip_address(inner) if inner else None)


def test_policy_listener_port_inside_the_relay_range_is_never_a_relay() -> None:
    # TurnPort = 0 (an ephemeral port) can land inside the relay range: it is still the listener.
    policy = PeerPolicy().with_server_addresses(["198.51.100.19"], listener_ports=[56598])
    assert policy.allows("198.51.100.19", 56598) is False
    assert policy.allows("198.51.100.19", 56599) is True
