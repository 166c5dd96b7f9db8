"""Computing shared-secret (TURN REST) credentials, as the web service next to the TURN server does.

``rest_credentials(secret)`` gives a username and password pyturn accepts while ``AuthSharedSecret`` (or
``shared_secret=``) holds that secret; the scheme is described in pyturn.core.sharedsecret.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pyturn.core.sharedsecret import DEFAULT_SEPARATOR, rest_password, rest_username

__all__ = ["DEFAULT_TTL", "ice_servers_entry", "rest_credentials"]

DEFAULT_TTL = 86400  # one day, the draft's and coturn's usual lifetime


def rest_credentials(
    secret: str | bytes,
    user: str | None = None,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
    *,
    separator: str = DEFAULT_SEPARATOR,
) -> tuple[str, str]:
    """(username, password) valid for ``ttl`` seconds from ``now`` (default: the current Unix time).

    The username is ``EXPIRY`` or ``EXPIRY:user``; the password is base64(HMAC-SHA1(secret, username)).
    """
    current = time.time() if now is None else now
    username = rest_username(int(current) + int(ttl), user, separator)
    return username, rest_password(secret, username)


def ice_servers_entry(uris: Sequence[str], username: str, password: str) -> dict[str, Any]:
    """One ``iceServers`` entry of a browser's RTCConfiguration."""
    return {"urls": list(uris), "username": username, "credential": password}
