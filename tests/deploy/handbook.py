"""The Debian handbook's reTurn deployment (§11.8.2): pyturn on 198.51.100.19 inside a private network namespace.

The `deployment` fixture (conftest.py) builds one per test module: starting it costs about a second, and the
scenarios do not disturb each other (every client has its own allocation; the users test restores the file).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from netns import (
    ALT_STUN_ADDRESS,
    PEER_ADDRESS,
    TURN_ADDRESS,
    TURN_V6_ADDRESS,
    Htdigest,
    Namespace,
    PyturnServer,
    pyturn_in,
    require_root_netns,
    write_config,
)

REALM = "myrealm"
USERS = {"alice": "wonderland", "bob": "builder"}
TURN_PORT = 3478
ALT_STUN_PORT = 3479
PORT_RANGE = (49152, 65535)  # the default AllocationPortRangeMin..Max


def handbook_config(users_file: Path) -> dict[str, object]:
    """The handbook's reTurnServer.config lines; no AllowedPeerAddresses: the default peer policy."""
    return {
        "TurnAddress": TURN_ADDRESS,
        "TurnV6Address": TURN_V6_ADDRESS,
        "TurnPort": TURN_PORT,
        "TlsTurnPort": 0,  # no certificate in this rig
        "AltStunAddress": ALT_STUN_ADDRESS,
        "AltStunPort": ALT_STUN_PORT,
        "AuthenticationRealm": REALM,
        "UserDatabaseFile": users_file.name,
        "UserDatabaseHashedPasswords": "true",
        "UserDatabaseCheckInterval": 0,  # users change on SIGHUP only, so the reload test is deterministic
        "LoggingType": "cout",
        "LogLevel": "INFO",
    }


@dataclass
class Deployment:
    namespace: Namespace
    server: PyturnServer
    users_file: Path
    htdigest: Htdigest
    peer_host: Namespace  # 198.51.100.30, another machine on the server's network

    @property
    def turn(self) -> tuple[str, int]:
        return (TURN_ADDRESS, TURN_PORT)


@contextlib.contextmanager
def handbook_deployment(directory: Path, changes: Mapping[str, object] | None = None) -> Iterator[Deployment]:
    """Users made with htdigest, the handbook config (plus `changes`), a namespace and `pyturn -c` in it."""
    require_root_netns()
    users_file = directory / "users.txt"
    htdigest = Htdigest()
    for username, password in USERS.items():
        htdigest.add(users_file, REALM, username, password)
    config = write_config(directory, {**handbook_config(users_file), **(changes or {})})
    with Namespace(lan=True) as namespace:  # lan: Chromium ignores loopback interfaces, see Namespace
        peer_host = namespace.add_host(PEER_ADDRESS)
        with pyturn_in(namespace, config, (TURN_ADDRESS, TURN_PORT)) as server:
            yield Deployment(namespace, server, users_file, htdigest, peer_host)
