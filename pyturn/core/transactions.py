"""Answers: success and error responses, their encoding (SOFTWARE, FINGERPRINT, MESSAGE-INTEGRITY), the
retransmission cache (RFC 8489 §6.3.1), the amplification rule and the rate limit of unauthenticated answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyturn.core.actions import Action, SendToClient
from pyturn.core.allocation import FiveTuple, Transport
from pyturn.core.auth import OFFERED_ALGORITHMS, Challenge, security_features
from pyturn.core.stats import RATE_LIMITED
from pyturn.core.timers import DeadlineKind
from pyturn.errors import TurnError
from pyturn.wire.codec import encode_message
from pyturn.wire.message import Attr, Message, MessageClass, error_response, response_for

if TYPE_CHECKING:
    from pyturn.core.state import CoreState

# RFC 8489 §6.3.1: keep a transaction's answer for 40 s, the whole time a client may retransmit (Ti = 39.5 s).
RESPONSE_CACHE_LIFETIME = 40.0
RESPONSES_KEPT = 8  # per allocation: a client has only a few transactions outstanding at once
AMPLIFICATION_LIMIT = 3  # unauthenticated answers stay within 3x the request's size (docs/security.md "Amplification")


def success_response(request: Message) -> Message:
    return response_for(request, MessageClass.SUCCESS)


def unknown_attributes_response(request: Message) -> Message:
    """RFC 8489 §6.3.1.1: 420 listing each unknown comprehension-required attribute once."""
    response = error_response_for(request, TurnError(420, "Unknown Attribute"))
    response.add(Attr.UNKNOWN_ATTRIBUTES, tuple(dict.fromkeys(request.unknown_required)))
    return response


def error_response_for(request: Message, error: TurnError) -> Message:
    return error_response(request, error.code, error.reason)


def encode_response(state: CoreState, request: Message, response: Message, key: bytes | None) -> bytes:
    if response.msg_class is MessageClass.ERROR:
        state.stats.error_response(response.method, response.get(Attr.ERROR_CODE)[0])
    software = state.software
    if software is not None:
        response.add(Attr.SOFTWARE, software)
    # RFC 8489 §9.2.4: a request that named a PASSWORD-ALGORITHM is answered with MESSAGE-INTEGRITY-SHA256, one
    # processed as MD5 with MESSAGE-INTEGRITY; a request signed with MESSAGE-INTEGRITY-SHA256 only is answered in
    # kind too (as §9.1.3 says for short-term credentials), since that client may check nothing else.
    sha256 = key is not None and (
        request.integrity_sha256_offset is not None or request.has(Attr.PASSWORD_ALGORITHM)
    )
    mi_key, mi_sha256_key = (None, key) if sha256 else (key, None)
    # RFC 8489 §14.7 / reTurn: FINGERPRINT is mirrored when the request carried one.
    data = encode_message(response, integrity_key=mi_key, integrity_sha256_key=mi_sha256_key,
                          fingerprint=request.has_fingerprint)
    if key is None and software is not None and len(data) > AMPLIFICATION_LIMIT * len(request.raw):
        # An unauthenticated answer may not amplify more than 3x: SOFTWARE is the first thing left out.
        response.attributes.pop()
        data = encode_message(response, fingerprint=request.has_fingerprint)
    return data


def reply(
    state: CoreState, request: Message, response: Message, five_tuple: FiveTuple, key: bytes | None
) -> SendToClient:
    """Encode a response; authenticated ones carry MESSAGE-INTEGRITY and are kept for retransmissions.

    The cache lives on the allocation, so it goes with it: nothing is kept for unauthenticated requests, and a
    retransmitted Refresh(LIFETIME 0) after the deletion gets 437, which RFC 8656 §7.3 tells clients to take
    as success. Unauthenticated and allocation-less answers are recomputed, with the same result.
    """
    data = encode_response(state, request, response, key)
    if key is not None:
        allocation = state.allocations.get(five_tuple)
        if allocation is not None:
            responses = allocation.responses
            if not responses:
                state.deadlines.push(state.now + RESPONSE_CACHE_LIFETIME, DeadlineKind.RESPONSES, allocation)
            elif len(responses) >= RESPONSES_KEPT:
                del responses[next(iter(responses))]  # the oldest
            responses[request.transaction_id] = (state.now + RESPONSE_CACHE_LIFETIME, data)
    return SendToClient(five_tuple, data)


def _is_loopback(host: str) -> bool:
    # Loopback sources cannot be spoofed from outside the host, so they cannot be reflection victims.
    return host.startswith("127.") or host == "::1"


def refuse(state: CoreState, request: Message, five_tuple: FiveTuple, error: TurnError) -> list[Action]:
    """An error answer before authentication, limited per source IP on UDP (docs/security.md "Rate limit")."""
    limiter = state.limiter
    if (
        limiter is not None
        and five_tuple.transport is Transport.UDP
        and not _is_loopback(five_tuple.client[0])
        and not limiter.allow(five_tuple.client[0], state.now)
    ):
        state.stats.auth_failure(RATE_LIMITED)
        return []
    if isinstance(error, Challenge):
        response = challenge(state, request, five_tuple, error)
    else:
        response = error_response_for(request, error)
    return [reply(state, request, response, five_tuple, None)]


def challenge(state: CoreState, request: Message, five_tuple: FiveTuple, error: Challenge) -> Message:
    """RFC 8489 §9.2.4: 401 and 438 carry the REALM and a fresh NONCE; with the nonce cookie, the Security
    Features and PASSWORD-ALGORITHMS (docs/compatibility.md "RFC 8489 authentication").

    The offer goes to every request with the magic cookie (RFC 3489 requests predate it). RFC 5389 clients
    ignore the comprehension-optional PASSWORD-ALGORITHMS and echo the longer nonce (29 characters, within the
    128 of RFC 8489 §14.10). Over UDP it goes only when the answer with it stays within 3x the request
    (docs/security.md "Amplification"): the smallest requests get the plain RFC 5389 challenge.
    """
    features = 0 if request.classic else security_features(state.users)
    while True:
        response = error_response_for(request, error)
        response.add(Attr.REALM, state.config.authentication_realm)
        response.add(Attr.NONCE, state.nonces.issue(state.now, features=features))
        if not features:
            return response
        response.add(Attr.PASSWORD_ALGORITHMS, OFFERED_ALGORITHMS)
        if five_tuple.transport is not Transport.UDP or len(
            encode_message(response, fingerprint=request.has_fingerprint)
        ) <= AMPLIFICATION_LIMIT * len(request.raw):
            return response
        features = 0
