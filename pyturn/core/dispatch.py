"""The sans-IO STUN/TURN server: bytes, addresses and the time in; bytes to send and actions out.

The asyncio adapters (pyturn.net) own every socket. For an Allocate that passes every check the core
asks for a relay socket (OpenRelay) and the adapter answers with relay_opened() or relay_failed(). For EVEN-PORT
with the R bit the adapter also binds the odd port above and holds it until the RESERVATION-TOKEN is redeemed
(OpenRelay.reserved takes that socket over) or the core lets it go (ReleasePort). For the
relay hot path the core keeps route tables the adapter reads directly:

* ``routes(transport, server)[(client, channel)] -> (relay_handle, peer)`` for client -> peer ChannelData;
* ``Allocation.channel_for_peer[peer] -> channel`` for peer -> client ChannelData;
* ``route_table.sends_for_listener(transport, server)`` and ``Allocation.peer_attributes`` for Send and Data
  indications to and from the peers the core has already relayed an indication for.

Everything else (STUN, the first indications of a peer, unbound channels) goes through handle_client /
handle_peer.
"""

from __future__ import annotations

import itertools
import random
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pyturn.config import Config
from pyturn.core.actions import (
    Action,
    CloseRelay,
    RelayFailure,
    ReleasePort,
    SendToClient,
)
from pyturn.core.allocate import PendingAllocation, allocate, open_relay
from pyturn.core.allocation import (
    FAMILY_IPV6,
    Allocation,
    FiveTuple,
    Transport,
)
from pyturn.core.auth import Challenge, Credentials, NonceSigner, UserLookup, authenticate
from pyturn.core.binding import handle_binding
from pyturn.core.data import handle_channel_data, handle_send
from pyturn.core.events import (
    AllocationCreated,
    AllocationDeleted,
    AuthFailed,
)
from pyturn.core.faults import FailureInjector, reason_for
from pyturn.core.permissions import channel_bind, create_permission
from pyturn.core.policy import PeerPolicy, Verdict
from pyturn.core.ports import PortPool
from pyturn.core.ratelimit import SourceLimiter
from pyturn.core.redirect import Alternates, Capacity, redirect
from pyturn.core.refresh import refresh
from pyturn.core.reservations import Reservation, release_reservation, reserve
from pyturn.core.routes import RouteTable
from pyturn.core.stats import MALFORMED, RATE_LIMITED, CoreStats
from pyturn.core.timers import DeadlineHeap, DeadlineKind
from pyturn.core.transactions import error_response_for, reply, success_response, unknown_attributes_response
from pyturn.errors import StunDecodeError, TurnError
from pyturn.wire.codec import decode_message, encode_message
from pyturn.wire.framing import encode_channel_data
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method


def _is_loopback(host: str) -> bool:
    # Loopback sources cannot be spoofed from outside the host, so they cannot be reflection victims.
    return host.startswith("127.") or host == "::1"


def _software_value(config: Config) -> str | None:
    name = config.software_name
    if not name:
        return None
    if config.pad_software_name:
        # reTurn pads with spaces to a multiple of 4 for legacy clients (docs/compatibility.md "Keys").
        name += " " * (-len(name.encode("utf-8", "surrogateescape")) % 4)
    return name


Handler = Callable[["TurnServerCore", Message, FiveTuple, Credentials, Allocation | None, float], list[Action]]
"""A TURN request handler: the request, its 5-tuple and credentials, the 5-tuple's allocation, the time."""

_HANDLERS: dict[int, Handler] = {
    Method.ALLOCATE: allocate,
    Method.REFRESH: refresh,
    Method.CREATE_PERMISSION: create_permission,
    Method.CHANNEL_BIND: channel_bind,
}


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
        randbytes: Callable[[int], bytes] = secrets.token_bytes,
        nonce_secrets: Sequence[bytes] = (),
    ) -> None:
        self.config = config
        self._users = users
        self._secret = secret if secret is not None else randbytes(32)
        # NonceSecretFile (pyturn.files.noncesecret): instances sharing it accept each other's nonces.
        self._nonces = NonceSigner(nonce_secrets or self._secret, config.nonce_lifetime)
        # Set by the adapter (docs/scaling.md): while either is true new Allocates are redirected or refused.
        self.draining = False
        self.over_bitrate = False
        self.alternates = Alternates(config.alternate_servers, config.alternate_domain, config.tls_turn_port)
        self._policy = policy if policy is not None else PeerPolicy(
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
        self._pending: dict[int, PendingAllocation] = {}
        self._next_token = 0
        self._reservations: dict[bytes, Reservation] = {}
        self._deadlines = DeadlineHeap(self._deadline_current)
        self.route_table = RouteTable()  # the fast path's tables, read by the adapter (pyturn.core.routes)
        self._alternate: tuple[Address, Address] | None = None
        # Data indication transaction ids: a random prefix and a counter, shared with the adapter's fast path
        # (pyturn.core.routes), so every indication gets its own (RFC 8489 §6).
        self.data_tid_prefix = randbytes(4)
        self.data_tids = itertools.count(1)
        self._now = 0.0  # the time of the call being handled, for deadlines set deep inside handlers
        rate = config.unauthenticated_rate_limit
        self._limiter = SourceLimiter(rate) if rate > 0 else None
        self.stats = CoreStats()  # read by pyturn.net.metrics at scrape time
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

    @property
    def policy(self) -> PeerPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: PeerPolicy) -> None:
        # The fast path's indication routes were checked against the old policy (pyturn.core.routes).
        self._policy = policy
        for allocation in self._allocations.values():
            self.route_table.forget_peers(allocation)

    def set_nonce_secrets(self, secrets: Sequence[bytes]) -> None:
        """NonceSecretFile reloaded: the first secret signs new nonces, all are accepted."""
        self._nonces.set_secrets(secrets)

    def set_own_addresses(self, own: Iterable[Address]) -> None:
        """Every (IP, port) clients reach this instance at: AlternateServers entries among them are skipped."""
        self.alternates = self.alternates.with_own(own)

    def set_alternate(self, primary: Address, other: Address) -> None:
        """The bound (TurnAddress, TurnPort) and (AltStunAddress, AltStunPort) pair of RFC 5780 mode."""
        self._alternate = (primary, other)

    def routes(self, transport: Transport, server: Address) -> dict[tuple[Address, int], tuple[Any, Address]]:
        """The client -> peer ChannelData route table of one listening address (shared, updated in place)."""
        return self.route_table.for_listener(transport, server)

    @property
    def allocations(self) -> dict[FiveTuple, Allocation]:
        return self._allocations

    @property
    def ports(self) -> PortPool:
        """The relay port pool (read by pyturn.net.metrics)."""
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
            return handle_channel_data(self, data, five_tuple, now)
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
            return handle_send(self, message, five_tuple, now)
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
        self.route_table.learn(allocation, peer)
        tid = self.data_tid_prefix + next(self.data_tids).to_bytes(8, "big")
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
            reservation_token = reserve(self, bound[1] + 1, pending.family, now)
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
        response = success_response(pending.request)
        response.add(Attr.XOR_RELAYED_ADDRESS, relayed)
        response.add(Attr.LIFETIME, pending.lifetime)
        if reservation_token is not None:
            response.add(Attr.RESERVATION_TOKEN, reservation_token)
        response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
        return [
            reply(self, pending.request, response, five_tuple, credentials.key),
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
                    return [open_relay(self, pending)]
            if not pending.from_reservation and self.alternates.servers:  # another instance may have ports left
                return redirect(self, pending.request, pending.five_tuple, pending.credentials,
                                Capacity.PORTS_EXHAUSTED, now)
            error = TurnError(508, "Insufficient Capacity")
        else:
            pending.release_ports(self._ports)
            if failure is RelayFailure.FAMILY_UNAVAILABLE:
                error = TurnError(440, "Address Family not Supported")
            elif failure is RelayFailure.DONT_FRAGMENT:
                # RFC 8656 §7.2: a DONT-FRAGMENT the server cannot honour is treated as an unknown
                # comprehension-required attribute: 420 listing it.
                response = error_response_for(pending.request, TurnError(420, "Unknown Attribute"))
                response.add(Attr.UNKNOWN_ATTRIBUTES, (Attr.DONT_FRAGMENT,))
                response.add(Attr.XOR_MAPPED_ADDRESS, pending.five_tuple.client)
                return [reply(self, pending.request, response, pending.five_tuple, pending.credentials.key)]
            else:
                error = TurnError(508, "Insufficient Capacity")
        response = error_response_for(pending.request, error)
        response.add(Attr.XOR_MAPPED_ADDRESS, pending.five_tuple.client)
        return [reply(self, pending.request, response, pending.five_tuple, pending.credentials.key)]

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
            for binding in lapsed:
                del allocation.channels[binding.channel]
            self.route_table.drop_channels(allocation, lapsed)
        if lapsed or lapsed_ips:
            self.route_table.sync(allocation, now)
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
        """Sign and check nonces with a new key only: every nonce issued so far is stale, so the next
        authenticated request of each client gets 438 and a new nonce (RFC 8489 §9.2.4). Reservation tokens keep
        their key; reloading a NonceSecretFile brings its secrets back."""
        self._nonces.set_secrets([self._randbytes(32)])

    def _injected_failure(
        self, request: Message, five_tuple: FiveTuple, credentials: Credentials, code: int
    ) -> list[Action]:
        error = TurnError(code, reason_for(code))
        if code in (401, 438):
            # Challenges carry REALM and a fresh NONCE and no MESSAGE-INTEGRITY (RFC 8489 §9.2.4).
            return self._refuse(request, five_tuple, Challenge(code, error.reason))
        response = error_response_for(request, error)
        if request.method == Method.ALLOCATE:
            response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
        return [reply(self, request, response, five_tuple, credentials.key)]

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
            return handle_binding(self, request, five_tuple)
        if method == Method.SHARED_SECRET:
            # RFC 3489 §9.2: only over TLS; reTurn's TLS credentials are usable nowhere, so pyturn refuses both.
            return self._refuse(request, five_tuple, TurnError(433, "TLS Required"))
        handler = _HANDLERS.get(method)
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
            return [reply(self, request, error_response_for(request, TurnError(400, "Bad Request")), five_tuple,
                                credentials.key)]
        # RFC 8489 §6.3.1: unknown comprehension-required attributes -> 420 (after authentication, as reTurn).
        if request.unknown_required:
            return [reply(self, request, unknown_attributes_response(request), five_tuple, credentials.key)]
        if self.faults:
            injected = self.faults.take(method)
            if injected is not None:
                return self._injected_failure(request, five_tuple, credentials, injected)
        try:
            return handler(self, request, five_tuple, credentials, allocation, now)
        except TurnError as error:
            response = error_response_for(request, error)
            if method == Method.ALLOCATE:
                response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
            return [reply(self, request, response, five_tuple, credentials.key)]

    def _refuse(self, request: Message, five_tuple: FiveTuple, error: TurnError) -> list[Action]:
        """An error answer before authentication, limited per source IP on UDP (docs/security.md "Rate limit")."""
        limiter = self._limiter
        if (
            limiter is not None
            and five_tuple.transport is Transport.UDP
            and not _is_loopback(five_tuple.client[0])
            and not limiter.allow(five_tuple.client[0], self._now)
        ):
            self.stats.auth_failure(RATE_LIMITED)
            return []
        response = error_response_for(request, error)
        if isinstance(error, Challenge):
            # RFC 8489 §9.2.4: 401 and 438 carry the REALM and a fresh NONCE.
            response.add(Attr.REALM, self.config.authentication_realm)
            response.add(Attr.NONCE, self._nonces.issue(self._now))
        return [reply(self, request, response, five_tuple, None)]







    # ------------------------------------------------------------------------------------ client data


    # ------------------------------------------------------------------------------------------ helpers





    def _learn_relay_address(self, ip: str) -> None:
        """A relay was bound on an IP the policy did not know as ours (a wildcard listener binds relays on the
        address towards the client): other allocations may reach relays there from now on. A built-in denied IP
        (loopback) stays denied unless it was configured: a relay bound there serves only local clients."""
        if self.policy.verdict(ip) is Verdict.DENIED:
            self.policy = self.policy.with_server_addresses(host=(ip,))
        else:
            self.policy = self.policy.with_server_addresses(relay=(ip,))



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
        self.route_table.drop(allocation)
        self._ports.release(allocation.relayed[1])
        released = release_reservation(self, allocation.reserved_port) if allocation.reserved_port else []
        handle = allocation.relay_handle
        # Stale deadline entries may still point at this object until the heap is compacted: hold nothing big.
        allocation.relay_handle = None
        allocation.channels.clear()
        allocation.permissions.clear()
        allocation.responses.clear()
        deleted = AllocationDeleted(five_tuple, allocation.username, allocation.relayed, reason)
        return [CloseRelay(handle), *released, deleted]




    # ---------------------------------------------------------------------------------------- responses




