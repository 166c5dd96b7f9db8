"""docs/guides: each guide's pyturn config runs, and credentials computed the way that service computes them
(from the secret and lifetime written in the guide's own config lines) allocate; the guides' ports agree."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import time
from pathlib import Path

import pytest
import yaml
from interop import LOOPBACK, MiniTurnClient, TurnRequestFailed, free_port, pyturn_process

pytestmark = pytest.mark.interop

GUIDES = Path(__file__).resolve().parents[2] / "docs" / "guides"


def _blocks(guide: str, language: str) -> list[str]:
    text = (GUIDES / guide).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def _pyturn_config(guide: str) -> dict[str, str]:
    (block,) = [b for b in _blocks(guide, "ini") if b.startswith("# /etc/reTurn/reTurnServer.config")]
    return dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                for line in block.splitlines() if line and not line.startswith("#"))


def _service_password(secret: str, username: str) -> str:
    """What every one of these services does (Synapse in Python, Talk in PHP, prosody in Lua)."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


async def _allocate_against_guide(guide: str, secret: str, tmp_path: Path,
                                  credentials: list[tuple[str, str]]) -> dict[str, str]:
    """Runs the guide's pyturn config (moved to loopback, the secret file in tmp_path) and allocates with each."""
    keys = _pyturn_config(guide)
    assert keys["AuthSharedSecretFile"] == "/etc/reTurn/turn-secret"
    assert keys["UserDatabaseFile"] == ""
    config = tmp_path / "reTurnServer.config"
    config.write_text("".join(f"{key} = {value}\n" for key, value in keys.items()))
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text(secret + "\n")  # what `openssl rand -hex 32 > /etc/reTurn/turn-secret` left there
    port = free_port()
    overrides = [f"--TurnAddress={LOOPBACK}", "--TurnV6Address=", f"--TurnPort={port}", "--TlsTurnPort=0",
                 f"--AuthSharedSecretFile={secret_file}", "--RunAsUser=", "--RunAsGroup=",
                 "--UserDatabaseCheckInterval=0"]
    with pyturn_process(config, port, *overrides) as server:
        for username, password in credentials:
            with MiniTurnClient((LOOPBACK, port), username, password) as client:
                relayed = await client.allocate()
                assert relayed[0] == LOOPBACK
                assert client.realm == keys["AuthenticationRealm"]
                await client.refresh(0)
        assert secret not in server.log()
    return keys


async def test_guide_matrix_synapse(tmp_path: Path) -> None:
    (homeserver,) = _blocks("matrix-synapse.md", "yaml")
    synapse = yaml.safe_load(homeserver)
    secret, lifetime_ms = synapse["turn_shared_secret"], synapse["turn_user_lifetime"]
    # Synapse: expiry = (now in ms + turn_user_lifetime) / 1000, username "<expiry>:<Matrix user ID>".
    expiry = (int(time.time() * 1000) + lifetime_ms) // 1000
    username = f"{expiry}:@alice:matrix.falcot.com"
    keys = await _allocate_against_guide("matrix-synapse.md", secret, tmp_path,
                                         [(username, _service_password(secret, username))])
    assert synapse["turn_uris"] == [
        f"turn:turn.falcot.com:{keys['TurnPort']}?transport=udp",
        f"turn:turn.falcot.com:{keys['TurnPort']}?transport=tcp",
        f"turns:turn.falcot.com:{keys['TlsTurnPort']}?transport=tcp",
    ]


async def test_guide_matrix_synapse_expired_credentials_are_refused(tmp_path: Path) -> None:
    (homeserver,) = _blocks("matrix-synapse.md", "yaml")
    secret = yaml.safe_load(homeserver)["turn_shared_secret"]
    username = f"{int(time.time()) - 1}:@alice:matrix.falcot.com"
    with pytest.raises(TurnRequestFailed) as refused:
        await _allocate_against_guide("matrix-synapse.md", secret, tmp_path,
                                      [(username, _service_password(secret, username))])
    assert refused.value.code == 401


async def test_guide_nextcloud_talk(tmp_path: Path) -> None:
    commands = "\n".join(_blocks("nextcloud-talk.md", "sh"))
    adds = re.findall(r"occ talk:turn:add (\S+) turn\.falcot\.com:(\d+) (\S+) --secret=(\S+)", commands)
    assert {(scheme, protocols) for scheme, _, protocols, _ in adds} == {("turn", "udp,tcp"), ("turns", "tcp")}
    (secret,) = {secret for *_, secret in adds}
    # Talk: "<now + 86400>:<16 random characters>"; very old releases: "<now + 86400>".
    expiry = int(time.time()) + 86400
    random_part = "".join(secrets.choice(string.ascii_letters + string.digits + "+/") for _ in range(16))
    credentials = [(name, _service_password(secret, name)) for name in (f"{expiry}:{random_part}", f"{expiry}")]
    keys = await _allocate_against_guide("nextcloud-talk.md", secret, tmp_path, credentials)
    ports = {scheme: int(port) for scheme, port, _, _ in adds}
    assert ports == {"turn": int(keys["TurnPort"]), "turns": int(keys["TlsTurnPort"])}


async def test_guide_jitsi(tmp_path: Path) -> None:
    (lua,) = _blocks("jitsi.md", "lua")
    (secret,) = re.findall(r'external_service_secret = "([^"]+)"', lua)
    services = re.findall(r'\{ type = "(\w+)", host = "turn\.falcot\.com", port = (\d+)(.*?)\}', lua)
    ttls = {int(ttl) for *_, rest in services for ttl in re.findall(r"ttl = (\d+)", rest)}
    (ttl,) = ttls
    # prosody mod_external_services, algorithm "turn": "<now + ttl>", or "<now + ttl>:<username>" when the service
    # entry names a username.
    expiry = int(time.time()) + ttl
    credentials = [(name, _service_password(secret, name)) for name in (f"{expiry}", f"{expiry}:jitsi-meet")]
    keys = await _allocate_against_guide("jitsi.md", secret, tmp_path, credentials)
    ports = {kind: int(port) for kind, port, _ in services}
    assert ports == {"stun": int(keys["TurnPort"]), "turn": int(keys["TurnPort"]), "turns": int(keys["TlsTurnPort"])}
