"""The configuration model: the frozen Config, the key table (KEYS) and the conversion and checks of one value.

Pure: no file I/O, no YAML. Key names, defaults and conversion rules follow reTurn (docs/compatibility.md).
Where reTurn silently accepts a value it cannot use, pyturn either warns (and behaves like reTurn) or refuses with
file:line; each case is noted beside its rule. Reading files into a Config is pyturn.files.configfile's job.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType
from typing import Any

from pyturn.errors import ConfigError

COMMAND_LINE = "<command line>"
"""The path given to warnings and errors about ``--Key=Value`` arguments; their line is the 1-based index."""

MAX_INCLUDE_DEPTH = 16

LOG_LEVELS = ("NONE", "EMERG", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG", "STACK")
LOGGING_TYPES = ("cout", "cerr", "file", "syslog")
LOG_MESSAGE_STRUCTURES = ("Unstructured", "JSON_CEE")
SYSLOG_FACILITIES = frozenset(
    ["LOG_AUTH", "LOG_AUTHPRIV", "LOG_CRON", "LOG_DAEMON", "LOG_FTP", "LOG_KERN", "LOG_LPR", "LOG_MAIL",
     "LOG_NEWS", "LOG_SYSLOG", "LOG_USER", "LOG_UUCP"] + [f"LOG_LOCAL{n}" for n in range(8)]
)
OBSOLETE_KEYS = MappingProxyType({"longtermauthusername": "LongTermAuthUsername",
                                  "longtermauthpassword": "LongTermAuthPassword"})

PeerNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server reads from reTurnServer.config; every field defaults to reTurn's value."""

    # SOFTWARE attribute: reTurn sends "reTURNServer (RFC5389)"; pyturn keeps it short because it travels in
    # unauthenticated answers too, and small answers limit reflection amplification.
    software_name: str = "pyturn"
    pad_software_name: bool = True
    turn_address: str = "0.0.0.0"
    turn_v6_address: str = "::"
    turn_port: int = 3478
    tls_turn_port: int = 5349
    alt_stun_address: str = "0.0.0.0"
    alt_stun_port: int = 0
    authentication_realm: str = "reTurn"
    user_database_file: str | None = None  # mandatory in files, optional in code (users passed in memory)
    user_database_hashed_passwords: bool = False
    user_database_check_interval: int = 60
    nonce_lifetime: int = 3600
    allocation_port_range_min: int = 49152
    allocation_port_range_max: int = 65535
    default_allocation_lifetime: int = 600
    max_allocation_lifetime: int = 3600
    max_allocations_per_user: int = 0  # 0 = unlimited
    tls_server_certificate_filename: str = "server.pem"
    tls_server_private_key_filename: str = ""
    tls_temp_dh_filename: str = "dh2048.pem"
    tls_private_key_password: str = ""
    daemonize: bool = False
    pid_file: str = ""
    run_as_user: str = ""
    run_as_group: str = ""
    logging_type: str = "cout"  # cout|cerr|file|syslog (any other value in a file becomes syslog)
    syslog_facility: str = "LOG_DAEMON"
    log_level: str = "INFO"
    log_filename: str = "reTurnServer.log"
    log_file_max_lines: int = 0
    log_file_max_bytes: int = 0
    keep_all_log_files: bool = False
    log_message_structure: str = "Unstructured"
    logging_instance_name: str = ""
    # pyturn's own keys
    relay_address: str = ""
    relay_v6_address: str = ""
    external_address: str = ""
    external_v6_address: str = ""
    denied_peer_addresses: tuple[PeerNetwork, ...] = ()
    allowed_peer_addresses: tuple[PeerNetwork, ...] = ()
    tcp_channel_data_padding: bool = True
    legacy_channel_numbers: bool = False  # accept RFC 5766's 0x5000-0x7FFF too
    workers: int = 1  # 0 = one per CPU
    max_allocations: int = 0  # 0 = unlimited
    max_bandwidth_per_allocation: int = 0  # bytes/s, 0 = unlimited
    # Socket buffers in bytes, 0 = the kernel's default (pyturn.net.sockets.set_buffers, docs/compatibility.md)
    listener_receive_buffer: int = 4 << 20
    listener_send_buffer: int = 1 << 20
    relay_receive_buffer: int = 1 << 20
    relay_send_buffer: int = 1 << 20
    unauthenticated_rate_limit: int = 10  # 401 answers per second per source IP, 0 = off
    max_tcp_connections: int = 0  # 0 = derived from the fd limit
    max_tcp_connections_per_source: int = 0  # 0 = unlimited
    tcp_auth_timeout: int = 30  # seconds a TCP/TLS connection may stay unauthenticated
    max_permissions_per_allocation: int = 64  # 508 beyond (docs/security.md "Permission and channel caps")
    max_channels_per_allocation: int = 64  # 508 beyond
    tcp_relay: bool = True  # RFC 6062 TCP allocations for TCP/TLS clients; false = 442 as for any non-UDP transport
    max_tcp_relay_connections: int = 1024  # RFC 6062 data connections in total (docs/security.md "TCP relays")
    max_tcp_relay_connections_per_allocation: int = 16  # ... per allocation; 0 = unlimited (both)
    metrics_address: str = "127.0.0.1"  # the HTTP listener of /metrics, /healthz, /readyz (pyturn.net.metrics)
    metrics_port: int = 0  # 0 = no metrics listener
    # shared-secret (TURN REST) credentials, pyturn.core.sharedsecret
    auth_shared_secret: tuple[str, ...] = ()
    auth_shared_secret_file: str = ""
    auth_shared_secret_separator: str = ":"
    # many instances (docs/scaling.md): redirection, drain, a nonce secret shared among instances
    alternate_servers: tuple[tuple[str, int], ...] = ()  # (IP, port) pairs, in the operator's order
    alternate_domain: str = ""  # ALTERNATE-DOMAIN for TLS clients; empty = none (the original name is checked)
    max_relayed_bitrate: int = 0  # bits/s relayed by the whole instance before new Allocates go elsewhere; 0 = off
    drain_timeout: int = 3600  # seconds a drain waits for the last allocation before the process exits
    nonce_secret_file: str = ""  # a secret shared by instances that accept each other's nonces

    @property
    def uses_shared_secrets(self) -> bool:
        return bool(self.auth_shared_secret or self.auth_shared_secret_file)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (no validation: code that builds Configs owns its values)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[tuple[str, str]]:
        """(reTurn key name, value as a config file would spell it) for every key, secrets masked."""
        described = []
        for spec in KEYS.values():
            if spec.fallback_for is not None:
                continue
            text = format_value(getattr(self, spec.field))
            if spec.secret and text:
                text = "****"
            described.append((spec.name, text))
        return described


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something in the configuration that pyturn accepted but the operator should fix."""

    path: str
    line: int  # 0 when the warning is not tied to one line
    message: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}: {self.message}"
        return f"{self.path}: {self.message}"


class Kind(enum.Enum):
    """How a key's text becomes a field value (docs/compatibility.md "Values")."""

    STRING = "string"  # verbatim, trailing whitespace kept, explicit empty overrides the default
    # STRING, then a bare file name is resolved against the config file's folder (docs/compatibility.md "File names")
    PATH = "path"
    PLAIN_PATH = "plain path"  # STRING, never resolved (PidFile)
    BOOL = "bool"  # 1/true/on/enable, 0/false/off/disable; anything else warns and keeps the default
    PORT = "port"  # reTurn unsigned short; pyturn refuses anything outside 0..65535
    USHORT = "unsigned short"  # reTurn unsigned short that is not a port: warn and truncate like reTurn
    ULONG = "unsigned long"  # reTurn unsigned long
    COUNT = "count"  # pyturn's own integers: strict decimal, at least KeySpec.minimum
    IPV4 = "IPv4 address"
    OPTIONAL_IPV4 = "IPv4 address or empty"
    OPTIONAL_IPV6 = "IPv6 address or empty"
    NETWORKS = "comma-separated CIDR networks"
    SECRETS = "comma-separated secrets"
    ENDPOINTS = "comma-separated IP:port (IPv6 in brackets)"
    LOG_LEVEL = "log level"
    LOGGING_TYPE = "logging type"
    SYSLOG_FACILITY = "syslog facility"
    LOG_MESSAGE_STRUCTURE = "log message structure"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One configuration key: its reTurn spelling, the field it sets, how it converts, what it means."""

    name: str
    field: str
    kind: Kind
    default: Any
    help: str
    minimum: int = 0  # ULONG/COUNT: smallest usable value
    secret: bool = False  # masked by Config.describe()
    empty_means_default: bool = False  # reTurn's logging keys fall back to the default when empty
    fallback_for: str | None = None  # lower-cased key that wins over this one when both are set


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _spec(name: str, field: str, kind: Kind, help: str, **options: Any) -> tuple[str, KeySpec]:
    return name.lower(), KeySpec(name, field, kind, _FIELD_DEFAULTS[field], help, **options)


KEYS: Mapping[str, KeySpec] = MappingProxyType(dict([
    _spec("SoftwareName", "software_name", Kind.STRING,
          "SOFTWARE attribute on every response; empty = none"),
    _spec("PadSoftwareName", "pad_software_name", Kind.BOOL,
          "append spaces to SoftwareName up to a multiple of 4 bytes (legacy clients)"),
    _spec("TurnAddress", "turn_address", Kind.IPV4, "IPv4 bind address of the UDP, TCP and TLS listeners"),
    _spec("TurnV6Address", "turn_v6_address", Kind.OPTIONAL_IPV6,
          "IPv6 bind address of the listeners; empty = no IPv6 listeners (reTurn: always opened)"),
    _spec("TurnPort", "turn_port", Kind.PORT, "UDP and TCP listening port; 0 = ephemeral (tests)"),
    _spec("TlsTurnPort", "tls_turn_port", Kind.PORT, "TLS listening port; 0 disables TLS"),
    _spec("AltStunAddress", "alt_stun_address", Kind.IPV4, "second IPv4 address for RFC 3489 NAT discovery"),
    _spec("AltStunPort", "alt_stun_port", Kind.PORT, "non-zero enables RFC 3489 mode (CHANGE-REQUEST)"),
    _spec("AuthenticationRealm", "authentication_realm", Kind.STRING, "REALM sent in 401/438 challenges"),
    _spec("UserDatabaseFile", "user_database_file", Kind.PATH,
          "user file (login:password:realm:state); mandatory unless shared secrets are set"),
    _spec("UserDatabaseHashedPasswords", "user_database_hashed_passwords", Kind.BOOL,
          "the password column holds 32-hex-digit HA1 keys"),
    _spec("UserDatabaseCheckInterval", "user_database_check_interval", Kind.USHORT,
          "seconds between checks of the user file's mtime; 0 = only on SIGHUP"),
    _spec("NonceLifetime", "nonce_lifetime", Kind.ULONG, "seconds before a nonce is answered with 438",
          minimum=1),
    _spec("AllocationPortRangeMin", "allocation_port_range_min", Kind.PORT, "first relay port (even)"),
    _spec("AllocationPortRangeMax", "allocation_port_range_max", Kind.PORT, "last relay port (odd)"),
    _spec("DefaultAllocationLifetime", "default_allocation_lifetime", Kind.ULONG,
          "seconds granted when no or a smaller LIFETIME is requested", minimum=1),
    _spec("MaxAllocationLifetime", "max_allocation_lifetime", Kind.ULONG,
          "ceiling for requested lifetimes, seconds", minimum=1),
    _spec("MaxAllocationsPerUser", "max_allocations_per_user", Kind.ULONG,
          "allocations one user may hold (486 beyond); 0 = unlimited"),
    _spec("TlsServerCertificateFilename", "tls_server_certificate_filename", Kind.PATH,
          "PEM certificate chain for TLS"),
    _spec("TlsServerPrivateKeyFilename", "tls_server_private_key_filename", Kind.PATH,
          "PEM private key; empty = read it from the certificate file"),
    _spec("TlsTempDhFilename", "tls_temp_dh_filename", Kind.PATH, "PEM DH parameters for TLS"),
    _spec("TlsPrivateKeyPassword", "tls_private_key_password", Kind.STRING,
          "passphrase of an encrypted private key", secret=True),
    _spec("Daemonize", "daemonize", Kind.BOOL, "fork into the background"),
    _spec("PidFile", "pid_file", Kind.PLAIN_PATH, "PID file, written whenever set and removed on exit; never resolved"),
    _spec("RunAsUser", "run_as_user", Kind.STRING, "user to switch to after binding the sockets"),
    _spec("RunAsGroup", "run_as_group", Kind.STRING, "group for the switch; empty = the user's group"),
    _spec("LoggingType", "logging_type", Kind.LOGGING_TYPE, "cout, cerr, file or syslog",
          empty_means_default=True),
    _spec("SyslogFacility", "syslog_facility", Kind.SYSLOG_FACILITY, "LOG_DAEMON, LOG_LOCAL0..7, ...",
          empty_means_default=True),
    _spec("LogLevel", "log_level", Kind.LOG_LEVEL,
          "NONE, EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG or STACK", empty_means_default=True),
    _spec("LoggingLevel", "log_level", Kind.LOG_LEVEL, "older name of LogLevel",
          empty_means_default=True, fallback_for="loglevel"),
    _spec("LogFilename", "log_filename", Kind.PATH, "log file when LoggingType = file",
          empty_means_default=True),
    _spec("LoggingFilename", "log_filename", Kind.PATH, "older name of LogFilename",
          empty_means_default=True, fallback_for="logfilename"),
    _spec("LogFileMaxLines", "log_file_max_lines", Kind.ULONG, "rotate after this many lines; 0 = never"),
    _spec("LogFileMaxBytes", "log_file_max_bytes", Kind.ULONG, "rotate after this many bytes; 0 = never"),
    _spec("KeepAllLogFiles", "keep_all_log_files", Kind.BOOL,
          "rotate to <name>_<timestamp> instead of <name>.old"),
    _spec("LogMessageStructure", "log_message_structure", Kind.LOG_MESSAGE_STRUCTURE,
          "Unstructured or JSON_CEE", empty_means_default=True),
    _spec("LoggingInstanceName", "logging_instance_name", Kind.STRING, "shown as app[instance] in log lines",
          empty_means_default=True),
    _spec("RelayAddress", "relay_address", Kind.OPTIONAL_IPV4,
          "bind address of IPv4 relay sockets; empty = the address the client reached"),
    _spec("RelayV6Address", "relay_v6_address", Kind.OPTIONAL_IPV6, "bind address of IPv6 relay sockets"),
    _spec("ExternalAddress", "external_address", Kind.OPTIONAL_IPV4,
          "IPv4 address advertised in XOR-RELAYED-ADDRESS (1:1 NAT); empty = the relay's own"),
    _spec("ExternalV6Address", "external_v6_address", Kind.OPTIONAL_IPV6,
          "IPv6 address advertised in XOR-RELAYED-ADDRESS"),
    _spec("DeniedPeerAddresses", "denied_peer_addresses", Kind.NETWORKS,
          "peers never relayed to, besides the built-in special-purpose ranges"),
    _spec("AllowedPeerAddresses", "allowed_peer_addresses", Kind.NETWORKS,
          "peers relayed to even when denied (e.g. 127.0.0.0/8 for tests)"),
    _spec("TcpChannelDataPadding", "tcp_channel_data_padding", Kind.BOOL,
          "pad ChannelData over TCP/TLS to 4 bytes (RFC 8656 §12.5); false = reTurn's unpadded framing"),
    _spec("LegacyChannelNumbers", "legacy_channel_numbers", Kind.BOOL,
          "also accept channel numbers 0x5000-0x7FFF in ChannelBind (RFC 5766, reTurn, coturn's clients); "
          "RFC 8656 §12 reserves them"),
    _spec("Workers", "workers", Kind.COUNT, "worker processes sharing the ports; 0 = one per CPU"),
    _spec("MaxAllocations", "max_allocations", Kind.COUNT,
          "allocations in total (486 beyond); 0 = unlimited"),
    _spec("MaxBandwidthPerAllocation", "max_bandwidth_per_allocation", Kind.COUNT,
          "relayed bytes per second per allocation; 0 = unlimited"),
    _spec("ListenerReceiveBuffer", "listener_receive_buffer", Kind.COUNT,
          "SO_RCVBUF of each UDP listening socket in bytes (forced when started as root); 0 = the kernel's default"),
    _spec("ListenerSendBuffer", "listener_send_buffer", Kind.COUNT,
          "SO_SNDBUF of each UDP listening socket in bytes (forced when started as root); 0 = the kernel's default"),
    _spec("RelayReceiveBuffer", "relay_receive_buffer", Kind.COUNT,
          "SO_RCVBUF of each relay socket in bytes (forced only while running as root); 0 = the kernel's default"),
    _spec("RelaySendBuffer", "relay_send_buffer", Kind.COUNT,
          "SO_SNDBUF of each relay socket in bytes (forced only while running as root); 0 = the kernel's default"),
    _spec("UnauthenticatedRateLimit", "unauthenticated_rate_limit", Kind.COUNT,
          "401 answers per second per source IP; 0 = no limit"),
    _spec("MaxTcpConnections", "max_tcp_connections", Kind.COUNT,
          "TCP/TLS client connections in total; 0 = derived from the file-descriptor limit"),
    _spec("MaxTcpConnectionsPerSource", "max_tcp_connections_per_source", Kind.COUNT,
          "TCP/TLS client connections per source IP; 0 = unlimited"),
    _spec("TcpAuthTimeout", "tcp_auth_timeout", Kind.COUNT,
          "seconds a TCP/TLS connection may stay without an authenticated request", minimum=1),
    _spec("MaxPermissionsPerAllocation", "max_permissions_per_allocation", Kind.COUNT,
          "permissions (peer IPs) one allocation may hold (508 beyond); 0 = unlimited"),
    _spec("MaxChannelsPerAllocation", "max_channels_per_allocation", Kind.COUNT,
          "channel bindings one allocation may hold (508 beyond); 0 = unlimited"),
    _spec("TcpRelay", "tcp_relay", Kind.BOOL,
          "grant TCP relayed addresses (RFC 6062) to TCP/TLS clients asking for REQUESTED-TRANSPORT TCP; "
          "false = 442 as before"),
    _spec("MaxTcpRelayConnections", "max_tcp_relay_connections", Kind.COUNT,
          "RFC 6062 peer data connections in total (Connect gets 508 beyond, incoming ones are refused); "
          "0 = unlimited"),
    _spec("MaxTcpRelayConnectionsPerAllocation", "max_tcp_relay_connections_per_allocation", Kind.COUNT,
          "RFC 6062 peer data connections one TCP allocation may hold (508 / refused beyond); 0 = unlimited"),
    _spec("MetricsAddress", "metrics_address", Kind.STRING,
          "IPv4 or IPv6 address of the HTTP listener serving /metrics, /healthz and /readyz"),
    _spec("MetricsPort", "metrics_port", Kind.PORT, "port of that listener; 0 = no listener"),
    _spec("AuthSharedSecret", "auth_shared_secret", Kind.SECRETS,
          "shared secrets of TURN REST credentials, comma-separated; any of them is accepted", secret=True),
    _spec("AuthSharedSecretFile", "auth_shared_secret_file", Kind.PATH,
          "file of shared secrets, one a line; re-read on SIGHUP and when it changes"),
    _spec("AuthSharedSecretSeparator", "auth_shared_secret_separator", Kind.STRING,
          "between EXPIRY and the name in a REST username", empty_means_default=True),
    _spec("AlternateServers", "alternate_servers", Kind.ENDPOINTS,
          "other instances (IP:port, IPv6 in brackets) named in 300 Try Alternate when this one is full or "
          "draining; the first of the client's family is used"),
    _spec("AlternateDomain", "alternate_domain", Kind.STRING,
          "ALTERNATE-DOMAIN sent to TLS clients with a redirect (the name the alternates' certificates carry); "
          "empty = none, the client checks the original server's name"),
    _spec("MaxRelayedBitrate", "max_relayed_bitrate", Kind.COUNT,
          "bits per second relayed by this instance beyond which new allocations are redirected; 0 = no limit"),
    _spec("DrainTimeout", "drain_timeout", Kind.COUNT,
          "seconds a drain (SIGUSR1, pyturn drain) waits for the last allocation before exiting", minimum=1),
    _spec("NonceSecretFile", "nonce_secret_file", Kind.PATH,
          "file holding the nonce secret shared by instances that accept each other's nonces; "
          "empty = a random secret per process"),
]))


def format_value(value: object) -> str:
    """A field value spelled as a config file would spell it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(format_endpoint(item) if isinstance(item, tuple) else str(item) for item in value)
    return str(value)


def format_endpoint(endpoint: tuple[str, int]) -> str:
    """(IP, port) as AlternateServers spells it: IPv6 in brackets."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str  # as written
    value: str
    path: str
    line: int
    base_dir: str  # folder that bare file names in this entry are resolved against


_BOOL_WORDS = {"1": True, "true": True, "on": True, "enable": True,
               "0": False, "false": False, "off": False, "disable": False}

# ---------------------------------------------------------------------------------------------- converting


class Converter:
    """Turns entries into field values, collecting warnings; raises ConfigError for unusable values."""

    def __init__(self, warnings: list[ConfigWarning]) -> None:
        self.warnings = warnings

    def warn(self, entry: Setting, message: str) -> None:
        self.warnings.append(ConfigWarning(entry.path, entry.line, message))

    def fail(self, entry: Setting, message: str) -> ConfigError:
        return ConfigError(message, entry.path, entry.line)

    def convert(self, spec: KeySpec, entry: Setting, current: Any) -> Any:
        kind, value = spec.kind, entry.value
        if kind in (Kind.STRING, Kind.PATH, Kind.PLAIN_PATH):
            return value
        text = value.strip()
        if kind is Kind.BOOL:
            if text.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[text.lower()]
            self.warn(entry, f"{spec.name}: invalid boolean {text!r} (use true or false), "
                             f"keeping {format_value(current)}")
            return current
        if kind in (Kind.PORT, Kind.USHORT, Kind.ULONG):
            return self._reTurn_integer(spec, entry, text)
        if kind is Kind.COUNT:
            if not re.fullmatch(r"[+-]?[0-9]+", text):
                raise self.fail(entry, f"{spec.name}: {text!r} is not a whole number")
            number = int(text)
            if number < spec.minimum:
                raise self.fail(entry, f"{spec.name}: must be at least {spec.minimum}, got {number}")
            return number
        if kind in (Kind.IPV4, Kind.OPTIONAL_IPV4, Kind.OPTIONAL_IPV6):
            return self._address(spec, entry, text)
        if kind is Kind.NETWORKS:
            return self._networks(spec, entry, text)
        if kind is Kind.SECRETS:
            return tuple(item.strip() for item in text.split(",") if item.strip())
        if kind is Kind.ENDPOINTS:
            return self._endpoints(spec, entry, text)
        return self._logging_word(spec, entry, text)

    def _reTurn_integer(self, spec: KeySpec, entry: Setting, text: str) -> int:
        """docs/compatibility.md "Values": reTurn reads leading digits and never complains; pyturn says what it did."""
        match = re.match(r"[+-]?[0-9]+", text)
        if match is None:
            if spec.kind is Kind.PORT:
                raise self.fail(entry, f"{spec.name}: {text!r} is not a port number")
            if spec.minimum > 0:
                raise self.fail(entry, f"{spec.name}: {text!r} is not a number")
            self.warn(entry, f"{spec.name}: {text!r} is not a number, using 0 as reTurn does")
            return 0
        number = int(match.group())
        trailing = text[match.end():]
        if trailing:
            self.warn(entry, f"{spec.name}: trailing text {trailing!r} after {match.group()} ignored")
        if spec.kind is Kind.PORT:
            if not 0 <= number <= 0xFFFF:
                raise self.fail(entry, f"{spec.name}: {number} is out of range 0..65535")
            return number
        if spec.kind is Kind.USHORT:
            if not 0 <= number <= 0xFFFF:
                truncated = number & 0xFFFF
                self.warn(entry, f"{spec.name}: {number} does not fit in 16 bits; "
                                 f"using {truncated} as reTurn does")
                return truncated
            return number
        if number < 0:
            if spec.minimum > 0:
                raise self.fail(entry, f"{spec.name}: must be at least {spec.minimum}, got {number}")
            self.warn(entry, f"{spec.name}: negative value {number}, using 0 as reTurn does")
            return 0
        if number < spec.minimum:
            raise self.fail(entry, f"{spec.name}: must be at least {spec.minimum}, got {number}")
        return number

    def _address(self, spec: KeySpec, entry: Setting, text: str) -> str:
        if not text and spec.kind in (Kind.OPTIONAL_IPV4, Kind.OPTIONAL_IPV6):
            return ""
        version = 4 if spec.kind in (Kind.IPV4, Kind.OPTIONAL_IPV4) else 6
        parse = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        try:
            return str(parse(text))
        except ValueError as exc:
            raise self.fail(entry, f"{spec.name}: {text!r} is not an IPv{version} address") from exc

    def _networks(self, spec: KeySpec, entry: Setting, text: str) -> tuple[PeerNetwork, ...]:
        if not text:
            return ()
        networks = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                raise self.fail(entry, f"{spec.name}: empty entry in the list")
            try:
                networks.append(ipaddress.ip_network(item))
            except ValueError as exc:
                message = f"{spec.name}: {item!r} is not a network in CIDR form ({exc})"
                raise self.fail(entry, message) from exc
        return tuple(networks)

    def _endpoints(self, spec: KeySpec, entry: Setting, text: str) -> tuple[tuple[str, int], ...]:
        """`198.51.100.20:3478, [2001:db8::20]:3478`: IP literals only, ALTERNATE-SERVER carries an address."""
        if not text:
            return ()
        endpoints = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                raise self.fail(entry, f"{spec.name}: empty entry in the list")
            match = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)|([^:\[\]]+):([0-9]+)", item)
            if match is None:
                raise self.fail(entry, f"{spec.name}: {item!r} is not IP:port (write IPv6 as [address]:port)")
            host = match.group(1) or match.group(3)
            port = int(match.group(2) or match.group(4))
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                raise self.fail(entry, f"{spec.name}: {host!r} in {item!r} is not an IP address "
                                       "(ALTERNATE-SERVER carries an address, not a name)") from None
            if (address.version == 6) != bool(match.group(1)):
                raise self.fail(entry, f"{spec.name}: {item!r}: an IPv6 address goes in brackets, IPv4 does not")
            if not 1 <= port <= 0xFFFF:
                raise self.fail(entry, f"{spec.name}: port {port} in {item!r} is out of range 1..65535")
            if address.is_unspecified:
                raise self.fail(entry, f"{spec.name}: {item!r} is a wildcard, not an instance's address")
            endpoints.append((str(address), port))
        return tuple(endpoints)

    def _logging_word(self, spec: KeySpec, entry: Setting, text: str) -> str:
        if spec.kind is Kind.LOG_LEVEL:
            level = text.upper().removeprefix("LOG_")
            if level in LOG_LEVELS:
                return level
            self.warn(entry, f"{spec.name}: unknown level {text!r}, using DEBUG as reTurn does")
            return "DEBUG"
        if spec.kind is Kind.LOGGING_TYPE:
            if text.lower() in LOGGING_TYPES:
                return text.lower()
            self.warn(entry, f"{spec.name}: unknown type {text!r}, using syslog as reTurn does")
            return "syslog"
        if spec.kind is Kind.SYSLOG_FACILITY:
            if text in SYSLOG_FACILITIES:
                return text
            self.warn(entry, f"{spec.name}: unknown facility {text!r}, using LOG_DAEMON")
            return "LOG_DAEMON"
        for structure in LOG_MESSAGE_STRUCTURES:
            if text.lower() == structure.lower():
                return structure
        self.warn(entry, f"{spec.name}: unknown value {text!r} (use Unstructured or JSON_CEE), "
                         "using Unstructured")
        return "Unstructured"

