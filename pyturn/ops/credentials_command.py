"""`pyturn credentials`: print shared-secret (TURN REST) credentials, or a browser's iceServers JSON.

The secret comes from ``--secret-file`` (its first secret), else from the config's AuthSharedSecretFile, else
from its AuthSharedSecret (the first one listed: when rotating, put the new secret first). The secret itself is
never printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from pyturn.config import Config
from pyturn.core.sharedsecret import DEFAULT_SEPARATOR, SecretFileError
from pyturn.credentials import DEFAULT_TTL, ice_servers_entry, rest_credentials
from pyturn.errors import ConfigError
from pyturn.files.configfile import load_config
from pyturn.files.secretfile import load_secret_file
from pyturn.ops.daemon import EXIT_CONFIG, EXIT_OK
from pyturn.ops.subcommands import EXIT_NO_INPUT, CommandParser

WILDCARDS = ("0.0.0.0", "::", "")


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="pyturn credentials",
        description="Print a TURN REST username and password computed from a shared secret, or with --json "
                    "the iceServers entry a WebRTC page passes to RTCPeerConnection.",
        epilog="exit codes: 0 printed, 64 usage, 66 secret file unreadable or empty, 78 configuration error",
    )
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="reTurnServer.config: the secret, the separator and the ports of the URIs")
    parser.add_argument("--secret-file", metavar="FILE", help="file of secrets, one a line; the first is used")
    parser.add_argument("--user", metavar="NAME", help="name after the expiry in the username (EXPIRY:NAME)")
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL, metavar="SECONDS",
                        help=f"seconds the credentials stay valid (default {DEFAULT_TTL})")
    parser.add_argument("--json", action="store_true", help="print {\"iceServers\": [...]} instead")
    parser.add_argument("--host", metavar="NAME",
                        help="host name in the URIs (default: the config's TurnAddress; TLS needs the "
                             "certificate's name)")
    parser.add_argument("--uri", action="append", default=[], metavar="URI",
                        help="a TURN URI to list instead of those derived from the config (repeatable)")
    return parser


def config_uris(config: Config, host: str | None) -> list[str]:
    """RFC 7065 URIs of a configuration's listeners: UDP and TCP on TurnPort, TLS on TlsTurnPort."""
    name = host or config.turn_address
    if name in WILDCARDS:
        raise ConfigError("TurnAddress is a wildcard: pass --host with the name clients use")
    if ":" in name:
        name = f"[{name}]"
    uris = [f"turn:{name}:{config.turn_port}?transport=udp", f"turn:{name}:{config.turn_port}?transport=tcp"]
    if config.tls_turn_port:
        uris.append(f"turns:{name}:{config.tls_turn_port}?transport=tcp")
    return uris


def _secret(secret_file: str | None, config: Config | None) -> bytes | str | None:
    if secret_file:
        return load_secret_file(secret_file)[0]
    if config is not None and config.auth_shared_secret_file:
        return load_secret_file(config.auth_shared_secret_file)[0]
    if config is not None and config.auth_shared_secret:
        return config.auth_shared_secret[0]
    return None


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    arguments = parser.parse_args(list(argv))
    if arguments.ttl <= 0:
        parser.error("--ttl must be a positive number of seconds")
    config: Config | None = None
    try:
        if arguments.config:
            config, _warnings = load_config(arguments.config)
        secret = _secret(arguments.secret_file, config)
        if secret is None:
            parser.error("no secret: pass --secret-file, or -c with a config that sets AuthSharedSecret(File)")
        uris = list(arguments.uri)
        if arguments.json and not uris:
            if config is None and not arguments.host:
                parser.error("--json needs URIs: pass -c CONFIG, --host or --uri")
            uris = config_uris(config or Config(), arguments.host)
        elif not uris and (config is not None or arguments.host):
            try:
                uris = config_uris(config or Config(), arguments.host)
            except ConfigError:
                uris = []  # a wildcard TurnAddress and no --host: the plain output does without URIs
    except SecretFileError as error:
        sys.stderr.write(f"pyturn credentials: {error}\n")
        return EXIT_NO_INPUT
    except ConfigError as error:
        sys.stderr.write(f"pyturn credentials: {error}\n")
        return EXIT_CONFIG
    separator = config.auth_shared_secret_separator if config is not None else DEFAULT_SEPARATOR
    if arguments.user is not None and (not arguments.user or "\n" in arguments.user):
        parser.error("--user must be a non-empty single line")
    username, password = rest_credentials(secret, arguments.user, arguments.ttl, separator=separator)
    if arguments.json:
        document = {"iceServers": [ice_servers_entry(uris, username, password)], "ttl": arguments.ttl}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(f"username: {username}\npassword: {password}\n")
        for uri in uris:
            sys.stdout.write(f"uri: {uri}\n")
    return EXIT_OK
