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
handle_peer. This module holds the entry points and the dispatch and authentication of requests; the state the
handlers share is a `CoreState` (pyturn.core.state).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pyturn.config import Config
from pyturn.core import faults, relays
from pyturn.core.actions import Action, RelayFailure, SendToClient
from pyturn.core.allocate import allocate
from pyturn.core.allocation import Allocation, FiveTuple, Transport
from pyturn.core.auth import Challenge, Credentials, NonceSigner, UserLookup, authenticate
from pyturn.core.binding import handle_binding
from pyturn.core.data import handle_channel_data, handle_peer_data, handle_send
from pyturn.core.deletion import delete_all, delete_allocation
from pyturn.core.events import AuthFailed
from pyturn.core.expiry import expire_due
from pyturn.core.faults import FailureInjector
from pyturn.core.permissions import channel_bind, create_permission
from pyturn.core.policy import PeerPolicy
from pyturn.core.ports import PortPool
from pyturn.core.redirect import Alternates
from pyturn.core.refresh import refresh
from pyturn.core.routes import RouteTable
from pyturn.core.state import CoreState
from pyturn.core.stats import MALFORMED, CoreStats
from pyturn.core.tcp_relay import TcpRelays, connect, connection_bind
from pyturn.core.transactions import error_response_for, refuse, reply, unknown_attributes_response
from pyturn.errors import StunDecodeError, TurnError
from pyturn.wire.codec import decode_message
from pyturn.wire.integrity import has_integrity
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

Handler = Callable[[CoreState, Message, FiveTuple, Credentials, Allocation | None, float], list[Action]]
"""A TURN request handler: the request, its 5-tuple and credentials, the 5-tuple's allocation, the time."""

_HANDLERS: dict[int, Handler] = {
    Method.ALLOCATE: allocate,
    Method.REFRESH: refresh,
    Method.CREATE_PERMISSION: create_permission,
    Method.CHANNEL_BIND: channel_bind,
    Method.CONNECT: connect,
    Method.CONNECTION_BIND: connection_bind,
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
        secret = secret if secret is not None else randbytes(32)
        rng = rng if rng is not None else random.Random(randbytes(16))
        self.state = CoreState(
            config,
            users=users,
            secret=secret,
            # NonceSecretFile (pyturn.files.noncesecret): instances sharing it accept each other's nonces.
            nonces=NonceSigner(nonce_secrets or secret, config.nonce_lifetime),
            policy=policy,
            ports=PortPool(config.allocation_port_range_min, config.allocation_port_range_max, rng),
            data_tid_prefix=randbytes(4),
            randbytes=randbytes,
        )
        # Never replaced, so plain attributes: the adapters read them (pyturn.net.metrics, the stream adapter).
        self.stats: CoreStats = self.state.stats
        self.route_table: RouteTable = self.state.route_table  # the fast path's tables ("Adapter contract")
        self.allocations: dict[FiveTuple, Allocation] = self.state.allocations
        self.ports: PortPool = self.state.ports  # the relay port pool
        self.tcp_relays: TcpRelays = self.state.tcp_relays  # RFC 6062 data connections and their entry points
        self.data_tid_prefix: bytes = self.state.data_tid_prefix  # Data indication ids, read by the fast path
        self.data_tids: Iterator[int] = self.state.data_tids
        self._randbytes = randbytes
        self.faults = FailureInjector()  # test rigs: errors injected after authentication (Server.fail_next)

    # ------------------------------------------------------------------------------------------ set-up
    def set_user_lookup(self, users: UserLookup) -> None:
        """Swap the user source in one assignment (reload); existing allocations keep their key."""
        self.state.users = users

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
        self.state.policy = self.state.policy.with_server_addresses(
            relay, host, relay_ports=relay_ports, listener_ports=listener_ports
        )

    def set_nonce_secrets(self, secrets: Sequence[bytes]) -> None:
        """NonceSecretFile reloaded: the first secret signs new nonces, all are accepted."""
        self.state.nonces.set_secrets(secrets)

    def set_own_addresses(self, own: Iterable[Address]) -> None:
        """Every (IP, port) clients reach this instance at: AlternateServers entries among them are skipped."""
        self.state.alternates = self.state.alternates.with_own(own)

    def set_alternate(self, primary: Address, other: Address) -> None:
        """The bound (TurnAddress, TurnPort) and (AltStunAddress, AltStunPort) pair of RFC 5780 mode."""
        self.state.alternate = (primary, other)

    def routes(self, transport: Transport, server: Address) -> dict[tuple[Address, int], tuple[Any, Address]]:
        """The client -> peer ChannelData route table of one listening address (shared, updated in place)."""
        return self.state.route_table.for_listener(transport, server)

    # ------------------------------------------------------------------------ state read by the adapters
    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def policy(self) -> PeerPolicy:
        """The peer policy (docs/security.md "Peer policy"), replaced whole when the server's addresses change."""
        return self.state.policy

    @property
    def draining(self) -> bool:
        """Set by the adapter (docs/scaling.md): while true new Allocates are redirected or refused."""
        return self.state.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.state.draining = value

    @property
    def over_bitrate(self) -> bool:
        """Set by the adapter when MaxRelayedBitrate is exceeded (docs/scaling.md), like `draining`."""
        return self.state.over_bitrate

    @over_bitrate.setter
    def over_bitrate(self, value: bool) -> None:
        self.state.over_bitrate = value

    @property
    def alternates(self) -> Alternates:
        return self.state.alternates

    def allocation_for_handle(self, handle: Any) -> Allocation | None:
        return self.state.by_handle.get(handle)

    def next_deadline(self) -> float | None:
        return self.state.deadlines.next_deadline()

    # ---------------------------------------------------------------------------------------- entry points
    def handle_client(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Action]:
        """One datagram (UDP) or one framed message (TCP/TLS) from a client."""
        state = self.state
        state.now = now
        if len(data) < 4:
            return []
        if data[0] & 0xC0:
            return handle_channel_data(state, data, five_tuple, now)
        try:
            message = decode_message(data, keep_invalid=True)
        except StunDecodeError:
            return []  # malformed STUN is dropped without an answer (RFC 8489 §6.3)
        if message.msg_class is MessageClass.REQUEST:
            state.stats.request(message.method)
            # RFC 8489 §6.3.1: a retransmission (same 5-tuple, same transaction id) gets the first answer again.
            allocation = state.allocations.get(five_tuple)
            if allocation is not None:
                cached = allocation.responses.get(message.transaction_id)
                if cached is not None and cached[0] > now:
                    return [SendToClient(five_tuple, cached[1])]
            return self._handle_request(message, five_tuple, now)
        if message.msg_class is MessageClass.INDICATION and message.method == Method.SEND:
            return handle_send(state, message, five_tuple, now)
        return []  # other indications (Binding keepalives) and responses are ignored

    def handle_peer(self, handle: Any, data: bytes, peer: Address, now: float) -> list[Action]:
        """A datagram a peer sent to a relay socket (RFC 8656 §11.3 and §12.4)."""
        return handle_peer_data(self.state, handle, data, peer, now)

    def relay_opened(self, token: int, handle: Any, bound: Address, now: float) -> list[Action]:
        """The adapter bound the relay socket asked for by OpenRelay(token); `bound` is its local address."""
        self.state.now = now
        return relays.relay_opened(self.state, token, handle, bound, now)

    def relay_failed(
        self, token: int, failure: RelayFailure, now: float, *, port: int | None = None
    ) -> list[Action]:
        """The adapter could not bind the relay socket asked for by OpenRelay(token); `port` is the one whose bind
        failed when it is not OpenRelay.port (the odd port of an EVEN-PORT pair)."""
        self.state.now = now
        return relays.relay_failed(self.state, token, failure, now, port=port)

    def connection_closed(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """A TCP/TLS client went away: its allocation dies with it (RFC 8656 §7)."""
        allocation = self.state.allocations.get(five_tuple)
        if allocation is None:
            return self.state.tcp_relays.client_closed(five_tuple)  # a client data connection, if any (RFC 6062)
        return delete_allocation(self.state, allocation, "closed")

    def tick(self, now: float) -> list[Action]:
        """Expire whatever is due; call about once a second."""
        self.state.now = now
        return expire_due(self.state, now)

    def close_all(self) -> list[Action]:
        """Free every allocation (server shutdown)."""
        return delete_all(self.state, "shutdown")

    # ------------------------------------------------------------------------------- test-rig faults
    def expire_allocations(self, now: float, username: str | None = None) -> list[Action]:
        """Delete the allocations (of `username`, or all) as if their lifetime had run out (docs/testing.md)."""
        self.state.now = now
        return faults.expire_allocations(self.state, username)

    def expire_nonces(self) -> None:
        """Sign and check nonces with a new key only: every nonce issued so far is stale, so the next
        authenticated request of each client gets 438 and a new nonce (RFC 8489 §9.2.4). Reservation tokens keep
        their key; reloading a NonceSecretFile brings its secrets back."""
        faults.expire_nonces(self.state, self._randbytes(32))

    # ---------------------------------------------------------------------------------------- requests
    def _handle_request(self, request: Message, five_tuple: FiveTuple, now: float) -> list[Action]:
        state = self.state
        method = request.method
        if method == Method.BINDING:
            return handle_binding(state, request, five_tuple)
        if method == Method.SHARED_SECRET:
            # RFC 3489 §9.2: only over TLS; reTurn's TLS credentials are usable nowhere, so pyturn refuses both.
            return refuse(state, request, five_tuple, TurnError(433, "TLS Required"))
        handler = _HANDLERS.get(method)
        if handler is None:
            return refuse(state, request, five_tuple, TurnError(400, "Bad Request"))
        allocation = state.allocations.get(five_tuple)
        if request.invalid_attributes and not has_integrity(request):
            return []  # unauthenticated and malformed: dropped, as a message that does not parse (RFC 8489 §6.3)
        # RFC 8656 §5, §7.3, §9.2, §11.2: 437. Allocate and RFC 6062 §5.4 ConnectionBind (on a new data
        # connection) come from 5-tuples without an allocation.
        mismatch = allocation is None and method != Method.ALLOCATE and method != Method.CONNECTION_BIND
        if mismatch and not has_integrity(request):
            # Without MESSAGE-INTEGRITY: the short unsigned 437 instead of a 401 challenge, whose REALM and NONCE
            # would break the 3x rule for a bare 20-byte Refresh (docs/security.md "Amplification").
            return refuse(state, request, five_tuple, TurnError(437, "Allocation Mismatch"))
        try:
            credentials = authenticate(
                request, realm=state.config.authentication_realm, nonces=state.nonces, lookup=state.users, now=now
            )
        except TurnError as error:
            if request.invalid_attributes:
                return []  # malformed and not authenticated: no answer, as above
            actions = refuse(state, request, five_tuple, error)
            if has_integrity(request):
                failure = (error.failure if isinstance(error, Challenge) else "") or MALFORMED
                actions.append(AuthFailed(five_tuple, error.code, request.get(Attr.USERNAME), failure))
                state.stats.auth_failure(failure)
            return actions
        if mismatch:
            # RFC 8656 §5 authenticates first; RFC 8489 §9.2.4: the answer carries the user's MESSAGE-INTEGRITY
            # (clients discard an unsigned one, RFC 8489 §9.2.5). Not cached: there is no allocation to keep it on.
            return [reply(state, request, error_response_for(request, TurnError(437, "Allocation Mismatch")),
                          five_tuple, credentials.key)]
        # RFC 8656 §7.2 (and each method's checks): a known attribute whose value is malformed, such as a
        # REQUESTED-TRANSPORT of the wrong length, makes the request bad -> 400, once it is authenticated.
        if request.invalid_attributes:
            response = error_response_for(request, TurnError(400, "Bad Request"))
            return [reply(state, request, response, five_tuple, credentials.key)]
        # RFC 8489 §6.3.1: unknown comprehension-required attributes -> 420 (after authentication, as reTurn).
        if request.unknown_required:
            return [reply(state, request, unknown_attributes_response(request), five_tuple, credentials.key)]
        if self.faults:
            injected = self.faults.take(method)
            if injected is not None:
                return faults.injected_failure(state, request, five_tuple, credentials, injected)
        try:
            return handler(state, request, five_tuple, credentials, allocation, now)
        except TurnError as error:
            response = error_response_for(request, error)
            if method == Method.ALLOCATE:
                response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple.client)
            return [reply(state, request, response, five_tuple, credentials.key)]
