"""TCP allocations (RFC 6062): the Allocate checks, Connect, ConnectionBind, ConnectionAttempt, and the data
connections of each TCP allocation with their 30 s timers.

One connection id names one peer data connection and, once a ConnectionBind joins it, the client data connection
that carries its bytes. The adapter owns both sockets; this module decides when they open, join and close
(docs/architecture.md "Sans-IO contract").
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from pyturn.core.actions import (
    AcceptPeer,
    Action,
    BindDataConnection,
    ClosePeerConnection,
    ConnectPeer,
    RefusePeer,
    SendToClient,
)
from pyturn.core.allocation import Allocation, FiveTuple, Transport
from pyturn.core.auth import Credentials
from pyturn.core.events import DataConnectionBound
from pyturn.core.permissions import check_owner, check_peer
from pyturn.core.transactions import error_response_for, reply, success_response
from pyturn.errors import TurnError
from pyturn.wire.codec import encode_message
from pyturn.wire.message import Address, Attr, Message, MessageClass, Method

if TYPE_CHECKING:
    from pyturn.core.state import CoreState

TCP_PROTOCOL = 6  # RFC 6062 §6.1: REQUESTED-TRANSPORT value for TCP
CONNECT_TIMEOUT = 30.0  # RFC 6062 §5.2: a connect attempt is given at least 30 s before 447
BIND_TIMEOUT = 30.0  # RFC 6062 §5.2, §5.3: a peer data connection not bound within 30 s is closed


class Phase(Enum):
    CONNECTING = 1  # Connect sent to the adapter, no answer yet
    PENDING = 2  # connected (or accepted), waiting for its ConnectionBind
    BOUND = 3  # joined to a client data connection: bytes flow, no timer


@dataclass(slots=True, eq=False)
class DataConnection:
    """One connection id: the peer data connection and, once bound, the client data connection joined to it."""

    connection_id: int
    allocation: Allocation
    peer: Address
    phase: Phase
    deadline: float
    connect: Message | None = None  # the Connect request answered when the connect succeeds or fails
    client: FiveTuple | None = None


def check_tcp_allocate(request: Message, five_tuple: FiveTuple) -> None:
    """RFC 6062 §5.1 items 2 and 3 (item 1, the transport value, is checked by the caller)."""
    if five_tuple.transport is Transport.UDP:
        raise TurnError(400, "Bad Request")  # §5.1 item 2: a TCP allocation needs a TCP or TLS control connection
    if request.has(Attr.DONT_FRAGMENT) or request.has(Attr.EVEN_PORT) or request.has(Attr.RESERVATION_TOKEN):
        raise TurnError(400, "Bad Request")  # §5.1 item 3


class TcpRelays:
    """The data connections of every TCP allocation of one core, by connection id, client stream and allocation."""

    def __init__(self, state: CoreState, randbytes: Callable[[int], bytes]) -> None:
        self._state = state
        self._randbytes = randbytes
        self.by_id: dict[int, DataConnection] = {}
        self.by_client: dict[FiveTuple, DataConnection] = {}
        self._per_allocation: dict[Allocation, dict[int, DataConnection]] = {}
        self._timers: list[tuple[float, int]] = []  # (deadline, connection id); stale entries are skipped

    def __len__(self) -> int:
        return len(self.by_id)

    # ------------------------------------------------------------------------------------------ requests
    def connect(self, request: Message, five_tuple: FiveTuple, credentials: Credentials,
                allocation: Allocation | None, now: float) -> list[Action]:
        """RFC 6062 §5.2 (437 for a 5-tuple without allocation was answered by the dispatcher)."""
        assert allocation is not None
        check_owner(allocation, credentials)  # RFC 8656 §5: 441
        if not allocation.tcp:
            raise TurnError(400, "Bad Request")  # Connect belongs to TCP allocations only
        peer: Address | None = request.get(Attr.XOR_PEER_ADDRESS)
        if peer is None:
            raise TurnError(400, "Bad Request")  # §5.2: no or an invalid XOR-PEER-ADDRESS
        # §5.2: a Connect to this peer in progress, or its data connections pending or active -> 446.
        if any(existing.peer == peer for existing in self._per_allocation.get(allocation, {}).values()):
            raise TurnError(446, "Connection Already Exists")
        # §5.2 "forbidden by local policy" -> 403: the peer policy, every spelling (docs/security.md "Peer
        # policy"), and, as for UDP, a permission for the peer's IP (RFC 8656 §9).
        check_peer(self._state, allocation, peer, port=peer[1])
        if not allocation.has_permission(peer[0], now):
            raise TurnError(403, "Forbidden")
        if not self._has_room(allocation):
            raise TurnError(508, "Insufficient Capacity")  # docs/security.md "TCP relays"
        connection = self._add(allocation, peer, Phase.CONNECTING, now + CONNECT_TIMEOUT)
        connection.connect = request
        return [ConnectPeer(connection.connection_id, allocation.relay_handle, peer)]

    def connection_bind(self, request: Message, five_tuple: FiveTuple, credentials: Credentials,
                        allocation: Allocation | None, now: float) -> list[Action]:
        """RFC 6062 §5.4, on a new TCP/TLS connection from the client (authenticated by the dispatcher)."""
        if five_tuple.transport is Transport.UDP:
            raise TurnError(400, "Bad Request")  # §5.4: only on a TCP or TLS connection
        if allocation is not None or five_tuple in self.by_client:
            raise TurnError(400, "Bad Request")  # a control connection never becomes a data connection (§4.4)
        connection_id = request.get(Attr.CONNECTION_ID)
        connection = self.by_id.get(connection_id) if connection_id is not None else None
        if connection is None or connection.phase is not Phase.PENDING:
            raise TurnError(400, "Bad Request")  # §5.4: missing, or not an existing pending connection
        check_owner(connection.allocation, credentials)  # §4.4: the allocation's credentials -> else 441
        connection.phase = Phase.BOUND
        connection.client = five_tuple
        self.by_client[five_tuple] = connection
        allocation = connection.allocation
        return [
            reply(self._state, request, success_response(request), five_tuple, credentials.key),
            BindDataConnection(connection.connection_id, five_tuple),
            DataConnectionBound(allocation.five_tuple, connection.connection_id, connection.peer, five_tuple),
        ]

    # ------------------------------------------------------------------------------ what the adapter reports
    def peer_connected(self, connection_id: int, now: float) -> list[Action]:
        """The connection a ConnectPeer asked for is up: answer the Connect with its CONNECTION-ID (§5.2)."""
        self._state.now = now
        connection = self.by_id.get(connection_id)
        if connection is None or connection.phase is not Phase.CONNECTING or connection.connect is None:
            return [ClosePeerConnection(connection_id)]  # timed out or its allocation went meanwhile
        request, connection.connect = connection.connect, None
        connection.phase = Phase.PENDING
        self._schedule(connection, now + BIND_TIMEOUT)  # §5.2: bound within 30 s, or closed
        allocation = connection.allocation
        response = success_response(request)
        response.add(Attr.CONNECTION_ID, connection_id)
        return [reply(self._state, request, response, allocation.five_tuple, allocation.key)]

    def peer_connect_failed(self, connection_id: int, now: float) -> list[Action]:
        """The connect was refused or failed: 447 (§5.2)."""
        self._state.now = now
        connection = self.by_id.get(connection_id)
        if connection is None or connection.phase is not Phase.CONNECTING:
            return []
        return self._connect_failed(connection)

    def peer_accepted(self, handle: Any, accepted: Any, peer: Address, now: float) -> list[Action]:
        """A peer connected to the relayed address of relay `handle` (§5.3); `accepted` is the adapter's socket."""
        state = self._state
        allocation = state.by_handle.get(handle)
        if allocation is None or not allocation.tcp:
            return [RefusePeer(accepted)]
        # §5.3: no permission for this peer -> closed at once; the peer policy applies as on every other path
        # (a permission for one of the server's own IPs admits only other relays).
        if not allocation.has_permission(peer[0], now) or not state.policy.allows(peer[0], peer[1]):
            return [RefusePeer(accepted)]
        if not self._has_room(allocation):
            return [RefusePeer(accepted)]  # docs/security.md "TCP relays"
        connection = self._add(allocation, peer, Phase.PENDING, now + BIND_TIMEOUT)
        indication = Message(Method.CONNECTION_ATTEMPT, MessageClass.INDICATION, self._randbytes(12))
        indication.add(Attr.XOR_PEER_ADDRESS, peer).add(Attr.CONNECTION_ID, connection.connection_id)
        return [
            AcceptPeer(connection.connection_id, handle, accepted),
            SendToClient(allocation.five_tuple, encode_message(indication)),
        ]

    def peer_closed(self, connection_id: int, now: float) -> list[Action]:
        """The peer data connection ended: the client data connection joined to it goes too (§5.5)."""
        connection = self.by_id.get(connection_id)
        if connection is None:
            return []
        self._remove(connection)
        return [ClosePeerConnection(connection_id)]

    def client_closed(self, five_tuple: FiveTuple) -> list[Action]:
        """A client data connection ended: its peer data connection goes too (§5.5)."""
        connection = self.by_client.get(five_tuple)
        if connection is None:
            return []
        self._remove(connection)
        return [ClosePeerConnection(connection.connection_id)]

    def allocation_deleted(self, allocation: Allocation) -> list[Action]:
        """RFC 6062 §5.5: every data connection of a deleted allocation is closed (a Connect in progress gets no
        answer: the allocation it belonged to is gone)."""
        connections = self._per_allocation.get(allocation)
        if not connections:
            return []
        closes: list[Action] = []
        for connection in list(connections.values()):
            self._remove(connection)
            closes.append(ClosePeerConnection(connection.connection_id))
        return closes

    def tick(self, now: float) -> list[Action]:
        """The 30 s timers: a connect not done gets 447, a connection not bound is closed (§5.2, §5.3)."""
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, connection_id = heapq.heappop(timers)
            connection = self.by_id.get(connection_id)
            if connection is None or connection.deadline != deadline or connection.phase is Phase.BOUND:
                continue
            if connection.phase is Phase.CONNECTING:
                actions.extend(self._connect_failed(connection))
            else:
                self._remove(connection)
            actions.append(ClosePeerConnection(connection_id))
        return actions

    # ------------------------------------------------------------------------------------------ helpers
    def _has_room(self, allocation: Allocation) -> bool:
        config = self._state.config
        total, per_allocation = config.max_tcp_relay_connections, config.max_tcp_relay_connections_per_allocation
        if total and len(self.by_id) >= total:
            return False
        return not per_allocation or len(self._per_allocation.get(allocation, ())) < per_allocation

    def _new_id(self) -> int:
        # §5.2: the id must identify the connection uniquely; random, so one client cannot guess another's.
        randbytes = self._randbytes
        while True:
            connection_id = int.from_bytes(randbytes(4), "big")
            if connection_id not in self.by_id:
                return connection_id

    def _add(self, allocation: Allocation, peer: Address, phase: Phase, deadline: float) -> DataConnection:
        connection = DataConnection(self._new_id(), allocation, peer, phase, deadline)
        self.by_id[connection.connection_id] = connection
        self._per_allocation.setdefault(allocation, {})[connection.connection_id] = connection
        heapq.heappush(self._timers, (deadline, connection.connection_id))
        return connection

    def _schedule(self, connection: DataConnection, deadline: float) -> None:
        connection.deadline = deadline
        heapq.heappush(self._timers, (deadline, connection.connection_id))

    def _remove(self, connection: DataConnection) -> None:
        self.by_id.pop(connection.connection_id, None)
        if connection.client is not None:
            self.by_client.pop(connection.client, None)
        connections = self._per_allocation.get(connection.allocation)
        if connections is not None:
            connections.pop(connection.connection_id, None)
            if not connections:
                del self._per_allocation[connection.allocation]
        if not self.by_id:
            self._timers.clear()  # only stale entries are left

    def _connect_failed(self, connection: DataConnection) -> list[Action]:
        request = connection.connect
        self._remove(connection)
        if request is None:
            return []
        allocation = connection.allocation
        response = error_response_for(request, TurnError(447, "Connection Timeout or Failure"))
        return [reply(self._state, request, response, allocation.five_tuple, allocation.key)]


def connect(state: CoreState, request: Message, five_tuple: FiveTuple, credentials: Credentials,
            allocation: Allocation | None, now: float) -> list[Action]:
    """The Connect handler (RFC 6062 §5.2) in the dispatcher's table."""
    return state.tcp_relays.connect(request, five_tuple, credentials, allocation, now)


def connection_bind(state: CoreState, request: Message, five_tuple: FiveTuple, credentials: Credentials,
                    allocation: Allocation | None, now: float) -> list[Action]:
    """The ConnectionBind handler (RFC 6062 §5.4) in the dispatcher's table."""
    return state.tcp_relays.connection_bind(request, five_tuple, credentials, allocation, now)
