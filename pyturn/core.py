"""The sans-IO STUN/TURN server: bytes, addresses and the time in; bytes to send and actions out.

The asyncio adapters (pyturn.transport) own every socket. For an Allocate that passes every check the core
asks for a relay socket (OpenRelay) and the adapter answers with relay_opened() or relay_failed(). For EVEN-PORT
with the R bit the adapter also binds the odd port above and holds it until the RESERVATION-TOKEN is redeemed
(OpenRelay.reserved takes that socket over) or the core lets it go (ReleasePort). For the
relay hot path the core keeps route tables the adapter reads directly:

* ``routes(transport, server)[(client, channel)] -> (relay_handle, peer)`` for client -> peer ChannelData;
* ``Allocation.channel_for_peer[peer] -> channel`` for peer -> client ChannelData.

Everything else (STUN, Send/Data indications, unbound channels) goes through handle_client / handle_peer.
"""

from __future__ import annotations

import hmac
import logging
import os
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from hashlib import sha256
from typing import Any

from pyturn.allocation import (
    CHANNEL_LIFETIME,
    CHANNEL_MAX,
    CHANNEL_MIN,
    PERMISSION_LIFETIME,
    RESERVATION_LIFETIME,
    Allocation,
    ChannelBinding,
    DeadlineHeap,
    DeadlineKind,
    FiveTuple,
    Transport,
)
from pyturn.auth import Challenge, Credentials, NonceSigner, UserLookup, authenticate
from pyturn.config import Config
from pyturn.errors import StunDecodeError, TurnError
from pyturn.faults import FailureInjector, reason_for
from pyturn.policy import PeerPolicy, Verdict
from pyturn.ports import PortPool
from pyturn.ratelimit import SourceLimiter
from pyturn.stats import MALFORMED, RATE_LIMITED, CoreStats
from pyturn.stun import (
    Address,
    Attr,
    Message,
    MessageClass,
    Method,
    decode_channel_data,
    decode_message,
    encode_channel_data,
    encode_message,
)

log = logging.getLogger(__name__)

# RFC 8489 §6.3.1: keep a transaction's answer for 40 s, the whole time a client may retransmit (Ti = 39.5 s).
RESPONSE_CACHE_LIFETIME = 40.0
RESPONSES_KEPT = 8  # per allocation: a client has only a few transactions outstanding at once
UDP_PROTOCOL = 17  # RFC 8656 §14.7 REQUESTED-TRANSPORT value for UDP
FAMILY_IPV4 = 1
FAMILY_IPV6 = 2
CHANGE_IP = 0x04  # RFC 5780 §7.2 CHANGE-REQUEST flags
CHANGE_PORT = 0x02
_TOKEN_BODY = struct.Struct("!HHB")  # relay port, issue time (seconds, mod 2**16), address family
_TOKEN_MAC = 3  # bytes of MAC in the 8-byte token: forging one only names a port, it authorises nothing
LEGACY_CHANNEL_MAX = 0x7FFF  # RFC 5766 §11's top channel number (LegacyChannelNumbers)
AMPLIFICATION_LIMIT = 3  # unauthenticated answers stay within 3x the request's size (anchors.md §5.4)


# ----------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send on the client's 5-tuple (UDP: from the listener bound at five_tuple.server; TCP/TLS: its stream)."""

    five_tuple: FiveTuple
    data: bytes


@dataclass(frozen=True, slots=True)
class SendFrom:
    """UDP only: send from the listener bound at `source` to `destination` (RFC 5780 alternate address)."""

    source: Address
    destination: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenRelay:
    """Bind a UDP relay socket at (host, port); host may be a wildcard, then bind the address the client reached.

    reserve_next (EVEN-PORT with R, RFC 8656 §7.2): also bind port+1 on the same address and hold that socket for
    the RESERVATION-TOKEN; when either bind fails with EADDRINUSE, report the port that failed. reserved: `port`
    is a redeemed token's; take over the socket held for it if this process holds one, else bind it.
    """

    token: int
    five_tuple: FiveTuple
    family: int
    host: str
    port: int
    dont_fragment: bool
    reserve_next: bool = False
    reserved: bool = False


@dataclass(frozen=True, slots=True)
class ReleasePort:
    """Close the socket held for a reservation: its token expired or can no longer be redeemed."""

    family: int
    port: int


@dataclass(frozen=True, slots=True)
class CloseRelay:
    handle: Any


@dataclass(frozen=True, slots=True)
class SendToPeer:
    handle: Any
    peer: Address
    data: bytes


# ------------------------------------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class AllocationCreated:
    five_tuple: FiveTuple
    username: str
    relayed: Address
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationRefreshed:
    five_tuple: FiveTuple
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationDeleted:
    five_tuple: FiveTuple
    reason: str  # "refresh", "expired", "closed", "shutdown"
    handle: Any


@dataclass(frozen=True, slots=True)
class PermissionInstalled:
    five_tuple: FiveTuple
    ip: str


@dataclass(frozen=True, slots=True)
class ChannelBound:
    five_tuple: FiveTuple
    channel: int
    peer: Address


@dataclass(frozen=True, slots=True)
class AuthFailed:
    five_tuple: FiveTuple
    code: int
    username: str | None
    reason: str = ""  # why (pyturn.stats.AUTH_FAILURE_REASONS, e.g. "expired_credentials"); never the secret


Event = AllocationCreated | AllocationRefreshed | AllocationDeleted | PermissionInstalled | ChannelBound | AuthFailed
Action = SendToClient | SendFrom | OpenRelay | CloseRelay | SendToPeer | ReleasePort | Event


class RelayFailure(Enum):
    PORT_IN_USE = "port in use"
    FAMILY_UNAVAILABLE = "address family unavailable"
    DONT_FRAGMENT = "DF cannot be set"  # the socket option failed: the relay is not kept
    OTHER = "bind failed"


@dataclass(slots=True)
class _PendingAllocation:
    request: Message
    five_tuple: FiveTuple
    credentials: Credentials
    lifetime: int
    family: int
    host: str
    port: int
    dont_fragment: bool
    even: bool
    reserve_next: bool
    from_reservation: bool
    attempts: int = 1

    def release_ports(self, ports: PortPool) -> None:
        ports.release(self.port)
        if self.reserve_next:
            ports.release(self.port + 1)


@dataclass(slots=True)
class _Reservation:
    port: int
    expires: float
    family: int


def _family_of(host: str) -> int:
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


def _is_loopback(host: str) -> bool:
    # Loopback sources cannot be spoofed from outside the host, so they cannot be reflection victims.
    return host.startswith("127.") or host == "::1"


def _software_value(config: Config) -> str | None:
    name = config.software_name
    if not name:
        return None
    if config.pad_software_name:
        # reTurn pads with spaces to a multiple of 4 for legacy clients (reTurn.md §2.1).
        name += " " * (-len(name.encode("utf-8", "surrogateescape")) % 4)
    return name


class TurnServerCore:
    """The whole protocol state of one server process: allocations, nonces, ports, routes."""

    def __init__(
        self,
        config: Config,
        *,
        users: UserLookup,
        secret: bytes | None = None,
        policy: PeerPolicy | None = None,
        rng: random.Random | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self._users = users
        self._secret = secret if secret is not None else randbytes(32)
        self._nonces = NonceSigner(self._secret, config.nonce_lifetime)
        self.policy = policy if policy is not None else PeerPolicy(
            denied=config.denied_peer_addresses,
            allowed=config.allowed_peer_addresses,
            relay_ports=(config.allocation_port_range_min, config.allocation_port_range_max),
        )
        self._rng = rng if rng is not None else random.Random(randbytes(16))
        self._randbytes = randbytes
        self._software = _software_value(config)
        self._ports = PortPool(config.allocation_port_range_min, config.allocation_port_range_max, self._rng)
        self._allocations: dict[FiveTuple, Allocation] = {}
        self._by_handle: dict[Any, Allocation] = {}
        self._per_user: dict[tuple[str, str], int] = {}
        self._pending: dict[int, _PendingAllocation] = {}
        self._next_token = 0
        self._reservations: dict[bytes, _Reservation] = {}
        self._deadlines = DeadlineHeap(self._deadline_current)
        self._routes: dict[tuple[Transport, Address], dict[tuple[Address, int], tuple[Any, Address]]] = {}
        self._alternate: tuple[Address, Address] | None = None
        self._data_tid_prefix = randbytes(4)
        self._data_tid_counter = 0
        self._now = 0.0  # the time of the call being handled, for deadlines set deep inside handlers
        rate = config.unauthenticated_rate_limit
        self._limiter = SourceLimiter(rate) if rate > 0 else None
        self.stats = CoreStats()  # read by pyturn.metrics at scrape time
        self.faults = FailureInjector()  # test rigs: errors injected after authentication (Server.fail_next)

    # ------------------------------------------------------------------------------------------ set-up
    def set_user_lookup(self, users: UserLookup) -> None:
        """Swap the user source in one assignment (reload); existing allocations keep their key."""
        self._users = users

    def set_server_addresses(
        self,
        relay: Iterable[str],
        host: Iterable[str] = (),
        *,
        relay_ports: tuple[int, int] | None = None,
        listener_ports: Iterable[int] = (),
    ) -> None:
        """The server's own IPs (docs/security.md "Peer policy"): ``relay`` ones, where other allocations' relays
        are reachable on relay-range ports only, and the host's other addresses, never valid peers. Adds to what
        is known already (relay IPs learned from bound relays stay); ``relay_ports`` is the whole relay range
        when this core serves only a slice of it (Workers); ``listener_ports`` are never relays."""
        self.policy = self.policy.with_server_addresses(
            relay, host, relay_ports=relay_ports, listener_ports=listener_ports
        )

    def set_alternate(self, primary: Address, other: Address) -> None:
        """The bound (TurnAddress, TurnPort) and (AltStunAddress, AltStunPort) pair of RFC 5780 mode."""
        self._alternate = (primary, other)

    def routes(self, transport: Transport, server: Address) -> dict[tuple[Address, int], tuple[Any, Address]]:
        """The client -> peer ChannelData route table of one listening address (shared, updated in place)."""
        return self._routes.setdefault((transport, server), {})

    @property
    def allocations(self) -> dict[FiveTuple, Allocation]:
        return self._allocations

    @property
    def ports(self) -> PortPool:
        """The relay port pool (read by pyturn.metrics)."""
        return self._ports

    def allocation_for_handle(self, handle: Any) -> Allocation | None:
        return self._by_handle.get(handle)

    def next_deadline(self) -> float | None:
        return self._deadlines.next_deadline()

    # ---------------------------------------------------------------------------------------- entry points
    def handle_client(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Action]:
        """One datagram (UDP) or one framed message (TCP/TLS) from a client."""
        self._now = now
        if len(data) < 4:
            return []
        if data[0] & 0xC0:
            return self._handle_channel_data(data, five_tuple, now)
        try:
            message = decode_message(data, keep_invalid=True)
        except StunDecodeError:
            return []  # malformed STUN is dropped without an answer (RFC 8489 §6.3)
        if message.msg_class is MessageClass.REQUEST:
            self.stats.request(message.method)
            # RFC 8489 §6.3.1: a retransmission (same 5-tuple, same transaction id) gets the first answer again.
            allocation = self._allocations.get(five_tuple)
            if allocation is not None:
                cached = allocation.responses.get(message.transaction_id)
                if cached is not None and cached[0] > now:
                    return [SendToClient(five_tuple, cached[1])]
            return self._handle_request(message, five_tuple, now)
        if message.msg_class is MessageClass.INDICATION and message.method == Method.SEND:
            return self._handle_send(message, five_tuple, now)
        return []  # other indications (Binding keepalives) and responses are ignored

    def handle_peer(self, handle: Any, data: bytes, peer: Address, now: float) -> list[Action]:
        """A datagram a peer sent to a relay socket (RFC 8656 §11.3 and §12.4)."""
        allocation = self._by_handle.get(handle)
        if allocation is None or not allocation.has_permission(peer[0], now):
            return []  # RFC 8656 §9: no permission, no relaying
        if not self.policy.allows(peer[0], peer[1]):
            return []  # a permission for one of our IPs admits only other relays (relay-range ports)
        five_tuple = allocation.five_tuple
        channel = allocation.channel_for_peer.get(peer)
        if channel is not None:
            pad = five_tuple.transport is not Transport.UDP and self.config.tcp_channel_data_padding
            return [SendToClient(five_tuple, encode_channel_data(channel, data, pad=pad))]
        self._data_tid_counter += 1
        tid = self._data_tid_prefix + self._data_tid_counter.to_bytes(8, "big")
        indication = Message(Method.DATA, MessageClass.INDICATION, tid)
        indication.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data)
        return [SendToClient(five_tuple, encode_message(indication))]

    def relay_opened(self, token: int, handle: Any, bound: Address, now: float) -> list[Action]:
        """The adapter bound the relay socket asked for by OpenRelay(token); `bound` is its local address."""
        self._now = now
        pending = self._pending.pop(token, None)
        if pending is None:
            return [CloseRelay(handle)]
        five_tuple = pending.five_tuple
        if five_tuple in self._allocations:  # only an adapter that binds asynchronously could get here
            pending.release_ports(self._ports)
            held = [ReleasePort(pending.family, bound[1] + 1)] if pending.reserve_next else []
            return [CloseRelay(handle), *held]
        reservation_token: bytes | None = None
        if pending.reserve_next:
            reservation_token = self._reservation_token(bound[1] + 1, pending.family, now)
            self._reservations[reservation_token] = _Reservation(
                bound[1] + 1, now + RESERVATION_LIFETIME, pending.family
            )
            self._deadlines.push(now + RESERVATION_LIFETIME, DeadlineKind.RESERVATION, None, reservation_token)
        external = self.config.external_v6_address if pending.family == FAMILY_IPV6 else self.config.external_address
        relayed = (external, bound[1]) if external else bound
        if bound[0] not in self.policy.relay_addresses:
            self._learn_relay_address(bound[0])
        credentials = pending.credentials
        allocation = Allocation(
            five_tuple=five_tuple,
            username=credentials.username,
            realm=credentials.realm,
            key=credentials.key,
            relay_handle=handle,
            relayed=relayed,
            expires=now + pending.lifetime,
            dont_fragment=pending.dont_fragment,
            reserved_port=bound[1] + 1 if pending.reserve_next else None,
        )
        self._allocations[five_tuple] = allocation
        self._by_handle[handle] = allocation
        user = (credentials.username, credentials.realm)
        self._per_user[user] = self._per_user.get(user, 0) + 1
        allocation.scheduled = allocation.expires
        self._deadlines.push(allocation.expires, DeadlineKind.ALLOCATION, allocation)
        self.stats.allocation_created(five_tuple.transport.value, pending.family)
        log.info(
            "allocation %s:%d/%s for %r relayed at %s:%d for %ds",
            five_tuple.client[0], five_tuple.client[1], five_tuple.transport.value,
            credentials.username, relayed[0], relayed[1], pending.lifetime,
        )
        response = self._success(pending.request)
        response.add(Attr.XOR_RELAYED_ADDRESS, relayed)
        response.add(Attr.LIFETIME, pending.lifetime)
        if reservation_token is not None:
            response.add(Attr.RESERVATION_TOKEN, reservation_token)
        response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
        return [
            self._reply(pending.request, response, five_tuple, credentials.key),
            AllocationCreated(five_tuple, credentials.username, relayed, pending.lifetime),
        ]

    def relay_failed(
        self, token: int, failure: RelayFailure, now: float, *, port: int | None = None
    ) -> list[Action]:
        """The adapter could not bind the relay socket asked for by OpenRelay(token); `port` is the one whose bind
        failed when it is not OpenRelay.port (the odd port of an EVEN-PORT pair)."""
        self._now = now
        pending = self._pending.pop(token, None)
        if pending is None:
            return []
        if failure is RelayFailure.PORT_IN_USE:
            busy = pending.port if port is None else port
            # Another process holds `busy`: skip it for a while, free the rest of the pair, and go on walking the
            # range from here. Every candidate is tried at most once, so 508 means the range is really exhausted
            # (RFC 8656 §7.2), however many ports other processes hold.
            self._ports.mark_busy(busy, now)
            for taken in (pending.port, pending.port + 1) if pending.reserve_next else (pending.port,):
                if taken != busy:
                    self._ports.release(taken)
            if not pending.from_reservation and pending.attempts <= self._ports.size:
                port = self._ports.take(now, even=pending.even, with_next=pending.reserve_next, after=pending.port)
                if port is not None:
                    pending.port = port
                    pending.attempts += 1
                    return [self._open_relay(pending)]
            error = TurnError(508, "Insufficient Capacity")
        else:
            pending.release_ports(self._ports)
            if failure is RelayFailure.FAMILY_UNAVAILABLE:
                error = TurnError(440, "Address Family not Supported")
            elif failure is RelayFailure.DONT_FRAGMENT:
                # RFC 8656 §7.2: a DONT-FRAGMENT the server cannot honour is treated as an unknown
                # comprehension-required attribute: 420 listing it.
                response = self._error(pending.request, TurnError(420, "Unknown Attribute"))
                response.add(Attr.UNKNOWN_ATTRIBUTES, (Attr.DONT_FRAGMENT,))
                response.add(Attr.XOR_MAPPED_ADDRESS, pending.five_tuple.client)
                return [self._reply(pending.request, response, pending.five_tuple, pending.credentials.key)]
            else:
                error = TurnError(508, "Insufficient Capacity")
        response = self._error(pending.request, error)
        response.add(Attr.XOR_MAPPED_ADDRESS, pending.five_tuple.client)
        return [self._reply(pending.request, response, pending.five_tuple, pending.credentials.key)]

    def connection_closed(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """A TCP/TLS client went away: its allocation dies with it (RFC 8656 §7)."""
        allocation = self._allocations.get(five_tuple)
        if allocation is None:
            return []
        return self._delete(allocation, "closed")

    def tick(self, now: float) -> list[Action]:
        """Expire whatever is due; call about once a second."""
        self._now = now
        actions: list[Action] = []
        deadlines = self._deadlines
        for _, kind, owner, item in deadlines.pop_due(now):
            # pop_due only yields an object's one scheduled entry (see _deadline_current). A refresh moved the
            # object's own deadline, not its entry: an entry that fires early is pushed again at the new time.
            if kind is DeadlineKind.RESERVATION:
                reservation = self._reservations.pop(item)
                self._ports.release(reservation.port)
                actions.append(ReleasePort(reservation.family, reservation.port))
                continue
            allocation: Allocation = owner
            if kind is DeadlineKind.RESPONSES:
                self._expire_responses(allocation, now)
            elif kind is DeadlineKind.ALLOCATION:
                if allocation.expires > now:
                    allocation.scheduled = allocation.expires
                    deadlines.push(allocation.expires, kind, allocation)
                else:
                    actions.extend(self._delete(allocation, "expired", entry_popped=True))
            else:
                self._expire_peers(allocation, now)
        if self._limiter is not None:
            self._limiter.prune(now)
        return actions

    def _expire_peers(self, allocation: Allocation, now: float) -> None:
        """Drop the lapsed permissions and channel bindings of one allocation; schedule its next such expiry."""
        permissions = allocation.permissions
        lapsed_ips = [ip for ip, expires in permissions.items() if expires <= now]
        for ip in lapsed_ips:
            del permissions[ip]
        lapsed = [binding for binding in allocation.channels.values() if binding.expires <= now]
        if lapsed:
            # _sync_routes only visits live channels: drop the lapsed ones' fast-path entries here.
            five_tuple = allocation.five_tuple
            table = self.routes(five_tuple.transport, five_tuple.server)
            for binding in lapsed:
                del allocation.channels[binding.channel]
                table.pop((five_tuple.client, binding.channel), None)
        if lapsed or lapsed_ips:
            self._sync_routes(allocation, now)
        allocation.peers_scheduled = allocation.next_peer_expiry()
        if allocation.peers_scheduled != float("inf"):
            self._deadlines.push(allocation.peers_scheduled, DeadlineKind.PEERS, allocation)

    def _schedule_peers(self, allocation: Allocation, deadline: float) -> None:
        """A permission or channel now expires at `deadline`: make sure the allocation's PEERS entry is due by then."""
        if deadline < allocation.peers_scheduled:
            if allocation.peers_scheduled != float("inf"):
                self._deadlines.note_stale()  # the later entry is superseded
            allocation.peers_scheduled = deadline
            self._deadlines.push(deadline, DeadlineKind.PEERS, allocation)

    def _expire_responses(self, allocation: Allocation, now: float) -> None:
        """Drop the cached answers that have lapsed, so an idle allocation holds none (memory per allocation)."""
        responses = allocation.responses
        for tid in [tid for tid, (keep_until, _) in responses.items() if keep_until <= now]:
            del responses[tid]
        if not responses:
            allocation.responses = {}  # an emptied dict keeps its table; a new one does not
        else:
            first = min(keep_until for keep_until, _ in responses.values())
            self._deadlines.push(first, DeadlineKind.RESPONSES, allocation)

    def _deadline_current(self, deadline: float, kind: DeadlineKind, owner: Any, item: Any) -> bool:
        """Whether a deadline-heap entry still describes its object (not refreshed since, not deleted)."""
        if kind is DeadlineKind.RESERVATION:
            reservation = self._reservations.get(item)
            return reservation is not None and reservation.expires == deadline
        allocation: Allocation = owner
        if self._allocations.get(allocation.five_tuple) is not allocation:
            return False
        if kind is DeadlineKind.RESPONSES:
            return bool(allocation.responses)
        if kind is DeadlineKind.ALLOCATION:
            return allocation.scheduled == deadline
        return allocation.peers_scheduled == deadline  # PEERS

    # ------------------------------------------------------------------------------- test-rig faults
    def expire_allocations(self, now: float, username: str | None = None) -> list[Action]:
        """Delete the allocations (of `username`, or all) as if their lifetime had run out (docs/testing.md)."""
        self._now = now
        actions: list[Action] = []
        for allocation in list(self._allocations.values()):
            if username is None or allocation.username == username:
                actions.extend(self._delete(allocation, "expired"))
        return actions

    def expire_nonces(self) -> None:
        """Sign nonces with a new key: every nonce issued so far is stale, so the next authenticated request of
        each client gets 438 and a new nonce (RFC 8489 §9.2.4). Reservation tokens keep their key."""
        self._nonces = NonceSigner(self._randbytes(32), self.config.nonce_lifetime)

    def _injected_failure(
        self, request: Message, five_tuple: FiveTuple, credentials: Credentials, code: int
    ) -> list[Action]:
        error = TurnError(code, reason_for(code))
        if code in (401, 438):
            # Challenges carry REALM and a fresh NONCE and no MESSAGE-INTEGRITY (RFC 8489 §9.2.4).
            return self._refuse(request, five_tuple, Challenge(code, error.reason))
        response = self._error(request, error)
        if request.method == Method.ALLOCATE:
            response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
        return [self._reply(request, response, five_tuple, credentials.key)]

    def close_all(self) -> list[Action]:
        """Free every allocation (server shutdown)."""
        actions: list[Action] = []
        for allocation in list(self._allocations.values()):
            actions.extend(self._delete(allocation, "shutdown"))
        return actions

    # ---------------------------------------------------------------------------------------- requests
    def _handle_request(self, request: Message, five_tuple: FiveTuple, now: float) -> list[Action]:
        method = request.method
        if method == Method.BINDING:
            return self._handle_binding(request, five_tuple)
        if method == Method.SHARED_SECRET:
            # RFC 3489 §9.2: only over TLS; reTurn's TLS credentials are usable nowhere, so pyturn refuses both.
            return self._refuse(request, five_tuple, TurnError(433, "TLS Required"))
        handler = self._handlers.get(method)
        if handler is None:
            return self._refuse(request, five_tuple, TurnError(400, "Bad Request"))
        allocation = self._allocations.get(five_tuple)
        if request.invalid_attributes and (
            request.integrity_offset is None or (allocation is None and method != Method.ALLOCATE)
        ):
            return []  # unauthenticated and malformed: dropped, as a message that does not parse (RFC 8489 §6.3)
        if allocation is None and method != Method.ALLOCATE:
            # RFC 8656 §7.3, §9.2, §11.2: no allocation on this 5-tuple -> 437. Answered before credentials are
            # looked at: nothing is protected here, and the short answer keeps amplification low.
            return self._refuse(request, five_tuple, TurnError(437, "Allocation Mismatch"))
        try:
            credentials = authenticate(
                request, realm=self.config.authentication_realm, nonces=self._nonces, lookup=self._users, now=now
            )
        except TurnError as error:
            if request.invalid_attributes:
                return []  # malformed and not authenticated: no answer, as above
            actions = self._refuse(request, five_tuple, error)
            if request.integrity_offset is not None:
                failure = (error.failure if isinstance(error, Challenge) else "") or MALFORMED
                actions.append(AuthFailed(five_tuple, error.code, request.get(Attr.USERNAME), failure))
                self.stats.auth_failure(failure)
            return actions
        # RFC 8656 §7.2 (and each method's checks): a known attribute whose value is malformed, such as a
        # REQUESTED-TRANSPORT of the wrong length, makes the request bad -> 400, once it is authenticated.
        if request.invalid_attributes:
            return [self._reply(request, self._error(request, TurnError(400, "Bad Request")), five_tuple,
                                credentials.key)]
        # RFC 8489 §6.3.1: unknown comprehension-required attributes -> 420 (after authentication, as reTurn).
        if request.unknown_required:
            return [self._reply(request, self._unknown_attributes(request), five_tuple, credentials.key)]
        if self.faults:
            injected = self.faults.take(method)
            if injected is not None:
                return self._injected_failure(request, five_tuple, credentials, injected)
        try:
            return handler(self, request, five_tuple, credentials, allocation, now)
        except TurnError as error:
            response = self._error(request, error)
            if method == Method.ALLOCATE:
                response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
            return [self._reply(request, response, five_tuple, credentials.key)]

    def _refuse(self, request: Message, five_tuple: FiveTuple, error: TurnError) -> list[Action]:
        """An error answer before authentication, limited per source IP on UDP (anchors.md §5.4 case 31)."""
        limiter = self._limiter
        if (
            limiter is not None
            and five_tuple.transport is Transport.UDP
            and not _is_loopback(five_tuple.client[0])
            and not limiter.allow(five_tuple.client[0], self._now)
        ):
            self.stats.auth_failure(RATE_LIMITED)
            return []
        response = self._error(request, error)
        if isinstance(error, Challenge):
            # RFC 8489 §9.2.4: 401 and 438 carry the REALM and a fresh NONCE.
            response.add(Attr.REALM, self.config.authentication_realm)
            response.add(Attr.NONCE, self._nonces.issue(self._now))
        return [self._reply(request, response, five_tuple, None)]

    def _handle_binding(self, request: Message, five_tuple: FiveTuple) -> list[Action]:
        """RFC 8489 §7.3.1 Binding, with RFC 3489 / RFC 5780 alternate-address behaviour (reTurn.md §6.3)."""
        client = five_tuple.client
        if request.invalid_attributes:
            return []  # unauthenticated: a malformed Binding stays unanswered (RFC 8489 §6.3)
        if request.unknown_required:
            return [self._reply(request, self._unknown_attributes(request), five_tuple, None)]
        if self._alternate is None and not request.classic and request.has(Attr.CHANGE_REQUEST):
            # RFC 5780 §6.1: without an alternate address CHANGE-REQUEST cannot be honoured -> 420. Classic RFC 3489
            # clients get their answer with the flag ignored, as reTurn does.
            response = self._error(request, TurnError(420, "Unknown Attribute"))
            response.add(Attr.UNKNOWN_ATTRIBUTES, (Attr.CHANGE_REQUEST,))
            return [self._reply(request, response, five_tuple, None)]
        response = self._success(request)
        # RFC 3489 clients (no magic cookie) only understand MAPPED-ADDRESS.
        response.add(Attr.MAPPED_ADDRESS if request.classic else Attr.XOR_MAPPED_ADDRESS, client)
        alternate = self._alternate
        if alternate is None or five_tuple.transport is not Transport.UDP or ":" in five_tuple.server[0]:
            return [self._reply(request, response, five_tuple, None)]
        (primary_ip, primary_port), (other_ip, other_port) = alternate
        here_ip, here_port = five_tuple.server
        if here_ip not in (primary_ip, other_ip) or here_port not in (primary_port, other_port):
            return [self._reply(request, response, five_tuple, None)]
        swap_ip = other_ip if here_ip == primary_ip else primary_ip
        swap_port = other_port if here_port == primary_port else primary_port
        flags = request.get(Attr.CHANGE_REQUEST, 0)
        source = (swap_ip if flags & CHANGE_IP else here_ip, swap_port if flags & CHANGE_PORT else here_port)
        changed = (swap_ip, swap_port)
        destination = client
        if request.classic:
            response.add(Attr.SOURCE_ADDRESS, source).add(Attr.CHANGED_ADDRESS, changed)
            target = request.get(Attr.RESPONSE_ADDRESS)
            # RESPONSE-ADDRESS is honoured only towards the requester's own IP: no reflection to third parties.
            if target is not None and target[0] == client[0]:
                destination = target
                response.add(Attr.REFLECTED_FROM, client)
        else:
            response.add(Attr.RESPONSE_ORIGIN, source).add(Attr.OTHER_ADDRESS, changed)
            port = request.get(Attr.RESPONSE_PORT)
            if port is not None:
                destination = (client[0], port)  # RFC 5780 §7.5: same IP, another port
        data = self._encode(request, response, None)
        return [SendFrom(source, destination, data)]

    def _allocate(
        self,
        request: Message,
        five_tuple: FiveTuple,
        credentials: Credentials,
        allocation: Allocation | None,
        now: float,
    ) -> list[Action]:
        """RFC 8656 §7.2 (and RFC 6156 §4.2 for the address family)."""
        config = self.config
        # §7.2 step 2: a 5-tuple already allocated -> 437 (a retransmission was answered from the cache).
        if allocation is not None:
            raise TurnError(437, "Allocation Mismatch")
        for waiting in self._pending.values():
            if waiting.five_tuple == five_tuple:
                if waiting.request.transaction_id == request.transaction_id:
                    return []  # retransmitted while the relay is being opened: the answer is on its way
                raise TurnError(437, "Allocation Mismatch")
        # §7.2 step 3: REQUESTED-TRANSPORT must be there and be UDP.
        transport = request.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            raise TurnError(400, "Bad Request")
        if transport != UDP_PROTOCOL:
            raise TurnError(442, "Unsupported Transport Protocol")
        even_port = request.get(Attr.EVEN_PORT)
        token = request.get(Attr.RESERVATION_TOKEN)
        family_requested = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
        # §7.2 step 5 / RFC 6156 §4.2: EVEN-PORT or REQUESTED-ADDRESS-FAMILY together with RESERVATION-TOKEN -> 400.
        if token is not None and (even_port is not None or family_requested is not None):
            raise TurnError(400, "Bad Request")
        if family_requested is not None and family_requested not in (FAMILY_IPV4, FAMILY_IPV6):
            raise TurnError(440, "Address Family not Supported")
        # RFC 8656 §7.2 / RFC 6156 §4.2: without REQUESTED-ADDRESS-FAMILY the relay is IPv4, whichever listener
        # the client reached (reTurn gives an IPv6 relay on its IPv6 listener).
        family = family_requested or FAMILY_IPV4
        # §7.2 step 6 (RFC 8656 §7.2 "486 Allocation Quota Reached").
        user = (credentials.username, credentials.realm)
        if config.max_allocations_per_user and self._per_user.get(user, 0) >= config.max_allocations_per_user:
            raise TurnError(486, "Allocation Quota Reached")
        if config.max_allocations and len(self._allocations) + len(self._pending) >= config.max_allocations:
            # Server-wide capacity, not a user's quota: RFC 8656 §7.2 "508 Insufficient Capacity" (try elsewhere).
            raise TurnError(508, "Insufficient Capacity")
        lifetime = self._lifetime(request)
        reserve_next = bool(even_port)
        if token is not None:
            # RFC 8656 §7.2: the relay takes the reserved port, in the family of the allocation that reserved it.
            port: int | None
            port, family = self._redeem(token, now)
        else:
            port = self._ports.take(now, even=even_port is not None, with_next=reserve_next)
        if port is None:
            raise TurnError(508, "Insufficient Capacity")
        pending = _PendingAllocation(
            request=request,
            five_tuple=five_tuple,
            credentials=credentials,
            lifetime=lifetime,
            family=family,
            host=self._relay_host(family, five_tuple),
            port=port,
            dont_fragment=request.has(Attr.DONT_FRAGMENT),
            even=even_port is not None,
            reserve_next=reserve_next,
            from_reservation=token is not None,
        )
        return [self._open_relay(pending)]

    def _refresh(
        self,
        request: Message,
        five_tuple: FiveTuple,
        credentials: Credentials,
        allocation: Allocation | None,
        now: float,
    ) -> list[Action]:
        """RFC 8656 §7.3."""
        assert allocation is not None
        self._check_owner(allocation, credentials)
        family = request.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family != allocation.family:
            raise TurnError(443, "Peer Address Family Mismatch")
        response = self._success(request)
        if request.get(Attr.LIFETIME) == 0:
            actions = self._delete(allocation, "refresh")
            response.add(Attr.LIFETIME, 0)
            return [self._reply(request, response, five_tuple, credentials.key), *actions]
        lifetime = self._lifetime(request)
        allocation.expires = now + lifetime
        if allocation.expires < allocation.scheduled:  # a shorter lifetime: the scheduled entry would fire late
            allocation.scheduled = allocation.expires
            self._deadlines.push(allocation.expires, DeadlineKind.ALLOCATION, allocation)
            self._deadlines.note_stale()
        response.add(Attr.LIFETIME, lifetime)
        return [self._reply(request, response, five_tuple, credentials.key), AllocationRefreshed(five_tuple, lifetime)]

    def _create_permission(
        self,
        request: Message,
        five_tuple: FiveTuple,
        credentials: Credentials,
        allocation: Allocation | None,
        now: float,
    ) -> list[Action]:
        """RFC 8656 §9.2: every XOR-PEER-ADDRESS is checked before any permission is installed."""
        assert allocation is not None
        self._check_owner(allocation, credentials)
        peers = request.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            raise TurnError(400, "Bad Request")
        for peer in peers:
            # A permission covers every port of the IP (RFC 8656 §9): the port is checked when data flows.
            self._check_peer(allocation, peer, port=None)
        cap = self.config.max_permissions_per_allocation
        if cap and len(allocation.permissions.keys() | {peer[0] for peer in peers}) > cap:
            raise TurnError(508, "Insufficient Capacity")  # anchors.md §5.5 case 36
        actions: list[Action] = []
        for peer in peers:
            if self._install_permission(allocation, peer[0], now):
                actions.append(PermissionInstalled(five_tuple, peer[0]))
        self._sync_routes(allocation, now)
        return [self._reply(request, self._success(request), five_tuple, credentials.key), *actions]

    def _channel_bind(
        self,
        request: Message,
        five_tuple: FiveTuple,
        credentials: Credentials,
        allocation: Allocation | None,
        now: float,
    ) -> list[Action]:
        """RFC 8656 §11.2 (channel numbers 0x4000-0x4FFF, RFC 8656 §12)."""
        assert allocation is not None
        self._check_owner(allocation, credentials)
        channel = request.get(Attr.CHANNEL_NUMBER)
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        if channel is None or peer is None:
            raise TurnError(400, "Bad Request")
        if not CHANNEL_MIN <= channel <= (LEGACY_CHANNEL_MAX if self.config.legacy_channel_numbers else CHANNEL_MAX):
            raise TurnError(400, "Bad Request")
        self._check_peer(allocation, peer, port=peer[1])
        bound = allocation.channels.get(channel)
        if bound is not None and bound.peer != peer:
            raise TurnError(400, "Bad Request")  # channel bound to another peer
        if bound is None and any(binding.peer == peer for binding in allocation.channels.values()):
            raise TurnError(400, "Bad Request")  # peer bound to another channel (at most a few dozen to scan)
        config = self.config
        if bound is None and config.max_channels_per_allocation and (
            len(allocation.channels) >= config.max_channels_per_allocation
        ):
            raise TurnError(508, "Insufficient Capacity")
        if (
            config.max_permissions_per_allocation
            and peer[0] not in allocation.permissions
            and len(allocation.permissions) >= config.max_permissions_per_allocation
        ):
            raise TurnError(508, "Insufficient Capacity")
        actions: list[Action] = []
        if bound is None:
            bound = ChannelBinding(channel, peer, now + CHANNEL_LIFETIME)
            allocation.channels[channel] = bound
            actions.append(ChannelBound(five_tuple, channel, peer))
            self._schedule_peers(allocation, bound.expires)
        else:
            bound.expires = now + CHANNEL_LIFETIME  # the scheduled PEERS entry fires early and is pushed again
        # §11.2: binding a channel installs or refreshes the permission for the peer's IP.
        if self._install_permission(allocation, peer[0], now):
            actions.append(PermissionInstalled(five_tuple, peer[0]))
        self._sync_routes(allocation, now)
        return [self._reply(request, self._success(request), five_tuple, credentials.key), *actions]

    _handlers: dict[int, Callable[..., list[Action]]] = {
        Method.ALLOCATE: _allocate,
        Method.REFRESH: _refresh,
        Method.CREATE_PERMISSION: _create_permission,
        Method.CHANNEL_BIND: _channel_bind,
    }

    # ------------------------------------------------------------------------------------ client data
    def _handle_send(self, indication: Message, five_tuple: FiveTuple, now: float) -> list[Action]:
        """RFC 8656 §11.2/§11.3: Send indications are never answered; anything wrong drops them."""
        allocation = self._allocations.get(five_tuple)
        if allocation is None or indication.unknown_required or indication.invalid_attributes:
            return []
        peer = indication.get(Attr.XOR_PEER_ADDRESS)
        data = indication.get(Attr.DATA)
        if peer is None or data is None or _family_of(peer[0]) != allocation.family:
            return []
        if not allocation.has_permission(peer[0], now) or not self.policy.allows(peer[0], peer[1]):
            return []
        return [SendToPeer(allocation.relay_handle, peer, data)]

    def _handle_channel_data(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Action]:
        allocation = self._allocations.get(five_tuple)
        if allocation is None:
            return []
        try:
            channel, payload = decode_channel_data(data)
        except StunDecodeError:
            return []
        binding = allocation.channels.get(channel)
        if binding is None or binding.expires <= now or not allocation.has_permission(binding.peer[0], now):
            return []
        return [SendToPeer(allocation.relay_handle, binding.peer, payload)]

    # ------------------------------------------------------------------------------------------ helpers
    def _lifetime(self, request: Message) -> int:
        """reTurn's arithmetic (reTurn.md §6.5 step 9): the default is also the floor, the maximum the cap."""
        default = self.config.default_allocation_lifetime
        maximum = self.config.max_allocation_lifetime
        requested: int | None = request.get(Attr.LIFETIME)
        if requested is None or requested <= default:
            return default
        return min(requested, maximum)

    def _relay_host(self, family: int, five_tuple: FiveTuple) -> str:
        config = self.config
        configured = config.relay_v6_address if family == FAMILY_IPV6 else config.relay_address
        if configured:
            return configured
        server_host = five_tuple.server[0]
        if _family_of(server_host) == family:
            return server_host  # may be a wildcard: the adapter then binds the address the client reached
        if family == FAMILY_IPV6:
            return config.turn_v6_address if _family_of(config.turn_v6_address) == FAMILY_IPV6 else "::"
        return config.turn_address if _family_of(config.turn_address) == FAMILY_IPV4 else "0.0.0.0"

    def _open_relay(self, pending: _PendingAllocation) -> OpenRelay:
        self._next_token += 1
        self._pending[self._next_token] = pending
        return OpenRelay(
            self._next_token, pending.five_tuple, pending.family, pending.host, pending.port, pending.dont_fragment,
            reserve_next=pending.reserve_next, reserved=pending.from_reservation,
        )

    @staticmethod
    def _check_owner(allocation: Allocation, credentials: Credentials) -> None:
        # RFC 8656 §5 / reTurn: later requests must use the allocation's username and key -> 441.
        if credentials.username != allocation.username or credentials.key != allocation.key:
            raise TurnError(441, "Wrong Credentials")

    def _check_peer(self, allocation: Allocation, peer: Address, *, port: int | None) -> None:
        """443 for the other family, 403 for a peer the policy refuses (RFC 8656 §9.2 and §11.2)."""
        if _family_of(peer[0]) != allocation.family:
            raise TurnError(443, "Peer Address Family Mismatch")  # RFC 6156 §5
        policy = self.policy
        if not (policy.allows_permission(peer[0]) if port is None else policy.allows(peer[0], port)):
            raise TurnError(403, "Forbidden")

    def _learn_relay_address(self, ip: str) -> None:
        """A relay was bound on an IP the policy did not know as ours (a wildcard listener binds relays on the
        address towards the client): other allocations may reach relays there from now on. A built-in denied IP
        (loopback) stays denied unless it was configured: a relay bound there serves only local clients."""
        if self.policy.verdict(ip) is Verdict.DENIED:
            self.policy = self.policy.with_server_addresses(host=(ip,))
        else:
            self.policy = self.policy.with_server_addresses(relay=(ip,))

    def _install_permission(self, allocation: Allocation, ip: str, now: float) -> bool:
        new = ip not in allocation.permissions
        allocation.permissions[ip] = now + PERMISSION_LIFETIME
        if new:  # a refresh keeps the scheduled PEERS entry, which is pushed again when it fires early
            self._schedule_peers(allocation, now + PERMISSION_LIFETIME)
        return new

    def _sync_routes(self, allocation: Allocation, now: float) -> None:
        """Rebuild this allocation's fast-path entries: live channels whose peer IP has a permission."""
        five_tuple = allocation.five_tuple
        table = self.routes(five_tuple.transport, five_tuple.server)
        client = five_tuple.client
        live = allocation.channel_for_peer
        live.clear()
        for channel, binding in allocation.channels.items():
            key = (client, channel)
            if binding.expires > now and allocation.has_permission(binding.peer[0], now):
                live[binding.peer] = channel
                table[key] = (allocation.relay_handle, binding.peer)
            else:
                table.pop(key, None)

    def _delete(self, allocation: Allocation, reason: str, *, entry_popped: bool = False) -> list[Action]:
        five_tuple = allocation.five_tuple
        del self._allocations[five_tuple]
        # Every scheduled entry of this allocation goes stale (its own unless tick() just popped it).
        self._deadlines.note_stale(
            (allocation.peers_scheduled != float("inf")) + bool(allocation.responses) + (not entry_popped)
        )
        self._by_handle.pop(allocation.relay_handle, None)
        user = (allocation.username, allocation.realm)
        remaining = self._per_user.get(user, 1) - 1
        if remaining:
            self._per_user[user] = remaining
        else:
            self._per_user.pop(user, None)
        table = self.routes(five_tuple.transport, five_tuple.server)
        for channel in allocation.channels:
            table.pop((five_tuple.client, channel), None)
        allocation.channel_for_peer.clear()
        self._ports.release(allocation.relayed[1])
        released = self._release_reservation(allocation.reserved_port) if allocation.reserved_port else []
        log.info(
            "allocation %s:%d/%s deleted (%s)",
            five_tuple.client[0], five_tuple.client[1], five_tuple.transport.value, reason,
        )
        handle = allocation.relay_handle
        # Stale deadline entries may still point at this object until the heap is compacted: hold nothing big.
        allocation.relay_handle = None
        allocation.channels.clear()
        allocation.permissions.clear()
        allocation.responses.clear()
        return [CloseRelay(handle), *released, AllocationDeleted(five_tuple, reason, handle)]

    def _reservation_token(self, port: int, family: int, now: float) -> bytes:
        """RFC 8656 §14.9 RESERVATION-TOKEN: port, issue time, family and a MAC, so any worker sharing the secret
        can check a token another worker issued (SO_REUSEPORT may hash the RTCP allocation to another worker)."""
        body = _TOKEN_BODY.pack(port, int(now) & 0xFFFF, family)
        return body + hmac.new(self._secret, b"token" + body, sha256).digest()[:_TOKEN_MAC]

    def _redeem(self, token: bytes, now: float) -> tuple[int, int]:
        """The (port, address family) a RESERVATION-TOKEN holds, or 508 for a forged, expired or used token."""
        size = _TOKEN_BODY.size
        if len(token) != size + _TOKEN_MAC or not hmac.compare_digest(
            token[size:], hmac.new(self._secret, b"token" + token[:size], sha256).digest()[:_TOKEN_MAC]
        ):
            raise TurnError(508, "Insufficient Capacity")
        port: int
        issued: int
        family: int
        port, issued, family = _TOKEN_BODY.unpack(token[:size])
        if (int(now) - issued) & 0xFFFF > RESERVATION_LIFETIME:
            raise TurnError(508, "Insufficient Capacity")
        reservation = self._reservations.get(token)
        if reservation is not None:
            if reservation.expires <= now:
                raise TurnError(508, "Insufficient Capacity")  # lapsed: the tick releases it and its socket
            del self._reservations[token]
            self._deadlines.note_stale()
            return reservation.port, family  # the port is held by the pool since the even allocation
        config = self.config
        if config.allocation_port_range_min <= port <= config.allocation_port_range_max:
            raise TurnError(508, "Insufficient Capacity")  # ours, and already redeemed or released
        # Issued by another worker (another slice of the range): its bind tells whether the port is still free.
        return port, family

    def _release_reservation(self, port: int) -> list[Action]:
        """The reserving allocation went away: its unredeemed reservation goes too (RFC 8656 §7.2)."""
        for token, reservation in list(self._reservations.items()):
            if reservation.port == port:
                del self._reservations[token]
                self._deadlines.note_stale()
                self._ports.release(port)
                return [ReleasePort(reservation.family, port)]
        return []

    # ---------------------------------------------------------------------------------------- responses
    @staticmethod
    def _success(request: Message) -> Message:
        return Message(request.method, MessageClass.SUCCESS, request.transaction_id)

    @classmethod
    def _unknown_attributes(cls, request: Message) -> Message:
        """RFC 8489 §6.3.1.1: 420 listing each unknown comprehension-required attribute once."""
        response = cls._error(request, TurnError(420, "Unknown Attribute"))
        response.add(Attr.UNKNOWN_ATTRIBUTES, tuple(dict.fromkeys(request.unknown_required)))
        return response

    @staticmethod
    def _error(request: Message, error: TurnError) -> Message:
        response = Message(request.method, MessageClass.ERROR, request.transaction_id)
        response.add(Attr.ERROR_CODE, (error.code, error.reason))
        return response

    def _encode(self, request: Message, response: Message, key: bytes | None) -> bytes:
        if response.msg_class is MessageClass.ERROR:
            self.stats.error_response(response.method, response.get(Attr.ERROR_CODE)[0])
        software = self._software
        if software is not None:
            response.add(Attr.SOFTWARE, software)
        # RFC 8489 §14.7 / reTurn: FINGERPRINT is mirrored when the request carried one.
        data = encode_message(response, integrity_key=key, fingerprint=request.has_fingerprint)
        if key is None and software is not None and len(data) > AMPLIFICATION_LIMIT * len(request.raw):
            # An unauthenticated answer may not amplify more than 3x: SOFTWARE is the first thing left out.
            response.attributes.pop()
            data = encode_message(response, integrity_key=key, fingerprint=request.has_fingerprint)
        return data

    def _reply(self, request: Message, response: Message, five_tuple: FiveTuple, key: bytes | None) -> SendToClient:
        """Encode a response; authenticated ones carry MESSAGE-INTEGRITY and are kept for retransmissions.

        The cache lives on the allocation, so it goes with it: nothing is kept for unauthenticated requests, and a
        retransmitted Refresh(LIFETIME 0) after the deletion gets 437, which RFC 8656 §7.3 tells clients to take
        as success. Unauthenticated and allocation-less answers are recomputed, with the same result.
        """
        data = self._encode(request, response, key)
        if key is not None:
            allocation = self._allocations.get(five_tuple)
            if allocation is not None:
                responses = allocation.responses
                if not responses:
                    self._deadlines.push(self._now + RESPONSE_CACHE_LIFETIME, DeadlineKind.RESPONSES, allocation)
                elif len(responses) >= RESPONSES_KEPT:
                    del responses[next(iter(responses))]  # the oldest
                responses[request.transaction_id] = (self._now + RESPONSE_CACHE_LIFETIME, data)
        return SendToClient(five_tuple, data)
