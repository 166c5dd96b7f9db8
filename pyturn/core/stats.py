"""Plain integer counters the core and the adapters keep for pyturn.net.metrics to publish.

Pure: no clock, no I/O, no prometheus-client. Every key is drawn from a small fixed set (method names, error
codes the server itself sends, transports, address families), never from a username, an address or a port, so
the published label sets stay bounded whatever clients send.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyturn.wire.message import Method

# STUN methods a label may name (RFC 8489 §18.2, RFC 8656 §17, RFC 3489 §11.1); any other method is "other".
METHOD_NAMES: dict[int, str] = {
    Method.BINDING: "binding",
    Method.SHARED_SECRET: "shared_secret",
    Method.ALLOCATE: "allocate",
    Method.REFRESH: "refresh",
    Method.SEND: "send",
    Method.DATA: "data",
    Method.CREATE_PERMISSION: "create_permission",
    Method.CHANNEL_BIND: "channel_bind",
}
OTHER_METHOD = "other"

# Why an authenticated request failed (pyturn.core.auth sets Challenge.failure; the core adds the others).
UNKNOWN_USER = "unknown_user"
BAD_INTEGRITY = "bad_integrity"
STALE_NONCE = "stale_nonce"
EXPIRED_CREDENTIALS = "expired_credentials"  # time-limited (shared-secret) credentials past their expiry
MALFORMED = "malformed"  # MESSAGE-INTEGRITY without USERNAME, REALM or NONCE (400)
RATE_LIMITED = "rate_limited"  # an error answer withheld by UnauthenticatedRateLimit
MD5_ONLY_USER = "md5_only_user"  # a SHA-256 request (RFC 8489 §18.5.1.2) for a user with an MD5 key only (htdigest)
OTHER_FAILURE = "other"
AUTH_FAILURE_REASONS = (UNKNOWN_USER, BAD_INTEGRITY, STALE_NONCE, EXPIRED_CREDENTIALS, MALFORMED, RATE_LIMITED,
                        MD5_ONLY_USER, OTHER_FAILURE)


def method_name(method: int) -> str:
    return METHOD_NAMES.get(method, OTHER_METHOD)


class CoreStats:
    """What TurnServerCore counts as it answers: requests, error responses, authentication failures and
    allocations created. Keys are (method, code), reason or (transport, family) tuples of fixed sets."""

    __slots__ = ("allocations_created", "auth_failures", "error_responses", "requests")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.error_responses: dict[tuple[str, int], int] = {}
        self.auth_failures: dict[str, int] = dict.fromkeys(AUTH_FAILURE_REASONS, 0)
        self.allocations_created: dict[tuple[str, int], int] = {}

    def request(self, method: int) -> None:
        name = METHOD_NAMES.get(method, OTHER_METHOD)
        self.requests[name] = self.requests.get(name, 0) + 1

    def error_response(self, method: int, code: int) -> None:
        # The codes are the server's own (RFC 8489 §14.8, RFC 8656 §17): a handful, so the key set stays small.
        key = (METHOD_NAMES.get(method, OTHER_METHOD), code)
        self.error_responses[key] = self.error_responses.get(key, 0) + 1

    def auth_failure(self, reason: str) -> None:
        if reason not in self.auth_failures:
            reason = OTHER_FAILURE
        self.auth_failures[reason] += 1

    def allocation_created(self, transport: str, family: int) -> None:
        key = (transport, family)
        self.allocations_created[key] = self.allocations_created.get(key, 0) + 1


class RelayCounter:
    """Datagrams and payload bytes relayed in one direction over one client transport.

    The relay loops count into locals and add them here once per wake-up (pyturn.net), so the hot path
    pays two attribute additions per batch of up to DRAIN_BATCH datagrams, not per datagram.
    """

    __slots__ = ("octets", "packets")

    def __init__(self) -> None:
        self.packets = 0
        self.octets = 0


@dataclass(slots=True)
class ReloadStats:
    """User reloads a Server attempted, and the wall-clock time (given by the Server) of the last good load."""

    successes: int = 0
    failures: int = 0
    last_success: float = 0.0
