"""reTurnServer.config (or a YAML mapping) -> a frozen, validated Config.

Grammar, key names, defaults and conversion rules follow reTurn (reTurn.md §1, §2). Where reTurn silently
accepts a value it cannot use, pyturn either warns (and behaves like reTurn) or refuses with file:line; each
case is noted beside its rule. Pure: reads files, opens no sockets, knows no clock.

Deliberate differences from reTurn, kept small:
* A relative ``include`` is looked up beside the including file first, then relative to the current
  directory (reTurn only tries the current directory).
* Bare file names are resolved against the folder of the file that set them (reTurn uses the folder of the
  last include that had a slash, which only differs for configs that use include).
* Unusable ports, lifetimes and addresses are errors instead of silent zeros or truncations.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # types-PyYAML is a dev extra

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
    unauthenticated_rate_limit: int = 10  # 401 answers per second per source IP, 0 = off
    max_tcp_connections: int = 0  # 0 = derived from the fd limit
    max_tcp_connections_per_source: int = 0  # 0 = unlimited
    tcp_auth_timeout: int = 30  # seconds a TCP/TLS connection may stay unauthenticated
    max_permissions_per_allocation: int = 64  # 508 beyond (anchors.md §5.5 case 36)
    max_channels_per_allocation: int = 64  # 508 beyond
    metrics_address: str = "127.0.0.1"  # the HTTP listener of /metrics, /healthz, /readyz (pyturn.metrics)
    metrics_port: int = 0  # 0 = no metrics listener
    # shared-secret (TURN REST) credentials, pyturn.sharedsecret
    auth_shared_secret: tuple[str, ...] = ()
    auth_shared_secret_file: str = ""
    auth_shared_secret_separator: str = ":"

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
    """How a key's text becomes a field value (reTurn.md §1.3)."""

    STRING = "string"  # verbatim, trailing whitespace kept, explicit empty overrides the default
    PATH = "path"  # STRING, then a bare file name is resolved against the config file's folder (§1.4)
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
    _spec("MetricsAddress", "metrics_address", Kind.STRING,
          "IPv4 or IPv6 address of the HTTP listener serving /metrics, /healthz and /readyz"),
    _spec("MetricsPort", "metrics_port", Kind.PORT, "port of that listener; 0 = no listener"),
    _spec("AuthSharedSecret", "auth_shared_secret", Kind.SECRETS,
          "shared secrets of TURN REST credentials, comma-separated; any of them is accepted", secret=True),
    _spec("AuthSharedSecretFile", "auth_shared_secret_file", Kind.PATH,
          "file of shared secrets, one a line; re-read on SIGHUP and when it changes"),
    _spec("AuthSharedSecretSeparator", "auth_shared_secret_separator", Kind.STRING,
          "between EXPIRY and the name in a REST username", empty_means_default=True),
]))


def format_value(value: object) -> str:
    """A field value spelled as a config file would spell it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str  # as written
    value: str
    path: str
    line: int
    base_dir: str  # folder that bare file names in this entry are resolved against


_BOOL_WORDS = {"1": True, "true": True, "on": True, "enable": True,
               "0": False, "false": False, "off": False, "disable": False}


def _name_end(line: str) -> int:
    """The name runs up to the first '=', space or tab (reTurn.md §1.2)."""
    for index, char in enumerate(line):
        if char in "= \t":
            return index
    return len(line)


def _parse_text(path: str, data: bytes, warnings: list[ConfigWarning]) -> list[_Entry]:
    """reTurn.md §1.2: one `Name = Value` per line; `#` only comments at the start of a line."""
    entries = []
    base_dir = os.path.dirname(path)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("line is not valid UTF-8", path, number) from exc
        line = line.removesuffix("\r").lstrip(" \t")
        if not line.strip() or line.startswith("#"):
            continue
        name_end = _name_end(line)
        name, rest = line[:name_end], line[name_end:]
        equals = rest.find("=")
        if equals < 0:
            raise ConfigError(f"expected 'Name = Value', got {line.rstrip()!r}", path, number)
        if not name:
            raise ConfigError("missing key name before '='", path, number)
        between = rest[:equals].strip(" \t")
        if between:
            warnings.append(ConfigWarning(path, number, f"text {between!r} between {name} and '=' ignored"))
        entries.append(_Entry(name, rest[equals + 1:].lstrip(" \t"), path, number, base_dir))
    return entries


def _parse_yaml(path: str, data: bytes) -> list[_Entry]:
    """A top-level mapping of reTurn key names; line numbers come from the composed node tree."""
    try:
        root = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not valid UTF-8", path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", path, mark.line + 1 if mark else None) from exc
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError("a YAML config must be a mapping of reTurn key names to values", path,
                          root.start_mark.line + 1)
    entries = []
    base_dir = os.path.dirname(path)
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError("a key must be a plain name", path, line)
        name = str(key_node.value)
        entries.append(_Entry(name, _yaml_value_text(name, value_node, path, line), path, line, base_dir))
    return entries


def _yaml_value_text(name: str, node: yaml.Node, path: str, line: int) -> str:
    """The value as the text a .config line would carry, so both formats share one validation."""
    spec = KEYS.get(name.lower())
    if isinstance(node, yaml.SequenceNode):
        if spec is None or spec.kind not in (Kind.NETWORKS, Kind.SECRETS):
            raise ConfigError(f"{name}: a list is only allowed for the peer address keys", path, line)
        items = [_yaml_value_text(name, item, path, item.start_mark.line + 1) for item in node.value]
        return ", ".join(items)
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{name}: expected a single value, got a mapping", path, line)
    text = str(node.value)
    if node.tag == "tag:yaml.org,2002:null":
        return ""
    if node.tag == "tag:yaml.org,2002:bool" and spec is not None and spec.kind is Kind.BOOL:
        return "true" if yaml.SafeLoader.bool_values[text.lower()] else "false"
    return text


def _read_file(path: str, settings: dict[str, _Entry], warnings: list[ConfigWarning],
               reading: tuple[str, ...]) -> None:
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path) from exc
    is_yaml = path.lower().endswith((".yaml", ".yml"))
    entries = _parse_yaml(path, data) if is_yaml else _parse_text(path, data, warnings)
    for entry in entries:
        if entry.name.lower() == "include":
            included = _find_include(entry)
            real = os.path.realpath(included)
            if real in reading:
                raise ConfigError(f"include: {entry.value.strip()!r} is already being read (include loop)",
                                  entry.path, entry.line)
            if len(reading) >= MAX_INCLUDE_DEPTH:
                raise ConfigError(f"include: nested more than {MAX_INCLUDE_DEPTH} deep",
                                  entry.path, entry.line)
            _read_file(included, settings, warnings, (*reading, real))
            continue
        _add_setting(settings, entry)


def _find_include(entry: _Entry) -> str:
    """Beside the including file first, then relative to the current directory (reTurn's only place)."""
    target = entry.value.strip()
    if not target:
        raise ConfigError("include: empty file name", entry.path, entry.line)
    if os.path.isabs(target):
        candidates = [target]
    else:
        candidates = [os.path.join(entry.base_dir, target), target] if entry.base_dir else [target]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"include: cannot find {target!r} (looked in: {', '.join(dict.fromkeys(candidates))})",
                      entry.path, entry.line)


def _add_setting(settings: dict[str, _Entry], entry: _Entry) -> None:
    key = entry.name.lower()
    first = settings.get(key)
    if first is not None:
        raise ConfigError(f"duplicate key {entry.name!r} (first set at {first.path}:{first.line})",
                          entry.path, entry.line)
    settings[key] = entry


def _override_entries(args: Sequence[str], base_dir: str) -> list[_Entry]:
    """reTurn.md §1.1: `-Name=Value`, `--Name:Value`, `/Name=Value`; a repeated name is fatal."""
    entries: list[_Entry] = []
    seen: dict[str, int] = {}
    for index, arg in enumerate(args, start=1):
        if not arg.startswith(("-", "/")):
            raise ConfigError(f"expected --Name=Value, got {arg!r}", COMMAND_LINE, index)
        body = arg.lstrip("-/")
        separator = re.search(r"[=:]", body)
        if separator is None:
            raise ConfigError(f"expected --Name=Value, got {arg!r}", COMMAND_LINE, index)
        name = body[:separator.start()]
        if not name:
            raise ConfigError(f"missing key name in {arg!r}", COMMAND_LINE, index)
        key = name.lower()
        if key in seen:
            raise ConfigError(f"duplicate key {name!r} (also argument {seen[key]})", COMMAND_LINE, index)
        seen[key] = index
        entries.append(_Entry(name, body[separator.end():], COMMAND_LINE, index, base_dir))
    return entries


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`--Key=Value` arguments -> {lower-cased key: value}; ConfigError for a malformed or repeated one."""
    return {entry.name.lower(): entry.value for entry in _override_entries(args, "")}


# ---------------------------------------------------------------------------------------------- converting


class _Converter:
    """Turns entries into field values, collecting warnings; raises ConfigError for unusable values."""

    def __init__(self, warnings: list[ConfigWarning]) -> None:
        self.warnings = warnings

    def warn(self, entry: _Entry, message: str) -> None:
        self.warnings.append(ConfigWarning(entry.path, entry.line, message))

    def fail(self, entry: _Entry, message: str) -> ConfigError:
        return ConfigError(message, entry.path, entry.line)

    def convert(self, spec: KeySpec, entry: _Entry, current: Any) -> Any:
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
        return self._logging_word(spec, entry, text)

    def _reTurn_integer(self, spec: KeySpec, entry: _Entry, text: str) -> int:
        """reTurn.md §1.3: reTurn reads leading digits and never complains; pyturn says what it did."""
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

    def _address(self, spec: KeySpec, entry: _Entry, text: str) -> str:
        if not text and spec.kind in (Kind.OPTIONAL_IPV4, Kind.OPTIONAL_IPV6):
            return ""
        version = 4 if spec.kind in (Kind.IPV4, Kind.OPTIONAL_IPV4) else 6
        parse = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        try:
            return str(parse(text))
        except ValueError as exc:
            raise self.fail(entry, f"{spec.name}: {text!r} is not an IPv{version} address") from exc

    def _networks(self, spec: KeySpec, entry: _Entry, text: str) -> tuple[PeerNetwork, ...]:
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

    def _logging_word(self, spec: KeySpec, entry: _Entry, text: str) -> str:
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


def _resolve_bare_name(name: str, base_dir: str) -> str:
    """reTurn.md §1.4: a name without any slash lives beside the config file; others stay as given."""
    if not name or "/" in name or not base_dir:
        return name
    return os.path.join(base_dir, name)


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = (), *,
                defaults: Config | None = None) -> tuple[Config, list[ConfigWarning]]:
    """Read a reTurnServer.config (or a YAML mapping when the file ends with .yaml/.yml), apply `--Key=Value`
    command-line overrides (reTurn grammar: leading -,/ stripped, name ends at '=' or ':'), validate.
    Raises ConfigError (message, path, line) for anything unusable. Returns the frozen Config and the
    warnings to log. Override errors and warnings carry path "<command line>" and the 1-based argument
    index as their line.
    """
    config_path = os.fspath(path)
    base = defaults if defaults is not None else Config()
    warnings: list[ConfigWarning] = []
    settings: dict[str, _Entry] = {}
    _read_file(config_path, settings, warnings, (os.path.realpath(config_path),))
    config_dir = os.path.dirname(config_path)
    for entry in _override_entries(overrides, config_dir):
        settings[entry.name.lower()] = entry  # §1.1: the command line replaces the file's value

    converter = _Converter(warnings)
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(Config)}
    applied_from: dict[str, _Entry] = {}
    for key, entry in settings.items():
        spec = KEYS.get(key)
        if spec is None:
            if key == "include":  # only reachable from the command line
                converter.warn(entry, "include is only read from config files; ignored")
            elif key in OBSOLETE_KEYS:
                converter.warn(entry, f"obsolete key {entry.name!r} ignored; "
                                      "users come from UserDatabaseFile")
            else:
                converter.warn(entry, f"unknown key {entry.name!r} ignored")
            continue
        if spec.fallback_for is not None:
            primary = settings.get(spec.fallback_for)
            if primary is not None and primary.value.strip():
                continue
        if spec.empty_means_default and not entry.value.strip():
            continue  # reTurn's logging keys: empty means "not set"
        values[spec.field] = converter.convert(spec, entry, values[spec.field])
        applied_from[spec.field] = entry

    for spec in KEYS.values():
        if spec.kind is Kind.PATH and isinstance(values[spec.field], str):
            entry_or_none = applied_from.get(spec.field)
            folder = entry_or_none.base_dir if entry_or_none is not None else config_dir
            values[spec.field] = _resolve_bare_name(values[spec.field], folder)

    _validate(values, applied_from, config_path, warnings)
    return Config(**values), warnings


def _validate(values: dict[str, Any], applied_from: dict[str, _Entry], config_path: str,
              warnings: list[ConfigWarning]) -> None:
    def where(*fields: str) -> tuple[str, int | None]:
        for name in fields:
            entry = applied_from.get(name)
            if entry is not None:
                return entry.path, entry.line
        return config_path, None

    user_file = values["user_database_file"]
    secret_file = values["auth_shared_secret_file"]
    if not user_file and not (values["auth_shared_secret"] or secret_file):
        raise ConfigError("Missing user database option (UserDatabaseFile)", *where("user_database_file"))
    if user_file and (not os.path.isfile(user_file) or not os.access(user_file, os.R_OK)):
        raise ConfigError(f"UserDatabaseFile: cannot read {user_file!r}", *where("user_database_file"))
    if secret_file and (not os.path.isfile(secret_file) or not os.access(secret_file, os.R_OK)):
        raise ConfigError(f"AuthSharedSecretFile: cannot read {secret_file!r}", *where("auth_shared_secret_file"))
    if any(char in values["auth_shared_secret_separator"] for char in "0123456789"):
        raise ConfigError("AuthSharedSecretSeparator: a digit cannot end the EXPIRY",
                          *where("auth_shared_secret_separator"))

    try:
        values["metrics_address"] = str(ipaddress.ip_address(values["metrics_address"].strip()))
    except ValueError:
        raise ConfigError(f"MetricsAddress: {values['metrics_address']!r} is not an IPv4 or IPv6 address",
                          *where("metrics_address")) from None

    low, high = values["allocation_port_range_min"], values["allocation_port_range_max"]
    if low > high:
        raise ConfigError(f"AllocationPortRangeMin {low} is greater than AllocationPortRangeMax {high}",
                          *where("allocation_port_range_min", "allocation_port_range_max"))

    default_lifetime, max_lifetime = values["default_allocation_lifetime"], values["max_allocation_lifetime"]
    if default_lifetime > max_lifetime:
        path, line = where("default_allocation_lifetime", "max_allocation_lifetime")
        warnings.append(ConfigWarning(path, line or 0, (
            f"DefaultAllocationLifetime {default_lifetime} is greater than "
            f"MaxAllocationLifetime {max_lifetime}: "
            "like reTurn, small requests get the default and large ones the maximum")))
